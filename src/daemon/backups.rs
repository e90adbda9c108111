//! Compatibility for the offline CLI, which runs backup commands through
//! here until it calls [`crate::commands::execute`] itself. Remove at the
//! merge of the CLI split.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::backup::{BackupError, Trigger};
use crate::commands::{self, CommandError, Progress, Request};
use crate::control::Command;

/// What commands need (now [`commands::Context`]).
pub type BackupContext = commands::Context;

/// Runs one backup command to completion: [`commands::execute`] with the
/// wire command's request and the outcome as JSON.
pub async fn execute(
    ctx: &BackupContext,
    command: &Command,
    trigger: Trigger,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Value, BackupError> {
    let request =
        Request::try_from(command.clone()).map_err(|e| BackupError::Invalid(e.to_string()))?;
    match commands::execute(ctx, request, trigger, progress, cancel).await {
        Ok(outcome) => Ok(outcome.to_json()),
        Err(CommandError::Backup(e)) => Err(e),
        Err(CommandError::Chroma(e)) => Err(BackupError::Chroma(e)),
        Err(e) => Err(BackupError::Invalid(e.to_string())),
    }
}
