//! Network faults between chromaprod and a real Chroma server: latency,
//! resets, a dead and restarted server, a black hole, 429/503 with and
//! without `Retry-After`, failover, pool exhaustion, the circuit breaker.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::chroma::{
    BreakerState, ChromaError, CreateCollection, GetRequest, Include, ProductionChromaStore,
    RecordBatch, RetryManager,
};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use common::chroma::ChromaServer;
use common::proxy::{Fault, FaultProxy};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Short timeouts so every fault resolves in well under a second or two.
fn config(endpoints: Vec<Url>) -> Config {
    let mut c = Config::default();
    c.chroma.endpoints = endpoints;
    c.pool.max_connections = 4;
    c.pool.connect_timeout = Duration::from_millis(300);
    c.pool.request_timeout = Duration::from_millis(500);
    c.pool.connection_timeout = Duration::from_millis(200);
    c.pool.health_check_interval = Duration::from_millis(100);
    c.retry.max_retries = 3;
    c.retry.base_delay = Duration::from_millis(20);
    c.retry.max_delay = Duration::from_millis(200);
    c.retry.deadline = Duration::from_secs(5);
    c.retry.budget_min_per_second = 100;
    c.breaker.failure_threshold = 3;
    c.breaker.open_duration = Duration::from_millis(300);
    c
}

fn store(c: &Config) -> (ProductionChromaStore, Arc<MetricsCollector>) {
    let metrics = Arc::new(MetricsCollector::new());
    // Jitter fixed at 1.0: delays are the capped exponential exactly.
    let retry = RetryManager::with_jitter(c.retry.clone(), Box::new(|| 1.0));
    let s = ProductionChromaStore::with_retry(c, metrics.clone(), retry).expect("store");
    (s, metrics)
}

/// A collection with three records, created directly on the server.
async fn seed(server: &ChromaServer, name: &str) -> String {
    let (s, _) = store(&config(vec![server.url()]));
    let coll = s
        .create_collection(&CreateCollection {
            name: name.into(),
            configuration: Some(serde_json::json!({"hnsw": {"space": "l2"}})),
            get_or_create: true,
            ..CreateCollection::default()
        })
        .await
        .expect("create");
    s.upsert(
        &coll.id,
        &RecordBatch {
            ids: vec!["a".into(), "b".into(), "c".into()],
            embeddings: Some(vec![vec![0.0, 1.0], vec![1.0, 0.0], vec![1.0, 1.0]]),
            ..RecordBatch::default()
        },
    )
    .await
    .expect("upsert");
    coll.id
}

/// Poll `cond` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

fn last_error(e: &ChromaError) -> &ChromaError {
    match e {
        ChromaError::RetryExhausted(r) => &r.last,
        e => e,
    }
}

#[tokio::test]
async fn latency_under_and_over_the_request_timeout() {
    let server = ChromaServer::start();
    let id = seed(&server, "latency").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = config(vec![proxy.url()]);
    c.retry.max_retries = 1;
    let (s, metrics) = store(&c);

    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let t = Instant::now();
    assert_eq!(s.count(&id).await.expect("count under timeout"), 3);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(proxy.forwarded(), 1, "no retry when under the timeout");

    proxy.set(Fault::Latency(Duration::from_secs(3)));
    let t = Instant::now();
    let err = s.count(&id).await.expect_err("over the timeout");
    let elapsed = t.elapsed();
    assert!(
        matches!(last_error(&err), ChromaError::Timeout { .. }),
        "{err}"
    );
    match &err {
        ChromaError::RetryExhausted(r) => assert_eq!(r.attempts, 2, "timeout of a read is retried"),
        e => panic!("expected RetryExhausted, got {e}"),
    }
    // Two attempts of 500 ms plus 20 ms back-off; never the 3 s latency.
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert!(metrics
        .encode()
        .contains("chromaprod_retries_total{operation=\"count\"} 1"));
}

#[tokio::test]
async fn reset_mid_request_is_retried_for_reads_not_for_creates() {
    let server = ChromaServer::start();
    let id = seed(&server, "resets").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (s, metrics) = store(&config(vec![proxy.url()]));

    proxy.next(2, Fault::Reset);
    let got = s
        .get_records(&id, &GetRequest::page(0, 10, &Include::RECORD))
        .await
        .expect("get survives two resets");
    assert_eq!(got.ids, vec!["a", "b", "c"]);
    assert_eq!(proxy.requests(), 3);
    assert!(metrics
        .encode()
        .contains("chromaprod_retries_total{operation=\"get\"} 2"));

    // A plain create is not idempotent: a reset after sending is not retried.
    proxy.reset_counters();
    proxy.next(1, Fault::Reset);
    let err = s
        .create_collection(&CreateCollection {
            name: "created-once".into(),
            ..CreateCollection::default()
        })
        .await
        .expect_err("reset create");
    assert!(
        matches!(last_error(&err), ChromaError::Reset { .. }),
        "{err:?}"
    );
    assert_eq!(proxy.requests(), 1, "create was not retried");

    // Upsert is idempotent and is retried.
    proxy.next(1, Fault::Reset);
    s.upsert(
        &id,
        &RecordBatch {
            ids: vec!["d".into()],
            embeddings: Some(vec![vec![2.0, 2.0]]),
            ..RecordBatch::default()
        },
    )
    .await
    .expect("upsert survives a reset");
    assert_eq!(s.count(&id).await.expect("count"), 4);
}

