//! Configuration: one TOML file, overridable from the environment, validated
//! in full before anything uses it.
//!
//! Loading is layered: compiled-in defaults, then the file, then
//! `CHROMAPROD__SECTION__KEY` environment variables. [`load`] returns either
//! a complete, valid [`Config`] or every problem found, each with its key path.

mod diff;
mod load;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::secret::Secret;

pub use diff::{diff, effective, redact_secrets, ConfigDiff, KeyChange};
pub use load::{
    load, load_from_str, parse_utc_offset, plain_http_problem, secret_file_issues,
    socket_path_hint, url_location, without_user_info, ConfigError, ConfigIssue, ConfigSource,
    Loaded,
};

/// What `validate` and `doctor` say of `backup.encrypt = false`.
pub const PLAINTEXT_WARNING: &str = "backup.encrypt = false: snapshots are stored in plaintext and without authenticity: anyone who can read the repository reads every record, and anyone who can write to it can change what a restore brings back, undetected";
/// How to move to an encrypted repository.
pub const PLAINTEXT_FIX: &str = "create a key (`chromaprod key generate /etc/chromaprod/credentials/backup-key`), hand it to the service (LoadCredential=backup-key:/etc/chromaprod/credentials/backup-key), set backup.encrypt = true and point backup.storage_path at a new, empty location (a repository keeps the encryption it was created with)";

/// Settings that are valid but deserve a warning (`chromaprod validate`
/// prints them; none stops the daemon).
pub fn warnings(config: &Config) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    if !config.backup.encrypt {
        out.push(ConfigIssue {
            key: "backup.encrypt".into(),
            problem: format!("{PLAINTEXT_WARNING}; {PLAINTEXT_FIX}"),
        });
    } else if config.backup.key_file.is_none()
        && std::env::var_os("CREDENTIALS_DIRECTORY").is_none()
    {
        // Not an error: the daemon runs (health, status, migrations), and
        // each backup fails with the command that makes the key.
        out.push(ConfigIssue {
            key: "backup.key_file".into(),
            problem: "unset, and no systemd credentials are handed over here ($CREDENTIALS_DIRECTORY), so backups and restores will stop until there is a key: create one with `chromaprod key generate /etc/chromaprod/credentials/backup-key` and hand it to the service with `LoadCredential=backup-key:/etc/chromaprod/credentials/backup-key` in a drop-in (runbook: \"The key's life cycle\"), or set backup.key_file".into(),
        });
    }
    out
}

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/chromaprod/chromaprod.toml";
/// Environment variable naming the configuration file (overridden by `--config`).
pub const CONFIG_PATH_ENV: &str = "CHROMAPROD_CONFIG";
/// Prefix of per-key environment overrides: `CHROMAPROD__POOL__MAX_CONNECTIONS=20`.
pub const ENV_PREFIX: &str = "CHROMAPROD";

/// The whole daemon configuration (the founding design's
/// `ProductionVectorStoreConfig`, as TOML sections).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub chroma: ChromaConfig,
    pub pool: ConnectionPoolConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub backup: BackupConfig,
    pub migrations: MigrationsConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub daemon: DaemonConfig,
}

/// Where Chroma is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChromaConfig {
    /// One or more base URLs of Chroma servers; the first healthy one is preferred.
    pub endpoints: Vec<Url>,
    pub tenant: String,
    pub database: String,
    /// File holding the auth token; never the token itself. Unset, it is
    /// `$CREDENTIALS_DIRECTORY/chroma-token` when that file exists (the
    /// `LoadCredential=chroma-token:…` credential), as set by the reader.
    pub auth_token_file: Option<PathBuf>,
    /// Header that carries the token: `authorization` (sent as `Bearer …`) or `x-chroma-token`.
    pub auth_header: AuthHeader,
    /// PEM file of an extra CA to trust for `https://` endpoints.
    pub tls_ca_file: Option<PathBuf>,
    /// Allow the token over plain `http://` to an endpoint that is not loopback
    /// (validation refuses that otherwise).
    pub allow_plain_http: bool,
    /// The persist directory of a single-node Chroma on this host (its
    /// `--path`). When set, backups read Chroma's `chroma.sqlite3` there,
    /// read-only, to find what changed instead of reading every record
    /// (`chroma::local`); anything unexpected falls back to the HTTP way.
    pub persist_directory: Option<PathBuf>,
    /// How long start-up waits for Chroma to become reachable before giving up.
    #[serde(with = "humantime_serde")]
    pub startup_wait: Duration,
    /// The token read from `auth_token_file` at load time.
    #[serde(skip)]
    pub auth_token: Option<Secret<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthHeader {
    Authorization,
    XChromaToken,
}

