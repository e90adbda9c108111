//! Physical snapshots for people: what a physical backup stored, the files
//! of a physical snapshot, and what a physical restore wrote.

use serde_json::Value;

use super::backups::pairs;
use crate::cli::out::outln;
use crate::cli::units::{bytes, count, duration, opt, text, Table};

/// The lines a physical `backup` adds: files, blocks, the writer's wait.
pub(super) fn created(p: &Value) {
    pairs(&[
        (
            "files",
            format!(
                "{} ({} blocks stored, {} reused)",
                opt(&p["files"], count),
                opt(&p["objects_written"], count),
                opt(&p["objects_reused"], count)
            ),
        ),
        (
            "writer held",
            format!(
                "{} (copy rounds: {})",
                opt(&p["writer_blocked_ms"], duration),
                text(&p["attempts"])
            ),
        ),
    ]);
}

/// `backups show` of a physical snapshot: its collections and files.
pub(super) fn show(p: &Value) {
    let mut t = Table::new(&["COLLECTION", "VECTOR SEGMENT", ">RECORDS", "FLUSHED AT"]);
    for c in p["collections"].as_array().into_iter().flatten() {
        t.row(vec![
            text(&c["name"]),
            text(&c["segment"]),
            opt(&c["records"], count),
            text(&c["flushed_seq_id"]),
        ]);
    }
    if !t.is_empty() {
        outln!();
        t.print();
    }
    let mut f = Table::new(&["FILE", ">SIZE", ">BLOCKS"]);
    for file in p["files"].as_array().into_iter().flatten() {
        f.row(vec![
            text(&file["path"]),
            opt(&file["size"], bytes),
            file["blocks"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    outln!();
    f.print();
}

/// `restore ID --data-dir DIR`: what was written where.
pub(super) fn restored(v: &Value) {
    outln!(
        "snapshot {} restored into {}",
        text(&v["snapshot"]),
        text(&v["data_dir"])
    );
    pairs(&[
        (
            "files",
            format!("{}, {}", opt(&v["files"], count), opt(&v["bytes"], bytes)),
        ),
        ("read", opt(&v["bytes_read"], bytes)),
        ("took", opt(&v["duration_ms"], duration)),
        ("chroma", text(&v["chroma_version"])),
    ]);
    if v["forced"].as_bool() == Some(true) {
        outln!("forced: the local Chroma is at other migration levels than the snapshot");
    }
    let mut t = Table::new(&["COLLECTION", ">RECORDS"]);
    for c in v["collections"].as_array().into_iter().flatten() {
        t.row(vec![text(&c["name"]), opt(&c["records"], count)]);
    }
    if !t.is_empty() {
        outln!();
        t.print();
    }
    outln!();
    outln!("next: stop Chroma, put this directory where it runs (docs/runbook.md, \"Physical restore\"), start Chroma, check it");
}
