//! One control connection: read the request under limits, check the
//! peer's level, run the handler, stream events and the answer.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::{Creds, EventSink, Handler, Limits, Peer};
use crate::control::access::Access;
use crate::control::protocol::{kind, Command, Line, Request, PROTOCOL_VERSION};

/// Outcome of reading the request line.
enum Read {
    Line(Vec<u8>),
    Empty,
    TooLarge,
    TimedOut,
    Failed,
}

async fn read_request(
    reader: &mut BufReader<tokio::net::unix::ReadHalf<'_>>,
    limits: &Limits,
) -> Read {
    let mut buf = Vec::new();
    let max = limits.max_request_bytes;
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut limited = (&mut *reader).take(limit);
    let read = limited.read_until(b'\n', &mut buf);
    match tokio::time::timeout(limits.read_timeout, read).await {
        Err(_) => Read::TimedOut,
        Ok(Err(_)) => Read::Failed,
        Ok(Ok(_)) => {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            } else if buf.len() > max {
                return Read::TooLarge;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                Read::Empty
            } else {
                Read::Line(buf)
            }
        }
    }
}

/// Parse a request line, checking the version before the command so an old
/// server answers a new client precisely.
fn parse_request(line: &[u8]) -> Result<Command, Line> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| Line::error(kind::BAD_REQUEST, format!("request is not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(Line::error(
            kind::BAD_REQUEST,
            "request must be a JSON object",
        ));
    };
    match obj.get("v").map(Value::as_u64) {
        None => {
            return Err(Line::error(
                kind::BAD_REQUEST,
                "request has no protocol version `v`",
            ))
        }
        Some(Some(v)) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(Line::error(
                kind::UNSUPPORTED_VERSION,
                format!(
                    "protocol version {} is not supported; this daemon speaks v{PROTOCOL_VERSION} (upgrade the daemon or use a matching chromaprod CLI)",
                    v.map_or_else(|| obj["v"].to_string(), |v| v.to_string())
                ),
            ))
        }
    }
    match obj.get("cmd").and_then(Value::as_str) {
        None => {
            return Err(Line::error(
                kind::BAD_REQUEST,
                "request has no command name `cmd`",
            ))
        }
        Some(name) if !Command::NAMES.contains(&name) => {
            return Err(Line::error(
                kind::UNKNOWN_COMMAND,
                format!(
                    "unknown command `{name}`; this daemon knows: {}",
                    Command::NAMES.join(", ")
                ),
            ))
        }
        Some(_) => {}
    }
    serde_json::from_value::<Request>(value)
        .map(|r| r.command)
        .map_err(|e| Line::error(kind::BAD_REQUEST, format!("invalid request: {e}")))
}

async fn write_line(
    writer: &mut tokio::net::unix::WriteHalf<'_>,
    line: &Line,
    limits: &Limits,
) -> bool {
    let bytes = line.to_json_line();
    matches!(
        tokio::time::timeout(limits.write_timeout, writer.write_all(&bytes)).await,
        Ok(Ok(()))
    )
}

