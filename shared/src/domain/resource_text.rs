//! A resource as its client wrote it. FHIR says a decimal's precision is
//! significant (`1.50` is not `1.5`), so the store keeps the client's JSON
//! text, not a re-serialised parse of it: whitespace outside strings is
//! dropped (an NDJSON line is one line), every token is kept as written,
//! and the server's own fields (`id`, `meta.versionId`, `meta.lastUpdated`)
//! are spliced into that text. Nothing else is changed.
//!
//! The parsed value rides along for the rules and indexes that read it
//! (type and id checks, compartments, Group members).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// The SUBSETTED tag `_elements` adds to `meta.tag` (Bulk Data IG).
pub const SUBSETTED_TAG: &str =
    r#"{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}"#;

/// A resource's JSON text, one line, with its parsed value.
#[derive(Debug, Clone)]
pub struct ResourceText {
    text: String,
    value: Value,
}

/// Why a body is not a JSON resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError(pub String);

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TextError {}

impl ResourceText {
    /// A client's JSON: parsed (errors name the line and column), made one
    /// line, and refused if an object holds a key twice (the parse would
    /// keep one of them and the text both).
    pub fn parse(json: &[u8]) -> Result<Self, TextError> {
        let value: Value =
            serde_json::from_slice(json).map_err(|e| TextError(format!("not valid JSON: {e}")))?;
        let text = one_line(json);
        if let Err(e) = serde_json::from_str::<NoDuplicateKeys>(&text) {
            return Err(TextError(e.to_string()));
        }
        Ok(ResourceText { text, value })
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text to store: `id` set (after `resourceType` if it was not
    /// there), and `meta.versionId` and `meta.lastUpdated` set (at the front
    /// of `meta`, which follows `id`, if they were not there). Every other
    /// byte is the client's.
    pub fn stamped(&self, id: &str, version: u64, last_updated: &str) -> String {
        let id_json = json_string(id);
        let meta = |raw: Option<&RawValue>| {
            let fields = [
                ("versionId", json_string(&version.to_string())),
                ("lastUpdated", json_string(last_updated)),
            ];
            set_members(raw, &fields, Placement::Front)
        };
        let members = members_of(&self.text).unwrap_or_default();
        let has = |k: &str| members.iter().any(|(key, _)| key == k);
        let (has_id, has_meta) = (has("id"), has("meta"));
        let mut out = Object::with_capacity(self.text.len() + 96);
        for (key, raw) in &members {
            match key.as_ref() {
                "id" => out.member("id", &id_json),
                "meta" => out.member("meta", &meta(Some(raw))),
                k => out.member(k, raw.get()),
            }
            if key == "resourceType" && !has_id {
                out.member("id", &id_json);
                if !has_meta {
                    out.member("meta", &meta(None));
                }
            }
            if key == "id" && !has_meta {
                out.member("meta", &meta(None));
            }
        }
        if !has("resourceType") && !has_id {
            out.member("id", &id_json);
            if !has_meta {
                out.member("meta", &meta(None));
            }
        }
        out.finish()
    }
}

/// Generated resources (samples, tests, benchmarks): serialised once.
impl From<Value> for ResourceText {
    fn from(value: Value) -> Self {
        ResourceText {
            text: value.to_string(),
            value,
        }
    }
}

/// `_elements`: the stored `text` reduced to the members `keep` says yes
/// to, its `meta.tag` given the SUBSETTED tag. The kept members are the
/// stored bytes.
pub fn subset_text(text: &str, keep: impl Fn(&str) -> bool) -> Result<String, TextError> {
    let members = members_of(text)?;
    let meta = members.iter().find(|(k, _)| k == "meta").map(|(_, v)| *v);
    let tagged = tag_subsetted(meta);
    // A new `meta` goes after `id` (or `resourceType`), as FHIR orders them.
    let anchor = ["id", "resourceType"]
        .iter()
        .find_map(|a| members.iter().position(|(k, _)| k == a));
    let mut out = Object::with_capacity(text.len());
    if meta.is_none() && anchor.is_none() {
        out.member("meta", &tagged);
    }
    for (i, (key, raw)) in members.iter().enumerate() {
        if key == "meta" {
            out.member("meta", &tagged);
        } else if keep(key) {
            out.member(key, raw.get());
        }
        if meta.is_none() && anchor == Some(i) {
            out.member("meta", &tagged);
        }
    }
    Ok(out.finish())
}

/// `meta` with the SUBSETTED tag appended to `tag`.
fn tag_subsetted(meta: Option<&RawValue>) -> String {
    let tags = meta
        .and_then(|m| members_of(m.get()).ok())
        .and_then(|ms| {
            ms.into_iter()
                .find(|(k, _)| k == "tag")
                .map(|(_, v)| v.get())
        })
        .and_then(|tags| tags.strip_suffix(']'))
        .map(|open| {
            let open = open.trim_end();
            if open.ends_with('[') {
                format!("{open}{SUBSETTED_TAG}]")
            } else {
                format!("{open},{SUBSETTED_TAG}]")
            }
        })
        .unwrap_or_else(|| format!("[{SUBSETTED_TAG}]"));
    set_members(meta, &[("tag", tags)], Placement::Back)
}

/// Where `set_members` puts a member the object did not have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    Front,
    Back,
}

/// An object's text with `fields` set: a member it had keeps its place, a
/// new one goes to the front or the back. Not an object: a new one.
fn set_members(raw: Option<&RawValue>, fields: &[(&str, String)], new: Placement) -> String {
    let members = raw
        .and_then(|r| members_of(r.get()).ok())
        .unwrap_or_default();
    let absent: Vec<&(&str, String)> = fields
        .iter()
        .filter(|(k, _)| !members.iter().any(|(key, _)| key == k))
        .collect();
    let mut out = Object::with_capacity(raw.map_or(64, |r| r.get().len() + 64));
    if new == Placement::Front {
        absent.iter().for_each(|(k, v)| out.member(k, v));
    }
    for (key, raw) in &members {
        match fields.iter().find(|(k, _)| k == key) {
            Some((k, v)) => out.member(k, v),
            None => out.member(key, raw.get()),
        }
    }
    if new == Placement::Back {
        absent.iter().for_each(|(k, v)| out.member(k, v));
    }
    out.finish()
}

/// An object's text built member by member.
struct Object {
    out: String,
    first: bool,
}

impl Object {
    fn with_capacity(n: usize) -> Self {
        let mut out = String::with_capacity(n);
        out.push('{');
        Object { out, first: true }
    }

