//! `bench/migrate.rs`, with `MIGRATE_BENCH_RATES`: a rebuild to cosine
//! while a writer upserts at a fixed rate, with the change feed
//! (`chroma.persist_directory` set: catch-up passes read only what changed)
//! and without it (every pass compares both collections whole).
//!
//! The writer is open-loop: every `20 / rate` seconds it sends an upsert of
//! 20 existing records (the next 20 ids in turn, each a new version of its
//! document and vector), resolving the collection by name first as a client
//! that re-reads it would; at most [`MAX_IN_FLIGHT`] requests wait at once
//! (a tick that finds them all busy is skipped and counted). Chroma's
//! acknowledgements are recorded per id; after the rebuild (and its settle
//! step) every acknowledged id is read back from the collection now under
//! the name and must hold its last acknowledged version.
//!
//! Per mode the rates run in ascending order and stop at the first that does
//! not complete (refused after `max_passes`, or still running after
//! `MIGRATE_BENCH_PROBE_TIMEOUT_S`, default 600 s, when it is cancelled).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromaprod::chroma::{GetRequest, Include, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::migrate::MigrationManager;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{vector, COLLECTION};

/// Probes run so far in this process: each probe's versions start past
/// the last one's, so a later probe's writes always change the records (a
/// probe that wrote the same versions as an earlier one would upsert
/// identical records, which no comparison can see as a change).
static PROBES: AtomicU64 = AtomicU64::new(0);

/// Records per writer request (the batches of 20 issue 13 describes).
const WRITE_BATCH: usize = 20;
/// Writer requests waiting for Chroma at once, at most.
pub const MAX_IN_FLIGHT: u64 = 32;

/// The writer's requests in flight at most: [`MAX_IN_FLIGHT`], or
/// `MIGRATE_BENCH_WRITER_IN_FLIGHT`.
fn max_in_flight() -> u64 {
    std::env::var("MIGRATE_BENCH_WRITER_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_IN_FLIGHT)
        .max(1)
}

pub struct Probe {
    pub mode: &'static str,
    pub rate: u64,
    pub outcome: String,
    pub completed: bool,
    pub secs: f64,
    pub passes: String,
    pub acked: u64,
    pub achieved: f64,
    pub skipped: u64,
    pub failed_writes: u64,
    pub lost: Option<u64>,
}

/// A migrations directory holding one rebuild of [`COLLECTION`] to cosine
/// (default catch-up and settle settings).
pub fn migrations_dir(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("migrations-writer");
    std::fs::create_dir_all(&p).expect("mkdir");
    std::fs::write(
        p.join("0001_bench_cosine.toml"),
        format!("version = 1\nname = \"bench cosine under writes\"\n[[up]]\nop = \"rebuild\"\ncollection = \"{COLLECTION}\"\nconfiguration = {{ hnsw = {{ space = \"cosine\" }} }}\nmin_overlap = 0.7\n"),
    )
    .expect("migration");
    p
}

/// The writer's client: a pool as wide as its requests in flight (the
/// default 10 slots, waited for at most 5 s, would fail the writer's own
/// requests rather than Chroma's).
pub fn writer_store(base: &Config) -> ProductionChromaStore {
    let mut c = base.clone();
    c.pool.max_connections = MAX_IN_FLIGHT as usize;
    ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new())).expect("store")
}

/// A migration manager, and the metrics its store counts requests in.
pub fn manager(
    base: &Config,
    migrations: &Path,
    persist: Option<&Path>,
) -> (MigrationManager, Arc<MetricsCollector>) {
    let mut c = base.clone();
    c.migrations.path = migrations.to_path_buf();
    c.chroma.persist_directory = persist.map(Path::to_path_buf);
    let c = Arc::new(c);
    let metrics = Arc::new(MetricsCollector::new());
    let store = ProductionChromaStore::new(&c, metrics.clone()).expect("store");
    (MigrationManager::new(store, c, metrics.clone()), metrics)
}

