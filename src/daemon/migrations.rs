//! Migration commands, carried out the same way by the daemon (up and down
//! as jobs) and by the CLI when no daemon runs.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::backups::BackupContext;
use super::jobs::Progress;
use crate::control::Command;
use crate::migrate::{MigrationError, MigrationManager};

/// Runs one migration command to completion.
pub async fn execute(
    ctx: &BackupContext,
    command: &Command,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Value, MigrationError> {
    let m = MigrationManager::new(ctx.store.clone(), ctx.config.clone(), ctx.metrics.clone());
    fn json<T: serde::Serialize>(r: Result<T, MigrationError>) -> Result<Value, MigrationError> {
        r.map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
    }
    let result = match command {
        Command::MigrateStatus => json(m.status().await),
        Command::MigrateValidate => json(m.validate().await),
        Command::MigrateUp { to, .. } => json(m.up(*to, progress, cancel).await),
        Command::MigrateDown { to, .. } => json(m.down(*to, progress, cancel).await),
        Command::MigrateRepair => json(m.repair(progress).await),
        Command::MigrateStamp { version } => json(m.stamp(*version, progress).await),
        other => Err(MigrationError::Conflict(format!(
            "{} is not a migration command",
            other.name()
        ))),
    };
    if let Err(e) = &result {
        tracing::error!(command = command.name(), error = %e, "migration command failed");
    }
    result
}

/// Whether `command` is one of the migration commands.
pub fn is_migration(command: &Command) -> bool {
    matches!(
        command,
        Command::MigrateStatus
            | Command::MigrateValidate
            | Command::MigrateUp { .. }
            | Command::MigrateDown { .. }
            | Command::MigrateRepair
            | Command::MigrateStamp { .. }
    )
}
