//! Backups, snapshots, restores and prunes for people.

use serde_json::Value;

use crate::cli::out::outln;
use crate::cli::units::{bytes, count, duration, list, opt, text, time, Table};

/// Aligned "label  value" lines.
pub(super) fn pairs(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        outln!("{k:<width$}  {v}");
    }
}

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

fn kind_and_parent(kind: &Value, parent: &Value) -> String {
    match parent.as_str() {
        Some(p) => format!("{} (parent {p})", text(kind)),
        None => text(kind),
    }
}

/// "15.1 KiB (1.0 KiB new)": what the snapshot refers to and what it added.
fn size(referenced: &Value, written: &Value) -> String {
    match written.as_u64() {
        Some(w) => format!("{} ({} new)", opt(referenced, bytes), bytes(w)),
        None => opt(referenced, bytes),
    }
}

/// At most `max` characters, "…" when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The result of `backup`: the new snapshot.
pub(super) fn created(v: &Value) {
    let cols = v["collections"].as_array().cloned().unwrap_or_default();
    let records: u64 = cols.iter().filter_map(|c| c["records"].as_u64()).sum();
    pairs(&[
        ("snapshot", text(&v["snapshot"])),
        ("type", kind_and_parent(&v["type"], &v["parent"])),
        (
            "contents",
            format!(
                "{} collection{}, {} records",
                cols.len(),
                if cols.len() == 1 { "" } else { "s" },
                count(records)
            ),
        ),
        ("size", size(&v["bytes_referenced"], &v["bytes_written"])),
        ("took", opt(&v["duration_ms"], duration)),
        ("encrypted", yes_no(&v["encrypted"])),
    ]);
    if v["physical"].is_object() {
        super::physical::created(&v["physical"]);
    }
    let mut t = Table::new(&["COLLECTION", ">RECORDS"]);
    for c in &cols {
        t.row(vec![text(&c["name"]), opt(&c["records"], count)]);
    }
    if !t.is_empty() {
        outln!();
        t.print();
    }
}

/// `backups list`: one line per snapshot, newest first.
pub(super) fn list_snapshots(v: &Value) {
    let snaps = v["snapshots"].as_array().cloned().unwrap_or_default();
    if snaps.is_empty() {
        outln!("no snapshots yet; take one with `chromaprod backup --full`");
        return;
    }
    let mut t = Table::new(&[
        "ID",
        "CREATED",
        "TYPE",
        "COLLECTIONS",
        ">RECORDS",
        ">SIZE",
        ">NEW",
        ">DURATION",
    ]);
    for s in &snaps {
        t.row(vec![
            text(&s["backup_id"]),
            time(&s["created_at"]),
            text(&s["backup_type"]),
            clip(&list(&s["collections"]), 40),
            opt(&s["records"], count),
            opt(&s["size_bytes"], bytes),
            opt(&s["bytes_written"], bytes),
            opt(&s["duration_ms"], duration),
        ]);
    }
    t.print();
    outln!(
        "{} snapshot{}, newest first",
        snaps.len(),
        if snaps.len() == 1 { "" } else { "s" }
    );
}

/// `backups show`: one snapshot's manifest.
pub(super) fn show(v: &Value) {
    let meta = &v["metadata"];
    pairs(&[
        ("snapshot", text(&v["snapshot_id"])),
        ("type", kind_and_parent(&meta["backup_type"], &v["parent"])),
        (
            "created",
            format!(
                "{} on {}, by {}",
                time(&meta["created_at"]),
                text(&v["host"]),
                text(&v["trigger"])
            ),
        ),
        ("size", size(&meta["size_bytes"], &v["bytes_written"])),
        ("took", opt(&v["duration_ms"], duration)),
        ("encrypted", yes_no(&v["encrypted"])),
        ("chroma", text(&meta["chroma_version"])),
        ("checksum", text(&meta["checksum"])),
        ("format", text(&v["format_version"])),
    ]);
    if v["physical"].is_object() {
        return super::physical::show(&v["physical"]);
    }
    let mut t = Table::new(&["COLLECTION", "DATABASE", ">RECORDS", ">CHUNKS", ">STORED"]);
    for c in v["collections"].as_array().into_iter().flatten() {
        let chunks = c["chunks"].as_array().cloned().unwrap_or_default();
        let stored: u64 = chunks
            .iter()
            .map(|k| {
                k["stored_size"].as_u64().unwrap_or(0)
                    + k["index_stored_size"].as_u64().unwrap_or(0)
            })
            .sum();
        t.row(vec![
            text(&c["name"]),
            text(&c["database"]),
            opt(&c["record_count"], count),
            chunks.len().to_string(),
            bytes(stored),
        ]);
    }
    if !t.is_empty() {
        outln!();
        t.print();
    }
}

