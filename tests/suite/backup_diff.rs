//! `chromaprod backups diff` against a real Chroma server: two snapshots
//! around known changes (5 added, 3 updated in metadata only, 2 deleted, a
//! collection created and one dropped), a snapshot against the live
//! collections, the errors, and the same through the daemon's socket.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromaprod::chroma::{ProductionChromaStore, RecordBatch};
use common::chroma::ChromaServer;
use common::daemon::{cli, encrypted_setup, offline, DaemonProcess};
use common::records::{seed, store_for};
use serde_json::{json, Value};

const DIM: usize = 8;

/// A config with an encrypted repository in a temp dir.
fn setup(chroma_url: &str) -> (tempfile::TempDir, PathBuf) {
    encrypted_setup(chroma_url, "")
}

/// Takes a backup here (no daemon); its snapshot id.
fn backup(config: &Path, kind: &str) -> String {
    let (code, out, err) = offline(config, &["--json", "backup", kind]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(out.lines().last().expect("result")).expect("json");
    v["snapshot"].as_str().expect("snapshot").to_string()
}

/// `--json` output: the result (last line) and the events before it.
fn json_result(out: &str) -> (Value, Vec<Value>) {
    let mut lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let result = lines.pop().expect("a result line");
    (result, lines)
}

/// docs (60 records), gone (7) and stay (5).
async fn seed_all(store: &ProductionChromaStore) -> String {
    let docs = seed(store, "docs", 60, DIM).await;
    seed(store, "gone", 7, DIM).await;
    seed(store, "stay", 5, DIM).await;
    docs
}

/// The changes the diff must find: in docs 5 added (n0…n4), 3 updated in
/// metadata only (r000010…12), 2 deleted (r000020, r000021); `fresh`
/// created with 4 records; `gone` dropped.
async fn change(store: &ProductionChromaStore, docs: &str) {
    let added: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
    let add = RecordBatch {
        embeddings: Some(added.iter().map(|_| vec![0.5f32; DIM]).collect()),
        documents: Some(added.iter().map(|i| Some(format!("new {i}"))).collect()),
        metadatas: None,
        uris: None,
        ids: added,
    };
    store.upsert(docs, &add).await.expect("add");
    let updated: Vec<String> = (10..13).map(|i| format!("r{i:06}")).collect();
    let meta = json!({"edited": true}).as_object().cloned().expect("map");
    let update = RecordBatch {
        embeddings: None,
        documents: None,
        metadatas: Some(updated.iter().map(|_| Some(meta.clone())).collect()),
        uris: None,
        ids: updated,
    };
    store.update(docs, &update).await.expect("update");
    let deleted = ["r000020".to_string(), "r000021".to_string()];
    store
        .delete(docs, Some(&deleted), None)
        .await
        .expect("delete");
    seed(store, "fresh", 4, DIM).await;
    store.delete_collection("gone").await.expect("drop");
}

fn strings(v: &[&str]) -> Value {
    json!(v)
}

/// The diff of the changes above, from the seeded state to the changed one.
fn expected(with_ids: bool) -> Value {
    let mut cols = vec![
        json!({"collection": "docs", "status": "in_both", "added": 5, "changed": 3, "removed": 2}),
        json!({"collection": "fresh", "status": "added", "added": 4, "changed": 0, "removed": 0}),
        json!({"collection": "gone", "status": "removed", "added": 0, "changed": 0, "removed": 7}),
        json!({"collection": "stay", "status": "in_both", "added": 0, "changed": 0, "removed": 0}),
    ];
    if with_ids {
        let none = strings(&[]);
        cols[0]["ids"] = json!({
            "added": ["n0", "n1", "n2", "n3", "n4"],
            "changed": ["r000010", "r000011", "r000012"],
            "removed": ["r000020", "r000021"],
        });
        cols[1]["ids"] = json!({"added": ["r000000", "r000001", "r000002", "r000003"], "changed": none, "removed": none});
        cols[2]["ids"] = json!({"added": none, "changed": none,
            "removed": ["r000000", "r000001", "r000002", "r000003", "r000004", "r000005", "r000006"]});
        cols[3]["ids"] = json!({"added": none, "changed": none, "removed": none});
    }
    Value::Array(cols)
}

#[test]
fn two_snapshots_around_known_changes() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    let docs = rt.block_on(seed_all(&store));
    let (_dir, config) = setup(&chroma.base());
    let a = backup(&config, "--full");
    rt.block_on(change(&store, &docs));
    // An incremental: docs' unchanged chunks are shared with A (not read).
    let b = backup(&config, "--incremental");

    let (code, out, err) = offline(&config, &["--json", "backups", "diff", &a, &b]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (v, _) = json_result(&out);
    assert_eq!(v["from"], json!(a));
    assert_eq!(v["to"], json!(b));
    assert_eq!(v["collections"], expected(false), "{v}");

    let (code, out, err) = offline(&config, &["--json", "backups", "diff", &a, &b, "--ids"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json_result(&out).0["collections"], expected(true));

    // The other way round: the same records, the categories swapped.
    let (code, out, err) = offline(&config, &["--json", "backups", "diff", &b, &a]);
    assert_eq!(code, Some(0), "{out}{err}");
    let back = &json_result(&out).0["collections"];
    assert_eq!(
        back[0],
        json!({"collection": "docs", "status": "in_both", "added": 2, "changed": 3, "removed": 5})
    );
    assert_eq!(back[1]["status"], "removed");
    assert_eq!(back[2]["status"], "added");

    // For people: a row per collection on both sides, a line per other one.
    let (code, out, err) = offline(&config, &["backups", "diff", &a, &b, "--ids"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let lines: Vec<Vec<String>> = out.lines().map(words).collect();
    assert!(
        lines.contains(&words("COLLECTION ADDED CHANGED REMOVED")),
        "{out}"
    );
    assert!(lines.contains(&words("docs 5 3 2")), "{out}");
    assert!(lines.contains(&words("stay 0 0 0")), "{out}");
    assert!(
        out.contains(&format!(
            "collection fresh is only in snapshot {b}: 4 records added"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "collection gone is only in snapshot {a}: 7 records removed"
        )),
        "{out}"
    );
    assert!(
        lines.contains(&words("changed r000010 r000011 r000012")),
        "{out}"
    );

    // One collection only; `latest` names B.
    let (code, out, err) = offline(
        &config,
        &[
            "--json",
            "backups",
            "diff",
            &a,
            "latest",
            "--collection",
            "docs",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (v, _) = json_result(&out);
    assert_eq!(v["to"], json!(b));
    assert_eq!(v["collections"], json!([expected(false)[0]]));
}

#[test]
fn a_snapshot_against_the_live_collections_and_the_errors() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    let docs = rt.block_on(seed_all(&store));
    let (_dir, config) = setup(&chroma.base());
    let a = backup(&config, "--full");

    // Nothing changed yet.
    let (code, out, err) = offline(&config, &["backups", "diff", &a, "--live"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("no differences"), "{out}");
    assert!(out.contains("to the live collections"), "{out}");

    rt.block_on(change(&store, &docs));
    let (code, out, err) = offline(
        &config,
        &["--json", "backups", "diff", &a, "--live", "--ids"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (v, events) = json_result(&out);
    assert_eq!(v["to"], "live");
    assert_eq!(v["collections"], expected(true), "{v}");
    // Progress while reading the live records.
    let docs_done = events
        .iter()
        .rfind(|e| e["event"]["phase"] == "diff" && e["event"]["collection"] == "docs")
        .unwrap_or_else(|| panic!("no diff progress for docs: {out}"));
    assert_eq!(docs_done["event"]["records_done"], 63);
    assert_eq!(docs_done["event"]["records_total"], 63);

    // Errors, each saying what to do.
    let (code, _, err) = offline(&config, &["backups", "diff", "0123456789abcdef", "--live"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("snapshot 0123456789abcdef does not exist") && err.contains("backups list"),
        "{err}"
    );
    let (code, _, err) = offline(&config, &["backups", "diff", &a, &a, "--live"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("either a second snapshot id or --live, not both"),
        "{err}"
    );
    let (code, _, err) = offline(&config, &["backups", "diff", &a]);
    assert_eq!(code, Some(1));
    assert!(err.contains("give a second snapshot id"), "{err}");
    let (code, _, err) = offline(
        &config,
        &["backups", "diff", &a, "--live", "--collection", "nope"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "collection \"nope\" is in neither snapshot {a} nor the live collections"
        )),
        "{err}"
    );
}

#[test]
fn through_the_daemon_socket() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    let docs = rt.block_on(seed_all(&store));
    let (_dir, config) = setup(&chroma.base());
    let a = backup(&config, "--full");
    rt.block_on(change(&store, &docs));
    let b = backup(&config, "--full");
    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));

    let (code, out, err) = cli(
        &daemon.socket,
        &["--json", "backups", "diff", &a, &b, "--ids"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json_result(&out).0["collections"], expected(true));
    // Against the live collections, with progress events over the socket.
    let (code, out, err) = cli(&daemon.socket, &["--json", "backups", "diff", &a, "--live"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (v, events) = json_result(&out);
    assert_eq!(v["collections"], expected(false));
    assert!(
        events.iter().any(|e| e["event"]["phase"] == "diff"),
        "{out}"
    );
    let (code, _, err) = cli(&daemon.socket, &["backups", "diff", "0123456789abcdef", &b]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not exist"), "{err}");
}
