//! Migration results for people.

use serde_json::Value;

use super::backups::pairs;
use crate::cli::out::outln;
use crate::cli::units::{count, duration, list, opt, text, time, Table};

/// `migrate status`: every version, file and history side by side.
pub(super) fn status(v: &Value) {
    outln!("version {}   ({})", text(&v["version"]), text(&v["path"]));
    let mut t = Table::new(&[">VERSION", "NAME", "STATE", "APPLIED"]);
    for m in v["migrations"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&m["version"]),
            text(&m["name"]),
            text(&m["state"]),
            if m["applied_at"].is_null() {
                String::new()
            } else {
                time(&m["applied_at"])
            },
        ]);
        if let Some(e) = m["error"].as_str() {
            t.row(vec![String::new(), format!("error: {e}")]);
        }
    }
    if !t.is_empty() {
        t.print();
    }
    if v["pending"].as_array().is_some_and(|p| !p.is_empty()) {
        outln!("pending: {}", list(&v["pending"]));
    }
    for p in v["problems"].as_array().into_iter().flatten() {
        outln!("problem: {}", text(p));
    }
}

/// What one operation of a migration did, in a few words.
fn operation(op: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(c) = op["collection"].as_str() {
        parts.push(c.to_string());
    }
    let counted = [
        ("records_changed", "records changed"),
        ("copied", "copied"),
        ("caught_up_records", "caught up"),
    ];
    for (key, words) in counted {
        if let Some(n) = op[key]
            .as_u64()
            .filter(|n| *n > 0 || key != "caught_up_records")
        {
            parts.push(format!("{} {words}", count(n)));
        }
    }
    if let Some(o) = op["overlap"].as_f64() {
        parts.push(format!("neighbour overlap {o:.3}"));
    }
    if let Some(p) = op["previous"].as_str() {
        parts.push(format!("old collection kept as {p}"));
    }
    parts.join(", ")
}

fn versions(rows: &[Value], with_operations: bool) {
    let mut t = if with_operations {
        Table::new(&[">VERSION", "NAME", ">TOOK", "WHAT"])
    } else {
        Table::new(&[">VERSION", "NAME", ">TOOK"])
    };
    for m in rows {
        let what = m["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(operation)
            .collect::<Vec<_>>()
            .join("; ");
        t.row(vec![
            text(&m["version"]),
            text(&m["name"]),
            opt(&m["duration_ms"], duration),
            what,
        ]);
    }
    t.print();
}

/// `migrate up`: what was applied, and the restore point taken first.
pub(super) fn up(v: &Value) {
    let applied = v["applied"].as_array().cloned().unwrap_or_default();
    if applied.is_empty() {
        outln!(
            "nothing to apply; the database is at version {}",
            text(&v["version"])
        );
        return;
    }
    outln!(
        "applied {} migration{}; the database is at version {}",
        applied.len(),
        if applied.len() == 1 { "" } else { "s" },
        text(&v["version"])
    );
    match v["restore_point"].as_str() {
        Some(id) => outln!("restore point: snapshot {id}"),
        None => outln!("restore point: none (migrations.restore_point is off)"),
    }
    outln!();
    versions(&applied, true);
}

/// `migrate down`: what was undone.
pub(super) fn down(v: &Value) {
    let undone = v["undone"].as_array().cloned().unwrap_or_default();
    if undone.is_empty() {
        outln!(
            "nothing to undo; the database is at version {}",
            text(&v["version"])
        );
        return;
    }
    outln!(
        "undid {} migration{}; the database is at version {}",
        undone.len(),
        if undone.len() == 1 { "" } else { "s" },
        text(&v["version"])
    );
    outln!();
    versions(&undone, false);
}

/// `migrate validate`: the files agree with the history.
pub(super) fn validate(v: &Value) {
    if v["valid"].as_bool() == Some(true) {
        let pending = if v["pending"].as_array().is_none_or(Vec::is_empty) {
            "nothing pending".to_string()
        } else {
            format!("pending: {}", list(&v["pending"]))
        };
        outln!(
            "migrations are valid: {} files, the database at version {}, {pending}",
            text(&v["files"]),
            text(&v["version"]),
        );
    } else {
        super::fields(v);
    }
}

/// `migrate repair`: what the history now accepts.
pub(super) fn repair(v: &Value) {
    pairs(&[
        ("checksums realigned", list(&v["checksums_realigned"])),
        ("forgotten", list(&v["forgotten"])),
        ("failures cleared", list(&v["failures_cleared"])),
    ]);
}

/// `migrate stamp`: the version recorded and what changed in the history.
pub(super) fn stamp(v: &Value) {
    pairs(&[
        ("version", text(&v["version"])),
        ("stamped", list(&v["stamped"])),
        ("removed", list(&v["removed"])),
    ]);
}
