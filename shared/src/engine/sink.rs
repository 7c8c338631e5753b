//! Where a part's lines go: one multipart upload per open file, split at the
//! configured number of resources, with memory bounded by one chunk plus one
//! page however large the export.
//!
//! Exactly once when one part is handled twice at once (an SQS duplicate) or
//! after a crash. A handling changes only what its own winning checkpoint
//! records, so a rival that lost (or has not yet noticed that it lost) cannot
//! spoil the winner's files:
//!
//! 1. **Chunk numbers.** Each checkpoint reserves the next [`RESERVE`]
//!    numbers of every open upload for the handling that saved it
//!    (`OpenFile::reserved_to`). A handling that resumes an upload first
//!    claims it with a checkpoint of its own and starts above the last
//!    reservation, so a stale rival's chunks land under numbers that no
//!    winning checkpoint lists. (S3 completes an upload from the listed
//!    parts only; the rest are dropped.)
//! 2. **Completing.** A file whose last chunk is up is *sealed* in a
//!    checkpoint; its upload is completed only after that checkpoint has
//!    won. Completing is idempotent, so whoever resumes from a checkpoint
//!    with sealed files completes them again.
//! 3. **Aborting.** A handling aborts only uploads it started and no
//!    checkpoint recorded, and only when it knows it lost.
//! 4. **Buffers.** Lines not yet uploaded ride in the checkpoint (`carry`)
//!    or, past the carry limit, in a spill object under a key of this
//!    handling's own. A pause never ends a file, so how many files an export
//!    has does not depend on timing.
//!
//! What losers and crashed handlings leave behind (uploads nobody recorded,
//! chunks under unlisted numbers, spills) is removed when the job completes:
//! see `Worker::collect_garbage`.

use bytes::Bytes;

use super::digest::digest_of;
use super::gzip_twin::write_gzip_twin;
use super::parquet_files::{parquet_name, write_parquet};
use super::Worker;
use crate::domain::job::{
    artifact_key, job_prefix, FileKind, OpenFile, OutputFile, Part, UploadedChunk, PATIENT_BLOCKS,
    REVISIONS, REVISIONS_FILE,
};
use crate::domain::revisions::{csv_line, HEADER};
use crate::domain::view_export::{TableFormat, ViewExport};
use crate::ports::{PortError, PortResult};
use fhir_query::view::output::header_line;
use fhir_query::view::{ColumnDef, View};

/// Chunk numbers reserved per open upload by each checkpoint. Between two
/// checkpoints a handling uploads at most two chunks to one file (a full
/// chunk at the end of a page, and its last chunk when the file closes).
pub(crate) const RESERVE: u32 = 4;

/// How a view export's files of one view look.
struct ViewFile {
    extension: &'static str,
    /// Written at the top of each file (CSV's header record and CRLF).
    header: Option<Vec<u8>>,
    /// The view's resource type (downloads check the reader's scopes on it).
    source_type: String,
    /// Parquet: the columns each finished NDJSON file is converted with.
    parquet: Option<Vec<ColumnDef>>,
}

struct Writer {
    file: OpenFile,
    buf: Vec<u8>,
    /// The next chunk number this handling uploads under.
    next: u32,
    /// A saved checkpoint names this upload, so a rival may resume it: from
    /// now on `next` must stay within `file.reserved_to`.
    recorded: bool,
}

pub(crate) struct Sink<'a> {
    engine: &'a Worker,
    job_id: String,
    part_index: u32,
    /// Tells this handling's spill objects from every other's.
    handling: String,
    output: Option<Writer>,
    deleted: Option<Writer>,
    pub files: Vec<OutputFile>,
    /// Files with every chunk up, to be completed once a checkpoint that
    /// names them has won.
    sealed: Vec<OpenFile>,
    pub next_file_seq: u32,
    /// Uploads opened since the last saved checkpoint: if this handling
    /// loses a race, only these are ours to abort.
    started_here: Vec<(String, String)>,
    /// Spills written since the last saved checkpoint (ours to delete if we
    /// lose), and spills the next saved checkpoint no longer needs.
    spilled_here: Vec<String>,
    stale_spills: Vec<String>,
    spill_seq: u32,
    /// A chunk went up or a file was sealed since the last checkpoint.
    dirty: bool,
    /// A view export's files, by view name (`describe_views`).
    view_files: std::collections::HashMap<String, ViewFile>,
    /// A closed file's emptied buffer, for the next file this handling
    /// opens: its pages are already in memory.
    spare: Vec<u8>,
}

