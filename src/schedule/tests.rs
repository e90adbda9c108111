//! Driver tests on real tokio with its clock paused: hours of schedule run in
//! no real time. `Recorder` is a small job runner of our own that records
//! each call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

/// 2026-01-01T00:00:00Z
const JAN1: i64 = 1_767_225_600_000;
const SEC: i64 = 1_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

const EVERY_MINUTE: &str = "0 * * * * *";
const HOURLY: &str = "0 0 * * * *";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    kind: JobKind,
    trigger: Trigger,
    at: i64,
}

/// Records calls; each run takes `work` of (tokio) time, fails if `fail`,
/// panics if `panic`, and stops early when `stop` is cancelled.
struct Recorder {
    clock: TokioClock,
    work: Duration,
    fail: bool,
    panic: bool,
    stop: CancellationToken,
    calls: Mutex<Vec<Call>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

impl Recorder {
    fn new(clock: TokioClock) -> Self {
        Recorder {
            clock,
            work: Duration::ZERO,
            fail: false,
            panic: false,
            stop: CancellationToken::new(),
            calls: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("test").clone()
    }

    fn times(&self) -> Vec<i64> {
        self.calls().iter().map(|c| c.at).collect()
    }
}

impl JobRunner for Recorder {
    async fn run(&self, kind: JobKind, trigger: Trigger) -> Result<(), String> {
        let at = self.clock.now_unix_ms();
        self.calls
            .lock()
            .expect("test")
            .push(Call { kind, trigger, at });
        let n = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(n, Ordering::SeqCst);
        let stopped = tokio::select! {
            () = tokio::time::sleep(self.work) => false,
            () = self.stop.cancelled() => true,
        };
        self.active.fetch_sub(1, Ordering::SeqCst);
        if self.panic {
            panic!("boom");
        }
        if stopped {
            return Err("stopped".into());
        }
        if self.fail {
            return Err("repository unreachable".into());
        }
        Ok(())
    }
}

fn spec(kind: JobKind, cron: &str) -> JobSpec {
    JobSpec {
        kind,
        cron: cron.into(),
    }
}

struct Harness {
    sched: Scheduler,
    runner: Arc<Recorder>,
    cancel: CancellationToken,
    clock: TokioClock,
}

impl Harness {
    async fn stop(self) -> Arc<Recorder> {
        self.cancel.cancel();
        self.sched.wait().await;
        self.runner
    }

    fn status(&self, kind: JobKind) -> JobStatus {
        self.sched
            .status()
            .into_iter()
            .find(|s| s.kind == kind)
            .expect("test")
    }
}

fn start_with(
    specs: Vec<JobSpec>,
    state: &Path,
    start_ms: i64,
    setup: impl FnOnce(&mut Recorder),
) -> Harness {
    let clock = TokioClock::starting_at(start_ms);
    let mut runner = Recorder::new(clock);
    setup(&mut runner);
    let runner = Arc::new(runner);
    let cancel = CancellationToken::new();
    let sched = Scheduler::start(
        specs,
        0,
        state.to_path_buf(),
        runner.clone(),
        cancel.clone(),
        clock,
    );
    Harness {
        sched,
        runner,
        cancel,
        clock,
    }
}

/// Let tokio time run until the clock reads `unix_ms`.
async fn run_until(clock: &TokioClock, unix_ms: i64) {
    let left = unix_ms - clock.now_unix_ms();
    tokio::time::sleep(Duration::from_millis(u64::try_from(left).expect("test"))).await;
    // Let tasks woken at exactly this instant finish their step.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn state_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("jobs.json")
}

fn read_state(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("test")).expect("test")
}

/// Capture log lines written on this thread (tests run on a current-thread
/// runtime, so every task logs here).
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("test").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("test")).into_owned()
    }
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(sub)
    }
}

#[tokio::test(start_paused = true)]
async fn every_minute_for_ten_minutes_runs_ten_times_on_the_minute() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::IncrementalBackup, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1 + 30 * SEC,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 10 * MIN + 30 * SEC).await;
    let runner = h.stop().await;
    let want: Vec<i64> = (1..=10).map(|m| JAN1 + m * MIN).collect();
    assert_eq!(runner.times(), want);
    assert!(runner
        .calls()
        .iter()
        .all(|c| c.kind == JobKind::IncrementalBackup && c.trigger == Trigger::Schedule));
}

