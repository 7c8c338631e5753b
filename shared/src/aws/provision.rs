//! Creates the tables, bucket and queue on an emulator (moto, LocalStack),
//! the same shape `template.yaml` declares on AWS. Tests, benchmarks and the
//! `bulk-export-aws provision` command use it; on AWS, SAM does this.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

use super::jobs::{ACTIVE_OWNER_INDEX, EXPIRY_INDEX, REUSE_KEY_INDEX};
use super::resources::BY_ID_INDEX;
use super::schedules::{DUE_INDEX, LIST_INDEX};
use super::{backend, s3_client, AwsNames};
use crate::ports::PortResult;

fn attribute(name: &str, kind: ScalarAttributeType) -> PortResult<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(backend)
}

fn key_part(name: &str, kind: KeyType) -> PortResult<KeySchemaElement> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(backend)
}

/// A global index: hash key (a string), range key if any, what it projects.
struct Index {
    name: &'static str,
    hash: &'static str,
    range: Option<(&'static str, ScalarAttributeType)>,
    projection: ProjectionType,
}

impl Index {
    fn build(&self) -> PortResult<GlobalSecondaryIndex> {
        let mut index = GlobalSecondaryIndex::builder()
            .index_name(self.name)
            .key_schema(key_part(self.hash, KeyType::Hash)?)
            .projection(
                Projection::builder()
                    .projection_type(self.projection.clone())
                    .build(),
            );
        if let Some((range, _)) = self.range {
            index = index.key_schema(key_part(range, KeyType::Range)?);
        }
        index.build().map_err(backend)
    }
}

/// A table keyed (`pk` S, `sk` S) with global indexes; an existing table
/// is left as it is.
async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    indexes: &[Index],
    ttl: bool,
) -> PortResult<()> {
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("sk", ScalarAttributeType::S)?)
        .key_schema(key_part("pk", KeyType::Hash)?)
        .key_schema(key_part("sk", KeyType::Range)?);
    for index in indexes {
        request = request
            .attribute_definitions(attribute(index.hash, ScalarAttributeType::S)?)
            .global_secondary_indexes(index.build()?);
        if let Some((range, kind)) = &index.range {
            request = request.attribute_definitions(attribute(range, kind.clone())?);
        }
    }
    let result = request.send().await;
    match result {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            return Ok(())
        }
        Err(e) => return Err(backend(e)),
    }
    if ttl {
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(true)
                    .build()
                    .map_err(backend)?,
            )
            .send()
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Creates the two tables of `names` (with their indexes) if they do not
/// exist yet: all a DynamoDB-only endpoint (DynamoDB Local) can hold.
pub async fn provision_tables(sdk: &SdkConfig, names: &AwsNames) -> PortResult<()> {
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    create_table(
        &dynamo,
        &names.jobs_table,
        &[
            Index {
                name: EXPIRY_INDEX,
                hash: "expiry_bucket",
                range: Some(("expires_at", ScalarAttributeType::N)),
                projection: ProjectionType::KeysOnly,
            },
            Index {
                name: ACTIVE_OWNER_INDEX,
                hash: "active_owner",
                range: None,
                projection: ProjectionType::KeysOnly,
            },
            Index {
                name: REUSE_KEY_INDEX,
                hash: "reuse_key",
                range: None,
                projection: ProjectionType::KeysOnly,
            },
            Index {
                name: DUE_INDEX,
                hash: "due_bucket",
                range: Some(("next_due", ScalarAttributeType::N)),
                projection: ProjectionType::All,
            },
            Index {
                name: LIST_INDEX,
                hash: "list_key",
                range: None,
                projection: ProjectionType::All,
            },
        ],
        true,
    )
    .await?;
    create_table(
        &dynamo,
        &names.resources_table,
        &[Index {
            name: BY_ID_INDEX,
            hash: "rid",
            range: Some(("ver", ScalarAttributeType::N)),
            projection: ProjectionType::All,
        }],
        false,
    )
    .await
}

/// Creates whatever of `names` does not exist yet. The queue URL in `names`
/// is ignored; the created queue's URL is returned in the result.
pub async fn provision(
    sdk: &SdkConfig,
    names: &AwsNames,
    queue_name: &str,
) -> PortResult<AwsNames> {
    provision_tables(sdk, names).await?;

    let s3 = s3_client(sdk);
    if let Err(e) = s3.create_bucket().bucket(&names.bucket).send().await {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists());
        if !exists {
            return Err(backend(e));
        }
    }

    let sqs = aws_sdk_sqs::Client::new(sdk);
    let queue = sqs
        .create_queue()
        .queue_name(queue_name)
        .send()
        .await
        .map_err(backend)?;
    Ok(AwsNames {
        queue_url: queue.queue_url().unwrap_or_default().to_string(),
        ..names.clone()
    })
}
