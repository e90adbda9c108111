//! `backup`: take a snapshot (full, incremental, or of chosen collections).

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Context, Progress, Trigger};
use crate::backup::physical::PhysicalStats;
use crate::backup::{BackupError, BackupRequest, BackupType, Manifest, SnapshotId};

/// Take a snapshot of `collections` (all when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub backup_type: BackupType,
    pub collections: Vec<String>,
}

impl Backup {
    /// A snapshot of every collection.
    pub fn all(backup_type: BackupType) -> Self {
        Backup {
            backup_type,
            collections: Vec::new(),
        }
    }

    pub(super) async fn run(
        self,
        ctx: &Context,
        trigger: Trigger,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<BackupOutcome, BackupError> {
        // `backup.physical` makes scheduled full backups physical.
        let physical = self.backup_type == BackupType::Physical
            || (self.backup_type == BackupType::Full
                && trigger == Trigger::Schedule
                && ctx.config.backup.physical);
        if physical {
            if !self.collections.is_empty() {
                return Err(BackupError::Invalid(
                    "a physical snapshot copies Chroma's whole persist directory; --collection does not apply (take a logical collection backup instead)".into(),
                ));
            }
            if ctx.config.chroma.persist_directory.is_none() {
                return Err(BackupError::PersistDirectoryUnset);
            }
            let m = ctx.backups(true).await?;
            let (manifest, stats) = m.create_physical(trigger, progress, cancel).await?;
            tracing::info!(backup_id = %manifest.snapshot_id, files = stats.files, objects_written = stats.objects_written, writer_blocked_ms = stats.writer_blocked_ms, "physical snapshot taken");
            return Ok(BackupOutcome::of(&manifest, Some(stats)));
        }
        let m = ctx.backups(true).await?;
        let manifest = m
            .create(
                BackupRequest {
                    backup_type: self.backup_type,
                    collections: self.collections,
                    trigger,
                },
                progress,
                cancel,
            )
            .await?;
        for c in &manifest.collections {
            tracing::info!(backup_id = %manifest.snapshot_id, collection = %c.name, records = c.record_count, "collection backed up");
        }
        Ok(BackupOutcome::of(&manifest, None))
    }
}

impl BackupOutcome {
    fn of(manifest: &Manifest, physical: Option<PhysicalStats>) -> Self {
        let collections = match &manifest.physical {
            Some(p) => p
                .collections
                .iter()
                .map(|c| CollectionCount {
                    name: c.name.clone(),
                    records: c.records,
                })
                .collect(),
            None => manifest
                .collections
                .iter()
                .map(|c| CollectionCount {
                    name: c.name.clone(),
                    records: c.record_count,
                })
                .collect(),
        };
        BackupOutcome {
            snapshot: manifest.snapshot_id.clone(),
            backup_type: manifest.metadata.backup_type,
            parent: manifest.parent.clone(),
            collections,
            bytes_written: manifest.bytes_written,
            bytes_referenced: manifest.bytes_referenced,
            duration_ms: manifest.duration_ms,
            encrypted: manifest.encrypted,
            physical,
        }
    }
}

/// The summary of a snapshot just taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupOutcome {
    pub snapshot: SnapshotId,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// The snapshot an incremental reused chunks of (`null` for a full one).
    pub parent: Option<SnapshotId>,
    pub collections: Vec<CollectionCount>,
    /// Stored bytes this snapshot added to the repository.
    pub bytes_written: u64,
    /// Stored bytes the snapshot references (new and reused).
    pub bytes_referenced: u64,
    pub duration_ms: u64,
    pub encrypted: bool,
    /// A physical snapshot's files, blocks and how long Chroma's writer waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalStats>,
}

/// A collection in a snapshot and its record count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectionCount {
    pub name: String,
    pub records: u64,
}
