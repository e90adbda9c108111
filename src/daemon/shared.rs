//! What the daemon's parts share while it runs: the running configuration
//! and what is built from it, the job table, the scheduler, the audit log;
//! and the scheduled jobs, run as commands through the job table.

use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::jobs::{JobManager, JobState, Watch};
use super::reload::{ReloadReport, ReloadRequest};
use super::status::{ChromaTarget, ConfigStatus, DaemonStatus, JobsListing};
use crate::chroma::ProductionChromaStore;
use crate::commands::{self, JobKind, Request, Trigger};
use crate::config::{Config, ConfigSource};
use crate::control;
use crate::observe::audit::{Actor, AuditLog};
use crate::observe::health::HealthMonitor;
use crate::observe::MetricsCollector;
use crate::schedule::{self, JobRunner, Scheduler, SystemClock};

/// The running configuration and the parts built from it.
pub(super) struct Running {
    pub(super) config: Arc<Config>,
    pub(super) store: ProductionChromaStore,
    /// Stops the current store's health-check loop when the store is replaced.
    pub(super) store_cancel: CancellationToken,
    pub(super) metrics_task: Option<(CancellationToken, JoinHandle<()>)>,
}

/// State shared by the control handler, the reload loop and status reporting.
pub(super) struct Shared {
    pub(super) running: RwLock<Running>,
    pub(super) source: ConfigSource,
    pub(super) started: std::time::Instant,
    pub(super) last_reload: Mutex<Option<ReloadReport>>,
    pub(super) metrics: Arc<MetricsCollector>,
    pub(super) audit: Arc<AuditLog>,
    pub(super) reload_tx: mpsc::Sender<ReloadRequest>,
    pub(super) jobs: JobManager,
    pub(super) scheduler: Mutex<Option<Scheduler>>,
    /// Who may do what on the control socket; a reload updates it.
    pub(super) control_access: Arc<control::Access>,
}

impl Shared {
    pub(super) fn store(&self) -> ProductionChromaStore {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .store
            .clone()
    }

    pub(super) fn config(&self) -> Arc<Config> {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    /// What commands run with: the running store, config and metrics.
    pub(super) fn context(&self) -> commands::Context {
        commands::Context {
            store: self.store(),
            config: self.config(),
            metrics: self.metrics.clone(),
        }
    }

    /// The `status` result.
    pub(super) fn status(&self) -> DaemonStatus {
        let config = self.config();
        let pool = self.store().status();
        let last_reload = self
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            health: HealthMonitor::summary(&pool, last_reload.as_ref().map(|r| r.ok)),
            config: ConfigStatus {
                path: self.source.path.clone(),
                env_overrides: self.source.env_overrides.clone(),
                last_reload,
            },
            chroma: ChromaTarget {
                tenant: config.chroma.tenant.clone(),
                database: config.chroma.database.clone(),
            },
            pool,
            jobs: self
                .jobs
                .list()
                .into_iter()
                .filter(|j| j.state == JobState::Running)
                .collect(),
        }
    }

    /// The `jobs` result: running and recent jobs, and the schedules.
    pub(super) fn jobs_listing(&self) -> JobsListing {
        let schedules = self
            .scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Scheduler::status)
            .unwrap_or_default();
        JobsListing {
            jobs: self.jobs.list(),
            schedules,
        }
    }

    /// Append to the audit log off the async threads (it writes and fsyncs).
    pub(super) async fn audit(&self, actor: Actor, action: &'static str, details: Value) {
        let log = self.audit.clone();
        let result = tokio::task::spawn_blocking(move || log.append(&actor, action, details)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the audit log"),
            Err(e) => tracing::error!(error = %e, "audit log writer failed"),
        }
    }

    /// Runs `request` as a job of `kind` (listed by `jobs`, cancellable,
    /// stopped with the daemon); returns its subscription.
    pub(super) fn start_job(&self, kind: JobKind, request: Request, trigger: Trigger) -> Watch {
        self.start_job_audited(kind, request, trigger, None)
    }

    /// [`Shared::start_job`], and with `outcome_audit` (actor, action, the
    /// recorded command) the job's outcome is appended to the audit log
    /// when it ends: what only the outcome knows, such as a delta restore's
    /// restore point, is then on record.
    pub(super) fn start_job_audited(
        &self,
        kind: JobKind,
        request: Request,
        trigger: Trigger,
        outcome_audit: Option<(Actor, &'static str, Value)>,
    ) -> Watch {
        let ctx = self.context();
        let log = self.audit.clone();
        self.jobs
            .start(kind, trigger, move |progress, cancel| async move {
                let outcome = commands::execute(&ctx, request, trigger, &progress, &cancel)
                    .await
                    .map(|outcome| outcome.to_json())
                    .map_err(|e| e.to_string());
                if let Some((actor, action, command)) = outcome_audit {
                    let details = json!({ "command": command, "finished": true, "ok": outcome.is_ok(), "result": outcome.as_ref().ok(), "error": outcome.as_ref().err() });
                    let written =
                        tokio::task::spawn_blocking(move || log.append(&actor, action, details))
                            .await;
                    if !matches!(written, Ok(Ok(()))) {
                        tracing::error!("cannot write a job's outcome to the audit log");
                    }
                }
                outcome
            })
    }
}

/// Starts the backup schedules (if `backup.enabled`); a bad schedule was
/// rejected by validation already, so errors here are only logged.
pub(super) fn start_scheduler(shared: &Arc<Shared>, config: &Config, cancel: &CancellationToken) {
    let (specs, offset) = match (
        schedule::specs(&config.backup),
        schedule::utc_offset(&config.backup),
    ) {
        (Ok(s), Ok(o)) => (s, o),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "backup schedules not started");
            return;
        }
    };
    let runner = Arc::new(ScheduledRunner {
        shared: Arc::downgrade(shared),
    });
    let scheduler = Scheduler::start(
        specs,
        offset,
        config.daemon.state_dir.join("schedule.json"),
        runner,
        cancel.child_token(),
        SystemClock,
    );
    *shared.scheduler.lock().unwrap_or_else(|e| e.into_inner()) = Some(scheduler);
}

/// Runs each scheduled job as its command ([`Request::scheduled`]) through
/// the job table, so it shows in `jobs` and stops with the daemon.
struct ScheduledRunner {
    shared: std::sync::Weak<Shared>,
}

impl JobRunner for ScheduledRunner {
    fn run(
        &self,
        kind: schedule::JobKind,
        trigger: schedule::Trigger,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let shared = self.shared.upgrade();
        async move {
            let shared = shared.ok_or_else(|| "the daemon is stopping".to_string())?;
            let request = Request::scheduled(kind);
            let (action, job_kind) = (request.name(), request.job_kind());
            let job_kind =
                job_kind.ok_or_else(|| format!("{} does not run as a job", request.name()))?;
            let watch = shared.start_job(job_kind, request, trigger.into());
            let outcome = watch.wait(|_| {}).await;
            shared
                .audit(Actor::system("scheduler"), action, json!({ "job": kind.as_str(), "ok": outcome.is_ok(), "result": outcome.as_ref().ok(), "error": outcome.as_ref().err() }))
                .await;
            outcome.map(|_| ())
        }
    }
}

/// The systemd `STATUS=` line: pool health and the last reload.
pub(super) fn status_line(shared: &Shared) -> String {
    let pool = shared.store().status();
    let last = shared
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    HealthMonitor::status_line(&pool, last.as_ref().map(|r| (r.ok, r.error.as_deref())))
}
