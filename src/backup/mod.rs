//! Backups: the stored format (`format`, `records`, `manifest`), keys
//! (`crypto`), the repository on a storage backend (`repository`, `lock`),
//! reading from and writing to Chroma (`source`), reading chunks back for a
//! restore (`chunks`) and the engine that ties them together (`engine`:
//! `BackupManager`). `docs/backup-format.md` describes the repository
//! layout and the bytes.

mod chunks;
pub mod crypto;
pub mod engine;
pub mod format;
pub mod lock;
pub mod manifest;
pub mod records;
pub mod repository;
pub mod source;

pub use engine::{BackupManager, BackupRequest, RestoreMode, RestoreOptions};
pub use manifest::{BackupMetadata, BackupType, Manifest, SnapshotId, Trigger};

use crate::chroma::ChromaError;
use crate::storage::StorageError;

/// Why a backup, restore, verify or prune failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup repository at {location}; take a first backup to create it, or fix backup.storage_path")]
    NoRepository { location: String },
    #[error("the repository at {location} is encrypted; configure its key (backup.encrypt = true and backup.key_file, or LoadCredential=backup-key:…)")]
    KeyRequired { location: String },
    #[error("the repository is not encrypted; keys apply only to encrypted repositories")]
    NotEncrypted,
    #[error("snapshot {0} does not exist; `chromaprod backups list` shows the snapshots")]
    NoSnapshot(String),
    #[error("object {0} is missing from the repository; the snapshots that reference it cannot be restored — run `chromaprod backups verify --full` and take a new backup")]
    MissingObject(String),
    #[error("object {object} is damaged: {why}; run `chromaprod backups verify --full` and take a new backup")]
    BadObject { object: String, why: String },
    #[error("repository data is inconsistent: {0}")]
    Corrupt(String),
    #[error("the repository is locked: {0}; wait for it to finish, or remove a stale lock after it expires")]
    Locked(String),
    #[error("{0}")]
    Busy(String),
    #[error("collection {0:?} does not exist in Chroma; `chromaprod backups show` lists what a snapshot holds")]
    NoCollection(String),
    #[error(
        "collection {0:?} already exists; restore with --mode replace to swap it, or --as NEW_NAME"
    )]
    TargetExists(String),
    #[error("restore verification failed for {collection:?}: {why}; the target collection was left as it was")]
    RestoreMismatch { collection: String, why: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(
        "cancelled; nothing was recorded, and chunks already stored are reused by the next backup"
    )]
    Cancelled,
    #[error(
        "the repository lock was lost (it could not be renewed in time); the operation stopped"
    )]
    LockLost,
    #[error("cannot use a temporary file for the id listing: {0}; set TMPDIR to a writable directory with free space")]
    Spool(std::io::Error),
    #[error(transparent)]
    Key(#[from] crypto::CryptoError),
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Chroma(#[from] ChromaError),
    #[error(transparent)]
    Swap(#[from] crate::chroma::swap::SwapError),
}

impl BackupError {
    /// A short kind for the control protocol and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackupError::NoRepository { .. } => "no_repository",
            BackupError::KeyRequired { .. } | BackupError::Key(_) => "key",
            BackupError::NoSnapshot(_) | BackupError::NoCollection(_) => "not_found",
            BackupError::MissingObject(_)
            | BackupError::BadObject { .. }
            | BackupError::Corrupt(_) => "corrupt",
            BackupError::Locked(_) | BackupError::Busy(_) => "busy",
            BackupError::Cancelled => "cancelled",
            BackupError::TargetExists(_) | BackupError::Invalid(_) | BackupError::NotEncrypted => {
                "bad_request"
            }
            _ => "backup",
        }
    }
}
