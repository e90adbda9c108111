//! Results for people: tables and human units. Each function reads the JSON
//! result a command returns (the same data `--json` prints as it came).

mod backups;
mod diff;
mod migrate;
mod physical;

use serde_json::Value;

use chromaprod::control::Command;

use super::out::outln;
use super::units::{duration, list, text, time, time_ms, Table};

/// Prints `v`, the result of `command`, for a person.
pub fn result(command: &Command, v: &Value) {
    // A command started in the daemon without waiting: only its job id.
    if let (Some(job), Some(state)) = (v["job"].as_u64(), v["state"].as_str()) {
        outln!(
            "{} started as job {job} ({state}); follow it with `chromaprod jobs`",
            command.name()
        );
        return;
    }
    match command {
        Command::Status => status(v),
        Command::Reload => reload(v),
        Command::Query { .. } => query(v),
        Command::Jobs => jobs(v),
        Command::JobCancel { .. } => outln!(
            "job {} cancelled; it leaves no snapshot behind",
            text(&v["cancelled"])
        ),
        Command::Backup { .. } => backups::created(v),
        Command::BackupsList => backups::list_snapshots(v),
        Command::BackupShow { .. } => backups::show(v),
        Command::BackupVerify { recall: true, .. } => backups::recall(v),
        Command::BackupVerify { .. } => backups::verify(v),
        Command::BackupsDiff { .. } => diff::diff(v),
        Command::BackupsCheck => backups::check(v),
        Command::BackupDelete { .. } => outln!(
            "snapshot {} deleted; `chromaprod prune` frees the chunks no other snapshot uses",
            text(&v["deleted"])
        ),
        Command::Prune { .. } => backups::prune(v),
        Command::Restore { .. } => backups::restore(v),
        Command::RestorePhysical { .. } => physical::restored(v),
        Command::MigrateStatus => migrate::status(v),
        Command::MigrateUp { .. } => migrate::up(v),
        Command::MigrateDown { .. } => migrate::down(v),
        Command::MigrateValidate => migrate::validate(v),
        Command::MigrateRepair => migrate::repair(v),
        Command::MigrateStamp { .. } => migrate::stamp(v),
    }
}

/// Any object as "key: value" lines (lists joined), for results without a
/// layout of their own.
pub fn fields(v: &Value) {
    match v.as_object() {
        Some(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in map {
                let shown = match val {
                    Value::Array(_) => list(val),
                    Value::Object(_) => val.to_string(),
                    other => text(other),
                };
                outln!("{:<width$}  {shown}", k.replace('_', " "));
            }
        }
        None => outln!("{}", text(v)),
    }
}

fn status(v: &Value) {
    outln!(
        "chromaprod {} (pid {}), up {}",
        text(&v["version"]),
        text(&v["pid"]),
        v["uptime_seconds"].as_u64().map_or_else(
            || "-".into(),
            |s| if s < 60 {
                format!("{s} s")
            } else {
                duration(s * 1000)
            }
        )
    );
    outln!("health:   {}", text(&v["health"]));
    outln!("config:   {}", text(&v["config"]["path"]));
    match v["config"]["last_reload"].as_object() {
        None => outln!("reload:   none since start"),
        Some(r) if r.get("ok").and_then(Value::as_bool) == Some(true) => {
            let keys = &r["changed_keys"];
            outln!(
                "reload:   ok at {} ({})",
                time(&r["at"]),
                if keys.as_array().is_none_or(Vec::is_empty) {
                    "no changes".into()
                } else {
                    list(keys)
                }
            );
        }
        Some(r) => outln!(
            "reload:   FAILED at {}, running config kept:\n{}",
            time(&r["at"]),
            text(&r["error"])
        ),
    }
    outln!(
        "chroma:   tenant {} database {}",
        text(&v["chroma"]["tenant"]),
        text(&v["chroma"]["database"])
    );
    let pool = &v["pool"];
    outln!(
        "pool:     {} in use of {}, {} waiting",
        text(&pool["in_use"]),
        text(&pool["max"]),
        text(&pool["waiting"])
    );
    for e in pool["endpoints"].as_array().into_iter().flatten() {
        let health = if e["healthy"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        };
        outln!(
            "endpoint: {} {} breaker {}{}",
            text(&e["url"]),
            health,
            text(&e["breaker"]),
            e["last_error"]
                .as_str()
                .map(|m| format!(" (last error: {m})"))
                .unwrap_or_default()
        );
    }
}