#[tokio::test]
async fn killed_and_restarted_server_recovers() {
    let mut server = ChromaServer::start();
    let id = seed(&server, "restart").await;
    let mut c = config(vec![server.url()]);
    c.retry.max_retries = 1;
    let (s, metrics) = store(&c);
    let cancel = CancellationToken::new();
    let checker = tokio::spawn({
        let s = s.clone();
        let cancel = cancel.clone();
        async move { s.run_health_checks(cancel).await }
    });
    assert_eq!(s.count(&id).await.expect("count"), 3);
    let ep = server.url().to_string();
    let up = format!("chromaprod_endpoint_up{{endpoint=\"{ep}\"}} 1");
    let down = format!("chromaprod_endpoint_up{{endpoint=\"{ep}\"}} 0");

    server.stop();
    let err = s.count(&id).await.expect_err("server is down");
    assert!(
        matches!(last_error(&err), ChromaError::Connect { .. }),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(
        eventually(Duration::from_secs(3), || !s.status().endpoints[0].healthy).await,
        "status shows the endpoint down"
    );
    let st = s.status();
    assert!(st.endpoints[0].last_error.is_some());
    assert!(metrics.encode().contains(&down), "{}", metrics.encode());

    server.restart();
    assert!(
        eventually(Duration::from_secs(5), || s.status().endpoints[0].healthy).await,
        "health checks bring the endpoint back: {:?}",
        s.status()
    );
    assert!(metrics.encode().contains(&up));
    assert_eq!(s.count(&id).await.expect("count after restart"), 3);
    assert_eq!(s.status().endpoints[0].breaker, BreakerState::Closed);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), checker)
        .await
        .expect("health loop stops when cancelled")
        .expect("join");
}