/// The rebuild's requests to Chroma since `before` (per operation: count
/// and seconds, from `chromaprod_chroma_request_duration_seconds`), as one
/// line; `before` becomes now.
fn requests_since(metrics: &MetricsCollector, before: &mut HashMap<String, f64>) -> String {
    let mut now = HashMap::new();
    for line in metrics.encode().lines() {
        let Some(rest) = line.strip_prefix("chromaprod_chroma_request_duration_seconds_") else {
            continue;
        };
        let (key, value) = rest.rsplit_once(' ').unwrap_or((rest, "0"));
        if key.starts_with("sum") || key.starts_with("count") {
            now.insert(key.to_string(), value.parse::<f64>().unwrap_or(0.0));
        }
    }
    let mut parts: Vec<String> = now
        .iter()
        .filter_map(|(key, sum)| {
            let op = key.strip_prefix("sum")?;
            let count = now.get(&format!("count{op}")).copied().unwrap_or(0.0)
                - before.get(&format!("count{op}")).copied().unwrap_or(0.0);
            let secs = sum - before.get(key).copied().unwrap_or(0.0);
            (count > 0.0).then(|| format!("{op}: {count:.0} requests, {secs:.1} s"))
        })
        .collect();
    parts.sort();
    *before = now;
    parts.join("; ")
}

#[derive(Default)]
struct Writer {
    acked: Mutex<HashMap<String, u64>>,
    acked_records: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicU64,
    stop: AtomicBool,
    /// Each acknowledged request's time, in ms.
    latency_ms: Mutex<Vec<f64>>,
}

