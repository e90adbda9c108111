//! The one way the daemon stops, before or after it reported ready: one
//! token cancels every task, one tracker waits for them, bounded by
//! `daemon.shutdown_grace`; a second stop signal ends the wait at once.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sd::Notifier;
use super::shared::Shared;
use super::DaemonError;
use crate::observe::audit::Actor;

/// SIGTERM and SIGINT: stop.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

pub(super) fn signal(
    kind: tokio::signal::unix::SignalKind,
) -> Result<tokio::signal::unix::Signal, DaemonError> {
    tokio::signal::unix::signal(kind).map_err(|e| DaemonError::Signals(e.to_string()))
}

impl Signals {
    pub(super) fn new() -> Result<Self, DaemonError> {
        use tokio::signal::unix::SignalKind;
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub(super) async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What the stop sequence acts on.
pub(super) struct Stop<'a> {
    pub(super) notifier: Notifier,
    pub(super) cancel: &'a CancellationToken,
    pub(super) tracker: &'a TaskTracker,
    pub(super) signals: &'a mut Signals,
    pub(super) grace: Duration,
}

impl Stop<'_> {
    /// Stops everything, saying `why` to systemd. `started`: the daemon had
    /// reported ready (and recorded `daemon_start`), so the stop is recorded
    /// in the audit log too.
    pub(super) async fn run(self, why: &str, started: Option<&Shared>) -> Result<(), DaemonError> {
        self.notifier.stopping(why);
        tracing::info!(grace = %humantime::format_duration(self.grace), "stopping");
        self.cancel.cancel();
        self.tracker.close();
        tokio::select! {
            () = self.tracker.wait() => {}
            () = tokio::time::sleep(self.grace) => {
                tracing::warn!("grace period over; abandoning unfinished work");
            }
            () = self.signals.stop() => {
                tracing::warn!("second stop signal; exiting at once");
                return Err(DaemonError::ForcedStop);
            }
        }
        if let Some(shared) = started {
            shared
                .audit(Actor::system("daemon"), "daemon_stop", json!({}))
                .await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}
