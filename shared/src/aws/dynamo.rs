//! DynamoDB helpers: attribute values, condition failures, retries.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};

use crate::ports::{PortError, PortResult};

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn b(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

fn corrupt(key: &str) -> PortError {
    PortError::corrupt(
        "a stored record is corrupt",
        format!("attribute {key} missing or mistyped"),
    )
}

pub fn get_s<'a>(item: &'a Item, key: &str) -> PortResult<&'a str> {
    match item.get(key) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(key)),
    }
}

pub fn opt_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    match item.get(key) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

pub fn get_n<T: FromStr>(item: &Item, key: &str) -> PortResult<T> {
    opt_n(item, key).ok_or_else(|| corrupt(key))
}

pub fn opt_n<T: FromStr>(item: &Item, key: &str) -> Option<T> {
    match item.get(key) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

pub fn get_b(item: &Item, key: &str) -> PortResult<bool> {
    match item.get(key) {
        Some(AttributeValue::Bool(v)) => Ok(*v),
        _ => Err(corrupt(key)),
    }
}

/// A key of the two-part (`pk`, `sk`) schema both tables use.
pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

/// Whether a single-item write failed its condition expression.
pub fn is_condition_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ConditionalCheckFailedException"))
}

/// Why a transaction was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxFailure {
    /// The condition of the item at this index (in request order) failed.
    Condition(usize),
    /// Another transaction held one of the items: worth retrying.
    Contention,
}

pub fn tx_failure<R>(e: &SdkError<TransactWriteItemsError, R>) -> Option<TxFailure> {
    match e.as_service_error()? {
        TransactWriteItemsError::TransactionCanceledException(c) => Some(
            c.cancellation_reasons()
                .iter()
                .position(|r| r.code() == Some("ConditionalCheckFailed"))
                .map_or(TxFailure::Contention, TxFailure::Condition),
        ),
        _ => None,
    }
}

/// Retries of a contended write give up after this many attempts.
pub const MAX_ATTEMPTS: u32 = 12;

/// Waits before retry `attempt` (exponential, with jitter), or gives up.
pub async fn backoff(attempt: u32) -> PortResult<()> {
    if attempt + 1 >= MAX_ATTEMPTS {
        return Err(PortError::transient(
            "the service's storage is busy",
            "DynamoDB: too much contention; gave up retrying",
        ));
    }
    let base = 5u64 << attempt.min(7);
    let jitter = rand::random_range(0..=base);
    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
    Ok(())
}

/// BatchWriteItem takes at most this many requests.
const BATCH_WRITE: usize = 25;

/// What a batch write does to one item.
pub enum BatchOp {
    Put(Item),
    Delete(Item),
}

/// Puts and deletes any number of items, 25 per BatchWriteItem call,
/// retrying what DynamoDB leaves unprocessed (throttling). Not atomic.
pub async fn batch_write(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    ops: Vec<BatchOp>,
) -> PortResult<()> {
    let mut requests = Vec::with_capacity(ops.len());
    for op in ops {
        requests.push(match op {
            BatchOp::Put(item) => WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .map_err(super::backend)?,
                )
                .build(),
            BatchOp::Delete(key) => WriteRequest::builder()
                .delete_request(
                    DeleteRequest::builder()
                        .set_key(Some(key))
                        .build()
                        .map_err(super::backend)?,
                )
                .build(),
        });
    }
    for batch in requests.chunks(BATCH_WRITE) {
        let mut pending = batch.to_vec();
        for attempt in 0u32.. {
            let out = client
                .batch_write_item()
                .request_items(table, pending)
                .send()
                .await
                .map_err(super::backend)?;
            pending = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
            if pending.is_empty() {
                break;
            }
            backoff(attempt).await?;
        }
    }
    Ok(())
}

/// A strongly consistent GetItem.
pub async fn get_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: Item,
) -> PortResult<Option<Item>> {
    let out = client
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .map_err(super::backend)?;
    Ok(out.item)
}
