//! The driver: fires each job at its cron's next occurrence, never two runs
//! of one kind at once, remembers the last run of each kind across restarts
//! and catches a missed job up once.
//!
//! Our own loop over [`croner`]'s next occurrence rather than
//! `tokio-cron-scheduler`: that crate compares fire times with
//! `chrono::Utc::now()`, so tokio's paused clock cannot drive it in tests,
//! and it has neither an overlap rule nor a catch-up rule we could use.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use croner::Cron;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::clock::Clock;
use super::plan::{next_fire_of, parse_cron, JobKind, JobSpec};
use super::state::{self, JobRecord, Outcome, Records};

/// The longest the driver sleeps before re-reading the clock.
const MAX_NAP_MS: i64 = 60_000;

/// Why a scheduled run started (logged); the command it runs sees
/// [`crate::commands::Trigger::Schedule`] either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The cron expression fired.
    Schedule,
    /// At start-up: at least one fire time passed while the daemon was down.
    CatchUp,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
        }
    }
}

/// To the command it runs, a scheduled run is triggered by the schedule,
/// whichever the reason it started.
impl From<Trigger> for crate::commands::Trigger {
    fn from(_: Trigger) -> Self {
        crate::commands::Trigger::Schedule
    }
}

/// What carries out a job. In the daemon: the job's command
/// ([`crate::commands::Request::scheduled`]) run by
/// [`crate::commands::execute`] as an entry of the job table. A run returns
/// `Err(message)` on failure; the message is logged and shown by `status`.
/// The scheduler does not cancel runs: a runner that should stop on shutdown
/// watches the daemon's own cancellation token.
pub trait JobRunner: Send + Sync + 'static {
    fn run(
        &self,
        kind: JobKind,
        trigger: Trigger,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// One job as `chromaprod jobs` shows it. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStatus {
    pub kind: JobKind,
    pub cron: String,
    /// `None` when the expression never fires again.
    pub next_fire_ms: Option<i64>,
    pub last_run_ms: Option<i64>,
    pub last_finished_ms: Option<i64>,
    pub last_outcome: Option<Outcome>,
    pub last_error: Option<String>,
    pub running: bool,
    /// Fires skipped because the previous run of this kind was still going
    /// (since the daemon started).
    pub skipped_fires: u64,
}

struct Job {
    cron_text: String,
    cron: Option<Cron>,
    next_fire_ms: Option<i64>,
    catch_up: bool,
    skipped: u64,
}

struct Table {
    utc_offset_secs: i32,
    jobs: BTreeMap<JobKind, Job>,
    /// Persisted; kinds no longer scheduled keep their record.
    records: Records,
    /// Kinds with a run in flight, whether or not still scheduled.
    running: BTreeSet<JobKind>,
    /// `records` changed since the last save.
    dirty: bool,
}

