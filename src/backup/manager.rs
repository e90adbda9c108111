//! `BackupManager`: the repository of the configured backups, opened and
//! checked against its pin, and the operations on its snapshots, one file
//! each: `create` (with `upload`), `verify`, `restore`, `prune` (and
//! delete); listing and showing here.

use std::sync::Arc;

use serde::Serialize;

use super::crypto::MasterKey;
use super::lock::Lease;
use super::manifest::{BackupMetadata, Manifest, SnapshotId, Trigger};
use super::pin;
use super::repository::Repository;
use super::BackupError;
use crate::chroma::ProductionChromaStore;
use crate::config::Config;
use crate::storage::StorageOptions;

/// How long a backup waits for a conflicting lock (a prune) before failing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// One snapshot in `chromaprod backups list`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    #[serde(flatten)]
    pub metadata: BackupMetadata,
    pub parent: Option<SnapshotId>,
    pub records: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
    pub encrypted: bool,
    pub trigger: Trigger,
}

pub struct BackupManager {
    pub(super) store: ProductionChromaStore,
    pub(super) config: Arc<Config>,
    pub repo: Repository,
}

/// Loads the key when `backup.encrypt` is set: the configured file, else the
/// `backup-key` systemd credential. A missing or unreadable key is an error,
/// never a reason to write plaintext.
pub fn load_key(config: &Config) -> Result<Option<MasterKey>, BackupError> {
    if !config.backup.encrypt {
        return Ok(None);
    }
    Ok(Some(match &config.backup.key_file {
        Some(path) => MasterKey::from_file(path)?,
        None => MasterKey::from_credential("backup-key")?,
    }))
}

impl BackupManager {
    /// Opens (creating if `create`) the configured repository, checked
    /// against the repository id pinned in the state directory: once pinned,
    /// a repository is never created again at that location, and one with
    /// another id is refused (`pin.rs`).
    pub async fn open(
        store: ProductionChromaStore,
        config: Arc<Config>,
        create: bool,
    ) -> Result<Self, BackupError> {
        let key = load_key(&config)?;
        let url = &config.backup.storage_path;
        let backend = crate::storage::open(url, &StorageOptions::default())?;
        let location = backend.describe();
        let state_dir = &config.daemon.state_dir;
        let pinned = pin::read(state_dir, &location)?;
        let opened =
            Repository::open_on(backend, url, key.as_ref(), create && pinned.is_none()).await;
        let repo = match (opened, &pinned) {
            (Err(BackupError::NoRepository { .. }), Some((pin, file))) => {
                return Err(BackupError::RepositoryGone {
                    location,
                    pinned: pin.repository_id.clone(),
                    pin_file: file.display().to_string(),
                })
            }
            (opened, _) => opened?,
        };
        match pinned {
            Some((pin, file)) if pin.repository_id != repo.config.repository_id => {
                return Err(BackupError::RepositoryChanged {
                    location,
                    found: repo.config.repository_id.clone(),
                    pinned: pin.repository_id,
                    pin_file: file.display().to_string(),
                });
            }
            Some(_) => {}
            None => match pin::write(state_dir, &location, &repo.config.repository_id) {
                Ok(file) => {
                    tracing::info!(location = %location, repository = %repo.config.repository_id, file = %file.display(), "pinned the backup repository")
                }
                Err(e) => tracing::debug!(error = %e, "the backup repository was not pinned"),
            },
        }
        Ok(BackupManager {
            store,
            config,
            repo,
        })
    }

    pub fn with_repository(
        store: ProductionChromaStore,
        config: Arc<Config>,
        repo: Repository,
    ) -> Self {
        BackupManager {
            store,
            config,
            repo,
        }
    }

    pub fn store(&self) -> &ProductionChromaStore {
        &self.store
    }

    pub(super) async fn lock(&self, exclusive: bool, purpose: &str) -> Result<Lease, BackupError> {
        Lease::acquire(
            &self.repo,
            exclusive,
            purpose,
            self.config.backup.lock_ttl,
            LOCK_WAIT,
        )
        .await
    }

    pub async fn list(&self) -> Result<Vec<SnapshotSummary>, BackupError> {
        Ok(self
            .repo
            .manifests()
            .await?
            .into_iter()
            .map(|m| SnapshotSummary {
                records: m.record_count(),
                parent: m.parent,
                bytes_written: m.bytes_written,
                duration_ms: m.duration_ms,
                encrypted: m.encrypted,
                trigger: m.trigger,
                metadata: m.metadata,
            })
            .collect())
    }

    pub async fn show(&self, id: &str) -> Result<Manifest, BackupError> {
        self.repo.manifest(&SnapshotId::parse(id)?).await
    }
}
