//! `MigrationManager`: status, validate, repair and stamp here; `up` and
//! `down` in their own files.
//!
//! Every run checks without the lock (nothing to do is cheap), takes the
//! lock, reads the history again and plans again (another runner may have
//! applied everything meanwhile), takes a restore point, then migrates one
//! version at a time, recording each in the history before and after.

use std::sync::Arc;

use super::file::{load_dir, Migration};
use super::history::{HistoryEntry, HistoryStore, Outcome};
use super::lease::{runner_id, MigrationLease};
use super::plan::{plan_up, problems, Direction, Step};
use super::report::{
    MigrationRow, MigrationState, MigrationStatus, RepairReport, StampReport, Validation,
};
use super::MigrationError;
use crate::chroma::ProductionChromaStore;
use crate::config::Config;
use crate::observe::MetricsCollector;
use crate::progress::{Event, Progress};

/// Runs migrations against the configured Chroma.
#[derive(Clone)]
pub struct MigrationManager {
    pub(super) store: ProductionChromaStore,
    pub(super) config: Arc<Config>,
    pub(super) metrics: Arc<MetricsCollector>,
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub(super) fn highest_applied(history: &[HistoryEntry]) -> u32 {
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
    pub(super) async fn locked<T>(
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

pub(super) fn lease_holder() -> String {
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
