//! Compatibility for the offline CLI, which runs migration commands through
//! here until it calls [`crate::commands::execute`] itself. Remove at the
//! merge of the CLI split.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::backups::BackupContext;
use crate::commands::{self, CommandError, Progress, Request};
use crate::control::Command;
use crate::migrate::MigrationError;

/// Runs one migration command to completion.
pub async fn execute(
    ctx: &BackupContext,
    command: &Command,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Value, MigrationError> {
    let not_migration =
        || MigrationError::Conflict(format!("{} is not a migration command", command.name()));
    let request = match Request::try_from(command.clone()) {
        Ok(r @ Request::Migrate(_)) => r,
        _ => return Err(not_migration()),
    };
    match commands::execute(ctx, request, commands::Trigger::Command, progress, cancel).await {
        Ok(outcome) => Ok(outcome.to_json()),
        Err(CommandError::Migration(e)) => Err(e),
        Err(_) => Err(not_migration()),
    }
}

/// Whether `command` is one of the migration commands.
pub fn is_migration(command: &Command) -> bool {
    matches!(Request::try_from(command.clone()), Ok(Request::Migrate(_)))
}