/// `backups verify`: what was checked.
pub(super) fn verify(v: &Value) {
    let how = if v["full"].as_bool() == Some(true) {
        "full check: every object read, decrypted and its indexes checked"
    } else {
        "quick check: every object present with its size; --full reads them"
    };
    outln!("snapshot {} is intact ({how})", text(&v["snapshot"]));
    pairs(&[
        ("objects checked", opt(&v["objects_checked"], count)),
        ("records", opt(&v["records"], count)),
        ("bytes read", opt(&v["bytes_read"], bytes)),
    ]);
}

/// `backups check`: every object, without the key.
pub(super) fn check(v: &Value) {
    outln!(
        "{} objects checked, none damaged{}",
        opt(&v["objects_checked"], count),
        if v["key_used"].as_bool() == Some(false) {
            " (checked without the key)"
        } else {
            ""
        }
    );
}

/// `prune`: what retention kept and deleted.
pub(super) fn prune(v: &Value) {
    let dry = v["dry_run"].as_bool() == Some(true);
    let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
    if dry {
        outln!("dry run: nothing was deleted");
    }
    pairs(&[
        (
            "kept",
            format!(
                "{} snapshots: {}",
                n("snapshots_kept"),
                list(&v["snapshots_kept"])
            ),
        ),
        (
            if dry { "would delete" } else { "deleted" },
            format!(
                "{} snapshots: {}",
                n("snapshots_deleted"),
                list(&v["snapshots_deleted"])
            ),
        ),
        (
            if dry { "would free" } else { "freed" },
            format!(
                "{} objects, {}",
                opt(&v["objects_deleted"], count),
                opt(&v["bytes_freed"], bytes)
            ),
        ),
    ]);
}

/// `restore`: what was restored where, or with `--dry-run` what would be.
pub(super) fn restore(v: &Value) {
    if v.get("delta").is_some() {
        return delta(v);
    }
    if v["dry_run"].as_bool() == Some(true) {
        outln!(
            "dry run of snapshot {}: nothing was changed",
            text(&v["snapshot"])
        );
        let mut t = Table::new(&["COLLECTION", "TARGET", ">RECORDS", "REPLACES EXISTING"]);
        for p in v["plan"].as_array().into_iter().flatten() {
            t.row(vec![
                text(&p["collection"]),
                text(&p["target"]),
                opt(&p["records"], count),
                yes_no(&p["replaces_existing"]),
            ]);
        }
        t.print();
        return;
    }
    outln!("snapshot {} restored", text(&v["snapshot"]));
    let restored = v["restored"].as_array().cloned().unwrap_or_default();
    let mut t = Table::new(&[
        "COLLECTION",
        "TARGET",
        ">RECORDS",
        "PREVIOUS KEPT AS",
        ">RECALL@K",
    ]);
    for r in &restored {
        t.row(vec![
            text(&r["collection"]),
            text(&r["target"]),
            opt(&r["records"], count),
            text(&r["previous"]),
            recall_cell(&r["recall"]),
        ]);
    }
    t.print();
    for r in &restored {
        let check = &r["recall"];
        match check["status"].as_str() {
            Some("not_recorded") => outln!(
                "{}: the snapshot recorded no queries, so the index was not checked",
                text(&r["collection"])
            ),
            Some("failed") => outln!(
                "{}: the recall check could not run ({}); run `chromaprod backups verify {} --recall` later",
                text(&r["collection"]),
                text(&check["why"]),
                text(&v["snapshot"])
            ),
            _ => worst_line(&r["collection"], check),
        }
    }
}

