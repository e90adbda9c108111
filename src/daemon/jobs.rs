//! Long-running jobs (backups, restores, prunes, verifies): started from the
//! control socket or the scheduler, listed by `chromaprod jobs`, cancelled by
//! `chromaprod job cancel ID`, their progress streamed to whoever waits.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commands::{JobKind, Trigger};

/// Finished jobs remembered for `chromaprod jobs`.
const RECENT: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// What `chromaprod jobs` shows of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub id: u64,
    pub kind: JobKind,
    /// `command` (with the caller) or `schedule`.
    pub trigger: Trigger,
    pub started_at: String,
    pub state: JobState,
    /// The latest progress event.
    pub progress: Value,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// How a job ended.
pub type JobOutcome = Result<Value, String>;

pub use crate::progress::Progress;
use crate::progress::{Event, Journal, Subscriber};

/// How often the journal gets a line about a job's progress within one phase.
const JOURNAL_EVERY: Duration = Duration::from_secs(10);

/// A job's subscription to its progress: the latest event is kept in the
/// table for `chromaprod jobs`, and each event is sent to the job's waiters
/// in the control socket's JSON.
struct JobTable {
    id: u64,
    events: broadcast::Sender<Value>,
    jobs: Arc<Mutex<Inner>>,
}

impl Subscriber for JobTable {
    fn event(&self, event: &Event) {
        let event = event.to_json();
        if let Some(job) = lock(&self.jobs).running.get_mut(&self.id) {
            job.info.progress = event.clone();
        }
        let _ = self.events.send(event);
    }
}

