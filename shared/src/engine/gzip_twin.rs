//! Gzip twins: beside each finished NDJSON file, the same bytes gzipped
//! under `<name>.gz`, for clients that send `Accept-Encoding: gzip`.
//!
//! S3 cannot compress on the way out, and NDJSON shrinks about tenfold, so
//! egress (the largest cost of an export on AWS) is paid on the twin. The
//! twin is written from the finished file, read back in ranges, because a
//! multipart upload's parts must be at least `min_chunk_bytes` (5 MiB on
//! S3) each: compressed as the file is written, a chunk would be a tenth
//! of that. Writing it again after a crash gives the same bytes.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use super::digest::hex;

use crate::domain::job::UploadedChunk;
use crate::ports::{ArtifactStore, PortError, PortResult};

/// The twins' gzip level. On zlib-rs, level 2 takes the Synthea NDJSON to
/// 7.9% of its size in 1.9 CPU-s/GB; level 1 is faster (1.3) but larger
/// (10.9%), level 6 smaller (6.5%) for nearly twice the CPU, and egress
/// is paid on these bytes (`cargo bench -p bulk-export-local --bench
/// compression`).
pub const TWIN_LEVEL: u32 = 2;

/// How much of the file is read at a time.
const READ_BYTES: usize = 8 << 20;

/// The key of `key`'s gzip twin.
pub fn twin_key(key: &str) -> String {
    format!("{key}.gz")
}

/// The SHA-256 digests (lowercase hex) of a file and of its gzip twin:
/// both are read or written whole while the twin is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TwinDigests {
    pub file: String,
    pub twin: String,
}

/// Writes (or rewrites) the gzip twin of the finished object `key`.
pub(crate) async fn write_gzip_twin(
    artifacts: &dyn ArtifactStore,
    key: &str,
    min_part_bytes: usize,
) -> PortResult<TwinDigests> {
    let twin = twin_key(key);
    let upload_id = artifacts.start_upload(&twin).await?;
    let written = compress_into(artifacts, key, &twin, &upload_id, min_part_bytes).await;
    match written {
        Ok((chunks, digests)) => {
            artifacts
                .complete_upload(&twin, &upload_id, &chunks)
                .await?;
            Ok(digests)
        }
        Err(e) => {
            if let Err(abort) = artifacts.abort_upload(&twin, &upload_id).await {
                tracing::warn!(key = %twin, error = %abort, "could not abort a gzip twin upload");
            }
            Err(e)
        }
    }
}

async fn compress_into(
    artifacts: &dyn ArtifactStore,
    key: &str,
    twin: &str,
    upload_id: &str,
    min_part_bytes: usize,
) -> PortResult<(Vec<UploadedChunk>, TwinDigests)> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::new(TWIN_LEVEL));
    let mut chunks = Vec::new();
    let (mut file_hash, mut twin_hash) = (Sha256::new(), Sha256::new());
    let mut offset = 0u64;
    loop {
        let data = artifacts.get_range(key, offset, READ_BYTES).await?;
        offset += data.len() as u64;
        file_hash.update(&data);
        encoder.write_all(&data).map_err(compression_failed)?;
        if encoder.get_ref().len() >= min_part_bytes.max(1) {
            let part = std::mem::take(encoder.get_mut());
            upload(
                artifacts,
                twin,
                upload_id,
                &mut chunks,
                &mut twin_hash,
                part,
            )
            .await?;
        }
        if data.len() < READ_BYTES {
            break;
        }
    }
    let last = encoder.finish().map_err(compression_failed)?;
    upload(
        artifacts,
        twin,
        upload_id,
        &mut chunks,
        &mut twin_hash,
        last,
    )
    .await?;
    let digests = TwinDigests {
        file: hex(file_hash),
        twin: hex(twin_hash),
    };
    Ok((chunks, digests))
}

/// Uploads the next chunk of a file derived from a finished one (a gzip
/// twin, a Parquet file), records it and adds it to the file's hash.
pub(crate) async fn upload(
    artifacts: &dyn ArtifactStore,
    twin: &str,
    upload_id: &str,
    chunks: &mut Vec<UploadedChunk>,
    hash: &mut Sha256,
    data: Vec<u8>,
) -> PortResult<()> {
    hash.update(&data);
    let number = chunks.len() as u32 + 1;
    let etag = artifacts
        .upload_chunk(twin, upload_id, number, Bytes::from(data))
        .await?;
    chunks.push(UploadedChunk { number, etag });
    Ok(())
}

fn compression_failed(e: std::io::Error) -> PortError {
    PortError::permanent("an internal error stopped the export", e.to_string())
}
