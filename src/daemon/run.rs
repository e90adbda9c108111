//! The daemon's main: start-up in order, one reload path, one shutdown path.
//!
//! Start-up: config (done by the caller) → logging (caller) → Chroma pool
//! (waiting for Chroma with bounded retries, reported in `STATUS=`) →
//! control socket → metrics → `READY=1`. Every long-running task is spawned
//! on one [`TaskTracker`] and stops on one [`CancellationToken`].

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backups::{self, BackupContext};
use super::jobs::{JobManager, Progress};
use super::sd::{self, Notifier};
use super::watchdog::{self, Liveness};
use super::DaemonError;
use crate::chroma::{ChromaError, DenseRetriever, ProductionChromaStore};
use crate::config::{self, Config, ConfigDiff, ConfigSource, Loaded};
use crate::control::{self, Command, EventSink, Handler, HandlerError, Peer};
use crate::observe::audit::{Actor, AuditLog};
use crate::observe::health::HealthMonitor;
use crate::observe::logging::LogHandle;
use crate::observe::{http, MetricsCollector};
use crate::schedule::{self, JobKind, JobRunner, Scheduler, SystemClock};

/// What asked for a reload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum ReloadCause {
    FileChanged,
    Signal,
    Command {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
}

/// The result of one reload, kept for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub at: String,
    pub cause: ReloadCause,
    pub ok: bool,
    /// Keys whose new values are in force.
    pub changed_keys: Vec<String>,
    /// Keys that changed on disk but take effect only after a restart.
    pub needs_restart: Vec<String>,
    /// Why the new config was rejected (the old one keeps running).
    pub error: Option<String>,
    /// Old and new values of the changed keys (credentials redacted): for
    /// the audit log only, not for `status`.
    #[serde(skip)]
    pub changes: Vec<crate::config::KeyChange>,
}

struct ReloadRequest {
    cause: ReloadCause,
    reply: Option<oneshot::Sender<ReloadReport>>,
}

/// The running configuration and the parts built from it.
struct Running {
    config: Arc<Config>,
    store: ProductionChromaStore,
    /// Stops the current store's health-check loop when the store is replaced.
    store_cancel: CancellationToken,
    metrics_task: Option<(CancellationToken, JoinHandle<()>)>,
}

/// State shared by the control handler, the reload loop and status reporting.
pub(crate) struct Shared {
    running: RwLock<Running>,
    source: ConfigSource,
    started: std::time::Instant,
    last_reload: Mutex<Option<ReloadReport>>,
    metrics: Arc<MetricsCollector>,
    audit: Arc<AuditLog>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    jobs: JobManager,
    scheduler: Mutex<Option<Scheduler>>,
    /// Who may do what on the control socket; a reload updates it.
    control_access: Arc<control::Access>,
}

impl Shared {
    fn store(&self) -> ProductionChromaStore {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .store
            .clone()
    }

    fn config(&self) -> Arc<Config> {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .config
            .clone()
    }

    fn status(&self) -> Value {
        let config = self.config();
        let pool = self.store().status();
        let last_reload = self
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config": {
                "path": self.source.path,
                "env_overrides": self.source.env_overrides,
                "last_reload": last_reload,
            },
            "chroma": {
                "tenant": config.chroma.tenant,
                "database": config.chroma.database,
            },
            "pool": pool,
            "health": HealthMonitor::summary(&pool, last_reload.as_ref().map(|r| r.ok)),
            "jobs": self.jobs.list().into_iter().filter(|j| j.state == super::jobs::JobState::Running).collect::<Vec<_>>(),
        })
    }
}