#[tokio::test(start_paused = true)]
async fn a_slow_run_is_never_overlapped_and_skipped_fires_are_counted() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1 + 30 * SEC,
        |r| r.work = Duration::from_secs(90),
    );
    run_until(&h.clock, JAN1 + 2 * MIN + 10 * SEC).await;
    // Mid-run: status says so.
    assert!(h.status(JobKind::FullBackup).running);
    run_until(&h.clock, JAN1 + 10 * MIN + 30 * SEC).await;
    let st = h.status(JobKind::FullBackup);
    let runner = h.stop().await;
    // Runs at minutes 1, 3, 5, 7, 9; fires at 2, 4, 6, 8, 10 find a run going.
    let times = runner.times();
    assert_eq!(times, [1, 3, 5, 7, 9].map(|m| JAN1 + m * MIN).to_vec());
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 90 * SEC));
    assert_eq!(runner.max_active.load(Ordering::SeqCst), 1);
    assert_eq!(st.skipped_fires, 5);
}

#[tokio::test(start_paused = true)]
async fn a_missed_job_is_caught_up_once_after_downtime() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    // First life: runs at 01:00, stops at 01:30.
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 90 * MIN).await;
    let first = h.stop().await;
    assert_eq!(first.times(), vec![JAN1 + HOUR]);
    assert_eq!(
        read_state(&state)["jobs"]["full_backup"]["last_run_ms"],
        JAN1 + HOUR
    );

    // Down for five hours (fires at 02:00 … 06:00 missed); restart at 06:30.
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 6 * HOUR + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 8 * HOUR + 30 * MIN).await;
    let second = h.stop().await;
    assert_eq!(
        second.calls(),
        vec![
            Call {
                kind: JobKind::FullBackup,
                trigger: Trigger::CatchUp,
                at: JAN1 + 6 * HOUR + 30 * MIN
            },
            Call {
                kind: JobKind::FullBackup,
                trigger: Trigger::Schedule,
                at: JAN1 + 7 * HOUR
            },
            Call {
                kind: JobKind::FullBackup,
                trigger: Trigger::Schedule,
                at: JAN1 + 8 * HOUR
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_before_the_next_fire_catches_nothing_up() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let h = start_with(
        vec![spec(JobKind::Prune, HOURLY)],
        &state,
        JAN1 + 5 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 61 * MIN).await;
    assert_eq!(h.stop().await.times(), vec![JAN1 + HOUR]);
    // Restart at 01:59: the 02:00 fire has not come yet.
    let h = start_with(
        vec![spec(JobKind::Prune, HOURLY)],
        &state,
        JAN1 + 119 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 2 * HOUR).await;
    assert_eq!(h.stop().await.times(), vec![JAN1 + 2 * HOUR]);
}

#[tokio::test(start_paused = true)]
async fn no_state_means_no_catch_up_on_first_start() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 59 * MIN).await;
    let st = h.status(JobKind::FullBackup);
    assert_eq!(st.last_run_ms, None);
    assert_eq!(st.next_fire_ms, Some(JAN1 + HOUR));
    assert!(h.stop().await.calls().is_empty());
    // The first start is remembered, so a later downtime is caught up even
    // though the job never ran.
    assert_eq!(
        read_state(&state)["jobs"]["full_backup"]["since_ms"],
        JAN1 + 30 * MIN
    );
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 3 * HOUR + 5 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 3 * HOUR + 6 * MIN).await;
    let calls = h.stop().await.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].trigger, Trigger::CatchUp);
}

