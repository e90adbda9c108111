//! The command layer: every verb chromaprod carries out on Chroma or the
//! backup repository, as a typed request and a typed outcome, one verb per
//! file. The daemon's control handler, its scheduler and the offline CLI all
//! run commands through [`execute`]; JSON is made once, at the edge, and the
//! outcome types serialize to exactly the results in
//! `docs/control-protocol.md`.
//!
//! Commands about the daemon itself (`status`, `reload`, `jobs`,
//! `job_cancel`) are not here: they live with the daemon. Nothing here
//! imports the daemon; what a command needs comes in a [`Context`].

pub mod backup;
pub mod check;
pub mod delete;
pub mod diff;
pub mod list;
pub mod migrate;
pub mod prune;
pub mod query;
pub mod restore;
pub mod restore_physical;
pub mod show;
#[cfg(test)]
mod tests;
pub mod verify;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backup::{BackupError, BackupManager, BackupType};
use crate::chroma::{ChromaError, ProductionChromaStore};
use crate::config::Config;
use crate::control::Command;
use crate::migrate::MigrationError;
use crate::observe::MetricsCollector;

pub use self::backup::{Backup, BackupOutcome, CollectionCount};
pub use self::check::{Check, CheckOutcome};
pub use self::delete::{Delete, DeleteOutcome};
pub use self::diff::{CollectionDiff, Diff, DiffOutcome};
pub use self::list::{List, ListOutcome};
pub use self::migrate::{Migrate, MigrationReport};
pub use self::prune::{Prune, PruneReport};
pub use self::query::{Query, QueryOutcome};
pub use self::restore::{target_config, Restore, RestoreOutcome};
pub use self::restore_physical::{PhysicalRestored, RestorePhysical};
pub use self::show::{Show, ShowOutcome};
pub use self::verify::{RecallRequest, Verify, VerifyOutcome, VerifyReport};
/// What started a command: the one trigger vocabulary (also recorded in
/// each snapshot's manifest, and shown by `chromaprod jobs`).
pub use crate::backup::Trigger;

/// The progress reporter commands hand to the engines.
// The engines still take the job table's reporter; when `Progress` becomes
// a leaf type (`crate::progress`), this line is the only one to change.
pub use crate::progress::Progress;

/// What commands need: the Chroma store, the running configuration and the
/// metrics. Cheap to clone; the daemon builds one per command from what is
/// running now, the offline CLI one from the config file.
#[derive(Clone)]
pub struct Context {
    pub store: ProductionChromaStore,
    pub config: Arc<Config>,
    pub metrics: Arc<MetricsCollector>,
}

impl Context {
    /// The backup manager over the configured repository; `create` makes
    /// the repository if it does not exist yet.
    async fn backups(&self, create: bool) -> Result<BackupManager, BackupError> {
        BackupManager::open(self.store.clone(), self.config.clone(), create).await
    }
}

/// The kind of a job in `chromaprod jobs` and the `kind` label of the
/// backup-job metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Full,
    Incremental,
    Collection,
    Physical,
    Restore,
    Prune,
    Verify,
    Migrate,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Full => "full",
            JobKind::Incremental => "incremental",
            JobKind::Collection => "collection",
            JobKind::Physical => "physical",
            JobKind::Restore => "restore",
            JobKind::Prune => "prune",
            JobKind::Verify => "verify",
            JobKind::Migrate => "migrate",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One command to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Backup(Backup),
    List(List),
    Show(Show),
    Verify(Verify),
    Diff(Diff),
    Check(Check),
    Delete(Delete),
    Prune(Prune),
    Restore(Restore),
    RestorePhysical(RestorePhysical),
    Query(Query),
    Migrate(Migrate),
}

impl Request {
    /// The command a scheduled job of `kind` runs.
    pub fn scheduled(kind: crate::schedule::JobKind) -> Request {
        use crate::schedule::JobKind as Scheduled;
        match kind {
            Scheduled::FullBackup => Request::Backup(Backup::all(BackupType::Full)),
            Scheduled::IncrementalBackup => Request::Backup(Backup::all(BackupType::Incremental)),
            Scheduled::PhysicalBackup => Request::Backup(Backup::all(BackupType::Physical)),
            Scheduled::Prune => Request::Prune(Prune { dry_run: false }),
            Scheduled::Verify => Request::Verify(Verify {
                id: "latest".into(),
                full: true,
                recall: None,
            }),
        }
    }

