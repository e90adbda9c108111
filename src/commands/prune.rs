//! `prune`: apply retention and delete what no snapshot references.

use super::Context;
use crate::backup::BackupError;

pub use crate::backup::PruneReport;

/// Prune the repository; with `dry_run`, only say what would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prune {
    pub dry_run: bool,
}

impl Prune {
    pub(super) async fn run(self, ctx: &Context) -> Result<PruneReport, BackupError> {
        ctx.backups(false).await?.prune(self.dry_run).await
    }
}
