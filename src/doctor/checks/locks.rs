//! The `locks` check: live, expired and future-dated locks in the repository.

use super::repository::storage_fix;
use super::SYNC_CLOCK;
use crate::backup::lock::{list_locks, now_ms, LockInfo};
use crate::backup::repository::Repository;
use crate::config::Config;
use crate::doctor::{clock, Check};

/// Locks sorted by what they say about the hosts holding them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LockSummary {
    pub live: Vec<LockInfo>,
    pub expired: Vec<LockInfo>,
    /// Created later than now (beyond `tolerance_ms`): the holder's clock is ahead.
    pub from_future: Vec<LockInfo>,
}

pub fn classify_locks(locks: Vec<LockInfo>, now_ms: u64, tolerance_ms: u64) -> LockSummary {
    let mut s = LockSummary::default();
    for l in locks {
        if l.created_ms > now_ms.saturating_add(tolerance_ms) {
            s.from_future.push(l);
        } else if l.expires_ms < now_ms {
            s.expired.push(l);
        } else {
            s.live.push(l);
        }
    }
    s
}

fn describe_lock(l: &LockInfo, now: u64) -> String {
    let when = if l.expires_ms >= now {
        format!("expires in {}s", (l.expires_ms - now) / 1000)
    } else {
        format!("expired {}s ago", (now - l.expires_ms) / 1000)
    };
    format!(
        "{} {} lock of {} (pid {}), {when}",
        if l.exclusive { "exclusive" } else { "shared" },
        l.purpose,
        l.holder,
        l.pid
    )
}

pub(super) async fn check_locks(repo: &Repository, cfg: &Config) -> Check {
    const NAME: &str = "locks";
    let objects = match repo.list("locks").await {
        Ok(m) => m.len(),
        Err(e) => return Check::fail(NAME, e.to_string(), storage_fix(&e)),
    };
    let locks = match list_locks(repo).await {
        Ok(l) => l,
        Err(e) => return Check::fail(NAME, e.to_string(), storage_fix(&e)),
    };
    let unreadable = objects.saturating_sub(locks.len());
    let now = now_ms();
    let (_, fail) = clock::limits(cfg.backup.lock_ttl);
    let tolerance = u64::try_from(fail.as_millis()).unwrap_or(u64::MAX);
    let s = classify_locks(locks, now, tolerance);
    if let Some(l) = s.from_future.first() {
        return Check::fail(
            NAME,
            format!(
                "a lock of {} (pid {}) was created {}s in the future: that host's clock is ahead, so leases between hosts cannot be trusted",
                l.holder,
                l.pid,
                (l.created_ms - now) / 1000
            ),
            SYNC_CLOCK,
        );
    }
    if !s.expired.is_empty() {
        let shown: Vec<String> = s
            .expired
            .iter()
            .take(3)
            .map(|l| describe_lock(l, now))
            .collect();
        return Check::warn(
            NAME,
            format!(
                "{} expired lock(s) left by processes that stopped without releasing them: {}",
                s.expired.len(),
                shown.join("; ")
            ),
            "nothing to do unless those processes still run: the next backup, prune or verify removes expired locks",
        );
    }
    if unreadable > 0 {
        return Check::warn(
            NAME,
            format!("{unreadable} object(s) under locks/ are not readable locks"),
            "the next lock holder removes them; if they keep appearing, something else writes into the repository",
        );
    }
    if s.live.is_empty() {
        Check::ok(NAME, "no locks held")
    } else {
        let shown: Vec<String> = s.live.iter().map(|l| describe_lock(l, now)).collect();
        Check::ok(
            NAME,
            format!("{} live lock(s): {}", s.live.len(), shown.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(created_ms: u64, expires_ms: u64) -> LockInfo {
        LockInfo {
            holder: "h".into(),
            pid: 1,
            purpose: "backup".into(),
            exclusive: false,
            created_ms,
            expires_ms,
        }
    }

    #[test]
    fn locks_are_live_expired_or_from_the_future() {
        let now = 1_000_000;
        let s = classify_locks(
            vec![
                lock(now - 10, now + 100_000),
                lock(now - 300_000, now - 180_000),
                lock(now + 3_600_000, now + 3_720_000),
                // A little ahead: within tolerance.
                lock(now + 2_000, now + 122_000),
            ],
            now,
            40_000,
        );
        assert_eq!(s.live.len(), 2);
        assert_eq!(s.expired, vec![lock(now - 300_000, now - 180_000)]);
        assert_eq!(s.from_future, vec![lock(now + 3_600_000, now + 3_720_000)]);
    }
}
