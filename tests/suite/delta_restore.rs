//! `restore --mode delta` against a real Chroma server: only what differs
//! from the snapshot is written (checked with Chroma's own write sequence
//! numbers), extra records are kept or deleted, a run killed midway
//! converges when run again and its restore point undoes it, refusals, and
//! cosine collections (where the server alters stored vectors) are not
//! rewritten for nothing.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::backup::compare::records_match;
use chromaprod::backup::records::{record_digest, Record};
use chromaprod::backup::{
    BackupManager, BackupRequest, BackupType, DeltaRestored, RestoreMode, RestoreOptions,
    RestoreOutcome, Trigger,
};
use chromaprod::chroma::{CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::observe::{FeedReads, MetricsCollector};
use chromaprod::progress::Progress;
use common::chroma::ChromaServer;
use common::daemon::{encrypted_setup, offline, offline_cmd};
use common::records::{collection_records, seed, store_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn manager(chroma: &ChromaServer, repo: &Path) -> BackupManager {
    manager_with(chroma, repo, false).await
}

/// With `change_feed`, `chroma.persist_directory` is the server's own.
async fn manager_with(chroma: &ChromaServer, repo: &Path, change_feed: bool) -> BackupManager {
    let mut c = Config::default();
    c.chroma.endpoints = vec![chroma.url()];
    if change_feed {
        c.chroma.persist_directory = Some(chroma.data_dir());
    }
    c.backup.storage_path = repo.display().to_string();
    c.backup.encrypt = false;
    let config = Arc::new(c);
    let store =
        ProductionChromaStore::new(&config, Arc::new(MetricsCollector::new())).expect("store");
    BackupManager::open(store, config, true)
        .await
        .expect("open repository")
}

async fn snapshot_of(m: &BackupManager, name: &str) -> String {
    m.create(
        BackupRequest {
            backup_type: BackupType::Collection,
            collections: vec![name.into()],
            trigger: Trigger::Command,
        },
        &Progress::none(),
        &CancellationToken::new(),
    )
    .await
    .expect("backup")
    .snapshot_id
    .to_string()
}

fn delta(collection: &str, keep_extra: bool, dry_run: bool) -> RestoreOptions {
    RestoreOptions {
        collections: vec![collection.into()],
        mode: RestoreMode::Delta,
        keep_extra,
        dry_run,
        ..RestoreOptions::default()
    }
}

/// Runs a delta restore; returns the restore point and the one collection's counts.
async fn run_delta(
    m: &BackupManager,
    id: &str,
    opts: &RestoreOptions,
) -> (Option<String>, DeltaRestored) {
    let outcome = m
        .restore(id, opts, &Progress::none(), &CancellationToken::new())
        .await
        .expect("delta restore");
    match outcome {
        RestoreOutcome::Delta {
            restore_point,
            mut delta,
            dry_run,
            ..
        } => {
            assert_eq!(dry_run, opts.dry_run);
            assert_eq!(delta.len(), 1);
            (restore_point, delta.remove(0))
        }
        other => panic!("not a delta outcome: {other:?}"),
    }
}

/// Every record equal (ids, documents, metadata, uris; embeddings exact,
/// or within the server's rounding for cosine).
fn assert_same(got: &[Record], want: &[Record], cosine: bool) {
    assert_eq!(
        got.iter().map(|r| &r.id).collect::<Vec<_>>(),
        want.iter().map(|r| &r.id).collect::<Vec<_>>(),
        "the ids differ"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(records_match(w, g, cosine), "{:?} differs: {g:?}", w.id);
    }
}

/// Each record id of the persist directory's collections with the sequence
/// number of its last write (Chroma's own SQLite, read-only).
fn write_seqs(chroma: &ChromaServer) -> BTreeMap<String, i64> {
    let db = chroma.data_dir().join("chroma.sqlite3");
    let script = "import sqlite3,sys,json\n\
        c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\n\
        print(json.dumps(dict(c.execute('select embedding_id, seq_id from embeddings'))))";
    let out = Command::new(common::host::tool("python3"))
        .args(["-c", script])
        .arg(&db)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("seq ids")
}

fn batch(records: &[Record]) -> RecordBatch {
    RecordBatch {
        ids: records.iter().map(|r| r.id.clone()).collect(),
        embeddings: Some(
            records
                .iter()
                .map(|r| r.embedding.clone().expect("embedding"))
                .collect(),
        ),
        documents: Some(records.iter().map(|r| r.document.clone()).collect()),
        metadatas: Some(records.iter().map(|r| r.metadata.clone()).collect()),
        uris: None,
    }
}

/// `r` with its metadata (`i` → -1, a new `changed` key) or its embedding
/// (first value negated) changed.
fn changed(r: &Record, embedding: bool) -> Record {
    let mut c = r.clone();
    if embedding {
        if let Some(e) = c.embedding.as_mut() {
            e[0] = -e[0] - 0.25;
        }
    } else if let Some(m) = c.metadata.as_mut() {
        m.insert("i".into(), json!(-1));
        m.insert("changed".into(), json!(0.1 + 0.2));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_restore_writes_only_the_missing_and_changed_records() {
    delta_restore_writes_only_what_differs(false).await;
}

/// The same on a local Chroma: the comparison takes the live side from the
/// change feed (no record read to compare), and the restore point is an
/// incremental that reads only what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_restore_through_the_change_feed_writes_only_the_missing_and_changed_records() {
    delta_restore_writes_only_what_differs(true).await;
}

async fn delta_restore_writes_only_what_differs(change_feed: bool) {
    let mut chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager_with(&chroma, &dir.path().join("repo"), change_feed).await;
    let col_id = seed(m.store(), "docs", 3000, 32).await;
    let (_, original) = collection_records(m.store(), "docs").await;
    let id = snapshot_of(&m, "docs").await;

    // 1 % deleted, 1 % changed (half metadata, half embedding).
    let deleted: Vec<String> = (0..30).map(|i| format!("r{:06}", i * 97 + 7)).collect();
    m.store()
        .delete(&col_id, Some(&deleted), None)
        .await
        .expect("delete");
    let to_change: Vec<Record> = (0..30)
        .map(|i| changed(&original[i * 89 + 11], i % 2 == 0))
        .collect();
    m.store()
        .upsert(&col_id, &batch(&to_change))
        .await
        .expect("change");
    let rewritten: HashSet<String> = deleted
        .iter()
        .cloned()
        .chain(to_change.iter().map(|r| r.id.clone()))
        .collect();
    assert_eq!(rewritten.len(), 60, "the changed and deleted ids overlap");

    // A dry run counts and writes nothing, and takes no restore point.
    let before = write_seqs(&chroma);
    let listed = m.list().await.expect("list").len();
    let feed_before = m.store().metrics().change_feed_reads();
    let (point, plan) = run_delta(&m, &id, &delta("docs", false, true)).await;
    let FeedReads { used, fallback } = m.store().metrics().change_feed_reads();
    assert_eq!(fallback, feed_before.fallback, "no fallback");
    assert_eq!(
        used - feed_before.used,
        u64::from(change_feed),
        "the dry run compared through the change feed only with persist_directory"
    );
    assert_eq!(point, None);
    assert_eq!(
        (plan.missing, plan.changed, plan.written, plan.deleted),
        (30, 30, 60, 0)
    );
    assert_eq!(write_seqs(&chroma), before, "a dry run wrote");
    assert_eq!(m.list().await.expect("list").len(), listed);

    let feed_before = m.store().metrics().change_feed_reads();
    let (point, done) = run_delta(&m, &id, &delta("docs", false, false)).await;
    let FeedReads { used, fallback } = m.store().metrics().change_feed_reads();
    assert_eq!(fallback, feed_before.fallback, "no fallback");
    // The restore point (an incremental) and the comparison.
    assert_eq!(used - feed_before.used, 2 * u64::from(change_feed));
    assert_eq!(
        done,
        DeltaRestored {
            collection: "docs".into(),
            target: "docs".into(),
            compared: 3000,
            unchanged: 2940,
            missing: 30,
            changed: 30,
            written: 60,
            deleted: 0,
            kept_extra: 0,
        }
    );
    assert_eq!(done.written, done.missing + done.changed);
    let (_, now) = collection_records(m.store(), "docs").await;
    assert_same(&now, &original, false);
    // Chroma's write sequence numbers: only the 60 records were written.
    let after = write_seqs(&chroma);
    let untouched_moved: Vec<&String> = before
        .iter()
        .filter(|(k, v)| !rewritten.contains(*k) && after.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        untouched_moved.is_empty(),
        "untouched records were rewritten: {untouched_moved:?}"
    );
    for id in &rewritten {
        assert_ne!(after.get(id), before.get(id), "{id} was not written");
    }
    // The restore point holds the collection as it was before.
    let point = point.expect("a restore point");
    let summary = m
        .list()
        .await
        .expect("list")
        .into_iter()
        .find(|s| s.metadata.backup_id.as_str() == point)
        .expect("the restore point is listed");
    assert_eq!(summary.metadata.backup_type, BackupType::Incremental);
    assert_eq!(summary.metadata.collections, vec!["docs".to_string()]);

    // Nothing differs any more: a second run writes nothing.
    let (_, again) = run_delta(&m, &id, &delta("docs", false, false)).await;
    assert_eq!((again.written, again.unchanged), (0, 3000));

    if change_feed {
        // Another collection, restored from the snapshot under another
        // name: the snapshot's mark does not speak of it, so the comparison
        // reads every record (an expected case: no fallback is counted).
        m.restore(
            &id,
            &RestoreOptions::copy_as("docs", "copy"),
            &Progress::none(),
            &CancellationToken::new(),
        )
        .await
        .expect("restore a copy");
        let copy = m.store().get_collection("copy").await.expect("copy");
        m.store()
            .delete(&copy.id, Some(&deleted[..5]), None)
            .await
            .expect("delete");
        let before = m.store().metrics().change_feed_reads();
        let opts = RestoreOptions {
            as_name: Some("copy".into()),
            ..delta("docs", false, false)
        };
        let (_, d) = run_delta(&m, &id, &opts).await;
        assert_eq!((d.missing, d.changed, d.unchanged), (5, 0, 2995));
        assert_eq!(
            m.store().metrics().change_feed_reads(),
            before,
            "the feed was not read for a copy"
        );
        let (_, restored) = collection_records(m.store(), "copy").await;
        assert_same(&restored, &original, false);

        // The persist directory put back from a copy of itself (as a
        // physical restore would): the mark's file is gone, so the
        // comparison reads every record, counted with its reason.
        chroma.stop();
        let data = chroma.data_dir();
        let copy = dir.path().join("data-copy");
        common::host::copy_tree(&data, &copy);
        std::fs::remove_dir_all(&data).expect("remove");
        std::fs::rename(&copy, &data).expect("put back");
        chroma.restart();
        m.store()
            .delete(&col_id, Some(&deleted[..3]), None)
            .await
            .expect("delete");
        let before = m.store().metrics().change_feed_reads();
        let (_, d) = run_delta(&m, &id, &delta("docs", false, false)).await;
        assert_eq!((d.missing, d.changed, d.unchanged), (3, 0, 2997));
        assert_eq!(
            m.store().metrics().change_feed_reads().fallback - before.fallback,
            2,
            "the restore point's and the comparison's fallbacks"
        );
        assert!(
            m.store()
                .metrics()
                .encode()
                .contains("reason=\"file_replaced\""),
            "the fallback's reason"
        );
        let (_, now) = collection_records(m.store(), "docs").await;
        assert_same(&now, &original, false);
    }
}

/// A collection of `n` records in `space` with float metadata.
async fn seed_space(store: &ProductionChromaStore, name: &str, space: &str, n: usize) -> String {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: None,
            configuration: Some(json!({"hnsw": {"space": space}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            id: format!("c{i:05}"),
            embedding: Some(
                (0..24)
                    .map(|j| ((i * 37 + j * 11) % 101) as f32 / 7.3 - 6.1)
                    .collect(),
            ),
            document: Some(format!("doc {i}")),
            metadata: json!({"f": i as f64 / 7.0, "i": i}).as_object().cloned(),
            uri: None,
        })
        .collect();
    store.upsert(&col.id, &batch(&records)).await.expect("seed");
    col.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cosine_collection_with_nothing_changed_gets_no_writes() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager(&chroma, &dir.path().join("repo")).await;
    let col_id = seed_space(m.store(), "cos", "cosine", 800).await;
    let (_, original) = collection_records(m.store(), "cos").await;
    let id = snapshot_of(&m, "cos").await;

    let (_, first) = run_delta(&m, &id, &delta("cos", false, false)).await;
    assert_eq!((first.written, first.unchanged), (0, 800));

    // Change 80 records; the delta restore writes them back, and the server
    // stores what it was given a little differently (an ulp here and there).
    let to_change: Vec<Record> = (0..80)
        .map(|i| changed(&original[i * 10], i % 2 == 0))
        .collect();
    m.store()
        .upsert(&col_id, &batch(&to_change))
        .await
        .expect("change");
    let (_, second) = run_delta(&m, &id, &delta("cos", false, false)).await;
    assert_eq!((second.changed, second.written), (80, 80));
    let (_, now) = collection_records(m.store(), "cos").await;
    assert_same(&now, &original, true);
    let drifted = now
        .iter()
        .zip(&original)
        .filter(|(a, b)| record_digest(a) != record_digest(b))
        .count();
    assert!(
        drifted > 0,
        "the server stored the written vectors bit-exactly; this test no longer covers the tolerance"
    );

    // Nothing changed since: digests differ for the rewritten records, but
    // within the server's rounding they are the snapshot's, so no write.
    let (_, third) = run_delta(&m, &id, &delta("cos", false, false)).await;
    assert_eq!((third.written, third.changed, third.unchanged), (0, 0, 800));
}

/// A config for `chroma_url` with an encrypted repository; returns it and its dir.
fn setup(chroma_url: &str) -> (tempfile::TempDir, PathBuf) {
    encrypted_setup(chroma_url, "")
}

/// A collection backup through the CLI (offline); returns its snapshot id.
fn backup(config: &Path, collection: &str) -> String {
    let (code, out, err) = offline(config, &["--json", "backup", "--collection", collection]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(out.lines().last().expect("line")).expect("json");
    v["snapshot"].as_str().expect("id").to_string()
}

/// `chromaprod --json restore ARGS` offline, succeeding; its result.
fn restore_json(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json", "restore"];
    all.extend_from_slice(args);
    let (code, out, err) = offline(config, &all);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str(out.lines().last().expect("line")).expect("json")
}

fn ids_of(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

#[test]
fn keep_extra_keeps_records_added_after_the_snapshot() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    let col_id = rt.block_on(seed(&store, "docs", 500, 16));
    let (dir, config) = setup(&chroma.base());
    let id = backup(&config, "docs");
    let (_, original) = rt.block_on(collection_records(&store, "docs"));
    let extra: Vec<Record> = (0..20)
        .map(|i| Record {
            id: format!("new-{i}"),
            ..original[i].clone()
        })
        .collect();
    rt.block_on(store.upsert(&col_id, &batch(&extra)))
        .expect("add");
    let gone = vec!["r000007".to_string(), "r000300".to_string()];
    rt.block_on(store.delete(&col_id, Some(&gone), None))
        .expect("delete");

    let kept = restore_json(
        &config,
        &[
            &id,
            "--collection",
            "docs",
            "--mode",
            "delta",
            "--keep-extra",
        ],
    );
    let d = &kept["delta"][0];
    assert_eq!(
        (
            &d["missing"],
            &d["written"],
            &d["kept_extra"],
            &d["deleted"]
        ),
        (&json!(2), &json!(2), &json!(20), &json!(0)),
        "{kept}"
    );
    assert!(kept["restore_point"].is_string(), "{kept}");
    let (_, now) = rt.block_on(collection_records(&store, "docs"));
    assert_eq!(now.len(), 520);
    let now_ids: HashSet<String> = ids_of(&now).into_iter().collect();
    assert!(extra.iter().all(|r| now_ids.contains(&r.id)), "extras lost");
    assert!(
        gone.iter().all(|g| now_ids.contains(g)),
        "missing not written"
    );

    // Without --keep-extra they go; the people's rendering says so.
    let mut c = offline_cmd(
        &config,
        &["restore", &id, "--collection", "docs", "--mode", "delta"],
    );
    let out = c.output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("restored by delta"), "{text}");
    assert!(text.contains("restore point: snapshot"), "{text}");
    let (_, now) = rt.block_on(collection_records(&store, "docs"));
    assert_same(&now, &original, false);
    drop(dir);
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 50, 8));
    rt.block_on(seed_space(&store, "cos", "cosine", 10));
    let (_dir, config) = setup(&chroma.base());
    let id = backup(&config, "docs");
    let snapshots = |config: &Path| {
        let (code, out, err) = offline(config, &["--json", "backups", "list"]);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let listed = snapshots(&config);
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--collection", "docs", "--as", "absent", "--mode", "delta"],
            &["\"absent\" does not exist", "use --mode replace or no mode"],
        ),
        (
            &["--collection", "docs", "--as", "cos", "--mode", "delta"],
            &["cosine", "l2", "cannot change the space", "--mode replace"],
        ),
        (
            &["--collection", "docs", "--as", "elsewhere", "--keep-extra"],
            &["--keep-extra applies only to --mode delta"],
        ),
        (
            &["--collection", "docs", "--mode", "replace", "--keep-extra"],
            &["--keep-extra applies only to --mode delta"],
        ),
    ];
    for (args, says) in cases {
        let mut all = vec!["restore", id.as_str()];
        all.extend_from_slice(args);
        let (code, out, err) = offline(&config, &all);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        for s in says {
            assert!(err.contains(s), "{args:?}: {err:?} lacks {s:?}");
        }
    }
    assert_eq!(
        snapshots(&config),
        listed,
        "a refused restore took a restore point"
    );
    let names: Vec<String> = rt
        .block_on(store.list_collections())
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(
        !names.iter().any(|n| n == "absent" || n == "elsewhere"),
        "{names:?}"
    );
}

#[test]
fn a_delta_restore_killed_midway_converges_and_its_restore_point_undoes_it() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    let col_id = rt.block_on(seed(&store, "docs", 8000, 64));
    let (_dir, config) = setup(&chroma.base());
    let id = backup(&config, "docs");
    let (_, original) = rt.block_on(collection_records(&store, "docs"));
    // Most records gone: the delta restore has thousands to write.
    let gone: Vec<String> = ids_of(&original).into_iter().skip(1500).collect();
    for part in gone.chunks(2000) {
        rt.block_on(store.delete(&col_id, Some(part), None))
            .expect("delete");
    }
    let (_, before) = rt.block_on(collection_records(&store, "docs"));
    assert_eq!(before.len(), 1500);

    let args = [
        "--json",
        "restore",
        &id,
        "--collection",
        "docs",
        "--mode",
        "delta",
    ];
    let mut child = offline_cmd(&config, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut restore_point = None;
    let mut killed_at = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let ev = &v["event"];
        if ev["phase"] == "done" {
            restore_point = ev["snapshot"].as_str().map(str::to_string);
        }
        if ev["phase"] == "delta_write" && ev["records_done"].as_u64().is_some_and(|n| n > 0) {
            kill(
                Pid::from_raw(i32::try_from(child.id()).expect("pid")),
                Signal::SIGKILL,
            )
            .expect("kill");
            killed_at = ev["records_done"].as_u64();
            break;
        }
        assert!(Instant::now() < deadline, "no write progress in time");
    }
    let status = child.wait().expect("wait");
    assert!(
        killed_at.is_some() && !status.success(),
        "not killed midway: {status}"
    );
    let restore_point = restore_point.expect("the restore point's snapshot was reported");
    // A write the killed process had already sent may still be applied by
    // Chroma: wait until the collection stops changing.
    let settle = Instant::now() + Duration::from_secs(30);
    let mut count = rt.block_on(store.count(&col_id)).expect("count");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = rt.block_on(store.count(&col_id)).expect("count");
        if now == count || Instant::now() > settle {
            break;
        }
        count = now;
    }
    let (_, midway) = rt.block_on(collection_records(&store, "docs"));
    assert!(
        midway.len() > 1500 && midway.len() < 8000,
        "{} records: not midway",
        midway.len()
    );

    // The same command again converges to the snapshot.
    let done = restore_json(&config, &args[2..]);
    let d = &done["delta"][0];
    assert_eq!(
        d["written"].as_u64(),
        Some(8000 - midway.len() as u64),
        "{done}"
    );
    let (_, now) = rt.block_on(collection_records(&store, "docs"));
    assert_same(&now, &original, false);

    // The first run's restore point brings back the collection as it was.
    restore_json(
        &config,
        &[&restore_point, "--collection", "docs", "--mode", "replace"],
    );
    let (_, undone) = rt.block_on(collection_records(&store, "docs"));
    assert_same(&undone, &before, false);
    for (a, b) in undone.iter().zip(&before) {
        assert!(a.bit_eq(b), "{:?} is not as it was", a.id);
    }
}