impl<'a> Sink<'a> {
    /// The sink as the part's checkpoint left it. Spilled buffers are read
    /// back by [`Sink::load_spills`].
    pub fn resume(engine: &'a Worker, part: &Part) -> Self {
        let writer = |f: &Option<OpenFile>| {
            f.clone().map(|mut file| {
                let buf = std::mem::take(&mut file.carry).into_bytes();
                let last = file.chunks.last().map_or(0, |c| c.number);
                Writer {
                    // Above whatever the handling that saved this may use.
                    next: file.reserved_to.max(last) + 1,
                    file,
                    buf,
                    recorded: true,
                }
            })
        };
        Sink {
            engine,
            job_id: part.job_id.clone(),
            part_index: part.index,
            handling: uuid::Uuid::new_v4().simple().to_string(),
            output: writer(&part.checkpoint.output),
            deleted: writer(&part.checkpoint.deleted),
            files: part.checkpoint.files.clone(),
            sealed: part.checkpoint.sealed.clone(),
            next_file_seq: part.checkpoint.next_file_seq,
            started_here: Vec::new(),
            spilled_here: Vec::new(),
            stale_spills: Vec::new(),
            spill_seq: 0,
            dirty: false,
            view_files: Default::default(),
            spare: Vec::new(),
        }
    }

    /// For a view export: each view's files are named after the view, with
    /// the format's extension, and a CSV file starts with its header.
    pub fn describe_views(&mut self, export: &ViewExport) {
        for v in &export.views {
            let view = View::parse(&v.definition).ok();
            let columns = view.as_ref().map(|v| v.columns().to_vec());
            let header = match (export.format, &columns) {
                (TableFormat::Csv, Some(columns)) if export.header => {
                    let mut h = header_line(columns);
                    h.extend_from_slice(b"\r\n");
                    Some(h)
                }
                _ => None,
            };
            let parquet = columns.filter(|_| export.format == TableFormat::Parquet);
            self.view_files.insert(
                v.name.clone(),
                ViewFile {
                    extension: export.format.extension(),
                    header,
                    source_type: v.resource_type.clone(),
                    parquet,
                },
            );
        }
    }

    /// Whether the checkpoint hands this handling anything a rival could
    /// also be using (open uploads or sealed files): then it must claim the
    /// part with a checkpoint of its own before it writes.
    pub fn needs_claim(&self) -> bool {
        self.output.is_some() || self.deleted.is_some() || !self.sealed.is_empty()
    }