    /// The command's `cmd` name on the control socket (also its audit action).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Backup(_) => "backup",
            Request::List(_) => "backups_list",
            Request::Show(_) => "backup_show",
            Request::Verify(_) => "backup_verify",
            Request::Diff(_) => "backups_diff",
            Request::Check(_) => "backups_check",
            Request::Delete(_) => "backup_delete",
            Request::Prune(_) => "prune",
            Request::Restore(_) => "restore",
            Request::RestorePhysical(_) => "restore_physical",
            Request::Query(_) => "query",
            Request::Migrate(m) => m.name(),
        }
    }

    /// The job kind when the command runs as a job (or is counted in the
    /// backup-job metrics); `None` for short commands.
    pub fn job_kind(&self) -> Option<JobKind> {
        match self {
            Request::Backup(b) => Some(match b.backup_type {
                BackupType::Full => JobKind::Full,
                BackupType::Incremental => JobKind::Incremental,
                BackupType::Collection => JobKind::Collection,
                BackupType::Physical => JobKind::Physical,
            }),
            Request::RestorePhysical(_) => Some(JobKind::Restore),
            Request::Restore(_) => Some(JobKind::Restore),
            Request::Prune(_) => Some(JobKind::Prune),
            Request::Verify(_) => Some(JobKind::Verify),
            Request::Migrate(Migrate::Up { .. } | Migrate::Down { .. }) => Some(JobKind::Migrate),
            _ => None,
        }
    }

    /// Whether a run is counted in the backup-job metrics.
    fn metered(&self) -> bool {
        matches!(
            self,
            Request::Backup(_)
                | Request::Restore(_)
                | Request::RestorePhysical(_)
                | Request::Prune(Prune { dry_run: false })
                | Request::Verify(_)
        )
    }
}

/// A wire command that is not carried out by the command layer (it is
/// about the daemon itself: `status`, `reload`, `jobs`, `job_cancel`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{}` is answered by the daemon, not run as a command", .0.name())]
pub struct DaemonOnly(pub Command);

impl TryFrom<Command> for Request {
    type Error = DaemonOnly;

    /// The request a wire command asks for. A `query` comes with document
    /// text withheld; the caller grants it (see [`Query::with_documents`]).
    fn try_from(command: Command) -> Result<Self, DaemonOnly> {
        Ok(match command {
            Command::Backup {
                backup_type,
                collections,
                ..
            } => Request::Backup(Backup {
                backup_type,
                collections,
            }),
            Command::BackupsList => Request::List(List),
            Command::BackupShow { id } => Request::Show(Show { id }),
            Command::BackupVerify {
                id,
                full,
                recall,
                collection,
                as_name,
                min_recall,
                target,
                target_token,
                allow_plain_http,
            } => Request::Verify(Verify {
                id,
                full,
                recall: recall.then_some(RecallRequest {
                    collection,
                    as_name,
                    min_recall,
                    target,
                    target_token,
                    allow_plain_http,
                }),
            }),
            Command::BackupsDiff {
                id,
                other,
                live,
                collection,
                ids,
            } => Request::Diff(Diff {
                id,
                other,
                live,
                collection,
                ids,
            }),
            Command::BackupsCheck => Request::Check(Check),
            Command::BackupDelete { id } => Request::Delete(Delete { id }),
            Command::Prune { dry_run } => Request::Prune(Prune { dry_run }),
            Command::Restore {
                id,
                collections,
                as_name,
                target,
                target_token,
                allow_plain_http,
                mode,
                dry_run,
                keep_previous,
                keep_extra,
                no_recall,
                ..
            } => Request::Restore(Restore {
                id,
                collections,
                as_name,
                target,
                target_token,
                allow_plain_http,
                mode,
                dry_run,
                keep_previous,
                keep_extra,
                no_recall,
            }),
            Command::RestorePhysical {
                id,
                data_dir,
                force,
                ..
            } => Request::RestorePhysical(RestorePhysical {
                id,
                data_dir,
                force,
            }),
            Command::Query {
                collection,
                id,
                vector,
                k,
            } => Request::Query(Query {
                collection,
                id,
                vector,
                k,
                with_documents: false,
            }),
            Command::MigrateStatus => Request::Migrate(Migrate::Status),
            Command::MigrateValidate => Request::Migrate(Migrate::Validate),
            Command::MigrateUp { to, .. } => Request::Migrate(Migrate::Up { to }),
            Command::MigrateDown { to, .. } => Request::Migrate(Migrate::Down { to }),
            Command::MigrateRepair => Request::Migrate(Migrate::Repair),
            Command::MigrateStamp { version } => Request::Migrate(Migrate::Stamp { version }),
            Command::Status | Command::Reload | Command::Jobs | Command::JobCancel { .. } => {
                return Err(DaemonOnly(command))
            }
        })
    }
}

