//! The resources of a step's NDJSON files, read and parsed on a thread of
//! their own while the caller writes them into SQLite: on two cores the
//! parse (reading the file, finding each line's type, id and meta) then
//! overlaps SQLite's inserts and the kernel's page-cache writes, which
//! otherwise take turns on one core.

use std::borrow::Cow;
use std::io::BufRead;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc;

use serde::Deserialize;

use super::{file_error, MirrorError};

/// What the mirror reads of a resource: where it is and what it is.
pub(super) struct Head<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version_id: Option<&'a str>,
    pub last_updated: Option<&'a str>,
}

/// The start of a resource as serde reads it (borrowed unless escaped).
#[derive(Deserialize)]
struct Parsed<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "versionId", default, borrow)]
    version_id: Option<Cow<'a, str>>,
    #[serde(rename = "lastUpdated", default, borrow)]
    last_updated: Option<Cow<'a, str>>,
}

/// Whole lines of one file, and each line's head fields copied into one
/// buffer beside them (one allocation per batch, not four per line).
struct Batch {
    file: usize,
    lines: String,
    fields: String,
    rows: Vec<Row>,
}

struct Row {
    line: Range<usize>,
    resource_type: Range<usize>,
    id: Range<usize>,
    version_id: Option<Range<usize>>,
    last_updated: Option<Range<usize>>,
}

/// About a megabyte of lines per batch, and a few batches in flight: the
/// reader stays ahead of the writer without holding the file in memory.
const BATCH_BYTES: usize = 1 << 20;
const BATCHES_IN_FLIGHT: usize = 4;

/// Calls `each` with every resource line of `files` (path and the name
/// errors give), in order, with the index of its file and its head.
/// Returns how many lines it called `each` with. Blank lines are skipped;
/// a line that is not UTF-8 or not a resource is an error naming the file
/// and the line, and nothing after it is read.
pub(super) fn each_resource(
    files: &[(PathBuf, String)],
    mut each: impl FnMut(usize, &str, &Head) -> Result<(), MirrorError>,
) -> Result<u64, MirrorError> {
    let (tx, rx) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        // When `each` fails, `rx` is dropped and the reader's next send
        // fails, which stops it.
        scope.spawn(move || read_all(files, &tx));
        let mut count = 0u64;
        for batch in rx {
            let batch = batch?;
            let at = |r: &Range<usize>| &batch.fields[r.clone()];
            for row in &batch.rows {
                let head = Head {
                    resource_type: at(&row.resource_type),
                    id: at(&row.id),
                    version_id: row.version_id.as_ref().map(at),
                    last_updated: row.last_updated.as_ref().map(at),
                };
                each(batch.file, &batch.lines[row.line.clone()], &head)?;
                count += 1;
            }
        }
        Ok(count)
    })
}

type Sender = mpsc::SyncSender<Result<Batch, MirrorError>>;

fn read_all(files: &[(PathBuf, String)], tx: &Sender) {
    for (file, (path, name)) in files.iter().enumerate() {
        match read_file(file, path, name, tx) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// Sends a file's lines in batches; false once the receiver is gone.
fn read_file(file: usize, path: &PathBuf, name: &str, tx: &Sender) -> Result<bool, MirrorError> {
    let fail = file_error(name);
    let handle = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, handle);
    let mut buf = Vec::new();
    let mut number = 0u64;
    let mut batch = new_batch(file);
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(e.to_string()))?;
        if read == 0 {
            return Ok(batch.rows.is_empty() || tx.send(Ok(batch)).is_ok());
        }
        number += 1;
        let line = std::str::from_utf8(&buf)
            .map_err(|_| fail(format!("line {number} is not UTF-8")))?
            .trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        let parsed: Parsed =
            serde_json::from_str(line).map_err(|e| fail(format!("line {number}: {e}")))?;
        batch.push(line, &parsed);
        if batch.lines.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut batch, new_batch(file));
            if tx.send(Ok(full)).is_err() {
                return Ok(false);
            }
        }
    }
}

