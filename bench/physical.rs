//! Physical snapshots against the logical way, side by side in one run on a
//! real Chroma server (`chroma run`, found like the tests find it).
//!
//! `cargo bench --bench physical` (records: `PHYSICAL_BENCH_N`, default
//! 100000, × 384 dimensions).
//!
//! What it does, in order:
//! 1. seeds one l2 collection of N records (upserts of 1,000, documents and
//!    metadata) on a server whose persist directory the bench owns;
//! 2. takes a logical full backup and a physical snapshot (encrypted, each
//!    into its own fresh repository), timing each and recording the stored
//!    size and how long the database copy held Chroma's writer back;
//! 3. physical restore: restore into an empty directory (download,
//!    decrypt, write the files), start Chroma on it, and wait for the first
//!    query to answer; timed as a whole and per step;
//!    then the recall check (`backups verify LOGICAL_ID --recall` against
//!    the restored server: the logical snapshot's recorded queries), timed
//!    apart;
//! 4. logical restore of the same data (the full backup) into a new
//!    collection on a fresh server, until the restore's own verification
//!    ends, then a first query;
//! 5. stops the source server and times `tar czf` of its persist directory
//!    (the stopped-copy baseline), with the archive's size.
//!
//! Prints a markdown table.

#[path = "../tests/common/chroma.rs"]
#[allow(dead_code)]
mod chroma_server;
#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use chromaprod::backup::crypto::MasterKey;
use chromaprod::backup::recall::RecallOptions;
use chromaprod::backup::{
    BackupRequest, BackupType, PhysicalRestoreOptions, RestoreOptions, Trigger,
};
use chromaprod::chroma::{
    CreateCollection, Include, ProductionChromaStore, QueryRequest, RecordBatch,
};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use common::{dir_size, manager, COLLECTION};

