//! `backups verify`: check a snapshot's objects (sizes; with `full`, their
//! contents and the key).

use super::{resolve_id, Context, Progress};
use crate::backup::BackupError;

pub use crate::backup::VerifyReport;

/// Verify snapshot `id` (or `latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verify {
    pub id: String,
    pub full: bool,
}

impl Verify {
    pub(super) async fn run(
        self,
        ctx: &Context,
        progress: &Progress,
    ) -> Result<VerifyReport, BackupError> {
        let m = ctx.backups(false).await?;
        let id = resolve_id(&m, &self.id).await?;
        m.verify(&id, self.full, progress).await
    }
}
