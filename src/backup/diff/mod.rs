//! Diffing a snapshot against another snapshot or against the live
//! collections in Chroma: per collection (matched by name), the records
//! added, changed and removed, by record digest. The comparison itself is
//! pure (`tally.rs`); this is its driver.
//!
//! What a diff reads: from a snapshot, only chunk **indexes** (ids and
//! digests), never chunk bodies — and of two snapshots, only the indexes of
//! chunks they do not share unchanged (see [`tally::plan_chunks`]); from
//! Chroma, every record of the collection, by id in batches, as a backup
//! reads them (`source::CollectionReader`), each digested and dropped.
//!
//! What it holds in memory, per collection being compared: side A's ids and
//! 16-byte digests (a table of about 32 bytes plus the id per record, and a
//! bit each), one chunk index or one fetched batch of side B at a time, and,
//! with ids asked for, the ids it reports. A collection on one side only is
//! counted from its manifest or its id listing (no digests needed).

pub mod tally;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use self::tally::{plan_chunks, BaseTable, Comparison, IndexRead, Tally};
use super::manifest::{CollectionSnapshot, Manifest, SnapshotId};
use super::records::record_digest;
use super::scope::in_scope;
use super::source::{CollectionReader, IdList};
use super::{BackupError, BackupManager};
use crate::chroma::Collection;
use crate::progress::{Event, Progress};

pub use self::tally::DiffIds;

/// The `to` of a diff against the live collections.
pub const LIVE: &str = "live";

/// What to compare snapshot `from` with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffTarget {
    Snapshot(SnapshotId),
    /// The collections in Chroma now that a full backup would take.
    Live,
}

/// The result of a diff: every collection on either side, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffOutcome {
    /// Snapshot A.
    pub from: String,
    /// Snapshot B, or `live`.
    pub to: String,
    pub collections: Vec<CollectionDiff>,
}

/// Whether a collection is on both sides or on one only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionStatus {
    /// On both sides: its records were compared.
    InBoth,
    /// On side B only: every record counts as added.
    Added,
    /// On side A only: every record counts as removed.
    Removed,
}

/// One collection's differences from A to B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionDiff {
    pub collection: String,
    pub status: CollectionStatus,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    /// The ids of each category, sorted, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<DiffIds>,
}

impl CollectionDiff {
    fn new(collection: String, status: CollectionStatus, tally: Tally) -> Self {
        Self {
            collection,
            status,
            added: tally.added,
            changed: tally.changed,
            removed: tally.removed,
            ids: tally.ids,
        }
    }
}

/// One collection's side B.
enum Side<'a> {
    Snapshot(&'a CollectionSnapshot),
    Live(Collection),
}

impl BackupManager {
    /// Compares snapshot `from` with `to`; only `collection` when given,
    /// which must be on one side at least. `with_ids` lists the ids.
    pub async fn diff(
        &self,
        from: &SnapshotId,
        to: &DiffTarget,
        collection: Option<&str>,
        with_ids: bool,
        progress: &Progress,
    ) -> Result<DiffOutcome, BackupError> {
        let a = self.repo.manifest(from).await?;
        let b = match to {
            DiffTarget::Snapshot(id) => Some(self.repo.manifest(id).await?),
            DiffTarget::Live => None,
        };
        // A physical snapshot holds files, not records to compare.
        for m in std::iter::once(&a).chain(b.as_ref()) {
            if m.is_physical() {
                return Err(BackupError::IsPhysical(m.snapshot_id.to_string()));
            }
        }
        let live = match b {
            None => self
                .store
                .list_collections()
                .await?
                .into_iter()
                .filter(|c| in_scope(&self.config, &c.name))
                .collect(),
            Some(_) => Vec::new(),
        };
        let mut names: Vec<&str> = a.collections.iter().map(|c| c.name.as_str()).collect();
        match &b {
            Some(b) => names.extend(b.collections.iter().map(|c| c.name.as_str())),
            None => names.extend(live.iter().map(|c| c.name.as_str())),
        }
        names.sort_unstable();
        names.dedup();
        let to_name = b
            .as_ref()
            .map_or_else(|| LIVE.to_string(), |m| m.snapshot_id.to_string());
        if let Some(wanted) = collection {
            if !names.contains(&wanted) {
                return Err(BackupError::DiffNoCollection {
                    name: wanted.to_string(),
                    from: from.to_string(),
                    to: match &b {
                        Some(_) => format!("snapshot {to_name}"),
                        None => "the live collections".into(),
                    },
                });
            }
            names.retain(|n| *n == wanted);
        }
        let lease = self.lock(false, "diff").await?;
        let result = self
            .diff_locked(&a, b.as_ref(), &live, &names, with_ids, progress)
            .await;
        lease.release().await;
        Ok(DiffOutcome {
            from: a.snapshot_id.to_string(),
            to: to_name,
            collections: result?,
        })
    }

