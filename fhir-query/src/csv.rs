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

/// One field of a record, quoted when it must be.
pub fn write_field(field: &str, out: &mut Vec<u8>) {
    if field
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        out.push(b'"');
        for b in field.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}
