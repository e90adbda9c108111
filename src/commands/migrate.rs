//! The `migrate` verbs: status, validate, up, down, repair, stamp.

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Context, Progress};
use crate::migrate::{MigrationError, MigrationManager};

/// One migration command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// Files and history side by side, what is pending and what is wrong.
    Status,
    /// Check the files against the recorded history.
    Validate,
    /// Apply pending migrations up to `to` (default: all).
    Up { to: Option<u32> },
    /// Undo applied migrations above version `to`.
    Down { to: u32 },
    /// Accept edited files, forget missing ones, clear failed runs.
    Repair,
    /// Record `version` as current without running anything.
    Stamp { version: u32 },
}

impl Migrate {
    /// The command's `cmd` name on the control socket.
    pub fn name(self) -> &'static str {
        match self {
            Migrate::Status => "migrate_status",
            Migrate::Validate => "migrate_validate",
            Migrate::Up { .. } => "migrate_up",
            Migrate::Down { .. } => "migrate_down",
            Migrate::Repair => "migrate_repair",
            Migrate::Stamp { .. } => "migrate_stamp",
        }
    }

    pub(super) async fn run(
        self,
        ctx: &Context,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<MigrationReport, MigrationError> {
        let m = MigrationManager::new(ctx.store.clone(), ctx.config.clone(), ctx.metrics.clone());
        let report = match self {
            Migrate::Status => m.status().await,
            Migrate::Validate => m.validate().await,
            Migrate::Up { to } => m.up(to, progress, cancel).await,
            Migrate::Down { to } => m.down(to, progress, cancel).await,
            Migrate::Repair => m.repair(progress).await,
            Migrate::Stamp { version } => m.stamp(version, progress).await,
        }?;
        Ok(MigrationReport(report))
    }
}

/// What a migration command reports, as `MigrationManager` returns it (see
/// `docs/control-protocol.md`).
// The manager returns JSON today; when it returns its typed reports, this
// wrapper becomes those types and `run` above is the only place to change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct MigrationReport(pub Value);
