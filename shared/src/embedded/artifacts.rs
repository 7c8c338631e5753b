//! Export files on the local filesystem, with S3's multipart and presigned
//! URL behaviour.
//!
//! Layout under the root: `objects/<key>` for finished files and
//! `uploads/<key>/<upload id>/` for uploads in flight, holding one staging
//! file (`data`) that chunks are appended to, and the log of its chunks
//! (`chunks`: number, offset and length, a later line for a number
//! replacing an earlier one). Chunk numbers may come in any order and with
//! gaps, as on S3. Completing assembles the listed chunks: when they lie in
//! the staging file in order and back to back (the usual case: one handling
//! wrote them), that is a truncate and a rename, so every byte is written
//! once; otherwise their bytes are copied into the object. An exclusive
//! lock on the chunk log serialises the writers of one upload, which may be
//! two handlings of one part.
//!
//! Presigned URLs carry an expiry and an HMAC-SHA256 over the key and the
//! expiry, made with a secret kept in the data directory.

use crate::private_file::write_private;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::sqlite::backend;
use crate::domain::job::UploadedChunk;
use crate::domain::Error;
use crate::ports::{ArtifactStore, Clock, PortError, PortResult};

type HmacSha256 = Hmac<Sha256>;

pub struct FsArtifacts {
    root: PathBuf,
    secret: Vec<u8>,
    /// Origin the presigned URLs point at, e.g. `http://127.0.0.1:8080`.
    public_origin: String,
    clock: Arc<dyn Clock>,
}

/// Where signed downloads are served (outside the FHIR base, like S3).
pub const BLOB_PATH_PREFIX: &str = "/_blobs/";

impl FsArtifacts {
    /// Opens the store under `root`, creating its signing secret on first use.
    pub fn open(root: &Path, public_origin: &str, clock: Arc<dyn Clock>) -> PortResult<Self> {
        std::fs::create_dir_all(root.join("objects")).map_err(backend)?;
        std::fs::create_dir_all(root.join("uploads")).map_err(backend)?;
        let secret_path = root.join("signing.key");
        let secret = match std::fs::read(&secret_path) {
            Ok(s) if s.len() >= 32 => s,
            _ => {
                let s: [u8; 32] = rand::random();
                write_private(&secret_path, &s).map_err(backend)?;
                s.to_vec()
            }
        };
        Ok(FsArtifacts {
            root: root.to_path_buf(),
            secret,
            public_origin: public_origin.trim_end_matches('/').to_string(),
            clock,
        })
    }

    fn object_path(&self, key: &str) -> PortResult<PathBuf> {
        Ok(self.root.join("objects").join(safe_key(key)?))
    }

    fn upload_dir(&self, key: &str, upload_id: &str) -> PortResult<PathBuf> {
        if upload_id.is_empty()
            || !upload_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(PortError::NotFound);
        }
        Ok(self
            .root
            .join("uploads")
            .join(safe_key(key)?)
            .join(upload_id))
    }

    /// The link's signature: over the key, the expiry and, for a file with
    /// a digest, the digest (so a link cannot be made to skip the check).
    fn signature(&self, key: &str, expires: i64, sha256: Option<&str>) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(format!("GET\n{key}\n{expires}").as_bytes());
        if let Some(sha256) = sha256 {
            mac.update(format!("\n{sha256}").as_bytes());
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Checks a presigned request and returns the file to serve, with the
    /// SHA-256 its bytes must have if the link names one.
    /// Refusals say why, as S3 does, but never reveal anything else.
    pub fn open_signed(&self, key: &str, query: &str) -> Result<SignedFile, Error> {
        let mut expires = None;
        let mut signature = None;
        let mut sha256 = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "expires" => expires = v.parse::<i64>().ok(),
                "signature" => signature = Some(v.into_owned()),
                "sha256" => sha256 = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(Error::forbidden("This link is not signed"));
        };
        let expected = self.signature(key, expires, sha256.as_deref());
        if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err(Error::forbidden("This link's signature is not valid"));
        }
        if self.clock.now().timestamp() >= expires {
            return Err(Error::forbidden(
                "This link has expired; ask the file endpoint for a new one",
            ));
        }
        let path = self
            .object_path(key)
            .map_err(|_| Error::not_found("No such file"))?;
        if !path.is_file() {
            return Err(Error::not_found("No such file"));
        }
        Ok(SignedFile { path, sha256 })
    }
}

/// A file a signed link may serve.
#[derive(Debug)]
pub struct SignedFile {
    pub path: PathBuf,
    /// The SHA-256 (hex) its bytes must have to be served.
    pub sha256: Option<String>,
}

