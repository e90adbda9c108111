//! What runs when: the job kinds, their cron expressions from the config, and
//! the next fire time of a cron read in a fixed UTC offset.
//!
//! Everything here is a function over values; no clock is read. Times are
//! Unix milliseconds (UTC); offsets are seconds east of UTC.

use std::fmt;

use chrono::{DateTime, FixedOffset, TimeZone};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::config::{parse_utc_offset, BackupConfig};

/// A kind of scheduled job. At most one run of each kind is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    FullBackup,
    IncrementalBackup,
    Prune,
    Verify,
    PhysicalBackup,
}

impl JobKind {
    /// Every kind, in the order `status` lists them.
    pub const ALL: [JobKind; 5] = [
        JobKind::FullBackup,
        JobKind::IncrementalBackup,
        JobKind::Prune,
        JobKind::Verify,
        JobKind::PhysicalBackup,
    ];

    /// The name used in logs, the state file and `chromaprod jobs`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::FullBackup => "full_backup",
            JobKind::IncrementalBackup => "incremental_backup",
            JobKind::Prune => "prune",
            JobKind::Verify => "verify",
            JobKind::PhysicalBackup => "physical_backup",
        }
    }

    /// The config key that holds this kind's cron expression.
    pub fn config_key(self) -> &'static str {
        match self {
            JobKind::FullBackup => "backup.schedule",
            JobKind::IncrementalBackup => "backup.incremental_schedule",
            JobKind::Prune => "backup.prune_schedule",
            JobKind::Verify => "backup.verify_schedule",
            JobKind::PhysicalBackup => "backup.physical_schedule",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scheduled job: its kind and its cron expression (seconds optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    pub cron: String,
}

/// A schedule the config asks for cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{key} = {expr:?} is not a cron expression ({reason}); use 5 or 6 fields, e.g. \"0 0 3 * * *\"")]
    BadCron {
        key: &'static str,
        expr: String,
        reason: String,
    },
    #[error("backup.timezone: {0}; use \"UTC\" or an offset like \"+02:00\"")]
    BadTimezone(String),
}

/// Parse a cron expression the way the config validator does (seconds optional).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| e.to_string())
}

/// The jobs `backup` asks for, in [`JobKind::ALL`] order; empty when
/// `enabled = false`. Every cron expression is checked.
pub fn specs(config: &BackupConfig) -> Result<Vec<JobSpec>, PlanError> {
    if !config.enabled {
        return Ok(Vec::new());
    }
    let wanted = [
        (JobKind::FullBackup, Some(&config.schedule)),
        (
            JobKind::IncrementalBackup,
            config.incremental_schedule.as_ref(),
        ),
        (JobKind::Prune, config.prune_schedule.as_ref()),
        (JobKind::Verify, config.verify_schedule.as_ref()),
        (JobKind::PhysicalBackup, config.physical_schedule.as_ref()),
    ];
    let mut out = Vec::new();
    for (kind, expr) in wanted {
        let Some(expr) = expr else { continue };
        parse_cron(expr).map_err(|reason| PlanError::BadCron {
            key: kind.config_key(),
            expr: expr.clone(),
            reason,
        })?;
        out.push(JobSpec {
            kind,
            cron: expr.clone(),
        });
    }
    Ok(out)
}

/// `backup.timezone` as seconds east of UTC.
pub fn utc_offset(config: &BackupConfig) -> Result<i32, PlanError> {
    parse_utc_offset(&config.timezone).map_err(PlanError::BadTimezone)
}

fn at(ms: i64, offset_secs: i32) -> Option<DateTime<FixedOffset>> {
    let tz = FixedOffset::east_opt(offset_secs)?;
    tz.timestamp_millis_opt(ms).single()
}

/// The first fire time of an already parsed cron strictly after `after_ms`.
pub fn next_fire_of(cron: &Cron, after_ms: i64, utc_offset_secs: i32) -> Option<i64> {
    // Cron resolution is one second: search from the whole second at or
    // before `after_ms`, exclusively, so the result is strictly later.
    let whole = after_ms.div_euclid(1000) * 1000;
    let start = at(whole, utc_offset_secs)?;
    let next = cron.find_next_occurrence(&start, false).ok()?;
    Some(next.timestamp_millis())
}

/// The first fire time of `cron` strictly after `after_ms`, reading the
/// expression's fields in the local time of `utc_offset_secs`. `None` if the
/// expression does not parse or never fires again.
pub fn next_fire(cron: &str, after_ms: i64, utc_offset_secs: i32) -> Option<i64> {
    next_fire_of(&parse_cron(cron).ok()?, after_ms, utc_offset_secs)
}

