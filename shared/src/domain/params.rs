//! Request parameters, read through a table.
//!
//! Every request that takes named parameters (`$export` by query string or
//! `Parameters` body, `$viewdefinition-export`, `$export-revisions`, and
//! through them schedules and releases) first becomes a list of
//! [`RawParam`]s. Its table then says, per parameter, its name, how often
//! it may be given and the function that reads its value into the typed
//! request being built. [`read_params`] applies a table: the rules all
//! requests share (a parameter given twice, an unknown name, naming the
//! parameter an error is about) live here once.

use serde_json::{Map, Value};

use super::Error;

/// A parameter's value as the request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Text(String),
    /// A `valueReference.reference` from a POST Parameters body.
    Reference(String),
    /// A JSON body's field, or a `Parameters` entry whole (with its parts).
    Json(Value),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawParam {
    pub name: String,
    pub value: ParamValue,
}

impl RawParam {
    pub fn text(name: &str, value: &str) -> Self {
        RawParam {
            name: name.to_string(),
            value: ParamValue::Text(value.to_string()),
        }
    }

    fn json(name: &str, value: Value) -> Self {
        RawParam {
            name: name.to_string(),
            value: ParamValue::Json(value),
        }
    }

    /// The value as text; a reference is refused (only some parameters
    /// take one, and they say so).
    pub fn as_text(&self) -> Result<&str, Error> {
        match &self.value {
            ParamValue::Text(t) => Ok(t),
            ParamValue::Reference(_) | ParamValue::Json(_) => Err(Error::invalid(format!(
                "Parameter '{}' takes a string, not a reference",
                self.name
            ))),
        }
    }

    /// The JSON value (of a JSON body's field or a `Parameters` entry).
    pub fn as_json(&self) -> &Value {
        static NULL: Value = Value::Null;
        match &self.value {
            ParamValue::Json(v) => v,
            _ => &NULL,
        }
    }
}

/// How often a parameter may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cardinality {
    Once,
    Many,
}

/// One row of a parameter table: a parameter of requests built as `T`.
pub struct Param<T> {
    pub name: &'static str,
    pub cardinality: Cardinality,
    /// Reads one value into the request being built.
    pub read: fn(&mut T, &RawParam) -> Result<(), Error>,
}

impl<T> Param<T> {
    pub const fn once(
        name: &'static str,
        read: fn(&mut T, &RawParam) -> Result<(), Error>,
    ) -> Self {
        Param {
            name,
            cardinality: Cardinality::Once,
            read,
        }
    }

    pub const fn many(
        name: &'static str,
        read: fn(&mut T, &RawParam) -> Result<(), Error>,
    ) -> Self {
        Param {
            name,
            cardinality: Cardinality::Many,
            read,
        }
    }
}

/// Reads `params` in order into `into` through `table`. A second value of
/// a parameter given [`Cardinality::Once`] is refused; a name not in the
/// table goes to `unknown` (which refuses it, or notes it under lenient
/// handling). An `Invalid` error a row's reader returns names its
/// parameter.
pub fn read_params<T>(
    table: &[Param<T>],
    params: &[RawParam],
    into: &mut T,
    unknown: fn(&mut T, &RawParam) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut given: Vec<&str> = Vec::new();
    for p in params {
        let Some(row) = table.iter().find(|row| row.name == p.name) else {
            unknown(into, p)?;
            continue;
        };
        if row.cardinality == Cardinality::Once && given.contains(&row.name) {
            return Err(Error::invalid_param(
                row.name,
                format!("Parameter '{}' may be given only once", row.name),
            ));
        }
        given.push(row.name);
        (row.read)(into, p).map_err(|e| e.about(row.name))?;
    }
    Ok(())
}

/// A query string as raw parameters.
pub fn query_params(query: &str) -> Result<Vec<RawParam>, Error> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| Error::invalid("The query string is not valid UTF-8"))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if k.is_empty() {
            return Err(Error::invalid(
                "The query string has a parameter without a name",
            ));
        }
        out.push(RawParam::text(&k, &v));
    }
    Ok(out)
}

/// A POST kick-off's `Parameters` body as raw parameters: each entry's
/// `value[x]` as text, or its `valueReference.reference`.
pub fn params_from_parameters_resource(body: &[u8]) -> Result<Vec<RawParam>, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("The request body is not valid JSON: {e}")))?;
    let entries = parameters_entries(
        &value,
        "The POST kick-off body must be a FHIR Parameters resource",
    )?;
    let mut out = Vec::with_capacity(entries.len());
    for (i, p) in entries.iter().enumerate() {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(format!("Parameters.parameter[{i}] has no name")))?;
        out.push(RawParam {
            name: name.to_string(),
            value: entry_value(name, p)?,
        });
    }
    Ok(out)
}

