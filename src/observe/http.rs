//! A minimal HTTP/1.1 endpoint serving `GET /metrics` (Prometheus text).
//! Deliberately tiny: one route, bounded request size, bounded read and
//! write time (a scraper that stops reading cannot hold a slot for ever).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::MetricsCollector;

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole response; then the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve metrics on `listener` until `cancel` fires.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<MetricsCollector>,
    cancel: CancellationToken,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // Too many scrapers at once: drop the connection.
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &MetricsCollector) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let (status, body, ctype) = match head_read {
        Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => route(&buf, metrics),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client did not take the response within {WRITE_TIMEOUT:?}"),
        )),
    }
}

fn route(request: &[u8], metrics: &MetricsCollector) -> (&'static str, String, &'static str) {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (Some("GET"), Some(_)) => (
            "404 Not Found",
            "not found; try /metrics\n".into(),
            "text/plain",
        ),
        _ => ("400 Bad Request", "bad request\n".into(), "text/plain"),
    }
}

/// Bind the metrics listener, with an error that names the address.
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("metrics.listen {addr:?}: {e}"))?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))
}
