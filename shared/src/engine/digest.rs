//! SHA-256 digests of the files an export writes, for the manifest: each
//! `output`, `deleted` and `error` item carries the digest of the file's
//! bytes as `extension.sha256` (lowercase hex), so that a client can check
//! what it downloaded, however it got there (a presigned link, a delivered
//! folder). Digests are taken of the stored object after its upload is
//! complete, so they describe what is served, not what was meant to be.

use sha2::{Digest, Sha256};

use crate::ports::{ArtifactStore, PortResult};

/// How much of an object is read at a time.
const READ_BYTES: usize = 8 << 20;

/// Lowercase hex of a finished hash.
pub(crate) fn hex(hash: Sha256) -> String {
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, as the manifest gives it.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(Sha256::new_with_prefix(bytes))
}

/// The SHA-256 of the stored object `key`, read in ranges.
pub(crate) async fn digest_of(artifacts: &dyn ArtifactStore, key: &str) -> PortResult<String> {
    let mut hash = Sha256::new();
    let mut offset = 0u64;
    loop {
        let data = artifacts.get_range(key, offset, READ_BYTES).await?;
        offset += data.len() as u64;
        hash.update(&data);
        if data.len() < READ_BYTES {
            return Ok(hex(hash));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_sha256_in_lowercase_hex() {
        // Independently: printf 'abc' | sha256sum
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
