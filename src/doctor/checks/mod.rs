//! The checks of `chromaprod doctor`, one file per check: [`key`],
//! [`chroma`] (reachable, version, database), [`change_feed`] (the local
//! Chroma's files readable and matching the server), [`repository`]
//! (reachable, its key, writable), [`locks`], [`clock`] and [`socket`].

mod change_feed;
mod chroma;
mod clock;
mod key;
mod locks;
mod repository;
mod service_user;
mod socket;

use std::future::Future;

use super::{Check, Options, Report};
use crate::config::{self, Config};

use change_feed::check_change_feed;
pub use chroma::api_version_supported;
use chroma::check_chroma;
use key::check_key;
use repository::check_repository;
use socket::check_socket;

const SYNC_CLOCK: &str = "synchronise the clock with NTP on this host and every host that shares the repository: `timedatectl set-ntp true`, then `timedatectl timesync-status`";

pub(super) async fn run_all(o: &Options) -> Report {
    let mut checks = Vec::new();
    let cfg = match config::load(&o.config) {
        Ok(loaded) => {
            let overrides = if loaded.source.env_overrides.is_empty() {
                "no environment overrides".to_string()
            } else {
                format!(
                    "environment overrides: {}",
                    loaded.source.env_overrides.join(", ")
                )
            };
            checks.push(Check::ok("config", format!("valid; {overrides}")));
            loaded.config
        }
        Err(e) => {
            checks.push(Check::fail(
                "config",
                one_line(&e.to_string()),
                format!(
                    "edit {} (`chromaprod validate --config {}` lists every problem; the example is /usr/share/doc/chromaprod/examples/chromaprod.toml)",
                    o.config.display(),
                    o.config.display()
                ),
            ));
            for name in [
                "key",
                "chroma",
                "change_feed",
                "repository",
                "repository_write",
                "locks",
                "clock",
            ] {
                checks.push(Check::skip(name, "needs a valid configuration"));
            }
            let socket = o
                .socket
                .clone()
                .or_else(|| config::socket_path_hint(&o.config))
                .unwrap_or_else(|| Config::default().control.socket_path);
            checks.extend(bounded(o, "socket", check_socket(&socket, None, o)).await);
            return Report {
                config: o.config.clone(),
                checks,
            };
        }
    };

    let (key_check, key) = check_key(&cfg);
    checks.push(key_check);
    checks.extend(bounded(o, "chroma", check_chroma(&cfg, o)).await);
    checks.extend(bounded(o, "change_feed", check_change_feed(&cfg, o)).await);
    checks.extend(bounded(o, "repository", check_repository(&cfg, key.as_ref(), o)).await);
    let socket = o
        .socket
        .clone()
        .unwrap_or_else(|| cfg.control.socket_path.clone());
    checks.extend(bounded(o, "socket", check_socket(&socket, Some(&cfg), o)).await);
    Report {
        config: o.config.clone(),
        checks,
    }
}

/// Runs a group of checks with the per-check time limit.
async fn bounded(
    o: &Options,
    name: &'static str,
    f: impl Future<Output = Vec<Check>>,
) -> Vec<Check> {
    // A group runs several checks; give it room for each.
    match tokio::time::timeout(o.timeout * 4, f).await {
        Ok(checks) => checks,
        Err(_) => vec![Check::fail(
            name,
            format!("did not finish within {}", humantime::format_duration(o.timeout * 4)),
            "something is hanging (a firewall dropping packets, an overloaded server); rerun with a longer --timeout to see which step",
        )],
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(|l| l.trim().trim_start_matches("- "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
