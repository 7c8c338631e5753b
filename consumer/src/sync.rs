//! `sync`: keeps a [`Mirror`] following a server, one step at a time.
//!
//! - The first step is a release (`--release NAME|latest`) or a full
//!   export the client kicks off.
//! - Each later step is a completed run of an incremental schedule
//!   (`--schedule ID`) newer than the cursor, oldest first, or else a
//!   `_since` export from the cursor that the client kicks off.
//!
//! A step's files are downloaded and checked into a folder beside the
//! mirror (`<mirror>.steps/<step>`, which resumes like `export`), applied
//! in one transaction with the cursor, then removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::export::Export;
use crate::fetch::{FetchError, FetchOptions};
use crate::kickoff::ExportRequest;
use crate::manifest::Manifest;
use crate::mirror::{parse_instant, Applied, Differences, Mirror, MirrorError, Step};
use crate::progress::Progress;
use crate::session::Session;
use crate::views::{self, ViewSource};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("{0}")]
    Refused(String),
}

/// A sync's settings.
pub struct Sync {
    pub session: Session,
    pub base: String,
    pub mirror: PathBuf,
    /// The first step: this release, or (`None`) a full export.
    pub release: Option<String>,
    /// Later steps: this incremental schedule's runs, or (`None`) `_since`
    /// exports.
    pub schedule: Option<String>,
    /// `_type` of the exports the client kicks off (all types if empty).
    pub types: Vec<String>,
    /// Views whose rows are kept as tables, refreshed at each sync.
    pub views: Vec<ViewSource>,
    pub options: FetchOptions,
    pub timeout: Duration,
    pub progress: Arc<dyn Progress>,
}

/// What a sync did: the steps applied, in order, and where it stands.
#[derive(Debug, Default)]
pub struct Synced {
    pub steps: Vec<(String, Applied)>,
    /// Each view's table and its rows.
    pub views: Vec<(String, u64)>,
    pub cursor: Option<String>,
    pub resources: u64,
}

impl Sync {
    fn steps_dir(&self) -> PathBuf {
        let mut dir = self.mirror.clone().into_os_string();
        dir.push(".steps");
        PathBuf::from(dir)
    }