/// Finishes (or undoes) name swaps a crash interrupted (`chroma::swap`),
/// before migrations and before `READY=1`; logs and audits each. A swap
/// that needs a person, or a journal that cannot be read, is logged as an
/// error and the daemon starts anyway (the journal names where the data is).
async fn recover_swaps(store: &ProductionChromaStore, audit: &Arc<AuditLog>) {
    match crate::chroma::swap::recover(store).await {
        Ok(recovered) => {
            for r in recovered {
                let stuck = matches!(r.resolution, crate::chroma::swap::Resolution::Stuck { .. });
                if stuck {
                    tracing::error!(collection = %r.entry.target, "{r}");
                } else {
                    tracing::warn!(collection = %r.entry.target, "{r}");
                }
                let (log, details) = (
                    audit.clone(),
                    serde_json::to_value(&r).unwrap_or(Value::Null),
                );
                let written = tokio::task::spawn_blocking(move || {
                    log.append(&Actor::system("daemon"), "swap_recovered", details)
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::error!("cannot write the audit log");
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, journal = crate::chroma::swap::JOURNAL_COLLECTION, "cannot read the swap journal; a swap interrupted by a crash stays unfinished until the next start or offline command")
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT. `loaded` is the already-validated config.
pub async fn run(loaded: Loaded, log: LogHandle) -> Result<(), DaemonError> {
    let notifier = Notifier;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let liveness = Liveness::new();
    let config = Arc::new(loaded.config);
    let metrics = Arc::new(MetricsCollector::new());

    // Signals first, so a stop during a long start-up is honoured.
    let mut signals = Signals::new()?;
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup())?;

    fs_err::create_dir_all(&config.daemon.state_dir)
        .map_err(|e| DaemonError::StateDir(e.to_string()))?;
    let audit = Arc::new(
        AuditLog::open(&config.daemon.state_dir)
            .map_err(|e| DaemonError::StateDir(e.to_string()))?,
    );
    if let Some((aside, bytes)) = &audit.torn_tail {
        tracing::warn!(saved_to = %aside.display(), bytes, "the audit log ended in a torn line (a crash mid-write); it was set aside and the log continues from the last whole record");
        let details = json!({ "saved_to": aside, "bytes": bytes });
        let _ = audit.append(
            &Actor::system("daemon"),
            "audit_torn_tail_set_aside",
            details,
        );
    }

    // Chroma: build the pool, then wait for a healthy endpoint.
    let store =
        ProductionChromaStore::new(&config, metrics.clone()).map_err(DaemonError::Chroma)?;
    let store_cancel = cancel.child_token();
    {
        let (s, c) = (store.clone(), store_cancel.clone());
        tracker.spawn(async move { s.run_health_checks(c).await });
    }
    let server = tokio::select! {
        r = wait_for_chroma(&store, &config, notifier) => r?,
        () = signals.stop() => {
            notifier.stopping("stopping before start-up finished");
            cancel.cancel();
            tracker.close();
            tracker.wait().await;
            return Ok(());
        }
    };
    tracing::info!(chroma = %server, "Chroma is reachable");
    recover_swaps(&store, &audit).await;

    if config.migrations.auto_migrate {
        let result = tokio::select! {
            r = migrate_at_start(&store, &config, &metrics, &audit, notifier, &cancel) => r,
            () = signals.stop() => {
                // The migration stays recorded as running and resumes next time.
                notifier.stopping("stopping during start-up migrations");
                cancel.cancel();
                tracker.close();
                tracker.wait().await;
                return Ok(());
            }
        };
        result?;
    } else {
        // The migration version gauge starts from what Chroma has recorded.
        let manager =
            crate::migrate::MigrationManager::new(store.clone(), config.clone(), metrics.clone());
        if let Err(e) = manager.history().await {
            tracing::warn!(error = %e, "cannot read the migration history");
        }
    }

    notifier.status("opening control socket");
    let listener =
        control::bind(&config.control).map_err(|e| DaemonError::Control(e.to_string()))?;
    let control_access = Arc::new(
        control::Access::new(&config.control).map_err(|e| DaemonError::Control(e.to_string()))?,
    );

    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let shared = Arc::new(Shared {
        running: RwLock::new(Running {
            config: config.clone(),
            store,
            store_cancel,
            metrics_task: None,
        }),
        source: loaded.source,
        started: std::time::Instant::now(),
        last_reload: Mutex::new(None),
        metrics: metrics.clone(),
        audit,
        reload_tx: reload_tx.clone(),
        jobs: JobManager::new(tracker.clone(), cancel.clone()),
        scheduler: Mutex::new(None),
        control_access: control_access.clone(),
    });

    start_scheduler(&shared, &config, &cancel);

    {
        let handler = Arc::new(ControlHandler {
            shared: shared.clone(),
        });
        let c = cancel.clone();
        tracker.spawn(async move {
            control::serve(
                listener,
                handler,
                control_access,
                control::Limits::default(),
                c,
            )
            .await
        });
    }

    if let Some(addr) = &config.metrics.listen {
        let task = start_metrics(addr, metrics.clone(), &cancel, &tracker).await?;
        shared
            .running
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .metrics_task = Some(task);
    }

    if config.daemon.watch_config {
        let tx = reload_tx.clone();
        let path = shared.source.path.clone();
        let (poll, c) = (config.daemon.watch_poll_interval, cancel.clone());
        tracker.spawn(config::watch::watch_file(path, poll, c, move || {
            let _ = tx.try_send(ReloadRequest {
                cause: ReloadCause::FileChanged,
                reply: None,
            });
        }));
    }

    // The watchdog vouches for the main loop below and for the runtime itself.
    let wd_interval = sd::watchdog_interval();
    let beat_every = watchdog::beat_period(wd_interval.unwrap_or(Duration::from_secs(4)));
    let main_beat = liveness.register("main");
    if let Some(interval) = wd_interval {
        let runtime_beat = liveness.register("runtime");
        let c = cancel.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(beat_every);
            loop {
                tokio::select! { () = c.cancelled() => return, _ = tick.tick() => runtime_beat.beat() }
            }
        });
        tracker.spawn(watchdog::run(
            interval,
            liveness.clone(),
            notifier,
            cancel.clone(),
            |n| n.watchdog(),
        ));
        tracing::info!(interval = %humantime::format_duration(interval), "systemd watchdog enabled");
    }

    notifier.ready(&status_line(&shared));
    tracing::info!(socket = %config.control.socket_path.display(), "chromaprod ready");
    shared
        .audit(
            Actor::system("daemon"),
            "daemon_start",
            json!({ "config": shared.source.path }),
        )
        .await;

    // The main loop: reloads, signals, status refresh. One reload path for all causes.
    let mut status_tick = tokio::time::interval(beat_every);
    let stall_hook = debug_stall_hook();
    loop {
        tokio::select! {
            () = signals.stop() => break,
            _ = hangup.recv() => {
                apply_reload(&shared, &log, &cancel, &tracker, notifier, ReloadRequest { cause: ReloadCause::Signal, reply: None }, &stall_hook).await;
            }
            Some(req) = reload_rx.recv() => {
                apply_reload(&shared, &log, &cancel, &tracker, notifier, req, &stall_hook).await;
            }
            _ = status_tick.tick() => {
                main_beat.beat();
                notifier.status(&status_line(&shared));
            }
        }
        main_beat.beat();
    }

    // Graceful stop: one token, one tracker, bounded by the grace period.
    let grace = shared.config().daemon.shutdown_grace;
    notifier.stopping("stopping: finishing work in progress");
    tracing::info!(grace = %humantime::format_duration(grace), "stopping");
    cancel.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; abandoning unfinished work");
        }
        () = signals.stop() => {
            tracing::warn!("second stop signal; exiting at once");
            return Err(DaemonError::ForcedStop);
        }
    }
    shared
        .audit(Actor::system("daemon"), "daemon_stop", json!({}))
        .await;
    tracing::info!("stopped");
    Ok(())
}

