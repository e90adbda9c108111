//! Layered loading and whole-file validation.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;

use super::{AuthHeader, Config, LogFormat, RetryableError, ENV_PREFIX};
use crate::secret::Secret;

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `pool.max_connections`.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass --config or set CHROMAPROD_CONFIG to an existing file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration in {source_name} ({} problem{}):\n{}", issues.len(), if issues.len() == 1 { "" } else { "s" }, issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        source_name: String,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// Every key path with a problem (for tests and `status`).
    pub fn issues(&self) -> Vec<ConfigIssue> {
        match self {
            ConfigError::Invalid { issues, .. } => issues.clone(),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => Vec::new(),
        }
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Environment variables that overrode file values (names only, never values).
    pub env_overrides: Vec<String>,
}

/// A loaded configuration with its provenance.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
}

/// Load `path`, apply `CHROMAPROD__…` overrides from the process environment,
/// and validate everything.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = fs_err::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(e.kind(), e.to_string()),
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let config = from_parts(&text, &path.display().to_string(), &env)?;
    Ok(Loaded {
        config,
        source: ConfigSource {
            path: path.to_path_buf(),
            env_overrides: env.into_iter().map(|(k, _)| k).collect(),
        },
    })
}

/// The control socket a config file names, even when the rest of the file is
/// invalid (so `chromaprod reload` can report a rejected file to the daemon
/// that is running). Environment override first, then the file, else `None`.
pub fn socket_path_hint(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(format!("{ENV_PREFIX}__CONTROL__SOCKET_PATH")) {
        return Some(PathBuf::from(p));
    }
    let text = fs_err::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table
        .get("control")?
        .get("socket_path")?
        .as_str()
        .map(PathBuf::from)
}

/// Parse and validate TOML text without environment overrides (tests, `validate`).
pub fn load_from_str(text: &str) -> Result<Config, ConfigError> {
    from_parts(text, "<string>", &[])
}

fn from_parts(
    text: &str,
    source_name: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    // Layer environment overrides through the `config` crate's own source so the
    // key mapping matches its documented behaviour.
    let env_map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("chroma.endpoints")
            .with_list_parse_key("retry.retryable_errors")
            .source(Some(env_map)),
    );
    let merged = builder.build().map_err(|e| ConfigError::Parse {
        path: source_name.to_string(),
        message: e.to_string(),
    })?;
    let root: Value =
        merged
            .try_deserialize()
            .map_err(|e: config::ConfigError| ConfigError::Parse {
                path: source_name.to_string(),
                message: e.to_string(),
            })?;
    let empty = Map::new();
    let root = root.as_object().unwrap_or(&empty);
    let mut r = Reader {
        root,
        issues: Vec::new(),
        seen: BTreeSet::new(),
    };
    let config = r.read();
    let mut issues = r.issues;
    issues.extend(unknown_keys(root, &r.seen));
    issues.extend(validate(&config));
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            source_name: source_name.to_string(),
            issues,
        })
    }
}

/// Reads typed values key by key so that every bad key is reported, not just the first.
struct Reader<'a> {
    root: &'a Map<String, Value>,
    issues: Vec<ConfigIssue>,
    seen: BTreeSet<String>,
}

