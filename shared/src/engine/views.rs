//! `$viewdefinition-run`: a ViewDefinition run synchronously, over inline
//! resources or the store as it is now, for small results.

use super::{EngineConfig, JobDesk, Resources};
use crate::ports::ResourceStore;
use std::sync::Arc;

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use super::compartment::compartment_page;
use super::Caller;
use crate::domain::resource::{compartment_patients, Version};
use crate::domain::Error;
use crate::ports::{ScanPage, ShardScan};
use fhir_query::view::{Row, View, ViewError};

/// Where a run's resources come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewSource {
    /// The request's own `resource` parameters.
    Inline(Vec<Value>),
    /// The store as of now, all of it or one patient's or one Group's
    /// members' compartments.
    Store {
        patient: Option<String>,
        group: Option<String>,
    },
}

fn view_error(e: ViewError) -> Error {
    Error::invalid(format!("The view cannot be run: {e}"))
}

/// ViewDefinitions: run at once, or exported like a bulk export.
#[derive(Clone)]
pub struct Views {
    pub(crate) desk: JobDesk,
    /// Reads a stored ViewDefinition as the caller may.
    pub(crate) reader: Resources,
    pub(crate) resources: Arc<dyn ResourceStore>,
    pub(crate) config: Arc<EngineConfig>,
}

impl Views {
    /// The stored ViewDefinition `reference` names (`ViewDefinition/{id}`,
    /// the id alone, or its canonical `url`, optionally `|version`), if the
    /// caller may read it.
    pub async fn stored_view(&self, caller: &Caller, reference: &str) -> Result<Value, Error> {
        if reference.contains("://") || reference.starts_with("urn:") {
            return self.view_by_canonical(caller, reference).await;
        }
        let id = reference
            .strip_prefix("ViewDefinition/")
            .unwrap_or(reference);
        let v = self
            .reader
            .read_resource(caller, "ViewDefinition", id)
            .await?;
        serde_json::from_str(v.body.as_deref().unwrap_or("{}"))
            .map_err(|_| Error::internal("a stored ViewDefinition is not JSON"))
    }