/// Whether `cron` had at least one fire time in `(last_run_ms, now_ms]`:
/// the job was due while nothing ran it, so it is caught up — once, however
/// many fire times were missed.
pub fn missed_since(cron: &str, last_run_ms: i64, now_ms: i64, utc_offset_secs: i32) -> bool {
    next_fire(cron, last_run_ms, utc_offset_secs).is_some_and(|t| t <= now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// 2026-01-01T00:00:00Z
    const JAN1: i64 = 1_767_225_600_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;

    fn backup() -> BackupConfig {
        Config::default().backup
    }

    #[test]
    fn kinds_serialize_snake_case_like_as_str() {
        for kind in JobKind::ALL {
            let json = serde_json::to_string(&kind).expect("test");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: JobKind = serde_json::from_str(&json).expect("test");
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn disabled_backups_schedule_nothing() {
        let mut c = backup();
        c.enabled = false;
        c.prune_schedule = Some("0 0 4 * * *".into());
        assert_eq!(specs(&c).expect("test"), vec![]);
    }

    #[test]
    fn specs_lists_each_configured_schedule_in_order() {
        let mut c = backup();
        c.enabled = true;
        c.verify_schedule = Some("0 30 5 * * SUN".into());
        c.incremental_schedule = Some("0 0 * * * *".into());
        let got = specs(&c).expect("test");
        let kinds: Vec<_> = got.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                JobKind::FullBackup,
                JobKind::IncrementalBackup,
                JobKind::Verify
            ]
        );
        assert_eq!(got[0].cron, c.schedule);
    }

    #[test]
    fn a_bad_cron_names_its_key() {
        let mut c = backup();
        c.enabled = true;
        c.prune_schedule = Some("every day".into());
        let err = specs(&c).expect_err("a bad cron is refused");
        assert!(matches!(
            err,
            PlanError::BadCron {
                key: "backup.prune_schedule",
                ..
            }
        ));
        assert!(err.to_string().contains("backup.prune_schedule"));
    }

    #[test]
    fn offset_comes_from_timezone() {
        let mut c = backup();
        c.timezone = "-05:30".into();
        assert_eq!(utc_offset(&c).expect("test"), -(5 * 3600 + 30 * 60));
        c.timezone = "Mars/Olympus".into();
        assert!(matches!(utc_offset(&c), Err(PlanError::BadTimezone(_))));
    }

    #[test]
    fn next_fire_table() {
        // (cron, after, offset, expected)
        let cases: &[(&str, i64, i32, Option<i64>)] = &[
            // every minute, seconds field given
            ("0 * * * * *", JAN1, 0, Some(JAN1 + MIN)),
            // strictly after: from just before a fire time, that fire time
            ("0 * * * * *", JAN1 + MIN - 1, 0, Some(JAN1 + MIN)),
            // from inside a second
            ("0 * * * * *", JAN1 + 500, 0, Some(JAN1 + MIN)),
            // five fields (no seconds)
            ("*/15 * * * *", JAN1 + 1, 0, Some(JAN1 + 15 * MIN)),
            // daily 03:00 UTC
            ("0 0 3 * * *", JAN1, 0, Some(JAN1 + 3 * HOUR)),
            // daily 03:00 at +02:00 is 01:00 UTC
            ("0 0 3 * * *", JAN1, 7200, Some(JAN1 + HOUR)),
            // daily 03:00 at -05:00 is 08:00 UTC
            ("0 0 3 * * *", JAN1, -5 * 3600, Some(JAN1 + 8 * HOUR)),
            // after today's 03:00 → tomorrow's
            (
                "0 0 3 * * *",
                JAN1 + 3 * HOUR,
                0,
                Some(JAN1 + DAY + 3 * HOUR),
            ),
            // 2026-01-01 is a Thursday: next Sunday 00:00 is Jan 4
            ("0 0 0 * * SUN", JAN1, 0, Some(JAN1 + 3 * DAY)),
            // monthly on the 1st at midnight: Feb 1
            ("0 0 0 1 * *", JAN1, 0, Some(JAN1 + 31 * DAY)),
            // never (Feb 30th)
            ("0 0 0 30 2 *", JAN1, 0, None),
            // not a cron
            ("nonsense", JAN1, 0, None),
        ];
        for (cron, after, offset, want) in cases {
            assert_eq!(
                next_fire(cron, *after, *offset),
                *want,
                "next_fire({cron:?}, {after}, {offset})"
            );
        }
    }

    #[test]
    fn missed_since_table() {
        let hourly = "0 0 * * * *";
        // (last_run, now, missed)
        let cases = [
            (JAN1, JAN1 + 30 * MIN, false),
            (JAN1, JAN1 + HOUR, true),      // boundary is inclusive of now
            (JAN1, JAN1 + HOUR - 1, false), // … and exclusive before
            (JAN1, JAN1 + 5 * HOUR, true),  // many missed is still "missed"
            (JAN1 + HOUR, JAN1 + HOUR, false), // the run at the fire time covers it
            (JAN1 + 10, JAN1 + HOUR + 10, true), // ran just after a fire
        ];
        for (last, now, want) in cases {
            assert_eq!(missed_since(hourly, last, now, 0), want, "({last}, {now})");
        }
        // In +02:00 a daily 03:00 job fires at 01:00 UTC.
        assert!(missed_since("0 0 3 * * *", JAN1, JAN1 + HOUR, 7200));
        assert!(!missed_since("0 0 3 * * *", JAN1, JAN1 + HOUR, 0));
    }
}