impl Shared {
    /// Append to the audit log off the async threads (it writes and fsyncs).
    async fn audit(&self, actor: Actor, action: &'static str, details: Value) {
        let log = self.audit.clone();
        let result = tokio::task::spawn_blocking(move || log.append(&actor, action, details)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the audit log"),
            Err(e) => tracing::error!(error = %e, "audit log writer failed"),
        }
    }
}

/// Applies pending migrations before READY=1, with STATUS= progress and
/// EXTEND_TIMEOUT_USEC so systemd's start timeout does not cut a long one.
async fn migrate_at_start(
    store: &ProductionChromaStore,
    config: &Arc<Config>,
    metrics: &Arc<MetricsCollector>,
    audit: &Arc<AuditLog>,
    notifier: Notifier,
    cancel: &CancellationToken,
) -> Result<(), DaemonError> {
    let manager =
        crate::migrate::MigrationManager::new(store.clone(), config.clone(), metrics.clone());
    notifier.status("checking migrations");
    let (progress, mut rx) = Progress::detached();
    let keep_alive = Duration::from_secs(30);
    notifier.extend_timeout(keep_alive * 2);
    let run = async {
        let r = manager.up(None, &progress, &cancel.child_token()).await;
        drop(progress);
        r
    };
    let forward = async {
        let mut last = std::time::Instant::now();
        while let Ok(ev) = rx.recv().await {
            notifier.status(&format!("migrating: {}", migration_status(&ev)));
            if last.elapsed() >= Duration::from_secs(5) {
                notifier.extend_timeout(keep_alive);
                last = std::time::Instant::now();
            }
        }
    };
    let (result, ()) = tokio::join!(run, forward);
    let details = match &result {
        Ok(v) => json!({ "ok": true, "result": v }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    };
    let log = audit.clone();
    let actor = Actor::system("daemon");
    let _ = tokio::task::spawn_blocking(move || log.append(&actor, "migrate_up", details)).await;
    match result {
        Ok(v) => {
            tracing::info!(
                applied = v.applied.len(),
                version = v.version,
                "migrations up to date"
            );
            Ok(())
        }
        Err(e) => Err(DaemonError::Migration(e)),
    }
}

/// A progress event as a short STATUS= line.
fn migration_status(ev: &Value) -> String {
    let phase = ev["phase"].as_str().unwrap_or("working");
    let mut s = phase.replace('_', " ");
    if let Some(v) = ev["version"].as_u64() {
        s.push_str(&format!(" {v}"));
    }
    if let Some(op) = ev["operation"].as_str() {
        s.push_str(&format!(" {op}"));
    }
    if let (Some(d), Some(t)) = (ev["records_done"].as_u64(), ev["records_total"].as_u64()) {
        s.push_str(&format!(" {d}/{t}"));
    }
    if let Some(h) = ev["holder"].as_str() {
        s.push_str(&format!(" held by {h}"));
    }
    s
}

async fn wait_for_chroma(
    store: &ProductionChromaStore,
    config: &Config,
    notifier: Notifier,
) -> Result<String, DaemonError> {
    let deadline = tokio::time::Instant::now() + config.chroma.startup_wait;
    let endpoints: Vec<String> = config
        .chroma
        .endpoints
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1u32;
    loop {
        notifier.status(&format!(
            "connecting to Chroma at {} (attempt {attempt})",
            endpoints.join(", ")
        ));
        // A direct health check first: it brings endpoints back (and closes their
        // breakers) as soon as Chroma answers, not at the next background check.
        // The whole attempt is bounded by what is left of startup_wait: a black
        // hole must not hold a request (and its retries) past the deadline.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt_result = tokio::time::timeout(left, async {
            store.pool().check_all().await;
            store.check_ready().await.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer before chroma.startup_wait ran out (attempt {attempt} was still waiting)"
            ))
        });
        match attempt_result {
            Ok(info) => {
                return Ok(format!(
                    "{} (API {}, max batch {})",
                    info.endpoint, info.api_version, info.max_batch_size
                ))
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(DaemonError::ChromaUnavailable {
                        endpoints: endpoints.join(", "),
                        waited: config.chroma.startup_wait,
                        last_error: e,
                    });
                }
                let msg = format!(
                    "waiting for Chroma at {} (attempt {attempt}): {e}",
                    endpoints.join(", ")
                );
                tracing::warn!(attempt, error = %e, "Chroma not reachable yet");
                notifier.status(&msg);
                let wait = delay.min(deadline - now);
                notifier.extend_timeout(wait + Duration::from_secs(10));
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

async fn start_metrics(
    addr: &str,
    metrics: Arc<MetricsCollector>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(CancellationToken, JoinHandle<()>), DaemonError> {
    let listener = http::bind(addr).await.map_err(DaemonError::Metrics)?;
    let c = cancel.child_token();
    let handle = tracker.spawn(http::serve_metrics(listener, metrics, c.clone()));
    tracing::info!(listen = addr, "serving metrics");
    Ok((c, handle))
}

/// The one reload path: parse and validate in full, diff, apply, report.
async fn apply_reload(
    shared: &Arc<Shared>,
    log: &LogHandle,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
    notifier: Notifier,
    req: ReloadRequest,
    stall_hook: &Option<String>,
) {
    if stall_hook.is_some() {
        // Test hook (debug builds only): a stuck main loop, to prove the watchdog stops pinging.
        std::future::pending::<()>().await;
    }
    notifier.reloading();
    let report = reload_once(shared, log, cancel, tracker, req.cause.clone()).await;
    shared.metrics.config_reload(report.ok);
    if report.ok {
        tracing::info!(changed = ?report.changed_keys, needs_restart = ?report.needs_restart, "configuration reloaded");
    } else {
        tracing::error!(
            error = report.error.as_deref().unwrap_or(""),
            "configuration rejected; the running configuration stays in force"
        );
    }
    let actor = match &req.cause {
        ReloadCause::Command { uid, gid, pid } => Actor::Peer {
            uid: *uid,
            gid: *gid,
            pid: *pid,
        },
        ReloadCause::Signal => Actor::system("SIGHUP"),
        ReloadCause::FileChanged => Actor::system("file watcher"),
    };
    let mut details = json!(report);
    details["changes"] = json!(report.changes);
    shared.audit(actor, "config_reload", details).await;
    *shared.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    notifier.ready(&status_line(shared));
    if let Some(reply) = req.reply {
        let _ = reply.send(report);
    }
}

async fn reload_once(
    shared: &Arc<Shared>,
    log: &LogHandle,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
    cause: ReloadCause,
) -> ReloadReport {
    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let fail = |error: String| ReloadReport {
        at: at.clone(),
        cause: cause.clone(),
        ok: false,
        changed_keys: Vec::new(),
        needs_restart: Vec::new(),
        error: Some(error),
        changes: Vec::new(),
    };
    let new = match config::load(&shared.source.path) {
        Ok(Loaded { config, .. }) => config,
        Err(e) => return fail(e.to_string()),
    };
    let old = shared.config();
    let diff: ConfigDiff = config::diff(&old, &new);
    // Keys that need a restart keep their running values.
    let effective = config::effective(&old, &new);

    // Build everything new first; swap only when all of it succeeded.
    let new_store = if diff.rebuild_store {
        match ProductionChromaStore::new(&effective, shared.metrics.clone()) {
            Ok(s) => Some(s),
            Err(e) => return fail(format!("cannot build the Chroma pool: {e}")),
        }
    } else {
        None
    };
    let new_metrics = if diff.rebind_metrics {
        match &effective.metrics.listen {
            Some(addr) => {
                match start_metrics(addr, shared.metrics.clone(), cancel, tracker).await {
                    Ok(t) => Some(Some(t)),
                    Err(e) => return fail(e.to_string()),
                }
            }
            None => Some(None),
        }
    } else {
        None
    };
    if diff.reconfigure_control {
        // Applied last before the swap: a failure here leaves nothing new running.
        if let Err(e) = shared.control_access.reconfigure(&effective.control) {
            if let Some(Some((c, _))) = &new_metrics {
                c.cancel();
            }
            return fail(e.to_string());
        }
    }
    if diff.relog {
        if let Err(e) = log.set_level(&effective.log.level) {
            return fail(format!("log.level: {e}"));
        }
    }

    let mut running = shared.running.write().unwrap_or_else(|e| e.into_inner());
    if let Some(store) = new_store {
        let c = cancel.child_token();
        let s = store.clone();
        let loop_cancel = c.clone();
        tracker.spawn(async move { s.run_health_checks(loop_cancel).await });
        running.store_cancel.cancel();
        running.store = store;
        running.store_cancel = c;
        let endpoints: Vec<String> = effective
            .chroma
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect();
        shared.metrics.retain_endpoints(&endpoints);
    }
    if let Some(task) = new_metrics {
        if let Some((old_cancel, _)) = running.metrics_task.take() {
            old_cancel.cancel();
        }
        running.metrics_task = task;
    }
    if diff.reschedule {
        if let Some(scheduler) = shared
            .scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            match (
                schedule::specs(&effective.backup),
                schedule::utc_offset(&effective.backup),
            ) {
                (Ok(specs), Ok(offset)) => scheduler.reschedule(specs, offset),
                (Err(e), _) | (_, Err(e)) => tracing::error!(error = %e, "schedules not changed"),
            }
        }
    }
    running.config = Arc::new(effective);
    let report = ReloadReport {
        at,
        cause,
        ok: true,
        changed_keys: diff.changed_keys,
        needs_restart: diff.needs_restart,
        error: None,
        changes: diff.changes,
    };
    // Recorded while the new config is swapped in, so `status` never shows
    // the new config with the previous reload's report.
    *shared.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    drop(running);
    report
}

impl Shared {
    fn backup_context(&self) -> BackupContext {
        BackupContext {
            store: self.store(),
            config: self.config(),
            metrics: self.metrics.clone(),
        }
    }

    /// Starts a backup or migration command as a job; returns its subscription.
    fn start_job(&self, command: Command, trigger: crate::backup::Trigger) -> super::jobs::Watch {
        let ctx = self.backup_context();
        let kind = backups::job_kind(&command);
        let trigger_name = match trigger {
            crate::backup::Trigger::Command => "command",
            crate::backup::Trigger::Schedule => "schedule",
            crate::backup::Trigger::Migration => "migration",
        };
        self.jobs
            .start(kind, trigger_name, move |progress, cancel| async move {
                if super::migrations::is_migration(&command) {
                    super::migrations::execute(&ctx, &command, &progress, &cancel)
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    backups::execute(&ctx, &command, trigger, &progress, &cancel)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
    }
}

/// Starts the backup schedules (if `backup.enabled`); a bad schedule was
/// rejected by validation already, so errors here are only logged.
fn start_scheduler(shared: &Arc<Shared>, config: &Config, cancel: &CancellationToken) {
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

/// Runs scheduled jobs through the job manager, so they show in `jobs`.
struct ScheduledRunner {
    shared: std::sync::Weak<Shared>,
}

impl JobRunner for ScheduledRunner {
    fn run(
        &self,
        kind: JobKind,
        _trigger: schedule::Trigger,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let shared = self.shared.upgrade();
        async move {
            let shared = shared.ok_or_else(|| "the daemon is stopping".to_string())?;
            let command = match kind {
                JobKind::FullBackup => Command::Backup {
                    backup_type: crate::backup::BackupType::Full,
                    collections: vec![],
                    wait: true,
                },
                JobKind::IncrementalBackup => Command::Backup {
                    backup_type: crate::backup::BackupType::Incremental,
                    collections: vec![],
                    wait: true,
                },
                JobKind::Prune => Command::Prune { dry_run: false },
                JobKind::Verify => Command::BackupVerify {
                    id: "latest".into(),
                    full: true,
                },
            };
            let watch = shared.start_job(command.clone(), crate::backup::Trigger::Schedule);
            let outcome = watch.wait(|_| {}).await;
            shared
                .audit(Actor::system("scheduler"), command.name(), json!({ "job": kind.as_str(), "ok": outcome.is_ok(), "result": outcome.as_ref().ok(), "error": outcome.as_ref().err() }))
                .await;
            outcome.map(|_| ())
        }
    }
}

fn status_line(shared: &Shared) -> String {
    let pool = shared.store().status();
    let last = shared
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    HealthMonitor::status_line(&pool, last.as_ref().map(|r| (r.ok, r.error.as_deref())))
}

#[cfg(debug_assertions)]
fn debug_stall_hook() -> Option<String> {
    std::env::var("CHROMAPROD_DEBUG_STALL_ON_RELOAD").ok()
}

#[cfg(not(debug_assertions))]
fn debug_stall_hook() -> Option<String> {
    None
}

/// SIGTERM and SIGINT: stop.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, DaemonError> {
    tokio::signal::unix::signal(kind).map_err(|e| DaemonError::Signals(e.to_string()))
}

impl Signals {
    fn new() -> Result<Self, DaemonError> {
        use tokio::signal::unix::SignalKind;
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Control commands, served over the Unix socket.
struct ControlHandler {
    shared: Arc<Shared>,
}

impl Handler for ControlHandler {
    async fn handle(
        &self,
        command: Command,
        peer: Peer,
        events: EventSink,
    ) -> Result<Value, HandlerError> {
        match command {
            Command::Status => Ok(self.shared.status()),
            Command::Reload => {
                let (tx, rx) = oneshot::channel();
                let req = ReloadRequest {
                    cause: ReloadCause::Command {
                        uid: peer.uid,
                        gid: peer.gid,
                        pid: peer.pid,
                    },
                    reply: Some(tx),
                };
                self.shared
                    .reload_tx
                    .send(req)
                    .await
                    .map_err(|_| HandlerError::new("shutting_down", "the daemon is stopping"))?;
                let report = rx.await.map_err(|_| {
                    HandlerError::new(
                        "shutting_down",
                        "the daemon stopped before the reload finished",
                    )
                })?;
                serde_json::to_value(report)
                    .map_err(|e| HandlerError::new("internal", e.to_string()))
            }
            Command::Query {
                collection,
                id,
                vector,
                k,
            } => {
                let retriever = DenseRetriever::new(self.shared.store(), collection.clone());
                let hits = match (id, vector) {
                    (Some(id), None) => retriever.nearest_to_id(&id, k).await,
                    (None, Some(v)) => retriever.nearest(&v, k, None).await,
                    _ => {
                        return Err(HandlerError::new(
                            "bad_request",
                            "give exactly one of id or vector",
                        ));
                    }
                };
                let mut hits = hits.map_err(chroma_to_handler)?;
                if peer.clearance.documents {
                    return Ok(json!({ "collection": collection, "results": hits }));
                }
                for hit in &mut hits {
                    hit.document = None;
                }
                Ok(json!({ "collection": collection, "results": hits, "documents_withheld": true }))
            }
            Command::Jobs => {
                let schedules = self
                    .shared
                    .scheduler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(Scheduler::status)
                    .unwrap_or_default();
                Ok(json!({ "jobs": self.shared.jobs.list(), "schedules": schedules }))
            }
            Command::JobCancel { id } => {
                if self.shared.jobs.cancel(id) {
                    self.shared
                        .audit(Actor::from(&peer), "job_cancel", json!({ "job": id }))
                        .await;
                    Ok(json!({ "cancelled": id }))
                } else {
                    Err(HandlerError::new(
                        "not_found",
                        format!("no running job {id}; `chromaprod jobs` lists them"),
                    ))
                }
            }
            Command::MigrateStatus
            | Command::MigrateValidate
            | Command::MigrateRepair
            | Command::MigrateStamp { .. } => {
                let ctx = self.shared.backup_context();
                let (progress, _rx) = Progress::detached();
                let result = super::migrations::execute(
                    &ctx,
                    &command,
                    &progress,
                    &CancellationToken::new(),
                )
                .await;
                if command.is_mutating() {
                    self.shared
                        .audit(
                            Actor::from(&peer),
                            command.name(),
                            json!({ "command": command.redacted(), "ok": result.is_ok() }),
                        )
                        .await;
                }
                result.map_err(|e| HandlerError::new(e.code(), e.to_string()))
            }
            Command::Backup { wait, .. }
            | Command::Restore { wait, .. }
            | Command::MigrateUp { wait, .. }
            | Command::MigrateDown { wait, .. } => {
                let watch = self
                    .shared
                    .start_job(command.clone(), crate::backup::Trigger::Command);
                let job = watch.id;
                self.shared
                    .audit(
                        Actor::from(&peer),
                        command.name(),
                        json!({ "job": job, "command": command.redacted() }),
                    )
                    .await;
                if !wait {
                    return Ok(json!({ "job": job, "state": "running" }));
                }
                follow(watch, &events).await
            }
            other => {
                // Short commands run inline, with the same code the offline CLI uses.
                let ctx = self.shared.backup_context();
                let (progress, mut rx) = Progress::detached();
                let cancel = CancellationToken::new();
                let run = async {
                    let r = backups::execute(
                        &ctx,
                        &other,
                        crate::backup::Trigger::Command,
                        &progress,
                        &cancel,
                    )
                    .await;
                    // Closing the progress channel ends the forwarding below.
                    drop(progress);
                    r
                };
                let forward = async {
                    while let Ok(ev) = rx.recv().await {
                        events.send(ev).await;
                    }
                };
                let (result, ()) = tokio::join!(run, forward);
                if other.is_mutating() {
                    self.shared
                        .audit(
                            Actor::from(&peer),
                            other.name(),
                            json!({ "command": other.redacted(), "ok": result.is_ok() }),
                        )
                        .await;
                }
                result.map_err(|e| HandlerError::new(e.kind(), e.to_string()))
            }
        }
    }
}

/// Streams a job's progress to the client until it finishes.
async fn follow(watch: super::jobs::Watch, events: &EventSink) -> Result<Value, HandlerError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = async move {
        let r = watch
            .wait(|e| {
                let _ = tx.send(e);
            })
            .await;
        r
    };
    let forward = async {
        while let Some(ev) = rx.recv().await {
            events.send(ev).await;
        }
    };
    let (result, ()) = tokio::join!(outcome, forward);
    result.map_err(|e| HandlerError::new("job_failed", e))
}

fn chroma_to_handler(e: ChromaError) -> HandlerError {
    HandlerError::new("chroma", e.to_string())
}
