//! `backups list`: the snapshots in the repository, newest first.

use serde::Serialize;

use super::Context;
use crate::backup::BackupError;
use crate::backup::SnapshotSummary;

/// List the snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List;

impl List {
    pub(super) async fn run(self, ctx: &Context) -> Result<ListOutcome, BackupError> {
        match ctx.backups(false).await {
            Ok(m) => Ok(ListOutcome {
                snapshots: m.list().await?,
            }),
            // No backup taken yet: an empty list, not an error.
            Err(BackupError::NoRepository { .. }) => Ok(ListOutcome {
                snapshots: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }
}

/// `{"snapshots": [...]}`, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct ListOutcome {
    pub snapshots: Vec<SnapshotSummary>,
}
