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
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-01-01T00:00:00Z, a Thursday.
    const JAN1: i64 = 1_767_225_600_000;

    fn snap(id: &str, at: i64) -> SnapshotInfo {
        SnapshotInfo {
            id: id.into(),
            created_at_ms: at,
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect()
    }

    /// One snapshot per hour, ids `h0` (oldest) … `h{n-1}` (newest), the
    /// newest at `newest`.
    fn hourly(n: i64, newest: i64) -> Vec<SnapshotInfo> {
        (0..n)
            .map(|i| snap(&format!("h{i}"), newest - (n - 1 - i) * HOUR_MS))
            .collect()
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy::default()
    }

    #[test]
    fn from_config_copies_every_rule() {
        let c = crate::config::Config::default().backup;
        let p = RetentionPolicy::from(&c);
        assert_eq!(p.retention_days, c.retention_days);
        assert_eq!(p.keep_last, c.keep_last);
        assert_eq!(p.keep_hourly, c.keep_hourly);
        assert_eq!(p.keep_daily, c.keep_daily);
        assert_eq!(p.keep_weekly, c.keep_weekly);
        assert_eq!(p.keep_monthly, c.keep_monthly);
    }

    #[test]
    fn empty_input_gives_empty_output() {
        let p = RetentionPolicy {
            keep_last: 3,
            ..policy()
        };
        assert!(select(&[], &p, JAN1, 0).is_empty());
    }

    #[test]
    fn no_rules_keep_everything() {
        let snaps = hourly(50, JAN1);
        let d = select(&snaps, &policy(), JAN1 + 1000 * DAY_MS, 0);
        assert_eq!(d.len(), 50);
        assert!(d.iter().all(|d| d.keep && d.reasons.len() == 1));
    }

    /// Table: (name, policy, snapshots as (id, ms after JAN1), offset, now
    /// after JAN1, ids kept newest first).
    #[test]
    fn rule_table() {
        type Case = (
            &'static str,
            RetentionPolicy,
            &'static [(&'static str, i64)],
            i32,
            i64,
            &'static [&'static str],
        );
        const H: i64 = HOUR_MS;
        const D: i64 = DAY_MS;
        let cases: &[Case] = &[
            (
                "keep_last takes the newest N",
                RetentionPolicy {
                    keep_last: 2,
                    ..policy()
                },
                &[("a", 0), ("b", H), ("c", 2 * H), ("d", 3 * H)],
                0,
                10 * D,
                &["d", "c"],
            ),
            (
                "keep_last larger than the list keeps all",
                RetentionPolicy {
                    keep_last: 10,
                    ..policy()
                },
                &[("a", 0), ("b", H)],
                0,
                10 * D,
                &["b", "a"],
            ),
            (
                "daily keeps the newest of each day, and the oldest while counts are left",
                RetentionPolicy {
                    keep_daily: 5,
                    ..policy()
                },
                &[("a", H), ("b", 20 * H), ("c", D + H), ("d", D + 5 * H)],
                0,
                10 * D,
                // d: day 2 (1 of 5), b: day 1 (2 of 5), a: oldest with counts left
                &["d", "b", "a"],
            ),
            (
                "daily with fewer counts than days stops at N",
                RetentionPolicy {
                    keep_daily: 2,
                    ..policy()
                },
                &[("a", H), ("b", D + H), ("c", 2 * D + H), ("d", 3 * D + H)],
                0,
                10 * D,
                &["d", "c"],
            ),
            (
                "a day without snapshot does not use up a count",
                RetentionPolicy {
                    keep_daily: 2,
                    ..policy()
                },
                &[("a", H), ("b", 5 * D + H), ("c", 9 * D + H)],
                0,
                10 * D,
                &["c", "b"],
            ),
            (
                "days are read in the configured offset",
                // 22:30 and 23:30 UTC on Jan 1 are 23:30 Jan 1 and 00:30
                // Jan 2 at +01:00: two days, so both are kept.
                RetentionPolicy {
                    keep_daily: 2,
                    ..policy()
                },
                &[
                    ("x", 22 * H + 30 * 60_000),
                    ("y", 23 * H + 30 * 60_000),
                    ("z", 0),
                ],
                3600,
                10 * D,
                &["y", "x"],
            ),
            (
                "the same two snapshots in UTC share a day",
                RetentionPolicy {
                    keep_daily: 2,
                    ..policy()
                },
                &[
                    ("x", 22 * H + 30 * 60_000),
                    ("y", 23 * H + 30 * 60_000),
                    ("z", -H),
                ],
                0,
                10 * D,
                // y: Jan 1, z: Dec 31 (the 2 counts); x is the older one of Jan 1
                &["y", "z"],
            ),
            (
                "weeks run Monday to Sunday",
                // Jan 4 2026 is a Sunday, Jan 5 a Monday.
                RetentionPolicy {
                    keep_weekly: 2,
                    ..policy()
                },
                &[
                    ("thu", H),
                    ("sun", 3 * D + H),
                    ("mon", 4 * D + H),
                    ("tue", 5 * D + H),
                ],
                0,
                30 * D,
                // tue: week 2; sun: week 1 (newest of Thu–Sun)
                &["tue", "sun"],
            ),
            (
                "monthly keeps the newest of each calendar month",
                RetentionPolicy {
                    keep_monthly: 2,
                    ..policy()
                },
                &[
                    ("jan1", 0),
                    ("jan31", 30 * D),
                    ("feb1", 31 * D),
                    ("feb28", 58 * D),
                    ("mar1", 59 * D),
                ],
                0,
                100 * D,
                &["mar1", "feb28"],
            ),
            (
                "hourly",
                RetentionPolicy {
                    keep_hourly: 3,
                    ..policy()
                },
                &[
                    ("a", 0),
                    ("b", 10 * 60_000),
                    ("c", H),
                    ("d", H + 1),
                    ("e", 2 * H),
                    ("f", 3 * H),
                ],
                0,
                D,
                &["f", "e", "d"],
            ),
            (
                "retention_days keeps what is younger than N days from now",
                RetentionPolicy {
                    retention_days: 2,
                    ..policy()
                },
                &[("old", 0), ("edge", D), ("young", D + 1), ("new", 2 * D)],
                0,
                3 * D,
                // edge is exactly 2 days old: not younger
                &["new", "young"],
            ),
            (
                "rules combine: any rule keeps",
                RetentionPolicy {
                    keep_last: 1,
                    keep_monthly: 2,
                    retention_days: 6,
                    ..policy()
                },
                &[("a", 0), ("b", 40 * D), ("c", 45 * D), ("d", 50 * D)],
                0,
                50 * D + H,
                // d: every rule; c: age only; b: nothing (February already
                // counted); a: monthly, January
                &["d", "c", "a"],
            ),
            (
                "retention_days alone never deletes the newest",
                RetentionPolicy {
                    retention_days: 7,
                    ..policy()
                },
                &[("a", 0), ("b", D)],
                0,
                100 * D,
                &["b"],
            ),
        ];
        for (name, p, snaps, offset, now, want) in cases {
            let snaps: Vec<_> = snaps.iter().map(|(id, t)| snap(id, JAN1 + t)).collect();
            let got = select(&snaps, p, JAN1 + now, *offset);
            assert_eq!(kept(&got), *want, "{name}: {got:#?}");
            for d in &got {
                assert_eq!(d.keep, !d.reasons.is_empty(), "{name}: {d:?}");
            }
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps() {
        let p = RetentionPolicy {
            keep_last: 1,
            keep_daily: 1,
            keep_monthly: 1,
            retention_days: 1,
            ..policy()
        };
        let d = select(&[snap("only", JAN1)], &p, JAN1 + HOUR_MS, 0);
        assert_eq!(
            d[0].reasons,
            vec![
                "younger than retention_days (1)",
                "last 1 of 1",
                "daily 1 of 1",
                "monthly 1 of 1",
            ]
        );
    }

    #[test]
    fn a_snapshot_every_hour_for_100_days() {
        // Newest at 2026-04-10T23:00Z (a Friday); 2400 snapshots back to
        // 2026-01-01T00:00Z.
        let newest = JAN1 + 99 * DAY_MS + 23 * HOUR_MS;
        let snaps = hourly(2400, newest);
        assert_eq!(snaps[0].created_at_ms, JAN1);
        let p = RetentionPolicy {
            keep_last: 3,
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            retention_days: 0,
        };
        let d = select(&snaps, &p, newest + HOUR_MS, 0);
        assert_eq!(d.len(), 2400);
        // Newest first.
        assert_eq!(d[0].id, "h2399");
        assert_eq!(d[2399].id, "h0");

        let mut want: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
        // last 3 and hourly 24: the newest 24 snapshots
        want.extend(2376..2400);
        // daily 7: the 23:00 snapshot of each of the last 7 days
        want.extend((0..7).map(|k| 2399 - 24 * k));
        // weekly 4: Sundays 23:00 (Apr 5, Mar 29, Mar 22) plus the newest (Fri Apr 10)
        for day in [94, 87, 80] {
            want.insert(day * 24 + 23);
        }
        // monthly 6: Mar 31 23:00, Feb 28 23:00, Jan 31 23:00, plus the
        // newest; only 4 months have snapshots, so the oldest (h0) is kept too.
        for day in [89, 58, 30] {
            want.insert(day * 24 + 23);
        }
        want.insert(0);

        let got: std::collections::BTreeSet<i64> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id[1..].parse().expect("test"))
            .collect();
        assert_eq!(got, want);
        let h0 = d.iter().find(|d| d.id == "h0").expect("test");
        assert!(
            h0.reasons[0].starts_with("oldest snapshot, monthly"),
            "{h0:?}"
        );
    }

    #[test]
    fn input_order_does_not_matter_and_ties_order_by_id() {
        let mut snaps = vec![snap("b", JAN1), snap("a", JAN1), snap("c", JAN1 + 1)];
        let p = RetentionPolicy {
            keep_last: 2,
            ..policy()
        };
        let first = select(&snaps, &p, JAN1, 0);
        snaps.reverse();
        let second = select(&snaps, &p, JAN1, 0);
        assert_eq!(first, second);
        let ids: Vec<_> = first.iter().map(|d| d.id.as_str()).collect();
        // Ties: id descending, the order `backups list` shows.
        assert_eq!(ids, ["c", "b", "a"]);
        assert_eq!(kept(&first), ["c", "b"]);
    }

    #[test]
    fn civil_months_match_known_dates() {
        // (days since epoch, year, month 0-based)
        for (days, y, m) in [
            (0, 1970, 0),
            (31, 1970, 1),
            (59, 1970, 2),
            (-1, 1969, 11),
            (20_454, 2026, 0), // 2026-01-01
            (20_513, 2026, 2), // 2026-03-01
            (11_016, 2000, 1), // 2000-02-29
        ] {
            assert_eq!(civil_year_month(days), (y, m), "day {days}");
        }
    }

    fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
        (0u32..4, 0u32..4, 0u32..5, 0u32..5, 0u32..3, 0u32..3).prop_map(
            |(retention_days, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly)| {
                RetentionPolicy {
                    retention_days,
                    keep_last,
                    keep_hourly,
                    keep_daily,
                    keep_weekly,
                    keep_monthly,
                }
            },
        )
    }

    fn arb_snaps() -> impl Strategy<Value = Vec<SnapshotInfo>> {
        prop::collection::vec(0i64..(90 * DAY_MS), 0..60).prop_map(|times| {
            times
                .into_iter()
                .enumerate()
                .map(|(i, t)| snap(&format!("s{i}"), JAN1 + t))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_deletes_everything_and_decides_each_once(
            snaps in arb_snaps(),
            p in arb_policy(),
            offset in -12i32 * 3600..=14 * 3600,
        ) {
            let d = select(&snaps, &p, JAN1 + 91 * DAY_MS, offset);
            prop_assert_eq!(d.len(), snaps.len());
            let mut ids: Vec<_> = d.iter().map(|d| d.id.clone()).collect();
            ids.sort();
            let mut want: Vec<_> = snaps.iter().map(|s| s.id.clone()).collect();
            want.sort();
            prop_assert_eq!(ids, want);
            if !snaps.is_empty() {
                prop_assert!(d.iter().any(|d| d.keep));
                // The newest is always kept.
                prop_assert!(d[0].keep);
            }
            for w in d.windows(2) {
                let a = snaps.iter().find(|s| s.id == w[0].id).expect("test");
                let b = snaps.iter().find(|s| s.id == w[1].id).expect("test");
                prop_assert!(a.created_at_ms >= b.created_at_ms);
            }
        }

        #[test]
        fn pruning_twice_deletes_nothing_more(
            snaps in arb_snaps(),
            p in arb_policy(),
        ) {
            let now = JAN1 + 91 * DAY_MS;
            let first = select(&snaps, &p, now, 0);
            let survivors: Vec<_> = snaps
                .iter()
                .filter(|s| first.iter().any(|d| d.keep && d.id == s.id))
                .cloned()
                .collect();
            let second = select(&survivors, &p, now, 0);
            prop_assert!(second.iter().all(|d| d.keep), "{:?}", second);
        }
    }
}