/// What a command produced. Serializes to the verb's result as documented
/// in `docs/control-protocol.md` (no wrapper, no tag).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Backup(BackupOutcome),
    List(ListOutcome),
    Show(ShowOutcome),
    Verify(VerifyOutcome),
    Diff(DiffOutcome),
    Check(CheckOutcome),
    Delete(DeleteOutcome),
    Prune(PruneReport),
    Restore(RestoreOutcome),
    RestorePhysical(PhysicalRestored),
    Query(QueryOutcome),
    Migration(MigrationReport),
}

impl Outcome {
    /// The result as it goes on the wire (and into the job table and audit log).
    pub fn to_json(&self) -> Value {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Bytes the command wrote to the repository (for the metrics).
    fn bytes_written(&self) -> u64 {
        match self {
            Outcome::Backup(b) => b.bytes_written,
            _ => 0,
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(transparent)]
    Chroma(#[from] ChromaError),
    /// The request itself is wrong (e.g. `query` with both `id` and `vector`).
    #[error("{0}")]
    BadRequest(String),
}

impl CommandError {
    /// The stable error `kind` on the control socket.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Backup(e) => e.kind(),
            CommandError::Migration(e) => e.code(),
            CommandError::Chroma(_) => "chroma",
            CommandError::BadRequest(_) => crate::control::kind::BAD_REQUEST,
        }
    }
}

/// Carries out one command to completion: the one dispatch used by the
/// daemon's control handler, its scheduler and the offline CLI. Logs the
/// outcome and records the backup-job metrics.
pub async fn execute(
    ctx: &Context,
    request: Request,
    trigger: Trigger,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Outcome, CommandError> {
    let started = Instant::now();
    let name = request.name();
    let kind = request.job_kind();
    let metered = request.metered();
    let is_migration = matches!(request, Request::Migrate(_));
    let is_query = matches!(request, Request::Query(_));
    let result = dispatch(ctx, request, trigger, progress, cancel).await;
    if metered {
        let bytes = result.as_ref().map_or(0, Outcome::bytes_written);
        let label = kind.map_or("backup_command", JobKind::as_str);
        ctx.metrics
            .backup_job(label, result.is_ok(), started.elapsed(), bytes);
    }
    let job = kind.map_or("backup_command", JobKind::as_str);
    match (&result, is_migration) {
        _ if is_query => {}
        (Ok(_), false) => tracing::info!(
            job,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup command finished"
        ),
        (Err(e), false) => tracing::error!(job, error = %e, "backup command failed"),
        (Err(e), true) => {
            tracing::error!(command = name, error = %e, "migration command failed");
        }
        (Ok(_), true) => {}
    }
    result
}

async fn dispatch(
    ctx: &Context,
    request: Request,
    trigger: Trigger,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Outcome, CommandError> {
    Ok(match request {
        Request::Backup(r) => Outcome::Backup(r.run(ctx, trigger, progress, cancel).await?),
        Request::List(r) => Outcome::List(r.run(ctx).await?),
        Request::Show(r) => Outcome::Show(r.run(ctx).await?),
        Request::Verify(r) => Outcome::Verify(r.run(ctx, progress).await?),
        Request::Diff(r) => Outcome::Diff(r.run(ctx, progress).await?),
        Request::Check(r) => Outcome::Check(r.run(ctx).await?),
        Request::Delete(r) => Outcome::Delete(r.run(ctx).await?),
        Request::Prune(r) => Outcome::Prune(r.run(ctx).await?),
        Request::Restore(r) => Outcome::Restore(r.run(ctx, progress, cancel).await?),
        Request::RestorePhysical(r) => {
            Outcome::RestorePhysical(r.run(ctx, progress, cancel).await?)
        }
        Request::Query(r) => Outcome::Query(r.run(ctx).await?),
        Request::Migrate(r) => Outcome::Migration(r.run(ctx, progress, cancel).await?),
    })
}

/// A snapshot id as given, or for `latest` the newest snapshot's.
async fn resolve_id(m: &BackupManager, id: &str) -> Result<String, BackupError> {
    if id != "latest" {
        return Ok(id.to_string());
    }
    m.list()
        .await?
        .first()
        .map(|s| s.metadata.backup_id.to_string())
        .ok_or_else(|| BackupError::NoSnapshot("latest".into()))
}
