//! Rebuild throughput: `MigrationManager` applying a `rebuild` to another
//! metric (copy, catch up, verify, swap) against the raw way of copying the
//! same collection through Chroma's HTTP API (list ids, get by id, upsert
//! into a new collection), side by side in one run on a real Chroma server.
//!
//! `cargo bench --bench migrate` (records: `MIGRATE_BENCH_N`, default
//! 20000; rounds: `MIGRATE_BENCH_ROUNDS`, default 3; the order alternates
//! each round so both see the same load).
//!
//! Each round: the raw copy into a new cosine collection (then deleted);
//! `migrate up` of a one-operation rebuild to cosine (restore point off,
//! `settle_ms = 0`), then `migrate down`, the rebuilt copy deleted and the
//! history stamped back to 0. Prints a markdown table.
//!
//! The vectors are normalised, so l2 and cosine rank alike; the neighbour
//! overlap the rebuild reports then measures how differently two HNSW
//! indexes approximate the same ranking. Uniformly random 384-dimensional
//! vectors are the hardest case for HNSW (every point almost equally far),
//! so `min_overlap` is 0.7 here rather than the default 0.9.
//!
//! With `MIGRATE_BENCH_RATES` (records/s, comma-separated, e.g.
//! `100,300,500`), after the rounds (`MIGRATE_BENCH_ROUNDS=0` skips them):
//! rebuilds under a steady writer at each rate, with the change feed and
//! without (`MIGRATE_BENCH_RATES_BEFORE` sets the second list; `none`
//! skips either mode), see
//! `bench/migrate_writer.rs`. With `MIGRATE_BENCH_ALONE_RATES`, first the
//! same writer alone (no rebuild) for `MIGRATE_BENCH_ALONE_S` seconds
//! (default 60) at each rate: what Chroma itself acknowledges of it.
//! `MIGRATE_BENCH_WRITER_IN_FLIGHT` caps the writer's requests in flight
//! (default 32).

#[path = "../tests/common/chroma.rs"]
#[allow(dead_code)]
mod chroma_server;
#[path = "migrate_writer.rs"]
mod writer;

use std::sync::Arc;
use std::time::Instant;