fn entry_value(name: &str, p: &Value) -> Result<ParamValue, Error> {
    let value = p
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
        .ok_or_else(|| Error::invalid(format!("Parameter '{name}' has no value[x]")))?;
    match (value.0.as_str(), value.1) {
        ("valueReference", v) => {
            let reference = v.get("reference").and_then(Value::as_str).ok_or_else(|| {
                Error::invalid(format!(
                    "Parameter '{name}' valueReference has no reference"
                ))
            })?;
            Ok(ParamValue::Reference(reference.to_string()))
        }
        (_, Value::String(s)) => Ok(ParamValue::Text(s.clone())),
        (_, Value::Bool(b)) => Ok(ParamValue::Text(b.to_string())),
        (kind, _) => Err(Error::invalid(format!(
            "Parameter '{name}' has an unsupported {kind}"
        ))),
    }
}

/// A `Parameters` resource's entries, each kept whole as
/// [`ParamValue::Json`] (for parameters with parts).
pub fn parameters_as_json(body: &Value, not_parameters: &str) -> Result<Vec<RawParam>, Error> {
    parameters_entries(body, not_parameters)?
        .iter()
        .map(|p| {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid("A parameter has no name"))?;
            Ok(RawParam::json(name, p.clone()))
        })
        .collect()
}

fn parameters_entries<'a>(body: &'a Value, not_parameters: &str) -> Result<&'a [Value], Error> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(Error::invalid(not_parameters));
    }
    match body.get("parameter") {
        None => Ok(&[]),
        Some(Value::Array(entries)) => Ok(entries),
        Some(_) => Err(Error::invalid("Parameters.parameter must be an array")),
    }
}

/// A JSON object's fields as raw parameters, in the object's order.
pub fn json_fields(fields: Map<String, Value>) -> Vec<RawParam> {
    fields
        .into_iter()
        .map(|(name, value)| RawParam::json(&name, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Counted {
        single: Option<String>,
        many: Vec<String>,
        unknown: Vec<String>,
    }

    fn single(c: &mut Counted, p: &RawParam) -> Result<(), Error> {
        let t = p.as_text()?;
        if t == "bad" {
            return Err(Error::invalid("not good"));
        }
        c.single = Some(t.to_string());
        Ok(())
    }

    fn many(c: &mut Counted, p: &RawParam) -> Result<(), Error> {
        c.many.push(p.as_text()?.to_string());
        Ok(())
    }

    fn note_unknown(c: &mut Counted, p: &RawParam) -> Result<(), Error> {
        if p.name == "refused" {
            return Err(Error::not_supported("no"));
        }
        c.unknown.push(p.name.clone());
        Ok(())
    }

    const TABLE: &[Param<Counted>] = &[Param::once("single", single), Param::many("many", many)];

    fn read(query: &str) -> Result<Counted, Error> {
        let mut c = Counted::default();
        read_params(TABLE, &query_params(query)?, &mut c, note_unknown)?;
        Ok(c)
    }

    #[test]
    fn each_row_reads_its_values_in_order() {
        let c = read("many=a&single=x&many=b&other=1").unwrap();
        assert_eq!(c.single.as_deref(), Some("x"));
        assert_eq!(c.many, ["a", "b"]);
        assert_eq!(c.unknown, ["other"]);
    }

    #[test]
    fn a_once_parameter_given_twice_is_refused_naming_it() {
        let e = read("single=x&single=y").unwrap_err();
        assert_eq!(
            e,
            Error::invalid_param("single", "Parameter 'single' may be given only once")
        );
    }

    #[test]
    fn a_readers_invalid_error_names_its_parameter_and_other_kinds_pass() {
        assert_eq!(
            read("single=bad").unwrap_err(),
            Error::invalid_param("single", "not good")
        );
        assert_eq!(read("refused=1").unwrap_err(), Error::not_supported("no"));
    }

    #[test]
    fn a_reference_is_not_text() {
        let p = RawParam {
            name: "single".into(),
            value: ParamValue::Reference("Patient/1".into()),
        };
        let mut c = Counted::default();
        let e = read_params(TABLE, &[p], &mut c, note_unknown).unwrap_err();
        assert_eq!(
            e,
            Error::invalid_param(
                "single",
                "Parameter 'single' takes a string, not a reference"
            )
        );
    }

    #[test]
    fn parameters_bodies_and_json_objects_become_params() {
        let body = br#"{"resourceType":"Parameters","parameter":[
            {"name":"_type","valueString":"Patient"},
            {"name":"patient","valueReference":{"reference":"Patient/1"}},
            {"name":"allowPartialManifests","valueBoolean":true}]}"#;
        let params = params_from_parameters_resource(body).unwrap();
        assert_eq!(params[0], RawParam::text("_type", "Patient"));
        assert_eq!(params[1].value, ParamValue::Reference("Patient/1".into()));
        assert_eq!(params[2], RawParam::text("allowPartialManifests", "true"));
        let fields = serde_json::json!({"a": 1, "b": [2]});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let params = json_fields(fields);
        assert_eq!(params[1].name, "b");
        assert_eq!(params[1].as_json(), &serde_json::json!([2]));
    }
}