fn new_batch(file: usize) -> Batch {
    Batch {
        file,
        lines: String::with_capacity(BATCH_BYTES + (64 << 10)),
        fields: String::new(),
        rows: Vec::new(),
    }
}

impl Batch {
    fn push(&mut self, line: &str, parsed: &Parsed) {
        let mut field = |text: &str| {
            let start = self.fields.len();
            self.fields.push_str(text);
            start..self.fields.len()
        };
        let meta = parsed.meta.as_ref();
        let row = Row {
            resource_type: field(&parsed.resource_type),
            id: field(&parsed.id),
            version_id: meta.and_then(|m| m.version_id.as_deref()).map(&mut field),
            last_updated: meta.and_then(|m| m.last_updated.as_deref()).map(&mut field),
            line: self.lines.len()..self.lines.len() + line.len(),
        };
        self.lines.push_str(line);
        self.rows.push(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(files: &[(PathBuf, String)]) -> Result<Vec<(usize, String, String)>, MirrorError> {
        let mut seen = Vec::new();
        each_resource(files, |file, line, head| {
            seen.push((
                file,
                format!("{}/{}", head.resource_type, head.id),
                line.to_string(),
            ));
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn lines_come_in_order_across_batches_and_files() {
        let dir = tempfile::tempdir().unwrap();
        // Lines of ~1 KiB, enough for several batches in the first file.
        let pad = "x".repeat(1000);
        let first: String = (0..3000)
            .map(|i| {
                format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"note\":\"{pad}\"}}\n")
            })
            .collect();
        std::fs::write(dir.path().join("a.ndjson"), &first).unwrap();
        std::fs::write(
            dir.path().join("b.ndjson"),
            "\n{\"resourceType\":\"Obs\\u0065rvation\",\"id\":\"o1\",\
             \"meta\":{\"versionId\":\"3\",\"lastUpdated\":\"2026-01-01T00:00:00Z\"}}\r\n",
        )
        .unwrap();
        let files: Vec<_> = ["a.ndjson", "b.ndjson"]
            .iter()
            .map(|n| (dir.path().join(n), n.to_string()))
            .collect();
        let seen = read(&files).unwrap();
        assert_eq!(seen.len(), 3001);
        assert!(seen[..3000]
            .iter()
            .enumerate()
            .all(|(i, (f, key, _))| *f == 0 && *key == format!("Patient/p{i}")));
        // An escaped field is decoded; the line is kept as it was written.
        assert_eq!(seen[3000].0, 1);
        assert_eq!(seen[3000].1, "Observation/o1");
        assert!(seen[3000].2.contains("Obs\\u0065rvation"));
        let mut heads = Vec::new();
        each_resource(&files[1..], |_, _, h| {
            heads.push((
                h.version_id.map(str::to_string),
                h.last_updated.map(str::to_string),
            ));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            heads,
            [(Some("3".into()), Some("2026-01-01T00:00:00Z".into()))]
        );
    }

    #[test]
    fn a_bad_line_names_its_file_and_line_and_stops_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let good = "{\"resourceType\":\"Patient\",\"id\":\"p\"}\n";
        std::fs::write(
            dir.path().join("a.ndjson"),
            format!("{good}{good}not json\n{good}"),
        )
        .unwrap();
        let files = vec![(dir.path().join("a.ndjson"), "a.ndjson".to_string())];
        let err = read(&files).unwrap_err().to_string();
        assert!(err.starts_with("a.ndjson: line 3:"), "{err}");

        // An error from the caller stops the reading too.
        std::fs::write(dir.path().join("b.ndjson"), good.repeat(3)).unwrap();
        let files = vec![(dir.path().join("b.ndjson"), "b.ndjson".to_string())];
        let mut calls = 0;
        let err = each_resource(&files, |_, _, _| {
            calls += 1;
            Err(file_error("caller")("stop".into()))
        });
        assert!(err.is_err());
        assert_eq!(calls, 1);
    }
}
