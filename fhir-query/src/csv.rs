//! CSV records (RFC 4180), for the audit trail and view exports.

/// One RFC 4180 record without its line break: a field is quoted when it
/// holds a comma, a quote or a line break, with its quotes doubled. (The
/// csv crate's writer would allocate its buffer for every record.)
pub fn csv_line(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 3).sum());
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_field(field, &mut out);
    }
    out
}

/// One field of a record, quoted when it must be. Whole runs between
/// quotes are copied at once: an audit trail's change log is JSON, a quote
/// every few bytes, about a gigabyte of it for a million revisions.
pub fn write_field(field: &str, out: &mut Vec<u8>) {
    let bytes = field.as_bytes();
    let needs_quotes = memchr::memchr3(b',', b'"', b'\n', bytes).is_some()
        || memchr::memchr(b'\r', bytes).is_some();
    if !needs_quotes {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for quote in memchr::memchr_iter(b'"', bytes) {
        // Up to and with the quote, then the quote again.
        out.extend_from_slice(&bytes[start..=quote]);
        out.push(b'"');
        start = quote + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::csv_line;

    fn line(fields: &[&str]) -> String {
        String::from_utf8(csv_line(fields)).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        assert_eq!(line(&["a", "", "b c"]), "a,,b c");
        assert_eq!(line(&["a,b", "x\ny", "x\ry"]), "\"a,b\",\"x\ny\",\"x\ry\"");
    }

    #[test]
    fn quotes_are_doubled_wherever_they_are() {
        assert_eq!(line(&["\""]), "\"\"\"\"");
        assert_eq!(line(&[r#"{"a":"b""c"}"#]), r#""{""a"":""b""""c""}""#);
        assert_eq!(line(&["x\"", "\"x"]), "\"x\"\"\",\"\"\"x\"");
    }
}
