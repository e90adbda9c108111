//! What changed between two configurations, and what that means for the
//! running daemon. Pure: values in, a plan out.

use serde::Serialize;
use serde_json::Value;

use super::Config;

/// The parts of the running daemon a new configuration touches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigDiff {
    /// Every changed key, dotted (`pool.max_connections`).
    pub changed_keys: Vec<String>,
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
    let mut changed = Vec::new();
    let (a, b) = (to_value(old), to_value(new));
    collect("", &a, &b, &mut changed);
    // The token is not serialised; compare it explicitly so a rotated token rebuilds the store.
    if old.chroma.auth_token != new.chroma.auth_token {
        changed.push("chroma.auth_token_file".to_string());
    }
    changed.sort();
    changed.dedup();
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
    d
}

fn to_value(c: &Config) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn collect(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
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
                    Some(vb) if va != vb => out.push(path),
                    Some(_) => {}
                    None => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
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
}
