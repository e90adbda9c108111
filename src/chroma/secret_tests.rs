//! The auth token never appears in Debug or Display of anything in this module.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{AuthHeader, Config};
use crate::observe::MetricsCollector;
use crate::secret::Secret;

use super::*;

const TOKEN: &str = "tok-SECRET-4f9a8b7c";

fn config(header: AuthHeader) -> Config {
    let mut c = Config::default();
    c.chroma.auth_token = Some(Secret::new(TOKEN.to_string()));
    c.chroma.auth_header = header;
    // Nothing listens here: calls fail fast with a connect error.
    c.chroma.endpoints = vec![url::Url::parse("http://127.0.0.1:9/").expect("should succeed")];
    c.pool.connect_timeout = Duration::from_millis(200);
    c.pool.connection_timeout = Duration::from_millis(50);
    c.retry.max_retries = 1;
    c.retry.base_delay = Duration::from_millis(1);
    c
}

fn assert_clean(what: &str, s: &str) {
    assert!(!s.contains(TOKEN), "{what} leaks the token: {s}");
    assert!(
        !s.contains("4f9a8b7c"),
        "{what} leaks part of the token: {s}"
    );
}

#[tokio::test]
async fn token_absent_from_debug_and_display() {
    for header in [AuthHeader::Authorization, AuthHeader::XChromaToken] {
        let c = config(header);
        let http = pool::build_http_client(&c.chroma, &c.pool).expect("should succeed");
        assert_clean("reqwest client", &format!("{http:?}"));
        let store = ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new()))
            .expect("should succeed");
        assert_clean("store", &format!("{store:?}"));
        assert_clean("pool", &format!("{:?}", store.pool()));
        assert_clean(
            "status",
            &serde_json::to_string(&store.status()).expect("should succeed"),
        );
        let err = store.count("x").await.expect_err("should fail");
        assert_clean("error Debug", &format!("{err:?}"));
        assert_clean("error Display", &format!("{err}"));
        // Exhaust the pool to format a ConnectionPoolError too.
        let mut held = Vec::new();
        for _ in 0..c.pool.max_connections {
            held.push(store.pool().acquire("test").await);
        }
        let err = store.pool().acquire("test").await.expect_err("should fail");
        assert!(matches!(err, ChromaError::ConnectionPool(_)));
        assert_clean("pool error", &format!("{err} {err:?}"));
    }
}

#[test]
fn auth_header_is_marked_sensitive() {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut v =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("should succeed");
    v.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, v);
    assert_clean("HeaderMap", &format!("{headers:?}"));
}

/// The token does reach the wire, in the configured header.
#[tokio::test]
async fn token_is_sent_in_the_configured_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (header, want) in [
        (
            AuthHeader::Authorization,
            format!("authorization: Bearer {TOKEN}"),
        ),
        (AuthHeader::XChromaToken, format!("x-chroma-token: {TOKEN}")),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.expect("read");
            let body = r#"{"is_executor_ready":true}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
        });
        let mut c = config(header);
        c.chroma.endpoints = vec![url::Url::parse(&format!("http://{addr}/")).expect("url")];
        let store =
            ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new())).expect("store");
        store.healthcheck().await.expect("healthcheck");
        let request = server.await.expect("join");
        assert!(
            request.contains(&want.to_ascii_lowercase()),
            "{want} not in {request}"
        );
    }
}

#[test]
fn unreadable_ca_file_is_a_config_error() {
    let mut c = config(AuthHeader::Authorization);
    c.chroma.tls_ca_file = Some("/nonexistent/ca.pem".into());
    let err = ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new()))
        .expect_err("missing CA file");
    assert!(matches!(err, ChromaError::Config(_)), "{err}");
    assert!(err.to_string().contains("chroma.tls_ca_file"), "{err}");
}
