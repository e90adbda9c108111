//! The `migrate` verbs: status, validate, up, down, repair, stamp.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Context, Progress};
use crate::migrate::{self, MigrationError, MigrationManager};

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
        Ok(match self {
            Migrate::Status => MigrationReport::Status(m.status().await?),
            Migrate::Validate => MigrationReport::Validation(m.validate().await?),
            Migrate::Up { to } => MigrationReport::Up(m.up(to, progress, cancel).await?),
            Migrate::Down { to } => MigrationReport::Down(m.down(to, progress, cancel).await?),
            Migrate::Repair => MigrationReport::Repair(m.repair(progress).await?),
            Migrate::Stamp { version } => MigrationReport::Stamp(m.stamp(version, progress).await?),
        })
    }
}

/// What a migration command reports: the manager's typed report of that
/// verb, serialized as it is (see `docs/control-protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MigrationReport {
    Status(migrate::MigrationStatus),
    Validation(migrate::Validation),
    Up(migrate::MigrationReport),
    Down(migrate::DownReport),
    Repair(migrate::RepairReport),
    Stamp(migrate::StampReport),
}