#[test]
fn a_delta_restore_through_the_daemon_records_its_restore_point_in_the_audit_log() {
    let chroma = ChromaServer::start();
    let rt = common::host::rt();
    let store = store_for(&chroma.base());
    let col_id = rt.block_on(seed(&store, "docs", 300, 8));
    let (dir, config) = setup(&chroma.base());
    let id = backup(&config, "docs");
    let gone = vec!["r000042".to_string()];
    rt.block_on(store.delete(&col_id, Some(&gone), None))
        .expect("delete");
    let daemon = common::daemon::DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let (code, out, err) = common::daemon::cli(
        &daemon.socket,
        &[
            "--json",
            "restore",
            &id,
            "--collection",
            "docs",
            "--mode",
            "delta",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}\n{}", daemon.log());
    let result: Value = serde_json::from_str(out.lines().last().expect("line")).expect("json");
    let point = result["restore_point"].as_str().expect("restore point");
    assert_eq!(result["delta"][0]["missing"], 1, "{result}");

    let text = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).expect("audit");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|r: &Value| r["action"] == "restore")
        .collect();
    assert_eq!(records.len(), 2, "started and finished: {text}");
    assert_eq!(records[0]["details"]["command"]["mode"], "delta");
    let finished = &records[1]["details"];
    assert_eq!(finished["finished"], true, "{text}");
    assert_eq!(finished["ok"], true, "{text}");
    assert_eq!(finished["result"]["restore_point"], point, "{text}");
    assert_eq!(
        records[1]["actor"]["uid"],
        nix::unistd::getuid().as_raw(),
        "{text}"
    );
}
