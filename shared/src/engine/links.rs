//! Links for downstream systems without tokens: a completed job's manifest
//! with every file as a presigned URL, stored as an object of its own and
//! itself handed out as a presigned URL. Anyone holding the manifest link
//! can fetch the run until the links expire, and no longer.
//!
//! A presigned URL is only as good as the credentials that signed it: one
//! signed with a Lambda role's temporary credentials stops working when
//! they expire, whatever its own expiry says. So the lifetime asked for is
//! capped twice: by `EngineConfig::max_link_ttl`, and by what the signing
//! credentials have left; the answer's `expires` is the true end. A client
//! with a token can always get fresh links.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Caller, Exports};
use crate::domain::instant::format_instant;
use crate::domain::job::{artifact_key, manifest_with_urls, JobState};
use crate::domain::Error;

/// Where a job's link manifests are kept (the sweeper removes them with
/// the job).
pub fn links_prefix(job_id: &str) -> String {
    format!("links/{job_id}/")
}

impl Exports {
    /// Presigned links to a completed job's manifest and files, valid for
    /// `ttl` (the file endpoint's lifetime if not given).
    pub async fn presigned_manifest(
        &self,
        caller: &Caller,
        job_id: &str,
        ttl: Option<Duration>,
    ) -> Result<Value, Error> {
        let asked = ttl.unwrap_or(self.config.presign_ttl);
        let max = self.config.max_link_ttl;
        if asked.is_zero() || asked > max {
            return Err(Error::invalid(format!(
                "expiresIn: links live from 1 to {} seconds here",
                max.as_secs()
            )));
        }
        // Links die with the credentials that sign them: promise no more
        // than those have left (a minute's margin).
        let now = self.clock.now();
        let ttl = match self.artifacts.signing_credentials_expiry().await? {
            Some(until) => {
                let left = (until - now - chrono::Duration::minutes(1))
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                if left < Duration::from_secs(60) {
                    return Err(Error::unavailable(
                        "The service's signing credentials are about to be renewed; retry in a minute",
                        60,
                    ));
                }
                asked.min(left)
            }
            None => asked,
        };
        let job = self.desk.readable_job(caller, job_id).await?;
        if job.state != JobState::Completed {
            return Err(Error::conflict(format!(
                "Export job '{job_id}' has not completed; links are for completed exports"
            )));
        }
        // The same per-type check as each file download.
        for f in &job.files {
            self.check_file_access(caller, &job, f)?;
        }
        let mut links = HashMap::new();
        for f in &job.files {
            let key = artifact_key(&job.id, &f.name);
            let link = self
                .artifacts
                .presign_checked_get(&key, ttl, f.sha256.as_deref())
                .await?;
            links.insert(f.name.clone(), link);
        }
        let m = manifest_with_urls(&job, false, &|f| links[&f.name].clone());
        let key = format!("{}{}.json", links_prefix(&job.id), uuid::Uuid::new_v4());
        let body = serde_json::to_vec(&m).map_err(|e| Error::internal(e.to_string()))?;
        self.artifacts.put(&key, body.into()).await?;
        let url = self.artifacts.presign_get(&key, ttl).await?;
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero());
        Ok(json!({
            "manifest": url,
            "expires": format_instant(expires),
            "links": m,
        }))
    }
}