#[tokio::test(start_paused = true)]
async fn reschedule_follows_the_new_cron_and_removed_jobs_stop() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![
            spec(JobKind::FullBackup, HOURLY),
            spec(JobKind::Verify, "30 * * * * *"),
        ],
        &state_in(&dir),
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 10 * MIN + 5 * SEC).await;
    assert_eq!(
        h.runner
            .calls()
            .iter()
            .filter(|c| c.kind == JobKind::Verify)
            .count(),
        10
    );
    // Reload: full backups every minute, verify removed.
    h.sched
        .reschedule(vec![spec(JobKind::FullBackup, EVERY_MINUTE)], 0);
    let st = h.sched.status();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].cron, EVERY_MINUTE);
    assert_eq!(st[0].next_fire_ms, Some(JAN1 + 11 * MIN));
    run_until(&h.clock, JAN1 + 13 * MIN + 45 * SEC).await;
    let runner = h.stop().await;
    let full: Vec<i64> = runner
        .calls()
        .iter()
        .filter(|c| c.kind == JobKind::FullBackup)
        .map(|c| c.at)
        .collect();
    assert_eq!(
        full,
        vec![JAN1 + 11 * MIN, JAN1 + 12 * MIN, JAN1 + 13 * MIN]
    );
    let verify_after = runner
        .calls()
        .iter()
        .filter(|c| c.kind == JobKind::Verify && c.at > JAN1 + 10 * MIN + 5 * SEC)
        .count();
    assert_eq!(verify_after, 0);
}

#[tokio::test(start_paused = true)]
async fn reschedule_neither_interrupts_a_run_nor_loses_state() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state,
        JAN1 + 50 * SEC,
        |r| r.work = Duration::from_secs(150),
    );
    // The 00:01 run is going; reload to a cron that fires at 00:02 too.
    run_until(&h.clock, JAN1 + 90 * SEC).await;
    h.sched
        .reschedule(vec![spec(JobKind::FullBackup, "0 */2 * * * *")], 0);
    let st = h.status(JobKind::FullBackup);
    assert!(st.running);
    assert_eq!(st.last_run_ms, Some(JAN1 + MIN));
    assert_eq!(st.next_fire_ms, Some(JAN1 + 2 * MIN));
    // Remove it while still running: the run finishes and is recorded.
    run_until(&h.clock, JAN1 + 150 * SEC).await;
    h.sched.reschedule(vec![], 0);
    run_until(&h.clock, JAN1 + 10 * MIN).await;
    let runner = h.stop().await;
    // 00:02 was skipped (run going), nothing after the removal.
    assert_eq!(runner.times(), vec![JAN1 + MIN]);
    let saved = read_state(&state);
    let rec = &saved["jobs"]["full_backup"];
    assert_eq!(rec["last_outcome"], "succeeded");
    assert_eq!(rec["last_finished_ms"], JAN1 + MIN + 150 * SEC);
    assert_eq!(rec["running"], false);
}

#[tokio::test(start_paused = true)]
async fn status_reports_schedule_runs_and_failures() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![
            spec(JobKind::FullBackup, "0 0 3 * * *"),
            spec(JobKind::Prune, EVERY_MINUTE),
        ],
        &state_in(&dir),
        JAN1,
        |r| {
            r.fail = true;
            r.work = Duration::from_secs(10);
        },
    );
    run_until(&h.clock, JAN1 + MIN + 5 * SEC).await;
    let prune_running = h.status(JobKind::Prune);
    assert!(prune_running.running);
    assert_eq!(prune_running.last_run_ms, Some(JAN1 + MIN));
    run_until(&h.clock, JAN1 + MIN + 30 * SEC).await;
    let st = h.sched.status();
    assert_eq!(
        st[0],
        JobStatus {
            kind: JobKind::FullBackup,
            cron: "0 0 3 * * *".into(),
            next_fire_ms: Some(JAN1 + 3 * HOUR),
            last_run_ms: None,
            last_finished_ms: None,
            last_outcome: None,
            last_error: None,
            running: false,
            skipped_fires: 0,
        }
    );
    assert_eq!(
        st[1],
        JobStatus {
            kind: JobKind::Prune,
            cron: EVERY_MINUTE.into(),
            next_fire_ms: Some(JAN1 + 2 * MIN),
            last_run_ms: Some(JAN1 + MIN),
            last_finished_ms: Some(JAN1 + MIN + 10 * SEC),
            last_outcome: Some(Outcome::Failed),
            last_error: Some("repository unreachable".into()),
            running: false,
            skipped_fires: 0,
        }
    );
    let json = serde_json::to_value(&st[1]).expect("test");
    assert_eq!(json["kind"], "prune");
    assert_eq!(json["last_outcome"], "failed");
    assert_eq!(json["next_fire_ms"], JAN1 + 2 * MIN);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_state_file_is_set_aside_with_a_warning() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    std::fs::create_dir_all(state.parent().expect("test")).expect("test");
    std::fs::write(&state, b"{\"version\": 1, \"jobs\": {\"full_backup\": tru").expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1 + 30 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 61 * MIN).await;
    let runner = h.stop().await;
    // Fresh start: no catch-up, the schedule runs.
    assert_eq!(runner.times(), vec![JAN1 + HOUR]);
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("the job state is unreadable"), "{text}");
    assert!(text.contains("jobs.json.corrupt"), "{text}");
    assert!(state.with_file_name("jobs.json.corrupt").exists());
    // Replaced by a good file, no temp file left behind.
    assert_eq!(read_state(&state)["version"], 1);
    assert!(!state.with_file_name("jobs.json.tmp").exists());
}