impl Table {
    /// Install `specs` at `now`. At start-up (`starting`), decide catch-up
    /// from the persisted records; later, keep what an unchanged job had.
    fn apply(&mut self, specs: Vec<JobSpec>, utc_offset_secs: i32, now: i64, starting: bool) {
        let offset_changed = utc_offset_secs != self.utc_offset_secs;
        self.utc_offset_secs = utc_offset_secs;
        let mut old = std::mem::take(&mut self.jobs);
        for spec in specs {
            let kind = spec.kind;
            let prev = old.remove(&kind);
            let cron = match parse_cron(&spec.cron) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(job = kind.as_str(), cron = %spec.cron, "not a cron expression ({e}); this job will not run");
                    None
                }
            };
            let record = self.records.entry(kind).or_insert_with(|| {
                self.dirty = true;
                JobRecord::new(now)
            });
            let unchanged = prev
                .as_ref()
                .is_some_and(|p| p.cron_text == spec.cron && !offset_changed);
            let next_fire_ms = match &prev {
                Some(p) if unchanged => p.next_fire_ms,
                _ => cron
                    .as_ref()
                    .and_then(|c| next_fire_of(c, now, utc_offset_secs)),
            };
            let catch_up = if starting {
                let reference = record.last_run_ms.unwrap_or(record.since_ms);
                cron.as_ref()
                    .and_then(|c| next_fire_of(c, reference, utc_offset_secs))
                    .is_some_and(|t| t <= now)
            } else {
                prev.as_ref().is_some_and(|p| p.catch_up)
            };
            if !starting && !unchanged {
                tracing::info!(job = kind.as_str(), cron = %spec.cron, next_fire_ms, "job scheduled");
            }
            self.jobs.insert(
                kind,
                Job {
                    cron_text: spec.cron,
                    cron,
                    next_fire_ms,
                    catch_up,
                    skipped: prev.map_or(0, |p| p.skipped),
                },
            );
        }
        for kind in old.keys() {
            tracing::info!(
                job = kind.as_str(),
                "job no longer scheduled (a run in progress finishes)"
            );
        }
    }

    /// Take the runs due at `now`, mark them running, and advance each job's
    /// next fire past `now`. Returns the runs to start and when to wake next.
    fn take_due(&mut self, now: i64) -> (Vec<(JobKind, Trigger)>, Option<i64>) {
        let mut due = Vec::new();
        let mut wake: Option<i64> = None;
        for (&kind, job) in &mut self.jobs {
            let mut trigger = None;
            if std::mem::take(&mut job.catch_up) {
                trigger = Some(Trigger::CatchUp);
            }
            if job.next_fire_ms.is_some_and(|t| t <= now) {
                // However many fire times passed (a late wake-up), one run.
                job.next_fire_ms = job
                    .cron
                    .as_ref()
                    .and_then(|c| next_fire_of(c, now, self.utc_offset_secs));
                trigger.get_or_insert(Trigger::Schedule);
            }
            if let Some(t) = job.next_fire_ms {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            let Some(trigger) = trigger else { continue };
            if self.running.contains(&kind) {
                job.skipped += 1;
                tracing::warn!(
                    job = kind.as_str(),
                    trigger = trigger.as_str(),
                    skipped_fires = job.skipped,
                    "the previous run is still going: this fire is skipped"
                );
                continue;
            }
            self.running.insert(kind);
            let record = self
                .records
                .entry(kind)
                .or_insert_with(|| JobRecord::new(now));
            record.last_run_ms = Some(now);
            record.running = true;
            self.dirty = true;
            due.push((kind, trigger));
        }
        (due, wake)
    }

    fn finish(&mut self, kind: JobKind, now: i64, result: Result<(), String>) {
        self.running.remove(&kind);
        let record = self
            .records
            .entry(kind)
            .or_insert_with(|| JobRecord::new(now));
        record.running = false;
        record.last_finished_ms = Some(now);
        match result {
            Ok(()) => {
                record.last_outcome = Some(Outcome::Succeeded);
                record.last_error = None;
            }
            Err(e) => {
                record.last_outcome = Some(Outcome::Failed);
                record.last_error = Some(e);
            }
        }
        self.dirty = true;
    }
}

struct Shared {
    clock: Arc<dyn Clock>,
    state_path: PathBuf,
    table: Mutex<Table>,
    /// Wakes the driver after a reschedule.
    wake: Notify,
    /// Serialises writes of the state file.
    save_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent between statements; a panic elsewhere
        // while holding the lock does not make it unusable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write the records if they changed; on failure, log and retry at the
    /// next change.
    async fn save(&self) {
        let _one_writer = self.save_lock.lock().await;
        let records = {
            let mut t = self.table();
            if !t.dirty {
                return;
            }
            t.dirty = false;
            t.records.clone()
        };
        if let Err(e) = state::save(&self.state_path, &records).await {
            tracing::warn!(
                state = %self.state_path.display(),
                "cannot save the job state ({e}); a restart may repeat or miss a catch-up"
            );
            self.table().dirty = true;
        }
    }
}