impl Reader<'_> {
    fn raw(&mut self, key: &str) -> Option<&Value> {
        self.seen.insert(key.to_string());
        let (section, name) = key.split_once('.')?;
        self.root.get(section)?.as_object()?.get(name)
    }

    fn issue(&mut self, key: &str, problem: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.to_string(),
            problem: problem.into(),
        });
    }

    /// A value deserialized by serde, or the default with an issue recorded.
    fn get<T: DeserializeOwned>(&mut self, key: &str, default: T, expected: &str) -> T {
        let Some(value) = self.raw(key).cloned() else {
            return default;
        };
        match serde_json::from_value::<T>(value.clone()) {
            Ok(v) => v,
            Err(_) => {
                self.issue(
                    key,
                    format!("expected {expected}, found {}", describe(&value)),
                );
                default
            }
        }
    }

    /// A value parsed from a string with `parse`.
    fn parse<T>(
        &mut self,
        key: &str,
        default: T,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let Some(value) = self.raw(key).cloned() else {
            return default;
        };
        let text = match &value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                self.issue(
                    key,
                    format!("expected {expected}, found {}", describe(other)),
                );
                return default;
            }
        };
        match parse(&text) {
            Ok(v) => v,
            Err(why) => {
                self.issue(key, format!("expected {expected}: {why}"));
                default
            }
        }
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        self.parse(key, default, "a duration like \"5s\" or \"250ms\"", |s| {
            humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
        })
    }

    /// An optional string; empty means unset.
    fn opt_string(&mut self, key: &str) -> Option<String> {
        let s: String = self.get(key, String::new(), "a string");
        (!s.is_empty()).then_some(s)
    }

    fn list<T>(
        &mut self,
        key: &str,
        default: Vec<T>,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(value) = self.raw(key).cloned() else {
            return default;
        };
        let items: Vec<Value> = match value {
            Value::Array(items) => items,
            Value::String(s) => s
                .split(',')
                .map(|p| Value::String(p.trim().to_string()))
                .collect(),
            other => {
                self.issue(
                    key,
                    format!("expected a list of {expected}, found {}", describe(&other)),
                );
                return default;
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let text = match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    self.issue(
                        &format!("{key}[{i}]"),
                        format!("expected {expected}, found {}", describe(other)),
                    );
                    continue;
                }
            };
            match parse(&text) {
                Ok(v) => out.push(v),
                Err(why) => self.issue(
                    &format!("{key}[{i}]"),
                    format!("expected {expected}: {why}"),
                ),
            }
        }
        out
    }

    fn read(&mut self) -> Config {
        let d = Config::default();
        let mut c = d.clone();

        c.chroma.endpoints = self.list(
            "chroma.endpoints",
            d.chroma.endpoints,
            "an http(s) URL",
            |s| {
                let url = Url::parse(s).map_err(|e| {
                    // Do not echo what may hold a password.
                    if s.contains('@') {
                        format!("not a URL: {e}")
                    } else {
                        format!("{s:?}: {e}")
                    }
                })?;
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(format!(
                        "{:?} carries user info (user:password@), which would show in status, metrics and logs; remove it and put the token in a file named by chroma.auth_token_file",
                        without_user_info(&url).as_str()
                    ));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    let mut shown = url.clone();
                    shown.set_query(None);
                    shown.set_fragment(None);
                    return Err(format!(
                        "{:?} has a query or fragment (`?…`, `#…`), which Chroma's API does not take and which would show in status, metrics and logs; remove it (a token goes in chroma.auth_token_file)",
                        shown.as_str()
                    ));
                }
                match url.scheme() {
                    "http" | "https" => Ok(url),
                    other => Err(format!("{s:?}: scheme {other:?} is not http or https")),
                }
            },
        );
        c.chroma.tenant = self.get("chroma.tenant", d.chroma.tenant, "a string");
        c.chroma.database = self.get("chroma.database", d.chroma.database, "a string");
        c.chroma.auth_token_file = self.opt_string("chroma.auth_token_file").map(PathBuf::from);
        c.chroma.auth_header = self.parse(
            "chroma.auth_header",
            d.chroma.auth_header,
            "\"authorization\" or \"x-chroma-token\"",
            |s| match s.to_ascii_lowercase().as_str() {
                "authorization" => Ok(AuthHeader::Authorization),
                "x-chroma-token" => Ok(AuthHeader::XChromaToken),
                other => Err(format!("{other:?} is neither")),
            },
        );
        c.chroma.tls_ca_file = self.opt_string("chroma.tls_ca_file").map(PathBuf::from);
        c.chroma.allow_plain_http = self.get(
            "chroma.allow_plain_http",
            d.chroma.allow_plain_http,
            "true or false",
        );
        c.chroma.startup_wait = self.duration("chroma.startup_wait", d.chroma.startup_wait);

        c.pool.min_connections = self.get(
            "pool.min_connections",
            d.pool.min_connections,
            "a non-negative integer",
        );
        c.pool.max_connections = self.get(
            "pool.max_connections",
            d.pool.max_connections,
            "a positive integer",
        );
        c.pool.connection_timeout =
            self.duration("pool.connection_timeout", d.pool.connection_timeout);
        c.pool.connect_timeout = self.duration("pool.connect_timeout", d.pool.connect_timeout);
        c.pool.request_timeout = self.duration("pool.request_timeout", d.pool.request_timeout);
        c.pool.max_idle_time = self.duration("pool.max_idle_time", d.pool.max_idle_time);
        c.pool.health_check_interval =
            self.duration("pool.health_check_interval", d.pool.health_check_interval);

        c.retry.max_retries = self.get(
            "retry.max_retries",
            d.retry.max_retries,
            "a non-negative integer",
        );
        c.retry.base_delay = self.duration("retry.base_delay", d.retry.base_delay);
        c.retry.max_delay = self.duration("retry.max_delay", d.retry.max_delay);
        c.retry.exponential_base = self.get(
            "retry.exponential_base",
            d.retry.exponential_base,
            "a number",
        );
        c.retry.jitter = self.get("retry.jitter", d.retry.jitter, "true or false");
        c.retry.retryable_errors = self.list(
            "retry.retryable_errors",
            d.retry.retryable_errors,
            "one of connect, timeout, reset, 429, 500, 502, 503, 504",
            |s| RetryableError::parse(s).ok_or_else(|| format!("{s:?} is not a known error class")),
        );
        c.retry.deadline = self.duration("retry.deadline", d.retry.deadline);
        c.retry.budget_ratio = self.get("retry.budget_ratio", d.retry.budget_ratio, "a number");
        c.retry.budget_min_per_second = self.get(
            "retry.budget_min_per_second",
            d.retry.budget_min_per_second,
            "a non-negative integer",
        );

        c.breaker.failure_threshold = self.get(
            "breaker.failure_threshold",
            d.breaker.failure_threshold,
            "a positive integer",
        );
        c.breaker.open_duration = self.duration("breaker.open_duration", d.breaker.open_duration);

        c.backup.enabled = self.get("backup.enabled", d.backup.enabled, "true or false");
        c.backup.schedule = self.get("backup.schedule", d.backup.schedule, "a cron expression");
        c.backup.incremental_schedule = self.opt_string("backup.incremental_schedule");
        c.backup.prune_schedule = self.opt_string("backup.prune_schedule");
        c.backup.verify_schedule = self.opt_string("backup.verify_schedule");
        c.backup.timezone = self.get(
            "backup.timezone",
            d.backup.timezone,
            "UTC or an offset like \"+02:00\"",
        );
        c.backup.retention_days = self.get(
            "backup.retention_days",
            d.backup.retention_days,
            "a non-negative integer",
        );
        c.backup.keep_last = self.get(
            "backup.keep_last",
            d.backup.keep_last,
            "a non-negative integer",
        );
        c.backup.keep_hourly = self.get(
            "backup.keep_hourly",
            d.backup.keep_hourly,
            "a non-negative integer",
        );
        c.backup.keep_daily = self.get(
            "backup.keep_daily",
            d.backup.keep_daily,
            "a non-negative integer",
        );
        c.backup.keep_weekly = self.get(
            "backup.keep_weekly",
            d.backup.keep_weekly,
            "a non-negative integer",
        );
        c.backup.keep_monthly = self.get(
            "backup.keep_monthly",
            d.backup.keep_monthly,
            "a non-negative integer",
        );
        c.backup.storage_path = self.get(
            "backup.storage_path",
            d.backup.storage_path,
            "a path or URL",
        );
        c.backup.include = self.list(
            "backup.include",
            d.backup.include,
            "a collection name pattern",
            pattern,
        );
        c.backup.exclude = self.list(
            "backup.exclude",
            d.backup.exclude,
            "a collection name pattern",
            pattern,
        );
        c.backup.encrypt = self.get("backup.encrypt", d.backup.encrypt, "true or false");
        c.backup.key_file = self.opt_string("backup.key_file").map(PathBuf::from);
        c.backup.lock_ttl = self.duration("backup.lock_ttl", d.backup.lock_ttl);

        c.migrations.auto_migrate = self.get(
            "migrations.auto_migrate",
            d.migrations.auto_migrate,
            "true or false",
        );
        c.migrations.path = self.get("migrations.path", d.migrations.path, "a path");
        c.migrations.restore_point = self.get(
            "migrations.restore_point",
            d.migrations.restore_point,
            "true or false",
        );
        c.migrations.lock_ttl = self.duration("migrations.lock_ttl", d.migrations.lock_ttl);
        c.migrations.lock_wait = self.duration("migrations.lock_wait", d.migrations.lock_wait);
        c.migrations.history_collection = self.get(
            "migrations.history_collection",
            d.migrations.history_collection,
            "a collection name",
        );

        c.control.socket_path = self.get("control.socket_path", d.control.socket_path, "a path");
        c.control.socket_mode = self.parse(
            "control.socket_mode",
            d.control.socket_mode,
            "an octal mode like \"0660\"",
            |s| {
                let mode = u32::from_str_radix(s, 8).map_err(|_| format!("{s:?} is not octal"))?;
                if mode > 0o777 {
                    Err(format!("{s:?} has bits beyond 0777"))
                } else {
                    Ok(mode)
                }
            },
        );
        c.control.socket_group = self.opt_string("control.socket_group");
        c.control.admin_group = self.opt_string("control.admin_group");

        c.metrics.listen = self.opt_string("metrics.listen");

        c.log.format = self.parse(
            "log.format",
            d.log.format,
            "auto, journald, text or json",
            |s| match s {
                "auto" => Ok(LogFormat::Auto),
                "journald" => Ok(LogFormat::Journald),
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("{other:?} is not a log format")),
            },
        );
        c.log.level = self.get("log.level", d.log.level, "a log filter like \"info\"");

        c.daemon.state_dir = self.get("daemon.state_dir", d.daemon.state_dir, "a path");
        c.daemon.shutdown_grace = self.duration("daemon.shutdown_grace", d.daemon.shutdown_grace);
        c.daemon.watch_config = self.get(
            "daemon.watch_config",
            d.daemon.watch_config,
            "true or false",
        );
        c.daemon.watch_poll_interval =
            self.duration("daemon.watch_poll_interval", d.daemon.watch_poll_interval);

        if let Some(path) = c.chroma.auth_token_file.clone() {
            match read_token_file(&path) {
                Ok(token) if token.trim().is_empty() => {
                    self.issue(
                        "chroma.auth_token_file",
                        format!("{} is empty", path.display()),
                    );
                }
                Ok(token) => c.chroma.auth_token = Some(Secret::new(token.trim().to_string())),
                Err(problem) => self.issue("chroma.auth_token_file", problem),
            }
        }
        c
    }
}

