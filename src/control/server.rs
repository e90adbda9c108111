//! The control socket server: binding the socket safely and serving requests.
//!
//! [`bind`] creates the socket file with the configured mode and group;
//! [`serve`] accepts connections until cancelled (at most
//! [`Limits::max_connections_per_uid`] from one uid), reads one request per
//! connection under a size and time limit, checks the peer's access level
//! ([`Access`]), runs the [`Handler`] and streams its events and response
//! back. No client can crash the server or stop it from serving others.
//!
//! Binding the socket file is in `server/socket.rs`, one connection's
//! request and answer in `server/connection.rs`.

mod connection;
mod socket;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access::{Access, Clearance};
use super::protocol::{kind, Command, Line};

use connection::connection;
pub use socket::bind;
pub(super) use socket::{resolve_group, set_group_and_mode};

/// Who is on the other end of a connection, from the kernel (`SO_PEERCRED`),
/// and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The peer's access level and whether it may see document text.
    pub clearance: Clearance,
}

impl From<&Peer> for crate::observe::audit::Actor {
    fn from(p: &Peer) -> Self {
        crate::observe::audit::Actor::Peer {
            uid: p.uid,
            gid: p.gid,
            pid: p.pid,
        }
    }
}

/// Lets a handler stream progress events to the client before its response.
///
/// Sending never fails from the handler's point of view: if the client has
/// gone away, events are dropped and the command still runs to completion.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Value>,
}

impl EventSink {
    /// A sink and the receiving end the events arrive on (for a caller that
    /// drives a [`Handler`] itself, e.g. a CLI running a command in-process).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Value>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }

    /// Queue one event; waits while the client is slow to read (bounded buffer).
    pub async fn send(&self, event: Value) {
        // A closed channel means nobody is listening any more; that is fine.
        let _ = self.tx.send(event).await;
    }
}

/// A command failed: `kind` is stable and machine-readable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    pub kind: String,
    pub message: String,
}

impl HandlerError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(kind::INTERNAL, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(kind::PERMISSION_DENIED, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(kind::BAD_REQUEST, message)
    }

    pub fn unknown_command(name: &str) -> Self {
        Self::new(
            kind::UNKNOWN_COMMAND,
            format!("this daemon does not implement `{name}`"),
        )
    }
}

/// Runs control commands; the daemon implements it.
///
/// The server has already checked the protocol version and that the peer's
/// level suffices for the command; the handler withholds document text from
/// a peer whose [`Clearance::documents`] is false. A disconnecting client does not cancel
/// the command; a stopping server drops it after [`Limits::shutdown_grace`].
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        command: Command,
        peer: Peer,
        events: EventSink,
    ) -> impl std::future::Future<Output = Result<Value, HandlerError>> + Send;
}

/// Protective limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more are answered `busy` and closed.
    pub max_connections: usize,
    /// Connections served at once from one uid, so one user's idle or slow
    /// connections cannot take every slot; more are answered `busy`.
    pub max_connections_per_uid: usize,
    /// Longest request line in bytes (without the `\n`).
    pub max_request_bytes: usize,
    /// Time a client has to send its whole request line.
    pub read_timeout: Duration,
    /// Time a client has to take one line from us before we stop writing to it.
    pub write_timeout: Duration,
    /// Time running commands get to finish after cancellation.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_uid: 8,
            max_request_bytes: 1024 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Failure to set up the control socket; each says which path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("another chromaprod daemon is already listening on {path}; stop it first or configure a different control.socket_path")]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it (move it away or configure a different control.socket_path)")]
    NotASocket { path: PathBuf },
    #[error("cannot check the existing socket {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("control.socket_mode {mode:#o} is not a permission mode (at most 0777)")]
    InvalidMode { mode: u32 },
    #[error("cannot set mode {mode:04o} on {path}: {source}")]
    SetMode {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("control.socket_group `{group}` does not exist (socket {path}); create it or fix the setting")]
    UnknownGroup { group: String, path: PathBuf },
    #[error("control.admin_group `{group}` does not exist; create it (`groupadd {group}`) or fix the setting")]
    UnknownAdminGroup { group: String },
    #[error("cannot give {path} to group `{group}`: {source} (the daemon's user must be a member of that group)")]
    SetGroup {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
}

/// Connections open per uid; a [`UidSlot`] holds one until dropped.
#[derive(Debug, Default)]
struct PerUid {
    open: Mutex<HashMap<u32, usize>>,
}

/// One connection counted against its uid.
struct UidSlot {
    counts: Arc<PerUid>,
    uid: u32,
}

impl PerUid {
    fn try_take(self: &Arc<Self>, uid: u32, max: usize) -> Option<UidSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(uid).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            counts: self.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// Peer credentials as the kernel gives them, before the level is known.
#[derive(Debug, Clone, Copy)]
struct Creds {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

/// Identity of the socket file we serve, so we remove only our own on exit.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove_if_ours(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
                }
            }
        }
    }
}

/// Serve control requests on `listener` until `cancel` fires, then stop
/// accepting, give running commands [`Limits::shutdown_grace`], and remove
/// the socket file (if it is still the one we bound). `access` decides each
/// peer's level (see [`Access`]).
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    access: Arc<Access>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let socket_file = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .and_then(|path| {
            let m = std::fs::metadata(&path).ok()?;
            Some(SocketFile {
                path,
                dev: m.dev(),
                ino: m.ino(),
            })
        });
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_uid = Arc::new(PerUid::default());
    let tracker = TaskTracker::new();

    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let creds = match stream.peer_cred() {
            Ok(c) => Creds {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read control peer credentials; closing");
                continue;
            }
        };
        // Non-blocking answers: a short line fits the socket buffer; if not,
        // the client just sees the connection close.
        let Some(slot) = per_uid.try_take(creds.uid, limits.max_connections_per_uid) else {
            tracing::debug!(uid = creds.uid, pid = ?creds.pid, "control connection refused: per-uid limit");
            let _ = stream.try_write(
                &Line::error(
                    kind::BUSY,
                    format!(
                        "uid {} already has {} control connections open (the most one user may hold); close some and try again",
                        creds.uid, limits.max_connections_per_uid
                    ),
                )
                .to_json_line(),
            );
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let _ = stream.try_write(
                &Line::error(kind::BUSY, "too many control connections; try again").to_json_line(),
            );
            continue;
        };
        let (handler, access, limits, cancel) = (
            handler.clone(),
            access.clone(),
            limits.clone(),
            cancel.clone(),
        );
        tracker.spawn(async move {
            connection(stream, creds, &*handler, &access, &limits, &cancel).await;
            drop(permit);
            drop(slot);
        });
    }
    drop(listener);
    if let Some(s) = &socket_file {
        s.remove_if_ours();
    }
    tracker.close();
    tracker.wait().await;
}
