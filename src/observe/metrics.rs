//! Prometheus metrics (`MetricsCollector`). Every label set is bounded: label
//! values come from fixed operation names, outcomes and configured endpoints.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionOutcomeLabels {
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// Collections read through a local Chroma's change feed, and read whole
/// although `chroma.persist_directory` is set ([`MetricsCollector::change_feed_reads`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedReads {
    pub used: u64,
    pub fallback: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Outcome of one logical Chroma call (after retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The server answered with a client error (4xx): not retried.
    ClientError,
    /// Transport or server failure that exhausted retries or the deadline.
    Failure,
    /// Refused locally: breaker open or pool exhausted.
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::Failure => "failure",
            Outcome::Rejected => "rejected",
        }
    }
}

/// The daemon's metrics registry and the handles that update it.
pub struct MetricsCollector {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<OperationLabels, Histogram>,
    retries: Family<OperationLabels, Counter>,
    endpoint_up: Family<EndpointLabels, Gauge>,
    circuit_open: Family<EndpointLabels, Gauge>,
    reloads: Family<OutcomeLabels, Counter>,
    backup_last_success: Family<TypeLabels, Gauge>,
    backup_duration: Family<TypeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    backup_bytes: Family<TypeLabels, Counter>,
    backup_failures: Family<TypeLabels, Counter>,
    migration_version: Gauge,
    migration_runs: Family<DirectionOutcomeLabels, Counter>,
    change_feed: Family<FeedLabels, Counter>,
    /// The same by outcome alone, for [`MetricsCollector::change_feed_reads`].
    feed_used: Counter,
    feed_fallback: Counter,
    /// Endpoints currently exported, so removed endpoints stop being reported.
    endpoints: Mutex<Vec<String>>,
}

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsCollector")
    }
}

