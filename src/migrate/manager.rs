//! `MigrationManager`: status, up, down, validate, repair and stamp.
//!
//! Every run checks without the lock (nothing to do is cheap), takes the
//! lock, reads the history again and plans again (another runner may have
//! applied everything meanwhile), takes a restore point, then migrates one
//! version at a time, recording each in the history before and after.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::file::{load_dir, Migration, Operation};
use super::history::{HistoryEntry, HistoryStore, Outcome};
use super::lease::{runner_id, MigrationLease};
use super::ops::apply;
use super::plan::{kept_in_the_way, plan_down, plan_up, problems, Direction, KeptInTheWay, Step};
use super::report::{
    AppliedMigration, DownReport, MigrationReport, MigrationRow, MigrationState, MigrationStatus,
    RepairReport, StampReport, UndoneMigration, Validation,
};
use super::tracker::Tracker;
use super::MigrationError;
use crate::backup::{BackupError, BackupManager, BackupRequest, BackupType, Trigger};
use crate::chroma::ProductionChromaStore;
use crate::config::Config;
use crate::observe::MetricsCollector;
use crate::progress::{Event, MigrateDetail, MigrateStep, Progress};

/// Runs migrations against the configured Chroma.
#[derive(Clone)]
pub struct MigrationManager {
    store: ProductionChromaStore,
    config: Arc<Config>,
    metrics: Arc<MetricsCollector>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn highest_applied(history: &[HistoryEntry]) -> u32 {
    history
        .iter()
        .filter(|h| h.outcome.is_applied())
        .map(|h| h.version)
        .max()
        .unwrap_or(0)
}

impl MigrationManager {
    pub fn new(
        store: ProductionChromaStore,
        config: Arc<Config>,
        metrics: Arc<MetricsCollector>,
    ) -> Self {
        MigrationManager {
            store,
            config,
            metrics,
        }
    }

    /// The migration files, loaded and checked.
    pub fn files(&self) -> Result<Vec<Migration>, MigrationError> {
        load_dir(&self.config.migrations.path)
    }

    /// The recorded history (empty if none was ever recorded).
    pub async fn history(&self) -> Result<Vec<HistoryEntry>, MigrationError> {
        let h = HistoryStore::peek(&self.store, &self.config.migrations.history_collection).await?;
        self.metrics.migration_version(highest_applied(&h));
        Ok(h)
    }

    /// Every version, file and record side by side, with what is pending
    /// and what is wrong.
    pub async fn status(&self) -> Result<MigrationStatus, MigrationError> {
        let history = self.history().await?;
        let (files, file_problems) = match self.files() {
            Ok(f) => (f, Vec::new()),
            Err(MigrationError::Invalid { problems }) => (Vec::new(), problems),
            Err(e) => return Err(e),
        };
        let mut versions: Vec<u32> = files
            .iter()
            .map(|m| m.version)
            .chain(history.iter().map(|h| h.version))
            .collect();
        versions.sort_unstable();
        versions.dedup();
        let rows: Vec<MigrationRow> = versions
            .iter()
            .map(|v| {
                let f = files.iter().find(|m| m.version == *v);
                let h = history.iter().find(|h| h.version == *v);
                let state = match h {
                    Some(h) if h.outcome.is_applied() => {
                        if f.is_some_and(|f| f.checksum != h.checksum)
                            && h.outcome == Outcome::Applied
                        {
                            MigrationState::AppliedFileChanged
                        } else if f.is_none() && h.outcome == Outcome::Applied {
                            MigrationState::AppliedFileMissing
                        } else if h.outcome == Outcome::Baselined {
                            MigrationState::Stamped
                        } else {
                            MigrationState::Applied
                        }
                    }
                    Some(h) if h.outcome == Outcome::Failed => MigrationState::Failed,
                    Some(_) => MigrationState::Interrupted,
                    None => MigrationState::Pending,
                };
                MigrationRow {
                    version: *v,
                    name: f
                        .map(|f| f.name.clone())
                        .or_else(|| h.map(|h| h.name.clone())),
                    state,
                    applied_at: h.map(|h| h.applied_at.clone()),
                    applied_by: h.map(|h| h.applied_by.clone()),
                    duration_ms: h.map(|h| h.duration_ms),
                    error: h.and_then(|h| h.error.clone()),
                    restore_point: h.and_then(|h| h.restore_point.clone()),
                }
            })
            .collect();
        let mut all_problems = file_problems;
        all_problems.extend(problems(&files, &history).iter().map(ToString::to_string));
        let pending = if all_problems.is_empty() {
            plan_up(&files, &history, None)?
                .into_iter()
                .map(|s| s.version)
                .collect()
        } else {
            Vec::new()
        };
        Ok(MigrationStatus {
            version: highest_applied(&history),
            migrations: rows,
            pending,
            problems: all_problems,
            path: self.config.migrations.path.clone(),
        })
    }

