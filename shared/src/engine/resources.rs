//! The small FHIR REST write API that fills the resource store: read,
//! create, update, delete, and batch/transaction Bundles.

use super::EngineConfig;
use crate::ports::ResourceStore;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::Caller;
use crate::domain::access::WriteKind;
use crate::domain::resource::{check_id, check_resource_value, check_type, is_valid_id};
use crate::domain::resource_text::ResourceText;
use crate::domain::Error;
use crate::ports::{Version, WriteOp, WriteResult};

/// Bundles larger than this are refused (keeps one transaction bounded).
pub const MAX_BUNDLE_ENTRIES: usize = 10_000;

/// The outcome of a write.
#[derive(Debug, Clone)]
pub struct Written {
    /// No live version was there before.
    pub created: bool,
    pub version: Version,
}

/// What a batch or transaction Bundle did, entry by entry, in order.
#[derive(Debug)]
pub struct BundleReply {
    pub transaction: bool,
    pub entries: Vec<Result<EntryWritten, Error>>,
}

/// One entry's write.
#[derive(Debug)]
pub struct EntryWritten {
    /// The entry was a DELETE.
    pub delete: bool,
    pub result: WriteResult,
}

/// The FHIR read and write API on the resource store.
#[derive(Clone)]
pub struct Resources {
    pub(crate) resources: Arc<dyn ResourceStore>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Resources {
    pub async fn read_resource(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> Result<Version, Error> {
        check_type(resource_type)?;
        if !caller.access.can_read(resource_type) {
            return Err(Error::forbidden(format!(
                "The access token's scopes do not permit reading {resource_type}"
            )));
        }
        if resource_type == "Group" && !caller.access.can_use_group(id) {
            return Err(Error::forbidden(format!(
                "This client may not read Group/{id}"
            )));
        }
        check_id(id)?;
        match self.resources.read_current(resource_type, id).await? {
            Some(v) if v.deleted => Err(Error::gone(format!("{resource_type}/{id} was deleted"))),
            Some(v) => Ok(v),
            None => Err(Error::not_found(format!(
                "{resource_type}/{id} does not exist"
            ))),
        }
    }

    pub async fn update_resource(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        resource: ResourceText,
    ) -> Result<Written, Error> {
        check_type(resource_type)?;
        require_write(caller, WriteKind::Update, resource_type)?;
        check_id(id)?;
        check_resource_value(resource.value(), resource_type, Some(id))?;
        let op = WriteOp::Upsert {
            resource_type: resource_type.into(),
            id: id.into(),
            resource,
        };
        let r = self.write_one(caller, op).await?;
        Ok(Written {
            created: r.created,
            version: r.version,
        })
    }

    pub async fn create_resource(
        &self,
        caller: &Caller,
        resource_type: &str,
        resource: ResourceText,
    ) -> Result<Written, Error> {
        check_type(resource_type)?;
        require_write(caller, WriteKind::Create, resource_type)?;
        check_resource_value(resource.value(), resource_type, None)?;
        // FHIR create: the server assigns the id, whatever the body says.
        let id = uuid::Uuid::new_v4().to_string();
        let op = WriteOp::Upsert {
            resource_type: resource_type.into(),
            id,
            resource,
        };
        let r = self.write_one(caller, op).await?;
        Ok(Written {
            created: true,
            version: r.version,
        })
    }

    pub async fn delete_resource(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> Result<(), Error> {
        check_type(resource_type)?;
        require_write(caller, WriteKind::Delete, resource_type)?;
        check_id(id)?;
        self.write_one(
            caller,
            WriteOp::Delete {
                resource_type: resource_type.into(),
                id: id.into(),
            },
        )
        .await?;
        Ok(())
    }

    /// Writes many resources at once (loaders, tests, benchmarks).
    pub async fn load(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteResult>, Error> {
        Ok(self.resources.load(ops).await?)
    }

    async fn write_one(&self, caller: &Caller, op: WriteOp) -> Result<WriteResult, Error> {
        let mut results = self.resources.write_as(&caller.subject, vec![op]).await?;
        results
            .pop()
            .ok_or_else(|| Error::internal("the store returned no result"))
    }

    /// `POST [base]` with a batch or transaction Bundle (its JSON text: each
    /// entry's resource is stored as written). A transaction is
    /// all-or-nothing: one bad entry refuses the whole Bundle. A batch
    /// reports each entry's outcome and writes the good ones.
    pub async fn process_bundle(&self, caller: &Caller, body: &[u8]) -> Result<BundleReply, Error> {
        let bundle: Value = serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("The body is not valid JSON: {e}")))?;
        if !caller.access.can_write_any() {
            return Err(Error::forbidden(
                "This client may not write resources (it has no write scope)",
            ));
        }
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(Error::invalid("POST to the base takes a Bundle"));
        }
        let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("");
        let transaction = match kind {
            "transaction" => true,
            "batch" => false,
            other => {
                return Err(Error::invalid(format!(
                    "Bundle.type must be 'batch' or 'transaction', not '{other}'"
                )))
            }
        };
        let entries: Vec<&RawValue> = match bundle.get("entry") {
            None => Vec::new(),
            Some(Value::Array(_)) => {
                #[derive(Deserialize)]
                struct Entries<'a> {
                    #[serde(borrow)]
                    entry: Vec<&'a RawValue>,
                }
                serde_json::from_slice::<Entries>(body)
                    .map_err(|e| Error::invalid(format!("Bundle.entry: {e}")))?
                    .entry
            }
            Some(_) => return Err(Error::invalid("Bundle.entry must be an array")),
        };
        if entries.len() > MAX_BUNDLE_ENTRIES {
            return Err(Error::too_large(format!(
                "A Bundle may hold at most {MAX_BUNDLE_ENTRIES} entries"
            )));
        }
        let planned: Vec<Result<WriteOp, Error>> = entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| entry_op(i, e).and_then(|(kind, op)| permitted(caller, i, kind, op)))
            .collect();
        if transaction {
            if let Some(Err(e)) = planned.iter().find(|p| p.is_err()) {
                return Err(e.clone());
            }
        }
        let ops: Vec<WriteOp> = planned
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut results = self
            .resources
            .write_as(&caller.subject, ops)
            .await?
            .into_iter();
        let entries = planned
            .into_iter()
            .map(|p| {
                p.map(|op| EntryWritten {
                    delete: matches!(op, WriteOp::Delete { .. }),
                    result: results.next().expect("one result per op"),
                })
            })
            .collect();
        Ok(BundleReply {
            transaction,
            entries,
        })
    }
}

