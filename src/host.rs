//! This host as lock holders, manifests and migration runners name it, and
//! the wall clock they compare lease expiries with.

use std::time::{SystemTime, UNIX_EPOCH};

/// This host's name (`unknown-host` if the system does not say).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Milliseconds since the Unix epoch by this host's clock (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_has_a_name_and_the_clock_is_past_2020() {
        assert!(!super::hostname().is_empty());
        assert!(super::now_ms() > 1_577_836_800_000);
    }
}
