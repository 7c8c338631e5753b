//! A Bulk Data completion manifest, as far as downloading it needs: each
//! file's URL, name, line count and digest. The rest is kept as it came,
//! so the local copy (`manifest.json`) says everything the server said.

use serde_json::Value;

/// The manifest's file lists, in order.
pub const LISTS: [&str; 3] = ["output", "deleted", "error"];

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `output`, `deleted` or `error`.
    pub list: &'static str,
    pub url: String,
    /// The local file name: the URL's last path segment.
    pub name: String,
    /// Lines the file holds, if the manifest says.
    pub count: Option<u64>,
    /// The SHA-256 of its bytes (lowercase hex), if the server gives one.
    pub sha256: Option<String>,
    /// The entry as the manifest gives it.
    pub entry: Value,
}

/// A parsed manifest: its JSON as given, and its files.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub json: Value,
    pub items: Vec<Item>,
}

impl Manifest {
    pub fn parse(json: Value) -> Result<Self, String> {
        if !json.is_object() {
            return Err("the manifest is not a JSON object".into());
        }
        let mut items: Vec<Item> = Vec::new();
        for list in LISTS {
            let Some(entries) = json.get(list) else {
                continue;
            };
            let entries = entries
                .as_array()
                .ok_or_else(|| format!("the manifest's {list} is not a list"))?;
            for (i, entry) in entries.iter().enumerate() {
                let item = item(list, entry).map_err(|why| format!("{list}[{i}]: {why}"))?;
                if items.iter().any(|other| other.name == item.name) {
                    return Err(format!("two files are named '{}'", item.name));
                }
                items.push(item);
            }
        }
        Ok(Manifest { json, items })
    }

    /// Whether its files want the token the manifest was fetched with.
    pub fn requires_access_token(&self) -> bool {
        self.json
            .get("requiresAccessToken")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The next page's URL, for a paged manifest (`link` of relation `next`).
    pub fn next_page(&self) -> Option<String> {
        self.json
            .get("link")?
            .as_array()?
            .iter()
            .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
            .get("url")?
            .as_str()
            .map(str::to_string)
    }

    /// One manifest of every page's files (in `items` order, each once),
    /// with the last page's other fields and no `link`.
    pub fn joined(last: &Value, items: &[Item]) -> Manifest {
        let mut json = last.clone();
        if let Some(o) = json.as_object_mut() {
            o.remove("link");
            for list in LISTS {
                let entries: Vec<Value> = items
                    .iter()
                    .filter(|i| i.list == list)
                    .map(|i| i.entry.clone())
                    .collect();
                if entries.is_empty() && !o.contains_key(list) {
                    continue;
                }
                o.insert(list.to_string(), Value::Array(entries));
            }
        }
        Manifest {
            json,
            items: items.to_vec(),
        }
    }

    /// The manifest with each file's `url` replaced by its local name.
    pub fn local_copy(&self) -> Value {
        let mut json = self.json.clone();
        for list in LISTS {
            let Some(entries) = json.get_mut(list).and_then(Value::as_array_mut) else {
                continue;
            };
            for entry in entries {
                if let Some(url) = entry.get("url").and_then(Value::as_str) {
                    if let Ok(name) = file_name(url) {
                        entry["url"] = Value::String(name);
                    }
                }
            }
        }
        json
    }
}

fn item(list: &'static str, entry: &Value) -> Result<Item, String> {
    let url = entry
        .get("url")
        .and_then(Value::as_str)
        .ok_or("no url")?
        .to_string();
    let count = match entry.get("count") {
        None | Some(Value::Null) => None,
        Some(c) => Some(c.as_u64().ok_or("count is not a whole number")?),
    };
    let sha256 = match entry.get("extension").and_then(|e| e.get("sha256")) {
        None => None,
        Some(Value::String(d))
            if d.len() == 64
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Some(d.clone())
        }
        Some(_) => return Err("extension.sha256 is not 64 lowercase hex digits".into()),
    };
    Ok(Item {
        list,
        name: file_name(&url)?,
        url,
        count,
        sha256,
        entry: entry.clone(),
    })
}

/// The last path segment of a URL, if it can name a file here.
pub fn file_name(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    let last = parsed
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let name = percent_decoded(last);
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if safe {
        Ok(name)
    } else {
        Err(format!("'{url}' does not end in a usable file name"))
    }
}

fn percent_decoded(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_come_from_every_list_with_their_checks() {
        let digest = "a".repeat(64);
        let m = Manifest::parse(json!({
            "transactionTime": "2026-01-01T00:00:00Z",
            "output": [{"type": "Patient", "url": "https://x/f/Patient-1.ndjson?sig=1", "count": 3,
                        "extension": {"sha256": digest}}],
            "deleted": [{"type": "Bundle", "url": "https://x/f/del.ndjson", "count": 1}],
        }))
        .unwrap();
        assert_eq!(m.items.len(), 2);
        assert_eq!(m.items[0].name, "Patient-1.ndjson");
        assert_eq!(m.items[0].sha256.as_deref(), Some(digest.as_str()));
        assert_eq!(m.items[1].list, "deleted");
        let joined = Manifest::joined(&json!({"transactionTime": "t2", "link": []}), &m.items);
        assert_eq!(joined.json["output"][0]["count"], 3);
        assert_eq!(joined.json["deleted"][0]["type"], "Bundle");
        assert!(joined.json.get("link").is_none());
        let local = m.local_copy();
        assert_eq!(local["output"][0]["url"], "Patient-1.ndjson");
        assert_eq!(local["transactionTime"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn unusable_manifests_are_refused() {
        for bad in [
            json!([]),
            json!({"output": [{"url": "https://x/a/..", "count": 1}]}),
            json!({"output": [{"url": "https://x/a/.hidden"}]}),
            json!({"output": [{"url": "https://x/a/f.ndjson", "count": -1}]}),
            json!({"output": [{"url": "https://x/a/f", "extension": {"sha256": "ABC"}}]}),
            json!({"output": [{"url": "https://x/a/f"}, {"url": "https://y/b/f"}]}),
        ] {
            assert!(Manifest::parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
