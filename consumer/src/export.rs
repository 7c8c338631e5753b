//! An export from kick-off to checked files in a folder, resumable: the
//! folder remembers the export (`.bulk-export-client.json`), so the same
//! command run again continues it instead of starting another.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fetch::{
    io, with_tries, write_into_place, Downloads, FetchError, FetchOptions, Fetched,
};
use crate::kickoff::ExportRequest;
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::session::Session;
use crate::status::{poll, Poll};

/// The file in the folder that names the export it holds.
pub const STATE_FILE: &str = ".bulk-export-client.json";

/// What the folder remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    base: String,
    request: ExportRequest,
    status_url: String,
}

/// An export into a folder.
pub struct Export {
    pub session: Session,
    /// The server's FHIR base URL.
    pub base: String,
    pub request: ExportRequest,
    pub dir: PathBuf,
    pub options: FetchOptions,
    /// Give up waiting for the server after this long.
    pub timeout: Duration,
    pub progress: Arc<dyn Progress>,
}

/// What an export did.
#[derive(Debug)]
pub struct Exported {
    pub status_url: String,
    /// Whether it continued an export the folder held.
    pub resumed: bool,
    pub fetched: Fetched,
    /// The local manifest (`manifest.json`).
    pub manifest: Manifest,
    /// Files of the manifest's `error` list: the server could not export
    /// everything, so the result is partial.
    pub error_files: usize,
}

impl Export {
    /// The status URL of the export the folder holds, if it is this same
    /// export; otherwise kicks a new one off and records it.
    pub async fn start(&self) -> Result<(String, bool), FetchError> {
        if let Some(state) = self.recorded().await? {
            return Ok((state.status_url, true));
        }
        self.kick_off().await.map(|url| (url, false))
    }

    async fn kick_off(&self) -> Result<String, FetchError> {
        let status_url = self.request.kick_off(&self.session, &self.base).await?;
        let state = State {
            base: self.base.clone(),
            request: self.request.clone(),
            status_url: status_url.clone(),
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let json = serde_json::to_vec_pretty(&state).expect("JSON serializes");
        write_into_place(&self.dir.join(STATE_FILE), &json).await?;
        Ok(status_url)
    }

    /// The folder's export, if it is this one; a folder holding another is
    /// an error, so two exports never mix their files.
    async fn recorded(&self) -> Result<Option<State>, FetchError> {
        let path = self.dir.join(STATE_FILE);
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let state: State = serde_json::from_slice(&text).map_err(|e| {
            FetchError::Manifest(format!("{}: not this tool's record: {e}", path.display()))
        })?;
        if state.base != self.base || state.request != self.request {
            return Err(FetchError::Folder(format!(
                "{} holds another export ({}); choose another --out",
                self.dir.display(),
                state.status_url
            )));
        }
        Ok(Some(state))
    }

    /// Waits for the export, downloading its files as they are listed,
    /// then writes `manifest.json`. An export the server no longer has
    /// (expired, cancelled) is kicked off again when it was resumed.
    pub async fn complete(&self, status_url: &str, resumed: bool) -> Result<Exported, FetchError> {
        let mut status_url = status_url.to_string();
        let mut resumed = resumed;
        loop {
            match self.wait_and_download(&status_url).await? {
                Some(done) => {
                    return Ok(Exported {
                        error_files: done.1.items.iter().filter(|i| i.list == "error").count(),
                        status_url,
                        resumed,
                        fetched: done.0,
                        manifest: done.1,
                    })
                }
                None if resumed => {
                    self.progress.note(&format!(
                        "the server no longer has the export {status_url}; starting it again"
                    ));
                    status_url = self.kick_off().await?;
                    resumed = false;
                }
                None => {
                    return Err(FetchError::Status {
                        url: status_url,
                        status: 404,
                        body: "the export is gone (expired or cancelled)".into(),
                        retry_after: None,
                    })
                }
            }
        }
    }

    /// Polls from `status_url` through every manifest page; `None` if the
    /// server has no such export.
    async fn wait_and_download(
        &self,
        status_url: &str,
    ) -> Result<Option<(Fetched, Manifest)>, FetchError> {
        let deadline = Instant::now() + self.timeout;
        let mut downloads = Downloads::new(
            &self.session,
            &self.dir,
            &self.options,
            self.progress.clone(),
        )
        .await?;
        let mut url = status_url.to_string();
        let last = loop {
            let answer = with_tries(&self.options, || poll(&self.session, &url)).await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    downloads.abandon().await;
                    return Err(e);
                }
            };
            match answer {
                Poll::Gone if url == status_url => return Ok(None),
                Poll::Gone => {
                    downloads.abandon().await;
                    return Err(FetchError::Manifest(format!(
                        "the manifest page {url} is gone"
                    )));
                }
                Poll::Done(page) => {
                    let next = self.take_page(&mut downloads, page.clone())?;
                    match next {
                        Some(next) => url = next,
                        None => break page,
                    }
                }
                Poll::Running {
                    said,
                    percent,
                    retry_after,
                    page,
                } => {
                    if let Some(page) = page {
                        if let Some(next) = self.take_page(&mut downloads, page)? {
                            url = next;
                            continue;
                        }
                    }
                    self.progress.waiting(said.as_deref(), percent);
                    if Instant::now() + retry_after > deadline {
                        downloads.abandon().await;
                        return Err(FetchError::Timeout {
                            url,
                            waited: self.timeout,
                        });
                    }
                    tokio::time::sleep(retry_after).await;
                    downloads.collect_finished().await?;
                }
            }
        };
        let items = downloads.items().to_vec();
        let fetched = downloads.finish().await?;
        let manifest = Manifest::joined(&last, &items);
        let copy = serde_json::to_vec_pretty(&manifest.local_copy()).expect("JSON serializes");
        write_into_place(&self.dir.join("manifest.json"), &copy).await?;
        Ok(Some((fetched, manifest)))
    }

    /// Starts on a manifest page's files; returns the next page's URL.
    fn take_page(
        &self,
        downloads: &mut Downloads,
        page: serde_json::Value,
    ) -> Result<Option<String>, FetchError> {
        let page = Manifest::parse(page).map_err(FetchError::Manifest)?;
        let authorized = page.requires_access_token();
        for item in page.items.iter().cloned() {
            downloads.add(item, authorized)?;
        }
        Ok(page.next_page())
    }

    /// Cancels the export on the server (`DELETE` on its status URL) and
    /// forgets it, with whatever was partly downloaded.
    pub async fn cancel(&self, status_url: &str) -> Result<(), FetchError> {
        let resp = self
            .session
            .send(status_url, true, |http| http.delete(status_url))
            .await?;
        let status = resp.status();
        if !(status.is_success() || status.as_u16() == 404) {
            return Err(crate::fetch::status_error(status_url, status, resp).await);
        }
        let _ = tokio::fs::remove_file(self.dir.join(STATE_FILE)).await;
        remove_partial_files(&self.dir).await;
        Ok(())
    }
}

/// Removes the `.<name>.part` files a stopped download left.
pub async fn remove_partial_files(dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".part") {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}
