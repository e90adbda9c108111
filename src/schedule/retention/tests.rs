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
