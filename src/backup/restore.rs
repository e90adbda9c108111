//! Restoring collections of a snapshot: written into a staging collection,
//! read back and compared, then swapped in under the target's name
//! (journaled, `chroma::swap`).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::chunks::ChunkStream;
use super::compare::records_match;
use super::delta::DeltaRestored;
use super::manifest::{ChunkRef, CollectionSnapshot, SnapshotId};
use super::recall::RecallCheck;
use super::records::Record;
use super::source::{to_batch, FETCH_BATCH};
use super::{BackupError, BackupManager};
use crate::chroma::configuration::{creatable_configuration, space_of};
use crate::chroma::swap::{self, SwapEntry, JOURNAL_COLLECTION};
use crate::chroma::{CreateCollection, GetRequest, Include, ModifyCollection};
use crate::progress::{Event, Progress};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Refuse when the target collection exists.
    #[default]
    FailIfExists,
    /// Swap the restored collection in; the previous one is dropped after
    /// the swap succeeded (or kept with `keep_previous`).
    Replace,
    /// Write into the existing collection only what differs from the
    /// snapshot, after a restore point (`backup::delta`).
    Delta,
}

/// What to restore and how; the default restores every collection of the
/// snapshot under its own name, refusing names that exist.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Collections of the snapshot to restore (empty: all).
    pub collections: Vec<String>,
    /// New name (one collection only).
    pub as_name: Option<String>,
    pub mode: RestoreMode,
    pub dry_run: bool,
    pub keep_previous: bool,
    /// With `Delta`: keep live records the snapshot does not have.
    pub keep_extra: bool,
    /// Do not run the snapshot's recorded queries against the restored
    /// collections (`--no-recall`).
    pub skip_recall: bool,
}

impl RestoreOptions {
    /// One collection under a new name, refused if that name exists
    /// (`chromaprod restore ID --collection NAME --as NEW_NAME`).
    pub fn copy_as(collection: &str, new_name: &str) -> Self {
        RestoreOptions {
            collections: vec![collection.to_string()],
            as_name: Some(new_name.to_string()),
            ..Self::default()
        }
    }
}

/// What a restore did, or for a dry run would do (the `restore` command's result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RestoreOutcome {
    /// A dry run: nothing was changed.
    Planned {
        snapshot: String,
        /// Always `true`.
        dry_run: bool,
        plan: Vec<PlannedRestore>,
    },
    Restored {
        snapshot: String,
        restored: Vec<RestoredCollection>,
        /// Swaps a crash had interrupted, finished or undone before restoring.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        recovered_swaps: Vec<String>,
    },
    /// A delta restore (`RestoreMode::Delta`), or with `dry_run` what it
    /// would write and delete.
    Delta {
        snapshot: String,
        dry_run: bool,
        /// The `collection` backup of the targets taken before writing
        /// (restore it with `--mode replace` to undo); `None` for a dry run.
        restore_point: Option<String>,
        delta: Vec<DeltaRestored>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        recovered_swaps: Vec<String>,
    },
}

/// One collection a dry run would restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRestore {
    /// Its name in the snapshot.
    pub collection: String,
    pub target: String,
    pub records: u64,
    /// `target` exists and would be swapped out (`--mode replace`).
    pub replaces_existing: bool,
}

/// One collection restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredCollection {
    /// Its name in the snapshot.
    pub collection: String,
    pub target: String,
    pub records: u64,
    /// Where the collection it replaced was kept (`keep_previous`), if any.
    pub previous: Option<String>,
    /// How the restored collection answered the queries recorded at backup
    /// time (recall@k); absent with `skip_recall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<RecallCheck>,
}

