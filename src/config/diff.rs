//! What changed between two configurations, and what that means for the
//! running daemon. Pure: values in, a plan out.

use serde::Serialize;
use serde_json::{json, Value};

use super::Config;

/// One changed key with its old and new values (JSON; `null` when absent),
/// for the audit log. Values that could carry a credential are redacted
/// (see [`redact_secrets`]); secret contents never appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    pub key: String,
    pub old: Value,
    pub new: Value,
    /// What changed when the values alone do not show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The parts of the running daemon a new configuration touches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// Every changed key, dotted (`pool.max_connections`).
    pub changed_keys: Vec<String>,
    /// The same keys with their old and new values, in the same order.
    pub changes: Vec<KeyChange>,
    /// Endpoints, auth, pool, retry or breaker changed: rebuild the Chroma store.
    pub rebuild_store: bool,
    /// Log level or format changed.
    pub relog: bool,
    /// Backup or migration schedules changed.
    pub reschedule: bool,
    /// Metrics listener changed: rebind it.
    pub rebind_metrics: bool,
    /// Control socket mode, group or admin group changed: apply them to the
    /// live socket and its access policy.
    pub reconfigure_control: bool,
    /// Keys that take effect only after a restart (the new value is not applied).
    pub needs_restart: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.changed_keys.is_empty()
    }
}

/// Puts the running value of one key (from the second config) into the first.
type KeepRunning = fn(&mut Config, &Config);

/// Keys that cannot change under a running daemon, each with how the running
/// value is kept in the configuration a reload puts in force. The one list:
/// [`diff`] reports these as `needs_restart`, [`effective`] keeps them.
const RESTART_ONLY: &[(&str, KeepRunning)] = &[
    ("control.socket_path", |new, old| {
        new.control.socket_path.clone_from(&old.control.socket_path);
    }),
    ("daemon.state_dir", |new, old| {
        new.daemon.state_dir.clone_from(&old.daemon.state_dir);
    }),
    ("log.format", |new, old| new.log.format = old.log.format),
];

/// The configuration a reload from `old` to `new` puts in force: `new`, with
/// the running value of every restart-only key.
pub fn effective(old: &Config, new: &Config) -> Config {
    let mut effective = new.clone();
    for (_, keep) in RESTART_ONLY {
        keep(&mut effective, old);
    }
    effective
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut found = Vec::new();
    let (a, b) = (to_value(old), to_value(new));
    collect("", &a, &b, &mut found);
    // The token is not serialised; compare it explicitly so a rotated token rebuilds the store.
    if old.chroma.auth_token != new.chroma.auth_token
        && !found.iter().any(|(k, _, _)| k == "chroma.auth_token_file")
    {
        let path = json!(new.chroma.auth_token_file);
        found.push(("chroma.auth_token_file".to_string(), path.clone(), path));
    }
    found.sort_by(|x, y| x.0.cmp(&y.0));
    found.dedup_by(|x, y| x.0 == y.0);
    let token_rotated = old.chroma.auth_token != new.chroma.auth_token;
    let changes: Vec<KeyChange> = found
        .into_iter()
        .map(|(key, old, new)| {
            let secret = is_secret_key(&key);
            let note = (key == "chroma.auth_token_file" && token_rotated)
                .then(|| "the token changed (its value is never recorded)".to_string());
            KeyChange {
                old: if secret {
                    json!(REDACTED)
                } else {
                    redact_secrets(&old)
                },
                new: if secret {
                    json!(REDACTED)
                } else {
                    redact_secrets(&new)
                },
                key,
                note,
            }
        })
        .collect();
    let changed: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
    let section = |k: &str| k.split('.').next().unwrap_or("").to_string();
    let mut d = ConfigDiff::default();
    for key in &changed {
        if RESTART_ONLY.iter().any(|(k, _)| k == key) {
            d.needs_restart.push(key.clone());
            continue;
        }
        match section(key).as_str() {
            "chroma" | "pool" | "retry" | "breaker" => d.rebuild_store = true,
            "log" => d.relog = true,
            "backup" | "migrations" => d.reschedule = true,
            "metrics" => d.rebind_metrics = true,
            "control" => d.reconfigure_control = true,
            _ => {}
        }
    }
    d.changed_keys = changed;
    d.changes = changes;
    d
}

