//! The daemon's main: start-up in order, then the main loop.
//!
//! Start-up: config (done by the caller) → logging (caller) → Chroma pool
//! (waiting for Chroma with bounded retries, reported in `STATUS=`) →
//! swaps a crash interrupted → migrations (with `auto_migrate`) → control
//! socket → scheduler → metrics → watchdog → `READY=1`. Every long-running
//! task is spawned on one [`TaskTracker`] and stops on one
//! [`CancellationToken`], through the one stop path ([`super::stop`]).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::ControlHandler;
use super::jobs::{JobManager, Progress};
use super::reload::{apply_reload, ReloadCause, ReloadRequest};
use super::sd::{self, Notifier};
use super::shared::{start_scheduler, status_line, Running, Shared};
use super::stop::{signal, Signals, Stop};
use super::watchdog::{self, Liveness};
use super::DaemonError;
use crate::chroma::ProductionChromaStore;
use crate::config::{Config, Loaded};
use crate::control;
use crate::observe::audit::{Actor, AuditLog};
use crate::observe::logging::LogHandle;
use crate::observe::{http, MetricsCollector};

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
            let grace = config.daemon.shutdown_grace;
            let stop = Stop { notifier, cancel: &cancel, tracker: &tracker, signals: &mut signals, grace };
            return stop.run("stopping before start-up finished", None).await;
        }
    };
    tracing::info!(chroma = %server, "Chroma is reachable");
    recover_swaps(&store, &audit).await;

    if config.migrations.auto_migrate {
        let result = tokio::select! {
            r = migrate_at_start(&store, &config, &metrics, &audit, notifier, &cancel) => r,
            () = signals.stop() => {
                // The migration stays recorded as running and resumes next time.
                let grace = config.daemon.shutdown_grace;
                let stop = Stop { notifier, cancel: &cancel, tracker: &tracker, signals: &mut signals, grace };
                return stop.run("stopping during start-up migrations", None).await;
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
        tracker.spawn(crate::config::watch::watch_file(path, poll, c, move || {
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

    let stop = Stop {
        notifier,
        cancel: &cancel,
        tracker: &tracker,
        signals: &mut signals,
        grace: shared.config().daemon.shutdown_grace,
    };
    stop.run("stopping: finishing work in progress", Some(&shared))
        .await
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

pub(super) async fn start_metrics(
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

#[cfg(debug_assertions)]
fn debug_stall_hook() -> Option<String> {
    std::env::var("CHROMAPROD_DEBUG_STALL_ON_RELOAD").ok()
}

#[cfg(not(debug_assertions))]
fn debug_stall_hook() -> Option<String> {
    None
}