/// Handle on the running scheduler. Cheap to share behind an `Arc`.
pub struct Scheduler {
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Scheduler {
    /// Load the state at `state_path`, schedule `specs` (cron read at
    /// `utc_offset_secs` east of UTC), start catch-up runs for jobs that
    /// missed a fire time while the daemon was down, and drive the schedule
    /// until `cancel` is cancelled. Must be called within a tokio runtime.
    /// The state file is read synchronously (it is a few hundred bytes).
    pub fn start<R: JobRunner>(
        specs: Vec<JobSpec>,
        utc_offset_secs: i32,
        state_path: PathBuf,
        runner: Arc<R>,
        cancel: CancellationToken,
        clock: impl Clock,
    ) -> Scheduler {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let now = clock.now_unix_ms();
        let mut records = state::load(&state_path);
        let mut dirty = false;
        for (kind, r) in &mut records {
            if r.running {
                tracing::warn!(
                    job = kind.as_str(),
                    last_run_ms = r.last_run_ms,
                    "the last run was interrupted by a stop or crash; it is not repeated now (catch-up only follows missed fire times)"
                );
                r.running = false;
                r.last_outcome = Some(Outcome::Interrupted);
                r.last_error = None;
                dirty = true;
            }
        }
        let mut table = Table {
            utc_offset_secs,
            jobs: BTreeMap::new(),
            records,
            running: BTreeSet::new(),
            dirty,
        };
        table.apply(specs, utc_offset_secs, now, true);
        for (kind, job) in &table.jobs {
            tracing::info!(
                job = kind.as_str(),
                cron = %job.cron_text,
                next_fire_ms = job.next_fire_ms,
                catch_up = job.catch_up,
                "job scheduled"
            );
        }
        let shared = Arc::new(Shared {
            clock,
            state_path,
            table: Mutex::new(table),
            wake: Notify::new(),
            save_lock: tokio::sync::Mutex::new(()),
        });
        let tracker = TaskTracker::new();
        tracker.spawn(drive(shared.clone(), runner, cancel, tracker.clone()));
        tracker.close();
        Scheduler { shared, tracker }
    }

    /// Replace the schedules (on config reload). Persisted state is kept; a
    /// job whose cron and offset did not change keeps its next fire time; a
    /// run in progress is not interrupted, and a removed job's run finishes.
    pub fn reschedule(&self, specs: Vec<JobSpec>, utc_offset_secs: i32) {
        let now = self.shared.clock.now_unix_ms();
        self.shared
            .table()
            .apply(specs, utc_offset_secs, now, false);
        self.shared.wake.notify_one();
    }

    /// Every scheduled job, in [`JobKind::ALL`] order.
    pub fn status(&self) -> Vec<JobStatus> {
        let t = self.shared.table();
        t.jobs
            .iter()
            .map(|(&kind, job)| {
                let record = t.records.get(&kind);
                JobStatus {
                    kind,
                    cron: job.cron_text.clone(),
                    next_fire_ms: job.next_fire_ms,
                    last_run_ms: record.and_then(|r| r.last_run_ms),
                    last_finished_ms: record.and_then(|r| r.last_finished_ms),
                    last_outcome: record.and_then(|r| r.last_outcome),
                    last_error: record.and_then(|r| r.last_error.clone()),
                    running: t.running.contains(&kind),
                    skipped_fires: job.skipped,
                }
            })
            .collect()
    }

    /// Wait until the driver has stopped (after cancellation) and every run
    /// it started has finished and been recorded.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

async fn drive<R: JobRunner>(
    shared: Arc<Shared>,
    runner: Arc<R>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let now = shared.clock.now_unix_ms();
        let (due, wake) = shared.table().take_due(now);
        for (kind, trigger) in due {
            tracker.spawn(run_one(shared.clone(), runner.clone(), kind, trigger));
        }
        shared.save().await;
        let nap = wake.map_or(MAX_NAP_MS, |w| (w - now).clamp(0, MAX_NAP_MS));
        let nap = Duration::from_millis(u64::try_from(nap).unwrap_or(0));
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = shared.wake.notified() => {}
            () = shared.clock.sleep(nap) => {}
        }
    }
    tracing::debug!("scheduler stopped");
}

async fn run_one<R: JobRunner>(
    shared: Arc<Shared>,
    runner: Arc<R>,
    kind: JobKind,
    trigger: Trigger,
) {
    let (job, trig) = (kind.as_str(), trigger.as_str());
    let span = tracing::info_span!("job", job, trigger = trig);
    let started = shared.clock.now_unix_ms();
    tracing::info!(parent: &span, job, trigger = trig, "job started");
    let result = AssertUnwindSafe(runner.run(kind, trigger))
        .catch_unwind()
        .instrument(span.clone())
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the job panicked: {what}"))
        });
    let finished = shared.clock.now_unix_ms();
    let duration_ms = finished - started;
    match &result {
        Ok(()) => tracing::info!(parent: &span, job, trigger = trig, duration_ms, "job succeeded"),
        Err(e) => {
            tracing::error!(parent: &span, job, trigger = trig, duration_ms, error = %e, "job failed")
        }
    }
    shared.table().finish(kind, finished, result);
    shared.save().await;
}
