//! The one reload path, whatever asked for it (file watcher, SIGHUP, the
//! `reload` command): parse and validate the file in full, diff it against
//! the running config, build what changed, and swap only when all of it
//! succeeded; otherwise the old config keeps running. Every reload is
//! reported (`status`), logged and audited.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sd::Notifier;
use super::shared::{status_line, Shared};
use super::start::start_metrics;
use crate::chroma::ProductionChromaStore;
use crate::config::{self, ConfigDiff, Loaded};
use crate::observe::audit::Actor;
use crate::observe::logging::LogHandle;
use crate::schedule;

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

/// A reload asked for; `reply` gets its report.
pub(super) struct ReloadRequest {
    pub(super) cause: ReloadCause,
    pub(super) reply: Option<oneshot::Sender<ReloadReport>>,
}

/// The one reload path: parse and validate in full, diff, apply, report.
pub(super) async fn apply_reload(
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