    /// The newest stored ViewDefinition whose `url` (and `version`, after a
    /// `|`) is `canonical`. Views are few: this reads them all.
    async fn view_by_canonical(&self, caller: &Caller, canonical: &str) -> Result<Value, Error> {
        if !caller.access.can_read("ViewDefinition") {
            return Err(Error::forbidden(
                "The access token's scopes do not permit reading ViewDefinition",
            ));
        }
        let (url, version) = match canonical.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (canonical, None),
        };
        let store = &self.resources;
        let as_of = crate::domain::instant::to_micros(store.snapshot().await?);
        let mut found: Option<(i64, Value)> = None;
        for shard in 0..store.shard_count() {
            let mut after = None;
            loop {
                let page = store
                    .scan_shard(crate::ports::ShardScan {
                        resource_type: "ViewDefinition",
                        shard,
                        after,
                        until: None,
                        as_of,
                        include_deleted: false,
                        limit: self.config.page_size,
                    })
                    .await?;
                for item in &page.items {
                    let Some(view) = page
                        .body(item)
                        .and_then(|b| serde_json::from_str::<Value>(b).ok())
                    else {
                        continue;
                    };
                    let matches = view.get("url").and_then(Value::as_str) == Some(url)
                        && version
                            .is_none_or(|v| view.get("version").and_then(Value::as_str) == Some(v));
                    if matches && found.as_ref().is_none_or(|(at, _)| item.last_updated > *at) {
                        found = Some((item.last_updated, view));
                    }
                }
                if !page.more {
                    break;
                }
                after = page.items.last().map(|i| i.last_updated);
            }
        }
        found.map(|(_, v)| v).ok_or_else(|| {
            Error::not_found(format!(
                "No stored ViewDefinition has the url '{canonical}'"
            ))
        })
    }

    /// The view's rows: at most `limit` (`_limit`) when it is given and
    /// within the server's row limit; otherwise more rows than the
    /// server's limit is a 422 that points to `$viewdefinition-export`.
    pub async fn run_view(
        &self,
        caller: &Caller,
        view: &View,
        source: ViewSource,
        limit: Option<usize>,
    ) -> Result<Vec<Row>, Error> {
        let t = &view.resource_type;
        if !caller.access.can_read(t) {
            return Err(Error::forbidden(format!(
                "The access token's scopes do not permit reading {t}"
            )));
        }
        let mut rows = Collector::new(limit, self.config.view_run_row_limit);
        match source {
            ViewSource::Inline(resources) => {
                for r in &resources {
                    if !rows.add(view, r)? {
                        break;
                    }
                }
            }
            ViewSource::Store { patient, group } => {
                if let Some(groups) = &caller.access.groups {
                    if !group.as_ref().is_some_and(|g| groups.contains(g)) {
                        return Err(Error::forbidden(
                            "This client is limited to its Groups: name one with the group parameter",
                        ));
                    }
                }
                match self.view_patients(patient, group).await? {
                    Some(patients) => self.compartment_rows(view, &patients, &mut rows).await?,
                    None => self.stored_rows(view, &mut rows).await?,
                }
            }
        }
        Ok(rows.rows)
    }

    /// Adds to `rows` the view's rows of every current resource of its
    /// type in the store as of now.
    async fn stored_rows(&self, view: &View, rows: &mut Collector) -> Result<(), Error> {
        let t = &view.resource_type;
        let as_of = crate::domain::instant::to_micros(self.resources.snapshot().await?);
        let segments = self
            .resources
            .segments(t, None, as_of, false, u64::MAX)
            .await?;
        for seg in segments {
            for shard in (seg.first_shard..=seg.last_shard).filter(|s| seg.reads(*s)) {
                let mut after = seg.after;
                loop {
                    let page_size = self.config.page_size;
                    let page = self
                        .resources
                        .scan_shard(ShardScan {
                            resource_type: t,
                            shard,
                            after,
                            until: seg.until,
                            as_of,
                            include_deleted: false,
                            limit: page_size,
                        })
                        .await?;
                    if !add_page_rows(view, &page, rows)? {
                        return Ok(());
                    }
                    match page.items.last() {
                        Some(last) if page.more => after = Some(last.last_updated),
                        _ => break,
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds to `rows` the view's rows of the resources in `patients`'
    /// compartments as of now, read through the store's compartment index:
    /// a patient-level run costs what the compartments hold, not a scan of
    /// the type. A resource in several of the compartments gives its rows
    /// once; rows come patient by patient, each compartment in id order.
    async fn compartment_rows(
        &self,
        view: &View,
        patients: &BTreeSet<String>,
        rows: &mut Collector,
    ) -> Result<(), Error> {
        let t = view.resource_type.as_str();
        let as_of = crate::domain::instant::to_micros(self.resources.snapshot().await?);
        let mut seen = HashSet::new();
        let store = self.resources.as_ref();
        for patient in patients {
            let mut after: Option<String> = None;
            loop {
                let (versions, full, last) = compartment_page(
                    store,
                    t,
                    patient,
                    after.as_deref(),
                    self.config.page_size,
                    as_of,
                )
                .await?;
                for version in &versions {
                    let Some(value) = live_value(version).transpose()? else {
                        continue;
                    };
                    // The index lists whatever ever referenced the
                    // patient: the current version must still do so.
                    let inside = t == "Patient"
                        || compartment_patients(t, &value).iter().any(|p| p == patient);
                    if inside && seen.insert(version.id.clone()) && !rows.add(view, &value)? {
                        return Ok(());
                    }
                }
                if !full {
                    break;
                }
                after = last;
            }
        }
        Ok(())
    }

    /// The patients whose compartments a run reads (`None`: everything).
    async fn view_patients(
        &self,
        patient: Option<String>,
        group: Option<String>,
    ) -> Result<Option<BTreeSet<String>>, Error> {
        let mut set: Option<BTreeSet<String>> = None;
        if let Some(p) = patient {
            set = Some([p.strip_prefix("Patient/").unwrap_or(&p).to_string()].into());
        }
        if let Some(g) = group {
            let members: BTreeSet<String> = self
                .desk
                .group_members(g.strip_prefix("Group/").unwrap_or(&g))
                .await?
                .into_iter()
                .collect();
            set = Some(match set {
                Some(s) => s.intersection(&members).cloned().collect(),
                None => members,
            });
        }
        Ok(set)
    }
}

/// The rows of a run as they are collected.
struct Collector {
    rows: Vec<Row>,
    /// `_limit`, when it is within the server's limit: rows past it are
    /// left out.
    wanted: Option<usize>,
    /// The server's limit: past it (with no `_limit` within it) a 422.
    cap: usize,
}

impl Collector {
    fn new(wanted: Option<usize>, cap: usize) -> Self {
        Collector {
            rows: Vec::new(),
            wanted: wanted.filter(|w| *w <= cap),
            cap,
        }
    }

    /// Adds a resource's rows; false once `_limit` rows are in, when no
    /// more are wanted.
    fn add(&mut self, view: &View, resource: &Value) -> Result<bool, Error> {
        self.rows.extend(view.rows(resource).map_err(view_error)?);
        if let Some(wanted) = self.wanted {
            self.rows.truncate(wanted);
            return Ok(self.rows.len() < wanted);
        }
        if self.rows.len() > self.cap {
            return Err(Error::too_costly(format!(
                "The view gives more than {} rows, more than $viewdefinition-run returns; \
                 use $viewdefinition-export, which writes them to files",
                self.cap
            )));
        }
        Ok(true)
    }
}

/// A current version's JSON; `None` for a deletion.
fn live_value(version: &Version) -> Option<Result<Value, Error>> {
    let body = version.body.as_deref().filter(|_| !version.deleted)?;
    Some(stored_json(body))
}

fn stored_json(body: &str) -> Result<Value, Error> {
    serde_json::from_str(body).map_err(|_| Error::internal("a stored resource is not JSON"))
}

/// Adds the rows of a page's resources; false once no more are wanted.
fn add_page_rows(view: &View, page: &ScanPage, rows: &mut Collector) -> Result<bool, Error> {
    for item in &page.items {
        let Some(body) = page.body(item) else {
            continue;
        };
        if !rows.add(view, &stored_json(body)?)? {
            return Ok(false);
        }
    }
    Ok(true)
}
