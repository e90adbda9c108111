//! `restore ID --data-dir DIR`: a physical snapshot written as a complete
//! persist directory into an empty directory, for a stopped Chroma to start
//! on (`backup::physical`). It writes files where the process runs: the
//! offline CLI as the operator is the main path; through the daemon, DIR
//! must be writable by the daemon's user and sandbox.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{resolve_id, Context, Progress};
use crate::backup::{BackupError, PhysicalRestoreOptions};

/// Restore physical snapshot `id` (or `latest`) into `data_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePhysical {
    pub id: String,
    /// New or empty; absolute.
    pub data_dir: PathBuf,
    /// Restore onto other migration levels than the local Chroma's.
    pub force: bool,
}

/// What the restore wrote: `{"snapshot", "data_dir", "files", "bytes", …}`.
pub use crate::backup::PhysicalRestored;

impl RestorePhysical {
    pub(super) async fn run(
        self,
        ctx: &Context,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<PhysicalRestored, BackupError> {
        let m = ctx.backups(false).await?;
        let id = if self.id == "latest" {
            m.list()
                .await?
                .into_iter()
                .find(|s| s.metadata.backup_type == crate::backup::BackupType::Physical)
                .map(|s| s.metadata.backup_id.to_string())
                .ok_or_else(|| BackupError::NoSnapshot("latest physical".into()))?
        } else {
            resolve_id(&m, &self.id).await?
        };
        let opts = PhysicalRestoreOptions {
            data_dir: self.data_dir,
            force: self.force,
        };
        let restored = m.restore_physical(&id, &opts, progress, cancel).await?;
        tracing::info!(backup_id = %restored.snapshot, data_dir = %restored.data_dir, files = restored.files, bytes = restored.bytes, "physical snapshot restored");
        Ok(restored)
    }
}