/// The founding design's `ConnectionPoolConfig`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionPoolConfig {
    /// Connections kept open (and health-checked) per endpoint.
    pub min_connections: usize,
    /// Calls in flight at once across the pool; further callers wait.
    pub max_connections: usize,
    /// How long a caller waits for a free slot before `ConnectionPoolError`.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// TCP (and TLS) connect timeout of every call.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout of every call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// An endpoint idle longer than this is health-checked before use.
    #[serde(with = "humantime_serde")]
    pub max_idle_time: Duration,
    /// Period of background health checks of every endpoint.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
}

/// Classes of failure a call may be retried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum RetryableError {
    #[serde(rename = "connect")]
    Connect,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "429")]
    TooManyRequests,
    /// Retried for reads only: a 500 on a write may have been applied.
    #[serde(rename = "500")]
    InternalError,
    #[serde(rename = "502")]
    BadGateway,
    #[serde(rename = "503")]
    Unavailable,
    #[serde(rename = "504")]
    GatewayTimeout,
}

impl RetryableError {
    pub const ALL: [RetryableError; 8] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::TooManyRequests,
        Self::InternalError,
        Self::BadGateway,
        Self::Unavailable,
        Self::GatewayTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::TooManyRequests => "429",
            Self::InternalError => "500",
            Self::BadGateway => "502",
            Self::Unavailable => "503",
            Self::GatewayTimeout => "504",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The founding design's `RetryConfig`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryConfig {
    /// Retries after the first attempt (0 = no retries).
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub exponential_base: f64,
    /// Full jitter: each delay is uniform in [0, capped backoff].
    pub jitter: bool,
    pub retryable_errors: Vec<RetryableError>,
    /// Overall time limit of one call including all retries.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Retries allowed as a fraction of recent calls (token bucket); retries
    /// stop when most calls are failing.
    pub budget_ratio: f64,
    /// Retries always allowed per second regardless of the ratio.
    pub budget_min_per_second: u32,
}