impl Writer {
    /// Starts writing at `rate` records/s until `stop` (see the module).
    fn start(
        self: &Arc<Self>,
        store: &ProductionChromaStore,
        n: usize,
        rate: u64,
    ) -> tokio::task::JoinHandle<()> {
        let salt = PROBES.fetch_add(1, Ordering::Relaxed) * 1_000_000_000;
        let period = Duration::from_secs_f64(WRITE_BATCH as f64 / rate as f64);
        let cap = max_in_flight();
        let (w, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut tasks = tokio::task::JoinSet::new();
            let mut k = 0u64;
            while !w.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                while tasks.try_join_next().is_some() {}
                if w.in_flight.load(Ordering::Relaxed) >= cap {
                    w.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                w.in_flight.fetch_add(1, Ordering::Relaxed);
                let (w2, store2) = (w.clone(), store.clone());
                let kk = k;
                k += 1;
                tasks.spawn(async move {
                    write_one(&store2, &w2, n, kk, salt).await;
                    w2.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    }

    /// The writer's requests in flight now, and its acknowledged requests
    /// since the `seen`-th (how many, their p50 time), as one line; `seen`
    /// becomes now.
    fn since(&self, seen: &mut usize) -> String {
        let mut new = self.latency_ms.lock().expect("lock")[*seen..].to_vec();
        *seen += new.len();
        new.sort_by(f64::total_cmp);
        let p50 = percentile(&new, 0.50).unwrap_or(0.0);
        format!(
            "{} requests in flight, {} acknowledged since (p50 {p50:.0} ms), {} ticks skipped in all",
            self.in_flight.load(Ordering::Relaxed),
            new.len(),
            self.skipped.load(Ordering::Relaxed)
        )
    }
}

/// The `p` quantile of `sorted` (ascending), or `None` when it is empty.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied()
}

/// The writer alone at one rate: what Chroma acknowledges of it with no
/// rebuild running, the ceiling any rebuild under it works below.
pub struct Alone {
    pub rate: u64,
    pub secs: f64,
    pub acked: u64,
    pub achieved: f64,
    pub skipped: u64,
    pub failed_writes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs the writer at `rate` for `secs` seconds on the collection as it is.
pub async fn alone(wstore: &ProductionChromaStore, n: usize, rate: u64, secs: u64) -> Alone {
    let w = Arc::new(Writer::default());
    let t = Instant::now();
    let writer = w.start(wstore, n, rate);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    w.stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let secs = t.elapsed().as_secs_f64();
    let acked = w.acked_records.load(Ordering::Relaxed);
    let mut lat = w.latency_ms.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&lat, p).unwrap_or(f64::NAN);
    let out = Alone {
        rate,
        secs,
        acked,
        achieved: acked as f64 / secs,
        skipped: w.skipped.load(Ordering::Relaxed),
        failed_writes: w.failed.load(Ordering::Relaxed),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    };
    eprintln!(
        "writer alone at {rate} rec/s: acked {acked} in {secs:.1} s ({:.0} rec/s, {} ticks skipped, {} failed), request p50 {:.0} ms, p99 {:.0} ms",
        out.achieved, out.skipped, out.failed_writes, out.p50_ms, out.p99_ms
    );
    out
}

pub fn print_alone(runs: &[Alone], n: usize) {
    println!("\n### The writer alone on {n} records, no rebuild (upserts of {WRITE_BATCH} existing records)\n");
    println!("| target rate | ran | acknowledged | request p50 / p99 |");
    println!("| ---: | ---: | --- | --- |");
    for a in runs {
        println!(
            "| {} rec/s | {:.1} s | {} records = {:.0} rec/s ({} ticks skipped at {} in flight, {} failed requests) | {:.0} / {:.0} ms |",
            a.rate, a.secs, a.acked, a.achieved, a.skipped, max_in_flight(), a.failed_writes, a.p50_ms, a.p99_ms
        );
    }
}

async fn write_one(store: &ProductionChromaStore, w: &Writer, n: usize, k: u64, salt: u64) {
    let first = (k as usize * WRITE_BATCH) % n;
    let idx: Vec<usize> = (first..first + WRITE_BATCH).map(|i| i % n).collect();
    let version = salt + k + 1;
    let ids: Vec<String> = idx.iter().map(|i| format!("r{i:07}")).collect();
    let b = RecordBatch {
        embeddings: Some(
            idx.iter()
                .map(|&i| vector(i.wrapping_add(7_777_777usize.wrapping_mul(version as usize))))
                .collect(),
        ),
        documents: Some(
            idx.iter()
                .map(|i| Some(format!("write {version} of {i}")))
                .collect(),
        ),
        metadatas: Some(
            idx.iter()
                .map(|&i| json!({"i": i, "version": version}).as_object().cloned())
                .collect(),
        ),
        uris: None,
        ids,
    };
    // Between the swap's two renames the name briefly resolves to
    // nothing: a client retries on its next tick.
    let t = Instant::now();
    let r = match store.get_collection(COLLECTION).await {
        Ok(col) => store.upsert(&col.id, &b).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = &r {
        if w.failed.load(Ordering::Relaxed) < 3 {
            eprintln!("writer request failed: {e}");
        }
    }
    let ok = r.is_ok();
    if ok {
        w.latency_ms
            .lock()
            .expect("lock")
            .push(t.elapsed().as_secs_f64() * 1000.0);
        let mut acked = w.acked.lock().expect("lock");
        for id in &b.ids {
            acked.insert(id.clone(), version);
        }
        w.acked_records
            .fetch_add(b.ids.len() as u64, Ordering::Relaxed);
    } else {
        w.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One rebuild under a writer at `rate` records/s.
pub async fn probe(
    store: &ProductionChromaStore,
    wstore: &ProductionChromaStore,
    (manager, metrics): &(MigrationManager, Arc<MetricsCollector>),
    mode: &'static str,
    n: usize,
    rate: u64,
    timeout: Duration,
) -> Probe {
    let w = Arc::new(Writer::default());
    let writer = w.start(wstore, n, rate);
    let cancel = CancellationToken::new();
    let timer = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            cancel.cancel();
        })
    };
    let (p, mut rx) = Progress::detached();
    let t = Instant::now();
    let metrics = metrics.clone();
    let w_events = w.clone();
    let events = tokio::spawn(async move {
        let mut last = Instant::now();
        let mut requests = HashMap::new();
        let mut acks_seen = 0;
        while let Ok(ev) = rx.recv().await {
            if ev["step"] != "copy" || last.elapsed() > Duration::from_secs(15) {
                eprintln!("  {:.1} s: {ev}", t.elapsed().as_secs_f64());
                last = Instant::now();
            }
            if ev["step"] == "catch_up" || ev["step"] == "verify" {
                // Where the step's time went: the rebuild's requests since
                // the step before (the copy, for the first pass).
                eprintln!("    requests: {}", requests_since(&metrics, &mut requests));
                eprintln!("    writer: {}", w_events.since(&mut acks_seen));
            }
        }
    });
    let result = manager.up(None, &p, &cancel).await;
    drop(p);
    events.abort();
    let secs = t.elapsed().as_secs_f64();
    timer.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let writing = t.elapsed().as_secs_f64();
    let acked_records = w.acked_records.load(Ordering::Relaxed);
    let mut out = Probe {
        mode,
        rate,
        outcome: String::new(),
        completed: false,
        secs,
        passes: "—".into(),
        acked: acked_records,
        achieved: acked_records as f64 / writing,
        skipped: w.skipped.load(Ordering::Relaxed),
        failed_writes: w.failed.load(Ordering::Relaxed),
        lost: None,
    };
    match result {
        Ok(r) => {
            let r: Value = serde_json::to_value(r).expect("report");
            let op = &r["applied"][0]["operations"][0];
            out.completed = true;
            out.outcome = "completed".into();
            out.passes = format!(
                "{} ({} by change feed; {} records caught up, {} after the swap)",
                op["catch_up_passes"],
                op["catch_up_by_change_feed"],
                op["caught_up_records"],
                op["copied_after_swap"]
            );
            let acked = w.acked.lock().expect("lock").clone();
            out.lost = Some(lost(store, &acked).await);
            let down = Progress::none();
            manager
                .down(0, &down, &CancellationToken::new())
                .await
                .expect("down");
            store
                .delete_collection(&format!("{COLLECTION}.pre-v1"))
                .await
                .expect("drop the copy");
            manager.stamp(0, &down).await.expect("stamp 0");
        }
        Err(e) => {
            out.outcome = if cancel.is_cancelled() {
                format!("not completed: cancelled after {} s", timeout.as_secs())
            } else {
                format!("not completed: {e}")
            };
            let p = Progress::none();
            manager.repair(&p).await.expect("repair");
            let _ = store
                .delete_collection(&format!("{COLLECTION}.rebuild-v1"))
                .await;
        }
    }
    eprintln!(
        "{mode} at {rate} rec/s: {} in {secs:.1} s, passes {}, writer acked {acked_records} ({:.0} rec/s, {} ticks skipped, {} failed), lost {:?}",
        out.outcome, out.passes, out.achieved, out.skipped, out.failed_writes, out.lost
    );
    out
}

/// Acknowledged ids whose last acknowledged version the collection under
/// the name does not hold.
async fn lost(store: &ProductionChromaStore, acked: &HashMap<String, u64>) -> u64 {
    let col = store.get_collection(COLLECTION).await.expect("collection");
    let ids: Vec<&String> = acked.keys().collect();
    let mut lost = 0;
    for part in ids.chunks(500) {
        let got = store
            .get_records(
                &col.id,
                &GetRequest::ids(
                    part.iter().map(|s| (*s).clone()).collect(),
                    &[Include::Documents],
                ),
            )
            .await
            .expect("read back");
        let docs = got.documents.unwrap_or_default();
        let have: HashMap<&str, Option<&String>> = got
            .ids
            .iter()
            .map(String::as_str)
            .zip(docs.iter().map(Option::as_ref))
            .collect();
        for id in part {
            let i = id.trim_start_matches('r').parse::<usize>().unwrap_or(0);
            let want = format!("write {} of {i}", acked[*id]);
            if have.get(id.as_str()).copied().flatten() != Some(&want) {
                lost += 1;
            }
        }
    }
    lost
}

pub fn print(probes: &[Probe], n: usize) {
    println!(
        "\n### Rebuild of {n} records to cosine under a steady writer (upserts of {WRITE_BATCH})\n"
    );
    println!("| mode | target rate | outcome | rebuild time | catch-up passes | writer acknowledged | acknowledged writes lost |");
    println!("| --- | ---: | --- | ---: | --- | --- | ---: |");
    for p in probes {
        println!(
            "| {} | {} rec/s | {} | {:.1} s | {} | {} records = {:.0} rec/s ({} ticks skipped at {} in flight, {} failed requests) | {} |",
            p.mode,
            p.rate,
            p.outcome,
            p.secs,
            p.passes,
            p.acked,
            p.achieved,
            p.skipped,
            max_in_flight(),
            p.failed_writes,
            p.lost.map_or("—".into(), |l| l.to_string())
        );
    }
    for mode in ["after (change feed)", "before (no change feed)"] {
        let best = probes
            .iter()
            .filter(|p| p.mode == mode && p.completed)
            .map(|p| p.rate)
            .max();
        println!(
            "\n{mode}: highest completing target rate {}",
            best.map_or("none of those probed".into(), |r| format!("{r} rec/s"))
        );
    }
}
