//! Recall for logical snapshots: recording a collection's queries during a
//! backup, and checking a live collection against a snapshot's queries (after
//! a restore, and for `backups verify --recall`).

use std::time::Instant;

use serde::Serialize;

use super::{check, record, record_picked, seed_for, QueriesRef, RecallCheck, DEFAULT_MIN_RECALL};
use crate::backup::changes;
use crate::backup::manifest::{ChangeMark, CollectionSnapshot, SnapshotId};
use crate::backup::source::IdList;
use crate::backup::{BackupError, BackupManager};
use crate::chroma::local::{LocalChroma, Sample};
use crate::chroma::{ChromaError, Collection};

/// The result of `backups verify ID --recall`.
#[derive(Debug, Clone, Serialize)]
pub struct RecallVerifyReport {
    pub snapshot: String,
    /// The least recall a collection may have for the check to pass.
    pub min_recall: f64,
    /// Every checked collection's recall is at least `min_recall` (also
    /// when none was checked: nothing failed).
    pub passed: bool,
    /// Collections whose queries ran (the others recorded none).
    pub checked: u64,
    pub collections: Vec<CollectionRecall>,
}

/// One collection of a recall verify.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionRecall {
    /// Its name in the snapshot.
    pub collection: String,
    /// The live collection the queries ran against.
    pub target: String,
    #[serde(flatten)]
    pub check: RecallCheck,
}

/// What `backups verify --recall` checks: the snapshot's collections under
/// their own names, or one under another name.
#[derive(Debug, Clone, Default)]
pub struct RecallOptions {
    /// Only this collection of the snapshot.
    pub collection: Option<String>,
    /// …checked against this live collection (with `collection`).
    pub as_name: Option<String>,
    /// Default [`DEFAULT_MIN_RECALL`].
    pub min_recall: Option<f64>,
}

impl BackupManager {
    /// The sample an incremental's scan of the persist directory draws for
    /// `collection`'s recall queries ([`Sample`]), when queries are recorded.
    pub(in crate::backup) fn recall_sample(
        &self,
        snapshot: &SnapshotId,
        collection: &Collection,
    ) -> Option<Sample> {
        let (n, k) = (
            self.config.backup.verify_queries,
            self.config.backup.verify_k,
        );
        (n > 0 && k > 0).then(|| Sample::new(seed_for(snapshot.as_str(), &collection.name), n))
    }

    /// Samples `collection` (just read by the backup) and stores its
    /// recorded queries; returns the reference and the bytes written. Nothing
    /// when `backup.verify_queries` is 0 or the collection is empty. The ids
    /// are `drawn` during the backup's scan when it drew them, else listed.
    pub(in crate::backup) async fn record_queries(
        &self,
        snapshot: &SnapshotId,
        collection: &Collection,
        feed: Option<(&LocalChroma, &ChangeMark)>,
        drawn: Option<Sample>,
    ) -> Result<(Option<QueriesRef>, u64), BackupError> {
        let (n, k) = (
            self.config.backup.verify_queries,
            self.config.backup.verify_k,
        );
        let started = Instant::now();
        if n == 0 || k == 0 {
            return Ok((None, 0));
        }
        let (recorded, ids_from) = match drawn {
            Some(sample) => {
                let count = sample.seen();
                (
                    record_picked(&self.store, collection, sample.into_ids(), count, k).await?,
                    "scan",
                )
            }
            None => {
                let (listing, ids_from) = self.sample_listing(collection, feed).await?;
                let seed = seed_for(snapshot.as_str(), &collection.name);
                (
                    record(&self.store, collection, listing, n, k, seed).await?,
                    ids_from,
                )
            }
        };
        let Some(recorded) = recorded else {
            return Ok((None, 0));
        };
        if recorded.queries.is_empty() {
            return Ok((None, 0));
        }
        let (r, written) = QueriesRef::store(&self.repo, recorded).await?;
        tracing::info!(
            collection = %collection.name,
            queries = r.queries,
            k = r.k,
            bytes = r.stored_size,
            ids_from,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "recorded sample queries for the recall check"
        );
        Ok((Some(r), written))
    }

    /// The ids the sample is drawn from, and where from: the segment the
    /// backup just read through the local Chroma's files (`feed`: the
    /// directory and the mark it recorded; the server is not asked to list
    /// them all), else the server.
    async fn sample_listing(
        &self,
        collection: &Collection,
        feed: Option<(&LocalChroma, &ChangeMark)>,
    ) -> Result<(IdList, &'static str), BackupError> {
        if let Some((local, mark)) = feed {
            match changes::list_all(local, &mark.segment).await? {
                Ok(ids) => return Ok((ids, "persist_directory")),
                Err(why) => {
                    tracing::info!(collection = %collection.name, reason = why.reason(), error = %why, "listing the recall sample's ids over HTTP");
                }
            }
        }
        Ok((IdList::list(&self.store, &collection.id).await?, "server"))
    }

    /// Runs the queries `c` recorded against the live collection `target`.
    pub async fn check_recall(
        &self,
        c: &CollectionSnapshot,
        target: &str,
    ) -> Result<RecallCheck, BackupError> {
        let Some(q) = &c.queries else {
            return Ok(RecallCheck::NotRecorded);
        };
        let recorded = q.load(&self.repo).await?;
        let live = match self.store.get_collection(target).await {
            Ok(live) => live,
            Err(ChromaError::NotFound { .. }) => {
                return Err(BackupError::RecallTargetMissing {
                    collection: c.name.clone(),
                    target: target.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        Ok(RecallCheck::Checked(
            check(&self.store, &live.id, &recorded).await?,
        ))
    }

    /// `backups verify ID --recall`: the snapshot's recorded queries against
    /// the live collections of the same names (or `as_name`).
    pub async fn verify_recall(
        &self,
        id: &str,
        opts: &RecallOptions,
    ) -> Result<RecallVerifyReport, BackupError> {
        if opts.as_name.is_some() && opts.collection.is_none() {
            return Err(BackupError::Invalid(
                "--as needs --collection (the snapshot's collection to check under that name)"
                    .into(),
            ));
        }
        let min_recall = opts.min_recall.unwrap_or(DEFAULT_MIN_RECALL);
        if !(0.0..=1.0).contains(&min_recall) {
            return Err(BackupError::Invalid(format!(
                "--min-recall {min_recall} is outside 0.0..=1.0"
            )));
        }
        let manifest = self.show(id).await?;
        let selected: Vec<&CollectionSnapshot> = match &opts.collection {
            None => manifest.collections.iter().collect(),
            Some(name) => vec![manifest
                .collections
                .iter()
                .find(|c| &c.name == name)
                .ok_or_else(|| {
                    BackupError::Invalid(format!("snapshot {id} holds no collection {name:?}"))
                })?],
        };
        let mut collections = Vec::new();
        for c in selected {
            let target = opts.as_name.clone().unwrap_or_else(|| c.name.clone());
            let check = self.check_recall(c, &target).await?;
            collections.push(CollectionRecall {
                collection: c.name.clone(),
                target,
                check,
            });
        }
        let checked: Vec<f64> = collections
            .iter()
            .filter_map(|c| c.check.recall())
            .collect();
        Ok(RecallVerifyReport {
            snapshot: manifest.snapshot_id.to_string(),
            min_recall,
            passed: checked.iter().all(|r| *r >= min_recall),
            checked: checked.len() as u64,
            collections,
        })
    }
}
