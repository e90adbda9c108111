//! `ProductionChromaStore`: the daemon's handle on Chroma. Every typed
//! operation goes pool → breaker → retry, is bounded by timeouts and an
//! overall deadline, and is counted in metrics and traced with the fields
//! `operation` and `endpoint`.

use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::Instrument as _;

use super::client::{
    plan_batches, ChromaClient, Collection, CreateCollection, GetRequest, GetResult,
    ModifyCollection, PreFlight, QueryRequest, QueryResult, RecordBatch, ServerInfo, WriteOp,
    WRITE_REQUEST_BYTES,
};
use super::courtesy::Courtesy;
use super::error::{ChromaError, RetryExhaustedError};
use super::local::LocalChroma;
use super::pool::{ConnectionPool, PoolStatus};
use super::retry::{CallKind, Decision, GiveUp, RetryManager};
use crate::config::Config;
use crate::observe::{MetricsCollector, Outcome};

struct StoreInner {
    pool: ConnectionPool,
    retry: RetryManager,
    metrics: Arc<MetricsCollector>,
    preflight: Mutex<Option<PreFlight>>,
}

/// Pool + retry + breaker + health around typed Chroma v2 operations.
/// Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ProductionChromaStore {
    inner: Arc<StoreInner>,
    /// Set on a [`Self::courteous`] store: its reads leave Chroma alone
    /// while it writes.
    courtesy: Option<Arc<Courtesy>>,
}

impl std::fmt::Debug for ProductionChromaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductionChromaStore")
            .field("pool", &self.inner.pool)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

fn outcome_of(e: &ChromaError) -> Outcome {
    match e {
        ChromaError::ConnectionPool(_) | ChromaError::CircuitOpen { .. } => Outcome::Rejected,
        ChromaError::NotFound { .. } | ChromaError::InvalidRequest { .. } => Outcome::ClientError,
        ChromaError::Http { status, .. } if (400..500).contains(status) && *status != 429 => {
            Outcome::ClientError
        }
        _ => Outcome::Failure,
    }
}

impl ProductionChromaStore {
    /// Build the pool and retry policy from `config`; no network I/O.
    pub fn new(config: &Config, metrics: Arc<MetricsCollector>) -> Result<Self, ChromaError> {
        Self::with_retry(config, metrics, RetryManager::new(config.retry.clone()))
    }

    /// As [`Self::new`] with a given retry manager (e.g. fixed jitter in tests).
    pub fn with_retry(
        config: &Config,
        metrics: Arc<MetricsCollector>,
        retry: RetryManager,
    ) -> Result<Self, ChromaError> {
        let pool = ConnectionPool::new(
            &config.chroma,
            &config.pool,
            &config.breaker,
            metrics.clone(),
        )?;
        Ok(ProductionChromaStore {
            inner: Arc::new(StoreInner {
                pool,
                retry,
                metrics,
                preflight: Mutex::new(None),
            }),
            courtesy: None,
        })
    }

    /// This store (same pool, breaker, retry policy and metrics) for
    /// background work beside the local Chroma `local`: its reads leave
    /// Chroma alone while it writes ([`Courtesy`]).
    pub fn courteous(&self, local: &LocalChroma) -> Self {
        ProductionChromaStore {
            inner: self.inner.clone(),
            courtesy: Some(Arc::new(Courtesy::new(local.clone()))),
        }
    }

    /// A [`Self::courteous`] store's courtesy.
    pub fn courtesy(&self) -> Option<&Courtesy> {
        self.courtesy.as_deref()
    }

    pub fn pool(&self) -> &ConnectionPool {
        &self.inner.pool
    }

    pub fn status(&self) -> PoolStatus {
        self.inner.pool.status()
    }

    /// The metrics this store counts its calls in.
    pub fn metrics(&self) -> &Arc<MetricsCollector> {
        &self.inner.metrics
    }

    /// Background health checks of every endpoint; returns when cancelled.
    pub async fn run_health_checks(&self, cancel: tokio_util::sync::CancellationToken) {
        self.inner.pool.run_health_checks(cancel).await;
    }

