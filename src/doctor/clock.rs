//! Clock skew between this host and the repository's backend.
//!
//! Repository locks expire by the wall clock (`backup.lock_ttl`), so hosts
//! sharing a repository must agree on the time; S3 and Azure also reject
//! signed requests more than 15 minutes off. The backend's time comes from
//! the `Date` header of an unauthenticated `HEAD` of its endpoint (any status
//! carries one), or, for a local repository, from the modification time the
//! file system gave a freshly written probe (meaningful on NFS and the like).

use std::time::{Duration, SystemTime};

use crate::storage::{Env, Location};

use super::Status;

/// Skew below this is normal (NTP keeps hosts within milliseconds).
const WARN_AT: Duration = Duration::from_secs(10);
/// Cloud stores reject signed requests this far off.
const SIGNATURE_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The backend's clock relative to ours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Backend time minus local time, in seconds (positive: backend ahead).
    pub offset_secs: f64,
    /// How far off the measurement itself may be (half the round trip plus
    /// the timestamp's resolution), in seconds.
    pub uncertainty_secs: f64,
}

impl Skew {
    /// The skew seen by one exchange: our clock read before (`sent`) and
    /// after (`received`) it, and the backend's timestamp in between,
    /// which has `resolution`.
    pub fn measure(
        sent: SystemTime,
        received: SystemTime,
        remote: SystemTime,
        resolution: Duration,
    ) -> Self {
        let rtt = received.duration_since(sent).unwrap_or_default();
        let mid = sent + rtt / 2;
        let offset_secs = match remote.duration_since(mid) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        };
        Skew {
            offset_secs,
            uncertainty_secs: (rtt / 2 + resolution).as_secs_f64(),
        }
    }
}

/// Thresholds for a repository whose locks live `lock_ttl`: a lease is
/// renewed every third of its life, so a host whose clock is off by more
/// than `lock_ttl / 3` may take a live lease for an expired one.
pub fn limits(lock_ttl: Duration) -> (Duration, Duration) {
    let fail = (lock_ttl / 3).min(SIGNATURE_LIMIT);
    let warn = WARN_AT.min(fail / 2);
    (warn, fail)
}

/// Judges a skew; returns the status and a one-line description.
pub fn verdict(skew: Skew, lock_ttl: Duration) -> (Status, String) {
    let (warn, fail) = limits(lock_ttl);
    // The smallest skew consistent with the measurement.
    let lower = (skew.offset_secs.abs() - skew.uncertainty_secs).max(0.0);
    let direction = if skew.offset_secs >= 0.0 {
        "ahead of"
    } else {
        "behind"
    };
    let text = format!(
        "the backend's clock is {:.1} s {direction} this host's (±{:.2} s)",
        skew.offset_secs.abs(),
        skew.uncertainty_secs
    );
    let status = if lower > fail.as_secs_f64() {
        Status::Fail
    } else if lower > warn.as_secs_f64() {
        Status::Warn
    } else {
        Status::Ok
    };
    let limit = match status {
        Status::Fail => format!(
            "; more than {}s: repository locks (lock_ttl {}) and signed requests cannot be trusted",
            fail.as_secs(),
            humantime::format_duration(lock_ttl)
        ),
        Status::Warn => format!("; over {}s", warn.as_secs()),
        _ => String::new(),
    };
    (status, format!("{text}{limit}"))
}

/// The HTTP endpoint whose `Date` header stands for the backend's clock;
/// `None` for a local repository (or an Azure account that is not named).
pub fn backend_endpoint(location: &Location, env: &Env) -> Option<String> {
    match location {
        Location::Local(_) => None,
        Location::S3 { .. } => Some(
            env.get("AWS_ENDPOINT_URL_S3")
                .or(env.get("AWS_ENDPOINT_URL"))
                .map_or_else(
                    || {
                        let region = env
                            .get("AWS_REGION")
                            .or(env.get("AWS_DEFAULT_REGION"))
                            .unwrap_or("us-east-1");
                        format!("https://s3.{region}.amazonaws.com")
                    },
                    str::to_string,
                ),
        ),
        Location::Azure { .. } => {
            if let Some(ep) = env.get("AZURE_STORAGE_ENDPOINT") {
                return Some(ep.to_string());
            }
            if env
                .get("AZURE_STORAGE_USE_EMULATOR")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                return Some(
                    env.get("AZURITE_BLOB_STORAGE_URL")
                        .unwrap_or("http://127.0.0.1:10000")
                        .to_string(),
                );
            }
            env.get("AZURE_STORAGE_ACCOUNT_NAME")
                .map(|a| format!("https://{a}.blob.core.windows.net"))
        }
        Location::Gcs { .. } => Some(env.get("STORAGE_EMULATOR_HOST").map_or_else(
            || "https://storage.googleapis.com".to_string(),
            |h| {
                if h.contains("://") {
                    h.to_string()
                } else {
                    format!("http://{h}")
                }
            },
        )),
    }
}