/// Circuit breaker per endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker rejects calls before letting one probe through.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupConfig {
    /// Run the schedules below.
    pub enabled: bool,
    /// Cron expression (six fields, seconds first) of the scheduled full backup.
    pub schedule: String,
    /// Cron expression of scheduled incremental backups; `None` = none.
    pub incremental_schedule: Option<String>,
    /// Cron expression of scheduled prunes; `None` = none.
    pub prune_schedule: Option<String>,
    /// Cron expression of scheduled verifies; `None` = none.
    pub verify_schedule: Option<String>,
    /// Scheduled full backups are physical snapshots (Chroma's persist
    /// directory itself; needs `chroma.persist_directory`).
    pub physical: bool,
    /// Cron expression of scheduled physical snapshots; `None` = none.
    pub physical_schedule: Option<String>,
    /// Time zone the schedules are read in: `UTC` or a fixed offset like `+02:00`.
    pub timezone: String,
    /// Snapshots younger than this are always kept (0 = no age rule).
    pub retention_days: u32,
    /// Keep the newest N snapshots.
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours / days / weeks / months.
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// Repository location: a path, `file://`, `s3://`, `az://` or `gs://` URL.
    pub storage_path: String,
    /// Collection name patterns (`*` and `?`) a full backup includes …
    pub include: Vec<String>,
    /// … and excludes (applied after `include`).
    pub exclude: Vec<String>,
    /// Encrypt snapshots (AES-256-GCM). With it on, a missing or wrong key stops backups.
    pub encrypt: bool,
    /// File holding the repository key; default `$CREDENTIALS_DIRECTORY/backup-key`.
    pub key_file: Option<PathBuf>,
    /// Lease of the repository lock; renewed while held, free after a crash once it expires.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Stored vectors sampled per collection at backup time, whose nearest
    /// neighbours are recorded for the recall check after a restore (0 = none).
    pub verify_queries: usize,
    /// Neighbours recorded per sampled vector (the k of recall@k).
    pub verify_k: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationsConfig {
    /// Apply pending migrations at start-up, before READY=1.
    pub auto_migrate: bool,
    /// Directory of migration files (`NNNN_name.toml`).
    pub path: PathBuf,
    /// Take a backup of the affected collections before migrating (needs `backup.storage_path`).
    pub restore_point: bool,
    /// Lease of the migration lock (kept in Chroma), renewed while held.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// How long a runner waits for another runner's lock before failing.
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
    /// Chroma collection holding the migration history and the lock.
    pub history_collection: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlConfig {
    pub socket_path: PathBuf,
    /// Permission bits of the socket file (octal).
    #[serde(serialize_with = "serialize_mode")]
    pub socket_mode: u32,
    /// Group owning the socket; members hold the operate level (reload,
    /// backups, restores into a new name). Empty = the daemon's group.
    pub socket_group: Option<String>,
    /// Group whose members hold the admin level (commands that destroy data
    /// or history, and document text in `query`) besides root and the
    /// daemon's user. Empty = nobody else.
    pub admin_group: Option<String>,
}

fn serialize_mode<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus endpoint; `None` = off.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald under systemd (`JOURNAL_STREAM` set), text otherwise.
    Auto,
    Journald,
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `chromaprod=debug,reqwest=warn`, ….
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    /// State directory (audit log, job state). systemd's `StateDirectory=`.
    pub state_dir: PathBuf,
    /// Time a graceful stop may take before work is abandoned.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Reload when the config file changes on disk.
    pub watch_config: bool,
    /// Polling period used when the file watcher is unavailable, and as a backstop.
    #[serde(with = "humantime_serde")]
    pub watch_poll_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            chroma: ChromaConfig {
                endpoints: vec![Url::parse("http://127.0.0.1:8000").expect("static URL")],
                tenant: "default_tenant".into(),
                database: "default_database".into(),
                auth_token_file: None,
                auth_header: AuthHeader::Authorization,
                tls_ca_file: None,
                persist_directory: None,
                allow_plain_http: false,
                startup_wait: Duration::from_secs(120),
                auth_token: None,
            },
            pool: ConnectionPoolConfig {
                min_connections: 2,
                max_connections: 10,
                connection_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(30),
                max_idle_time: Duration::from_secs(60),
                health_check_interval: Duration::from_secs(10),
            },
            retry: RetryConfig {
                max_retries: 3,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(10),
                exponential_base: 2.0,
                jitter: true,
                retryable_errors: RetryableError::ALL.to_vec(),
                deadline: Duration::from_secs(60),
                budget_ratio: 0.2,
                budget_min_per_second: 10,
            },
            breaker: BreakerConfig {
                failure_threshold: 5,
                open_duration: Duration::from_secs(30),
            },
            backup: BackupConfig {
                enabled: false,
                schedule: "0 0 3 * * *".into(),
                incremental_schedule: None,
                prune_schedule: None,
                verify_schedule: None,
                physical: false,
                physical_schedule: None,
                timezone: "UTC".into(),
                retention_days: 30,
                keep_last: 7,
                keep_hourly: 0,
                keep_daily: 7,
                keep_weekly: 4,
                keep_monthly: 6,
                storage_path: "/var/lib/chromaprod/backups".into(),
                include: vec!["*".into()],
                exclude: Vec::new(),
                encrypt: false,
                key_file: None,
                lock_ttl: Duration::from_secs(120),
                verify_queries: 100,
                verify_k: 10,
            },
            migrations: MigrationsConfig {
                auto_migrate: false,
                path: "/etc/chromaprod/migrations".into(),
                restore_point: true,
                lock_ttl: Duration::from_secs(30),
                lock_wait: Duration::from_secs(300),
                history_collection: "chromaprod-migrations".into(),
            },
            control: ControlConfig {
                socket_path: "/run/chromaprod/control.sock".into(),
                socket_mode: 0o660,
                socket_group: None,
                admin_group: None,
            },
            metrics: MetricsConfig { listen: None },
            log: LogConfig {
                format: LogFormat::Auto,
                level: "info".into(),
            },
            daemon: DaemonConfig {
                state_dir: "/var/lib/chromaprod".into(),
                shutdown_grace: Duration::from_secs(30),
                watch_config: true,
                watch_poll_interval: Duration::from_secs(5),
            },
        }
    }
}
