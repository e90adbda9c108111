//! `backups diff` for people: one row per collection on both sides, a line
//! per collection on one side only, and with `--ids` the ids of each.

use serde_json::Value;

use crate::cli::out::outln;
use crate::cli::units::{count, opt, text, Table};

/// "snapshot ID" or "the live collections", for side B.
fn side_b(to: &Value) -> String {
    match to.as_str() {
        Some(chromaprod::backup::diff::LIVE) => "the live collections".into(),
        _ => format!("snapshot {}", text(to)),
    }
}

fn records(n: &Value) -> String {
    let word = if n.as_u64() == Some(1) {
        "record"
    } else {
        "records"
    };
    format!("{} {word}", opt(n, count))
}

pub(super) fn diff(v: &Value) {
    let from = format!("snapshot {}", text(&v["from"]));
    let to = side_b(&v["to"]);
    outln!("from {from} to {to}");
    let cols = v["collections"].as_array().cloned().unwrap_or_default();
    if cols.is_empty() {
        outln!("no collections on either side");
        return;
    }
    let mut t = Table::new(&["COLLECTION", ">ADDED", ">CHANGED", ">REMOVED"]);
    let mut whole = Vec::new();
    for c in &cols {
        match c["status"].as_str() {
            Some("added") => whole.push(format!(
                "collection {} is only in {to}: {} added",
                text(&c["collection"]),
                records(&c["added"])
            )),
            Some("removed") => whole.push(format!(
                "collection {} is only in {from}: {} removed",
                text(&c["collection"]),
                records(&c["removed"])
            )),
            _ => t.row(vec![
                text(&c["collection"]),
                opt(&c["added"], count),
                opt(&c["changed"], count),
                opt(&c["removed"], count),
            ]),
        }
    }
    if !t.is_empty() {
        outln!();
        t.print();
    }
    if !whole.is_empty() {
        outln!();
        for line in whole {
            outln!("{line}");
        }
    }
    let same = cols
        .iter()
        .all(|c| ["added", "changed", "removed"].iter().all(|k| c[*k] == 0));
    if same {
        outln!("no differences");
    }
    for c in cols.iter().filter(|c| c["ids"].is_object()) {
        outln!();
        outln!("{}", text(&c["collection"]));
        for kind in ["added", "changed", "removed"] {
            let ids: Vec<String> = c["ids"][kind]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            if !ids.is_empty() {
                outln!("  {kind:<8} {}", ids.join(" "));
            }
        }
    }
}