pub(super) async fn connection<H: Handler>(
    mut stream: UnixStream,
    creds: Creds,
    handler: &H,
    access: &Access,
    limits: &Limits,
    cancel: &CancellationToken,
) {
    let (read_half, mut writer) = stream.split();
    let mut reader = BufReader::new(read_half);

    let read = tokio::select! {
        () = cancel.cancelled() => return,
        read = read_request(&mut reader, limits) => read,
    };
    let command = match read {
        Read::Line(line) => parse_request(&line),
        Read::Empty => Err(Line::error(kind::BAD_REQUEST, "empty request")),
        Read::TooLarge => Err(Line::error(
            kind::REQUEST_TOO_LARGE,
            format!("request line exceeds {} bytes", limits.max_request_bytes),
        )),
        Read::TimedOut => Err(Line::error(
            kind::TIMEOUT,
            format!("no complete request line within {:?}", limits.read_timeout),
        )),
        Read::Failed => return,
    };
    let command = match command {
        Ok(c) => c,
        Err(line) => {
            if let Line::Response { error: Some(e), .. } = &line {
                tracing::debug!(uid = creds.uid, pid = ?creds.pid, kind = %e.kind, "rejected control request");
            }
            finish(writer, &line, limits).await;
            return;
        }
    };

    let peer = Peer {
        uid: creds.uid,
        gid: creds.gid,
        pid: creds.pid,
        clearance: access.clearance(creds.uid, creds.gid).await,
    };
    if peer.clearance.level < command.level() {
        tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, cmd = command.name(), needs = command.level().as_str(), holds = peer.clearance.level.as_str(), "refused control command");
        let e = access.refusal(&command, peer.uid);
        finish(writer, &Line::error(e.kind, e.message), limits).await;
        return;
    }

    let (events, mut rx) = EventSink::channel(64);
    let run = handler.handle(command, peer, events);
    tokio::pin!(run);
    let grace = async {
        cancel.cancelled().await;
        tokio::time::sleep(limits.shutdown_grace).await;
    };
    tokio::pin!(grace);
    let mut client_gone = false;
    let outcome = loop {
        tokio::select! {
            biased;
            Some(event) = rx.recv() => {
                if !client_gone && !write_line(&mut writer, &Line::event(event), limits).await {
                    client_gone = true;
                }
            }
            result = &mut run => break Some(result),
            () = &mut grace => break None,
        }
    };
    // Events queued just before the handler returned come before the response.
    while let Ok(event) = rx.try_recv() {
        if !client_gone && !write_line(&mut writer, &Line::event(event), limits).await {
            client_gone = true;
        }
    }
    if client_gone {
        return;
    }
    let line = match outcome {
        Some(Ok(result)) => Line::ok(result),
        Some(Err(e)) => Line::error(e.kind, e.message),
        None => Line::error(
            kind::SHUTTING_DOWN,
            "the daemon is stopping; the command did not complete",
        ),
    };
    finish(writer, &line, limits).await;
}

async fn finish(mut writer: tokio::net::unix::WriteHalf<'_>, line: &Line, limits: &Limits) {
    if write_line(&mut writer, line, limits).await {
        let _ = tokio::time::timeout(limits.write_timeout, writer.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(line: &Line) -> Option<&str> {
        match line {
            Line::Response { error: Some(e), .. } => Some(e.kind.as_str()),
            _ => None,
        }
    }

    #[test]
    fn parse_checks_version_before_command() {
        let bad = |s: &str| parse_request(s.as_bytes()).err();
        assert_eq!(bad("{").as_ref().and_then(kind_of), Some(kind::BAD_REQUEST));
        assert_eq!(
            bad("[1]").as_ref().and_then(kind_of),
            Some(kind::BAD_REQUEST)
        );
        assert_eq!(
            bad(r#"{"cmd":"status"}"#).as_ref().and_then(kind_of),
            Some(kind::BAD_REQUEST)
        );
        assert_eq!(
            bad(r#"{"v":2,"cmd":"nope"}"#).as_ref().and_then(kind_of),
            Some(kind::UNSUPPORTED_VERSION)
        );
        assert_eq!(
            bad(r#"{"v":"1","cmd":"status"}"#)
                .as_ref()
                .and_then(kind_of),
            Some(kind::UNSUPPORTED_VERSION)
        );
        assert_eq!(
            bad(r#"{"v":1,"cmd":"backup_everything"}"#)
                .as_ref()
                .and_then(kind_of),
            Some(kind::UNKNOWN_COMMAND)
        );
        assert_eq!(
            bad(r#"{"v":1,"cmd":"query","collection":"c"}"#)
                .as_ref()
                .and_then(kind_of),
            Some(kind::BAD_REQUEST)
        );
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"status"}"#).ok(),
            Some(Command::Status)
        );
    }
}
