//! The `clock` check: this host's clock against the repository's backend.

use std::time::{Duration, SystemTime};

use super::SYNC_CLOCK;
use crate::config::Config;
use crate::doctor::clock::{self, Skew};
use crate::doctor::{Check, Options, Status};
use crate::storage::{Env, Location};

pub(super) async fn check_clock(
    location: &Location,
    local_probe: Option<(SystemTime, SystemTime, SystemTime)>,
    cfg: &Config,
    o: &Options,
) -> Check {
    const NAME: &str = "clock";
    let (skew, source) = match location {
        Location::Local(root) => match local_probe {
            // Local file systems stamp files with the kernel's coarse clock.
            Some((sent, received, mtime)) => (
                Skew::measure(sent, received, mtime, Duration::from_millis(20)),
                format!(
                    "the modification time of a probe file in {}",
                    root.display()
                ),
            ),
            None => return Check::skip(NAME, "needs a probe file in the local repository"),
        },
        other => {
            let Some(endpoint) = clock::backend_endpoint(other, &Env::process()) else {
                return Check::skip(
                    NAME,
                    "the backend's endpoint is not known from the environment",
                );
            };
            match clock::skew_from_http(&endpoint, o.timeout).await {
                Ok(s) => (s, format!("the Date header of {endpoint}")),
                Err(e) => {
                    return Check::warn(
                        NAME,
                        format!("cannot measure the skew: {e}"),
                        "check that this host reaches the storage endpoint",
                    )
                }
            }
        }
    };
    let (status, text) = clock::verdict(skew, cfg.backup.lock_ttl);
    let summary = format!("{text} (from {source})");
    match status {
        Status::Ok => Check::ok(NAME, summary),
        Status::Warn => Check::warn(NAME, summary, SYNC_CLOCK),
        _ => Check::fail(NAME, summary, SYNC_CLOCK),
    }
}
