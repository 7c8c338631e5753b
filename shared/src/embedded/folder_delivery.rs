//! Folder delivery (the OpenSpecimen model): each completed run of a
//! schedule lands in `DIR/<schedule-name>/<run-number>/`, its files under
//! their manifest names and `manifest.json` (file URLs relative to the
//! folder). The run is assembled in a hidden `.<run-number>.partial`
//! folder, manifest last, then renamed into place in one step: a program
//! watching `DIR` never sees a run without its manifest, nor a half-written
//! file. A run delivered already is left as it is (events may repeat).
//! The schedule folder carries a hidden `.schedule-id`, so a schedule never
//! writes into another's folder of the same name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::sqlite::backend;
use crate::domain::job::{artifact_key, manifest_with_urls, JobState};
use crate::ports::{ArtifactStore, EventPublisher, JobEvent, PortResult};

/// Files are copied in pieces of this size.
const PIECE: usize = 4 << 20;

pub struct FolderDelivery {
    dir: PathBuf,
    artifacts: Arc<dyn ArtifactStore>,
}

impl FolderDelivery {
    pub fn new(dir: impl Into<PathBuf>, artifacts: Arc<dyn ArtifactStore>) -> Self {
        FolderDelivery {
            dir: dir.into(),
            artifacts,
        }
    }

    /// `DIR/<schedule-name>`, marked with the schedule's id (a hidden file).
    /// A folder of that name marked for another schedule (another owner's,
    /// or a deleted one's with the same name) is not reused: this schedule
    /// gets `DIR/<schedule-name>.<first 8 of its id>` instead.
    async fn schedule_folder(&self, schedule_id: &str, name: &str) -> PortResult<PathBuf> {
        for folder in [
            self.dir.join(name),
            self.dir.join(format!(
                "{name}.{}",
                &schedule_id[..8.min(schedule_id.len())]
            )),
        ] {
            let marker = folder.join(".schedule-id");
            match tokio::fs::read_to_string(&marker).await {
                Ok(owner) if owner.trim() == schedule_id => return Ok(folder),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tokio::fs::create_dir_all(&folder).await.map_err(backend)?;
                    tokio::fs::write(&marker, schedule_id)
                        .await
                        .map_err(backend)?;
                    return Ok(folder);
                }
                Err(e) => return Err(backend(e)),
            }
        }
        Err(crate::ports::PortError::permanent(
            "the delivery folder is taken by other schedules",
            format!("{name} and its id-suffixed twin belong to other schedules"),
        ))
    }

    async fn copy(&self, key: &str, to: &Path) -> PortResult<()> {
        let mut out = tokio::fs::File::create(to).await.map_err(backend)?;
        let mut offset = 0u64;
        loop {
            let piece = self.artifacts.get_range(key, offset, PIECE).await?;
            if piece.is_empty() {
                break;
            }
            out.write_all(&piece).await.map_err(backend)?;
            offset += piece.len() as u64;
            if piece.len() < PIECE {
                break;
            }
        }
        out.sync_all().await.map_err(backend)
    }
}

#[async_trait]
impl EventPublisher for FolderDelivery {
    async fn publish(&self, event: &JobEvent) -> PortResult<()> {
        let Some(run) = &event.job.run_of else {
            return Ok(());
        };
        if event.job.state != JobState::Completed {
            return Ok(());
        }
        let folder = self
            .schedule_folder(&run.schedule_id, &run.schedule_name)
            .await?;
        let target = folder.join(run.run.to_string());
        if tokio::fs::try_exists(&target).await.map_err(backend)? {
            return Ok(());
        }
        let partial = folder.join(format!(".{}.partial", run.run));
        let _ = tokio::fs::remove_dir_all(&partial).await;
        tokio::fs::create_dir_all(&partial).await.map_err(backend)?;
        for f in &event.job.files {
            self.copy(
                &artifact_key(&event.job.id, &f.name),
                &partial.join(&f.name),
            )
            .await?;
        }
        // Each file's `url` is its name in the folder.
        let manifest = manifest_with_urls(&event.job, false, &|f| f.name.clone());
        let body = serde_json::to_vec_pretty(&manifest).map_err(backend)?;
        tokio::fs::write(partial.join("manifest.json"), body)
            .await
            .map_err(backend)?;
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(backend)?;
        tracing::info!(job = %event.job.id, folder = %target.display(), "run delivered");
        Ok(())
    }
}
