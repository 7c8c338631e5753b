//! `$export-revisions`: the part that writes the audit trail. Each type's
//! shards are read newest first, a page at a time, and merged by
//! `lastUpdated` (unique across the store), so the CSV comes out in one
//! global reverse-time order while memory holds only a page per stream.
//! The checkpoint is the oldest revision written: a resumed handling reopens
//! every stream just below it, so nothing is repeated or skipped.

use std::collections::{BinaryHeap, HashMap, VecDeque};

use super::PartReader;
use crate::domain::job::{Checkpoint, FileKind, Position, REVISIONS};
use crate::domain::revisions::{change_log, Operation, RevisionRow, RevisionsQuery};
use crate::engine::sink::Sink;
use crate::ports::{PortError, PortResult, ResourceStore, Revision, RevisionScan, Version};

/// Revisions buffered across all streams, at most (bodies can be large).
const BUFFERED_REVISIONS: usize = 20_000;

struct Stream {
    resource_type: String,
    shard: u16,
    buffer: VecDeque<Revision>,
    /// The last page came back short: nothing older is left.
    exhausted: bool,
}

/// The merge of every stream, positioned just below `before`.
pub(super) struct RevisionMerge {
    streams: Vec<Stream>,
    /// Each non-empty stream's newest buffered revision: (lastUpdated, stream).
    heads: BinaryHeap<(i64, usize)>,
    from: i64,
    page: usize,
    with_bodies: bool,
    /// Where the merge stands: every revision at or above it was handed out.
    before: i64,
}

/// The shards that hold some version of `resource_type`, from the store's
/// segments over every version (a resource never changes shard, and each
/// has a current version, live or deleted): the others are not queried.
async fn shards_with_versions(
    store: &dyn ResourceStore,
    resource_type: &str,
) -> PortResult<Vec<u16>> {
    if store.shard_count() <= 1 {
        return Ok(vec![0]);
    }
    let segments = store
        .segments(resource_type, None, i64::MAX, true, u64::MAX)
        .await?;
    let mut shards: Vec<u16> = segments
        .iter()
        .flat_map(|s| (s.first_shard..=s.last_shard).filter(move |n| s.reads(*n)))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    Ok(shards)
}

impl RevisionMerge {
    async fn open(
        store: &dyn ResourceStore,
        types: &[String],
        query: &RevisionsQuery,
        before: i64,
    ) -> PortResult<Self> {
        let mut plan: Vec<(&String, u16)> = Vec::new();
        for resource_type in types {
            for shard in shards_with_versions(store, resource_type).await? {
                plan.push((resource_type, shard));
            }
        }
        let count = plan.len().max(1);
        let mut merge = RevisionMerge {
            streams: Vec::with_capacity(count),
            heads: BinaryHeap::new(),
            from: query.start,
            page: (BUFFERED_REVISIONS / count).clamp(16, 1000),
            with_bodies: query.include_modified_props,
            before,
        };
        for (resource_type, shard) in plan {
            merge.streams.push(Stream {
                resource_type: resource_type.clone(),
                shard,
                buffer: VecDeque::new(),
                exhausted: false,
            });
            let i = merge.streams.len() - 1;
            merge.refill(store, i, before).await?;
        }
        Ok(merge)
    }

    /// Reads stream `i`'s next page, below `before`.
    async fn refill(&mut self, store: &dyn ResourceStore, i: usize, before: i64) -> PortResult<()> {
        let stream = &mut self.streams[i];
        let page = store
            .revisions(RevisionScan {
                resource_type: &stream.resource_type,
                shard: stream.shard,
                from: self.from,
                before,
                with_bodies: self.with_bodies,
                limit: self.page,
            })
            .await?;
        stream.exhausted = page.len() < self.page;
        stream.buffer.extend(page);
        if let Some(head) = stream.buffer.front() {
            self.heads.push((head.version.last_updated, i));
        }
        Ok(())
    }

    /// The newest revision not yet handed out, if any.
    async fn next(&mut self, store: &dyn ResourceStore) -> PortResult<Option<Revision>> {
        let Some((_, i)) = self.heads.pop() else {
            return Ok(None);
        };
        let stream = &mut self.streams[i];
        let revision = stream.buffer.pop_front().expect("a head is buffered");
        let at = revision.version.last_updated;
        self.before = at;
        match stream.buffer.front() {
            Some(head) => self.heads.push((head.version.last_updated, i)),
            None if !stream.exhausted => self.refill(store, i, at).await?,
            None => {}
        }
        Ok(Some(revision))
    }
}

/// Who an author is, from their client registration.
pub(super) struct Person {
    user: String,
    email: String,
}

