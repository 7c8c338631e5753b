//! The audit trail export (`$export-revisions`, after OpenSpecimen's
//! `export-revisions`): its request, and the CSV rows it writes.
//!
//! One row per stored version, newest first:
//! `Revision ID, Revision Time, User, User Email ID, Operation, Record Type,
//! Record, Change Log`.
//! - **Revision ID** is the version's `lastUpdated` in microseconds since
//!   the epoch: unique across the store, and it sorts in time order.
//! - **Revision Time** is the same instant in ISO 8601 UTC with
//!   microseconds, exactly the version's `meta.lastUpdated`.
//! - **Change Log** (with `includeModifiedProps`) is a JSON object in the
//!   shape of an RFC 7396 merge patch over the top-level elements: each
//!   element this version added or changed with its new value, and each
//!   element it removed as `null` (FHIR JSON has no nulls, so `null` always
//!   means removed). `resourceType`, `id`, `meta.versionId` and
//!   `meta.lastUpdated` are left out: they change with every version.

use chrono::{DateTime, Days, NaiveTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use super::csv::csv_line;
use super::fhir_types::is_resource_type;
use super::instant::{format_instant, from_micros, parse_instant, to_micros};
use super::params::{json_fields, read_params, Param};
use super::Error;

/// The CSV's header, exactly.
pub const HEADER: [&str; 8] = [
    "Revision ID",
    "Revision Time",
    "User",
    "User Email ID",
    "Operation",
    "Record Type",
    "Record",
    "Change Log",
];

/// The seed's default window: the 30 days before `endDate`.
const DEFAULT_DAYS: u64 = 30;
/// At most this many users in one request.
pub const MAX_USERS: usize = 1000;

/// A validated `$export-revisions` request, as stored on the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionsQuery {
    /// Inclusive bounds on `lastUpdated`, in µs since the epoch.
    pub start: i64,
    pub end: i64,
    /// Authors to keep; empty keeps all.
    #[serde(default)]
    pub users: Vec<String>,
    /// Resource types asked for; empty means every type the caller may read.
    #[serde(default)]
    pub entities: Vec<String>,
    #[serde(default)]
    pub include_modified_props: bool,
}

fn field_error(field: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{field}: {why}"))
}

/// Parses and checks the JSON body ([`REVISIONS_FIELDS`]); `now` fixes
/// the defaults.
pub fn parse_revisions_request(body: &[u8], now: DateTime<Utc>) -> Result<RevisionsQuery, Error> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("The body is not valid JSON: {e}")))?
    };
    let Value::Object(fields) = body else {
        return Err(Error::invalid(
            "The body must be a JSON object, e.g. {\"startDate\": 1551398400000}",
        ));
    };
    let mut f = Fields::default();
    read_params(REVISIONS_FIELDS, &json_fields(fields), &mut f, |_, p| {
        let names: Vec<&str> = REVISIONS_FIELDS.iter().map(|row| row.name).collect();
        Err(field_error(
            &p.name,
            format!("unknown field; the fields are {}", names.join(", ")),
        ))
    })?;
    f.finish(now)
}

/// The `$export-revisions` body's fields.
pub const REVISIONS_FIELDS: &[Param<Fields>] = &[
    Param::once("startDate", |f, p| {
        f.start = date_field(&p.name, p.as_json(), false)?;
        Ok(())
    }),
    Param::once("endDate", |f, p| {
        f.end = date_field(&p.name, p.as_json(), true)?;
        Ok(())
    }),
    Param::once("userId", |f, p| {
        f.user_id = Some(user_field(&p.name, p.as_json())?);
        Ok(())
    }),
    Param::once("userIds", |f, p| {
        f.user_ids = Some(user_ids(p.as_json())?);
        Ok(())
    }),
    Param::once("entities", |f, p| {
        f.entities = entities(p.as_json())?;
        Ok(())
    }),
    Param::once("includeModifiedProps", |f, p| {
        f.include_modified_props = p
            .as_json()
            .as_bool()
            .ok_or_else(|| field_error("includeModifiedProps", "must be true or false"))?;
        Ok(())
    }),
];

/// An `$export-revisions` request while its fields are read.
#[derive(Debug, Default)]
pub struct Fields {
    start: Option<i64>,
    end: Option<i64>,
    user_id: Option<String>,
    user_ids: Option<Vec<String>>,
    entities: Vec<String>,
    include_modified_props: bool,
}