use chromaprod::backup::source::{list_ids, to_batch, to_records, FETCH_BATCH};
use chromaprod::chroma::{
    CreateCollection, GetRequest, Include, ProductionChromaStore, RecordBatch,
};
use chromaprod::config::Config;
use chromaprod::migrate::MigrationManager;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const DIM: usize = 384;
const COLLECTION: &str = "bench";
const LANGS: [&str; 3] = ["en", "de", "fr"];

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A normalised pseudo-random vector (as embedding models produce).
fn vector(i: usize) -> Vec<f32> {
    let mut s = splitmix(i as u64);
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            s = splitmix(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn batch(range: std::ops::Range<usize>) -> RecordBatch {
    RecordBatch {
        ids: range.clone().map(|i| format!("r{i:07}")).collect(),
        embeddings: Some(range.clone().map(vector).collect()),
        documents: Some(
            range
                .clone()
                .map(|i| Some(format!("document {i}: {}", "lorem ipsum dolor ".repeat(6 + i % 5))))
                .collect(),
        ),
        metadatas: Some(
            range
                .map(|i| {
                    Some(
                        json!({"i": i, "lang": LANGS[i % 3], "score": i as f64 / 7.0, "ok": i % 2 == 0})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        ),
        uris: None,
    }
}

/// The raw way: list ids, then get by id and upsert into a new collection,
/// batch after batch.
async fn raw_copy(store: &ProductionChromaStore, source_id: &str) -> usize {
    let target = store
        .create_collection(&CreateCollection {
            name: "bench-rawcopy".into(),
            metadata: None,
            configuration: Some(json!({"hnsw": {"space": "cosine"}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let ids = list_ids(store, source_id).await.expect("ids");
    let mut n = 0;
    for part in ids.chunks(FETCH_BATCH) {
        let got = store
            .get_records(source_id, &GetRequest::ids(part.to_vec(), &Include::RECORD))
            .await
            .expect("get");
        let (b, _) = to_batch(to_records(got));
        n += b.len();
        store.upsert(&target.id, &b).await.expect("upsert");
    }
    store
        .delete_collection("bench-rawcopy")
        .await
        .expect("drop");
    n
}

fn main() {
    let n: usize = std::env::var("MIGRATE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("MIGRATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let server = chroma_server::ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Config::default();
    c.chroma.endpoints = vec![server.url()];
    c.migrations.path = dir.path().join("migrations");
    c.migrations.restore_point = false;
    std::fs::create_dir_all(&c.migrations.path).expect("mkdir");
    std::fs::write(
        c.migrations.path.join("0001_bench_cosine.toml"),
        format!("version = 1\nname = \"bench cosine\"\n[[up]]\nop = \"rebuild\"\ncollection = \"{COLLECTION}\"\nconfiguration = {{ hnsw = {{ space = \"cosine\" }} }}\nsettle_ms = 0\nmin_overlap = 0.7\n"),
    )
    .expect("migration");
    let config = Arc::new(c);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let metrics = Arc::new(MetricsCollector::new());
    let store = ProductionChromaStore::new(&config, metrics.clone()).expect("store");
    let manager = MigrationManager::new(store.clone(), config.clone(), metrics);

    rt.block_on(async {
        let col = store
            .create_collection(&CreateCollection {
                name: COLLECTION.into(),
                metadata: None,
                configuration: Some(json!({"hnsw": {"space": "l2"}})),
                get_or_create: false,
            })
            .await
            .expect("create");
        let t = Instant::now();
        for start in (0..n).step_by(1000) {
            store.upsert(&col.id, &batch(start..(start + 1000).min(n))).await.expect("seed");
        }
        eprintln!("seeded {n} × {DIM} in {:.1} s", t.elapsed().as_secs_f64());

        let mut raw = Vec::new();
        let mut rebuild = Vec::new();
        let mut overlap = 0.0;
        for round in 0..rounds {
            let source = store.get_collection(COLLECTION).await.expect("source");
            let run_raw = async {
                let t = Instant::now();
                let copied = raw_copy(&store, &source.id).await;
                assert_eq!(copied, n);
                t.elapsed().as_secs_f64()
            };
            let run_rebuild = async {
                let (p, _rx) = Progress::detached();
                let t = Instant::now();
                let r = manager.up(None, &p, &CancellationToken::new()).await.expect("rebuild");
                let r: Value = serde_json::to_value(r).expect("report");
                let secs = t.elapsed().as_secs_f64();
                let op = &r["applied"][0]["operations"][0];
                assert_eq!(op["records"], n as u64, "{r}");
                let o = op["overlap"].as_f64().unwrap_or(0.0);
                manager.down(0, &p, &CancellationToken::new()).await.expect("down");
                store.delete_collection(&format!("{COLLECTION}.pre-v1")).await.expect("drop copy");
                manager.stamp(0, &p).await.expect("stamp 0");
                (secs, o)
            };
            if round % 2 == 0 {
                raw.push(run_raw.await);
                let (s, o) = run_rebuild.await;
                rebuild.push(s);
                overlap = o;
            } else {
                let (s, o) = run_rebuild.await;
                rebuild.push(s);
                overlap = o;
                raw.push(run_raw.await);
            }
            eprintln!("round {round}: raw copy {:.2} s, rebuild {:.2} s", raw[round], rebuild[round]);
        }
        if rounds > 0 {
        let (r, b): (f64, f64) = (raw.iter().sum(), rebuild.iter().sum());
        println!("| round | chromaprod rebuild | raw copy | ratio (raw ÷ chromaprod) |");
        println!("| --- | --- | --- | --- |");
        for (i, (x, y)) in rebuild.iter().zip(&raw).enumerate() {
            println!("| {} | {x:.2} s | {y:.2} s | {:.2}× |", i + 1, y / x);
        }
        println!(
            "| all {rounds} ({n} × {DIM}, l2 → cosine) | {b:.2} s ({:.0} records/s) | {r:.2} s ({:.0} records/s) | **{:.2}×** |",
            n as f64 * rounds as f64 / b,
            n as f64 * rounds as f64 / r,
            r / b
        );
        println!("\nneighbour overlap reported by the rebuild: {overlap:.3}");
        }

        // Rebuilds under a steady writer.
        let rates = |var: &str| -> Vec<u64> {
            std::env::var(var)
                .ok()
                .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
                .unwrap_or_default()
        };
        // The writer alone first: Chroma's own ceiling for it.
        let alone = rates("MIGRATE_BENCH_ALONE_RATES");
        if !alone.is_empty() {
            let secs = std::env::var("MIGRATE_BENCH_ALONE_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(60);
            let wstore = writer::writer_store(&config);
            let mut runs = Vec::new();
            for &rate in &alone {
                runs.push(writer::alone(&wstore, n, rate, secs).await);
            }
            writer::print_alone(&runs, n);
        }
        // `none` skips a mode; the before list defaults to the after list.
        let after = match std::env::var("MIGRATE_BENCH_RATES").as_deref() {
            Ok("none") => Vec::new(),
            _ => rates("MIGRATE_BENCH_RATES"),
        };
        let before = match std::env::var("MIGRATE_BENCH_RATES_BEFORE").as_deref() {
            Ok("none") => Vec::new(),
            _ => Some(rates("MIGRATE_BENCH_RATES_BEFORE"))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| after.clone()),
        };
        if after.is_empty() && before.is_empty() {
            return;
        }
        let timeout = std::time::Duration::from_secs(
            std::env::var("MIGRATE_BENCH_PROBE_TIMEOUT_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(600),
        );
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let t = Instant::now();
        let dir = writer::migrations_dir(dir.path());
        let persist = server.data_dir();
        let wstore = writer::writer_store(&config);
        let mut probes = Vec::new();
        for (mode, list, persist) in [
            ("after (change feed)", &after, Some(persist.as_path())),
            ("before (no change feed)", &before, None),
        ] {
            let m = writer::manager(&config, &dir, persist);
            for &rate in list {
                let p = writer::probe(&store, &wstore, &m, mode, n, rate, timeout).await;
                let done = p.completed && p.lost == Some(0);
                probes.push(p);
                if !done {
                    break;
                }
            }
        }
        writer::print(&probes, n);
        println!(
            "\n{:.0} s in all; load average before {}, after {}",
            t.elapsed().as_secs_f64(),
            load_before.trim(),
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
    });
}
