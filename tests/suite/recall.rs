//! Recall-verified snapshots against a real Chroma server: a backup records
//! sample queries and the neighbours the live index returned; a restore and
//! `backups verify --recall` run them again and report recall@k. The
//! queries object is encrypted, verified and pruned like the other objects.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chromaprod::backup::recall::{QueriesRef, RecordedQueries};
use chromaprod::backup::{BackupError, BackupManager, BackupRequest, BackupType, Trigger};
use chromaprod::chroma::ProductionChromaStore;
use chromaprod::config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use common::chroma::ChromaServer;
use common::daemon::{encrypted_setup, offline};
use common::records::{seed, seed_with, store_for};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A config with an encrypted repository in a temp dir, `backup` lines added.
fn setup(chroma_url: &str, backup: &str) -> (tempfile::TempDir, PathBuf) {
    encrypted_setup(chroma_url, &format!("{backup}\n"))
}

/// `chromaprod --json ARGS` offline; (exit code, result, stderr).
fn json_run(config: &Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = offline(config, &all);
    let v = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    (code, v, err)
}

fn full_backup(config: &Path) -> String {
    let (code, v, err) = json_run(config, &["backup", "--full"]);
    assert_eq!(code, Some(0), "{err}");
    v["snapshot"].as_str().expect("snapshot id").to_string()
}

/// Two collections, l2 and cosine, of `n` records.
/// `docs` (l2) and `notes` (cosine), searched with a wide beam
/// (`ef_search` 200 over a few thousand records: as good as exact), so a
/// copy whose graph was built in another order still answers every
/// recorded query in full.
async fn seed_two(url: &str, n: usize) -> ProductionChromaStore {
    let store = store_for(url);
    seed_with(
        &store,
        "docs",
        n,
        16,
        json!({"hnsw": {"space": "l2", "ef_search": 200}}),
    )
    .await;
    seed_with(
        &store,
        "notes",
        n,
        16,
        json!({"hnsw": {"space": "cosine", "ef_search": 200}}),
    )
    .await;
    store
}

fn recall_of(check: &Value) -> f64 {
    assert_eq!(check["status"], "checked", "{check}");
    check["recall"].as_f64().expect("recall")
}