#[async_trait]
impl ArtifactStore for FsArtifacts {
    async fn start_upload(&self, key: &str) -> PortResult<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.upload_dir(key, &id)?;
        tokio::fs::create_dir_all(&dir).await.map_err(backend)?;
        tokio::fs::write(dir.join("chunks"), b"")
            .await
            .map_err(backend)?;
        Ok(id)
    }

    async fn upload_chunk(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> PortResult<String> {
        if !(1..=MAX_CHUNK_NUMBER).contains(&number) {
            return Err(PortError::Unsupported(format!(
                "chunk number {number} is outside 1..={MAX_CHUNK_NUMBER}"
            )));
        }
        let dir = self.upload_dir(key, upload_id)?;
        tokio::task::spawn_blocking(move || stage_chunk(&dir, number, &data))
            .await
            .map_err(backend)?
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        chunks: &[UploadedChunk],
    ) -> PortResult<()> {
        let dir = self.upload_dir(key, upload_id)?;
        let target = self.object_path(key)?;
        let wanted = chunks.to_vec();
        tokio::task::spawn_blocking(move || assemble(&dir, &target, &wanted))
            .await
            .map_err(backend)?
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> PortResult<()> {
        let dir = self.upload_dir(key, upload_id)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, key: &str) -> PortResult<()> {
        match tokio::fs::remove_file(self.object_path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn retain_only(&self, prefix: &str, keep: &[String]) -> PortResult<()> {
        let uploads = self
            .root
            .join("uploads")
            .join(safe_key(prefix.trim_end_matches('/'))?);
        match tokio::fs::remove_dir_all(&uploads).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(backend(e)),
        }
        for key in self.list(prefix).await? {
            if !keep.contains(&key) {
                self.delete(&key).await?;
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> PortResult<Bytes> {
        match tokio::fs::read(self.object_path(key)?).await {
            Ok(b) => Ok(b.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PortError::NotFound),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get_range(&self, key: &str, offset: u64, len: usize) -> PortResult<Bytes> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = match tokio::fs::File::open(self.object_path(key)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PortError::NotFound),
            Err(e) => return Err(backend(e)),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut out)
            .await
            .map_err(backend)?;
        Ok(out.into())
    }

    async fn put(&self, key: &str, data: Bytes) -> PortResult<()> {
        let target = self.object_path(key)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(backend)?;
        }
        let tmp = target.with_extension("tmp-put");
        tokio::fs::write(&tmp, &data).await.map_err(backend)?;
        tokio::fs::rename(&tmp, &target).await.map_err(backend)
    }

    async fn delete_prefix(&self, prefix: &str) -> PortResult<()> {
        let prefix = safe_key(prefix.trim_end_matches('/'))?;
        for area in ["objects", "uploads"] {
            let dir = self.root.join(area).join(&prefix);
            // A writer may add a file while the tree is removed (a cancel
            // racing a worker): the removal then finds a directory not
            // empty, and goes again.
            let mut attempts = 0;
            loop {
                match tokio::fs::remove_dir_all(&dir).await {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempts < 5 => {
                        attempts += 1;
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> PortResult<Vec<String>> {
        let base = self.root.join("objects");
        let start = base.join(safe_key(prefix.trim_end_matches('/'))?);
        tokio::task::spawn_blocking(move || list_files(&base, &start, 0))
            .await
            .map_err(backend)?
    }

    async fn list_uploads(&self, prefix: &str) -> PortResult<Vec<String>> {
        // uploads/<key>/<upload id>/<file>: report the key of each upload.
        let base = self.root.join("uploads");
        let start = base.join(safe_key(prefix.trim_end_matches('/'))?);
        tokio::task::spawn_blocking(move || list_files(&base, &start, 2))
            .await
            .map_err(backend)?
            .map(|mut keys| {
                keys.sort();
                keys.dedup();
                keys
            })
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> PortResult<String> {
        self.presign_checked_get(key, ttl, None).await
    }

    async fn presign_checked_get(
        &self,
        key: &str,
        ttl: Duration,
        sha256: Option<&str>,
    ) -> PortResult<String> {
        safe_key(key)?;
        let expires = self.clock.now().timestamp() + ttl.as_secs().max(1) as i64;
        let sig = self.signature(key, expires, sha256);
        let checked = sha256.map(|d| format!("&sha256={d}")).unwrap_or_default();
        Ok(format!(
            "{}{BLOB_PATH_PREFIX}{key}?expires={expires}{checked}&signature={sig}",
            self.public_origin
        ))
    }
}

/// S3's highest part number.
const MAX_CHUNK_NUMBER: u32 = 10_000;

/// Where one chunk's bytes sit in the upload's staging file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Staged {
    number: u32,
    offset: u64,
    len: u64,
}

impl Staged {
    /// Names the bytes: a re-upload of the number lands elsewhere and gets
    /// another tag, so completing with a stale tag fails as on S3.
    fn etag(&self) -> String {
        format!("{}-{}-{}", self.number, self.offset, self.len)
    }
}

/// Opens the upload's chunk log under an exclusive lock. `NotFound` if the
/// upload is gone, also when it went (completed, aborted) while we waited.
fn lock_upload(dir: &Path) -> PortResult<std::fs::File> {
    let log = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(dir.join("chunks"))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PortError::NotFound),
        Err(e) => return Err(backend(e)),
    };
    log.lock().map_err(backend)?;
    if !dir.join("chunks").exists() {
        return Err(PortError::NotFound);
    }
    Ok(log)
}

/// The latest staging of each chunk number, by number.
fn read_chunk_log(log: &mut std::fs::File) -> PortResult<std::collections::BTreeMap<u32, Staged>> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    log.seek(std::io::SeekFrom::Start(0)).map_err(backend)?;
    log.read_to_string(&mut text).map_err(backend)?;
    let mut latest = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split(' ').map(str::parse::<u64>);
        let (Some(Ok(number)), Some(Ok(offset)), Some(Ok(len))) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(backend("corrupt chunk log"));
        };
        let number = number as u32;
        latest.insert(
            number,
            Staged {
                number,
                offset,
                len,
            },
        );
    }
    Ok(latest)
}

/// Appends chunk `number` to the staging file and logs where it is.
fn stage_chunk(dir: &Path, number: u32, data: &[u8]) -> PortResult<String> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut log = lock_upload(dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("data"))
        .map_err(backend)?;
    // Appended at the end, so bytes a crashed writer left half-written are
    // never overwritten: no logged chunk points at them.
    let offset = file.metadata().map_err(backend)?.len();
    file.write_all_at(data, offset).map_err(backend)?;
    let staged = Staged {
        number,
        offset,
        len: data.len() as u64,
    };
    writeln!(log, "{number} {offset} {}", staged.len).map_err(backend)?;
    Ok(staged.etag())
}

/// Completes an upload into `target` from the listed chunks.
fn assemble(dir: &Path, target: &Path, wanted: &[UploadedChunk]) -> PortResult<()> {
    let mut log = match lock_upload(dir) {
        Ok(log) => log,
        // Completed before: the object is there (only a winning handling
        // completes an upload, so the object is this upload's).
        Err(PortError::NotFound) if target.is_file() => return Ok(()),
        Err(e) => return Err(e),
    };
    let latest = read_chunk_log(&mut log)?;
    let mut chosen = Vec::with_capacity(wanted.len());
    for (i, c) in wanted.iter().enumerate() {
        let staged = latest.get(&c.number).filter(|s| s.etag() == c.etag);
        let ascending = i == 0 || wanted[i - 1].number < c.number;
        match staged {
            Some(s) if ascending => chosen.push(*s),
            _ => {
                return Err(PortError::Unsupported(format!(
                    "the upload does not hold chunk {} with tag {} in ascending order",
                    c.number, c.etag
                )))
            }
        }
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(backend)?;
    }
    let data = dir.join("data");
    let mut end = 0;
    let in_place = chosen.iter().all(|s| {
        let next = s.offset == end;
        end += s.len;
        next
    });
    if in_place {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&data)
            .map_err(backend)?;
        file.set_len(end).map_err(backend)?;
        std::fs::rename(&data, target).map_err(backend)?;
    } else {
        copy_chunks(&data, &chosen, &dir.join("assembled"), target)?;
    }
    std::fs::remove_dir_all(dir).map_err(backend)?;
    Ok(())
}

/// Copies the chosen chunks' bytes, in order, into a new file, then
/// renames it to `target`.
fn copy_chunks(data: &Path, chosen: &[Staged], tmp: &Path, target: &Path) -> PortResult<()> {
    use std::io::{Read, Seek};
    let mut source = std::fs::File::open(data).map_err(backend)?;
    let mut out = std::fs::File::create(tmp).map_err(backend)?;
    for s in chosen {
        source
            .seek(std::io::SeekFrom::Start(s.offset))
            .map_err(backend)?;
        let copied = std::io::copy(&mut (&mut source).take(s.len), &mut out).map_err(backend)?;
        if copied != s.len {
            return Err(backend("staging file shorter than its chunk log"));
        }
    }
    drop(out);
    std::fs::rename(tmp, target).map_err(backend)
}

/// Relative file paths under `start` (as keys relative to `base`), dropping
/// the last `strip` path components (upload id and chunk) of each.
fn list_files(base: &Path, start: &Path, strip: usize) -> PortResult<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(backend(e)),
        };
        for entry in entries {
            let path = entry.map_err(backend)?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(base) {
                let mut rel = rel.to_path_buf();
                for _ in 0..strip {
                    rel.pop();
                }
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses keys that could escape the root.
fn safe_key(key: &str) -> PortResult<PathBuf> {
    let path = Path::new(key);
    let ok = !key.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(PortError::NotFound)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
