//! `backups check`: every stored object checked for damage, without the key.

use serde::Serialize;

use super::Context;
use crate::backup::repository::Repository;
use crate::backup::BackupError;

/// Check every object of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check;

impl Check {
    pub(super) async fn run(self, ctx: &Context) -> Result<CheckOutcome, BackupError> {
        let repo = Repository::open_keyless(
            &ctx.config.backup.storage_path,
            &crate::storage::StorageOptions::default(),
        )
        .await?;
        Ok(CheckOutcome {
            objects_checked: repo.check_objects().await?,
            key_used: false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    pub objects_checked: u64,
    /// Always `false`: the check reads stored bytes only.
    pub key_used: bool,
}
