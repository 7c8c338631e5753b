//! String functions (FHIRPath 5.6) on a single string: on nothing the
//! result is empty, on several items or a non-string an error. Arguments
//! are evaluated on the call's focus. Positions count characters, not
//! bytes. Regular expressions are `regex-lite`'s (the syntax of Rust's
//! `regex` without Unicode classes).

use serde_json::Value;

use super::eval::{bool_item, Env, EvalError, Item};
use super::functions::{arity, int_arg, integer_item, string_arg, text_item, Out};
use super::parse::Expr;

/// The string functions `call` knows.
pub const NAMES: &[&str] = &[
    "lower",
    "upper",
    "length",
    "startsWith",
    "endsWith",
    "contains",
    "indexOf",
    "substring",
    "replace",
    "trim",
    "split",
    "toChars",
    "matches",
    "matchesFull",
    "replaceMatches",
    "encode",
    "decode",
    "escape",
    "unescape",
];

/// The one string a function applies to; `None` on nothing (or an
/// element with extensions and no value).
fn single_string(name: &str, input: &[Item]) -> Result<Option<String>, EvalError> {
    match input {
        [] => Ok(None),
        [one] => match one.value.as_ref() {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Null => Ok(None),
            _ => Err(EvalError(format!("{name}() applies to a string"))),
        },
        _ => Err(EvalError(format!("{name}() takes a single string"))),
    }
}

pub fn call<'a>(
    name: &str,
    input: Vec<Item<'a>>,
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    let Some(s) = single_string(name, &input)? else {
        return Ok(Vec::new());
    };
    let text = |i: usize| string_arg(name, args.get(i), context, env);
    Ok(match name {
        "lower" | "upper" | "length" => {
            arity(name, args, &[0])?;
            match name {
                "lower" => vec![text_item(s.to_lowercase())],
                "upper" => vec![text_item(s.to_uppercase())],
                _ => vec![integer_item(s.chars().count())],
            }
        }
        "startsWith" | "endsWith" | "contains" => {
            arity(name, args, &[1])?;
            let Some(part) = text(0)? else {
                return Ok(Vec::new());
            };
            vec![bool_item(match name {
                "startsWith" => s.starts_with(&part),
                "endsWith" => s.ends_with(&part),
                _ => s.contains(&part),
            })]
        }
        "indexOf" => {
            arity(name, args, &[1])?;
            let Some(needle) = text(0)? else {
                return Ok(Vec::new());
            };
            let at = s
                .find(&needle)
                .map_or(-1, |b| s[..b].chars().count() as i64);
            vec![Item::owned(Value::from(at), "Integer")]
        }
        "substring" => substring(&s, args, context, env)?,
        "replace" => {
            arity(name, args, &[2])?;
            let (Some(pattern), Some(with)) = (text(0)?, text(1)?) else {
                return Ok(Vec::new());
            };
            vec![text_item(replace(&s, &pattern, &with))]
        }
        "trim" => vec![text_item(s.trim().to_string())],
        "split" => {
            arity(name, args, &[1])?;
            let Some(sep) = text(0)? else {
                return Ok(Vec::new());
            };
            s.split(sep.as_str())
                .map(|p| text_item(p.to_string()))
                .collect()
        }
        "toChars" => s.chars().map(|c| text_item(c.to_string())).collect(),
        "matches" | "matchesFull" | "replaceMatches" => by_regex(name, &s, args, context, env)?,
        "encode" | "decode" | "escape" | "unescape" => {
            arity(name, args, &[1])?;
            let Some(format) = text(0)? else {
                return Ok(Vec::new());
            };
            coded(name, &s, &format)
                .map(text_item)
                .into_iter()
                .collect()
        }
        _ => return Ok(Vec::new()),
    })
}

