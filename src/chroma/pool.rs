//! `ConnectionPool`: one reqwest client per Chroma endpoint, a semaphore of
//! `max_connections` call slots, endpoint health and circuit breakers.
//!
//! Selection: the first endpoint that is healthy and whose breaker allows a
//! call; failing that, the first whose breaker allows one (an unhealthy
//! endpoint is better than none). A failed endpoint is marked unhealthy and
//! probed back in by the health checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::breaker::{BreakerState, CircuitBreaker};
use super::client::ChromaClient;
use super::error::{ChromaError, ConnectionPoolError};
use crate::config::{AuthHeader, BreakerConfig, ChromaConfig, ConnectionPoolConfig};
use crate::observe::MetricsCollector;

/// One endpoint in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointStatus {
    pub url: String,
    pub healthy: bool,
    pub breaker: BreakerState,
    pub last_error: Option<String>,
    /// Milliseconds since the last health check; `None` before the first.
    pub last_check_age_ms: Option<u64>,
    pub consecutive_failures: u32,
}

/// The pool as `chromaprod status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub endpoints: Vec<EndpointStatus>,
    pub in_use: usize,
    pub max: usize,
    pub waiting: usize,
}

#[derive(Debug)]
struct EndpointState {
    healthy: bool,
    breaker: CircuitBreaker,
    last_error: Option<String>,
    last_check: Option<Instant>,
    last_used: Instant,
}

#[derive(Debug)]
struct Endpoint {
    url: String,
    client: ChromaClient,
    state: Mutex<EndpointState>,
}

impl Endpoint {
    fn lock(&self) -> MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct PoolInner {
    endpoints: Vec<Endpoint>,
    slots: Arc<Semaphore>,
    max: usize,
    waiting: AtomicUsize,
    config: ConnectionPoolConfig,
    metrics: Arc<MetricsCollector>,
}

/// Health-checked connections to one or more Chroma endpoints. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("status", &self.status())
            .finish()
    }
}

/// A leased call slot on one endpoint. Report the outcome with
/// [`Lease::success`] / [`Lease::failure`]; dropping it without a verdict
/// frees a half-open probe slot.
pub struct Lease {
    pool: ConnectionPool,
    index: usize,
    client: ChromaClient,
    _permit: OwnedSemaphorePermit,
    done: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub fn client(&self) -> &ChromaClient {
        &self.client
    }

    pub fn endpoint(&self) -> &str {
        &self.pool.inner.endpoints[self.index].url
    }

    /// The call got an answer from the server (2xx or a 4xx verdict).
    pub fn success(mut self) {
        self.done = true;
        self.pool.record(self.index, None);
    }

    /// The call failed; transient failures count against the breaker and
    /// those that say the endpoint is down take it out of rotation.
    pub fn failure(mut self, err: &ChromaError) {
        self.done = true;
        self.pool.record(self.index, Some(err));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            self.pool.inner.endpoints[self.index]
                .lock()
                .breaker
                .on_abandon();
        }
    }
}

