//! Export files on the local filesystem, with S3's multipart and presigned
//! URL behaviour.
//!
//! Layout under the root: `objects/<key>` for finished files and
//! `uploads/<key>/<upload id>/` for uploads in flight, holding one staging
//! file (`data`) and the list of its chunks (`chunks`: number and length).
//! A chunk is written in place at its offset, so every byte is written once
//! and completing an upload is a rename. Chunks go up in order (the engine's
//! sinks are sequential); re-uploading chunk n (a resumed part) replaces it,
//! and drops later chunks only if its length changed. Completing checks the
//! caller's chunk list against what is staged, so a mismatch is an error,
//! never a corrupt file.
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
use crate::domain::ApiError;
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

    fn signature(&self, key: &str, expires: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(format!("GET\n{key}\n{expires}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Checks a presigned request and returns the file to serve.
    /// Refusals say why, as S3 does, but never reveal anything else.
    pub fn open_signed(&self, key: &str, query: &str) -> Result<PathBuf, ApiError> {
        let mut expires = None;
        let mut signature = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "expires" => expires = v.parse::<i64>().ok(),
                "signature" => signature = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(ApiError::forbidden("This link is not signed"));
        };
        let expected = self.signature(key, expires);
        if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
            return Err(ApiError::forbidden("This link's signature is not valid"));
        }
        if self.clock.now().timestamp() >= expires {
            return Err(ApiError::forbidden(
                "This link has expired; ask the file endpoint for a new one",
            ));
        }
        let path = self
            .object_path(key)
            .map_err(|_| ApiError::not_found("No such file"))?;
        if !path.is_file() {
            return Err(ApiError::not_found("No such file"));
        }
        Ok(path)
    }
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
        let wanted: Vec<(u32, String)> =
            chunks.iter().map(|c| (c.number, c.etag.clone())).collect();
        tokio::task::spawn_blocking(move || -> PortResult<()> {
            let staged = read_chunk_list(&dir)?;
            let staged: Vec<(u32, String)> =
                staged.iter().map(|&(n, len)| (n, etag(n, len))).collect();
            if staged != wanted {
                return Err(PortError::Backend(format!(
                    "upload does not hold the listed chunks (staged {staged:?})"
                )));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(backend)?;
            }
            let data = dir.join("data");
            if !data.exists() {
                std::fs::File::create(&data).map_err(backend)?;
            }
            std::fs::rename(&data, &target).map_err(backend)?;
            std::fs::remove_dir_all(&dir).map_err(backend)?;
            Ok(())
        })
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

    async fn get(&self, key: &str) -> PortResult<Bytes> {
        match tokio::fs::read(self.object_path(key)?).await {
            Ok(b) => Ok(b.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PortError::NotFound),
            Err(e) => Err(backend(e)),
        }
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
            match tokio::fs::remove_dir_all(self.root.join(area).join(&prefix)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(backend(e)),
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
        safe_key(key)?;
        let expires = self.clock.now().timestamp() + ttl.as_secs().max(1) as i64;
        let sig = self.signature(key, expires);
        Ok(format!(
            "{}{BLOB_PATH_PREFIX}{key}?expires={expires}&signature={sig}",
            self.public_origin
        ))
    }
}

fn etag(number: u32, len: u64) -> String {
    format!("{number}-{len}")
}

/// The staged chunks of an upload, in order: (number, length).
fn read_chunk_list(dir: &Path) -> PortResult<Vec<(u32, u64)>> {
    if !dir.is_dir() {
        return Err(PortError::NotFound);
    }
    let text = match std::fs::read_to_string(dir.join("chunks")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(backend(e)),
    };
    text.lines()
        .map(|l| {
            let (n, len) = l
                .split_once(' ')
                .ok_or_else(|| backend("corrupt chunk list"))?;
            Ok((n.parse().map_err(backend)?, len.parse().map_err(backend)?))
        })
        .collect()
}

/// Writes chunk `number` at its offset in the staging file.
fn stage_chunk(dir: &Path, number: u32, data: &[u8]) -> PortResult<String> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut chunks = read_chunk_list(dir)?;
    let len = data.len() as u64;
    let same_length = chunks.iter().any(|&(n, l)| n == number && l == len);
    if !same_length {
        chunks.retain(|&(n, _)| n < number);
    }
    let before: Vec<u32> = chunks.iter().map(|c| c.0).filter(|&n| n < number).collect();
    if before != (1..number).collect::<Vec<_>>() {
        return Err(PortError::Backend(format!(
            "chunk {number} uploaded before the chunks ahead of it"
        )));
    }
    let offset: u64 = chunks.iter().filter(|c| c.0 < number).map(|c| c.1).sum();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("data"))
        .map_err(backend)?;
    file.write_all_at(data, offset).map_err(backend)?;
    if !same_length {
        file.set_len(offset + len).map_err(backend)?;
        chunks.push((number, len));
        let tmp = dir.join("chunks.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(backend)?;
        for (n, l) in &chunks {
            writeln!(f, "{n} {l}").map_err(backend)?;
        }
        drop(f);
        std::fs::rename(&tmp, dir.join("chunks")).map_err(backend)?;
    }
    Ok(etag(number, len))
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