impl Fields {
    /// The defaults for what was not given, and the checks across fields.
    fn finish(self, now: DateTime<Utc>) -> Result<RevisionsQuery, Error> {
        let end = self.end.unwrap_or_else(|| end_of_day(now));
        let start = self
            .start
            .unwrap_or(end - (DEFAULT_DAYS as i64) * 86_400_000_000 + 1);
        if start > end {
            return Err(field_error(
                "startDate",
                format!(
                    "{} is after endDate {}",
                    format_instant(from_micros(start)),
                    format_instant(from_micros(end))
                ),
            ));
        }
        let users = match (self.user_id, self.user_ids) {
            (Some(_), Some(_)) => {
                return Err(field_error("userIds", "give userId or userIds, not both"))
            }
            (Some(one), None) => vec![one],
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        Ok(RevisionsQuery {
            start,
            end,
            users,
            entities: self.entities,
            include_modified_props: self.include_modified_props,
        })
    }
}

fn user_ids(v: &Value) -> Result<Vec<String>, Error> {
    let Value::Array(list) = v else {
        return Err(field_error("userIds", "must be an array of user ids"));
    };
    if list.is_empty() {
        return Err(field_error("userIds", "must name at least one user"));
    }
    if list.len() > MAX_USERS {
        return Err(field_error("userIds", format!("at most {MAX_USERS} users")));
    }
    let mut users = list
        .iter()
        .enumerate()
        .map(|(i, v)| user_field(&format!("userIds[{i}]"), v))
        .collect::<Result<Vec<_>, _>>()?;
    users.sort();
    users.dedup();
    Ok(users)
}

fn entities(v: &Value) -> Result<Vec<String>, Error> {
    let Value::Array(list) = v else {
        return Err(field_error(
            "entities",
            "must be an array of resource types, e.g. [\"Patient\"]",
        ));
    };
    if list.is_empty() {
        return Err(field_error(
            "entities",
            "must name at least one resource type",
        ));
    }
    let mut types = list
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some(t) if is_resource_type(t) => Ok(t.to_string()),
            Some(t) => Err(field_error(
                &format!("entities[{i}]"),
                format!("'{t}' is not a FHIR R4 resource type"),
            )),
            None => Err(field_error(
                &format!("entities[{i}]"),
                "must be a resource type name (a string)",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    types.sort();
    types.dedup();
    Ok(types)
}

/// The last microsecond of `now`'s day (UTC): the seed's "end of today".
fn end_of_day(now: DateTime<Utc>) -> i64 {
    let tomorrow = now
        .date_naive()
        .checked_add_days(Days::new(1))
        .unwrap_or(now.date_naive())
        .and_time(NaiveTime::MIN)
        .and_utc();
    to_micros(tomorrow) - 1
}

/// Epoch milliseconds (the seed's form) or an ISO 8601 instant. An end
/// given in milliseconds covers its whole millisecond.
fn date_field(field: &str, v: &Value, is_end: bool) -> Result<Option<i64>, Error> {
    // Years 1970 to 9999: what an audit can mean, and what µs can hold.
    const MAX_MS: i64 = 253_402_300_799_999;
    match v {
        // `null` asks for the default, as leaving the field out does.
        Value::Null => Ok(None),
        Value::Number(n) => {
            let ms = n
                .as_i64()
                .filter(|ms| (0..=MAX_MS).contains(ms))
                .ok_or_else(|| {
                    field_error(
                        field,
                        format!("{n} is not a time in epoch milliseconds (a whole number from 0)"),
                    )
                })?;
            Ok(Some(ms * 1000 + if is_end { 999 } else { 0 }))
        }
        Value::String(s) => {
            let t = parse_instant(s).map_err(|e| field_error(field, e))?;
            if t.timestamp_millis() < 0 || t.timestamp_millis() > MAX_MS {
                return Err(field_error(field, format!("'{s}' is out of range")));
            }
            Ok(Some(to_micros(t)))
        }
        _ => Err(field_error(
            field,
            "must be epoch milliseconds or an ISO 8601 instant (e.g. 2024-03-01T00:00:00Z)",
        )),
    }
}

/// User ids are client ids (strings); numbers are taken as their text, as
/// the seed's numeric ids would be.
fn user_field(field: &str, v: &Value) -> Result<String, Error> {
    let id = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return Err(field_error(field, "must be a user id (a string)")),
    };
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(field_error(
            field,
            "must be a non-empty user id of at most 256 characters",
        ));
    }
    Ok(id)
}

/// What a revision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Add,
    Edit,
    Delete,
}

