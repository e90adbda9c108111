//! Backups: the stored format (`format`, `records`, `manifest`), keys
//! (`crypto`), the repository on a storage backend (`repository`, `lock`),
//! reading from and writing to Chroma (`source`), reading chunks back for a
//! restore (`chunks`), comparing records read back (`compare`) and the
//! operations on snapshots (`manager`: `BackupManager`, with one file per
//! operation: `create` and its `upload`er, `verify`, `restore` and its
//! `delta` mode, `prune`, `diff`).
//! `docs/backup-format.md` describes the repository layout and the bytes.

pub mod changes;
mod chunks;
pub mod compare;
pub mod create;
pub mod crypto;
mod delta;
pub mod diff;
pub mod format;
pub mod lock;
pub mod manager;
pub mod manifest;
pub mod physical;
pub mod pin;
pub mod prune;
pub mod recall;
pub mod records;
pub mod repository;
pub mod restore;
mod scope;
pub mod source;
mod upload;
pub mod verify;

pub use create::BackupRequest;
pub use delta::DeltaRestored;
pub use manager::{load_key, BackupManager, SnapshotSummary};
pub use manifest::{BackupMetadata, BackupType, Manifest, SnapshotId, Trigger};
pub use physical::{PhysicalRestoreOptions, PhysicalRestored};
pub use prune::PruneReport;
pub use restore::{RestoreMode, RestoreOptions, RestoreOutcome};
pub use scope::in_scope;
pub use verify::VerifyReport;

use crate::chroma::ChromaError;
use crate::storage::StorageError;

/// Why a backup, restore, verify or prune failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup repository at {location}; take a first backup to create it, or fix backup.storage_path")]
    NoRepository { location: String },
    #[error("the repository at {location} has objects ({found}) but no `config` object, so chromaprod will not create a new repository over them (its snapshots would be written under a new key and the old ones become unreadable). The `config` object was deleted or not copied: put it back from a copy of the repository (it holds no secret), or point backup.storage_path at an empty location")]
    ConfigMissing { location: String, found: String },
    #[error("the repository at {location} is not the one this host backs up to: its id is {found}, but {pinned} is pinned in {pin_file}. It was recreated or replaced, and the pinned repository's snapshots are not in it. Put the original repository back at this location, or, if the change is intended, remove {pin_file}")]
    RepositoryChanged {
        location: String,
        found: String,
        pinned: String,
        pin_file: String,
    },
    #[error("the repository {pinned} that this host backs up to is gone from {location} (pinned in {pin_file}); chromaprod will not create a new one in its place. Put the repository back from its copy, or, to start a new repository there, remove {pin_file}")]
    RepositoryGone {
        location: String,
        pinned: String,
        pin_file: String,
    },
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
    #[error("collection {name:?} is in neither snapshot {from} nor {to}; `chromaprod backups show ID` lists the collections of a snapshot")]
    DiffNoCollection {
        name: String,
        from: String,
        to: String,
    },
    #[error(
        "collection {0:?} already exists; restore with --mode replace to swap it, or --as NEW_NAME"
    )]
    TargetExists(String),
    #[error("collection {0:?} does not exist in Chroma, so a delta restore has nothing to compare with; use --mode replace or no mode to restore it whole")]
    DeltaTargetMissing(String),
    #[error("collection {target:?} uses the {live} distance space but the snapshot's {collection:?} uses {snapshot}; a delta restore cannot change the space: use --mode replace")]
    DeltaSpaceDiffers {
        collection: String,
        target: String,
        live: String,
        snapshot: String,
    },
    #[error("the delta restore of {collection:?} did not finish: {why}; run it again (it writes only what still differs), or undo it by restoring its restore point with --mode replace")]
    DeltaIncomplete { collection: String, why: String },
    #[error("collection {target:?} does not exist in Chroma, so the queries recorded for {collection:?} have nothing to run against; restore it first, or name the restored copy with --collection {collection} --as NAME")]
    RecallTargetMissing { collection: String, target: String },
    #[error("restore verification failed for {collection:?}: {why}; the target collection was left as it was")]
    RestoreMismatch { collection: String, why: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("a physical snapshot copies Chroma's files, so chromaprod must know where they are: set chroma.persist_directory to the directory the Chroma server on this host was started with (`chroma run --path DIR`); or take a logical backup (`chromaprod backup --full`)")]
    PersistDirectoryUnset,
    #[error("cannot take a physical snapshot of Chroma's files: {0}; take a logical backup instead (`chromaprod backup --full`)")]
    LocalFiles(crate::chroma::local::Unusable),
    #[error("vector segment {segment} (collection {collection:?}) was flushed or changed during each of {attempts} copies, so no consistent copy of it was taken; Chroma is writing to it steadily: retry when writes are lighter, or take a logical backup (`chromaprod backup --full`)")]
    Unsettled {
        segment: String,
        collection: String,
        attempts: u32,
    },
    #[error("cannot {action} {path}: {why}")]
    LocalIo {
        action: &'static str,
        path: String,
        why: String,
    },
    #[error("snapshot {0} is a physical snapshot (Chroma's files): restore it with `chromaprod restore {0} --data-dir DIR` into an empty directory, then start Chroma on it")]
    IsPhysical(String),
    #[error("snapshot {0} is a logical snapshot: restore it into a running Chroma with `chromaprod restore {0}`; --data-dir takes a physical snapshot")]
    NotPhysical(String),
    #[error("{dir} is not empty (it holds {found}); a physical restore writes a whole persist directory and only into an empty one: give a new or empty directory, then move it into place with Chroma stopped (docs/runbook.md)")]
    DataDirNotEmpty { dir: String, found: String },
    #[error("{dir} is in use: {holder}; a physical restore never writes where a running Chroma works: stop it, or restore into another directory")]
    DataDirInUse { dir: String, holder: String },
    #[error("snapshot {snapshot} was taken from a Chroma at migration levels {taken}, but the local Chroma ({local_dir}) is at {local}: Chroma may not open files of other levels. Restore a logical snapshot instead (`chromaprod restore ID`: the portable way), or pass --force if the Chroma that will open the directory is at the snapshot's levels")]
    MigrationLevelsDiffer {
        snapshot: String,
        taken: String,
        local: String,
        local_dir: String,
    },
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
            BackupError::NoSnapshot(_)
            | BackupError::NoCollection(_)
            | BackupError::DiffNoCollection { .. }
            | BackupError::RecallTargetMissing { .. } => "not_found",
            BackupError::MissingObject(_)
            | BackupError::ConfigMissing { .. }
            | BackupError::RepositoryChanged { .. }
            | BackupError::RepositoryGone { .. }
            | BackupError::BadObject { .. }
            | BackupError::Corrupt(_) => "corrupt",
            BackupError::Locked(_) | BackupError::Busy(_) => "busy",
            BackupError::Cancelled => "cancelled",
            BackupError::TargetExists(_)
            | BackupError::DeltaTargetMissing(_)
            | BackupError::DeltaSpaceDiffers { .. }
            | BackupError::Invalid(_)
            | BackupError::PersistDirectoryUnset
            | BackupError::IsPhysical(_)
            | BackupError::NotPhysical(_)
            | BackupError::DataDirNotEmpty { .. }
            | BackupError::DataDirInUse { .. }
            | BackupError::MigrationLevelsDiffer { .. }
            | BackupError::NotEncrypted => "bad_request",
            BackupError::Unsettled { .. } => "busy",
            _ => "backup",
        }
    }
}
