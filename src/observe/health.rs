//! `HealthMonitor`: one summary of the daemon's health, for systemd's
//! `STATUS=` line and for `chromaprod status`. Pure functions over the
//! pool's status and the last reload.

use crate::chroma::{BreakerState, PoolStatus};

pub struct HealthMonitor;

impl HealthMonitor {
    /// `ready`, `degraded` (some endpoints down) or `unavailable` (none up).
    pub fn summary(pool: &PoolStatus, last_reload_ok: Option<bool>) -> String {
        let total = pool.endpoints.len();
        let up = pool.endpoints.iter().filter(|e| e.healthy).count();
        let state = match (up, total) {
            (0, _) => "unavailable",
            (u, t) if u < t => "degraded",
            _ => "ready",
        };
        let reload = match last_reload_ok {
            Some(false) => "; last reload FAILED (running config kept)",
            _ => "",
        };
        format!("{state}: {up}/{total} endpoints up{reload}")
    }

    /// The `STATUS=` line: short, one line, what an operator needs first.
    pub fn status_line(pool: &PoolStatus, last_reload: Option<(bool, Option<&str>)>) -> String {
        let mut line = Self::summary(pool, last_reload.map(|(ok, _)| ok));
        line.push_str(&format!("; pool {}/{} in use", pool.in_use, pool.max));
        if pool.waiting > 0 {
            line.push_str(&format!(", {} waiting", pool.waiting));
        }
        let open: Vec<&str> = pool
            .endpoints
            .iter()
            .filter(|e| e.breaker != BreakerState::Closed)
            .map(|e| e.url.as_str())
            .collect();
        if !open.is_empty() {
            line.push_str(&format!("; breaker open: {}", open.join(", ")));
        }
        line
    }
}
