//! The control handler: answers the commands about the daemon itself
//! (`status`, `reload`, `jobs`, `job_cancel`) and hands every other command
//! to the command layer — as a job for those that take `wait`, inline for
//! the rest — and records mutating ones in the audit log.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::jobs::{Progress, Watch};
use super::reload::{ReloadCause, ReloadRequest};
use super::shared::Shared;
use crate::commands::{self, Request, Trigger};
use crate::control::{Command, EventSink, Handler, HandlerError, Peer};
use crate::observe::audit::Actor;

/// Control commands, served over the Unix socket.
pub(super) struct ControlHandler {
    pub(super) shared: Arc<Shared>,
}

impl Handler for ControlHandler {
    async fn handle(
        &self,
        command: Command,
        peer: Peer,
        events: EventSink,
    ) -> Result<Value, HandlerError> {
        match command {
            Command::Status => to_value(&self.shared.status()),
            Command::Reload => self.reload(&peer).await,
            Command::Jobs => to_value(&self.shared.jobs_listing()),
            Command::JobCancel { id } => self.cancel_job(id, &peer).await,
            command => self.run(command, &peer, &events).await,
        }
    }
}

impl ControlHandler {
    /// Asks the main loop for a reload and waits for its report.
    async fn reload(&self, peer: &Peer) -> Result<Value, HandlerError> {
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
        serde_json::to_value(report).map_err(|e| HandlerError::internal(e.to_string()))
    }

    async fn cancel_job(&self, id: u64, peer: &Peer) -> Result<Value, HandlerError> {
        if !self.shared.jobs.cancel(id) {
            return Err(HandlerError::new(
                "not_found",
                format!("no running job {id}; `chromaprod jobs` lists them"),
            ));
        }
        self.shared
            .audit(Actor::from(peer), "job_cancel", json!({ "job": id }))
            .await;
        Ok(json!({ "cancelled": id }))
    }

    /// Runs a command of the command layer: commands that take `wait` as a
    /// job (streamed if the caller waits), the others inline, with the same
    /// code the offline CLI uses.
    async fn run(
        &self,
        command: Command,
        peer: &Peer,
        events: &EventSink,
    ) -> Result<Value, HandlerError> {
        let mut request = Request::try_from(command.clone())
            .map_err(|e| HandlerError::internal(e.to_string()))?;
        if let Request::Query(query) = &mut request {
            query.with_documents = peer.clearance.documents;
        }
        if let (Some(wait), Some(kind)) = (command.wait(), request.job_kind()) {
            // A delta restore's restore point is known only at its end.
            let outcome_audit = matches!(
                command,
                Command::Restore {
                    mode: crate::backup::RestoreMode::Delta,
                    dry_run: false,
                    ..
                }
            )
            .then(|| (Actor::from(peer), command.name(), json!(command.redacted())));
            let watch =
                self.shared
                    .start_job_audited(kind, request, Trigger::Command, outcome_audit);
            let job = watch.id;
            self.shared
                .audit(
                    Actor::from(peer),
                    command.name(),
                    json!({ "job": job, "command": command.redacted() }),
                )
                .await;
            if !wait {
                return Ok(json!({ "job": job, "state": "running" }));
            }
            return follow(watch, events).await;
        }
        let ctx = self.shared.context();
        let (progress, mut rx) = Progress::detached();
        let cancel = CancellationToken::new();
        let run = async {
            let r = commands::execute(&ctx, request, Trigger::Command, &progress, &cancel).await;
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
        if command.is_mutating() {
            self.shared
                .audit(
                    Actor::from(peer),
                    command.name(),
                    json!({ "command": command.redacted(), "ok": result.is_ok() }),
                )
                .await;
        }
        result
            .map(|outcome| outcome.to_json())
            .map_err(|e| HandlerError::new(e.kind(), e.to_string()))
    }
}

/// Streams a job's progress to the client until it finishes.
async fn follow(watch: Watch, events: &EventSink) -> Result<Value, HandlerError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = async move {
        watch
            .wait(|e| {
                let _ = tx.send(e);
            })
            .await
    };
    let forward = async {
        while let Some(ev) = rx.recv().await {
            events.send(ev).await;
        }
    };
    let (result, ()) = tokio::join!(outcome, forward);
    result.map_err(|e| HandlerError::new("job_failed", e))
}

/// A typed result in its wire form.
fn to_value(result: &impl serde::Serialize) -> Result<Value, HandlerError> {
    serde_json::to_value(result).map_err(|e| HandlerError::internal(e.to_string()))
}