    /// Reads spilled buffers back. `false` if a spill is gone: a rival won
    /// a later checkpoint and removed it, so this handling has lost.
    pub async fn load_spills(&mut self) -> PortResult<bool> {
        let artifacts = self.engine.artifacts.clone();
        for kind in [FileKind::Output, FileKind::Deleted] {
            let Some(w) = self.slot(kind).as_mut() else {
                continue;
            };
            let Some(key) = &w.file.spill else { continue };
            match artifacts.get(key).await {
                Ok(data) => w.buf = data.to_vec(),
                Err(PortError::NotFound) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Appends one NDJSON line (without its newline) to the right file.
    pub async fn push(
        &mut self,
        kind: FileKind,
        resource_type: &str,
        line: &[u8],
    ) -> PortResult<()> {
        let needs_new = match self.slot(kind) {
            Some(w) => w.file.resource_type != resource_type,
            None => true,
        };
        if needs_new {
            self.close(kind).await?;
            self.open(kind, resource_type).await?;
        }
        let max = self.engine.config.max_resources_per_file;
        let w = self.slot(kind).as_mut().expect("opened above");
        if let Some(old) = w.file.spill.take() {
            // The buffer is about to change: that spill no longer holds it.
            self.stale_spills.push(old);
        }
        let w = self.slot(kind).as_mut().expect("opened above");
        w.buf.extend_from_slice(line);
        w.buf.push(b'\n');
        w.file.count += 1;
        // Blocks organized by patient are never split: their files roll
        // over between blocks (`end_block`). The audit trail is one file.
        if w.file.count >= max && resource_type != PATIENT_BLOCKS && resource_type != REVISIONS {
            self.close(kind).await?;
        }
        Ok(())
    }

    /// Opens the file for `resource_type` unless it is open: a file that
    /// must exist even if no line comes (the audit trail's CSV).
    pub async fn ensure_open(&mut self, kind: FileKind, resource_type: &str) -> PortResult<()> {
        if self.slot(kind).is_none() {
            self.open(kind, resource_type).await?;
        }
        Ok(())
    }

    /// Between two patient blocks: a full block file is closed here.
    pub async fn end_block(&mut self) -> PortResult<()> {
        let max = self.engine.config.max_resources_per_file;
        if self.output.as_ref().is_some_and(|w| w.file.count >= max) {
            self.close(FileKind::Output).await?;
        }
        Ok(())
    }

    /// Uploads full chunks; says whether a checkpoint is due (something was
    /// made durable that the saved checkpoint does not know yet).
    pub async fn end_of_page(&mut self) -> PortResult<bool> {
        for kind in [FileKind::Output, FileKind::Deleted] {
            if self.buffered(kind) >= self.engine.config.min_chunk_bytes {
                self.upload_chunk(kind).await?;
            }
        }
        Ok(self.dirty)
    }

    /// Makes the buffers checkpointable: small ones ride in the checkpoint
    /// as carry, larger ones go up as a chunk, or (too small for a chunk
    /// that is not a file's last) into a spill object.
    pub async fn settle(&mut self) -> PortResult<()> {
        for kind in [FileKind::Output, FileKind::Deleted] {
            let n = self.buffered(kind);
            let spilled = self
                .slot(kind)
                .as_ref()
                .is_some_and(|w| w.file.spill.is_some());
            if n <= self.engine.config.carry_limit_bytes || spilled {
                continue;
            }
            if n >= self.engine.config.min_chunk_bytes {
                self.upload_chunk(kind).await?;
            } else {
                self.spill(kind).await?;
            }
        }
        Ok(())
    }

    /// Closes every open file (they are sealed, not yet completed).
    pub async fn finish(&mut self) -> PortResult<()> {
        self.close(FileKind::Output).await?;
        self.close(FileKind::Deleted).await
    }

    pub fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// The sink's state as it goes into a checkpoint (after `settle`), with
    /// a fresh reservation of chunk numbers for every open upload.
    pub fn checkpoint_state(&mut self) -> (Option<OpenFile>, Option<OpenFile>, Vec<OpenFile>) {
        let snap = |w: &mut Option<Writer>| {
            w.as_mut().map(|w| {
                w.file.reserved_to = w.next + RESERVE - 1;
                let mut f = w.file.clone();
                if f.spill.is_none() {
                    f.carry = String::from_utf8_lossy(&w.buf).into_owned();
                }
                f
            })
        };
        let output = snap(&mut self.output);
        let deleted = snap(&mut self.deleted);
        (output, deleted, self.sealed.clone())
    }

    /// Called once a checkpoint naming the current state has won: what it
    /// names is now ours alone, and what it no longer names can go.
    pub async fn checkpoint_saved(&mut self) {
        for w in [&mut self.output, &mut self.deleted].into_iter().flatten() {
            w.recorded = true;
        }
        self.started_here.clear();
        self.spilled_here.clear();
        self.dirty = false;
        for key in std::mem::take(&mut self.stale_spills) {
            if let Err(e) = self.engine.artifacts.delete(&key).await {
                tracing::warn!(%key, error = %e, "could not delete a spill");
            }
        }
    }

    /// Completes the sealed files (after the checkpoint naming them won).
    pub async fn complete_sealed(&mut self) -> PortResult<()> {
        for file in std::mem::take(&mut self.sealed) {
            let key = artifact_key(&self.job_id, &file.name);
            self.engine
                .artifacts
                .complete_upload(&key, &file.upload_id, &file.chunks)
                .await?;
            let artifacts = self.engine.artifacts.as_ref();
            let min_chunk = self.engine.config.min_chunk_bytes;
            let parquet = self
                .view_files
                .get(&file.resource_type)
                .and_then(|v| v.parquet.as_ref());
            let (name, digests) = match parquet {
                Some(columns) => {
                    // The Parquet file is listed; its NDJSON source is not.
                    let target = parquet_name(&file.name);
                    let target_key = artifact_key(&self.job_id, &target);
                    let sha256 =
                        write_parquet(artifacts, &key, &target_key, columns, min_chunk).await?;
                    (target, (sha256, None))
                }
                None if self.engine.config.gzip_files => {
                    let both = write_gzip_twin(artifacts, &key, min_chunk).await?;
                    (file.name.clone(), (both.file, Some(both.twin)))
                }
                None => (file.name.clone(), (digest_of(artifacts, &key).await?, None)),
            };
            let (sha256, gzip_sha256) = digests;
            let deleted = file.kind == FileKind::Deleted;
            let view_type = self
                .view_files
                .get(&file.resource_type)
                .map(|v| v.source_type.clone());
            self.files.push(OutputFile {
                kind: file.kind,
                resource_type: if deleted {
                    "Bundle".into()
                } else {
                    file.resource_type.clone()
                },
                source_type: if deleted {
                    Some(file.resource_type.clone())
                } else {
                    view_type
                },
                name,
                count: file.count,
                gzip: gzip_sha256.is_some(),
                sha256: Some(sha256),
                gzip_sha256,
            });
        }
        Ok(())
    }

    /// Best effort, once this handling knows it lost: removes the uploads
    /// and spills it made that no checkpoint names.
    pub async fn discard_unrecorded(&mut self) {
        let artifacts = &self.engine.artifacts;
        for (key, upload_id) in self.started_here.drain(..) {
            if let Err(e) = artifacts.abort_upload(&key, &upload_id).await {
                tracing::warn!(%key, error = %e, "could not abort an upload");
            }
        }
        for key in self.spilled_here.drain(..) {
            if let Err(e) = artifacts.delete(&key).await {
                tracing::warn!(%key, error = %e, "could not delete a spill");
            }
        }
    }

    fn slot(&mut self, kind: FileKind) -> &mut Option<Writer> {
        match kind {
            FileKind::Deleted => &mut self.deleted,
            _ => &mut self.output,
        }
    }

    fn buffered(&mut self, kind: FileKind) -> usize {
        self.slot(kind).as_ref().map_or(0, |w| w.buf.len())
    }

    async fn open(&mut self, kind: FileKind, resource_type: &str) -> PortResult<()> {
        let seq = self.next_file_seq;
        self.next_file_seq += 1;
        let view = self.view_files.get(resource_type);
        let name = match kind {
            _ if resource_type == REVISIONS => REVISIONS_FILE.to_string(),
            _ if view.is_some() => format!(
                "{resource_type}-{:04}-{seq:03}.{}",
                self.part_index,
                view.map_or("ndjson", |v| v.extension)
            ),
            FileKind::Deleted => format!(
                "{resource_type}-deleted-{:04}-{seq:03}.ndjson",
                self.part_index
            ),
            _ => format!("{resource_type}-{:04}-{seq:03}.ndjson", self.part_index),
        };
        let key = artifact_key(&self.job_id, &name);
        let upload_id = self.engine.artifacts.start_upload(&key).await?;
        self.started_here.push((key, upload_id.clone()));
        // `resource_type` is the source type (the manifest calls deleted files
        // "Bundle"), so Patient parts switch files when the type changes.
        let file = OpenFile {
            kind,
            resource_type: resource_type.to_string(),
            name,
            upload_id,
            chunks: Vec::new(),
            count: 0,
            carry: String::new(),
            spill: None,
            reserved_to: 0,
        };
        let mut buf = std::mem::take(&mut self.spare);
        if buf.capacity() == 0 {
            // A chunk goes up at the end of the page that fills it: sized
            // for that at once, as growing by doubling copies it each time.
            buf.reserve(self.engine.config.min_chunk_bytes * 5 / 4);
        }
        if resource_type == REVISIONS {
            buf.extend_from_slice(&csv_line(&HEADER));
            buf.extend_from_slice(b"\r\n");
        }
        if let Some(header) = view.and_then(|v| v.header.as_ref()) {
            buf.extend_from_slice(header);
        }
        *self.slot(kind) = Some(Writer {
            file,
            buf,
            next: 1,
            recorded: false,
        });
        Ok(())
    }

    async fn upload_chunk(&mut self, kind: FileKind) -> PortResult<()> {
        let artifacts = self.engine.artifacts.clone();
        let job_id = self.job_id.clone();
        let Some(w) = self.slot(kind).as_mut() else {
            return Ok(());
        };
        if w.buf.is_empty() {
            return Ok(());
        }
        let number = w.next;
        if w.recorded && number > w.file.reserved_to {
            // Would break rule 1 of the module comment; a bug, not a state.
            return Err(PortError::permanent(
                "an internal error stopped the export",
                format!(
                    "chunk {number} of {} is past this handling's reservation",
                    w.file.name
                ),
            ));
        }
        w.next += 1;
        let capacity = w.buf.capacity();
        let data = Bytes::from(std::mem::take(&mut w.buf));
        let stale = w.file.spill.take();
        let key = artifact_key(&job_id, &w.file.name);
        let etag = artifacts
            .upload_chunk(&key, &w.file.upload_id, number, data.clone())
            .await?;
        w.buf = reuse(data, capacity);
        w.file.chunks.push(UploadedChunk { number, etag });
        self.stale_spills.extend(stale);
        self.dirty = true;
        Ok(())
    }

    /// Writes the buffer to a spill object of this handling's own.
    async fn spill(&mut self, kind: FileKind) -> PortResult<()> {
        let key = format!(
            "{}_spill/{:04}-{}-{}",
            job_prefix(&self.job_id),
            self.part_index,
            self.handling,
            self.spill_seq
        );
        self.spill_seq += 1;
        let artifacts = self.engine.artifacts.clone();
        let Some(w) = self.slot(kind).as_mut() else {
            return Ok(());
        };
        artifacts.put(&key, Bytes::from(w.buf.clone())).await?;
        w.file.spill = Some(key.clone());
        self.spilled_here.push(key);
        Ok(())
    }

    /// Uploads the last chunk and seals the file (or drops an empty one).
    async fn close(&mut self, kind: FileKind) -> PortResult<()> {
        self.upload_chunk(kind).await?;
        let Some(Writer { mut file, buf, .. }) = self.slot(kind).take() else {
            return Ok(());
        };
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
            self.spare.clear();
        }
        if file.count == 0 && file.resource_type != REVISIONS {
            // Opened for a line that never came: no checkpoint names it.
            let key = artifact_key(&self.job_id, &file.name);
            let artifacts = &self.engine.artifacts;
            artifacts.abort_upload(&key, &file.upload_id).await?;
            return Ok(());
        }
        file.carry.clear();
        self.sealed.push(file);
        self.dirty = true;
        Ok(())
    }
}

/// The buffer of a chunk the store has written, emptied for the next chunk:
/// a fresh buffer of this size would fault in its pages again (about 5% of
/// an export's CPU). If the store still holds the bytes, a fresh buffer of
/// the same capacity (growing one by doubling would copy it several times).
fn reuse(data: Bytes, capacity: usize) -> Vec<u8> {
    match data.try_into_mut() {
        Ok(mut buf) => {
            buf.clear();
            Vec::from(buf)
        }
        Err(_) => Vec::with_capacity(capacity),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::reuse;

    #[test]
    fn a_written_chunk_buffer_is_reused_and_a_held_one_is_not() {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"{\"resourceType\":\"Patient\"}\n");
        let ptr = buf.as_ptr();
        let reused = reuse(Bytes::from(buf), 1 << 20);
        assert!(reused.is_empty());
        assert_eq!(reused.as_ptr(), ptr, "the same allocation");
        assert!(reused.capacity() >= 1 << 20);

        let data = Bytes::from(b"line\n".to_vec());
        let held = data.clone();
        let fresh = reuse(data, 4096);
        assert!(fresh.is_empty() && fresh.capacity() >= 4096);
        assert_eq!(&held[..], b"line\n", "the held bytes are untouched");
    }
}