/// "0.970 (k=10)", "not recorded", "-" (not checked).
fn recall_cell(check: &Value) -> String {
    match check["status"].as_str() {
        Some("checked") => format!(
            "{:.3} (k={})",
            check["recall"].as_f64().unwrap_or(0.0),
            text(&check["k"])
        ),
        Some("not_recorded") => "not recorded".into(),
        Some("failed") => "failed".into(),
        _ => "-".into(),
    }
}

/// The worst query of a checked collection, when one fell short.
fn worst_line(collection: &Value, check: &Value) {
    let w = &check["worst"];
    if w.is_object() {
        outln!(
            "{}: worst query {} found {:.0}% of its neighbours; missing {}",
            text(collection),
            text(&w["id"]),
            w["recall"].as_f64().unwrap_or(0.0) * 100.0,
            clip(&list(&w["missing"]), 80)
        );
    }
}

/// `backups verify --recall`: recall@k per collection against `min_recall`.
pub(super) fn recall(v: &Value) {
    let cols = v["collections"].as_array().cloned().unwrap_or_default();
    let min = v["min_recall"].as_f64().unwrap_or(0.0);
    if v["checked"].as_u64() == Some(0) {
        outln!(
            "snapshot {} recorded no queries: nothing to check (backups taken with backup.verify_queries = 0, of empty collections, or before chromaprod recorded queries)",
            text(&v["snapshot"])
        );
        return;
    }
    let passed = v["passed"].as_bool() == Some(true);
    outln!(
        "snapshot {}: {} (least recall {min:.3})",
        text(&v["snapshot"]),
        if passed {
            "every collection answers its recorded queries"
        } else {
            "RECALL TOO LOW"
        }
    );
    let mut t = Table::new(&[
        "COLLECTION",
        "CHECKED AS",
        ">QUERIES",
        ">K",
        ">RECALL",
        "OK",
    ]);
    for c in &cols {
        let ok = match c["recall"].as_f64() {
            Some(r) if r >= min => "yes",
            Some(_) => "NO",
            None => "-",
        };
        t.row(vec![
            text(&c["collection"]),
            text(&c["target"]),
            opt(&c["queries"], count),
            text(&c["k"]),
            match c["recall"].as_f64() {
                Some(r) => format!("{r:.3}"),
                None => recall_cell(c),
            },
            ok.into(),
        ]);
    }
    t.print();
    for c in &cols {
        worst_line(&c["collection"], c);
    }
}

/// `restore --mode delta`: per collection what was written and deleted, and
/// the restore point that undoes it.
fn delta(v: &Value) {
    let dry = v["dry_run"].as_bool() == Some(true);
    if dry {
        outln!(
            "dry run of a delta restore of snapshot {}: nothing was changed",
            text(&v["snapshot"])
        );
    } else {
        outln!("snapshot {} restored by delta", text(&v["snapshot"]));
    }
    let (written, deleted) = if dry {
        (">WOULD WRITE", ">WOULD DELETE")
    } else {
        (">WRITTEN", ">DELETED")
    };
    let mut t = Table::new(&[
        "COLLECTION",
        "TARGET",
        ">COMPARED",
        ">UNCHANGED",
        ">MISSING",
        ">CHANGED",
        written,
        deleted,
        ">KEPT EXTRA",
    ]);
    for r in v["delta"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&r["collection"]),
            text(&r["target"]),
            opt(&r["compared"], count),
            opt(&r["unchanged"], count),
            opt(&r["missing"], count),
            opt(&r["changed"], count),
            opt(&r["written"], count),
            opt(&r["deleted"], count),
            opt(&r["kept_extra"], count),
        ]);
    }
    t.print();
    if let Some(id) = v["restore_point"].as_str() {
        outln!("restore point: snapshot {id} (undo with `chromaprod restore {id} --mode replace`)");
    }
}