impl Operation {
    /// A version with no live predecessor adds the record (a first version,
    /// or one after a deletion); a tombstone deletes it; others edit it.
    pub fn of(deleted: bool, previous_live: bool) -> Self {
        match (deleted, previous_live) {
            (true, _) => Operation::Delete,
            (false, false) => Operation::Add,
            (false, true) => Operation::Edit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Add => "Add",
            Operation::Edit => "Edit",
            Operation::Delete => "Delete",
        }
    }
}

/// A body's top-level elements as raw JSON text, in name order (the text is
/// compared and copied, never rebuilt: the store writes compact JSON).
type Elements<'a> = BTreeMap<String, &'a RawValue>;

fn elements(body: Option<&str>) -> Result<Elements<'_>, serde_json::Error> {
    let mut map: Elements = match body {
        Some(b) => serde_json::from_str(b)?,
        None => BTreeMap::new(),
    };
    map.remove("resourceType");
    map.remove("id");
    Ok(map)
}

/// `meta` without the stamps every version changes; `None` if nothing else.
fn meta_content(raw: Option<&RawValue>) -> Result<Option<Value>, serde_json::Error> {
    let Some(raw) = raw else { return Ok(None) };
    let mut meta: Map<String, Value> = serde_json::from_str(raw.get())?;
    meta.remove("versionId");
    meta.remove("lastUpdated");
    Ok((!meta.is_empty()).then_some(Value::Object(meta)))
}

/// The change log between the previous live body (if any) and this one
/// (`None` for a deletion): see the module comment. Elements appear in
/// name order.
pub fn change_log(
    previous: Option<&str>,
    current: Option<&str>,
) -> Result<String, serde_json::Error> {
    let (before, after) = (elements(previous)?, elements(current)?);
    let mut out = String::from("{");
    let mut entry = |name: &str, value: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&Value::String(name.to_string()).to_string());
        out.push(':');
        out.push_str(value);
    };
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (old, new) = (before.get(name.as_str()), after.get(name.as_str()));
        if name == "meta" {
            let (old, new) = (meta_content(old.copied())?, meta_content(new.copied())?);
            match new {
                Some(new) if old.as_ref() != Some(&new) => entry(name, &new.to_string()),
                None if old.is_some() => entry(name, "null"),
                _ => {}
            }
            continue;
        }
        match (old, new) {
            (_, Some(new)) if old.map(|o| o.get()) != Some(new.get()) => entry(name, new.get()),
            (Some(_), None) => entry(name, "null"),
            _ => {}
        }
    }
    out.push('}');
    Ok(out)
}

/// One CSV row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRow<'a> {
    pub last_updated: i64,
    pub user: &'a str,
    pub email: &'a str,
    pub operation: Operation,
    pub resource_type: &'a str,
    pub id: &'a str,
    pub change_log: &'a str,
}

