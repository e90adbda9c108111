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

mod lifecycle;
mod runs;