impl PartReader<'_> {
    /// Writes the next page of the audit trail.
    pub(super) async fn revisions_page(
        &mut self,
        types: &[String],
        cp: &mut Checkpoint,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        let Some(query) = self.job.request.revisions.clone() else {
            return Err(PortError::permanent(
                "an internal error stopped the export",
                "a revisions part on a job without a revisions request",
            ));
        };
        let before = match cp.position {
            // Nothing after the job's transaction time: the file is a snapshot.
            Position::Start => query.end.min(self.as_of) + 1,
            Position::Revisions { before } => before,
            _ => {
                cp.position = Position::Finished;
                return Ok(());
            }
        };
        sink.ensure_open(FileKind::Output, REVISIONS).await?;
        let store = self.engine.resources.clone();
        let reusable = self.revisions.as_ref().is_some_and(|m| m.before == before);
        if !reusable {
            self.revisions =
                Some(RevisionMerge::open(store.as_ref(), types, &query, before).await?);
        }
        let merge = self.revisions.as_mut().expect("opened above");
        let mut page = Vec::new();
        let mut read = 0u64;
        while read < self.engine.config.page_size as u64 {
            let Some(r) = merge.next(store.as_ref()).await? else {
                break;
            };
            read += 1;
            let kept = query.users.is_empty()
                || r.author.as_ref().is_some_and(|a| query.users.contains(a));
            if kept {
                page.push(r);
            }
        }
        let next_before = merge.before;
        let finished = read == 0;
        self.write_revisions(&query, page, sink).await?;
        cp.progress_done += read;
        cp.position = if finished {
            Position::Finished
        } else {
            Position::Revisions {
                before: next_before,
            }
        };
        Ok(())
    }

    async fn write_revisions(
        &mut self,
        query: &RevisionsQuery,
        page: Vec<Revision>,
        sink: &mut Sink<'_>,
    ) -> PortResult<()> {
        let previous = self.predecessors(query, &page).await?;
        for (r, prev) in page.iter().zip(previous) {
            let prev_live = prev.filter(|p| !p.deleted);
            let follows_live = match (&prev_live, r.previous_live) {
                (Some(_), _) => true,
                (None, Some(recorded)) if !query.include_modified_props => recorded,
                (None, _) => false,
            };
            let operation = Operation::of(r.version.deleted, follows_live);
            let log = if query.include_modified_props {
                let before = prev_live.as_ref().and_then(|p| p.body.as_deref());
                change_log(before, r.version.body.as_deref())
                    .map_err(|e| PortError::corrupt("a stored resource is not JSON", e))?
            } else {
                String::new()
            };
            let author = r.author.as_deref().unwrap_or("unknown");
            let person = self.person(author).await?;
            let mut line = RevisionRow {
                last_updated: r.version.last_updated,
                user: &person.user,
                email: &person.email,
                operation,
                resource_type: &r.version.resource_type,
                id: &r.version.id,
                change_log: &log,
            }
            .to_csv();
            // RFC 4180 lines end in CRLF; the sink adds the LF.
            line.push(b'\r');
            sink.push(FileKind::Output, REVISIONS, &line).await?;
        }
        Ok(())
    }

    /// The versions before a page's revisions, where they must be read.
    /// Predecessors say Add or Edit (and feed the change log): one batch
    /// per type. Without the change log none is read for a deletion (a
    /// Delete whatever came before it) or for a version whose store
    /// recorded whether its predecessor was live.
    async fn predecessors(
        &self,
        query: &RevisionsQuery,
        page: &[Revision],
    ) -> PortResult<Vec<Option<Version>>> {
        let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, r) in page.iter().enumerate() {
            let needed =
                query.include_modified_props || (!r.version.deleted && r.previous_live.is_none());
            if r.version.version > 1 && needed {
                by_type.entry(&r.version.resource_type).or_default().push(i);
            }
        }
        let mut previous: Vec<Option<Version>> = vec![None; page.len()];
        for (resource_type, indexes) in by_type {
            // The store needs their keys, not their bodies.
            let of: Vec<Revision> = indexes
                .iter()
                .map(|&i| {
                    let v = &page[i].version;
                    Revision {
                        version: Version {
                            resource_type: v.resource_type.clone(),
                            id: v.id.clone(),
                            version: v.version,
                            last_updated: v.last_updated,
                            deleted: v.deleted,
                            body: None,
                        },
                        author: None,
                        previous_at: page[i].previous_at,
                        previous_live: page[i].previous_live,
                    }
                })
                .collect();
            let found = self
                .engine
                .resources
                .predecessors(resource_type, &of, query.include_modified_props)
                .await?;
            for (i, p) in indexes.into_iter().zip(found) {
                previous[i] = p;
            }
        }
        Ok(previous)
    }

    /// The author's display name and e-mail (registration lookups cached).
    async fn person(&mut self, author: &str) -> PortResult<std::sync::Arc<Person>> {
        if let Some(p) = self.people.get(author) {
            return Ok(p.clone());
        }
        let registration = self.engine.clients.get_client(author).await?;
        let person = std::sync::Arc::new(Person {
            user: registration
                .as_ref()
                .and_then(|c| c.name.clone())
                .unwrap_or_else(|| author.to_string()),
            email: registration.and_then(|c| c.email).unwrap_or_default(),
        });
        self.people.insert(author.to_string(), person.clone());
        Ok(person)
    }
}