/// Reads the token file, refusing one that group or other can access
/// (unless it is a systemd credential). The buffer is wiped after use.
fn read_token_file(path: &Path) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {}", path.display(), e.kind());
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    if !crate::secret::is_systemd_credential(path) {
        crate::secret::check_private(path, &file.metadata().map_err(cannot)?)
            .map_err(|e| e.to_string())?;
    }
    let mut token = zeroize::Zeroizing::new(String::new());
    file.read_to_string(&mut token).map_err(cannot)?;
    Ok(token)
}

/// Secret files the configuration names but [`load`] does not read, judged
/// by their mode: the backup key (`backup.key_file`, else
/// `$CREDENTIALS_DIRECTORY/backup-key`), which each backup reads and
/// refuses the same way. A file that does not exist or cannot be examined
/// is not reported here; using it says what is wrong. `chromaprod validate`
/// reports these (`doctor` through its key check).
pub fn secret_file_issues(c: &Config) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    if !c.backup.encrypt {
        return out;
    }
    let path = match &c.backup.key_file {
        Some(p) => p.clone(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Path::new(&dir).join("backup-key"),
            None => return out,
        },
    };
    if crate::secret::is_systemd_credential(&path) {
        return out;
    }
    if let Ok(meta) = std::fs::metadata(&path) {
        if let Err(e) = crate::secret::check_private(&path, &meta) {
            out.push(ConfigIssue {
                key: "backup.key_file".into(),
                problem: e.to_string(),
            });
        }
    }
    out
}

