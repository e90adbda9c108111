//! Deleting snapshots: one by id, or those retention no longer keeps,
//! with the chunks, indexes, queries objects and blocks no remaining
//! snapshot references.

use std::collections::HashSet;

use serde::Serialize;

use super::manifest::SnapshotId;
use super::repository::snapshot_key;
use super::{BackupError, BackupManager};
use crate::schedule::{select, RetentionPolicy, SnapshotInfo};

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots_kept: Vec<String>,
    pub snapshots_deleted: Vec<String>,
    pub objects_deleted: u64,
    pub bytes_freed: u64,
}

impl BackupManager {
    /// Removes a snapshot's manifest (its chunks go at the next prune).
    pub async fn delete(&self, id: &str) -> Result<(), BackupError> {
        let id = SnapshotId::parse(id)?;
        let _ = self.repo.manifest(&id).await?;
        let lease = self.lock(true, "delete").await?;
        let r = self.repo.delete(&snapshot_key(&id)?).await;
        lease.release().await;
        r
    }

    /// Applies retention, then deletes chunks, indexes and queries no remaining
    /// snapshot references. Holds the exclusive lock, so no backup runs meanwhile.
    pub async fn prune(&self, dry_run: bool) -> Result<PruneReport, BackupError> {
        let lease = self.lock(true, "prune").await?;
        let r = self.prune_locked(dry_run).await;
        lease.release().await;
        r
    }

    async fn prune_locked(&self, dry_run: bool) -> Result<PruneReport, BackupError> {
        let manifests = self.repo.manifests().await?;
        let infos: Vec<SnapshotInfo> = manifests
            .iter()
            .map(|m| SnapshotInfo {
                id: m.snapshot_id.to_string(),
                created_at_ms: humantime::parse_rfc3339(&m.metadata.created_at)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            })
            .collect();
        let now = i64::try_from(crate::host::now_ms()).unwrap_or(i64::MAX);
        let offset = crate::config::parse_utc_offset(&self.config.backup.timezone).unwrap_or(0);
        let decisions = select(
            &infos,
            &RetentionPolicy::from(&self.config.backup),
            now,
            offset,
        );
        let keep: HashSet<String> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.clone())
            .collect();
        let mut referenced: HashSet<String> = HashSet::new();
        for m in manifests
            .iter()
            .filter(|m| keep.contains(m.snapshot_id.as_str()))
        {
            for c in &m.collections {
                for r in &c.chunks {
                    referenced.insert(format!("chunks/{}/{}", &r.id[..2], r.id));
                    referenced.insert(format!("index/{}/{}", &r.index_id[..2], r.index_id));
                }
                if let Some(q) = &c.queries {
                    referenced.insert(format!("queries/{}/{}", &q.id[..2], q.id));
                }
            }
            for f in m.physical.iter().flat_map(|p| &p.files) {
                for b in &f.blocks {
                    referenced.insert(format!("blocks/{}/{}", &b.id[..2], b.id));
                }
            }
        }
        let mut report = PruneReport {
            dry_run,
            snapshots_kept: decisions
                .iter()
                .filter(|d| d.keep)
                .map(|d| d.id.clone())
                .collect(),
            snapshots_deleted: decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.id.clone())
                .collect(),
            objects_deleted: 0,
            bytes_freed: 0,
        };
        let mut doomed = Vec::new();
        for prefix in ["chunks", "index", "queries", "blocks"] {
            for meta in self.repo.list(prefix).await? {
                if !referenced.contains(meta.key.as_str()) {
                    report.objects_deleted += 1;
                    report.bytes_freed += meta.size;
                    doomed.push(meta.key);
                }
            }
        }
        if dry_run {
            return Ok(report);
        }
        // Manifests first: a crash in between leaves unreferenced chunks, never a snapshot without them.
        for id in &report.snapshots_deleted {
            self.repo
                .delete(&snapshot_key(&SnapshotId::parse(id)?)?)
                .await?;
        }
        for key in doomed {
            self.repo.delete(&key).await?;
        }
        Ok(report)
    }
}
