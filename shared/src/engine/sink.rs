//! Where a part's lines go: one multipart upload per open file, split at the
//! configured number of resources, with memory bounded by one chunk plus one
//! page however large the export.

use bytes::Bytes;

use super::Engine;
use crate::domain::job::{artifact_key, FileKind, OpenFile, OutputFile, Part, UploadedChunk};
use crate::ports::PortResult;

struct Writer {
    file: OpenFile,
    buf: Vec<u8>,
}

pub(crate) struct Sink<'a> {
    engine: &'a Engine,
    job_id: String,
    part_index: u32,
    output: Option<Writer>,
    deleted: Option<Writer>,
    pub files: Vec<OutputFile>,
    pub next_file_seq: u32,
    /// Uploads opened since the last saved checkpoint: if this run loses a
    /// race or fails, only these are ours to abort.
    started_here: Vec<(String, String)>,
    /// A chunk went up or a file was finished since the last checkpoint.
    dirty: bool,
}

impl<'a> Sink<'a> {
    pub fn resume(engine: &'a Engine, part: &Part) -> Self {
        let writer = |f: &Option<OpenFile>| {
            f.clone().map(|mut file| {
                let buf = std::mem::take(&mut file.carry).into_bytes();
                Writer { file, buf }
            })
        };
        Sink {
            engine,
            job_id: part.job_id.clone(),
            part_index: part.index,
            output: writer(&part.checkpoint.output),
            deleted: writer(&part.checkpoint.deleted),
            files: part.checkpoint.files.clone(),
            next_file_seq: part.checkpoint.next_file_seq,
            started_here: Vec::new(),
            dirty: false,
        }
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
        w.buf.extend_from_slice(line);
        w.buf.push(b'\n');
        w.file.count += 1;
        if w.file.count >= max {
            self.close(kind).await?;
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
        if self.dirty {
            self.settle().await?;
        }
        Ok(self.dirty)
    }

    /// Makes the buffers checkpointable: small ones ride in the checkpoint
    /// as carry, larger ones are uploaded or end their file.
    pub async fn settle(&mut self) -> PortResult<()> {
        for kind in [FileKind::Output, FileKind::Deleted] {
            let n = self.buffered(kind);
            if n > self.engine.config.carry_limit_bytes {
                if n >= self.engine.config.min_chunk_bytes {
                    self.upload_chunk(kind).await?;
                } else {
                    self.close(kind).await?;
                }
            }
        }
        Ok(())
    }

    /// Finishes every open file.
    pub async fn finish(&mut self) -> PortResult<()> {
        self.close(FileKind::Output).await?;
        self.close(FileKind::Deleted).await
    }

    /// The open files as they go into a checkpoint (after `settle`).
    pub fn open_files(&self) -> (Option<OpenFile>, Option<OpenFile>) {
        let snap = |w: &Option<Writer>| {
            w.as_ref().map(|w| {
                let mut f = w.file.clone();
                f.carry = String::from_utf8_lossy(&w.buf).into_owned();
                f
            })
        };
        (snap(&self.output), snap(&self.deleted))
    }

    /// Called once a checkpoint naming the current state is saved.
    pub fn checkpoint_saved(&mut self) {
        self.started_here.clear();
        self.dirty = false;
    }

    /// Best effort: aborts the uploads this run opened and never recorded.
    pub async fn abort_unrecorded(&mut self) {
        for (key, upload_id) in self.started_here.drain(..) {
            if let Err(e) = self
                .engine
                .ports
                .artifacts
                .abort_upload(&key, &upload_id)
                .await
            {
                tracing::warn!(%key, error = %e, "could not abort an upload");
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
        let name = match kind {
            FileKind::Deleted => format!(
                "{resource_type}-deleted-{:04}-{seq:03}.ndjson",
                self.part_index
            ),
            _ => format!("{resource_type}-{:04}-{seq:03}.ndjson", self.part_index),
        };
        let key = artifact_key(&self.job_id, &name);
        let upload_id = self.engine.ports.artifacts.start_upload(&key).await?;
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
        };
        let writer = Writer {
            file,
            buf: Vec::new(),
        };
        *self.slot(kind) = Some(writer);
        Ok(())
    }

    async fn upload_chunk(&mut self, kind: FileKind) -> PortResult<()> {
        let artifacts = self.engine.ports.artifacts.clone();
        let job_id = self.job_id.clone();
        let Some(w) = self.slot(kind).as_mut() else {
            return Ok(());
        };
        if w.buf.is_empty() {
            return Ok(());
        }
        let number = w.file.chunks.len() as u32 + 1;
        // The next chunk's buffer is allocated at its working size at once:
        // growing it by doubling would copy every chunk several times.
        let fresh = Vec::with_capacity(w.buf.capacity().max(w.buf.len()));
        let data = Bytes::from(std::mem::replace(&mut w.buf, fresh));
        let key = artifact_key(&job_id, &w.file.name);
        let etag = artifacts
            .upload_chunk(&key, &w.file.upload_id, number, data)
            .await?;
        w.file.chunks.push(UploadedChunk { number, etag });
        self.dirty = true;
        Ok(())
    }

    async fn close(&mut self, kind: FileKind) -> PortResult<()> {
        self.upload_chunk(kind).await?;
        let Some(w) = self.slot(kind).take() else {
            return Ok(());
        };
        let key = artifact_key(&self.job_id, &w.file.name);
        let artifacts = &self.engine.ports.artifacts;
        if w.file.count == 0 {
            artifacts.abort_upload(&key, &w.file.upload_id).await?;
            return Ok(());
        }
        artifacts
            .complete_upload(&key, &w.file.upload_id, &w.file.chunks)
            .await?;
        self.files.push(OutputFile {
            kind,
            resource_type: if kind == FileKind::Deleted {
                "Bundle".into()
            } else {
                w.file.resource_type.clone()
            },
            source_type: (kind == FileKind::Deleted).then(|| w.file.resource_type.clone()),
            name: w.file.name,
            count: w.file.count,
        });
        self.dirty = true;
        Ok(())
    }
}