impl RevisionRow<'_> {
    /// The row as RFC 4180 CSV, without its line break.
    pub fn to_csv(&self) -> Vec<u8> {
        let time = format_instant(from_micros(self.last_updated));
        csv_line(&[
            &self.last_updated.to_string(),
            &time,
            self.user,
            self.email,
            self.operation.as_str(),
            self.resource_type,
            self.id,
            self.change_log,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        parse_instant("2026-03-15T10:30:00Z").unwrap()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let q = parse_revisions_request(b"{}", now()).unwrap();
        assert_eq!(
            format_instant(from_micros(q.end)),
            "2026-03-15T23:59:59.999999Z"
        );
        assert_eq!(
            format_instant(from_micros(q.start)),
            "2026-02-14T00:00:00.000000Z"
        );
        assert!(q.users.is_empty() && q.entities.is_empty() && !q.include_modified_props);
        assert_eq!(parse_revisions_request(b"", now()).unwrap(), q);
    }

    #[test]
    fn the_seeds_example_parses() {
        let q = parse_revisions_request(
            br#"{"startDate": 1551398400000, "endDate": 1552608000000, "userIds": [1, "b", 1],
                 "includeModifiedProps": true, "entities": ["Patient", "Observation"]}"#,
            now(),
        )
        .unwrap();
        assert_eq!(q.start, 1_551_398_400_000_000);
        assert_eq!(q.end, 1_552_608_000_000_999);
        assert_eq!(q.users, vec!["1", "b"]);
        assert_eq!(q.entities, vec!["Observation", "Patient"]);
        assert!(q.include_modified_props);
        let iso = parse_revisions_request(
            br#"{"startDate": "2019-03-01T00:00:00Z", "endDate": "2019-03-15T00:00:00.5+01:00"}"#,
            now(),
        )
        .unwrap();
        assert_eq!(iso.start, 1_551_398_400_000_000);
        assert_eq!(
            format_instant(from_micros(iso.end)),
            "2019-03-14T23:00:00.500000Z"
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (body, field) in [
            (r#"{"startDate": "yesterday"}"#, "startDate"),
            (r#"{"endDate": -1}"#, "endDate"),
            (r#"{"endDate": 1.5}"#, "endDate"),
            (r#"{"startDate": 2, "endDate": 1}"#, "startDate"),
            (r#"{"userId": 1, "userIds": [2]}"#, "userIds"),
            (r#"{"userIds": []}"#, "userIds"),
            (r#"{"userIds": [true]}"#, "userIds[0]"),
            (r#"{"userId": ""}"#, "userId"),
            (r#"{"entities": ["Nope"]}"#, "entities[0]"),
            (r#"{"entities": "Patient"}"#, "entities"),
            (r#"{"includeModifiedProps": "yes"}"#, "includeModifiedProps"),
            (r#"{"user": "a"}"#, "user"),
        ] {
            let e = parse_revisions_request(body.as_bytes(), now()).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{body}: {e:?}");
            assert!(e.message().starts_with(&format!("{field}:")), "{body}: {e}");
        }
    }

    #[test]
    fn the_change_log_is_a_top_level_merge_patch() {
        let v1 = json!({"resourceType": "Observation", "id": "o", "meta": {"versionId": "1", "lastUpdated": "x"},
                        "status": "preliminary", "note": [{"text": "n"}], "code": {"text": "c"}});
        let v2 = json!({"resourceType": "Observation", "id": "o", "meta": {"versionId": "2", "lastUpdated": "y"},
                        "status": "final", "code": {"text": "c"}, "issued": "2020-01-01T00:00:00Z"});
        let log = |a: Option<&Value>, b: Option<&Value>| -> Value {
            let (a, b) = (a.map(Value::to_string), b.map(Value::to_string));
            serde_json::from_str(&change_log(a.as_deref(), b.as_deref()).unwrap()).unwrap()
        };
        let patch = log(Some(&v1), Some(&v2));
        assert_eq!(
            patch,
            json!({"status": "final", "issued": "2020-01-01T00:00:00Z", "note": null})
        );
        let added = log(None, Some(&v1));
        assert_eq!(
            added,
            json!({"status": "preliminary", "note": [{"text": "n"}], "code": {"text": "c"}})
        );
        let deleted = log(Some(&v2), None);
        assert_eq!(
            deleted,
            json!({"status": null, "code": null, "issued": null})
        );
        // Tags in meta count; the stamps do not. Names come in order.
        let tagged = json!({"resourceType": "Observation", "meta": {"versionId": "3", "tag": [{"code": "t"}]}, "status": "final", "code": {"text": "c"}});
        assert_eq!(
            change_log(Some(&v2.to_string()), Some(&tagged.to_string())).unwrap(),
            r#"{"issued":null,"meta":{"tag":[{"code":"t"}]}}"#
        );
    }

    #[test]
    fn rows_are_rfc_4180() {
        let row = RevisionRow {
            last_updated: 1_700_000_000_000_001,
            user: "Dr. \"Q\", Lab",
            email: "",
            operation: Operation::Edit,
            resource_type: "Patient",
            id: "p1",
            change_log: "{\"a\":\"x\ny\"}",
        };
        assert_eq!(
            String::from_utf8(row.to_csv()).unwrap(),
            "1700000000000001,2023-11-14T22:13:20.000001Z,\"Dr. \"\"Q\"\", Lab\",,Edit,Patient,p1,\"{\"\"a\"\":\"\"x\ny\"\"}\""
        );
        assert_eq!(
            String::from_utf8(csv_line(&HEADER)).unwrap(),
            "Revision ID,Revision Time,User,User Email ID,Operation,Record Type,Record,Change Log"
        );
    }
}