/// `encode`/`decode` (`base64`, `urlbase64`, `hex`) and
/// `escape`/`unescape` (`html`, `json`); `None` for text that does not
/// decode, or another format.
fn coded(name: &str, s: &str, format: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use base64::Engine;
    let bytes = |b: Vec<u8>| String::from_utf8(b).ok();
    match (name, format) {
        ("encode", "base64") => Some(STANDARD.encode(s)),
        ("encode", "urlbase64") => Some(URL_SAFE.encode(s)),
        ("encode", "hex") => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        ("decode", "base64") => bytes(STANDARD.decode(s).ok()?),
        ("decode", "urlbase64") => bytes(URL_SAFE.decode(s).ok()?),
        ("decode", "hex") => {
            let pairs = s.as_bytes().chunks(2);
            let decoded: Option<Vec<u8>> = pairs
                .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
                .collect();
            bytes(decoded?)
        }
        ("escape", "json") => {
            let quoted = serde_json::to_string(s).ok()?;
            Some(quoted[1..quoted.len() - 1].to_string())
        }
        ("unescape", "json") => {
            // A bare `"` is itself (it needs no escape outside JSON).
            let mut quoted = String::from('"');
            let mut chars = s.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        quoted.push(c);
                        quoted.extend(chars.next());
                    }
                    '"' => quoted.push_str("\\\""),
                    c => quoted.push(c),
                }
            }
            quoted.push('"');
            serde_json::from_str(&quoted).ok()
        }
        ("escape", "html") => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        ("unescape", "html") => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        _ => None,
    }
}

/// `substring(start[, length])`, in characters; empty when `start` is
/// outside the string.
fn substring<'a>(s: &str, args: &[Expr], context: &[Item<'a>], env: &Env<'a>) -> Out<'a> {
    let name = "substring";
    arity(name, args, &[1, 2])?;
    let start = int_arg(name, &args[0], context, env)?;
    let chars: Vec<char> = s.chars().collect();
    if start < 0 || start as usize >= chars.len() {
        return Ok(Vec::new());
    }
    let len = match args.get(1) {
        Some(a) => int_arg(name, a, context, env)?.max(0) as usize,
        None => chars.len(),
    };
    let end = (start as usize).saturating_add(len).min(chars.len());
    Ok(vec![text_item(chars[start as usize..end].iter().collect())])
}

/// `matches`, `matchesFull` and `replaceMatches`.
fn by_regex<'a>(
    name: &str,
    s: &str,
    args: &[Expr],
    context: &[Item<'a>],
    env: &Env<'a>,
) -> Out<'a> {
    let text = |i: usize| string_arg(name, args.get(i), context, env);
    if name == "replaceMatches" {
        arity(name, args, &[2])?;
        let (Some(pattern), Some(with)) = (text(0)?, text(1)?) else {
            return Ok(Vec::new());
        };
        if pattern.is_empty() {
            return Ok(vec![text_item(s.to_string())]);
        }
        // FHIRPath writes groups as `$1`, as regex-lite does.
        let replaced = regex(&pattern)?.replace_all(s, with.as_str()).into_owned();
        return Ok(vec![text_item(replaced)]);
    }
    arity(name, args, &[1])?;
    let Some(pattern) = text(0)? else {
        return Ok(Vec::new());
    };
    // Single-line mode: `.` matches a line break too.
    let pattern = if name == "matchesFull" {
        format!("(?s)^(?:{pattern})$")
    } else {
        format!("(?s){pattern}")
    };
    Ok(vec![bool_item(regex(&pattern)?.is_match(s))])
}

/// `replace`: every occurrence; an empty pattern goes between characters.
fn replace(s: &str, pattern: &str, with: &str) -> String {
    if !pattern.is_empty() {
        return s.replace(pattern, with);
    }
    let mut out = String::from(with);
    for c in s.chars() {
        out.push(c);
        out.push_str(with);
    }
    out
}

fn regex(pattern: &str) -> Result<regex_lite::Regex, EvalError> {
    regex_lite::Regex::new(pattern)
        .map_err(|e| EvalError(format!("'{pattern}' is not a regular expression: {e}")))
}
