//! The migration history and the lock, kept in a Chroma collection of
//! their own (`migrations.history_collection`), so they travel with the
//! database and its backups.
//!
//! Every entry is one record: id `v0000000002` (history) or
//! `lock-000000000007` (a lease and its fencing token), the JSON in the
//! document, `kind` in the metadata, and a one-dimensional zero vector
//! (Chroma stores a vector with every record).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::MigrationError;
use crate::chroma::{
    ChromaError, CreateCollection, GetRequest, Include, ProductionChromaStore, RecordBatch,
};

/// What became of a migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied; `down` undoes it.
    Applied,
    /// Recorded as applied by `stamp` without running.
    Baselined,
    /// Failed; `up` retries it (from its checkpoint when it was not rolled back).
    Failed,
    /// Started and not finished (the runner died): `up` resumes it.
    #[default]
    Running,
}

impl Outcome {
    pub fn is_applied(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Baselined)
    }
}

/// One row of the history (Flyway's schema history).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u32,
    pub name: String,
    /// The file's checksum when it was applied.
    pub checksum: String,
    pub outcome: Outcome,
    /// RFC 3339, UTC: when the run started.
    pub applied_at: String,
    /// `user@host (pid N)` of the runner.
    pub applied_by: String,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The next operation to run of `up` (for resuming).
    #[serde(default)]
    pub op_index: usize,
    /// Where the running operation got to (operation-specific).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
    /// The snapshot taken before this run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// The fencing token of the lease the runner held.
    #[serde(default)]
    pub token: u64,
}

/// A lease on the migration lock, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    pub token: u64,
    /// Unique per runner: `user@host (pid N) #random`.
    pub holder: String,
    pub acquired_ms: u64,
    pub expires_ms: u64,
    #[serde(default)]
    pub released: bool,
}

/// Handle on the history collection.
#[derive(Clone)]
pub struct HistoryStore {
    store: ProductionChromaStore,
    collection_id: String,
    pub collection: String,
}

fn history_id(version: u32) -> String {
    format!("v{version:010}")
}

fn lock_id(token: u64) -> String {
    format!("lock-{token:012}")
}

fn one(id: String, kind: &str, document: String, extra: (&str, Value)) -> RecordBatch {
    let mut meta = serde_json::Map::new();
    meta.insert("kind".into(), json!(kind));
    meta.insert(extra.0.into(), extra.1);
    RecordBatch {
        ids: vec![id],
        embeddings: Some(vec![vec![0.0]]),
        documents: Some(vec![Some(document)]),
        metadatas: Some(vec![Some(meta)]),
        uris: None,
    }
}

impl HistoryStore {
    /// Opens the history collection, creating it if needed.
    pub async fn open(store: ProductionChromaStore, name: &str) -> Result<Self, ChromaError> {
        let c = store
            .create_collection(&CreateCollection {
                name: name.to_string(),
                metadata: Some(
                    json!({"chromaprod": "migration history and lock; do not edit"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
                configuration: Some(json!({"hnsw": {"space": "l2"}})),
                get_or_create: true,
            })
            .await?;
        Ok(HistoryStore {
            store,
            collection_id: c.id,
            collection: name.to_string(),
        })
    }

    /// Reads the history without creating the collection: none yet is empty.
    pub async fn peek(
        store: &ProductionChromaStore,
        name: &str,
    ) -> Result<Vec<HistoryEntry>, ChromaError> {
        match store.get_collection(name).await {
            Ok(c) => {
                HistoryStore {
                    store: store.clone(),
                    collection_id: c.id,
                    collection: name.to_string(),
                }
                .entries()
                .await
            }
            Err(ChromaError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn documents<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>, ChromaError> {
        let got = self
            .store
            .get_records(
                &self.collection_id,
                &GetRequest {
                    where_: Some(json!({"kind": kind})),
                    include: vec![Include::Documents],
                    ..GetRequest::default()
                },
            )
            .await?;
        let mut out = Vec::new();
        for (id, doc) in got.ids.iter().zip(got.documents.unwrap_or_default()) {
            let doc = doc.unwrap_or_default();
            match serde_json::from_str(&doc) {
                Ok(v) => out.push(v),
                Err(e) => {
                    return Err(ChromaError::Decode {
                        operation: "migration_history",
                        endpoint: self.collection.clone(),
                        detail: format!("record {id}: {e}"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Every history entry, by version.
    pub async fn entries(&self) -> Result<Vec<HistoryEntry>, ChromaError> {
        let mut v: Vec<HistoryEntry> = self.documents("history").await?;
        v.sort_by_key(|h| h.version);
        Ok(v)
    }

    pub async fn put(&self, entry: &HistoryEntry) -> Result<(), ChromaError> {
        let doc = serde_json::to_string(entry).unwrap_or_default();
        let batch = one(
            history_id(entry.version),
            "history",
            doc,
            ("version", json!(entry.version)),
        );
        self.store.upsert_one(&self.collection_id, &batch).await
    }

    pub async fn remove(&self, version: u32) -> Result<(), ChromaError> {
        self.store
            .delete(&self.collection_id, Some(&[history_id(version)]), None)
            .await
            .map(|_| ())
    }

    /// Every lease record, highest token first.
    pub async fn locks(&self) -> Result<Vec<LockRecord>, ChromaError> {
        let mut v: Vec<LockRecord> = self.documents("lock").await?;
        v.sort_by_key(|l| std::cmp::Reverse(l.token));
        Ok(v)
    }

    /// The error for a lock record that is damaged: `why`, and which
    /// record to delete.
    pub fn damaged(&self, token: u64, why: String) -> MigrationError {
        MigrationError::LockDamaged {
            collection: self.collection.clone(),
            collection_id: self.collection_id.clone(),
            record: lock_id(token),
            why,
        }
    }

    /// Claims `rec.token` if nobody has: `add` keeps the first writer's record.
    pub async fn claim(&self, rec: &LockRecord) -> Result<bool, ChromaError> {
        let doc = serde_json::to_string(rec).unwrap_or_default();
        let batch = one(lock_id(rec.token), "lock", doc, ("token", json!(rec.token)));
        self.store.add(&self.collection_id, &batch).await?;
        let got = self
            .store
            .get_records(
                &self.collection_id,
                &GetRequest::ids(vec![lock_id(rec.token)], &[Include::Documents]),
            )
            .await?;
        let stored: Option<LockRecord> = got
            .documents
            .and_then(|d| d.into_iter().next().flatten())
            .and_then(|d| serde_json::from_str(&d).ok());
        Ok(stored.is_some_and(|s| s.holder == rec.holder))
    }

    /// Rewrites the holder's own lease record (renewal, release).
    pub async fn put_lock(&self, rec: &LockRecord) -> Result<(), ChromaError> {
        let doc = serde_json::to_string(rec).unwrap_or_default();
        let batch = one(lock_id(rec.token), "lock", doc, ("token", json!(rec.token)));
        self.store.upsert_one(&self.collection_id, &batch).await
    }

    /// Removes lease records below `token` (history of earlier runs).
    pub async fn forget_locks_below(&self, token: u64) -> Result<(), ChromaError> {
        let old: Vec<String> = self
            .locks()
            .await?
            .into_iter()
            .filter(|l| l.token < token)
            .map(|l| lock_id(l.token))
            .collect();
        if !old.is_empty() {
            self.store
                .delete(&self.collection_id, Some(&old), None)
                .await?;
        }
        Ok(())
    }
}
