//! Counts what each AWS request consumed into the current handling's
//! [`Usage`](crate::domain::usage): one interceptor on every client, so no
//! adapter has to remember to count.
//!
//! - every attempt is a billed request: counted before it is sent, by
//!   service and operation;
//! - DynamoDB requests ask for `ReturnConsumedCapacity = TOTAL`, and the
//!   units DynamoDB reports are added as read or write units;
//! - S3 upload bodies count as bytes stored, `GetObject` bodies as bytes read;
//! - SQS sends count their messages.

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextMut,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation as ddb;
use aws_sdk_dynamodb::types::{ConsumedCapacity, ReturnConsumedCapacity};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use crate::domain::usage::{self, record};

#[derive(Debug, Clone, Copy, Default)]
pub struct Metering;

/// Sets `ReturnConsumedCapacity = TOTAL` on the DynamoDB inputs named.
macro_rules! ask_capacity {
    ($input:expr, $($t:ty),+) => {
        $(if let Some(i) = $input.downcast_mut::<$t>() {
            i.return_consumed_capacity = Some(ReturnConsumedCapacity::Total);
            return;
        })+
    };
}

/// Adds the capacity the DynamoDB outputs named report to `$counter`.
macro_rules! add_capacity {
    ($output:expr, $counter:expr, one: [$($one:ty),*], many: [$($many:ty),*]) => {
        $(if let Some(o) = $output.downcast_ref::<$one>() {
            add_units($counter, o.consumed_capacity.iter());
            return;
        })*
        $(if let Some(o) = $output.downcast_ref::<$many>() {
            add_units($counter, o.consumed_capacity.iter().flatten());
            return;
        })*
    };
}

fn ask_for_capacity(input: &mut aws_smithy_runtime_api::client::interceptors::context::Input) {
    ask_capacity!(
        input,
        ddb::query::QueryInput,
        ddb::scan::ScanInput,
        ddb::get_item::GetItemInput,
        ddb::batch_get_item::BatchGetItemInput,
        ddb::transact_get_items::TransactGetItemsInput,
        ddb::put_item::PutItemInput,
        ddb::update_item::UpdateItemInput,
        ddb::delete_item::DeleteItemInput,
        ddb::batch_write_item::BatchWriteItemInput,
        ddb::transact_write_items::TransactWriteItemsInput
    );
}

fn add_units<'a>(counter: &str, capacities: impl Iterator<Item = &'a ConsumedCapacity>) {
    let units: f64 = capacities.filter_map(|c| c.capacity_units).sum();
    record(|u| u.add(counter, units));
}

fn add_consumed(output: &aws_smithy_runtime_api::client::interceptors::context::Output) {
    add_capacity!(
        output,
        usage::DYNAMODB_READ_UNITS,
        one: [
            ddb::query::QueryOutput,
            ddb::scan::ScanOutput,
            ddb::get_item::GetItemOutput
        ],
        many: [
            ddb::batch_get_item::BatchGetItemOutput,
            ddb::transact_get_items::TransactGetItemsOutput
        ]
    );
    add_capacity!(
        output,
        usage::DYNAMODB_WRITE_UNITS,
        one: [
            ddb::put_item::PutItemOutput,
            ddb::update_item::UpdateItemOutput,
            ddb::delete_item::DeleteItemOutput
        ],
        many: [
            ddb::batch_write_item::BatchWriteItemOutput,
            ddb::transact_write_items::TransactWriteItemsOutput
        ]
    );
    if let Some(o) = output.downcast_ref::<aws_sdk_s3::operation::get_object::GetObjectOutput>() {
        let bytes = o.content_length.unwrap_or(0) as f64;
        record(|u| u.add(usage::S3_BYTES_READ, bytes));
    }
}

fn messages_sent(input: &aws_smithy_runtime_api::client::interceptors::context::Input) -> usize {
    use aws_sdk_sqs::operation as sqs;
    if input
        .downcast_ref::<sqs::send_message::SendMessageInput>()
        .is_some()
    {
        1
    } else if let Some(batch) =
        input.downcast_ref::<sqs::send_message_batch::SendMessageBatchInput>()
    {
        batch.entries.as_ref().map_or(0, Vec::len)
    } else {
        0
    }
}

impl Intercept for Metering {
    fn name(&self) -> &'static str {
        "Metering"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Once per operation (attempts re-send the same message).
        let sent = messages_sent(context.input());
        record(|u| u.add(usage::SQS_MESSAGES, sent as f64));
        ask_for_capacity(context.input_mut());
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(operation) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let stored = match (operation.service(), operation.name()) {
            ("S3", "PutObject" | "UploadPart") => {
                context.request().body().content_length().unwrap_or(0) as f64
            }
            _ => 0.0,
        };
        record(|u| {
            u.add_request(operation.service(), operation.name());
            u.add(usage::S3_BYTES_STORED, stored);
        });
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(output) = context.output_or_error() {
            add_consumed(output);
        }
        Ok(())
    }
}