    fn open(&self) -> Result<Mirror, SyncError> {
        if let Some(parent) = self.mirror.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| SyncError::Refused(format!("{}: {e}", parent.display())))?;
        }
        let mirror = Mirror::open(&self.mirror)?;
        let base = mirror.state("base")?;
        match base {
            Some(b) if b != self.base => Err(SyncError::Refused(format!(
                "{} mirrors {b}, not {}",
                self.mirror.display(),
                self.base
            ))),
            Some(_) => Ok(mirror),
            None => {
                mirror.set_state("base", &self.base)?;
                Ok(mirror)
            }
        }
    }

    /// Brings the mirror up to date.
    pub async fn run(&self) -> Result<Synced, SyncError> {
        let mut mirror = self.open()?;
        let mut synced = Synced::default();
        let started_at = mirror.cursor()?;
        if started_at.is_none() {
            let (name, url) = match &self.release {
                Some(release) => self.release_manifest(release).await?,
                None => ("full".to_string(), None),
            };
            self.step(&mut mirror, &mut synced, &name, url, None)
                .await?;
        }
        match &self.schedule {
            Some(schedule) => {
                for (name, url) in self.schedule_runs(&mirror, schedule).await? {
                    self.step(&mut mirror, &mut synced, &name, Some(url), None)
                        .await?;
                }
            }
            None if started_at.is_some() => {
                let since = mirror.cursor()?.expect("a cursor");
                let name = format!("since-{}", since.replace(':', ""));
                self.step(&mut mirror, &mut synced, &name, None, Some(since))
                    .await?;
            }
            None => {}
        }
        if !self.views.is_empty() {
            synced.views = self.refresh_views(&mut mirror).await?;
        }
        synced.cursor = mirror.cursor()?;
        synced.resources = mirror.count()?;
        Ok(synced)
    }

    /// Exports the views' rows (CSV) and replaces each view's table with
    /// them. A view's table is as of its own export's `transactionTime`
    /// (in `sync_state` as `view:<table>`), not the resources' cursor.
    async fn refresh_views(&self, mirror: &mut Mirror) -> Result<Vec<(String, u64)>, SyncError> {
        let dir = self.steps_dir().join("views");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let export = self.export(ExportRequest::default(), &dir);
        let status = views::kick_off(&self.session, &self.base, &self.views).await?;
        let done = export.complete(&status, false).await?;
        refuse_errors(&dir, &done.manifest)?;
        let time = done.manifest.json["transactionTime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Each view's files, by the view's name (the manifest's `type`).
        let mut by_view: Vec<(String, Vec<(PathBuf, String)>)> = Vec::new();
        for item in done.manifest.items.iter().filter(|i| i.list == "output") {
            let view = item.entry["type"].as_str().unwrap_or("view").to_string();
            let file = (dir.join(&item.name), item.name.clone());
            match by_view.iter_mut().find(|(v, _)| *v == view) {
                Some((_, files)) => files.push(file),
                None => by_view.push((view, vec![file])),
            }
        }
        let mut tables = Vec::new();
        for (view, files) in by_view {
            let table = views::table_name(&view);
            let rows = tokio::task::block_in_place(|| mirror.replace_view(&table, &files, &time))?;
            self.progress
                .note(&format!("{table}: {rows} rows as of {time}"));
            tables.push((table, rows));
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Ok(tables)
    }

    /// Downloads a step (from `url`, a status-like URL, or from an export
    /// the client kicks off with `since`) and applies it.
    async fn step(
        &self,
        mirror: &mut Mirror,
        synced: &mut Synced,
        name: &str,
        url: Option<String>,
        since: Option<String>,
    ) -> Result<(), SyncError> {
        let dir = self.steps_dir().join(name);
        let request = ExportRequest {
            types: self.types.clone(),
            since,
            ..Default::default()
        };
        let export = self.export(request, &dir);
        let (status, resumed) = match url {
            Some(url) => (url, false),
            None => export.start().await?,
        };
        self.progress.note(&format!("{name}: downloading"));
        let done = export.complete(&status, resumed).await?;
        refuse_errors(&dir, &done.manifest)?;
        let applied = tokio::task::block_in_place(|| {
            mirror.apply(&Step {
                name,
                dir: &dir,
                manifest: &done.manifest,
            })
        })?;
        self.progress.note(&format!(
            "{name}: {} upserted, {} deleted; the mirror is as of {}",
            applied.upserted, applied.deleted, applied.cursor
        ));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        synced.steps.push((name.to_string(), applied));
        Ok(())
    }

    fn export(&self, request: ExportRequest, dir: &Path) -> Export {
        Export {
            session: self.session.clone(),
            base: self.base.clone(),
            request,
            dir: dir.to_path_buf(),
            options: self.options.clone(),
            timeout: self.timeout,
            progress: self.progress.clone(),
        }
    }

    /// A release's step name and manifest URL (`latest` resolved).
    async fn release_manifest(&self, release: &str) -> Result<(String, Option<String>), SyncError> {
        let url = format!("{}/$export-releases/{release}", self.base);
        let json = self.get_json(&url).await?;
        let name = json.get("name").and_then(Value::as_str).unwrap_or(release);
        let manifest = json
            .get("manifest")
            .and_then(Value::as_str)
            .ok_or_else(|| SyncError::Refused(format!("{url}: no manifest link")))?;
        Ok((format!("release-{name}"), Some(manifest.to_string())))
    }

    /// The schedule's completed runs after the cursor, oldest first, as
    /// (step name, status URL). A run that starts after the cursor would
    /// leave a gap, and a run without `_since` (a full schedule) would not
    /// carry deletions: both are refused.
    async fn schedule_runs(
        &self,
        mirror: &Mirror,
        schedule: &str,
    ) -> Result<Vec<(String, String)>, SyncError> {
        let url = format!("{}/$export-schedules/{schedule}/runs", self.base);
        let json = self.get_json(&url).await?;
        let cursor = mirror.cursor()?.expect("the first step is applied");
        let mut at = parse_instant(&cursor).map_err(SyncError::Refused)?;
        let mut runs: Vec<&Value> = json["runs"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["state"] == "completed").collect())
            .unwrap_or_default();
        runs.sort_by_key(|r| r["run"].as_u64());
        let mut steps = Vec::new();
        for run in runs {
            let n = run["run"].as_u64().unwrap_or(0);
            let time = run["transactionTime"].as_str().unwrap_or("");
            let time = parse_instant(time).map_err(SyncError::Refused)?;
            if time <= at {
                continue;
            }
            let Some(since) = run["since"].as_str() else {
                return Err(SyncError::Refused(format!(
                    "run {n} of {schedule} has no _since: only an incremental schedule carries deletions"
                )));
            };
            if parse_instant(since).map_err(SyncError::Refused)? > at {
                return Err(SyncError::Refused(format!(
                    "run {n} of {schedule} starts at {since}, after the mirror ({at}): \
                     the changes between are in no run kept; sync again from a release"
                )));
            }
            let status = run["status"].as_str().unwrap_or_default().to_string();
            steps.push((format!("run-{n}"), status));
            at = time;
        }
        Ok(steps)
    }

    async fn get_json(&self, url: &str) -> Result<Value, SyncError> {
        let resp = self
            .session
            .send(url, true, |http| {
                http.get(url).header("accept", "application/json")
            })
            .await?;
        if !resp.status().is_success() {
            return Err(crate::fetch::status_error(url, resp.status(), resp)
                .await
                .into());
        }
        resp.json().await.map_err(|e| {
            SyncError::Fetch(FetchError::Network {
                url: url.to_string(),
                cause: e.to_string(),
            })
        })
    }

    /// Compares the mirror with a full export as of its cursor (`_until`).
    pub async fn check(&self) -> Result<Differences, SyncError> {
        let mut mirror = self.open()?;
        let Some(cursor) = mirror.cursor()? else {
            return Err(SyncError::Refused(
                "the mirror has not been synced yet".into(),
            ));
        };
        let dir = self.steps_dir().join("check");
        let request = ExportRequest {
            types: self.types.clone(),
            until: Some(cursor),
            ..Default::default()
        };
        let export = self.export(request, &dir);
        let (status, resumed) = export.start().await?;
        let done = export.complete(&status, resumed).await?;
        refuse_errors(&dir, &done.manifest)?;
        let differences = tokio::task::block_in_place(|| mirror.compare(&dir, &done.manifest))?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Ok(differences)
    }
}

/// A step whose `error` files report errors is not applied: resources it
/// could not export would be missed for good once the cursor moves past.
/// Warnings and information are fine.
fn refuse_errors(dir: &Path, manifest: &Manifest) -> Result<(), SyncError> {
    for item in manifest.items.iter().filter(|i| i.list == "error") {
        let text = std::fs::read_to_string(dir.join(&item.name)).unwrap_or_default();
        for line in text.lines() {
            let outcome: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            let issues = outcome["issue"].as_array().cloned().unwrap_or_default();
            for issue in issues {
                if matches!(issue["severity"].as_str(), Some("error" | "fatal")) {
                    let said = issue["diagnostics"].as_str().unwrap_or("no diagnostics");
                    return Err(SyncError::Refused(format!(
                        "the server reported an error in {}, so the step is not applied: {said}",
                        item.name
                    )));
                }
            }
        }
    }
    Ok(())
}