struct Running {
    info: JobInfo,
    cancel: CancellationToken,
    events: broadcast::Sender<Value>,
    done: watch::Receiver<Option<JobOutcome>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    running: BTreeMap<u64, Running>,
    recent: VecDeque<JobInfo>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A subscription to one job: its progress events and its outcome.
pub struct Watch {
    pub id: u64,
    pub events: broadcast::Receiver<Value>,
    done: watch::Receiver<Option<JobOutcome>>,
}

impl Watch {
    /// Waits for the outcome, calling `on_event` for each progress event.
    pub async fn wait(mut self, mut on_event: impl FnMut(Value)) -> JobOutcome {
        let mut events_open = true;
        loop {
            tokio::select! {
                biased;
                ev = self.events.recv(), if events_open => match ev {
                    Ok(ev) => on_event(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // Every sender is gone: only the outcome is left to wait for.
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                changed = self.done.changed() => {
                    if changed.is_err() || self.done.borrow().is_some() {
                        while let Ok(ev) = self.events.try_recv() {
                            on_event(ev);
                        }
                        return self.done.borrow().clone().unwrap_or(Err("the job was dropped".into()));
                    }
                }
            }
        }
    }
}

/// Starts, tracks and cancels jobs. All jobs stop on the daemon's token.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Mutex<Inner>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl JobManager {
    pub fn new(tracker: TaskTracker, cancel: CancellationToken) -> Self {
        JobManager {
            inner: Arc::new(Mutex::new(Inner::default())),
            tracker,
            cancel,
        }
    }

    /// Starts `job` on the daemon's task tracker and returns a subscription.
    pub fn start<F, Fut>(&self, kind: JobKind, trigger: Trigger, job: F) -> Watch
    where
        F: FnOnce(Progress, CancellationToken) -> Fut,
        Fut: Future<Output = JobOutcome> + Send + 'static,
    {
        let (events, rx) = broadcast::channel(256);
        let (done_tx, done_rx) = watch::channel(None);
        let cancel = self.cancel.child_token();
        let id = {
            let mut inner = lock(&self.inner);
            inner.next_id += 1;
            let id = inner.next_id;
            inner.running.insert(
                id,
                Running {
                    info: JobInfo {
                        id,
                        kind,
                        trigger,
                        started_at: humantime::format_rfc3339_seconds(SystemTime::now())
                            .to_string(),
                        state: JobState::Running,
                        progress: Value::Null,
                        result: None,
                        error: None,
                    },
                    cancel: cancel.clone(),
                    events: events.clone(),
                    done: done_rx.clone(),
                },
            );
            id
        };
        let progress = Progress::to(vec![
            Arc::new(JobTable {
                id,
                events,
                jobs: self.inner.clone(),
            }),
            Arc::new(Journal::new(id, kind.as_str(), JOURNAL_EVERY)),
        ]);
        let fut = job(progress, cancel.clone());
        let inner = self.inner.clone();
        self.tracker.spawn(async move {
            let outcome = fut.await;
            let mut guard = lock(&inner);
            if let Some(mut job) = guard.running.remove(&id) {
                job.info.state = match (&outcome, cancel.is_cancelled()) {
                    (Ok(_), _) => JobState::Succeeded,
                    (Err(_), true) => JobState::Cancelled,
                    (Err(_), false) => JobState::Failed,
                };
                match &outcome {
                    Ok(v) => job.info.result = Some(v.clone()),
                    Err(e) => job.info.error = Some(e.clone()),
                }
                tracing::info!(job = id, kind = %kind, state = ?job.info.state, "job finished");
                guard.recent.push_front(job.info);
                guard.recent.truncate(RECENT);
            }
            drop(guard);
            let _ = done_tx.send(Some(outcome));
        });
        Watch {
            id,
            events: rx,
            done: done_rx,
        }
    }

    /// Running jobs first, then recently finished ones.
    pub fn list(&self) -> Vec<JobInfo> {
        let inner = lock(&self.inner);
        inner
            .running
            .values()
            .map(|r| r.info.clone())
            .chain(inner.recent.iter().cloned())
            .collect()
    }

    /// Whether a job of `kind` is running now.
    pub fn is_running(&self, kind: JobKind) -> bool {
        lock(&self.inner)
            .running
            .values()
            .any(|r| r.info.kind == kind)
    }

    /// Asks a running job to stop; `false` if no such job runs.
    pub fn cancel(&self, id: u64) -> bool {
        match lock(&self.inner).running.get(&id) {
            Some(job) => {
                job.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Follows a running job.
    pub fn watch(&self, id: u64) -> Option<Watch> {
        lock(&self.inner).running.get(&id).map(|r| Watch {
            id,
            events: r.events.subscribe(),
            done: r.done.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Event;
    use serde_json::json;

    fn verified(chunks_done: u64) -> Event {
        Event::Verify {
            chunks_done,
            chunks_total: 2,
        }
    }

    #[tokio::test]
    async fn progress_reaches_the_waiter_and_the_listing() {
        let jobs = JobManager::new(TaskTracker::new(), CancellationToken::new());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let watch = jobs.start(JobKind::Full, Trigger::Command, |p, _| async move {
            p.send(verified(1));
            let _ = go_rx.await;
            p.send(verified(2));
            Ok(json!({"snapshot": "abc"}))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let listed = jobs.list();
        assert_eq!(listed[0].state, JobState::Running);
        assert_eq!(
            listed[0].progress,
            json!({"phase": "verify", "chunks_done": 1, "chunks_total": 2})
        );
        let _ = go_tx.send(());
        let mut seen = Vec::new();
        let out = watch.wait(|e| seen.push(e)).await;
        assert_eq!(out, Ok(json!({"snapshot": "abc"})));
        assert!(seen.contains(&verified(2).to_json()), "{seen:?}");
        assert_eq!(jobs.list()[0].state, JobState::Succeeded);
    }

    #[tokio::test]
    async fn cancel_stops_a_job_and_marks_it_cancelled() {
        let jobs = JobManager::new(TaskTracker::new(), CancellationToken::new());
        let watch = jobs.start(JobKind::Full, Trigger::Command, |_, cancel| async move {
            cancel.cancelled().await;
            Err("cancelled".to_string())
        });
        assert!(jobs.cancel(watch.id));
        assert_eq!(watch.wait(|_| {}).await, Err("cancelled".into()));
        assert_eq!(jobs.list()[0].state, JobState::Cancelled);
        assert!(!jobs.cancel(999));
    }
}
