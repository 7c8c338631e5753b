//! Writing secrets (signing keys) so that only the owner can read them.

use std::io::Write;
use std::path::Path;

/// Creates or truncates `path` with mode 0600 (on Unix) and writes `data`.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}