    async fn diff_locked(
        &self,
        a: &Manifest,
        b: Option<&Manifest>,
        live: &[Collection],
        names: &[&str],
        with_ids: bool,
        progress: &Progress,
    ) -> Result<Vec<CollectionDiff>, BackupError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let side_b = match b {
                Some(b) => find(b, name).map(Side::Snapshot),
                None => live
                    .iter()
                    .find(|c| c.name == *name)
                    .cloned()
                    .map(Side::Live),
            };
            if let Some(d) = self
                .diff_collection(find(a, name), side_b, with_ids, progress)
                .await?
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn diff_collection(
        &self,
        a: Option<&CollectionSnapshot>,
        b: Option<Side<'_>>,
        with_ids: bool,
        progress: &Progress,
    ) -> Result<Option<CollectionDiff>, BackupError> {
        Ok(Some(match (a, b) {
            (None, None) => return Ok(None),
            (Some(a), None) => {
                let ids = self.whole_snapshot(a, with_ids).await?;
                let tally = Tally {
                    removed: a.record_count,
                    ids: ids.map(|removed| DiffIds {
                        removed,
                        ..DiffIds::default()
                    }),
                    ..Tally::default()
                };
                CollectionDiff::new(a.name.clone(), CollectionStatus::Removed, tally)
            }
            (None, Some(b)) => {
                let (added, ids) = match &b {
                    Side::Snapshot(b) => (b.record_count, self.whole_snapshot(b, with_ids).await?),
                    Side::Live(c) => self.whole_live(c, with_ids).await?,
                };
                let tally = Tally {
                    added,
                    ids: ids.map(|added| DiffIds {
                        added,
                        ..DiffIds::default()
                    }),
                    ..Tally::default()
                };
                let name = match b {
                    Side::Snapshot(b) => b.name.clone(),
                    Side::Live(c) => c.name,
                };
                CollectionDiff::new(name, CollectionStatus::Added, tally)
            }
            (Some(a), Some(Side::Snapshot(b))) => {
                let plan = plan_chunks(&a.chunks, &b.chunks);
                tracing::debug!(collection = %a.name, skipped = plan.skipped, read = plan.a.len() + plan.b.len(), "diff: chunk indexes");
                let mut table = BaseTable::new(with_ids);
                for read in &plan.a {
                    self.each_kept(read, |id, d| table.push(id, d)).await?;
                }
                let mut cmp = table.compare();
                for read in &plan.b {
                    self.each_kept(read, |id, d| cmp.push(id, d)).await?;
                }
                CollectionDiff::new(a.name.clone(), CollectionStatus::InBoth, cmp.finish())
            }
            (Some(a), Some(Side::Live(c))) => {
                let mut table = BaseTable::new(with_ids);
                let plan = plan_chunks(&a.chunks, &[]);
                for read in &plan.a {
                    self.each_kept(read, |id, d| table.push(id, d)).await?;
                }
                let cmp = self.compare_live(table.compare(), c, progress).await?;
                CollectionDiff::new(a.name.clone(), CollectionStatus::InBoth, cmp.finish())
            }
        }))
    }

    /// Feeds the entries of one chunk index that `read` keeps to `f`.
    async fn each_kept(
        &self,
        read: &IndexRead<'_>,
        mut f: impl FnMut(&str, super::records::RecordDigest),
    ) -> Result<(), BackupError> {
        let index = self.parent_index(read.chunk).await?;
        for (id, digest) in &index.entries {
            if read.keeps(id) {
                f(id, *digest);
            }
        }
        Ok(())
    }

    /// Every live record of `collection`, read as a backup reads it,
    /// digested and compared; progress as it goes.
    async fn compare_live(
        &self,
        mut cmp: Comparison,
        collection: Collection,
        progress: &Progress,
    ) -> Result<Comparison, BackupError> {
        let name = collection.name.clone();
        let mut reader = CollectionReader::open(self.store.clone(), collection).await?;
        let total = reader.listed() as u64;
        progress.send(Event::Diff {
            collection: name.clone(),
            records_done: 0,
            records_total: total,
        });
        while let Some(batch) = reader.next_batch().await? {
            for record in &batch {
                cmp.push(&record.id, record_digest(record));
            }
            progress.send(Event::Diff {
                collection: name.clone(),
                records_done: reader.position() as u64,
                records_total: total,
            });
        }
        Ok(cmp)
    }

    /// With `with_ids`: the sorted live ids of a collection on one side only.
    async fn whole_snapshot(
        &self,
        c: &CollectionSnapshot,
        with_ids: bool,
    ) -> Result<Option<Vec<String>>, BackupError> {
        if !with_ids {
            return Ok(None);
        }
        let mut ids = Vec::new();
        for read in &plan_chunks(&c.chunks, &[]).a {
            self.each_kept(read, |id, _| ids.push(id.to_string()))
                .await?;
        }
        ids.sort_unstable();
        Ok(Some(ids))
    }

    /// A live collection on side B only: how many records it has (one id
    /// listing), and with `with_ids` their sorted ids.
    async fn whole_live(
        &self,
        c: &Collection,
        with_ids: bool,
    ) -> Result<(u64, Option<Vec<String>>), BackupError> {
        let mut listing = IdList::list(&self.store, &c.id).await?;
        let count = listing.len() as u64;
        if !with_ids {
            return Ok((count, None));
        }
        let mut ids = Vec::with_capacity(listing.len());
        loop {
            let next = listing.next(4096)?;
            if next.is_empty() {
                break;
            }
            ids.extend(next);
        }
        ids.sort_unstable();
        Ok((count, Some(ids)))
    }
}

fn find<'m>(m: &'m Manifest, name: &str) -> Option<&'m CollectionSnapshot> {
    m.collections.iter().find(|c| c.name == name)
}