impl Default for MetricsCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsCollector {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("chromaprod");
        registry.register(
            "build",
            "chromaprod build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "chroma_requests",
            "Chroma API calls by operation and outcome (after retries)",
            requests.clone(),
        );
        let durations = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register_with_unit(
            "chroma_request_duration",
            "Duration of Chroma API calls including retries",
            Unit::Seconds,
            durations.clone(),
        );
        let retries = Family::<OperationLabels, Counter>::default();
        registry.register(
            "retries",
            "Retried Chroma calls by operation",
            retries.clone(),
        );
        let endpoint_up = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "endpoint_up",
            "1 when the endpoint's last health check passed",
            endpoint_up.clone(),
        );
        let circuit_open = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "circuit_open",
            "1 when the endpoint's circuit breaker is open",
            circuit_open.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome",
            reloads.clone(),
        );
        let backup_last_success = Family::<TypeLabels, Gauge>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last successful job by type (full, incremental, collection, restore, prune, verify)",
            backup_last_success.clone(),
        );
        let backup_duration =
            Family::<TypeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "backup_last_duration",
            "Duration of the last job by type",
            Unit::Seconds,
            backup_duration.clone(),
        );
        let backup_bytes = Family::<TypeLabels, Counter>::default();
        registry.register_with_unit(
            "backup_written",
            "Bytes written to the backup repository by type",
            Unit::Bytes,
            backup_bytes.clone(),
        );
        let backup_failures = Family::<TypeLabels, Counter>::default();
        registry.register(
            "backup_failures",
            "Failed backup-related jobs by type",
            backup_failures.clone(),
        );
        let migration_version = Gauge::default();
        registry.register(
            "migration_version",
            "Highest migration version applied (or stamped) in Chroma, as last seen",
            migration_version.clone(),
        );
        let migration_runs = Family::<DirectionOutcomeLabels, Counter>::default();
        registry.register(
            "migrations",
            "Migrations run, by direction (up, down) and outcome",
            migration_runs.clone(),
        );
        let change_feed = Family::<FeedLabels, Counter>::default();
        registry.register(
            "change_feed_reads",
            "Collections an incremental backup, a delta restore's comparison or a rebuild's catch-up read through a local Chroma's change feed (outcome used), or read whole over HTTP although chroma.persist_directory is set (outcome fallback, with the reason)",
            change_feed.clone(),
        );
        // Counters an alert watches with increase() exist from the start at 0:
        // a series that appears only at its first failure would never show
        // an increase (the job kinds are those of `commands::JobKind`).
        for kind in [
            "full",
            "incremental",
            "collection",
            "restore",
            "prune",
            "verify",
        ] {
            let _ = backup_failures.get_or_create(&TypeLabels { r#type: kind });
        }
        for outcome in ["success", "failure"] {
            let _ = reloads.get_or_create(&OutcomeLabels { outcome });
        }
        for direction in ["up", "down"] {
            let _ = migration_runs.get_or_create(&DirectionOutcomeLabels {
                direction,
                outcome: "failure",
            });
        }
        MetricsCollector {
            change_feed,
            feed_used: Counter::default(),
            feed_fallback: Counter::default(),
            migration_version,
            migration_runs,
            backup_last_success,
            backup_duration,
            backup_bytes,
            backup_failures,
            registry,
            requests,
            durations,
            retries,
            endpoint_up,
            circuit_open,
            reloads,
            endpoints: Mutex::new(Vec::new()),
        }
    }

    /// One logical call finished.
    pub fn chroma_request(&self, operation: &'static str, outcome: Outcome, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                operation,
                outcome: outcome.as_str(),
            })
            .inc();
        self.durations
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// A call is being retried.
    pub fn retry(&self, operation: &'static str) {
        self.retries
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Current health and breaker state of one configured endpoint.
    pub fn endpoint_state(&self, endpoint: &str, up: bool, circuit_open: bool) {
        let labels = EndpointLabels {
            endpoint: endpoint.to_string(),
        };
        {
            let mut known = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            if !known.iter().any(|e| e == endpoint) {
                known.push(endpoint.to_string());
            }
        }
        self.endpoint_up.get_or_create(&labels).set(i64::from(up));
        self.circuit_open
            .get_or_create(&labels)
            .set(i64::from(circuit_open));
    }

    /// Replace the set of reported endpoints (after a reload removed some).
    pub fn retain_endpoints(&self, endpoints: &[String]) {
        let mut known = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for old in known.iter().filter(|e| !endpoints.contains(e)) {
            let labels = EndpointLabels {
                endpoint: old.clone(),
            };
            self.endpoint_up.remove(&labels);
            self.circuit_open.remove(&labels);
        }
        *known = endpoints.to_vec();
    }

    pub fn config_reload(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A backup-related job finished. `kind` is a fixed name (full,
    /// incremental, collection, restore, prune, verify).
    pub fn backup_job(&self, kind: &'static str, ok: bool, elapsed: Duration, bytes: u64) {
        let labels = TypeLabels { r#type: kind };
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.backup_last_success.get_or_create(&labels).set(now);
            self.backup_duration
                .get_or_create(&labels)
                .set(elapsed.as_secs_f64());
            self.backup_bytes.get_or_create(&labels).inc_by(bytes);
        } else {
            self.backup_failures.get_or_create(&labels).inc();
        }
    }

    /// The highest applied migration version, as last read from Chroma.
    pub fn migration_version(&self, version: u32) {
        self.migration_version.set(i64::from(version));
    }

    /// One migration ran (`direction`: up or down).
    pub fn migration_run(&self, direction: &'static str, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.migration_runs
            .get_or_create(&DirectionOutcomeLabels { direction, outcome })
            .inc();
    }

    /// A backup, delta restore or rebuild read one collection through the
    /// change feed (`reason` `None`) or fell back to reading it whole
    /// (`reason`: a fixed label, `chroma::local::Unusable::reason`).
    pub fn change_feed(&self, reason: Option<&'static str>) {
        let labels = match reason {
            None => {
                self.feed_used.inc();
                FeedLabels {
                    outcome: "used",
                    reason: "",
                }
            }
            Some(reason) => {
                self.feed_fallback.inc();
                FeedLabels {
                    outcome: "fallback",
                    reason,
                }
            }
        };
        self.change_feed.get_or_create(&labels).inc();
    }

    /// `chromaprod_change_feed_reads_total` summed by outcome, every reason
    /// together.
    pub fn change_feed_reads(&self) -> FeedReads {
        FeedReads {
            used: self.feed_used.get(),
            fallback: self.feed_fallback.get(),
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_documented_ones() {
        let m = MetricsCollector::new();
        m.chroma_request("get", Outcome::Success, Duration::from_millis(3));
        m.retry("get");
        m.endpoint_state("http://127.0.0.1:8000/", true, false);
        m.config_reload(false);
        let text = m.encode();
        for needle in [
            "chromaprod_build_info{version=",
            "chromaprod_chroma_requests_total{operation=\"get\",outcome=\"success\"} 1",
            "chromaprod_chroma_request_duration_seconds_bucket",
            "chromaprod_retries_total{operation=\"get\"} 1",
            "chromaprod_endpoint_up{endpoint=\"http://127.0.0.1:8000/\"} 1",
            "chromaprod_circuit_open{endpoint=\"http://127.0.0.1:8000/\"} 0",
            "chromaprod_config_reloads_total{outcome=\"failure\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
        m.retain_endpoints(&[]);
        assert!(!m.encode().contains("chromaprod_endpoint_up{"));
    }

    #[test]
    fn alerted_counters_start_at_zero() {
        let text = MetricsCollector::new().encode();
        for needle in [
            "chromaprod_backup_failures_total{type=\"full\"} 0",
            "chromaprod_backup_failures_total{type=\"verify\"} 0",
            "chromaprod_config_reloads_total{outcome=\"failure\"} 0",
            "chromaprod_config_reloads_total{outcome=\"success\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }
}