fn pattern(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("an empty pattern matches nothing".into())
    } else {
        Ok(s.to_string())
    }
}

/// The offset of `backup.timezone`: `UTC`/`Z` or `±HH:MM`, in seconds east of UTC.
pub fn parse_utc_offset(s: &str) -> Result<i32, String> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => {
            return Err(format!(
                "{s:?} is neither UTC nor an offset like \"+02:00\""
            ))
        }
    };
    let (h, m) = rest
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected ±HH:MM"))?;
    let h: i32 = h.parse().map_err(|_| format!("{s:?}: bad hours"))?;
    let m: i32 = m.parse().map_err(|_| format!("{s:?}: bad minutes"))?;
    if h > 14 || m > 59 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(sign * (h * 3600 + m * 60))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

/// Keys present in the input that no reader asked for: misspellings, mostly.
fn unknown_keys(root: &Map<String, Value>, seen: &BTreeSet<String>) -> Vec<ConfigIssue> {
    let sections: BTreeSet<&str> = seen
        .iter()
        .filter_map(|k| k.split_once('.').map(|(s, _)| s))
        .collect();
    let mut out = Vec::new();
    for (section, body) in root {
        if !sections.contains(section.as_str()) {
            out.push(ConfigIssue {
                key: section.clone(),
                problem: format!(
                    "unknown section; known sections: {}",
                    sections.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            });
            continue;
        }
        let Some(table) = body.as_object() else {
            out.push(ConfigIssue {
                key: section.clone(),
                problem: "expected a table".into(),
            });
            continue;
        };
        for key in table.keys() {
            let path = format!("{section}.{key}");
            if !seen.contains(&path) {
                out.push(ConfigIssue {
                    key: path,
                    problem: "unknown key (misspelt?)".into(),
                });
            }
        }
    }
    out
}

/// Checks across keys and of value ranges, after typing.
fn validate(c: &Config) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    let mut bad = |key: &str, problem: String| {
        out.push(ConfigIssue {
            key: key.into(),
            problem,
        })
    };
    if c.chroma.endpoints.is_empty() {
        bad(
            "chroma.endpoints",
            "at least one endpoint is required".into(),
        );
    }
    if c.chroma.auth_token_file.is_some() && !c.chroma.allow_plain_http {
        for (i, url) in c.chroma.endpoints.iter().enumerate() {
            if let Some(why) = plain_http_problem(url) {
                bad(
                    &format!("chroma.endpoints[{i}]"),
                    format!("{why}, with chroma.auth_token_file set; use https://, or set chroma.allow_plain_http = true if that network is trusted"),
                );
            }
        }
    }
    if c.chroma.tenant.is_empty() {
        bad("chroma.tenant", "must not be empty".into());
    }
    if c.chroma.database.is_empty() {
        bad("chroma.database", "must not be empty".into());
    }
    if c.pool.max_connections == 0 {
        bad("pool.max_connections", "must be at least 1".into());
    }
    if c.pool.min_connections > c.pool.max_connections {
        bad(
            "pool.min_connections",
            format!(
                "{} is more than pool.max_connections ({})",
                c.pool.min_connections, c.pool.max_connections
            ),
        );
    }
    for (key, d) in [
        ("pool.connection_timeout", c.pool.connection_timeout),
        ("pool.connect_timeout", c.pool.connect_timeout),
        ("pool.request_timeout", c.pool.request_timeout),
        ("pool.health_check_interval", c.pool.health_check_interval),
        ("retry.deadline", c.retry.deadline),
        ("breaker.open_duration", c.breaker.open_duration),
        ("daemon.watch_poll_interval", c.daemon.watch_poll_interval),
    ] {
        if d.is_zero() {
            bad(key, "must be greater than zero".into());
        }
    }
    if c.retry.base_delay > c.retry.max_delay {
        bad(
            "retry.base_delay",
            format!(
                "{} is more than retry.max_delay ({})",
                humantime::format_duration(c.retry.base_delay),
                humantime::format_duration(c.retry.max_delay)
            ),
        );
    }
    if !(c.retry.exponential_base >= 1.0 && c.retry.exponential_base <= 10.0) {
        bad(
            "retry.exponential_base",
            format!("{} is outside 1.0..=10.0", c.retry.exponential_base),
        );
    }
    if !(0.0..=1.0).contains(&c.retry.budget_ratio) {
        bad(
            "retry.budget_ratio",
            format!("{} is outside 0.0..=1.0", c.retry.budget_ratio),
        );
    }
    if c.breaker.failure_threshold == 0 {
        bad("breaker.failure_threshold", "must be at least 1".into());
    }
    for (key, expr) in [
        ("backup.schedule", Some(&c.backup.schedule)),
        (
            "backup.incremental_schedule",
            c.backup.incremental_schedule.as_ref(),
        ),
        ("backup.prune_schedule", c.backup.prune_schedule.as_ref()),
        ("backup.verify_schedule", c.backup.verify_schedule.as_ref()),
    ] {
        if let Some(expr) = expr {
            if let Err(e) = croner::Cron::new(expr).with_seconds_optional().parse() {
                bad(key, format!("{expr:?} is not a cron expression: {e}"));
            }
        }
    }
    if let Err(why) = parse_utc_offset(&c.backup.timezone) {
        bad("backup.timezone", why);
    }
    if c.backup.lock_ttl < Duration::from_secs(5) {
        bad("backup.lock_ttl", "must be at least 5s".into());
    }
    if c.migrations.lock_ttl < Duration::from_secs(5) {
        bad("migrations.lock_ttl", "must be at least 5s".into());
    }
    if !crate::chroma::names::valid_collection_name(&c.migrations.history_collection) {
        bad(
            "migrations.history_collection",
            "must be a Chroma collection name: 3-512 characters of [a-zA-Z0-9._-], starting and ending with a letter or digit".into(),
        );
    }
    if let Err(why) = check_storage_path(&c.backup.storage_path) {
        bad("backup.storage_path", why);
    }
    if !c.control.socket_path.is_absolute() {
        bad("control.socket_path", "must be an absolute path".into());
    }
    if let Some(listen) = &c.metrics.listen {
        if std::net::SocketAddr::from_str(listen).is_err() {
            bad(
                "metrics.listen",
                format!("{listen:?} is not an address like \"127.0.0.1:9464\""),
            );
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        bad(
            "log.level",
            format!("{:?} is not a log filter: {e}", c.log.level),
        );
    }
    if !c.daemon.state_dir.is_absolute() {
        bad("daemon.state_dir", "must be an absolute path".into());
    }
    out
}

/// `url` without `user:password@` (safe to show).
pub fn without_user_info(url: &Url) -> Url {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown
}

/// Why sending a token to `url` would put it on the network in clear text:
/// plain `http://` to a host that is not loopback (`localhost`, 127.0.0.0/8,
/// `::1`). Decided from the URL alone, without resolving or connecting.
pub fn plain_http_problem(url: &Url) -> Option<String> {
    if url.scheme() != "http" {
        return None;
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    };
    (!loopback).then(|| {
        format!(
            "{:?} is plain http to a host that is not loopback: the token would cross the network in clear text",
            without_user_info(url).as_str()
        )
    })
}

fn check_storage_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        match scheme {
            "file" | "s3" | "az" | "gs" => {}
            other => {
                return Err(format!(
                    "scheme {other:?} is not supported; use a path, file://, s3://, az:// or gs://"
                ))
            }
        }
        if rest.is_empty() || rest.starts_with('/') && scheme != "file" {
            return Err(format!("{s:?} names no bucket or container"));
        }
        Ok(())
    } else if Path::new(s).is_absolute() {
        Ok(())
    } else {
        Err(format!("{s:?} is relative; use an absolute path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load_from_str("").expect("valid"), Config::default());
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let err = load_from_str(
            r#"
            [pool]
            max_connections = "many"
            connection_timeout = "soon"
            [retry]
            retryable_errors = ["timeout", "teapot"]
            [chroma]
            endpoints = ["ftp://x"]
            [metrics]
            listen = "nowhere"
            [bogus]
            x = 1
            [log]
            levle = "debug"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<String> = err.issues().into_iter().map(|i| i.key).collect();
        for k in [
            "pool.max_connections",
            "pool.connection_timeout",
            "retry.retryable_errors[1]",
            "chroma.endpoints[0]",
            "metrics.listen",
            "bogus",
            "log.levle",
        ] {
            assert!(keys.contains(&k.to_string()), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn cross_key_checks() {
        let err = load_from_str("[pool]\nmin_connections = 5\nmax_connections = 2\n")
            .expect_err("invalid");
        assert_eq!(err.issues()[0].key, "pool.min_connections");
    }

    #[test]
    fn environment_overrides_file() {
        let env = vec![
            (
                "CHROMAPROD__POOL__MAX_CONNECTIONS".to_string(),
                "42".to_string(),
            ),
            (
                "CHROMAPROD__CHROMA__ENDPOINTS".to_string(),
                "http://a:1,http://b:2".to_string(),
            ),
            (
                "CHROMAPROD__CONTROL__SOCKET_MODE".to_string(),
                "0600".to_string(),
            ),
        ];
        let c = from_parts("[pool]\nmax_connections = 3\n", "t", &env).expect("valid");
        assert_eq!(c.pool.max_connections, 42);
        assert_eq!(c.chroma.endpoints.len(), 2);
        assert_eq!(c.control.socket_mode, 0o600);
    }

    #[test]
    fn token_is_read_from_its_file_and_hidden_from_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "sekrit-token-123\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let text = format!(
            "[chroma]\nauth_token_file = {:?}\n",
            file.display().to_string()
        );
        let c = load_from_str(&text).expect("valid");
        assert_eq!(
            c.chroma.auth_token.as_ref().map(|t| t.expose().as_str()),
            Some("sekrit-token-123")
        );
        assert!(!format!("{c:?}").contains("sekrit"));
        assert!(!serde_json::to_string(&c).expect("json").contains("sekrit"));
    }

    #[test]
    fn endpoint_user_info_is_refused_without_echoing_the_password() {
        let err = load_from_str(
            "[chroma]\nendpoints = [\"http://127.0.0.1:8000\", \"http://admin:pw-s3cr3t@chroma.internal:8000\"]\n",
        )
        .expect_err("user info refused");
        let issues = err.issues();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "chroma.endpoints[1]");
        assert!(issues[0].problem.contains("user info"), "{issues:?}");
        assert!(!err.to_string().contains("pw-s3cr3t"), "{err}");
        assert!(!err.to_string().contains("admin"), "{err}");
        // A query string (a token by another name) is refused the same way.
        let err =
            load_from_str("[chroma]\nendpoints = [\"http://127.0.0.1:8000/?token=qs-s3cr3t\"]\n")
                .expect_err("query refused");
        assert_eq!(err.issues()[0].key, "chroma.endpoints[0]");
        assert!(!err.to_string().contains("qs-s3cr3t"), "{err}");
        // A user name alone is refused too.
        let err = load_from_str("[chroma]\nendpoints = [\"https://bob@chroma.internal\"]\n")
            .expect_err("user name refused");
        assert_eq!(err.issues()[0].key, "chroma.endpoints[0]");
    }

    #[test]
    fn plain_http_with_a_token_needs_allow_plain_http() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "tok\n").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let with = |endpoints: &str, extra: &str| {
            load_from_str(&format!(
                "[chroma]\nendpoints = [{endpoints}]\nauth_token_file = {:?}\n{extra}",
                token.display().to_string()
            ))
        };
        let err = with(
            "\"https://chroma.internal\", \"http://10.255.255.1:8000\"",
            "",
        )
        .expect_err("plain http refused");
        let issues = err.issues();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "chroma.endpoints[1]");
        assert!(
            issues[0].problem.contains("chroma.allow_plain_http"),
            "{issues:?}"
        );
        let c = with("\"http://10.255.255.1:8000\"", "allow_plain_http = true\n")
            .expect("allowed explicitly");
        assert!(c.chroma.allow_plain_http);
        // Loopback and https need nothing; nor does plain http without a token.
        with(
            "\"http://127.0.0.1:8000\", \"http://localhost:8000\", \"http://[::1]:8000\", \"https://10.0.0.7\"",
            "",
        )
        .expect("loopback and https");
        load_from_str("[chroma]\nendpoints = [\"http://10.255.255.1:8000\"]\n").expect("no token");
    }

    #[test]
    fn storage_paths() {
        assert!(check_storage_path("/var/backups").is_ok());
        assert!(check_storage_path("s3://bucket/prefix").is_ok());
        assert!(check_storage_path("gs://b").is_ok());
        assert!(check_storage_path("relative/dir").is_err());
        assert!(check_storage_path("ftp://x").is_err());
        assert!(check_storage_path("s3://").is_err());
    }

    #[test]
    fn token_and_key_files_group_or_other_can_read_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "sekrit-token-123\n").expect("write");
        let key = dir.path().join("backup-key");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).expect("write");
        let text = format!(
            "[chroma]\nauth_token_file = {:?}\n[backup]\nencrypt = true\nkey_file = {:?}\n",
            token.display().to_string(),
            key.display().to_string()
        );
        for mode in [0o644, 0o640, 0o604] {
            for f in [&token, &key] {
                std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            }
            let err = load_from_str(&text).expect_err("exposed token");
            assert!(!err.to_string().contains("sekrit"), "{err}");
            let mut issues = err.issues();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            issues.extend(secret_file_issues(&load_from_str(&text).expect("valid")));
            for (name, path) in [
                ("chroma.auth_token_file", &token),
                ("backup.key_file", &key),
            ] {
                let issue = issues
                    .iter()
                    .find(|i| i.key == name)
                    .unwrap_or_else(|| panic!("no issue for {name}: {issues:?}"));
                assert!(issue.problem.contains(&format!("{mode:04o}")), "{issue:?}");
                assert!(
                    issue
                        .problem
                        .contains(&format!("chmod 600 {}", path.display())),
                    "{issue:?}"
                );
            }
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        let c = load_from_str(&text).expect("private files are fine");
        assert_eq!(secret_file_issues(&c), vec![]);
        // A key file that does not exist yet is not reported here (the
        // backup says what to do).
        std::fs::remove_file(&key).expect("rm");
        assert_eq!(secret_file_issues(&c), vec![]);
    }
}
