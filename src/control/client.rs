//! The control client used by the CLI: one request, streamed events, one result.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Command, ErrorBody, Line, Request};

/// Time limits of a call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Time to connect and send the request.
    pub connect_timeout: Duration,
    /// Longest silence between two lines from the daemon. Long jobs stay
    /// alive by sending progress events, so this is not a total deadline.
    pub idle_timeout: Duration,
    /// Longest line accepted from the daemon.
    pub max_line_bytes: usize,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_line_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why a control call failed; the messages tell the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("chromaprod daemon is not running (no socket at {path}); start it with `systemctl start chromaprod` or pass --socket", path = .path.display())]
    DaemonNotRunning { path: PathBuf },
    #[error("permission denied on the control socket {path}; {hint}", path = .path.display(), hint = permission_hint(.group.as_deref()))]
    PermissionDenied {
        path: PathBuf,
        group: Option<String>,
    },
    #[error("{message} ({kind})")]
    Remote { kind: String, message: String },
    #[error("the daemon at {path} did not answer within {after:?}", path = .path.display())]
    Timeout { path: PathBuf, after: Duration },
    #[error("unexpected reply on the control socket: {message}")]
    Protocol { message: String },
    #[error("control socket {path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn permission_hint(group: Option<&str>) -> String {
    match group {
        Some(g) => format!(
            "join its group with `sudo usermod -aG {g} $USER` (then log in again), or run the command as root"
        ),
        None => "run the command as root or as a member of the socket's group".to_string(),
    }
}

impl ClientError {
    /// Classify a failed `connect()` on `path`.
    pub fn from_connect(path: &Path, err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::DaemonNotRunning {
                    path: path.to_path_buf(),
                }
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.to_path_buf(),
                group: socket_group_name(path),
            },
            _ => ClientError::Io {
                path: path.to_path_buf(),
                source: err,
            },
        }
    }
}

fn socket_group_name(path: &Path) -> Option<String> {
    let gid = std::fs::metadata(path).ok()?.gid();
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => Some(g.name),
        _ => Some(gid.to_string()),
    }
}

/// Send `command` to the daemon at `socket` with default [`CallOptions`];
/// `on_event` sees each progress event; returns the command's result.
pub async fn call(
    socket: &Path,
    command: Command,
    on_event: impl FnMut(Value),
) -> Result<Value, ClientError> {
    call_with(socket, command, &CallOptions::default(), on_event).await
}

/// [`call`] with explicit time limits.
pub async fn call_with(
    socket: &Path,
    command: Command,
    options: &CallOptions,
    mut on_event: impl FnMut(Value),
) -> Result<Value, ClientError> {
    let io_err = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let timeout = |after| ClientError::Timeout {
        path: socket.to_path_buf(),
        after,
    };

    let mut request =
        serde_json::to_vec(&Request::new(command)).map_err(|e| ClientError::Protocol {
            message: format!("cannot encode the request: {e}"),
        })?;
    request.push(b'\n');

    let send = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| ClientError::from_connect(socket, e))?;
        stream.write_all(&request).await.map_err(io_err)?;
        Ok::<_, ClientError>(stream)
    };
    let stream = tokio::time::timeout(options.connect_timeout, send)
        .await
        .map_err(|_| timeout(options.connect_timeout))??;

    let mut reader = BufReader::new(stream);
    let limit = u64::try_from(options.max_line_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    loop {
        let mut buf = Vec::new();
        let mut limited = (&mut reader).take(limit);
        let read = limited.read_until(b'\n', &mut buf);
        tokio::time::timeout(options.idle_timeout, read)
            .await
            .map_err(|_| timeout(options.idle_timeout))?
            .map_err(io_err)?;
        if buf.is_empty() {
            return Err(ClientError::Protocol {
                message: "the daemon closed the connection without a response".into(),
            });
        }
        if buf.last() != Some(&b'\n') && buf.len() > options.max_line_bytes {
            return Err(ClientError::Protocol {
                message: format!("a reply line exceeds {} bytes", options.max_line_bytes),
            });
        }
        let value: Value = serde_json::from_slice(&buf).map_err(|e| ClientError::Protocol {
            message: format!("reply is not JSON: {e}"),
        })?;
        // Unknown line types come from a newer daemon; skip them.
        if !matches!(
            value.get("type").and_then(Value::as_str),
            Some("event" | "response")
        ) {
            continue;
        }
        let line: Line = serde_json::from_value(value).map_err(|e| ClientError::Protocol {
            message: format!("malformed reply: {e}"),
        })?;
        match line {
            Line::Event { event, .. } => on_event(event),
            Line::Response {
                ok: true, result, ..
            } => return Ok(result.unwrap_or(Value::Null)),
            Line::Response {
                ok: false,
                error: Some(ErrorBody { kind, message }),
                ..
            } => return Err(ClientError::Remote { kind, message }),
            Line::Response {
                ok: false,
                error: None,
                ..
            } => {
                return Err(ClientError::Protocol {
                    message: "failed response without an error".into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_classified() {
        let p = Path::new("/run/chromaprod/control.sock");
        let e = ClientError::from_connect(p, io::ErrorKind::NotFound.into());
        assert!(matches!(e, ClientError::DaemonNotRunning { .. }));
        assert!(e.to_string().contains("/run/chromaprod/control.sock"));
        assert!(e.to_string().contains("systemctl start chromaprod"));
        let e = ClientError::from_connect(p, io::ErrorKind::ConnectionRefused.into());
        assert!(matches!(e, ClientError::DaemonNotRunning { .. }));
        let e = ClientError::from_connect(p, io::ErrorKind::PermissionDenied.into());
        assert!(matches!(e, ClientError::PermissionDenied { .. }));
        let e = ClientError::PermissionDenied {
            path: p.into(),
            group: Some("chromaprod".into()),
        };
        assert!(e.to_string().contains("usermod -aG chromaprod"));
    }
}