    fn member(&mut self, key: &str, json: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str(&json_string(key));
        self.out.push(':');
        self.out.push_str(json);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// An object's members in order, each value as its exact text.
fn members_of(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, TextError> {
    serde_json::from_str::<Members>(text)
        .map(|m| m.0)
        .map_err(|e| TextError(format!("not a JSON object: {e}")))
}

struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Key(k)) = map.next_key()? {
                    out.push((k, map.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An object key, borrowed from the text unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Checks, at every depth, that no object holds a key twice.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoDuplicateKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen: Vec<Cow<'de, str>> = Vec::new();
                while let Some(Key(k)) = map.next_key()? {
                    if seen.contains(&k) {
                        return Err(de::Error::custom(format!(
                            "an object holds the key '{k}' twice"
                        )));
                    }
                    map.next_value::<NoDuplicateKeys>()?;
                    seen.push(k);
                }
                Ok(NoDuplicateKeys)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
        }
        d.deserialize_any(V)
    }
}

/// Valid JSON without the whitespace outside its strings: the same tokens,
/// byte for byte, on one line.
fn one_line(json: &[u8]) -> String {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    // Valid JSON is UTF-8, and only ASCII whitespace was dropped.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ResourceText {
        ResourceText::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn numbers_and_strings_keep_their_text() {
        let body = r#"{ "resourceType" : "Observation",
            "valueQuantity": {"value": 1.50},
            "extension": [{"valueDecimal": 1e2}, {"valueDecimal": 1E-7},
                          {"valueDecimal": -0.0}, {"valueDecimal": 123456789012345678901234567890.12}],
            "note": [{"text": "a  b\n\"c\" \u00e9"}] }"#;
        let r = parse(body);
        assert_eq!(
            r.text(),
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"extension":[{"valueDecimal":1e2},{"valueDecimal":1E-7},{"valueDecimal":-0.0},{"valueDecimal":123456789012345678901234567890.12}],"note":[{"text":"a  b\n\"c\" \u00e9"}]}"#
        );
        assert_eq!(
            r.stamped("o1", 3, "2024-01-01T00:00:00Z"),
            r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00Z"},"valueQuantity":{"value":1.50},"extension":[{"valueDecimal":1e2},{"valueDecimal":1E-7},{"valueDecimal":-0.0},{"valueDecimal":123456789012345678901234567890.12}],"note":[{"text":"a  b\n\"c\" \u00e9"}]}"#
        );
    }

    #[test]
    fn stamping_keeps_the_clients_id_and_meta_in_place() {
        let r = parse(
            r#"{"id":"x","resourceType":"Patient","meta":{"tag":[{"code":"t"}],"versionId":"9","source":"s"},"gender":"male"}"#,
        );
        assert_eq!(
            r.stamped("x", 2, "T"),
            r#"{"id":"x","resourceType":"Patient","meta":{"lastUpdated":"T","tag":[{"code":"t"}],"versionId":"2","source":"s"},"gender":"male"}"#
        );
        // A meta that is not an object is replaced.
        let r = parse(r#"{"resourceType":"Patient","id":"x","meta":7}"#);
        assert_eq!(
            r.stamped("x", 1, "T"),
            r#"{"resourceType":"Patient","id":"x","meta":{"versionId":"1","lastUpdated":"T"}}"#
        );
        // A create: the server's id replaces the client's.
        let r = parse(r#"{"resourceType":"Patient","id":"mine","gender":"other"}"#);
        assert_eq!(
            r.stamped("srv", 1, "T"),
            r#"{"resourceType":"Patient","id":"srv","meta":{"versionId":"1","lastUpdated":"T"},"gender":"other"}"#
        );
        // What a stamp produces parses to what the value-based rule gave.
        let stamped: Value = serde_json::from_str(&r.stamped("srv", 1, "T")).unwrap();
        assert_eq!(stamped["meta"]["versionId"], "1");
    }

    #[test]
    fn duplicate_keys_and_bad_json_are_refused() {
        let e =
            ResourceText::parse(br#"{"resourceType":"Patient","a":{"b":1,"b":2}}"#).unwrap_err();
        assert!(e.0.contains("'b' twice"), "{e}");
        assert!(ResourceText::parse(br#"{"resourceType":"Patient","#).is_err());
        // The same key in sibling objects is fine.
        parse(r#"{"resourceType":"Patient","a":[{"b":1},{"b":2}]}"#);
    }

    #[test]
    fn subsetting_keeps_the_stored_bytes_of_what_it_keeps() {
        let text = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1","tag":[{"code":"x"}]},"status":"final","valueQuantity":{"value":1.50},"note":[]}"#;
        let out = subset_text(text, |k| {
            ["resourceType", "id", "status", "valueQuantity"].contains(&k)
        })
        .unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"resourceType":"Observation","id":"o","meta":{{"versionId":"1","tag":[{{"code":"x"}},{SUBSETTED_TAG}]}},"status":"final","valueQuantity":{{"value":1.50}}}}"#
            )
        );
        let out = subset_text(
            r#"{"resourceType":"Patient","id":"p","gender":"male"}"#,
            |k| k != "gender",
        )
        .unwrap();
        assert_eq!(
            out,
            format!(r#"{{"resourceType":"Patient","id":"p","meta":{{"tag":[{SUBSETTED_TAG}]}}}}"#)
        );
    }
}