const REDACTED: &str = "[redacted]";

/// Keys whose values are secrets themselves (none today: tokens and keys
/// come from files, and file paths are not secret). Any key named like a
/// secret is treated as one, so a future `…_token` or `…_password` key is
/// redacted before anyone remembers to list it.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    !last.ends_with("_file")
        && ["token", "secret", "password", "passphrase", "credential"]
            .iter()
            .any(|w| last.contains(w))
}

/// `value` with every string that is a URL carrying credentials made
/// harmless: user info (`user:pass@`) and the query (where SAS tokens and
/// signatures live) become `redacted`. Other values are returned as they are.
pub fn redact_secrets(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(redact_url(s)),
        Value::Array(items) => Value::Array(items.iter().map(redact_secrets).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), redact_secrets(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn redact_url(s: &str) -> String {
    if !s.contains("://") {
        return s.to_string();
    }
    let Ok(mut url) = url::Url::parse(s) else {
        // Not parseable, but it might still hold `user:pass@`.
        return if s.contains('@') {
            REDACTED.into()
        } else {
            s.to_string()
        };
    };
    let has_user_info = !url.username().is_empty() || url.password().is_some();
    if has_user_info && (url.set_username("redacted").is_err() || url.set_password(None).is_err()) {
        return REDACTED.into();
    }
    if url.query().is_some() {
        url.set_query(Some("redacted"));
    }
    if url.as_str() == s {
        s.to_string()
    } else {
        url.to_string()
    }
}

fn to_value(c: &Config) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// Changed keys with their old and new values.
fn collect(prefix: &str, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match y.get(k) {
                    Some(vb) if prefix.is_empty() => collect(&path, va, vb, out),
                    Some(vb) if va != vb => out.push((path, va.clone(), vb.clone())),
                    Some(_) => {}
                    None => out.push((path, va.clone(), Value::Null)),
                }
            }
        }
        _ if a != b => out.push((prefix.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn no_change_is_empty() {
        assert!(diff(&Config::default(), &Config::default()).is_empty());
    }

    #[test]
    fn classifies_changes() {
        let old = Config::default();
        let mut new = old.clone();
        new.pool.max_connections = 99;
        new.log.level = "debug".into();
        new.backup.schedule = "0 */5 * * * *".into();
        new.control.socket_path = "/tmp/other.sock".into();
        new.metrics.listen = Some("127.0.0.1:9000".into());
        let d = diff(&old, &new);
        assert_eq!(
            d.changed_keys,
            vec![
                "backup.schedule",
                "control.socket_path",
                "log.level",
                "metrics.listen",
                "pool.max_connections"
            ]
        );
        assert!(d.rebuild_store && d.relog && d.reschedule && d.rebind_metrics);
        assert_eq!(d.needs_restart, vec!["control.socket_path"]);
    }

    #[test]
    fn socket_mode_group_and_admin_group_apply_live() {
        let old = Config::default();
        let mut new = old.clone();
        new.control.socket_mode = 0o640;
        new.control.socket_group = Some("ops".into());
        new.control.admin_group = Some("admins".into());
        let d = diff(&old, &new);
        assert!(d.reconfigure_control);
        assert!(d.needs_restart.is_empty(), "{:?}", d.needs_restart);
        assert_eq!(effective(&old, &new).control, new.control);
    }

    #[test]
    fn every_restart_only_key_keeps_its_running_value() {
        let old = Config::default();
        let mut new = old.clone();
        new.control.socket_path = "/tmp/other.sock".into();
        new.daemon.state_dir = "/tmp/other-state".into();
        new.log.format = super::super::LogFormat::Json;
        new.pool.max_connections = 99;
        let d = diff(&old, &new);
        let restart_only: Vec<&str> = RESTART_ONLY.iter().map(|(k, _)| *k).collect();
        assert_eq!(d.needs_restart, restart_only);
        assert!(!d.reconfigure_control);
        // In force: everything new except the restart-only keys.
        let e = effective(&old, &new);
        assert!(diff(&old, &e)
            .changed_keys
            .iter()
            .all(|k| !restart_only.contains(&k.as_str())));
        assert_eq!(e.pool.max_connections, 99);
        assert_eq!(
            diff(&e, &new).changed_keys,
            restart_only,
            "exactly the restart-only keys differ from the file"
        );
    }

    #[test]
    fn durations_and_lists_compare_by_value() {
        let old = Config::default();
        let mut new = old.clone();
        new.retry.base_delay = Duration::from_millis(250);
        new.chroma
            .endpoints
            .push(url::Url::parse("http://10.0.0.2:8000").expect("url"));
        let d = diff(&old, &new);
        assert_eq!(d.changed_keys, vec!["chroma.endpoints", "retry.base_delay"]);
        assert!(d.rebuild_store && !d.relog);
    }

    #[test]
    fn changes_carry_old_and_new_values_without_credentials() {
        let old = Config::default();
        let mut new = old.clone();
        new.pool.max_connections = 99;
        new.log.level = "debug".into();
        new.chroma.endpoints =
            vec![url::Url::parse("https://admin:hunter2@chroma.example:8000/").expect("url")];
        new.backup.storage_path = "az://backups/prod?sv=2024&sig=s3cr3t".into();
        let d = diff(&old, &new);
        let by_key = |k: &str| {
            d.changes
                .iter()
                .find(|c| c.key == k)
                .unwrap_or_else(|| panic!("no change for {k}: {:?}", d.changes))
                .clone()
        };
        assert_eq!(
            d.changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
            d.changed_keys
        );
        let pool = by_key("pool.max_connections");
        assert_eq!(
            (pool.old, pool.new),
            (json!(old.pool.max_connections), json!(99))
        );
        let level = by_key("log.level");
        assert_eq!((level.old, level.new), (json!("info"), json!("debug")));
        let endpoints = by_key("chroma.endpoints");
        assert_eq!(endpoints.old, json!(["http://127.0.0.1:8000/"]));
        assert_eq!(
            endpoints.new,
            json!(["https://redacted@chroma.example:8000/"])
        );
        let storage = by_key("backup.storage_path");
        assert_eq!(storage.new, json!("az://backups/prod?redacted"));
        let text = serde_json::to_string(&d).expect("json");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
    }

    #[test]
    fn a_rotated_token_is_named_but_never_shown() {
        let mut old = Config::default();
        old.chroma.auth_token_file =
            Some("/run/credentials/chromaprod.service/chroma-token".into());
        old.chroma.auth_token = Some(crate::secret::Secret::new("old-tok-123".into()));
        let mut new = old.clone();
        new.chroma.auth_token = Some(crate::secret::Secret::new("new-tok-456".into()));
        let d = diff(&old, &new);
        assert_eq!(d.changed_keys, vec!["chroma.auth_token_file"]);
        let c = &d.changes[0];
        assert_eq!(c.old, c.new, "same file");
        assert!(c
            .note
            .as_deref()
            .is_some_and(|n| n.contains("token changed")));
        let text = serde_json::to_string(&d).expect("json");
        assert!(!text.contains("tok-"), "{text}");
        assert!(is_secret_key("chroma.auth_token"));
        assert!(is_secret_key("storage.client_secret"));
        assert!(!is_secret_key("chroma.auth_token_file"));
        assert!(!is_secret_key("backup.key_file"));
    }
}