#[test]
fn a_restored_copy_answers_the_recorded_queries_with_recall_one() {
    let chroma = ChromaServer::start();
    common::host::rt().block_on(seed_two(&chroma.base(), 1500));
    let (_dir, config) = setup(&chroma.base(), "");
    let id = full_backup(&config);

    for (name, copy) in [("docs", "docs-copy"), ("notes", "notes-copy")] {
        let (code, v, err) = json_run(
            &config,
            &["restore", &id, "--collection", name, "--as", copy],
        );
        assert_eq!(code, Some(0), "{err}");
        let restored = &v["restored"][0];
        assert_eq!(restored["target"], copy);
        let check = &restored["recall"];
        assert_eq!(recall_of(check), 1.0, "{name}: {check}");
        assert_eq!(check["k"], 10);
        assert_eq!(check["queries"], 100);
        assert_eq!(check["records_when_recorded"], 1500);
        assert!(check.get("worst").is_none(), "{check}");

        let (code, v, err) = json_run(
            &config,
            &[
                "backups", "verify", &id, "--recall", "-c", name, "--as", copy,
            ],
        );
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(v["passed"], true, "{v}");
        assert_eq!(v["collections"][0]["target"], copy);
        assert_eq!(recall_of(&v["collections"][0]), 1.0);
    }
    // Every collection of the snapshot under its own name, for people.
    let (code, out, err) = offline(&config, &["backups", "verify", &id, "--recall"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("every collection answers its recorded queries"),
        "{out}"
    );
    for line in ["docs", "notes"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no row for {line}: {out}"));
        assert!(row.contains("1.000") && row.contains("yes"), "{row}");
    }
    // The restore's table shows recall@k too.
    let (code, out, err) = offline(
        &config,
        &["restore", &id, "--collection", "docs", "--as", "docs-again"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("RECALL@K") && out.contains("1.000 (k=10)"),
        "{out}"
    );
}

#[test]
fn a_copy_missing_a_fifth_of_its_records_fails_the_recall_verify() {
    let chroma = ChromaServer::start();
    let store = common::host::rt().block_on(seed_two(&chroma.base(), 1500));
    let (_dir, config) = setup(&chroma.base(), "");
    let id = full_backup(&config);
    let (code, v, err) = json_run(
        &config,
        &["restore", &id, "--collection", "docs", "--as", "docs-copy"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(recall_of(&v["restored"][0]["recall"]), 1.0);

    // Lose every fifth record of the copy.
    common::host::rt().block_on(async {
        let copy = store.get_collection("docs-copy").await.expect("copy");
        let gone: Vec<String> = (0..1500).step_by(5).map(|i| format!("r{i:06}")).collect();
        store
            .delete(&copy.id, Some(&gone), None)
            .await
            .expect("delete");
        assert_eq!(store.count(&copy.id).await.expect("count"), 1200);
    });

    let args = [
        "backups",
        "verify",
        &id,
        "--recall",
        "-c",
        "docs",
        "--as",
        "docs-copy",
    ];
    let (code, v, err) = json_run(&config, &args);
    assert_eq!(code, Some(65), "below --min-recall exits 65: {v}{err}");
    assert_eq!(v["passed"], false);
    let c = &v["collections"][0];
    let recall = recall_of(c);
    assert!((0.7..0.9).contains(&recall), "about 0.8 expected: {recall}");
    let worst = &c["worst"];
    assert!(worst["recall"].as_f64().expect("worst") < recall, "{worst}");
    assert!(
        worst["missing"]
            .as_array()
            .expect("missing")
            .iter()
            .all(|m| m
                .as_str()
                .and_then(|s| s[1..].parse::<usize>().ok())
                .is_some_and(|i| i % 5 == 0)),
        "only deleted records are missing: {worst}"
    );
    // A lower bar passes; the original itself still answers fully.
    let mut lenient = args.to_vec();
    lenient.extend_from_slice(&["--min-recall", "0.5"]);
    let (code, v, _) = json_run(&config, &lenient);
    assert_eq!((code, &v["passed"]), (Some(0), &Value::Bool(true)));
    let (code, v, _) = json_run(
        &config,
        &["backups", "verify", &id, "--recall", "-c", "docs"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(recall_of(&v["collections"][0]), 1.0);
    // For people: the verdict and the worst query.
    let (code, out, _) = offline(&config, &args);
    assert_eq!(code, Some(65));
    assert!(
        out.contains("RECALL TOO LOW") && out.contains("worst query"),
        "{out}"
    );
    // A collection that is not there: say what to do.
    let (code, _, err) = json_run(
        &config,
        &[
            "backups", "verify", &id, "--recall", "-c", "docs", "--as", "absent",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("\"absent\" does not exist") && err.contains("--as NAME"),
        "{err}"
    );
}

fn manager_config(chroma: &ChromaServer, dir: &Path) -> Arc<config::Config> {
    let key = dir.join("key");
    common::daemon::write_key(&key);
    let mut c = config::Config::default();
    c.chroma.endpoints = vec![chroma.url()];
    c.backup.storage_path = dir.join("repo").display().to_string();
    c.backup.encrypt = true;
    c.backup.key_file = Some(key);
    c.backup.keep_last = 1;
    c.backup.retention_days = 0;
    c.backup.keep_daily = 0;
    c.backup.keep_weekly = 0;
    c.backup.keep_monthly = 0;
    c.backup.verify_queries = 50;
    Arc::new(c)
}

async fn take(m: &BackupManager, backup_type: BackupType) -> chromaprod::backup::Manifest {
    m.create(
        BackupRequest {
            backup_type,
            collections: Vec::new(),
            trigger: Trigger::Command,
        },
        &Progress::none(),
        &CancellationToken::new(),
    )
    .await
    .expect("backup")
}

/// Stored objects under `repo/queries/`.
fn queries_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(repo.join("queries"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(fan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

fn path_of(repo: &Path, q: &QueriesRef) -> PathBuf {
    repo.join("queries").join(&q.id[..2]).join(&q.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queries_object_is_encrypted_verified_and_pruned_with_its_snapshot() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = manager_config(&chroma, dir.path());
    let repo = dir.path().join("repo");
    let store =
        ProductionChromaStore::new(&config, Arc::new(MetricsCollector::new())).expect("store");
    seed(&store, "docs", 2000, 16).await;
    let m = BackupManager::open(store.clone(), config.clone(), true)
        .await
        .expect("open");

    let first = take(&m, BackupType::Full).await;
    let q1 = first.collections[0]
        .queries
        .clone()
        .expect("queries recorded");
    assert_eq!((q1.queries, q1.k), (50, 10));
    let recorded: RecordedQueries = q1.load(&m.repo).await.expect("load");
    assert_eq!(recorded.records, 2000);
    // Encrypted: no recorded id, query or neighbour, is in the stored bytes.
    let stored = std::fs::read(path_of(&repo, &q1)).expect("stored object");
    let mut ids: Vec<&str> = recorded.queries.iter().map(|q| q.id.as_str()).collect();
    ids.extend(
        recorded
            .queries
            .iter()
            .flat_map(|q| q.neighbours.iter().map(|n| n.id.as_str())),
    );
    assert!(ids.len() >= 500);
    for id in ids {
        assert!(
            !stored.windows(id.len()).any(|w| w == id.as_bytes()),
            "{id} readable in the stored queries object"
        );
    }
    // Counted in the snapshot's size.
    let chunk_bytes: u64 = first.collections[0]
        .chunks
        .iter()
        .map(|c| c.stored_size + c.index_stored_size)
        .sum();
    assert_eq!(first.bytes_referenced, chunk_bytes + q1.stored_size);

    // Verified like the others: present (quick), read and decrypted (full).
    let chunks = first.collections[0].chunks.len() as u64;
    let id1 = first.snapshot_id.to_string();
    let quick = m
        .verify(&id1, false, &Progress::none())
        .await
        .expect("verify");
    assert_eq!(quick.objects_checked, 2 * chunks + 1);
    let full = m
        .verify(&id1, true, &Progress::none())
        .await
        .expect("verify --full");
    assert_eq!(full.objects_checked, 2 * chunks + 1);
    let original = stored.clone();
    let mut damaged = stored.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x40;
    std::fs::write(path_of(&repo, &q1), &damaged).expect("damage");
    match m.verify(&id1, true, &Progress::none()).await {
        Err(BackupError::BadObject { object, .. }) => {
            assert!(object.starts_with("queries/"), "{object}")
        }
        other => panic!("a damaged queries object passed verify --full: {other:?}"),
    }
    std::fs::remove_file(path_of(&repo, &q1)).expect("remove");
    match m.verify(&id1, false, &Progress::none()).await {
        Err(BackupError::MissingObject(object)) => {
            assert!(object.starts_with("queries/"), "{object}")
        }
        other => panic!("a missing queries object passed verify: {other:?}"),
    }
    std::fs::write(path_of(&repo, &q1), &original).expect("put back");

    // An incremental samples the whole collection, not only what changed.
    store
        .delete(
            &store.get_collection("docs").await.expect("docs").id,
            Some(&["r000001".to_string()]),
            None,
        )
        .await
        .expect("delete one");
    let second = take(&m, BackupType::Incremental).await;
    let q2 = second.collections[0]
        .queries
        .clone()
        .expect("queries recorded");
    assert_ne!(q2.id, q1.id, "a new sample for a new snapshot");
    let recorded2 = q2.load(&m.repo).await.expect("load");
    assert_eq!(recorded2.records, 1999);
    assert_eq!(recorded2.queries.len(), 50);
    let spread = recorded2
        .queries
        .iter()
        .filter_map(|q| q.id[1..].parse::<usize>().ok())
        .max()
        .expect("ids");
    assert!(
        spread > 1900,
        "the sample covers the whole collection: max {spread}"
    );

    // Nothing changed since: the next snapshot holds exactly the same
    // records, so it refers to the same answers instead of asking again.
    let third = take(&m, BackupType::Incremental).await;
    assert_eq!(third.collections[0].chunks, second.collections[0].chunks);
    assert_eq!(
        third.collections[0].queries.as_ref(),
        Some(&q2),
        "an unchanged collection keeps its parent's recorded queries"
    );
    // A snapshot taken without queries in between (`verify_queries = 0`)
    // does not make the next one ask again: the newest earlier snapshot
    // holding the same records lends its answers.
    let mut without = (*config).clone();
    without.backup.verify_queries = 0;
    let m0 = BackupManager::open(store.clone(), Arc::new(without), true)
        .await
        .expect("open");
    let fourth = take(&m0, BackupType::Incremental).await;
    assert_eq!(fourth.collections[0].queries, None);
    let fifth = take(&m, BackupType::Incremental).await;
    assert_eq!(
        fifth.collections[0].queries.as_ref(),
        Some(&q2),
        "the answers of the newest earlier snapshot with the same records"
    );

    // Prune keeps what a kept snapshot references and deletes the rest.
    assert_eq!(queries_files(&repo).len(), 2);
    let report = m.prune(false).await.expect("prune");
    let mut deleted = report.snapshots_deleted.clone();
    deleted.sort();
    let mut expected = vec![
        id1.clone(),
        second.snapshot_id.to_string(),
        third.snapshot_id.to_string(),
        fourth.snapshot_id.to_string(),
    ];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(queries_files(&repo), vec![path_of(&repo, &q2)]);
    let kept = fifth.snapshot_id.to_string();
    m.verify(&kept, true, &Progress::none())
        .await
        .expect("kept snapshot intact");
    // `backups check` (without the key) reads it too.
    assert!(m.repo.check_objects().await.expect("check") >= 1);
}

#[test]
fn with_verify_queries_zero_nothing_is_recorded_and_the_checks_say_so() {
    let chroma = ChromaServer::start();
    common::host::rt().block_on(seed_two(&chroma.base(), 300));
    let (dir, config) = setup(&chroma.base(), "verify_queries = 0");
    let id = full_backup(&config);
    assert!(queries_files(&dir.path().join("repo")).is_empty());
    let (code, v, _) = json_run(&config, &["backups", "show", &id]);
    assert_eq!(code, Some(0));
    for c in v["collections"].as_array().expect("collections") {
        assert!(c.get("queries").is_none(), "{c}");
    }
    let (code, v, err) = json_run(&config, &["backups", "verify", &id, "--recall"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        (v["checked"].as_u64(), &v["passed"]),
        (Some(0), &Value::Bool(true))
    );
    for c in v["collections"].as_array().expect("collections") {
        assert_eq!(c["status"], "not_recorded", "{c}");
    }
    let (code, out, _) = offline(&config, &["backups", "verify", &id, "--recall"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("recorded no queries: nothing to check"),
        "{out}"
    );
    // A restore says the index was not checked; --no-recall leaves it out.
    let (code, out, err) = offline(
        &config,
        &["restore", &id, "--collection", "docs", "--as", "docs-copy"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("not recorded") && out.contains("the index was not checked"),
        "{out}"
    );
    let (code, v, err) = json_run(
        &config,
        &[
            "restore",
            &id,
            "--collection",
            "notes",
            "--as",
            "notes-copy",
            "--no-recall",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(v["restored"][0].get("recall").is_none(), "{v}");
}