/// Parses an HTTP `Date` (IMF-fixdate, e.g. `Wed, 25 Nov 2026 20:00:00 GMT`).
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let secs = u64::try_from(t.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `HEAD endpoint` and the skew its `Date` header shows.
pub async fn skew_from_http(endpoint: &str, timeout: Duration) -> Result<Skew, String> {
    let http = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!("chromaprod-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let sent = SystemTime::now();
    let resp = http
        .head(endpoint)
        .send()
        .await
        .map_err(|e| format!("HEAD {endpoint}: {}", e.without_url()))?;
    let received = SystemTime::now();
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("{endpoint} sent no Date header"))?;
    let remote = parse_http_date(date)
        .ok_or_else(|| format!("{endpoint} sent an unreadable Date header {date:?}"))?;
    Ok(Skew::measure(
        sent,
        received,
        remote,
        Duration::from_secs(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn skew_is_measured_against_the_middle_of_the_exchange() {
        let s = Skew::measure(
            at(1000),
            at(1002),
            at(1001) + Duration::from_millis(500),
            Duration::from_secs(1),
        );
        assert!((s.offset_secs - 0.5).abs() < 1e-9, "{s:?}");
        assert!((s.uncertainty_secs - 2.0).abs() < 1e-9, "{s:?}");
        let behind = Skew::measure(at(5000), at(5000), at(1400), Duration::ZERO);
        assert!((behind.offset_secs + 3600.0).abs() < 1e-9, "{behind:?}");
    }

    #[test]
    fn verdicts_follow_the_lock_ttl() {
        let ttl = Duration::from_secs(120);
        assert_eq!(
            limits(ttl),
            (Duration::from_secs(10), Duration::from_secs(40))
        );
        let skew = |offset_secs: f64| Skew {
            offset_secs,
            uncertainty_secs: 1.0,
        };
        assert_eq!(verdict(skew(0.3), ttl).0, Status::Ok);
        // Within the measurement's uncertainty of the limit: not a warning.
        assert_eq!(verdict(skew(10.9), ttl).0, Status::Ok);
        assert_eq!(verdict(skew(-25.0), ttl).0, Status::Warn);
        let (status, text) = verdict(skew(3600.0), ttl);
        assert_eq!(status, Status::Fail);
        assert!(text.contains("3600.0 s ahead"), "{text}");
        // A long lease is still bounded by the signature limit.
        assert_eq!(limits(Duration::from_secs(86_400)).1, SIGNATURE_LIMIT);
        // A short lease tightens both limits.
        assert_eq!(
            limits(Duration::from_secs(12)),
            (Duration::from_secs(2), Duration::from_secs(4))
        );
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Wed, 25 Nov 2026 20:00:00 GMT"),
            Some(at(1_795_636_800))
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn endpoints_come_from_the_backend_environment() {
        let loc = |u: &str| Location::parse(u).expect("location");
        let env = Env::from_pairs([("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")]);
        assert_eq!(
            backend_endpoint(&loc("s3://b/p"), &env).as_deref(),
            Some("http://127.0.0.1:9000")
        );
        let env = Env::from_pairs([("AWS_REGION", "eu-west-1")]);
        assert_eq!(
            backend_endpoint(&loc("s3://b"), &env).as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com")
        );
        let env = Env::from_pairs([("AZURE_STORAGE_ACCOUNT_NAME", "acct")]);
        assert_eq!(
            backend_endpoint(&loc("az://c"), &env).as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        let env = Env::from_pairs([("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")]);
        assert_eq!(
            backend_endpoint(&loc("gs://b"), &env).as_deref(),
            Some("http://127.0.0.1:4443")
        );
        assert_eq!(
            backend_endpoint(&loc("/var/backups"), &Env::default()),
            None
        );
    }
}
