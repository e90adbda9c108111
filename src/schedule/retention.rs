//! Which snapshots a prune keeps: restic's `forget` policy, as a pure function.
//!
//! Rules (a snapshot is kept if ANY rule keeps it, and every rule that keeps
//! it is named in its reasons):
//!
//! - `retention_days`: every snapshot younger than N days (measured from
//!   `now`) is kept.
//! - `keep_last`: the newest N snapshots are kept.
//! - `keep_hourly` / `keep_daily` / `keep_weekly` / `keep_monthly`: going from
//!   newest to oldest, the newest snapshot of each hour / day / ISO week
//!   (Monday to Sunday) / calendar month is kept, for the last N such periods
//!   *that have a snapshot* (as restic: a period with no snapshot does not use
//!   up a count). Periods are read in the configured UTC offset. As in restic,
//!   if a rule still has counts left when the oldest snapshot is reached, the
//!   oldest snapshot is kept too, so the history is as long as the policy
//!   allows.
//!
//! Two safety rules restic does not have, so a policy can never delete every
//! snapshot by accident:
//!
//! - when every rule is 0, everything is kept (a prune with no policy is a
//!   no-op, not "delete all");
//! - the newest snapshot is always kept (this only matters for a policy made
//!   of `retention_days` alone after backups stopped for longer than that).
//!
//! Decisions come back newest first; snapshots with the same time are ordered
//! by id, so the result does not depend on the input order.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use crate::config::BackupConfig;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// What retention needs to know about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    /// When the snapshot was taken, Unix milliseconds.
    pub created_at_ms: i64,
}

/// The retention rules of `[backup]`; 0 turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub retention_days: u32,
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl RetentionPolicy {
    /// True when no rule is set: [`select`] then keeps everything.
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

impl From<&BackupConfig> for RetentionPolicy {
    fn from(c: &BackupConfig) -> Self {
        RetentionPolicy {
            retention_days: c.retention_days,
            keep_last: c.keep_last,
            keep_hourly: c.keep_hourly,
            keep_daily: c.keep_daily,
            keep_weekly: c.keep_weekly,
            keep_monthly: c.keep_monthly,
        }
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Every rule that keeps it; empty when it is to be deleted.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
        }
    }

    /// The period a local time (Unix ms shifted by the offset) falls in.
    fn key(self, local_ms: i64) -> i64 {
        let day = local_ms.div_euclid(DAY_MS);
        match self {
            Period::Hour => local_ms.div_euclid(HOUR_MS),
            Period::Day => day,
            // 1970-01-01 was a Thursday; +3 makes weeks start on Monday (ISO).
            Period::Week => (day + 3).div_euclid(7),
            Period::Month => {
                let (y, m) = civil_year_month(day);
                y * 12 + m
            }
        }
    }
}

/// Year and month (0-based) of a day counted from 1970-01-01, proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // 1..=12
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month - 1)
}

struct Bucket {
    period: Period,
    count: u32,
    used: u32,
    last: Option<i64>,
}

/// Decide, for every snapshot, whether `policy` keeps it at `now_ms`, with
/// periods read at `utc_offset_secs` east of UTC. See the module docs.
pub fn select(
    snapshots: &[SnapshotInfo],
    policy: &RetentionPolicy,
    now_ms: i64,
    utc_offset_secs: i32,
) -> Vec<Decision> {
    let mut order: Vec<&SnapshotInfo> = snapshots.iter().collect();
    // Newest first; same-millisecond ties by id descending, as
    // `Repository::manifests` lists them, so `backups list` and prune agree.
    order.sort_by(|a, b| {
        (Reverse(a.created_at_ms), Reverse(&a.id)).cmp(&(Reverse(b.created_at_ms), Reverse(&b.id)))
    });

    if policy.is_empty() {
        return order
            .into_iter()
            .map(|s| Decision {
                id: s.id.clone(),
                keep: true,
                reasons: vec!["no retention rule is set: everything is kept".into()],
            })
            .collect();
    }

    let offset_ms = i64::from(utc_offset_secs) * 1000;
    let within_ms = i64::from(policy.retention_days) * DAY_MS;
    let mut buckets: Vec<Bucket> = [
        (Period::Hour, policy.keep_hourly),
        (Period::Day, policy.keep_daily),
        (Period::Week, policy.keep_weekly),
        (Period::Month, policy.keep_monthly),
    ]
    .into_iter()
    .filter(|(_, count)| *count > 0)
    .map(|(period, count)| Bucket {
        period,
        count,
        used: 0,
        last: None,
    })
    .collect();

    let oldest = order.len().saturating_sub(1);
    let mut out: Vec<Decision> = Vec::with_capacity(order.len());
    for (nr, snap) in order.iter().enumerate() {
        let mut reasons = Vec::new();
        if policy.retention_days > 0 && now_ms.saturating_sub(snap.created_at_ms) < within_ms {
            reasons.push(format!(
                "younger than retention_days ({})",
                policy.retention_days
            ));
        }
        if (nr as u64) < u64::from(policy.keep_last) {
            reasons.push(format!("last {} of {}", nr + 1, policy.keep_last));
        }
        let local_ms = snap.created_at_ms.saturating_add(offset_ms);
        for b in buckets.iter_mut().filter(|b| b.used < b.count) {
            let key = b.period.key(local_ms);
            if b.last != Some(key) {
                b.last = Some(key);
                b.used += 1;
                reasons.push(format!("{} {} of {}", b.period.name(), b.used, b.count));
            } else if nr == oldest {
                b.used += 1;
                reasons.push(format!(
                    "oldest snapshot, {} has counts left ({} of {})",
                    b.period.name(),
                    b.used,
                    b.count
                ));
            }
        }
        out.push(Decision {
            id: snap.id.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }

    if let Some(newest) = out.first_mut() {
        if !newest.keep {
            newest.keep = true;
            newest
                .reasons
                .push("newest snapshot: a policy never deletes every snapshot".into());
        }
    }
    out
}

#[cfg(test)]
mod tests;
