//! `backups show`: one snapshot's manifest.

use serde::Serialize;

use super::{resolve_id, Context};
use crate::backup::{BackupError, Manifest};

/// Show snapshot `id` (or `latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Show {
    pub id: String,
}

impl Show {
    pub(super) async fn run(self, ctx: &Context) -> Result<ShowOutcome, BackupError> {
        let m = ctx.backups(false).await?;
        let id = resolve_id(&m, &self.id).await?;
        Ok(ShowOutcome(m.show(&id).await?))
    }
}

/// The snapshot's manifest, as stored.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ShowOutcome(pub Manifest);