    /// One call through pool, breaker and retry policy. `f` is called once
    /// per attempt with the chosen endpoint's client. A [`Self::courteous`]
    /// store's read waits its turn first (its deadline and metrics count
    /// from when it is sent).
    pub async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        kind: CallKind,
        f: F,
    ) -> Result<T, ChromaError>
    where
        F: Fn(ChromaClient) -> Fut,
        Fut: Future<Output = Result<T, ChromaError>>,
    {
        match &self.courtesy {
            // Boxed, so every call's future stays the size of a plain one.
            Some(courtesy) if kind == CallKind::Read => {
                courtesy.read(Box::pin(self.send(operation, kind, f))).await
            }
            _ => self.send(operation, kind, f).await,
        }
    }

    async fn send<T, F, Fut>(
        &self,
        operation: &'static str,
        kind: CallKind,
        f: F,
    ) -> Result<T, ChromaError>
    where
        F: Fn(ChromaClient) -> Fut,
        Fut: Future<Output = Result<T, ChromaError>>,
    {
        // Journald shows span fields on every event inside: OPERATION=… here;
        // events add ENDPOINT=… themselves (an attempt may change endpoint).
        let span = tracing::info_span!("chroma", operation);
        let started = Instant::now();
        let result = self
            .call_inner(operation, kind, &f, started)
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) => outcome_of(match e {
                ChromaError::RetryExhausted(r) => &r.last,
                e => e,
            }),
        };
        self.inner
            .metrics
            .chroma_request(operation, outcome, started.elapsed());
        result
    }

    async fn call_inner<T, F, Fut>(
        &self,
        operation: &'static str,
        kind: CallKind,
        f: &F,
        started: Instant,
    ) -> Result<T, ChromaError>
    where
        F: Fn(ChromaClient) -> Fut,
        Fut: Future<Output = Result<T, ChromaError>>,
    {
        let retry = &self.inner.retry;
        let deadline = retry.config().deadline;
        retry.on_call(started);
        let mut attempts = 0u32;
        let mut total_delay = Duration::ZERO;
        let mut endpoint = String::new();
        loop {
            attempts += 1;
            let err = match self.inner.pool.acquire(operation).await {
                Err(e) => e,
                Ok(lease) => {
                    lease.endpoint().clone_into(&mut endpoint);
                    let remaining = deadline.saturating_sub(started.elapsed());
                    let r = tokio::time::timeout(remaining, f(lease.client().clone())).await;
                    let r = r.unwrap_or_else(|_| {
                        Err(ChromaError::Timeout {
                            operation,
                            endpoint: endpoint.clone(),
                            after: remaining,
                        })
                    });
                    match r {
                        Ok(v) => {
                            lease.success();
                            return Ok(v);
                        }
                        Err(e) => {
                            if e.is_transient() {
                                lease.failure(&e);
                            } else {
                                lease.success();
                            }
                            e
                        }
                    }
                }
            };
            let a = RetryManager::attempt(kind, &err, attempts, started.elapsed());
            match retry.next(&a, Instant::now()) {
                Decision::Retry(delay) => {
                    tracing::debug!(endpoint = %endpoint, error = %err, delay_ms = delay.as_millis() as u64, attempts, "retrying Chroma call");
                    self.inner.metrics.retry(operation);
                    total_delay += delay;
                    tokio::time::sleep(delay).await;
                }
                Decision::GiveUp(GiveUp::NotRetryable) if attempts == 1 => return Err(err),
                Decision::GiveUp(reason) => {
                    if attempts == 1 && !err.is_transient() {
                        return Err(err);
                    }
                    tracing::warn!(endpoint = %endpoint, error = %err, attempts, reason = reason.as_str(), "Chroma call failed");
                    return Err(RetryExhaustedError {
                        operation,
                        attempts,
                        total_delay_ms: u64::try_from(total_delay.as_millis()).unwrap_or(u64::MAX),
                        reason: reason.as_str().to_string(),
                        last: Box::new(err),
                    }
                    .into());
                }
            }
        }
    }

    /// One health check and the pre-flight checks through the pool (used
    /// at start-up); also checks that the configured database exists.
    pub async fn check_ready(&self) -> Result<ServerInfo, ChromaError> {
        let info = self
            .call("check_ready", CallKind::Read, |c| async move {
                c.healthcheck().await?;
                let api_version = c.version().await?;
                let pf = c.pre_flight_checks().await?;
                c.check_database().await?;
                Ok(ServerInfo {
                    endpoint: c.endpoint().to_string(),
                    api_version,
                    max_batch_size: pf.max_batch_size,
                    supports_base64_encoding: pf.supports_base64_encoding,
                })
            })
            .await?;
        *self
            .inner
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(PreFlight {
            max_batch_size: info.max_batch_size,
            supports_base64_encoding: info.supports_base64_encoding,
        });
        Ok(info)
    }

    pub async fn healthcheck(&self) -> Result<(), ChromaError> {
        self.call("healthcheck", CallKind::Read, |c| async move {
            c.healthcheck().await
        })
        .await
    }

    pub async fn version(&self) -> Result<String, ChromaError> {
        self.call(
            "version",
            CallKind::Read,
            |c| async move { c.version().await },
        )
        .await
    }

    /// Pre-flight limits, fetched once and cached.
    pub async fn pre_flight_checks(&self) -> Result<PreFlight, ChromaError> {
        if let Some(p) = *self
            .inner
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            return Ok(p);
        }
        let p = self
            .call("pre_flight_checks", CallKind::Read, |c| async move {
                c.pre_flight_checks().await
            })
            .await?;
        *self
            .inner
            .preflight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(p)
    }

    /// Every collection of the database, with configuration and schema.
    pub async fn list_collections(&self) -> Result<Vec<Collection>, ChromaError> {
        const PAGE: usize = 100;
        let mut all = Vec::new();
        loop {
            let offset = all.len();
            let page = self
                .call("list_collections", CallKind::Read, |c| async move {
                    c.list_collections(Some(PAGE), Some(offset)).await
                })
                .await?;
            let n = page.len();
            all.extend(page);
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    pub async fn get_collection(&self, name: &str) -> Result<Collection, ChromaError> {
        self.call("get_collection", CallKind::Read, |c| async move {
            c.get_collection(name).await
        })
        .await
    }

    /// Create a collection. Retried only when the request surely did not
    /// arrive; with `get_or_create` it is idempotent and retried as such.
    pub async fn create_collection(
        &self,
        req: &CreateCollection,
    ) -> Result<Collection, ChromaError> {
        let kind = if req.get_or_create {
            CallKind::IdempotentWrite
        } else {
            CallKind::Write
        };
        self.call("create_collection", kind, |c| async move {
            c.create_collection(req).await
        })
        .await
    }

    pub async fn modify_collection(
        &self,
        collection_id: &str,
        req: &ModifyCollection,
    ) -> Result<(), ChromaError> {
        let kind = if req.new_name.is_some() {
            CallKind::Write
        } else {
            CallKind::IdempotentWrite
        };
        self.call("modify_collection", kind, |c| async move {
            c.modify_collection(collection_id, req).await
        })
        .await
    }

    pub async fn delete_collection(&self, name: &str) -> Result<(), ChromaError> {
        self.call("delete_collection", CallKind::Write, |c| async move {
            c.delete_collection(name).await
        })
        .await
    }

    pub async fn count(&self, collection_id: &str) -> Result<u64, ChromaError> {
        self.call("count", CallKind::Read, |c| async move {
            c.count(collection_id).await
        })
        .await
    }

    pub async fn get_records(
        &self,
        collection_id: &str,
        req: &GetRequest,
    ) -> Result<GetResult, ChromaError> {
        self.call("get", CallKind::Read, |c| async move {
            c.get_records(collection_id, req).await
        })
        .await
    }

    /// [`Self::get_records`] with the response body written to `out`
    /// instead of held in memory (see `ChromaClient::get_records_to_file`);
    /// a retried attempt starts the file again.
    pub async fn get_records_to_file(
        &self,
        collection_id: &str,
        req: &GetRequest,
        out: &std::fs::File,
    ) -> Result<u64, ChromaError> {
        self.call("get", CallKind::Read, |c| async move {
            c.get_records_to_file(collection_id, req, out).await
        })
        .await
    }

    /// One `op` request carrying `batch[range]`, retried as an idempotent
    /// write (an upsert or update sent twice leaves the same records, and
    /// a second add of an id changes nothing).
    async fn write_one(
        &self,
        op: WriteOp,
        collection_id: &str,
        batch: &RecordBatch,
        range: Range<usize>,
    ) -> Result<(), ChromaError> {
        let base64 = self.pre_flight_checks().await?.supports_base64_encoding;
        self.call(op.name(), CallKind::IdempotentWrite, |c| {
            let range = range.clone();
            async move { c.write(op, collection_id, batch, range, base64).await }
        })
        .await
    }

    /// Upsert in ONE request (no splitting); see [`Self::upsert`].
    pub async fn upsert_one(
        &self,
        collection_id: &str,
        batch: &RecordBatch,
    ) -> Result<(), ChromaError> {
        self.write_one(WriteOp::Upsert, collection_id, batch, 0..batch.len())
            .await
    }

    /// Upsert any number of records: split into requests of at most
    /// `max_batch_size` records and about [`WRITE_REQUEST_BYTES`], halving
    /// further on 413. Returns the requests sent.
    pub async fn upsert(
        &self,
        collection_id: &str,
        batch: &RecordBatch,
    ) -> Result<usize, ChromaError> {
        self.write_split(WriteOp::Upsert, collection_id, batch)
            .await
    }

    /// Add any number of records, split as [`Self::upsert`] splits them.
    /// Ids already stored keep what they hold (first writer wins). For a
    /// collection known to hold none of the ids, such as a restore's new
    /// staging collection (Chroma 1.5.9 took adds 10 % faster than upserts
    /// into a new collection of 30,000 records, and from no faster to 7 %
    /// faster at 100,000: `docs/benchmarks.md`).
    pub async fn add_all(
        &self,
        collection_id: &str,
        batch: &RecordBatch,
    ) -> Result<usize, ChromaError> {
        self.write_split(WriteOp::Add, collection_id, batch).await
    }

    async fn write_split(
        &self,
        op: WriteOp,
        collection_id: &str,
        batch: &RecordBatch,
    ) -> Result<usize, ChromaError> {
        batch
            .validate()
            .map_err(|detail| ChromaError::InvalidRequest {
                operation: op.name(),
                detail,
            })?;
        let pf = self.pre_flight_checks().await?;
        let plan = plan_batches(
            batch,
            pf.max_batch_size,
            WRITE_REQUEST_BYTES,
            pf.supports_base64_encoding,
        );
        // Each part is serialised from the batch in place; nothing is copied.
        let mut stack: Vec<Range<usize>> = plan.into_iter().rev().collect();
        let mut sent = 0;
        while let Some(r) = stack.pop() {
            match self.write_one(op, collection_id, batch, r.clone()).await {
                Ok(()) => sent += 1,
                Err(e) if e.status() == Some(413) && r.len() > 1 => {
                    let mid = r.start + r.len() / 2;
                    tracing::info!(
                        records = r.len(),
                        "Chroma answered 413; splitting the batch"
                    );
                    stack.push(mid..r.end);
                    stack.push(r.start..mid);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Update stored records in one request: the fields given replace the
    /// stored ones, metadata keys merge and a `null` value deletes the key.
    /// Idempotent: the same update twice leaves the same records.
    pub async fn update(
        &self,
        collection_id: &str,
        batch: &RecordBatch,
    ) -> Result<(), ChromaError> {
        self.write_one(WriteOp::Update, collection_id, batch, 0..batch.len())
            .await
    }

    /// Add records in one request; ids already stored keep what they hold
    /// (first writer wins), so a retried add is harmless.
    pub async fn add(&self, collection_id: &str, batch: &RecordBatch) -> Result<(), ChromaError> {
        self.write_one(WriteOp::Add, collection_id, batch, 0..batch.len())
            .await
    }

    /// Delete records by ids and/or `where`; returns the number deleted.
    pub async fn delete(
        &self,
        collection_id: &str,
        ids: Option<&[String]>,
        where_: Option<&Value>,
    ) -> Result<u64, ChromaError> {
        self.call("delete", CallKind::IdempotentWrite, |c| async move {
            c.delete(collection_id, ids, where_).await
        })
        .await
    }

    pub async fn query(
        &self,
        collection_id: &str,
        req: &QueryRequest,
    ) -> Result<QueryResult, ChromaError> {
        self.call("query", CallKind::Read, |c| async move {
            c.query(collection_id, req).await
        })
        .await
    }
}