#[tokio::test]
async fn blackhole_times_out_without_hanging() {
    let server = ChromaServer::start();
    let id = seed(&server, "blackhole").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = config(vec![proxy.url()]);
    c.retry.max_retries = 0;
    let (s, _) = store(&c);
    proxy.set(Fault::Blackhole);
    let t = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), s.count(&id))
        .await
        .expect("no hang")
        .expect_err("black hole");
    assert!(
        matches!(last_error(&err), ChromaError::Timeout { .. }),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn too_many_requests_and_unavailable_are_retried_honouring_retry_after() {
    let server = ChromaServer::start();
    let id = seed(&server, "throttle").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (s, _) = store(&config(vec![proxy.url()]));

    for status in [429u16, 503] {
        // With Retry-After: 1 the retry waits at least a second.
        proxy.reset_counters();
        proxy.next(1, Fault::respond(status, &[("Retry-After", "1")], "{}"));
        let t = Instant::now();
        assert_eq!(s.count(&id).await.expect("retried"), 3);
        assert!(
            t.elapsed() >= Duration::from_secs(1),
            "{status}: {:?}",
            t.elapsed()
        );
        assert_eq!(proxy.requests(), 2);

        // Without it, the back-off (20 ms, 40 ms) applies.
        proxy.reset_counters();
        proxy.next(2, Fault::respond(status, &[], "{}"));
        let t = Instant::now();
        assert_eq!(s.count(&id).await.expect("retried"), 3);
        assert!(
            t.elapsed() < Duration::from_millis(800),
            "{status}: {:?}",
            t.elapsed()
        );
        assert_eq!(proxy.requests(), 3);
    }

    // A 400 is never retried.
    proxy.reset_counters();
    proxy.next(
        1,
        Fault::respond(400, &[], r#"{"error":"InvalidArgumentError"}"#),
    );
    let err = s.count(&id).await.expect_err("400");
    assert_eq!(err.status(), Some(400));
    assert!(!err.is_transient());
    assert_eq!(proxy.requests(), 1);
}

#[tokio::test]
async fn failover_between_two_endpoints_and_back() {
    let server = ChromaServer::start();
    let id = seed(&server, "failover").await;
    let proxy = FaultProxy::start(server.addr()).await;
    // Endpoint 1: through the proxy; endpoint 2: the server directly.
    let (s, _) = store(&config(vec![proxy.url(), server.url()]));
    let cancel = CancellationToken::new();
    tokio::spawn({
        let s = s.clone();
        let cancel = cancel.clone();
        async move { s.run_health_checks(cancel).await }
    });

    assert_eq!(s.count(&id).await.expect("count"), 3);
    assert!(proxy.forwarded() >= 1, "first endpoint preferred");

    proxy.set(Fault::Reset);
    assert_eq!(s.count(&id).await.expect("fails over"), 3);
    assert!(!s.status().endpoints[0].healthy);
    let before = proxy.requests();
    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(s.count(&id).await.expect("count"), 3);
    }
    // Only health checks (one per 100 ms) reach the failed endpoint now.
    let allowed = usize::try_from(t.elapsed().as_millis() / 100).expect("small") + 2;
    let reached = proxy.requests() - before;
    assert!(
        reached <= allowed,
        "{reached} requests reached it, allowed {allowed}"
    );

    proxy.set(Fault::PassThrough);
    assert!(
        eventually(Duration::from_secs(3), || s.status().endpoints[0].healthy).await,
        "probed back in"
    );
    let before = proxy.forwarded();
    assert_eq!(s.count(&id).await.expect("count"), 3);
    assert!(proxy.forwarded() > before, "back on the first endpoint");
    cancel.cancel();
}

#[tokio::test]
async fn pool_exhaustion_names_the_pool_state() {
    let server = ChromaServer::start();
    let id = seed(&server, "exhaust").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = config(vec![proxy.url()]);
    c.pool.max_connections = 1;
    c.pool.connection_timeout = Duration::from_millis(100);
    c.pool.request_timeout = Duration::from_secs(3);
    let (s, metrics) = store(&c);
    proxy.set(Fault::Latency(Duration::from_millis(1500)));
    let holder = tokio::spawn({
        let s = s.clone();
        let id = id.clone();
        async move { s.count(&id).await }
    });
    assert!(eventually(Duration::from_secs(2), || s.status().in_use == 1).await);
    let t = Instant::now();
    let err = s.count(&id).await.expect_err("pool exhausted");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    let ChromaError::ConnectionPool(pe) = &err else {
        panic!("expected ConnectionPoolError, got {err}")
    };
    assert_eq!((pe.in_use, pe.max), (1, 1));
    let msg = err.to_string();
    assert!(msg.contains("1 of 1 slots in use"), "{msg}");
    assert!(msg.contains(proxy.url().as_str()), "{msg}");
    assert!(msg.contains("pool.max_connections"), "{msg}");
    assert_eq!(holder.await.expect("join").expect("holder finishes"), 3);
    assert!(metrics
        .encode()
        .contains("chromaprod_chroma_requests_total{operation=\"count\",outcome=\"rejected\"} 1"));
}

#[tokio::test]
async fn breaker_opens_after_failures_and_closes_after_a_probe() {
    let server = ChromaServer::start();
    let id = seed(&server, "breaker").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = config(vec![proxy.url()]);
    c.retry.max_retries = 0;
    let (s, metrics) = store(&c);
    let ep = proxy.url().to_string();

    proxy.set(Fault::respond(503, &[], "{}"));
    for _ in 0..3 {
        let err = s.count(&id).await.expect_err("503");
        assert_eq!(err.status(), Some(503));
    }
    assert_eq!(s.status().endpoints[0].breaker, BreakerState::Open);
    assert_eq!(s.status().endpoints[0].consecutive_failures, 3);
    assert!(metrics
        .encode()
        .contains(&format!("chromaprod_circuit_open{{endpoint=\"{ep}\"}} 1")));
    let before = proxy.requests();
    let err = s.count(&id).await.expect_err("open breaker");
    assert!(
        matches!(last_error(&err), ChromaError::CircuitOpen { .. }),
        "{err}"
    );
    assert_eq!(proxy.requests(), before, "an open breaker sends nothing");

    proxy.set(Fault::PassThrough);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.status().endpoints[0].breaker, BreakerState::HalfOpen);
    assert_eq!(s.count(&id).await.expect("probe succeeds"), 3);
    assert_eq!(s.status().endpoints[0].breaker, BreakerState::Closed);
    assert!(metrics
        .encode()
        .contains(&format!("chromaprod_circuit_open{{endpoint=\"{ep}\"}} 0")));
}

#[tokio::test]
async fn upsert_splits_the_batch_on_413() {
    let server = ChromaServer::start();
    let id = seed(&server, "split413").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (s, _) = store(&config(vec![proxy.url()]));
    s.pre_flight_checks().await.expect("pre-flight");
    proxy.reset_counters();
    proxy.next(
        1,
        Fault::respond(413, &[], r#"{"error":"payload too large"}"#),
    );
    let batch = RecordBatch {
        ids: (0..4).map(|i| format!("s{i}")).collect(),
        embeddings: Some((0..4).map(|i| vec![i as f32, 5.0]).collect()),
        ..RecordBatch::default()
    };
    let sent = s.upsert(&id, &batch).await.expect("split and sent");
    assert_eq!(sent, 2, "413 halves the batch");
    assert_eq!(proxy.requests(), 3, "the 413 was not retried as-is");
    assert_eq!(s.count(&id).await.expect("count"), 7);
}