    /// Files and history agree (Flyway's `validate`); all problems at once.
    pub async fn validate(&self) -> Result<Validation, MigrationError> {
        let files = self.files()?;
        let history = self.history().await?;
        let ps = problems(&files, &history);
        if !ps.is_empty() {
            if ps.len() == 1 {
                return Err(ps.into_iter().next().unwrap_or(MigrationError::Invalid {
                    problems: Vec::new(),
                }));
            }
            return Err(MigrationError::Invalid {
                problems: ps.iter().map(ToString::to_string).collect(),
            });
        }
        Ok(Validation {
            valid: true,
            files: files.len(),
            version: highest_applied(&history),
            pending: plan_up(&files, &history, None)?
                .iter()
                .map(|s| s.version)
                .collect(),
        })
    }

    /// What `up` would run now, without the lock.
    pub async fn pending(&self) -> Result<Vec<Step>, MigrationError> {
        plan_up(&self.files()?, &self.history().await?, None)
    }

    /// Runs `f` holding the migration lock (waiting for it as configured),
    /// and releases the lock afterwards whatever `f` returned. `f` writes
    /// the history only through the lease, which fences every write.
    async fn locked<T>(
        &self,
        progress: &Progress,
        f: impl AsyncFnOnce(&MigrationLease) -> Result<T, MigrationError>,
    ) -> Result<T, MigrationError> {
        let history = HistoryStore::open(
            self.store.clone(),
            &self.config.migrations.history_collection,
        )
        .await?;
        let me = runner_id();
        let mut told = false;
        let lease = MigrationLease::acquire(
            &history,
            &me,
            self.config.migrations.lock_ttl,
            self.config.migrations.lock_wait,
            |holder| {
                if !told {
                    tracing::info!(holder, "waiting for the migration lock");
                    told = true;
                }
                progress.send(Event::WaitingForLock {
                    holder: holder.to_string(),
                });
            },
        )
        .await?;
        tracing::info!(token = lease.token(), "migration lock taken");
        let r = f(&lease).await;
        lease.release().await;
        r
    }

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
        let tracker = Tracker {
            store: &self.store,
            lease,
            entry: &entry,
            version: m.version,
            progress,
            cancel,
            last_save: std::sync::Mutex::new(None),
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

    /// Undoes applied migrations above version `to`.
    pub async fn down(
        &self,
        to: u32,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<DownReport, MigrationError> {
        let files = self.files()?;
        // Refuse early: a down list that cannot be derived.
        for s in plan_down(&files, &self.history().await?, to)? {
            if let Some(m) = files.iter().find(|m| m.version == s.version) {
                m.down_ops()?;
            }
        }
        self.locked(progress, async |lease| {
            self.down_locked(&files, to, lease, progress, cancel).await
        })
        .await
    }

    async fn down_locked(
        &self,
        files: &[Migration],
        to: u32,
        lease: &MigrationLease,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<DownReport, MigrationError> {
        let recorded = lease.entries().await?;
        let steps = plan_down(files, &recorded, to)?;
        let mut undone = Vec::new();
        for step in &steps {
            let m = files
                .iter()
                .find(|m| m.version == step.version)
                .ok_or(MigrationError::NoSuchVersion(step.version))?;
            let Some(mut entry) = recorded.iter().find(|h| h.version == m.version).cloned() else {
                continue;
            };
            let started = Instant::now();
            tracing::info!(migration = m.version, name = %m.name, "undoing migration");
            entry.checkpoint = None;
            let cell = Mutex::new(entry);
            let tracker = Tracker {
                store: &self.store,
                lease,
                entry: &cell,
                version: m.version,
                progress,
                cancel,
                last_save: std::sync::Mutex::new(None),
            };
            let mut result = Ok(());
            for op in m.down_ops()? {
                progress.send(Event::MigrateDown {
                    version: m.version,
                    operation: op.name().to_string(),
                });
                cell.lock().await.checkpoint = None;
                if let Err(e) = apply(&op, &tracker).await {
                    result = Err((op.name(), e));
                    break;
                }
            }
            self.metrics.migration_run("down", result.is_ok());
            if let Err((op, e)) = result {
                let mut entry = cell.lock().await;
                entry.error = Some(format!("down failed at {op}: {e}"));
                entry.checkpoint = None;
                let _ = lease.record(&entry).await;
                return Err(MigrationError::Failed {
                    version: m.version,
                    name: m.name.clone(),
                    op_index: 0,
                    op: op.to_string(),
                    why: e.to_string(),
                    state: "the migration is still recorded as applied; fix the cause and run `chromaprod migrate down` again".into(),
                });
            }
            lease.forget(m.version).await?;
            tracing::info!(
                migration = m.version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "migration undone"
            );
            undone.push(UndoneMigration {
                version: m.version,
                name: m.name.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        let now = lease.entries().await?;
        self.metrics.migration_version(highest_applied(&now));
        Ok(DownReport {
            undone,
            version: highest_applied(&now),
        })
    }

    /// Flyway's `repair`: accept edited files of applied migrations (record
    /// their new checksums), forget applied migrations whose files are gone,
    /// and clear failed runs so they start again from their first operation.
    pub async fn repair(&self, progress: &Progress) -> Result<RepairReport, MigrationError> {
        let files = self.files()?;
        self.locked(progress, async |lease| {
            let mut realigned = Vec::new();
            let mut forgotten = Vec::new();
            let mut cleared = Vec::new();
            for mut h in lease.entries().await? {
                let file = files.iter().find(|m| m.version == h.version);
                match (h.outcome, file) {
                    (Outcome::Baselined, _) => {}
                    (Outcome::Failed, _) => {
                        lease.forget(h.version).await?;
                        cleared.push(h.version);
                    }
                    (_, None) => {
                        lease.forget(h.version).await?;
                        forgotten.push(h.version);
                    }
                    (_, Some(f)) if f.checksum != h.checksum => {
                        h.checksum = f.checksum.clone();
                        h.name = f.name.clone();
                        lease.record(&h).await?;
                        realigned.push(h.version);
                    }
                    _ => {}
                }
            }
            tracing::info!(
                ?realigned,
                ?forgotten,
                ?cleared,
                "migration history repaired"
            );
            Ok(RepairReport {
                checksums_realigned: realigned,
                forgotten,
                failures_cleared: cleared,
            })
        })
        .await
    }

    /// Records `version` as the current one without running anything:
    /// versions up to it are marked applied (stamped), records above it are
    /// removed. Use it to adopt an existing database (Flyway's `baseline`)
    /// or after fixing things by hand.
    pub async fn stamp(
        &self,
        version: u32,
        progress: &Progress,
    ) -> Result<StampReport, MigrationError> {
        let files = self.files()?;
        if version != 0 && !files.iter().any(|m| m.version == version) {
            return Err(MigrationError::NoSuchVersion(version));
        }
        self.locked(progress, async |lease| {
            let recorded = lease.entries().await?;
            let mut stamped = Vec::new();
            let mut removed = Vec::new();
            for m in files.iter().filter(|m| m.version <= version) {
                let current = recorded.iter().find(|h| h.version == m.version);
                if current.is_some_and(|h| h.outcome.is_applied() && h.checksum == m.checksum) {
                    continue;
                }
                lease
                    .record(&HistoryEntry {
                        version: m.version,
                        name: m.name.clone(),
                        checksum: m.checksum.clone(),
                        outcome: Outcome::Baselined,
                        applied_at: now_rfc3339(),
                        applied_by: lease_holder(),
                        token: lease.token(),
                        ..HistoryEntry::default()
                    })
                    .await?;
                stamped.push(m.version);
            }
            for h in recorded.iter().filter(|h| h.version > version) {
                lease.forget(h.version).await?;
                removed.push(h.version);
            }
            self.metrics.migration_version(version);
            tracing::info!(version, ?stamped, ?removed, "migration history stamped");
            Ok(StampReport {
                version,
                stamped,
                removed,
            })
        })
        .await
    }
}

struct Compensation {
    rolled_back: bool,
    message: String,
}

fn lease_holder() -> String {
    let id = runner_id();
    id.rsplit_once(" #")
        .map_or(id.clone(), |(h, _)| h.to_string())
}

/// The steps' direction as a word (logs, metrics).
pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Up => "up",
        Direction::Down => "down",
    }
}