fn reload(v: &Value) {
    if v["ok"].as_bool() == Some(true) {
        if v["changed_keys"].as_array().is_none_or(Vec::is_empty) {
            outln!("reloaded: no changes");
        } else {
            outln!("reloaded: {}", list(&v["changed_keys"]));
        }
        if v["needs_restart"].as_array().is_some_and(|a| !a.is_empty()) {
            outln!("restart needed for: {}", list(&v["needs_restart"]));
        }
    } else {
        outln!(
            "reload rejected; the running configuration stays in force:\n{}",
            text(&v["error"])
        );
    }
}

fn query(v: &Value) {
    let mut t = Table::new(&[">RANK", "ID", ">DISTANCE", "DOCUMENT"]);
    for (i, r) in v["results"].as_array().into_iter().flatten().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            text(&r["id"]),
            r["distance"]
                .as_f64()
                // Rounding can give -0.000000 for a record's own vector.
                .map_or_else(
                    || "-".into(),
                    |d| format!("{:.6}", if d.abs() < 5e-7 { 0.0 } else { d }),
                ),
            text(&r["document"]).chars().take(60).collect(),
        ]);
    }
    t.print();
    if v["documents_withheld"] == Value::Bool(true) {
        outln!("(documents withheld: run as root, as the daemon's user, or as a member of the daemon's group or of control.admin_group to see them)");
    }
}

fn jobs(v: &Value) {
    let mut t = Table::new(&[
        "ID",
        "KIND",
        "TRIGGER",
        "STARTED",
        "STATE",
        "PROGRESS OR RESULT",
    ]);
    for j in v["jobs"].as_array().into_iter().flatten() {
        let detail = match (&j["error"], &j["result"]) {
            (Value::String(e), _) => e.clone(),
            (_, r) if r.is_object() => job_summary(r),
            _ => job_summary(&j["progress"]),
        };
        t.row(vec![
            text(&j["id"]),
            text(&j["kind"]),
            text(&j["trigger"]),
            time(&j["started_at"]),
            text(&j["state"]),
            detail,
        ]);
    }
    if t.is_empty() {
        outln!("no jobs since the daemon started");
    } else {
        t.print();
    }
    let mut s = Table::new(&[
        "SCHEDULE", "CRON", "NEXT", "LAST RUN", "OUTCOME", "RUNNING", ">SKIPPED",
    ]);
    for sch in v["schedules"].as_array().into_iter().flatten() {
        let outcome = match sch["last_error"].as_str() {
            Some(e) => format!("{}: {e}", text(&sch["last_outcome"])),
            None => text(&sch["last_outcome"]),
        };
        s.row(vec![
            text(&sch["kind"]),
            text(&sch["cron"]),
            time_ms(&sch["next_fire_ms"]),
            time_ms(&sch["last_run_ms"]),
            outcome,
            if sch["running"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            text(&sch["skipped_fires"]),
        ]);
    }
    outln!();
    if s.is_empty() {
        outln!("no schedules (backup.enabled is off or none is set)");
    } else {
        s.print();
    }
}

/// One line for a job's latest progress event or its result.
fn job_summary(v: &Value) -> String {
    if let Some(snap) = v["snapshot"].as_str() {
        let mut s = format!("snapshot {snap}");
        if let Some(b) = v["bytes_written"].as_u64() {
            s.push_str(&format!(", {} written", super::units::bytes(b)));
        }
        if let Some(ms) = v["duration_ms"].as_u64() {
            s.push_str(&format!(", {}", duration(ms)));
        }
        return s;
    }
    if let (Some(d), Some(t)) = (v["records_done"].as_u64(), v["records_total"].as_u64()) {
        return format!(
            "{} {}: {d}/{t} records",
            text(&v["phase"]),
            text(&v["collection"])
        );
    }
    if let Some(version) = v["version"].as_u64() {
        return format!("version {version}");
    }
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, val)| format!("{} {}", k.replace('_', " "), opt_text(val)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

fn opt_text(v: &Value) -> String {
    match v {
        Value::Array(_) => list(v),
        Value::Number(n) => n
            .as_u64()
            .map_or_else(|| n.to_string(), super::units::count),
        other => text(other),
    }
}
