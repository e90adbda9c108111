//! `backups delete`: remove a snapshot (its chunks go at the next prune).

use serde::Serialize;

use super::Context;
use crate::backup::BackupError;

/// Delete snapshot `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub id: String,
}

impl Delete {
    pub(super) async fn run(self, ctx: &Context) -> Result<DeleteOutcome, BackupError> {
        ctx.backups(false).await?.delete(&self.id).await?;
        Ok(DeleteOutcome { deleted: self.id })
    }
}

/// `{"deleted": ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteOutcome {
    pub deleted: String,
}
