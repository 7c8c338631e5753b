//! Downloads a manifest's files into a folder, each checked before it
//! takes its final name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::manifest::{Item, Manifest};
use crate::progress::Progress;
use crate::session::Session;

/// How a fetch goes about it.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Files downloaded at once.
    pub parallel: usize,
    /// Tries per request (the manifest, each file) before giving up.
    pub tries: u32,
    /// The first pause between tries; it doubles, unless the server says
    /// how long to wait (`Retry-After`).
    pub pause: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            parallel: 4,
            tries: 5,
            pause: Duration::from_millis(500),
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Files downloaded and checked now.
    pub downloaded: Vec<String>,
    /// Files already there and checked (a fetch run again).
    pub kept: Vec<String>,
    /// Bytes downloaded.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: the server answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
        /// `Retry-After` in seconds, if the server said.
        retry_after: Option<u64>,
    },
    #[error("{url}: the export is not complete yet (202); fetch it once its status answers 200")]
    NotComplete { url: String },
    #[error("{url}: {cause}")]
    Network { url: String, cause: String },
    #[error("the manifest cannot be used: {0}")]
    Manifest(String),
    #[error("{file}: {what}")]
    Mismatch { file: String, what: String },
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Folder(String),
    #[error("{url}: still not complete after {} s", waited.as_secs())]
    Timeout { url: String, waited: Duration },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl FetchError {
    /// Whether trying again may help: a server or network fault, a body cut
    /// short, or bytes that do not check out (they may have been damaged
    /// on the way).
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            FetchError::Network { .. } | FetchError::Mismatch { .. } => true,
            _ => false,
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |cause| FetchError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Downloads the manifest at `manifest_url` and its files into `dir`, then
/// writes `manifest.json` there with each `url` made the file's name.
/// Files already in `dir` that check out are kept, not fetched again.
pub async fn fetch(
    session: &Session,
    manifest_url: &str,
    dir: &Path,
    options: &FetchOptions,
    progress: Arc<dyn Progress>,
) -> Result<Fetched, FetchError> {
    let json = with_tries(options, || get_manifest(session, manifest_url)).await?;
    let manifest = Manifest::parse(json).map_err(FetchError::Manifest)?;
    let mut downloads = Downloads::new(session, dir, options, progress).await?;
    let authorized = manifest.requires_access_token();
    for item in &manifest.items {
        downloads.add(item.clone(), authorized)?;
    }
    let fetched = downloads.finish().await?;
    let copy = serde_json::to_vec_pretty(&manifest.local_copy()).expect("JSON serializes");
    write_into_place(&dir.join("manifest.json"), &copy).await?;
    Ok(fetched)
}

/// Files being downloaded into a folder, N at a time. Files are added as
/// they become known (a paged manifest adds them while the export runs);
/// a name already added is not added again.
pub struct Downloads {
    session: Session,
    dir: PathBuf,
    options: FetchOptions,
    progress: Arc<dyn Progress>,
    gate: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<Result<(String, Option<u64>), FetchError>>,
    added: Vec<Item>,
    fetched: Fetched,
}

impl Downloads {
    pub async fn new(
        session: &Session,
        dir: &Path,
        options: &FetchOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<Self, FetchError> {
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        Ok(Downloads {
            session: session.clone(),
            dir: dir.to_path_buf(),
            options: options.clone(),
            progress,
            gate: Arc::new(tokio::sync::Semaphore::new(options.parallel.max(1))),
            tasks: tokio::task::JoinSet::new(),
            added: Vec::new(),
            fetched: Fetched::default(),
        })
    }

    /// Starts on `item`, sending a token with its request if `authorized`.
    /// The same file again is ignored; another file of the same name is an
    /// error.
    pub fn add(&mut self, item: Item, authorized: bool) -> Result<(), FetchError> {
        if let Some(known) = self.added.iter().find(|k| k.name == item.name) {
            if known.url == item.url || strip_query(&known.url) == strip_query(&item.url) {
                return Ok(());
            }
            return Err(FetchError::Manifest(format!(
                "two files are named '{}'",
                item.name
            )));
        }
        self.added.push(item.clone());
        self.progress.file_added(&item.name, item.count);
        let (session, dir, options, gate, progress) = (
            self.session.clone(),
            self.dir.clone(),
            self.options.clone(),
            self.gate.clone(),
            self.progress.clone(),
        );
        self.tasks.spawn(async move {
            let _turn = gate.acquire_owned().await.expect("the gate stays open");
            let path = dir.join(&item.name);
            if check_file(&path, &item).await.is_ok() {
                progress.streamed(0, item.count.unwrap_or(0));
                progress.file_done(&item.name, true);
                return Ok((item.name, None));
            }
            let fetch = || download(&session, authorized, &item, &dir, progress.as_ref());
            let bytes = with_tries(&options, fetch).await?;
            progress.file_done(&item.name, false);
            Ok((item.name, Some(bytes)))
        });
        Ok(())
    }

    /// Files added so far.
    pub fn items(&self) -> &[Item] {
        &self.added
    }

    /// Takes in the downloads that have ended, without waiting; the first
    /// failure ends them all.
    pub async fn collect_finished(&mut self) -> Result<(), FetchError> {
        while let Some(done) = self.tasks.try_join_next() {
            self.take(done).await?;
        }
        Ok(())
    }

    /// Waits for every download.
    pub async fn finish(mut self) -> Result<Fetched, FetchError> {
        while let Some(done) = self.tasks.join_next().await {
            self.take(done).await?;
        }
        self.fetched.downloaded.sort();
        self.fetched.kept.sort();
        Ok(self.fetched)
    }

    /// Stops every download and removes what they wrote.
    pub async fn abandon(&mut self) {
        self.tasks.shutdown().await;
        for item in &self.added {
            let _ = tokio::fs::remove_file(partial_path(&self.dir, &item.name)).await;
        }
    }

    async fn take(
        &mut self,
        done: Result<Result<(String, Option<u64>), FetchError>, tokio::task::JoinError>,
    ) -> Result<(), FetchError> {
        match done.expect("a download task does not panic") {
            Ok((name, None)) => self.fetched.kept.push(name),
            Ok((name, Some(bytes))) => {
                self.fetched.bytes += bytes;
                self.fetched.downloaded.push(name);
            }
            Err(e) => {
                self.abandon().await;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A URL without its query (a presigned link's signature changes from one
/// manifest page to the next).
fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Runs `attempt` until it succeeds, fails for good, or runs out of tries.
pub(crate) async fn with_tries<T, F, Fut>(
    options: &FetchOptions,
    mut attempt: F,
) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, FetchError>>,
{
    let mut pause = options.pause;
    for tried in 1.. {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_transient() && tried < options.tries => {
                let asked = match &e {
                    FetchError::Status {
                        retry_after: Some(secs),
                        ..
                    } => Some(Duration::from_secs(*secs)),
                    _ => None,
                };
                tokio::time::sleep(asked.unwrap_or(pause)).await;
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// The manifest, once the status (or presigned manifest) URL answers 200.
async fn get_manifest(session: &Session, url: &str) -> Result<Value, FetchError> {
    let network = |e: reqwest::Error| FetchError::Network {
        url: url.to_string(),
        cause: e.to_string(),
    };
    let resp = session
        .send(url, true, |http| {
            http.get(url).header("accept", "application/json")
        })
        .await?;
    match resp.status() {
        StatusCode::OK => resp.json().await.map_err(network),
        StatusCode::ACCEPTED => Err(FetchError::NotComplete { url: url.into() }),
        status => Err(status_error(url, status, resp).await),
    }
}

pub(crate) async fn status_error(
    url: &str,
    status: StatusCode,
    resp: reqwest::Response,
) -> FetchError {
    // Seconds; an HTTP date is left to the doubling pause.
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(500);
    FetchError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        body,
        retry_after,
    }
}

/// Downloads one file under a temporary name, checks it while it streams,
/// and renames it into place; returns its size.
async fn download(
    session: &Session,
    authorized: bool,
    item: &Item,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<u64, FetchError> {
    let network = |e: reqwest::Error| FetchError::Network {
        url: item.url.clone(),
        cause: e.to_string(),
    };
    let mut resp = session
        .send(&item.url, authorized, |http| {
            http.get(&item.url)
                .header("accept", "application/fhir+ndjson")
        })
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(status_error(&item.url, resp.status(), resp).await);
    }
    let partial = partial_path(dir, &item.name);
    // Written in large pieces: each write of a tokio File is a trip to a
    // blocking thread, too dear for every chunk of the body.
    let file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(&partial))?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut check = Check::default();
    let streamed = async {
        while let Some(chunk) = resp.chunk().await.map_err(network)? {
            let lines = check.add(&chunk);
            progress.streamed(chunk.len() as u64, lines);
            file.write_all(&chunk).await.map_err(io(&partial))?;
        }
        // No fsync: a file that a crash leaves short or empty under its
        // final name fails its check on the next run and is fetched again.
        file.flush().await.map_err(io(&partial))?;
        check.against(item)
    }
    .await;
    if let Err(e) = streamed {
        // Never left under any name: the next try starts afresh.
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    let path = dir.join(&item.name);
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(io(&path))?;
    Ok(check.bytes)
}

/// Where a file is written until it checks out.
fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.part"))
}

/// Whether the file at `path` is the one `item` names.
async fn check_file(path: &Path, item: &Item) -> Result<(), FetchError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
    let mut check = Check::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).await.map_err(io(path))?;
        if n == 0 {
            return check.against(item);
        }
        check.add(&buf[..n]);
    }
}

/// A file's bytes as they pass: its lines and its SHA-256.
#[derive(Default)]
struct Check {
    hash: Sha256,
    lines: u64,
    bytes: u64,
}

impl Check {
    /// Takes in `data`; returns the lines it ends.
    fn add(&mut self, data: &[u8]) -> u64 {
        self.hash.update(data);
        let lines = memchr::memchr_iter(b'\n', data).count() as u64;
        self.lines += lines;
        self.bytes += data.len() as u64;
        lines
    }

    fn against(&self, item: &Item) -> Result<(), FetchError> {
        let mismatch = |what: String| FetchError::Mismatch {
            file: item.name.clone(),
            what,
        };
        // `count` is lines only in NDJSON: a view's CSV adds a header and
        // may quote line breaks, and Parquet has no lines at all.
        let counted = item
            .name
            .ends_with(".ndjson")
            .then_some(item.count)
            .flatten();
        if let Some(count) = counted {
            if count != self.lines {
                return Err(mismatch(format!(
                    "the manifest says {count} lines, the file has {}",
                    self.lines
                )));
            }
        }
        if let Some(expected) = &item.sha256 {
            let actual: String = self
                .hash
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if &actual != expected {
                return Err(mismatch(format!(
                    "its SHA-256 is {actual}, the manifest says {expected}"
                )));
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary name.
pub(crate) async fn write_into_place(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let partial = path.with_file_name(format!(".{name}.part"));
    tokio::fs::write(&partial, bytes)
        .await
        .map_err(io(&partial))?;
    tokio::fs::rename(&partial, path).await.map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, count: u64, sha256: Option<String>) -> Item {
        Item {
            list: "output",
            url: format!("https://x/{name}"),
            name: name.into(),
            count: Some(count),
            sha256,
            entry: Value::Null,
        }
    }

    #[test]
    fn counts_are_lines_in_ndjson_only_and_digests_hold_everywhere() {
        let mut check = Check::default();
        check.add(b"id,name\n1,\"two\nlines\"\n");
        let digest = hex(&check);
        // A CSV of 1 row: 3 line breaks, which is no mismatch.
        assert!(check
            .against(&item("v.csv", 1, Some(digest.clone())))
            .is_ok());
        assert!(check.against(&item("v.ndjson", 1, None)).is_err());
        assert!(check.against(&item("v.ndjson", 3, Some(digest))).is_ok());
        let wrong = Some("0".repeat(64));
        assert!(check.against(&item("v.csv", 1, wrong)).is_err());
    }

    fn hex(check: &Check) -> String {
        check
            .hash
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