#[tokio::test(start_paused = true)]
async fn a_state_file_of_another_version_starts_fresh() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    std::fs::create_dir_all(state.parent().expect("test")).expect("test");
    std::fs::write(&state, br#"{"version": 99, "jobs": {}}"#).expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, HOURLY)],
        &state,
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + MIN).await;
    assert!(h.stop().await.calls().is_empty());
    assert_eq!(read_state(&state)["version"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_state_directory_is_created() {
    let dir = tempfile::tempdir().expect("test");
    let state = dir.path().join("a").join("b").join("jobs.json");
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state,
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + MIN).await;
    h.stop().await;
    assert_eq!(
        read_state(&state)["jobs"]["full_backup"]["last_outcome"],
        "succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_run_is_reported_and_not_repeated() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    std::fs::create_dir_all(state.parent().expect("test")).expect("test");
    // Written as a daemon that died during the 00:00 run would leave it.
    let file = serde_json::json!({
        "version": 1,
        "jobs": {"full_backup": {
            "since_ms": JAN1 - 10 * HOUR,
            "last_run_ms": JAN1,
            "last_finished_ms": null,
            "last_outcome": "succeeded",
            "last_error": null,
            "running": true
        }}
    });
    std::fs::write(&state, file.to_string()).expect("test");
    // Restart at 00:20, daily 03:00 job: nothing missed since the run began.
    let h = start_with(
        vec![spec(JobKind::FullBackup, "0 0 3 * * *")],
        &state,
        JAN1 + 20 * MIN,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 2 * HOUR).await;
    let st = h.status(JobKind::FullBackup);
    assert_eq!(st.last_outcome, Some(Outcome::Interrupted));
    assert!(!st.running);
    assert!(h.stop().await.calls().is_empty());
    assert!(logs.text().contains("interrupted"), "{}", logs.text());
    assert_eq!(read_state(&state)["jobs"]["full_backup"]["running"], false);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_run_is_recorded_and_the_job_keeps_running() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::Verify, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1,
        |r| r.panic = true,
    );
    run_until(&h.clock, JAN1 + 3 * MIN).await;
    let st = h.status(JobKind::Verify);
    let runner = h.stop().await;
    assert_eq!(runner.times().len(), 3);
    assert_eq!(st.last_outcome, Some(Outcome::Failed));
    assert!(st.last_error.expect("test").contains("panicked: boom"));
    assert_eq!(st.skipped_fires, 0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_the_driver_without_waiting_for_the_next_fire() {
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::FullBackup, "0 0 3 * * *")],
        &state_in(&dir),
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 5 * SEC).await;
    let before = tokio::time::Instant::now();
    h.cancel.cancel();
    tokio::time::timeout(Duration::from_millis(1), h.sched.wait())
        .await
        .expect("the driver stops at once");
    assert_eq!(before.elapsed(), Duration::ZERO);
    assert!(h.runner.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancellation_waits_for_a_run_that_stops_and_records_it() {
    let dir = tempfile::tempdir().expect("test");
    let state = state_in(&dir);
    let stop = CancellationToken::new();
    let h = start_with(
        vec![spec(JobKind::FullBackup, EVERY_MINUTE)],
        &state,
        JAN1,
        |r| {
            r.work = Duration::from_secs(3600);
            // The runner watches the same token, as the daemon's backup manager does.
            r.stop = stop.clone();
        },
    );
    run_until(&h.clock, JAN1 + MIN + SEC).await;
    assert!(h.status(JobKind::FullBackup).running);
    let before = tokio::time::Instant::now();
    stop.cancel();
    h.cancel.cancel();
    tokio::time::timeout(Duration::from_millis(1), h.sched.wait())
        .await
        .expect("the driver and the run stop at once");
    assert_eq!(before.elapsed(), Duration::ZERO);
    let rec = &read_state(&state)["jobs"]["full_backup"];
    assert_eq!(rec["last_outcome"], "failed");
    assert_eq!(rec["last_error"], "stopped");
}

#[tokio::test(start_paused = true)]
async fn fire_times_follow_the_configured_offset() {
    let dir = tempfile::tempdir().expect("test");
    let clock = TokioClock::starting_at(JAN1);
    let runner = Arc::new(Recorder::new(clock));
    let cancel = CancellationToken::new();
    // 03:00 at +02:00 is 01:00 UTC.
    let sched = Scheduler::start(
        vec![spec(JobKind::FullBackup, "0 0 3 * * *")],
        7200,
        state_in(&dir),
        runner.clone(),
        cancel.clone(),
        clock,
    );
    run_until(&clock, JAN1 + 2 * HOUR).await;
    // The same cron read in -01:00 (04:00 UTC).
    sched.reschedule(vec![spec(JobKind::FullBackup, "0 0 3 * * *")], -3600);
    assert_eq!(sched.status()[0].next_fire_ms, Some(JAN1 + 4 * HOUR));
    run_until(&clock, JAN1 + 5 * HOUR).await;
    cancel.cancel();
    sched.wait().await;
    assert_eq!(runner.times(), vec![JAN1 + HOUR, JAN1 + 4 * HOUR]);
}

#[tokio::test(start_paused = true)]
async fn each_run_is_logged_with_job_and_trigger_fields() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    let h = start_with(
        vec![spec(JobKind::Prune, EVERY_MINUTE)],
        &state_in(&dir),
        JAN1,
        |r| r.fail = true,
    );
    run_until(&h.clock, JAN1 + MIN).await;
    h.stop().await;
    let text = logs.text();
    let started = text
        .lines()
        .find(|l| l.contains("job started"))
        .expect("a start line");
    assert!(started.contains("job=\"prune\""), "{started}");
    assert!(started.contains("trigger=\"schedule\""), "{started}");
    let failed = text
        .lines()
        .find(|l| l.contains("job failed"))
        .expect("a failure line");
    assert!(failed.contains("ERROR"), "{failed}");
    assert!(failed.contains("repository unreachable"), "{failed}");
    assert!(failed.contains("job=\"prune\""), "{failed}");
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_state_file_is_logged_and_jobs_still_run() {
    let logs = LogBuf::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().expect("test");
    // The state file's directory is a regular file: every save fails.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").expect("test");
    let h = start_with(
        vec![spec(JobKind::Verify, EVERY_MINUTE)],
        &blocker.join("jobs.json"),
        JAN1,
        |_| {},
    );
    run_until(&h.clock, JAN1 + 2 * MIN).await;
    let st = h.status(JobKind::Verify);
    assert_eq!(h.stop().await.times(), vec![JAN1 + MIN, JAN1 + 2 * MIN]);
    assert_eq!(st.last_outcome, Some(Outcome::Succeeded));
    let text = logs.text();
    assert!(text.contains("cannot save the job state"), "{text}");
    assert!(text.contains("not-a-dir"), "{text}");
}

#[test]
fn the_handle_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Scheduler>();
    shareable::<SystemClock>();
    shareable::<TokioClock>();
}
