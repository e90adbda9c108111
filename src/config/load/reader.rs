//! Reads typed values key by key, so that every bad key is reported, not
//! just the first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use url::Url;

use super::ConfigIssue;
use crate::config::{AuthHeader, Config, LogFormat, RetryableError};
use crate::secret::Secret;

use super::validate::{url_location, without_user_info};

/// Reads typed values key by key so that every bad key is reported, not just the first.
pub(super) struct Reader<'a> {
    pub(super) root: &'a Map<String, Value>,
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) seen: BTreeSet<String>,
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

    pub(super) fn read(&mut self) -> Config {
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
                    return Err(format!(
                        "{:?} has a query or fragment (`?…`, `#…`), which Chroma's API does not take and which would show in status, metrics and logs; remove it (a token goes in chroma.auth_token_file)",
                        url_location(&url).as_str()
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
        c.chroma.persist_directory = self
            .opt_string("chroma.persist_directory")
            .map(PathBuf::from);
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
        c.backup.physical = self.get("backup.physical", d.backup.physical, "true or false");
        c.backup.physical_schedule = self.opt_string("backup.physical_schedule");
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
        c.backup.verify_queries = self.get(
            "backup.verify_queries",
            d.backup.verify_queries,
            "a non-negative integer",
        );
        c.backup.verify_k = self.get("backup.verify_k", d.backup.verify_k, "a positive integer");

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

        // Unset: the systemd credential `chroma-token` when one is handed
        // over (LoadCredential=chroma-token:…), as for the backup key; the
        // operator shell's CREDENTIALS_DIRECTORY finds the same token.
        if c.chroma.auth_token_file.is_none() {
            c.chroma.auth_token_file = std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|dir| Path::new(&dir).join("chroma-token"))
                .filter(|p| p.exists());
        }
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

fn pattern(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("an empty pattern matches nothing".into())
    } else {
        Ok(s.to_string())
    }
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
