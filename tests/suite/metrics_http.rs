//! The `/metrics` HTTP endpoint over real TCP: scrapers that stop reading
//! cannot hold its connection slots for ever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::observe::{http, MetricsCollector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/// A collector whose exposition is several MiB: more than a loopback socket
/// pair buffers, so writing it to a client that does not read blocks.
fn large_metrics() -> Arc<MetricsCollector> {
    let m = MetricsCollector::new();
    let pad = "x".repeat(1000);
    for i in 0..4000 {
        m.endpoint_state(&format!("http://endpoint-{i}-{pad}:8000/"), true, false);
    }
    Arc::new(m)
}

/// A client that sends a scrape and then never reads (a tiny receive buffer).
async fn stalled_scraper(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(REQUEST).await.expect("send request");
    stream
}

/// One scrape read to the end; empty if the server dropped the connection.
async fn scrape(addr: std::net::SocketAddr) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    if stream.write_all(REQUEST).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn scrapers_that_stop_reading_do_not_lock_out_prometheus() {
    let metrics = large_metrics();
    let body_len = metrics.encode().len();
    assert!(body_len > 6 * 1024 * 1024, "body only {body_len} bytes");
    let listener = http::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let server = tokio::spawn(http::serve_metrics(listener, metrics, cancel.clone()));

    // More stalled scrapers than the endpoint serves at once.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(stalled_scraper(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A well-behaved scrape gets a whole answer once the stalled ones time out.
    let started = Instant::now();
    let answer = loop {
        let out = scrape(addr).await;
        if !out.is_empty() {
            break out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no scrape served for 30 s while stalled scrapers held every slot"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    assert!(
        answer.len() > body_len,
        "whole response: {} bytes",
        answer.len()
    );

    // The stalled scrapers were cut off: what they can still read is short of the body.
    let mut cut = stalled.remove(0);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), cut.read_to_end(&mut out))
        .await
        .expect("the server closed the stalled connection")
        .ok();
    assert!(
        out.len() < body_len,
        "a stalled scraper got {} of {body_len} bytes",
        out.len()
    );
    cancel.cancel();
    server.await.expect("metrics server");
}
