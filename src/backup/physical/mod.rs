//! Physical snapshots: a single-node Chroma's persist directory itself,
//! copied hot and consistently (`copy`), stored as content-addressed blocks
//! in the same repository as logical snapshots (`blocks`), and restored
//! into an empty directory (`restore`, with the checks of `inuse`).
//!
//! A physical snapshot restores in the time it takes to write its files,
//! but only into a Chroma at the same migration levels; the logical format
//! stays the portable one (DESIGN.md, "Backups are logical").

pub mod blocks;
pub mod copy;
pub mod inuse;
mod restore;

use std::time::{Instant, SystemTime};

use super::manifest::{
    BackupMetadata, BackupType, Manifest, MigrationLevel, PhysicalCollection, PhysicalContent,
    PhysicalFile, SnapshotId, Trigger, PHYSICAL_MANIFEST_FORMAT,
};
use super::repository::snapshot_key;
use super::{BackupError, BackupManager};
use crate::chroma::local::LocalChroma;
use crate::progress::{Event, Progress};

pub use restore::{PhysicalRestoreOptions, PhysicalRestored};

/// What a physical snapshot cost, beside its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PhysicalStats {
    pub files: u64,
    /// Blocks stored by this snapshot (the others were already there).
    pub objects_written: u64,
    pub objects_reused: u64,
    /// How long the database copy held Chroma's writer back, in ms.
    pub writer_blocked_ms: u64,
    /// Copy rounds until no vector segment moved.
    pub attempts: u32,
}

impl BackupManager {
    /// Takes a physical snapshot of the configured local Chroma
    /// (`chroma.persist_directory`). Nothing is recorded unless it completes.
    pub async fn create_physical(
        &self,
        trigger: Trigger,
        progress: &Progress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(Manifest, PhysicalStats), BackupError> {
        let persist = self
            .config
            .chroma
            .persist_directory
            .clone()
            .ok_or(BackupError::PersistDirectoryUnset)?;
        let started = Instant::now();
        let lease = self.lock(false, "physical backup").await?;
        let result = async {
            let info = self.store.check_ready().await?;
            let local = LocalChroma::open(&persist)
                .await
                .map_err(BackupError::LocalFiles)?;
            let staged = copy::take(&local, &persist).await?;
            tracing::info!(
                writer_blocked_ms = staged.writer_blocked.as_millis() as u64,
                attempts = staged.attempts,
                "physical copy of chroma.persist_directory taken"
            );
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let known = self.known_blocks().await?;
            let mut stored = blocks::Stored::default();
            let mut files = Vec::new();
            let total = staged.files.len() as u64;
            for (i, (rel, state)) in staged.files.iter().enumerate() {
                if cancel.is_cancelled() {
                    return Err(BackupError::Cancelled);
                }
                if lease.lost.is_cancelled() {
                    return Err(BackupError::LockLost);
                }
                let path = copy::staged_path(&staged, rel);
                let refs = blocks::store_file(&self.repo, &path, &known, &mut stored).await?;
                files.push(PhysicalFile {
                    path: rel.clone(),
                    size: state.size,
                    sha256: state.sha256.clone(),
                    blocks: refs,
                });
                progress.send(Event::PhysicalBackup {
                    files_done: i as u64 + 1,
                    files_total: total,
                    bytes_written: stored.bytes_written,
                });
            }
            let facts = &staged.facts;
            let collections = facts
                .segments
                .iter()
                .map(|s| PhysicalCollection {
                    name: s.collection.clone(),
                    id: s.collection_id.clone(),
                    segment: s.segment.clone(),
                    flushed_seq_id: facts
                        .flushed
                        .iter()
                        .find(|(id, _)| id == &s.segment)
                        .and_then(|(_, f)| *f),
                    records: facts
                        .records
                        .iter()
                        .find(|(id, _)| id == &s.collection_id)
                        .map_or(0, |(_, n)| *n),
                })
                .collect();
            let writer_blocked_ms =
                u64::try_from(staged.writer_blocked.as_millis()).unwrap_or(u64::MAX);
            let stats = PhysicalStats {
                files: total,
                objects_written: stored.objects_written,
                objects_reused: stored.objects_reused,
                writer_blocked_ms,
                attempts: staged.attempts,
            };
            let snapshot_id = SnapshotId::generate()?;
            let mut manifest = Manifest {
                format_version: PHYSICAL_MANIFEST_FORMAT,
                snapshot_id: snapshot_id.clone(),
                metadata: BackupMetadata {
                    backup_id: snapshot_id.clone(),
                    created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                    backup_type: BackupType::Physical,
                    collections: Vec::new(),
                    size_bytes: 0,
                    checksum: String::new(),
                    chroma_version: format!(
                        "api {}; migrations {}",
                        info.api_version,
                        describe_levels(&facts.migrations)
                    ),
                },
                parent: None,
                host: crate::host::hostname(),
                trigger,
                duration_ms: 0,
                encrypted: self.repo.codec.is_encrypted(),
                bytes_written: 0,
                bytes_referenced: 0,
                collections: Vec::new(),
                physical: Some(PhysicalContent {
                    migrations: facts
                        .migrations
                        .iter()
                        .map(|(dir, version)| MigrationLevel {
                            dir: dir.clone(),
                            version: *version,
                        })
                        .collect(),
                    files,
                    collections,
                    writer_blocked_ms,
                    attempts: staged.attempts,
                }),
            };
            manifest.finalize();
            manifest.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let encoded = manifest.encode(&self.repo.codec)?;
            manifest.bytes_written = stored.bytes_written + encoded.bytes.len() as u64;
            let encoded = manifest.encode(&self.repo.codec)?;
            if lease.lost.is_cancelled() {
                return Err(BackupError::LockLost);
            }
            self.repo.put(&snapshot_key(&snapshot_id)?, encoded).await?;
            progress.send(Event::Done {
                snapshot: snapshot_id.to_string(),
                bytes_written: manifest.bytes_written,
            });
            Ok((manifest, stats))
        }
        .await;
        lease.release().await;
        result
    }

    /// Blocks the physical snapshots in the repository reference.
    async fn known_blocks(&self) -> Result<blocks::Known, BackupError> {
        let mut known = blocks::Known::new();
        for m in self.repo.manifests().await? {
            for f in m.physical.iter().flat_map(|p| &p.files) {
                for b in &f.blocks {
                    known.insert(b.id.clone(), (b.checksum.clone(), b.stored_size));
                }
            }
        }
        Ok(known)
    }
}

/// `embeddings_queue 2, metadb 6, sysdb 10`.
pub fn describe_levels(levels: &[(String, i64)]) -> String {
    if levels.is_empty() {
        return "none".into();
    }
    levels
        .iter()
        .map(|(d, v)| format!("{d} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
