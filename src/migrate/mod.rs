//! Versioned migrations of a Chroma deployment, applied at start-up or from
//! the CLI: files (`file`) and the operations they list (`operation`), the
//! plan as a pure function of files and recorded history (`plan`), the
//! history and lock kept in Chroma (`history`, `lease`), carrying out the
//! operations (`ops`, and `rebuild` with its neighbour check `overlap`,
//! sharing `tracker`), the runner that ties them together (`manager`:
//! `MigrationManager`, with `up` and `down` in their own files) and what
//! its commands return (`report`).

mod down;
pub mod embed;
pub mod file;
pub mod history;
pub mod lease;
pub mod manager;
pub mod operation;
pub mod ops;
pub mod overlap;
pub mod plan;
pub mod rebuild;
pub mod report;
pub mod tracker;
mod up;

use std::path::PathBuf;
use std::time::Duration;

pub use file::Migration;
pub use history::{HistoryEntry, Outcome};
pub use manager::MigrationManager;
pub use operation::Operation;
pub use plan::{Direction, Step};
pub use report::{
    AppliedMigration, DownReport, MigrationReport, MigrationRow, MigrationState, MigrationStatus,
    RepairReport, StampReport, UndoneMigration, Validation,
};

use crate::backup::BackupError;
use crate::chroma::ChromaError;

/// Why migrating failed or was refused. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration files are invalid; fix them and run `chromaprod migrate validate`:\n  - {}", problems.join("\n  - "))]
    Invalid { problems: Vec<String> },
    #[error("migration {version} ({name}) was applied from a file with checksum {recorded}, but its file now has {file}: the file was edited after it was applied. Revert the edit, or run `chromaprod migrate repair` to accept the file as it is")]
    Diverged {
        version: u32,
        name: String,
        recorded: String,
        file: String,
    },
    #[error("migration {version} ({name}) is recorded in Chroma but its file is missing from migrations.path; put the file back, or run `chromaprod migrate repair` to forget it")]
    MissingFile { version: u32, name: String },
    #[error("migration {version} ({name}) is pending but migration {applied} is already applied; give it a version above {applied}")]
    OutOfOrder {
        version: u32,
        name: String,
        applied: u32,
    },
    #[error("no migration file declares version {0}; `chromaprod migrate status` lists them")]
    NoSuchVersion(u32),
    #[error("migration {version} cannot be reached: {why}")]
    Unreachable { version: u32, why: String },
    #[error("migration {version} has no `down` and its operation {op} has no obvious inverse; write a `down` list in its file, or restore the restore point taken before it")]
    Irreversible { version: u32, op: String },
    #[error("migration {version} ({name}) failed at operation {op_index} ({op}): {why}; {state}")]
    Failed {
        version: u32,
        name: String,
        op_index: usize,
        op: String,
        why: String,
        state: String,
    },
    #[error("another runner holds the migration lock: {holder}; waited {}. If that runner died, the lock frees itself when its lease ends; raise migrations.lock_wait to wait longer", humantime::format_duration(*waited))]
    LockTimeout { holder: String, waited: Duration },
    #[error("the migration lock is damaged: record {record:?} in collection {collection:?} (id {collection_id}): {why}. While no migration runs, delete that record (docs/runbook.md, \"A damaged migration lock\", gives the request) and run again")]
    LockDamaged {
        collection: String,
        collection_id: String,
        record: String,
        why: String,
    },
    #[error("the migration lock (token {token}) was lost: the lease could not be renewed in time, or another runner took over; this runner stopped. Run `chromaprod migrate status`")]
    LockLost { token: u64 },
    #[error("collection {0:?} does not exist in Chroma")]
    NoCollection(String),
    #[error("{0}")]
    Conflict(String),
    #[error("verification of the rebuilt {collection:?} failed: {why}; the original collection was left in place")]
    Verify { collection: String, why: String },
    #[error("{collection:?} kept changing during its rebuild: {last} records still differed after {passes} catch-up passes; not swapped. Retry when writes are quieter, or let the copy trail further at the swap (max_lag, max_lag_ms) or try longer (max_passes)")]
    SourceChanging {
        collection: String,
        passes: u32,
        last: u64,
    },
    #[error("embeddings endpoint {url}: {why}")]
    Embedding { url: String, why: String },
    #[error("migration {version} would delete {kept:?}, kept by an earlier run of it (after `migrate down`, or a run that was undone, it holds the rebuilt {collection:?} and every write made to it since), and no restore point covers it (migrations.restore_point is off, or this is `migrate down`, which takes none), so nothing would keep its data. Keep it with `chromaprod backup --collection {kept} --wait` and then delete or rename it in Chroma, or, for `migrate up`, turn migrations.restore_point on (the restore point then covers it); then run the command again")]
    KeptCollection {
        version: u32,
        collection: String,
        kept: String,
    },
    #[error("cannot take the restore point: {0}; fix the backup configuration, or set migrations.restore_point = false")]
    RestorePoint(#[source] BackupError),
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("cancelled; the migration is recorded as running and resumes from its checkpoint at the next `chromaprod migrate up`")]
    Cancelled,
    #[error(transparent)]
    Chroma(#[from] ChromaError),
    #[error(transparent)]
    Swap(#[from] crate::chroma::swap::SwapError),
}

impl MigrationError {
    /// A stable machine-readable code (control protocol, exit status).
    pub fn code(&self) -> &'static str {
        match self {
            MigrationError::Invalid { .. } => "invalid_migrations",
            MigrationError::Diverged { .. } => "migration_diverged",
            MigrationError::MissingFile { .. } => "migration_missing",
            MigrationError::OutOfOrder { .. } => "migration_out_of_order",
            MigrationError::NoSuchVersion(_) | MigrationError::Unreachable { .. } => {
                "invalid_request"
            }
            MigrationError::Irreversible { .. } => "migration_irreversible",
            MigrationError::Failed { .. } => "migration_failed",
            MigrationError::LockTimeout { .. } => "locked",
            MigrationError::LockLost { .. } => "lock_lost",
            MigrationError::LockDamaged { .. } => "lock_damaged",
            MigrationError::NoCollection(_) => "not_found",
            MigrationError::Conflict(_) => "conflict",
            MigrationError::Verify { .. } | MigrationError::SourceChanging { .. } => {
                "verify_failed"
            }
            MigrationError::RestorePoint(_) => "restore_point_failed",
            MigrationError::KeptCollection { .. } => "kept_collection",
            MigrationError::Embedding { .. } => "embedding_failed",
            MigrationError::Io { .. } => "io",
            MigrationError::Cancelled => "cancelled",
            MigrationError::Chroma(_) => "chroma_unavailable",
            MigrationError::Swap(_) => "swap_failed",
        }
    }

    /// Refusals that a change of files or a `repair` fixes (exit 65, EX_DATAERR).
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            MigrationError::Invalid { .. }
                | MigrationError::Diverged { .. }
                | MigrationError::MissingFile { .. }
                | MigrationError::OutOfOrder { .. }
                | MigrationError::Irreversible { .. }
        )
    }
}