/// Build the reqwest client shared by every call to one endpoint.
pub fn build_http_client(
    chroma: &ChromaConfig,
    pool: &ConnectionPoolConfig,
) -> Result<reqwest::Client, ChromaError> {
    let mut headers = HeaderMap::new();
    if let Some(token) = &chroma.auth_token {
        let (name, value) = match chroma.auth_header {
            AuthHeader::Authorization => (AUTHORIZATION, format!("Bearer {}", token.expose())),
            AuthHeader::XChromaToken => (
                HeaderName::from_static("x-chroma-token"),
                token.expose().clone(),
            ),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            ChromaError::Config(
                "the auth token contains characters not allowed in an HTTP header; check chroma.auth_token_file".into(),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let mut b = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(pool.connect_timeout)
        .timeout(pool.request_timeout)
        .pool_idle_timeout(pool.max_idle_time)
        .pool_max_idle_per_host(pool.max_connections)
        .tcp_nodelay(true)
        .user_agent(concat!("chromaprod/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &chroma.tls_ca_file {
        let pem = fs_err::read(ca)
            .map_err(|e| ChromaError::Config(format!("cannot read chroma.tls_ca_file: {e}")))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            ChromaError::Config(format!(
                "chroma.tls_ca_file {} is not a PEM certificate: {e}",
                ca.display()
            ))
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| ChromaError::Config(format!("cannot build the HTTP client: {e}")))
}

impl ConnectionPool {
    /// The pool over `chroma.endpoints`; no I/O (besides reading the CA file).
    pub fn new(
        chroma: &ChromaConfig,
        config: &ConnectionPoolConfig,
        breaker: &BreakerConfig,
        metrics: Arc<MetricsCollector>,
    ) -> Result<Self, ChromaError> {
        if chroma.endpoints.is_empty() {
            return Err(ChromaError::Config(
                "chroma.endpoints is empty; give at least one Chroma URL".into(),
            ));
        }
        let now = Instant::now();
        let mut endpoints = Vec::new();
        for url in &chroma.endpoints {
            let http = build_http_client(chroma, config)?;
            let client = ChromaClient::new(
                http,
                url,
                &chroma.tenant,
                &chroma.database,
                config.request_timeout,
            )?;
            endpoints.push(Endpoint {
                url: url.to_string(),
                client,
                state: Mutex::new(EndpointState {
                    healthy: true,
                    breaker: CircuitBreaker::new(breaker),
                    last_error: None,
                    last_check: None,
                    last_used: now,
                }),
            });
        }
        let names: Vec<String> = endpoints.iter().map(|e| e.url.clone()).collect();
        metrics.retain_endpoints(&names);
        for n in &names {
            metrics.endpoint_state(n, true, false);
        }
        Ok(ConnectionPool {
            inner: Arc::new(PoolInner {
                endpoints,
                slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
                max: config.max_connections.max(1),
                waiting: AtomicUsize::new(0),
                config: config.clone(),
                metrics,
            }),
        })
    }

    pub fn config(&self) -> &ConnectionPoolConfig {
        &self.inner.config
    }

    pub fn endpoint_urls(&self) -> Vec<Url> {
        self.inner
            .endpoints
            .iter()
            .filter_map(|e| Url::parse(&e.url).ok())
            .collect()
    }

    pub fn status(&self) -> PoolStatus {
        let now = Instant::now();
        let endpoints = self
            .inner
            .endpoints
            .iter()
            .map(|e| {
                let s = e.lock();
                EndpointStatus {
                    url: e.url.clone(),
                    healthy: s.healthy,
                    breaker: s.breaker.state(now),
                    last_error: s.last_error.clone(),
                    last_check_age_ms: s.last_check.map(|t| {
                        u64::try_from(now.saturating_duration_since(t).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                    consecutive_failures: s.breaker.consecutive_failures(),
                }
            })
            .collect();
        PoolStatus {
            endpoints,
            in_use: self.inner.max - self.inner.slots.available_permits(),
            max: self.inner.max,
            waiting: self.inner.waiting.load(Ordering::Relaxed),
        }
    }

    fn pool_error(&self, operation: &'static str, waited: Duration) -> ConnectionPoolError {
        let st = self.status();
        let endpoints = st
            .endpoints
            .iter()
            .map(|e| {
                format!(
                    "{} ({}, breaker {}{})",
                    e.url,
                    if e.healthy { "healthy" } else { "unhealthy" },
                    e.breaker.as_str(),
                    e.last_error
                        .as_ref()
                        .map(|l| format!(", last error: {l}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        ConnectionPoolError {
            operation,
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            in_use: st.in_use,
            max: st.max,
            waiting: st.waiting,
            endpoints,
        }
    }

    /// Wait (at most `connection_timeout`) for a call slot, then pick an
    /// endpoint. `CircuitOpen` when every breaker rejects calls.
    pub async fn acquire(&self, operation: &'static str) -> Result<Lease, ChromaError> {
        let started = Instant::now();
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(
            self.inner.config.connection_timeout,
            self.inner.slots.clone().acquire_owned(),
        )
        .await;
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = match permit {
            Ok(Ok(p)) => p,
            _ => return Err(self.pool_error(operation, started.elapsed()).into()),
        };
        let index = self.select(Instant::now()).await?;
        let client = self.inner.endpoints[index].client.clone();
        Ok(Lease {
            pool: self.clone(),
            index,
            client,
            _permit: permit,
            done: false,
        })
    }

    /// Choose an endpoint and take its breaker slot. Idle endpoints are
    /// health-checked first.
    async fn select(&self, now: Instant) -> Result<usize, ChromaError> {
        let eps = &self.inner.endpoints;
        let max_idle = self.inner.config.max_idle_time;
        // Pass 1: healthy endpoints; pass 2: any whose breaker allows a call.
        for want_healthy in [true, false] {
            for (i, e) in eps.iter().enumerate() {
                let idle = {
                    let s = e.lock();
                    if want_healthy && !s.healthy {
                        continue;
                    }
                    if !s.breaker.would_allow(now) {
                        continue;
                    }
                    s.healthy && now.saturating_duration_since(s.last_used) > max_idle
                };
                if idle && eps.len() > 1 && !self.check_endpoint(i).await {
                    continue;
                }
                let mut s = e.lock();
                if s.breaker.try_acquire(Instant::now()) {
                    s.last_used = Instant::now();
                    return Ok(i);
                }
            }
        }
        // Every breaker is open: report the one that reopens soonest.
        let (url, retry_in) = eps
            .iter()
            .map(|e| (e.url.clone(), e.lock().breaker.retry_in(now)))
            .min_by_key(|(_, d)| *d)
            .unwrap_or_default();
        Err(ChromaError::CircuitOpen {
            endpoint: url,
            retry_in,
        })
    }

    fn record(&self, index: usize, err: Option<&ChromaError>) {
        let e = &self.inner.endpoints[index];
        let (healthy, open) = {
            let mut s = e.lock();
            let now = Instant::now();
            match err {
                None => {
                    s.breaker.on_success();
                    s.healthy = true;
                }
                Some(err) if err.is_transient() => {
                    s.breaker.on_failure(now);
                    s.last_error = Some(err.to_string());
                    if err.endpoint_is_down() {
                        s.healthy = false;
                    }
                }
                Some(_) => s.breaker.on_success(),
            }
            (s.healthy, s.breaker.state(now) == BreakerState::Open)
        };
        self.inner.metrics.endpoint_state(&e.url, healthy, open);
    }

    /// Health-check endpoint `index` now (`min_connections` checks at
    /// once, all must pass); returns whether it is healthy.
    pub async fn check_endpoint(&self, index: usize) -> bool {
        let e = &self.inner.endpoints[index];
        let timeout = self.inner.config.request_timeout.min(
            self.inner
                .config
                .health_check_interval
                .max(Duration::from_millis(100)),
        );
        // `min_connections` concurrent checks keep that many connections
        // open (reqwest keeps them idle up to `max_idle_time`).
        let checks = (0..self.inner.config.min_connections.max(1)).map(|_| async {
            match tokio::time::timeout(timeout, e.client.healthcheck()).await {
                Ok(r) => r,
                Err(_) => Err(ChromaError::Timeout {
                    operation: "healthcheck",
                    endpoint: e.url.clone(),
                    after: timeout,
                }),
            }
        });
        let result = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(()));
        let (healthy, open) = {
            let mut s = e.lock();
            let now = Instant::now();
            s.last_check = Some(now);
            match &result {
                Ok(()) => {
                    if !s.healthy {
                        tracing::info!(endpoint = %e.url, "Chroma endpoint is healthy again");
                    }
                    // A passing health check is a successful probe: it closes an
                    // open breaker rather than waiting out `open_duration`.
                    if s.breaker.state(now) != BreakerState::Closed {
                        s.breaker.on_success();
                    }
                    s.healthy = true;
                    s.last_used = now;
                }
                Err(err) => {
                    if s.healthy {
                        tracing::warn!(endpoint = %e.url, error = %err, "Chroma endpoint failed its health check");
                    }
                    s.healthy = false;
                    s.last_error = Some(err.to_string());
                }
            }
            (s.healthy, s.breaker.state(now) == BreakerState::Open)
        };
        self.inner.metrics.endpoint_state(&e.url, healthy, open);
        healthy
    }

    /// Health-check every endpoint once (concurrently).
    pub async fn check_all(&self) {
        let checks = (0..self.inner.endpoints.len()).map(|i| self.check_endpoint(i));
        futures_util::future::join_all(checks).await;
    }

    /// Check every endpoint each `health_check_interval` until cancelled.
    pub async fn run_health_checks(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.config.health_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.check_all() => {}
            }
        }
    }
}