const DIM: usize = 384;
const SEED_BATCH: usize = 1000;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn vector(i: usize) -> Vec<f32> {
    let mut s = splitmix(i as u64);
    (0..DIM)
        .map(|_| {
            s = splitmix(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn batch(range: std::ops::Range<usize>) -> RecordBatch {
    RecordBatch {
        ids: range.clone().map(|i| format!("id-{i:08}")).collect(),
        embeddings: Some(range.clone().map(vector).collect()),
        documents: Some(
            range
                .clone()
                .map(|i| Some(format!("document {i} {}", "lorem ipsum ".repeat(10))))
                .collect(),
        ),
        metadatas: Some(
            range
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("i".into(), json!(i));
                    m.insert("group".into(), Value::String(format!("g{}", i % 17)));
                    Some(m)
                })
                .collect(),
        ),
        uris: None,
    }
}

fn config(url: url::Url, repo: &Path, key: &Path, persist: Option<&Path>) -> Arc<Config> {
    let mut c = Config::default();
    c.chroma.endpoints = vec![url];
    c.chroma.persist_directory = persist.map(Path::to_path_buf);
    c.backup.storage_path = repo.display().to_string();
    c.backup.encrypt = true;
    c.backup.key_file = Some(key.to_path_buf());
    c.daemon.state_dir = repo.with_extension("state");
    Arc::new(c)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Queries `collection` on `store` with record 7's own vector; the time it
/// took (from `started`) and where record 7 ranked among the 10 answers (an
/// HNSW index is approximate: on uniformly random 384-dimensional vectors it
/// can miss even an exact match, which the recall check measures properly).
async fn first_query(store: &ProductionChromaStore, started: Instant) -> (f64, Option<usize>) {
    let col = store.get_collection(COLLECTION).await.expect("collection");
    let r = store
        .query(
            &col.id,
            &QueryRequest {
                query_embeddings: vec![vector(7)],
                n_results: 10,
                where_: None,
                include: vec![Include::Distances],
            },
        )
        .await
        .expect("query");
    let elapsed = started.elapsed().as_secs_f64();
    let answers = r.ids.first().cloned().unwrap_or_default();
    assert_eq!(answers.len(), 10, "the restored index answers");
    (
        elapsed,
        answers
            .iter()
            .position(|id| id == "id-00000007")
            .map(|p| p + 1),
    )
}

fn rank(r: Option<usize>) -> String {
    r.map_or("record 7 not among the 10 answers".into(), |p| {
        format!("record 7 answered at rank {p}")
    })
}

fn main() {
    let n: usize = std::env::var("PHYSICAL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let work = tempfile::tempdir().expect("tempdir");
    let key = work.path().join("backup-key");
    MasterKey::generate()
        .expect("key")
        .write_new_key_file(&key)
        .expect("key file");
    let persist = work.path().join("source");
    let mut source = chroma_server::ChromaServer::start_on_dir(persist.clone());
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Seed.
    let phys_cfg = config(
        source.url(),
        &work.path().join("repo-physical"),
        &key,
        Some(&persist),
    );
    let logi_cfg = config(source.url(), &work.path().join("repo-logical"), &key, None);
    let t = Instant::now();
    rt.block_on(async {
        let store = ProductionChromaStore::new(&logi_cfg, Arc::new(MetricsCollector::new()))
            .expect("store");
        let col = store
            .create_collection(&CreateCollection {
                name: COLLECTION.into(),
                metadata: None,
                configuration: Some(json!({"hnsw": {"space": "l2"}})),
                get_or_create: false,
            })
            .await
            .expect("create");
        for start in (0..n).step_by(SEED_BATCH) {
            store
                .upsert(&col.id, &batch(start..(start + SEED_BATCH).min(n)))
                .await
                .expect("seed");
        }
    });
    eprintln!("seeded {n} × {DIM} in {:.1} s", t.elapsed().as_secs_f64());
    let persist_bytes = dir_size(&persist);

    // 2. Backups.
    let progress = Progress::none();
    let cancel = CancellationToken::new();
    let (logical_id, logical_s, logical_bytes) = rt.block_on(async {
        let m = manager(&logi_cfg).await;
        let t = Instant::now();
        let man = m
            .create(
                BackupRequest {
                    backup_type: BackupType::Full,
                    collections: vec![],
                    trigger: Trigger::Command,
                },
                &progress,
                &cancel,
            )
            .await
            .expect("logical backup");
        (
            man.snapshot_id.to_string(),
            t.elapsed().as_secs_f64(),
            man.bytes_written,
        )
    });
    let (physical_id, physical_s, physical_bytes, stats) = rt.block_on(async {
        let m = manager(&phys_cfg).await;
        let t = Instant::now();
        let (man, stats) = m
            .create_physical(Trigger::Command, &progress, &cancel)
            .await
            .expect("physical backup");
        (
            man.snapshot_id.to_string(),
            t.elapsed().as_secs_f64(),
            man.bytes_written,
            stats,
        )
    });
    rows.push((
        "logical full backup".into(),
        format!("{logical_s:.2} s, {:.1} MB stored", mb(logical_bytes)),
    ));
    rows.push((
        "physical snapshot".into(),
        format!(
            "{physical_s:.2} s, {:.1} MB stored ({} files; writer held {} ms; {} copy round(s))",
            mb(physical_bytes),
            stats.files,
            stats.writer_blocked_ms,
            stats.attempts
        ),
    ));

    // 3. Physical restore, until the first query answers.
    let target = work.path().join("restored");
    let t = Instant::now();
    let restored = rt.block_on(async {
        let m = manager(&phys_cfg).await;
        m.restore_physical(
            &physical_id,
            &PhysicalRestoreOptions {
                data_dir: target.clone(),
                force: false,
            },
            &progress,
            &cancel,
        )
        .await
        .expect("physical restore")
    });
    let written_s = t.elapsed().as_secs_f64();
    let restored_server = chroma_server::ChromaServer::start_on_dir(target.clone());
    let started_s = t.elapsed().as_secs_f64();
    let store = ProductionChromaStore::new(
        &config(restored_server.url(), &work.path().join("x"), &key, None),
        Arc::new(MetricsCollector::new()),
    )
    .expect("store");
    let (physical_total, physical_rank) = rt.block_on(first_query(&store, t));
    let (recall_s, recall) = rt.block_on(async {
        let c = config(
            restored_server.url(),
            &work.path().join("repo-logical"),
            &key,
            None,
        );
        let m = manager(&c).await;
        let t = Instant::now();
        let r = m
            .verify_recall(&logical_id, &RecallOptions::default())
            .await
            .expect("recall check");
        let recall: Vec<String> = r
            .collections
            .iter()
            .map(|c| format!("{}: {:?}", c.collection, c.check.recall()))
            .collect();
        (t.elapsed().as_secs_f64(), recall.join(", "))
    });
    rows.push((
        "physical restore → first query".into(),
        format!(
            "{physical_total:.2} s (files written {written_s:.2} s, {:.1} MB; Chroma up {:.2} s; {})",
            mb(restored.bytes),
            started_s - written_s,
            rank(physical_rank)
        ),
    ));
    rows.push((
        "recall check on the restored server (the logical snapshot's 100 recorded queries, k = 10)".into(),
        format!(
            "{recall_s:.2} s (recall@10 {recall}); physical restore → first query + recall check: {:.2} s",
            physical_total + recall_s
        ),
    ));
    drop(restored_server);

    // 4. Logical restore of the same data into a fresh server.
    let fresh = chroma_server::ChromaServer::start();
    let fresh_cfg = config(fresh.url(), &work.path().join("repo-logical"), &key, None);
    let t = Instant::now();
    rt.block_on(async {
        let m = manager(&fresh_cfg).await;
        m.restore(&logical_id, &RestoreOptions::default(), &progress, &cancel)
            .await
            .expect("logical restore");
    });
    let store =
        ProductionChromaStore::new(&fresh_cfg, Arc::new(MetricsCollector::new())).expect("store");
    let (logical_total, logical_rank) = rt.block_on(first_query(&store, t));
    rows.push((
        "logical restore → first query".into(),
        format!(
            "{logical_total:.2} s ({:.0} records/s; {})",
            n as f64 / logical_total,
            rank(logical_rank)
        ),
    ));
    drop(fresh);

    // 5. tar czf of the stopped directory.
    source.stop();
    let tgz = work.path().join("source.tgz");
    let t = Instant::now();
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&persist)
        .arg(".")
        .status()
        .expect("tar")
        .success();
    assert!(ok, "tar czf failed");
    rows.push((
        "tar czf of the stopped directory".into(),
        format!(
            "{:.2} s, {:.1} MB (directory {:.1} MB)",
            t.elapsed().as_secs_f64(),
            mb(std::fs::metadata(&tgz).map(|m| m.len()).unwrap_or(0)),
            mb(persist_bytes)
        ),
    ));

    println!("\n### Physical vs logical, {n} × {DIM} records (encrypted repositories)\n");
    println!("| step | result |");
    println!("| --- | --- |");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    println!(
        "\nphysical restore is {:.1}× faster than the logical one to a first answered query",
        logical_total / physical_total.max(f64::EPSILON)
    );
    println!(
        "\nload average before {}, after {}",
        load_before.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