/// Writing needs a write scope on the type (SMART v1 `system/T.write`, or
/// v2 `c`, `u`, `d` for create, update, delete); open mode writes freely.
fn require_write(caller: &Caller, kind: WriteKind, resource_type: &str) -> Result<(), Error> {
    if caller.access.can_write(kind, resource_type) {
        return Ok(());
    }
    let (verb, letter) = match kind {
        WriteKind::Create => ("create", 'c'),
        WriteKind::Update => ("update", 'u'),
        WriteKind::Delete => ("delete", 'd'),
    };
    Err(Error::forbidden(format!(
        "This client may not {verb} {resource_type}: that needs a write scope \
         (system/{resource_type}.write, or system/{resource_type}.{letter} in SMART v2)"
    )))
}

/// A Bundle entry's write, if the caller's scopes permit it.
fn permitted(caller: &Caller, i: usize, kind: WriteKind, op: WriteOp) -> Result<WriteOp, Error> {
    let (WriteOp::Delete { resource_type, .. } | WriteOp::Upsert { resource_type, .. }) = &op;
    require_write(caller, kind, resource_type)
        .map_err(|e| e.within(&format!("Bundle.entry[{i}]")))?;
    Ok(op)
}

/// An entry's parts: its request, and its resource as written.
#[derive(Deserialize)]
struct Entry<'a> {
    request: Option<Value>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
}

fn entry_op(i: usize, entry: &RawValue) -> Result<(WriteKind, WriteOp), Error> {
    let at = |msg: String| Error::invalid(format!("Bundle.entry[{i}]: {msg}"));
    let entry: Entry = serde_json::from_str(entry.get())
        .map_err(|e| at(format!("is not an entry object: {e}")))?;
    let request = entry
        .request
        .as_ref()
        .ok_or_else(|| at("has no request".into()))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| at("request has no url".into()))?;
    let url = url.trim_start_matches('/');
    let (resource_type, id) = match url.split_once('/') {
        Some((t, id)) => (t, Some(id)),
        None => (url, None),
    };
    check_type(resource_type).map_err(|e| at(e.message()))?;
    if let Some(id) = id {
        if !is_valid_id(id) {
            return Err(at(format!("'{id}' is not a valid id")));
        }
    }
    let resource = || {
        let raw = entry.resource.ok_or_else(|| at("has no resource".into()))?;
        ResourceText::parse(raw.get().as_bytes()).map_err(|e| at(format!("its resource is {e}")))
    };
    match (method, id) {
        ("PUT", Some(id)) => {
            let r = resource()?;
            check_resource_value(r.value(), resource_type, Some(id))
                .map_err(|e| at(e.message()))?;
            let op = WriteOp::Upsert {
                resource_type: resource_type.into(),
                id: id.into(),
                resource: r,
            };
            Ok((WriteKind::Update, op))
        }
        ("POST", None) => {
            let r = resource()?;
            check_resource_value(r.value(), resource_type, None).map_err(|e| at(e.message()))?;
            let op = WriteOp::Upsert {
                resource_type: resource_type.into(),
                id: uuid::Uuid::new_v4().to_string(),
                resource: r,
            };
            Ok((WriteKind::Create, op))
        }
        ("DELETE", Some(id)) => Ok((
            WriteKind::Delete,
            WriteOp::Delete {
                resource_type: resource_type.into(),
                id: id.into(),
            },
        )),
        _ => Err(at(format!(
            "'{method} {url}' is not supported (PUT Type/id, POST Type, DELETE Type/id)"
        ))),
    }
}
