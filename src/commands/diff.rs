//! `backups diff`: what changed between two snapshots, or between a
//! snapshot and the live collections — per collection, the records added,
//! changed and removed (with `ids`, which). Read-only.

use super::{resolve_id, Context, Progress};
use crate::backup::diff::DiffTarget;
use crate::backup::{BackupError, SnapshotId};

pub use crate::backup::diff::{CollectionDiff, CollectionStatus, DiffIds, DiffOutcome};

/// Compare snapshot `id` (or `latest`) with snapshot `other`, or with the
/// live collections (`live`); exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub id: String,
    pub other: Option<String>,
    pub live: bool,
    /// Only this collection (it must be on one side at least).
    pub collection: Option<String>,
    /// List the ids of each category.
    pub ids: bool,
}

impl Diff {
    /// The second side, or why the request names none or two.
    fn target(&self) -> Result<Option<&str>, BackupError> {
        match (&self.other, self.live) {
            (Some(_), true) => Err(BackupError::Invalid(
                "give either a second snapshot id or --live, not both".into(),
            )),
            (None, false) => Err(BackupError::Invalid(
                "give a second snapshot id to compare with, or --live to compare with the collections in Chroma now".into(),
            )),
            (other, _) => Ok(other.as_deref()),
        }
    }

    pub(super) async fn run(
        self,
        ctx: &Context,
        progress: &Progress,
    ) -> Result<DiffOutcome, BackupError> {
        let other = self.target()?;
        let m = ctx.backups(false).await?;
        let from = SnapshotId::parse(&resolve_id(&m, &self.id).await?)?;
        let to = match other {
            Some(o) => DiffTarget::Snapshot(SnapshotId::parse(&resolve_id(&m, o).await?)?),
            None => DiffTarget::Live,
        };
        m.diff(&from, &to, self.collection.as_deref(), self.ids, progress)
            .await
    }
}