impl BackupManager {
    /// Restores collections of a snapshot: into a staging collection first,
    /// verified, then swapped in by renaming. The target is untouched until
    /// the swap, and the previous collection is kept until the swap succeeded.
    pub async fn restore(
        &self,
        id: &str,
        opts: &RestoreOptions,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RestoreOutcome, BackupError> {
        if opts.keep_extra && opts.mode != RestoreMode::Delta {
            return Err(BackupError::Invalid(
                "--keep-extra applies only to --mode delta (a whole restore keeps nothing of the live collection)".into(),
            ));
        }
        if opts.keep_previous && opts.mode == RestoreMode::Delta {
            return Err(BackupError::Invalid(
                "--keep-previous applies only to --mode replace; a delta restore takes a restore point instead".into(),
            ));
        }
        let manifest = self.show(id).await?;
        if manifest.is_physical() {
            return Err(BackupError::IsPhysical(id.to_string()));
        }
        let selected: Vec<&CollectionSnapshot> = if opts.collections.is_empty() {
            manifest.collections.iter().collect()
        } else {
            let mut v = Vec::new();
            for name in &opts.collections {
                v.push(
                    manifest
                        .collections
                        .iter()
                        .find(|c| &c.name == name)
                        .ok_or_else(|| {
                            BackupError::Invalid(format!(
                                "snapshot {id} holds no collection {name:?}"
                            ))
                        })?,
                );
            }
            v
        };
        if opts.as_name.is_some() && selected.len() != 1 {
            return Err(BackupError::Invalid(
                "--as needs exactly one collection (use --collection)".into(),
            ));
        }
        if selected
            .iter()
            .any(|c| opts.as_name.as_deref().unwrap_or(&c.name) == JOURNAL_COLLECTION)
        {
            return Err(BackupError::Invalid(format!(
                "{JOURNAL_COLLECTION:?} is chromaprod's swap journal; restore it under another name with --as"
            )));
        }
        // A swap on this Chroma interrupted by a crash is finished first, so
        // the target names below are what they should be (a dry run changes
        // nothing).
        let recovered = if opts.dry_run {
            Vec::new()
        } else {
            swap::recover(&self.store).await?
        };
        for r in &recovered {
            tracing::warn!(collection = %r.entry.target, resolution = ?r.resolution, "{r}");
        }
        if opts.mode == RestoreMode::Delta {
            let recovered = recovered.iter().map(ToString::to_string).collect();
            return self
                .restore_delta(id, &selected, opts, recovered, progress, cancel)
                .await;
        }
        let existing: HashSet<String> = self
            .store
            .list_collections()
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        let mut plan = Vec::new();
        for c in &selected {
            let target = opts.as_name.clone().unwrap_or_else(|| c.name.clone());
            let exists = existing.contains(&target);
            if exists && opts.mode == RestoreMode::FailIfExists {
                return Err(BackupError::TargetExists(target));
            }
            plan.push(PlannedRestore {
                collection: c.name.clone(),
                target,
                records: c.record_count,
                replaces_existing: exists,
            });
        }
        if opts.dry_run {
            return Ok(RestoreOutcome::Planned {
                snapshot: id.to_string(),
                dry_run: true,
                plan,
            });
        }
        let lease = self.lock(false, "restore").await?;
        let mut results = Vec::new();
        for c in selected {
            let target = opts.as_name.clone().unwrap_or_else(|| c.name.clone());
            let r = self
                .restore_collection(
                    &manifest.snapshot_id,
                    c,
                    &target,
                    existing.contains(&target),
                    opts.keep_previous,
                    progress,
                    cancel,
                )
                .await;
            match r {
                Ok(mut v) => {
                    if !opts.skip_recall {
                        v.recall = Some(self.recall_after_restore(c, &target).await);
                    }
                    results.push(v);
                }
                Err(e) => {
                    lease.release().await;
                    return Err(e);
                }
            }
        }
        lease.release().await;
        Ok(RestoreOutcome::Restored {
            snapshot: id.to_string(),
            restored: results,
            recovered_swaps: recovered.iter().map(ToString::to_string).collect(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_collection(
        &self,
        snapshot: &SnapshotId,
        c: &CollectionSnapshot,
        target: &str,
        target_exists: bool,
        keep_previous: bool,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RestoredCollection, BackupError> {
        let staging = format!("{target}-restore-{snapshot}");
        // A staging collection left by an interrupted restore is ours to replace.
        match self.store.delete_collection(&staging).await {
            Ok(()) | Err(crate::chroma::ChromaError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let created = self
            .store
            .create_collection(&CreateCollection {
                name: staging.clone(),
                metadata: c.metadata.clone().and_then(|m| m.as_object().cloned()),
                configuration: Some(creatable_configuration(&c.configuration_json)),
                get_or_create: false,
            })
            .await?;
        let cosine = space_of(&c.configuration_json) == "cosine";
        let outcome = self
            .fill_and_check(c, &created.id, cosine, progress, cancel)
            .await;
        if let Err(e) = outcome {
            let _ = self.store.delete_collection(&staging).await;
            return Err(e);
        }
        // Swap names: target → previous, staging → target, journaled so a
        // crash between the renames is finished at the next start.
        let previous = format!("{target}-pre-restore-{snapshot}");
        if target_exists {
            let old = self.store.get_collection(target).await?;
            let entry = SwapEntry::new(
                "restore",
                target,
                &previous,
                &staging,
                &old.id,
                &created.id,
                !keep_previous,
            );
            swap::swap(&self.store, &entry).await?;
        } else {
            // One rename: the data is under `staging` or `target`, never elsewhere.
            self.store
                .modify_collection(
                    &created.id,
                    &ModifyCollection {
                        new_name: Some(target.to_string()),
                        ..Default::default()
                    },
                )
                .await?;
        }
        Ok(RestoredCollection {
            collection: c.name.clone(),
            target: target.to_string(),
            records: c.record_count,
            previous: (target_exists && keep_previous).then_some(previous),
            recall: None,
        })
    }

    /// The recall check of a collection just restored as `target`. The
    /// restore has succeeded (records checked one by one): a check that
    /// cannot run is reported and logged, not an error.
    async fn recall_after_restore(&self, c: &CollectionSnapshot, target: &str) -> RecallCheck {
        match self.check_recall(c, target).await {
            Ok(check) => {
                match &check {
                    RecallCheck::Checked(r) => {
                        tracing::info!(collection = %c.name, target, recall = r.recall, queries = r.queries, k = r.k, "the restored collection answered the recorded queries");
                    }
                    RecallCheck::NotRecorded => {
                        tracing::info!(collection = %c.name, "the snapshot recorded no queries for this collection; recall not checked");
                    }
                    RecallCheck::Failed { .. } => {}
                }
                check
            }
            Err(e) => {
                tracing::warn!(collection = %c.name, target, error = %e, "the recall check after the restore could not run; run `chromaprod backups verify ID --recall` later");
                RecallCheck::Failed { why: e.to_string() }
            }
        }
    }

    /// Loads every chunk of `c` into `collection_id`, then reads the
    /// collection back and compares it, record by record, with the chunks
    /// read again from the repository.
    ///
    /// The two passes are separate on purpose: a read between writes slows
    /// Chroma's next write (by 4 % of the write time, measured), while a
    /// pass of reads alone can send two at once (Chroma answers a `get` on
    /// one thread, so the second uses another core: 30 % faster, measured).
    async fn fill_and_check(
        &self,
        c: &CollectionSnapshot,
        collection_id: &str,
        cosine: bool,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<(), BackupError> {
        let mut done = 0u64;
        let mut chunks = ChunkStream::new(self.repo.clone(), &c.chunks);
        while let Some(next) = chunks.next(cancel).await {
            let (_, records) = next?;
            let (batch, without) = to_batch(records);
            if !without.is_empty() {
                return Err(BackupError::RestoreMismatch {
                    collection: c.name.clone(),
                    why: format!(
                        "{} records have no embedding and cannot be written back",
                        without.len()
                    ),
                });
            }
            if !batch.is_empty() {
                // The staging collection is new, so add (a retried add
                // changes nothing; see `add_all` for add against upsert).
                self.store.add_all(collection_id, &batch).await?;
            }
            done += batch.len() as u64;
            progress.send(Event::Restore {
                collection: c.name.clone(),
                records_done: done,
                records_total: c.record_count,
            });
        }
        let mut checked = 0u64;
        let mut chunks = ChunkStream::new(self.repo.clone(), &c.chunks);
        while let Some(next) = chunks.next(cancel).await {
            let (chunk, expected) = next?;
            let by_id: HashMap<&str, &Record> =
                expected.iter().map(|r| (r.id.as_str(), r)).collect();
            let check = |part| self.check_restored(c, collection_id, chunk, part, &by_id, cosine);
            let mut parts = expected.chunks(FETCH_BATCH);
            while let Some(a) = parts.next() {
                match parts.next() {
                    Some(b) => {
                        tokio::try_join!(check(a), check(b))?;
                    }
                    None => check(a).await?,
                }
            }
            checked += expected.len() as u64;
            progress.send(Event::RestoreVerify {
                collection: c.name.clone(),
                records_done: checked,
                records_total: c.record_count,
            });
        }
        let count = self.store.count(collection_id).await?;
        if count != c.record_count {
            return Err(BackupError::RestoreMismatch {
                collection: c.name.clone(),
                why: format!(
                    "{count} records after restore, {} in the snapshot",
                    c.record_count
                ),
            });
        }
        Ok(())
    }

    /// Reads `part` of a chunk back from the restored collection and
    /// compares each record with the backup's (`by_id`).
    async fn check_restored(
        &self,
        c: &CollectionSnapshot,
        collection_id: &str,
        chunk: &ChunkRef,
        part: &[Record],
        by_id: &HashMap<&str, &Record>,
        cosine: bool,
    ) -> Result<(), BackupError> {
        let ids: Vec<String> = part.iter().map(|r| r.id.clone()).collect();
        let got = self
            .store
            .get_records(collection_id, &GetRequest::ids(ids, &Include::RECORD))
            .await?;
        let got = super::source::to_records(got);
        if got.len() != part.len() {
            return Err(BackupError::RestoreMismatch {
                collection: c.name.clone(),
                why: format!(
                    "{} of {} records of chunk {} are missing after upsert",
                    part.len() - got.len(),
                    part.len(),
                    chunk.id
                ),
            });
        }
        match got.iter().find(|r| {
            !by_id
                .get(r.id.as_str())
                .is_some_and(|want| records_match(want, r, cosine))
        }) {
            Some(r) => Err(BackupError::RestoreMismatch {
                collection: c.name.clone(),
                why: format!(
                    "record {:?} differs from the backup beyond the server's rounding",
                    r.id
                ),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_keep_the_wire_shape() {
        let planned = RestoreOutcome::Planned {
            snapshot: "ab12".into(),
            dry_run: true,
            plan: vec![PlannedRestore {
                collection: "docs".into(),
                target: "docs2".into(),
                records: 3,
                replaces_existing: false,
            }],
        };
        let planned_json = json!({"snapshot": "ab12", "dry_run": true, "plan": [
            {"collection": "docs", "target": "docs2", "records": 3, "replaces_existing": false}]});
        let restored = |recovered_swaps: Vec<String>| RestoreOutcome::Restored {
            snapshot: "ab12".into(),
            restored: vec![RestoredCollection {
                collection: "docs".into(),
                target: "docs".into(),
                records: 3,
                previous: None,
                recall: None,
            }],
            recovered_swaps,
        };
        let restored_json = json!({"snapshot": "ab12", "restored": [
            {"collection": "docs", "target": "docs", "records": 3, "previous": null}]});
        let mut recovered_json = restored_json.clone();
        recovered_json["recovered_swaps"] = json!(["finished x"]);
        let delta = RestoreOutcome::Delta {
            snapshot: "ab12".into(),
            dry_run: false,
            restore_point: Some("cd34".into()),
            delta: vec![DeltaRestored {
                collection: "docs".into(),
                target: "docs".into(),
                compared: 10,
                unchanged: 6,
                missing: 1,
                changed: 1,
                written: 2,
                deleted: 2,
                kept_extra: 0,
            }],
            recovered_swaps: Vec::new(),
        };
        let delta_json = json!({"snapshot": "ab12", "dry_run": false, "restore_point": "cd34", "delta": [
            {"collection": "docs", "target": "docs", "compared": 10, "unchanged": 6, "missing": 1,
             "changed": 1, "written": 2, "deleted": 2, "kept_extra": 0}]});
        for (outcome, wire) in [
            (delta, delta_json),
            (planned, planned_json),
            (restored(Vec::new()), restored_json),
            (restored(vec!["finished x".into()]), recovered_json),
        ] {
            assert_eq!(serde_json::to_value(&outcome).expect("json"), wire);
            let back: RestoreOutcome = serde_json::from_value(wire).expect("reads back");
            assert_eq!(back, outcome);
        }
    }
}
