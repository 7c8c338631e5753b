//! Parsing a stored resource for a view: only the top-level elements the
//! view reads become `Value`s; the others are skipped as the parser passes
//! them, in the same single pass.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The top-level elements a view reads, each also wanted as a choice
/// element (`value` → `valueQuantity`) and with its `_` sibling.
#[derive(Debug)]
pub(super) struct Roots {
    names: Vec<String>,
    /// The first bytes of the names and of `resourceType`: most of a
    /// resource's keys are turned away on their first byte.
    first_bytes: [bool; 256],
}

impl Roots {
    pub(super) fn new(names: impl IntoIterator<Item = String>) -> Self {
        let names: Vec<String> = names.into_iter().collect();
        let mut first_bytes = [false; 256];
        for n in names.iter().map(String::as_str).chain(["resourceType"]) {
            if let Some(b) = n.bytes().next() {
                first_bytes[usize::from(b)] = true;
            }
        }
        Roots { names, first_bytes }
    }

    fn wants(&self, key: &str) -> bool {
        let key = key.strip_prefix('_').unwrap_or(key);
        match key.bytes().next() {
            Some(b) if self.first_bytes[usize::from(b)] => {}
            _ => return false,
        }
        key == "resourceType"
            || self
                .names
                .iter()
                .any(|n| match key.strip_prefix(n.as_str()) {
                    Some(rest) => {
                        rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
                    }
                    None => false,
                })
    }

    /// The resource with only the wanted elements.
    pub(super) fn read(&self, body: &str) -> Result<Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(body);
        let map = serde::Deserializer::deserialize_map(&mut de, Pruned(self))?;
        de.end()?;
        Ok(Value::Object(map))
    }
}

struct Pruned<'r>(&'r Roots);

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(WantedKey(self.0))? {
            match key {
                Some(key) => {
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(map)
    }
}

/// A key, owned only when wanted: a skipped element allocates nothing.
struct WantedKey<'r>(&'r Roots);

impl<'de> DeserializeSeed<'de> for WantedKey<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for WantedKey<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an element name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.wants(key).then(|| key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Roots;

    #[test]
    fn only_the_wanted_elements_their_choices_and_siblings_are_read() {
        let roots = Roots::new(["value".to_string(), "code".to_string()]);
        let read = roots
            .read(r#"{"resourceType":"Observation","id":"o","valueQuantity":{"value":1},"_code":{"x":1},"codes":2,"code":{"a":[1,{"b":"\"c\""}]},"text":{"div":"<div/>"}}"#)
            .unwrap();
        assert_eq!(
            read,
            json!({"resourceType": "Observation", "valueQuantity": {"value": 1}, "_code": {"x": 1}, "code": {"a": [1, {"b": "\"c\""}]}})
        );
        // An escaped key is read too, and the whole body is still checked.
        let escaped = roots
            .read(r#"{"resourceType":"Observation","\u0063ode":1}"#)
            .unwrap();
        assert_eq!(escaped, json!({"resourceType": "Observation", "code": 1}));
        assert!(roots
            .read(r#"{"resourceType":"Observation","text":{"div":}"#)
            .is_err());
        assert!(roots.read(r#"{"resourceType":"Observation"} x"#).is_err());
        assert!(roots.read(r#"[1]"#).is_err());
    }
}
