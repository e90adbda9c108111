//! `migrate up`: pending migrations applied in order under the lock, after
//! a restore point; a failed one is undone where each operation has an
//! obvious inverse, and an interrupted one resumes from its checkpoint.

use std::time::Instant;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::file::Migration;
use super::history::{HistoryEntry, Outcome};
use super::lease::MigrationLease;
use super::manager::{highest_applied, lease_holder, now_rfc3339};
use super::operation::Operation;
use super::ops::apply;
use super::plan::{kept_in_the_way, plan_up, KeptInTheWay, Step};
use super::report::{AppliedMigration, MigrationReport};
use super::tracker::Tracker;
use super::{MigrationError, MigrationManager};
use crate::backup::{BackupError, BackupManager, BackupRequest, BackupType, Trigger};
use crate::progress::{Event, MigrateDetail, MigrateStep, Progress};

impl MigrationManager {
    /// Applies pending migrations up to `to` (default: all).
    pub async fn up(
        &self,
        to: Option<u32>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<MigrationReport, MigrationError> {
        let files = self.files()?;
        let recorded = self.history().await?;
        if plan_up(&files, &recorded, to)?.is_empty() {
            return Ok(MigrationReport {
                applied: Vec::new(),
                version: highest_applied(&recorded),
                restore_point: None,
            });
        }
        self.locked(progress, async |lease| {
            self.up_locked(&files, to, lease, progress, cancel).await
        })
        .await
    }

    async fn up_locked(
        &self,
        files: &[Migration],
        to: Option<u32>,
        lease: &MigrationLease,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<MigrationReport, MigrationError> {
        let recorded = lease.entries().await?;
        let steps = plan_up(files, &recorded, to)?;
        if steps.is_empty() {
            // Another runner applied them while this one waited.
            return Ok(MigrationReport {
                applied: Vec::new(),
                version: highest_applied(&recorded),
                restore_point: None,
            });
        }
        let restore_point = self
            .restore_point(files, &steps, &recorded, progress, cancel)
            .await?;
        let mut applied = Vec::new();
        for step in &steps {
            let m = files
                .iter()
                .find(|m| m.version == step.version)
                .ok_or(MigrationError::NoSuchVersion(step.version))?;
            let earlier = recorded.iter().find(|h| h.version == m.version).cloned();
            let r = self
                .run_up(m, earlier, restore_point.clone(), lease, progress, cancel)
                .await;
            self.metrics.migration_run("up", r.is_ok());
            let v = r?;
            self.metrics
                .migration_version(m.version.max(highest_applied(&recorded)));
            applied.push(v);
        }
        let now = lease.entries().await?;
        self.metrics.migration_version(highest_applied(&now));
        Ok(MigrationReport {
            applied,
            version: highest_applied(&now),
            restore_point: Some(restore_point),
        })
    }

    /// A backup of the existing collections the steps touch, through the
    /// backup manager (`migrations.restore_point`), including the kept
    /// collections of earlier runs that the steps would delete; with
    /// restore points off, such a deletion is refused before anything runs.
    async fn restore_point(
        &self,
        files: &[Migration],
        steps: &[Step],
        recorded: &[HistoryEntry],
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Option<String>, MigrationError> {
        let existing: std::collections::HashSet<String> = self
            .store
            .list_collections()
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        let migrations: Vec<&Migration> = steps
            .iter()
            .filter_map(|s| files.iter().find(|m| m.version == s.version))
            .collect();
        let kept: Vec<KeptInTheWay> = migrations
            .iter()
            .flat_map(|m| kept_in_the_way(m, recorded.iter().find(|h| h.version == m.version)))
            .filter(|k| existing.contains(&k.kept))
            .collect();
        if !self.config.migrations.restore_point {
            if let Some(k) = kept.into_iter().next() {
                return Err(MigrationError::KeptCollection {
                    version: k.version,
                    collection: k.collection,
                    kept: k.kept,
                });
            }
            return Ok(None);
        }
        for k in &kept {
            tracing::warn!(migration = k.version, kept = %k.kept, "a collection kept by an earlier run will be deleted; the restore point covers it");
        }
        let mut touched: Vec<String> = migrations
            .iter()
            .flat_map(|m| m.collections())
            .filter(|c| existing.contains(c))
            .chain(kept.into_iter().map(|k| k.kept))
            .collect();
        touched.sort();
        touched.dedup();
        if touched.is_empty() {
            return Ok(None);
        }
        progress.send(Event::RestorePoint {
            collections: touched.clone(),
        });
        let manager = BackupManager::open(self.store.clone(), self.config.clone(), true)
            .await
            .map_err(MigrationError::RestorePoint)?;
        let manifest = manager
            .create(
                BackupRequest {
                    backup_type: BackupType::Collection,
                    collections: touched,
                    trigger: Trigger::Migration,
                },
                progress,
                cancel,
            )
            .await
            .map_err(|e| match e {
                BackupError::Cancelled => MigrationError::Cancelled,
                e => MigrationError::RestorePoint(e),
            })?;
        tracing::info!(backup_id = %manifest.snapshot_id, "restore point taken before migrating");
        Ok(Some(manifest.snapshot_id.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_up(
        &self,
        m: &Migration,
        earlier: Option<HistoryEntry>,
        restore_point: Option<String>,
        lease: &MigrationLease,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<AppliedMigration, MigrationError> {
        let started = Instant::now();
        // An interrupted or failed run of the same file resumes where it was.
        let resume = earlier.filter(|h| {
            matches!(h.outcome, Outcome::Running | Outcome::Failed) && h.checksum == m.checksum
        });
        let from = resume.as_ref().map_or(0, |h| h.op_index.min(m.up.len()));
        // A resumed run keeps the restore point taken before it first started.
        let restore_point = resume
            .as_ref()
            .and_then(|h| h.restore_point.clone())
            .or(restore_point);
        let entry = HistoryEntry {
            version: m.version,
            name: m.name.clone(),
            checksum: m.checksum.clone(),
            outcome: Outcome::Running,
            applied_at: now_rfc3339(),
            applied_by: lease_holder(),
            duration_ms: 0,
            error: None,
            op_index: from,
            checkpoint: resume.and_then(|h| h.checkpoint),
            restore_point: restore_point.clone(),
            token: lease.token(),
        };
        lease.record(&entry).await?;
        if from > 0 || entry.checkpoint.is_some() {
            tracing::info!(migration = m.version, op_index = from, "resuming migration");
        } else {
            tracing::info!(migration = m.version, name = %m.name, "applying migration");
        }
        let entry = Mutex::new(entry);
        let local =
            crate::chroma::local::LocalChroma::configured(&self.config, self.store.metrics()).await;
        let tracker = Tracker {
            store: &self.store,
            lease,
            entry: &entry,
            version: m.version,
            progress,
            cancel,
            last_save: std::sync::Mutex::new(None),
            local: local.clone(),
        };
        let mut results = Vec::new();
        for (i, op) in m.up.iter().enumerate().skip(from) {
            progress.send(Event::Migrate(MigrateStep {
                version: m.version,
                operation: op.name().to_string(),
                detail: MigrateDetail::Started {
                    name: m.name.clone(),
                    op_index: i,
                    ops: m.up.len(),
                },
            }));
            match apply(op, &tracker).await {
                Ok(v) => {
                    results.push(v);
                    let mut e = entry.lock().await;
                    e.op_index = i + 1;
                    e.checkpoint = None;
                    lease.record(&e).await?;
                }
                Err(err @ (MigrationError::Cancelled | MigrationError::LockLost { .. })) => {
                    // Stays "running": the next up resumes from the checkpoint.
                    return Err(err);
                }
                Err(err) => {
                    let state = self
                        .compensate(m, i, op, &tracker, restore_point.as_deref())
                        .await;
                    let mut e = entry.lock().await;
                    e.outcome = Outcome::Failed;
                    e.duration_ms = started.elapsed().as_millis() as u64;
                    e.error = Some(err.to_string());
                    if state.rolled_back {
                        e.op_index = 0;
                        e.checkpoint = None;
                    }
                    let _ = lease.record(&e).await;
                    let failure = MigrationError::Failed {
                        version: m.version,
                        name: m.name.clone(),
                        op_index: i + 1,
                        op: op.name().to_string(),
                        why: err.to_string(),
                        state: state.message,
                    };
                    tracing::error!(migration = m.version, error = %failure, "migration failed");
                    return Err(failure);
                }
            }
        }
        let mut e = entry.lock().await;
        e.outcome = Outcome::Applied;
        e.duration_ms = started.elapsed().as_millis() as u64;
        e.op_index = m.up.len();
        e.checkpoint = None;
        lease.record(&e).await?;
        tracing::info!(migration = m.version, name = %m.name, elapsed_ms = e.duration_ms, "migration applied");
        Ok(AppliedMigration {
            version: m.version,
            name: m.name.clone(),
            duration_ms: e.duration_ms,
            operations: results,
        })
    }

    /// After `up` failed at operation `i`: undo the operations before it
    /// (and a half-done key rename) where each has an obvious inverse.
    async fn compensate(
        &self,
        m: &Migration,
        i: usize,
        failed: &Operation,
        tracker: &Tracker<'_>,
        restore_point: Option<&str>,
    ) -> Compensation {
        let mut undo: Vec<Operation> = Vec::new();
        let mut complete = true;
        // A record operation that got past its first batch changed some
        // records: only a key rename (without `where`) can be undone then.
        let partly_done = tracker.entry.lock().await.checkpoint.is_some();
        match failed {
            Operation::RenameMetadataKey { where_: None, .. } => {
                undo.extend(failed.inverse(m.version));
            }
            Operation::RenameMetadataKey { .. }
            | Operation::SetMetadata { .. }
            | Operation::DeleteMetadataKey { .. }
            | Operation::DeleteRecords { .. }
                if partly_done =>
            {
                complete = false;
            }
            _ => {}
        }
        for op in m.up[..i].iter().rev() {
            match op.inverse(m.version) {
                Some(inv) => undo.push(inv),
                None => complete = false,
            }
        }
        let fallback = match restore_point {
            Some(s) => format!("restore snapshot {s} (taken before migrating) with `chromaprod restore {s} --mode replace`"),
            None => "no restore point was taken (migrations.restore_point is off or nothing existed to back up)".to_string(),
        };
        if !complete {
            return Compensation {
                rolled_back: false,
                message: format!(
                    "what it and the operations before it changed has no obvious inverse and was left as it is; to go back, {fallback}"
                ),
            };
        }
        for op in &undo {
            tracker.entry.lock().await.checkpoint = None;
            if let Err(e) = apply(op, tracker).await {
                return Compensation {
                    rolled_back: false,
                    message: format!("undoing it failed too ({e}); to go back, {fallback}"),
                };
            }
        }
        Compensation {
            rolled_back: true,
            message: format!(
                "{} earlier operation(s) were undone, so the data is as it was; fix the cause and run `chromaprod migrate up` again",
                i
            ),
        }
    }
}

struct Compensation {
    rolled_back: bool,
    message: String,
}
