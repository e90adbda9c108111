//! What every operation uses: the [`Tracker`] (Chroma, checkpoint,
//! progress, cancellation) and lookups of collections and ids.

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::history::HistoryEntry;
use super::lease::MigrationLease;
use super::MigrationError;
use crate::backup::records::Record;
use crate::backup::source::to_records;
use crate::chroma::{
    ChromaError, Collection, GetRequest, Include, ModifyCollection, ProductionChromaStore,
};
use crate::progress::{Event, MigrateDetail, MigrateStep, Progress};

/// What a running operation needs: Chroma, where to save its checkpoint,
/// progress and cancellation.
pub struct Tracker<'a> {
    pub store: &'a ProductionChromaStore,
    pub lease: &'a MigrationLease,
    /// The history entry of the running migration (its checkpoint inside).
    pub entry: &'a Mutex<HistoryEntry>,
    pub version: u32,
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
    /// When a checkpoint was last saved (progress checkpoints are spaced out).
    pub last_save: std::sync::Mutex<Option<std::time::Instant>>,
    /// The local Chroma's files (`chroma.persist_directory`), for catch-up
    /// passes that read only what the writers changed.
    pub local: Option<crate::chroma::local::LocalChroma>,
}

/// Progress checkpoints are saved at most this often: a crash repeats at
/// most this much work, and a fast copy is not slowed by history writes.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Tracker<'_> {
    /// The checkpoint saved by an earlier, interrupted run of this operation.
    pub async fn resumed(&self) -> Option<Value> {
        self.entry.lock().await.checkpoint.clone()
    }

    /// Saves a progress checkpoint unless one was saved within
    /// [`CHECKPOINT_EVERY`] (the work since is idempotent to repeat).
    pub async fn progress_save(&self, checkpoint: Value) -> Result<(), MigrationError> {
        let due = self
            .last_save
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
        if due {
            self.save(checkpoint).await?;
        }
        Ok(())
    }

    /// Saves where the operation got to; fails if the lock was lost.
    pub async fn save(&self, checkpoint: Value) -> Result<(), MigrationError> {
        *self.last_save.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        let mut e = self.entry.lock().await;
        e.checkpoint = Some(checkpoint);
        self.lease.record(&e).await?;
        Ok(())
    }

    pub fn check_cancel(&self) -> Result<(), MigrationError> {
        if self.cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }

    /// Reports what operation `op` of this migration did so far.
    pub fn report(&self, op: &str, detail: MigrateDetail) {
        self.progress.send(Event::Migrate(MigrateStep {
            version: self.version,
            operation: op.to_string(),
            detail,
        }));
    }
}

/// The collection named `name`, or `None`.
pub async fn find(
    store: &ProductionChromaStore,
    name: &str,
) -> Result<Option<Collection>, MigrationError> {
    match store.get_collection(name).await {
        Ok(c) => Ok(Some(c)),
        Err(ChromaError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn need(store: &ProductionChromaStore, name: &str) -> Result<Collection, MigrationError> {
    find(store, name)
        .await?
        .ok_or_else(|| MigrationError::NoCollection(name.to_string()))
}

pub async fn rename(
    store: &ProductionChromaStore,
    id: &str,
    to: &str,
) -> Result<(), MigrationError> {
    store
        .modify_collection(
            id,
            &ModifyCollection {
                new_name: Some(to.to_string()),
                ..ModifyCollection::default()
            },
        )
        .await?;
    Ok(())
}

/// Ids of `collection_id` (matching `where_`), in insertion order.
pub async fn list_ids(
    store: &ProductionChromaStore,
    collection_id: &str,
    where_: Option<&Value>,
) -> Result<Vec<String>, MigrationError> {
    let req = GetRequest {
        where_: where_.cloned(),
        include: Vec::new(),
        ..GetRequest::default()
    };
    Ok(store.get_records(collection_id, &req).await?.ids)
}

/// The records `ids` of `collection_id`, with everything they hold.
pub async fn fetch(
    store: &ProductionChromaStore,
    collection_id: &str,
    ids: Vec<String>,
) -> Result<Vec<Record>, MigrationError> {
    Ok(to_records(
        store
            .get_records(collection_id, &GetRequest::ids(ids, &Include::RECORD))
            .await?,
    ))
}

/// Where to start in `ids` after a checkpoint naming the last id done.
pub fn resume_position(ids: &[String], checkpoint: Option<&Value>) -> usize {
    checkpoint
        .and_then(|c| c.get("last_id"))
        .and_then(Value::as_str)
        .and_then(|last| ids.iter().position(|i| i == last))
        .map_or(0, |p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_starts_after_the_last_id_done() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(resume_position(&ids, None), 0);
        assert_eq!(resume_position(&ids, Some(&json!({"last_id": "b"}))), 2);
        // The last id is gone (deleted meanwhile): start again; changes are idempotent.
        assert_eq!(resume_position(&ids, Some(&json!({"last_id": "z"}))), 0);
        assert_eq!(resume_position(&ids, Some(&json!({"started": true}))), 0);
    }
}
