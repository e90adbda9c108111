//! Checks of a whole configuration: across keys, unknown keys, secret files
//! and storage locations.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

use super::ConfigIssue;
use crate::config::Config;

/// Most sampled queries per collection (`backup.verify_queries`).
const MAX_VERIFY_QUERIES: usize = 10_000;
/// Most neighbours per query (`backup.verify_k`).
const MAX_VERIFY_K: usize = 1_000;

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

/// Keys present in the input that no reader asked for: misspellings, mostly.
pub(super) fn unknown_keys(root: &Map<String, Value>, seen: &BTreeSet<String>) -> Vec<ConfigIssue> {
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
pub(super) fn validate(c: &Config) -> Vec<ConfigIssue> {
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
    if c.chroma.persist_directory.is_none() {
        let wants = if c.backup.physical {
            Some("backup.physical")
        } else if c.backup.physical_schedule.is_some() {
            Some("backup.physical_schedule")
        } else {
            None
        };
        if let Some(key) = wants {
            bad(
                key,
                "physical snapshots copy Chroma's files: set chroma.persist_directory to the directory the local Chroma runs on (`chroma run --path DIR`)".into(),
            );
        }
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
        (
            "backup.physical_schedule",
            c.backup.physical_schedule.as_ref(),
        ),
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
    if c.backup.verify_queries > MAX_VERIFY_QUERIES {
        bad(
            "backup.verify_queries",
            format!("{} is more than {MAX_VERIFY_QUERIES}; a few hundred sampled queries already measure recall to about a percent", c.backup.verify_queries),
        );
    }
    if !(1..=MAX_VERIFY_K).contains(&c.backup.verify_k) {
        bad(
            "backup.verify_k",
            format!("{} is outside 1..={MAX_VERIFY_K}", c.backup.verify_k),
        );
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

/// `url` without user info, query or fragment: only what locates the server
/// (safe to show and to record, whatever the URL carried).
pub fn url_location(url: &Url) -> Url {
    let mut shown = without_user_info(url);
    shown.set_query(None);
    shown.set_fragment(None);
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

pub(super) fn check_storage_path(s: &str) -> Result<(), String> {
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
