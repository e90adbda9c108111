//! Cost proportional to the change: change-aware incrementals and delta
//! restore on a local Chroma (`chroma.persist_directory` set, so backups
//! read Chroma's own sequence numbers from its SQLite file), against the
//! full backup, the full restore and the old way (the same operation with
//! `persist_directory` unset, which reads every record), side by side in
//! one run on a real Chroma server whose persist directory the bench owns.
//!
//! `cargo bench --bench changes` (records: `CHANGES_BENCH_N`, default
//! 100000, × 384; rounds: `CHANGES_BENCH_ROUNDS`, default 3; add requests
//! per latency block: `CHANGES_BENCH_ADDS`, default 150, two blocks per
//! load). `CHANGES_BENCH_LATENCY_ONLY=1` seeds, takes one full backup and
//! runs step 6 alone.
//!
//! What it does, in order:
//! 1. seeds one l2 collection (upserts of 1,000); at N/4, N/2 and N it takes
//!    a full backup (persist directory set), updates 1 % of the records and
//!    runs a change-aware incremental in a child process (this binary
//!    re-executed) whose peak RSS (`VmHWM`) it reads, with glibc's defaults
//!    and with the unit's `GLIBC_TUNABLES` (another 1 % updated before it);
//! 2. alternates, rotating the order each round: a raw paged read (`get`,
//!    limit/offset 1,000, all fields), a full backup with the persist
//!    directory set (repository A: ids listed from SQLite), and one without
//!    (repository B: ids listed over HTTP);
//! 3. incrementals with nothing changed: change-aware on A, the old way on B;
//! 4. each round updates 1 % of the records (a different 1 %), then takes a
//!    change-aware incremental on A and an old-way one on B;
//! 5. deletes 1 % and changes 1 % of the records, then a delta restore of
//!    A's latest snapshot (change-aware: its restore point is an
//!    incremental, its compare reads the change feed), timed per phase
//!    from its progress events; the same damage again and the old way's
//!    delta restore of B's latest snapshot (same content); then a full
//!    restore of A's snapshot into a new collection (`--as`, with its
//!    recall check, as the CLI runs by default) and the recall check alone;
//! 6. Chroma's `add` latency (10 records a request, one request at a time):
//!    blocks alone and blocks under each load in rotation (change-aware
//!    incrementals of the same collection back to back, with and without
//!    recall queries, at the unit's `Nice=10` and `SCHED_BATCH` and at nice 0; an
//!    incremental's SQLite reads alone in a loop; the whole listing alone
//!    in a loop).
//!
//! Prints a markdown table, with the load average before and after.

#[path = "../tests/common/chroma.rs"]
#[allow(dead_code)]
mod chroma_server;
#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::backup::recall::RecallOptions;
use chromaprod::backup::{
    BackupManager, BackupType, DeltaRestored, Manifest, RestoreMode, RestoreOptions, RestoreOutcome,
};
use chromaprod::chroma::{CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use common::{
    batch, best, loadavg, manager, mb, median, percentile, raw_read, report_peak, request,
    run_child, seed_range, unit_malloc_tunables, vector, COLLECTION, DIM, SEED_BATCH,
};

const FULL_COPY: &str = "bench-full-restore";
/// The unit's `Nice=` (systemd/chromaprod.service).
const UNIT_NICE: i32 = 10;

/// The calling thread's id and the fields of its `/proc/thread-self/stat`
/// after `(comm) ` (field 3 onwards: field N is at N − 3).
fn this_thread() -> (String, Vec<String>) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    let tid = stat.split(' ').next().expect("tid").to_string();
    let after_comm = stat.rsplit_once(") ").expect("stat").1;
    (tid, after_comm.split(' ').map(str::to_string).collect())
}

/// Runs `program args… TID` on the calling thread, then checks its stat
/// field `field` (1-based, as in proc(5)) reads `want`.
fn set_this_thread(program: &str, args: &[&str], field: usize, want: &str) {
    let (tid, _) = this_thread();
    let ok = std::process::Command::new(program)
        .args(args)
        .arg(&tid)
        .stdout(std::process::Stdio::null())
        .status()
        .expect(program)
        .success();
    assert!(ok, "{program} {args:?} {tid}");
    assert_eq!(
        this_thread().1.get(field - 3).map(String::as_str),
        Some(want),
        "field {field} of {tid}'s stat after {program}"
    );
}

/// Sets the calling thread's nice value (Linux keeps it per thread, and
/// threads started afterwards inherit it) with `renice`, which on Linux
/// takes a thread id for `-p`.
fn renice_this_thread(nice: i32) {
    let n = nice.to_string();
    // Field 19 of stat: nice.
    set_this_thread("renice", &["-n", &n, "-p"], 19, &n);
}

/// Puts the calling thread under `SCHED_BATCH` (what the unit's
/// `CPUSchedulingPolicy=batch` gives every thread of the daemon) with
/// `chrt`, which on Linux takes a thread id for `-p`; threads started
/// afterwards inherit it.
fn batch_this_thread() {
    // Field 41 of stat, `policy`: 3 is SCHED_BATCH.
    set_this_thread("chrt", &["--batch", "-p", "0"], 41, "3");
}

/// Records per `add` in the latency step.
const ADD_BATCH: usize = 10;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// chromaprod's configuration for a repository; `persist`: the server's
/// persist directory (the change feed), or `None` (the old way).
fn config(url: &url::Url, repo: &Path, persist: Option<&Path>) -> Arc<Config> {
    let mut c = Config::default();
    c.chroma.endpoints = vec![url.clone()];
    c.chroma.persist_directory = persist.map(Path::to_path_buf);
    c.backup.storage_path = repo.display().to_string();
    c.backup.encrypt = false;
    c.daemon.state_dir = repo.with_extension("state");
    Arc::new(c)
}

/// One backup; its time (s) and manifest.
async fn timed_backup(m: &BackupManager, backup_type: BackupType) -> (f64, Manifest) {
    let t = Instant::now();
    let man = m
        .create(
            request(backup_type),
            &Progress::none(),
            &CancellationToken::new(),
        )
        .await
        .expect("backup");
    (t.elapsed().as_secs_f64(), man)
}

/// Upserts records `ids` as `version`.
async fn rewrite(store: &ProductionChromaStore, coll: &str, ids: &[usize], version: u64) {
    rewrite_in(store, coll, ids, version, SEED_BATCH).await;
}

/// [`rewrite`] in requests of `per` records.
async fn rewrite_in(
    store: &ProductionChromaStore,
    coll: &str,
    ids: &[usize],
    version: u64,
    per: usize,
) {
    for part in ids.chunks(per) {
        let mut b = RecordBatch {
            ids: vec![],
            embeddings: Some(vec![]),
            documents: Some(vec![]),
            metadatas: Some(vec![]),
            uris: None,
        };
        for &i in part {
            let one = batch(i..i + 1, |_| version);
            b.ids.extend(one.ids);
            b.embeddings
                .as_mut()
                .expect("e")
                .extend(one.embeddings.expect("e"));
            b.documents
                .as_mut()
                .expect("d")
                .extend(one.documents.expect("d"));
            b.metadatas
                .as_mut()
                .expect("m")
                .extend(one.metadatas.expect("m"));
        }
        store.upsert(coll, &b).await.expect("update");
    }
}

/// Every 100th record of `0..n`, starting at `offset`.
fn one_percent(n: usize, offset: usize) -> Vec<usize> {
    (offset..n).step_by(100).collect()
}

// ---------------------------------------------------------------- child

/// Child mode: a change-aware incremental of [`COLLECTION`] into the
/// repository at `CHANGES_BENCH_REPO`, on the server at `CHANGES_BENCH_URL`
/// whose persist directory is `CHANGES_BENCH_PERSIST`.
fn child() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let url = url::Url::parse(&var("CHANGES_BENCH_URL")).expect("url");
    let repo = PathBuf::from(var("CHANGES_BENCH_REPO"));
    let persist = PathBuf::from(var("CHANGES_BENCH_PERSIST"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (ms, bytes, fallback) = rt.block_on(async move {
        let m = manager(&config(&url, &repo, Some(&persist))).await;
        let (s, man) = timed_backup(&m, BackupType::Incremental).await;
        (
            (s * 1000.0) as u128,
            man.bytes_written,
            m.store().metrics().change_feed_reads().fallback,
        )
    });
    assert_eq!(fallback, 0, "the child's incremental read the change feed");
    report_peak(ms, bytes);
}

// ---------------------------------------------------------------- delta

/// What a delta restore took: total and phases (s), and its counts.
struct DeltaRun {
    total: f64,
    restore_point: f64,
    compare: f64,
    write: f64,
    counts: DeltaRestored,
}

async fn delta_restore(m: &BackupManager, snapshot: &str) -> DeltaRun {
    let (progress, mut rx) = Progress::detached();
    // When the restore point's backup ended (its `done` event) and the
    // write phase began (the first `delta_write` event).
    let watcher = tokio::spawn(async move {
        let (mut done, mut write) = (None, None);
        loop {
            match rx.recv().await {
                Ok(ev) if ev["phase"] == "done" && done.is_none() => done = Some(Instant::now()),
                Ok(ev) if ev["phase"] == "delta_write" && write.is_none() => {
                    write = Some(Instant::now());
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return (done, write),
            }
        }
    });
    let opts = RestoreOptions {
        collections: vec![COLLECTION.into()],
        mode: RestoreMode::Delta,
        ..RestoreOptions::default()
    };
    let t = Instant::now();
    let outcome = m
        .restore(snapshot, &opts, &progress, &CancellationToken::new())
        .await
        .expect("delta restore");
    let end = Instant::now();
    drop(progress);
    let (done, write) = watcher.await.expect("watcher");
    let (done, write) = (done.expect("restore point"), write.expect("write phase"));
    let RestoreOutcome::Delta { mut delta, .. } = outcome else {
        panic!("not a delta outcome: {outcome:?}");
    };
    DeltaRun {
        total: (end - t).as_secs_f64(),
        restore_point: (done - t).as_secs_f64(),
        compare: (write - done).as_secs_f64(),
        write: (end - write).as_secs_f64(),
        counts: delta.remove(0),
    }
}

/// Deletes the records `deleted` and rewrites `changed` as version 9.
async fn damage(store: &ProductionChromaStore, coll: &str, deleted: &[usize], changed: &[usize]) {
    let ids: Vec<String> = deleted.iter().map(|i| format!("rec-{i:07}")).collect();
    for part in ids.chunks(SEED_BATCH) {
        store.delete(coll, Some(part), None).await.expect("delete");
    }
    rewrite(store, coll, changed, 9).await;
}

// ---------------------------------------------------------------- main

struct Row {
    what: String,
    value: String,
    ratio: String,
}

fn row(
    rows: &mut Vec<Row>,
    what: impl Into<String>,
    value: impl Into<String>,
    ratio: impl Into<String>,
) {
    let r = Row {
        what: what.into(),
        value: value.into(),
        ratio: ratio.into(),
    };
    eprintln!("{} | {} | {}", r.what, r.value, r.ratio);
    rows.push(r);
}

fn main() {
    if std::env::var_os("CHANGES_BENCH_CHILD").is_some() {
        child();
        return;
    }
    let n: usize = env_or("CHANGES_BENCH_N", 100_000);
    let rounds: usize = env_or("CHANGES_BENCH_ROUNDS", 3);
    let adds: usize = env_or("CHANGES_BENCH_ADDS", 150);
    let load_before = loadavg();
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let server = chroma_server::ChromaServer::start();
    let url = server.url();
    let persist = server.data_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let plain = config(&url, &work.path().join("unused"), None);
    let store =
        ProductionChromaStore::new(&plain, Arc::new(MetricsCollector::new())).expect("store");
    let mut rows: Vec<Row> = Vec::new();
    let pct = |x: f64| format!("{:.3}×", x);

    // 1. Seed, with the peak memory of change-aware incrementals.
    let coll = rt.block_on(async {
        store.check_ready().await.expect("ready");
        store
            .create_collection(&CreateCollection {
                name: COLLECTION.into(),
                configuration: Some(json!({"hnsw": {"space": "l2"}})),
                ..CreateCollection::default()
            })
            .await
            .expect("create")
            .id
    });
    if std::env::var_os("CHANGES_BENCH_LATENCY_ONLY").is_some() {
        // Step 6 alone, on a full backup of the seeded collection.
        let t = Instant::now();
        rt.block_on(seed_range(&store, &coll, 0, n));
        eprintln!("seeded {n} in {:.1} s", t.elapsed().as_secs_f64());
        let cfg_a = config(&url, &work.path().join("repo-a"), Some(&persist));
        rt.block_on(async { timed_backup(&manager(&cfg_a).await, BackupType::Full).await });
        let cfg_a0 = without_queries(&cfg_a);
        latency(&rt, &store, &coll, &cfg_a, &cfg_a0, adds, &mut rows);
        print_rows(n, 0, &started, &load_before, &rows);
        return;
    }
    let tunables = unit_malloc_tunables();
    let mut seeded = 0;
    let mut seed_s = 0.0;
    let mut mem = Vec::new();
    for stop_at in [n / 4, n / 2, n] {
        let t = Instant::now();
        rt.block_on(seed_range(&store, &coll, seeded, stop_at));
        seeded = stop_at;
        seed_s += t.elapsed().as_secs_f64();
        eprintln!("seeded {seeded} in {seed_s:.1} s");
        let repo = work.path().join(format!("mem-{stop_at}"));
        let c = config(&url, &repo, Some(&persist));
        let full_s =
            rt.block_on(async { timed_backup(&manager(&c).await, BackupType::Full).await.0 });
        let mut m = Vec::new();
        for (k, t) in [None, Some(tunables.as_str())].into_iter().enumerate() {
            rt.block_on(rewrite(
                &store,
                &coll,
                &one_percent(stop_at, 50),
                2 + k as u64,
            ));
            let (kb, ms) = run_child(
                &[
                    ("CHANGES_BENCH_CHILD", "1".into()),
                    ("CHANGES_BENCH_URL", url.as_str().into()),
                    ("CHANGES_BENCH_REPO", OsString::from(&repo)),
                    ("CHANGES_BENCH_PERSIST", OsString::from(&persist)),
                ],
                t,
            );
            eprintln!(
                "child incremental at {stop_at} ({}): {kb} kB, {ms} ms",
                t.unwrap_or("glibc defaults")
            );
            m.push((kb, ms));
        }
        mem.push((stop_at, full_s, m));
    }
    row(
        &mut rows,
        format!("seeding {n} records (upserts of {SEED_BATCH})"),
        format!("{seed_s:.1} s ({:.0} rec/s)", n as f64 / seed_s),
        "—",
    );
    let cell = |(kb, ms): (u64, u64)| {
        format!("{:.1} MB ({:.2} s)", kb as f64 / 1024.0, ms as f64 / 1000.0)
    };
    row(
        &mut rows,
        "peak RSS (VmHWM, child process) of a change-aware incremental after 1 % updated, at 25 % / 50 % / 100 % of N",
        format!(
            "glibc defaults: {}; with the unit's `{tunables}`: {} (full backups before them: {})",
            mem.iter()
                .map(|(at, _, m)| format!("{at}: {}", cell(m[0])))
                .collect::<Vec<_>>()
                .join(", "),
            mem.iter()
                .map(|(at, _, m)| format!("{at}: {}", cell(m[1])))
                .collect::<Vec<_>>()
                .join(", "),
            mem.iter()
                .map(|(at, s, _)| format!("{at}: {s:.2} s"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        "—",
    );

    // 2. Raw paged read, full backup with and without the persist directory.
    let repo_a = work.path().join("repo-a");
    let repo_b = work.path().join("repo-b");
    let cfg_a = config(&url, &repo_a, Some(&persist));
    let cfg_b = config(&url, &repo_b, None);
    let (mut raw_s, mut full_a, mut full_b) = (Vec::new(), Vec::new(), Vec::new());
    let mut full_bytes = 0;
    let (ma, m_b) = rt.block_on(async {
        let _ = raw_read(&store, &coll).await; // warm-up, untimed
        let mut last = (None, None);
        for round in 0..rounds {
            for k in 0..3 {
                match (round + k) % 3 {
                    0 => {
                        let t = Instant::now();
                        let (count, _) = raw_read(&store, &coll).await;
                        assert_eq!(count, n);
                        raw_s.push(t.elapsed().as_secs_f64());
                        eprintln!("raw paged read {:.2} s", t.elapsed().as_secs_f64());
                    }
                    1 => {
                        // Each round into a fresh repository; the last one stays.
                        let _ = std::fs::remove_dir_all(&repo_a);
                        let _ = std::fs::remove_dir_all(repo_a.with_extension("state"));
                        let m = manager(&cfg_a).await;
                        let (s, man) = timed_backup(&m, BackupType::Full).await;
                        eprintln!("full backup (persist directory set) {s:.2} s");
                        full_a.push(s);
                        full_bytes = man.bytes_written;
                        last.0 = Some(m);
                    }
                    _ => {
                        let _ = std::fs::remove_dir_all(&repo_b);
                        let _ = std::fs::remove_dir_all(repo_b.with_extension("state"));
                        let m = manager(&cfg_b).await;
                        let (s, _) = timed_backup(&m, BackupType::Full).await;
                        eprintln!("full backup (persist directory unset) {s:.2} s");
                        full_b.push(s);
                        last.1 = Some(m);
                    }
                }
            }
        }
        (last.0.expect("A"), last.1.expect("B"))
    });
    let times = |v: &[f64]| {
        format!(
            "best {:.2} s, median {:.2} s ({} runs)",
            best(v),
            median(v),
            v.len()
        )
    };
    let vs_raw = |v: &[f64]| {
        format!(
            "{:.2}× best, {:.2}× median (raw ÷ chromaprod)",
            best(&raw_s) / best(v),
            median(&raw_s) / median(v)
        )
    };
    row(
        &mut rows,
        "raw paged read (`get` 1,000 a page, all fields)",
        times(&raw_s),
        "—",
    );
    row(
        &mut rows,
        "full backup, persist directory set (ids listed from SQLite)",
        format!("{}; {:.1} MB written", times(&full_a), mb(full_bytes)),
        vs_raw(&full_a),
    );
    row(
        &mut rows,
        "full backup, persist directory unset (ids listed over HTTP)",
        times(&full_b),
        vs_raw(&full_b),
    );
    let full = median(&full_a);

    // 3. Incrementals with nothing changed (and, as where the time goes,
    // the same without recording recall queries: `backup.verify_queries =
    // 0` on repository A), with a full backup beside them for the ratio at
    // the same load.
    let cfg_a0 = without_queries(&cfg_a);
    let (mut inc0_a, mut inc0_a0, mut inc0_b, mut full_beside) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        let ma0 = manager(&cfg_a0).await;
        let scratch = config(&url, &work.path().join("repo-scratch"), Some(&persist));
        for _ in 0..rounds {
            inc0_a.push(timed_backup(&ma, BackupType::Incremental).await.0);
            inc0_a0.push(timed_backup(&ma0, BackupType::Incremental).await.0);
            inc0_b.push(timed_backup(&m_b, BackupType::Incremental).await.0);
            eprintln!(
                "nothing changed: change-aware {:.2} s (without recall queries {:.2} s), old way {:.2} s",
                inc0_a.last().unwrap_or(&0.0),
                inc0_a0.last().unwrap_or(&0.0),
                inc0_b.last().unwrap_or(&0.0)
            );
        }
        let _ = std::fs::remove_dir_all(work.path().join("repo-scratch"));
        full_beside.push(timed_backup(&manager(&scratch).await, BackupType::Full).await.0);
        eprintln!("full backup beside the incrementals: {:.2} s", full_beside[0]);
    });
    row(
        &mut rows,
        "full backup (persist directory set) taken between the incrementals of steps 3 and 4, for the ratio at their load",
        format!("{:.2} s", full_beside[0]),
        "—",
    );
    let ratios = |v: &[f64]| {
        format!(
            "{} the step-2 full (median ÷ median), {} its best, {} the full beside them",
            pct(median(v) / full),
            pct(median(v) / best(&full_a)),
            pct(median(v) / full_beside[0])
        )
    };
    row(
        &mut rows,
        "incremental, nothing changed, change-aware",
        times(&inc0_a),
        format!("{} (target ≤ 0.03×)", ratios(&inc0_a)),
    );
    row(
        &mut rows,
        "the same with `backup.verify_queries = 0` (no recall queries recorded)",
        times(&inc0_a0),
        ratios(&inc0_a0),
    );
    row(
        &mut rows,
        "incremental, nothing changed, old way (persist directory unset: reads every record)",
        times(&inc0_b),
        ratios(&inc0_b),
    );

    // 4. Incrementals after 1 % updated (a different 1 % each round).
    let (mut inc1_a, mut inc1_b, mut inc1_bytes) = (Vec::new(), Vec::new(), 0);
    let mut snap_a = String::new();
    let mut snap_b = String::new();
    rt.block_on(async {
        for r in 0..rounds {
            let ids = one_percent(n, 10 + r);
            rewrite(&store, &coll, &ids, 1).await;
            let (s, man) = timed_backup(&ma, BackupType::Incremental).await;
            inc1_a.push(s);
            inc1_bytes = man.bytes_written;
            snap_a = man.snapshot_id.to_string();
            let (s, man) = timed_backup(&m_b, BackupType::Incremental).await;
            inc1_b.push(s);
            snap_b = man.snapshot_id.to_string();
            eprintln!(
                "1 % ({} records) changed: change-aware {:.2} s, old way {s:.2} s",
                ids.len(),
                inc1_a[r]
            );
        }
    });
    let chromaprod::observe::FeedReads { used, fallback } =
        ma.store().metrics().change_feed_reads();
    assert_eq!(
        fallback, 0,
        "repository A's incrementals read the change feed"
    );
    row(
        &mut rows,
        format!(
            "incremental after updating {} records (1 %), change-aware",
            n / 100
        ),
        format!("{}; {:.2} MB written", times(&inc1_a), mb(inc1_bytes)),
        format!("{} (target ≤ 0.10×)", ratios(&inc1_a)),
    );
    row(
        &mut rows,
        "the same, old way (persist directory unset)",
        times(&inc1_b),
        ratios(&inc1_b),
    );
    eprintln!("change feed reads on A: {used} used, {fallback} fallbacks");

    // 5. Delta restore after 1 % deleted + 1 % changed, against a full restore.
    let deleted = one_percent(n, 97);
    let changed = one_percent(n, 98);
    let (delta_a, delta_b, raw_write_s) = rt.block_on(async {
        damage(&store, &coll, &deleted, &changed).await;
        let a = delta_restore(&ma, &snap_a).await;
        damage(&store, &coll, &deleted, &changed).await;
        let b = delta_restore(&m_b, &snap_b).await;
        // The raw way of the delta's writes: the same 2 % upserted (as the
        // snapshot holds them) in requests of 500, as delta writes them.
        let mut both: Vec<usize> = deleted.iter().chain(&changed).copied().collect();
        both.sort_unstable();
        let t = Instant::now();
        rewrite_in(&store, &coll, &both, 0, 500).await;
        eprintln!(
            "raw upsert of the delta's {} records: {:.2} s",
            both.len(),
            t.elapsed().as_secs_f64()
        );
        (a, b, t.elapsed().as_secs_f64())
    });
    assert_eq!(
        ma.store().metrics().change_feed_reads().fallback,
        0,
        "the delta restore on A read the change feed"
    );
    for d in [&delta_a, &delta_b] {
        assert_eq!(d.counts.missing, deleted.len() as u64, "{:?}", d.counts);
        assert_eq!(d.counts.changed, changed.len() as u64, "{:?}", d.counts);
    }
    let (full_restore_s, recall_s, recall) = rt.block_on(async {
        let t = Instant::now();
        ma.restore(
            &snap_a,
            &RestoreOptions::copy_as(COLLECTION, FULL_COPY),
            &Progress::none(),
            &CancellationToken::new(),
        )
        .await
        .expect("full restore");
        let full_restore_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let r = ma
            .verify_recall(
                &snap_a,
                &RecallOptions {
                    collection: Some(COLLECTION.into()),
                    as_name: Some(FULL_COPY.into()),
                    min_recall: None,
                },
            )
            .await
            .expect("recall");
        let recall_s = t.elapsed().as_secs_f64();
        store
            .delete_collection(FULL_COPY)
            .await
            .expect("drop the copy");
        (
            full_restore_s,
            recall_s,
            serde_json::to_value(&r).unwrap_or_default(),
        )
    });
    row(
        &mut rows,
        "full restore of the same snapshot into a new collection (`--as`, with its recall check)",
        format!("{full_restore_s:.2} s ({:.0} rec/s); the recall check alone, run again after it: {recall_s:.2} s", n as f64 / full_restore_s),
        "—",
    );
    for (what, d) in [
        ("change-aware (persist directory set)", &delta_a),
        ("old way (persist directory unset)", &delta_b),
    ] {
        row(
            &mut rows,
            format!(
                "delta restore after deleting {} and changing {} records, {what}",
                deleted.len(),
                changed.len()
            ),
            format!(
                "{:.2} s = restore point {:.2} s + snapshot side and compare {:.2} s + write {:.2} s ({} written, {} unchanged)",
                d.total, d.restore_point, d.compare, d.write, d.counts.written, d.counts.unchanged
            ),
            format!("{} the full restore (target ≤ 0.15×)", pct(d.total / full_restore_s)),
        );
    }
    row(
        &mut rows,
        "raw upsert of the same 2 % (as the snapshot holds them) in requests of 500: the delta's writes alone",
        format!("{raw_write_s:.2} s"),
        "—",
    );
    eprintln!("recall: {recall}");

    latency(&rt, &store, &coll, &cfg_a, &cfg_a0, adds, &mut rows);

    print_rows(n, rounds, &started, &load_before, &rows);
}

/// Step 6: Chroma's `add` latency alone and under each load, in rotation.
fn latency(
    rt: &tokio::runtime::Runtime,
    store: &ProductionChromaStore,
    coll: &str,
    cfg_a: &Arc<Config>,
    cfg_a0: &Arc<Config>,
    adds: usize,
    rows: &mut Vec<Row>,
) {
    // 6. `add` latency alone and under five loads, rotating: change-aware
    // incrementals back to back as the unit runs them (`Nice=10`, `SCHED_BATCH`, recording
    // recall queries); the same without recall queries; the same at the
    // adds' own priority (nice 0); the SQLite reads of such an incremental
    // alone, in a loop (the segment's position, then its rows page by page,
    // those written since the block began read out, the others counted);
    // and the whole `(id, seq_id)` listing alone, in a loop (what an
    // incremental reads again when records were deleted). Each load runs
    // on a thread of its own with its own runtime, so its priority is its
    // own (Linux keeps the nice value per thread; the threads it starts
    // inherit it).
    #[derive(Clone, Copy, PartialEq)]
    enum Load {
        Alone,
        Incrementals { queries: bool },
        SplitScan,
        Listing,
    }
    let loads: [(&str, Load, i32); 6] = [
        ("alone", Load::Alone, 0),
        (
            "incrementals at the unit's Nice=10 and SCHED_BATCH",
            Load::Incrementals { queries: true },
            UNIT_NICE,
        ),
        (
            "the same, no recall queries",
            Load::Incrementals { queries: false },
            UNIT_NICE,
        ),
        (
            "incrementals at nice 0, SCHED_OTHER (the adds' own priority)",
            Load::Incrementals { queries: true },
            0,
        ),
        (
            "an incremental's SQLite reads alone",
            Load::SplitScan,
            UNIT_NICE,
        ),
        ("SQLite whole listing alone", Load::Listing, UNIT_NICE),
    ];
    let (lat_ms, cycles) = rt.block_on(async {
        let mut lat_ms: Vec<Vec<f64>> = vec![Vec::new(); loads.len()];
        let cycles: Vec<Arc<AtomicU64>> = (0..loads.len()).map(|_| Arc::default()).collect();
        let mut k = 0usize;
        for block in 0..2 * loads.len() {
            let which = block % loads.len();
            let (_, load, nice) = loads[which];
            let stop = Arc::new(AtomicBool::new(false));
            let (stop2, count) = (stop.clone(), cycles[which].clone());
            let cfg = if load == (Load::Incrementals { queries: false }) {
                cfg_a0.clone()
            } else {
                cfg_a.clone()
            };
            let reader = std::thread::spawn(move || {
                if nice != 0 {
                    // The unit's Nice= and CPUSchedulingPolicy=.
                    renice_this_thread(nice);
                    batch_this_thread();
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    match load {
                        Load::Alone => 0,
                        Load::SplitScan | Load::Listing => {
                            let m = manager(&cfg).await;
                            let local = chromaprod::chroma::local::LocalChroma::configured(
                                &cfg,
                                m.store().metrics(),
                            )
                            .await
                            .expect("local chroma");
                            let coll = m
                                .store()
                                .get_collection(COLLECTION)
                                .await
                                .expect("collection");
                            let mark = local.position(&coll.id).await.expect("position").seq_id;
                            while !stop2.load(Ordering::Relaxed) {
                                let pos = local.position(&coll.id).await.expect("position");
                                if load == Load::SplitScan {
                                    // With the recall sample an incremental draws.
                                    let mut scan = local.scan(
                                        &pos.segment,
                                        Some(mark),
                                        chromaprod::chroma::local::PAGE,
                                        Some(chromaprod::chroma::local::Sample::new(1, 100)),
                                    );
                                    while scan.next_split().await.expect("rows").is_some() {}
                                } else {
                                    let mut rows = local.rows(&pos.segment, None);
                                    while rows.next().await.expect("rows").is_some() {}
                                }
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            0
                        }
                        Load::Incrementals { .. } => {
                            let m = manager(&cfg).await;
                            while !stop2.load(Ordering::Relaxed) {
                                timed_backup(&m, BackupType::Incremental).await;
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            m.store().metrics().change_feed_reads().fallback
                        }
                    }
                })
            });
            if which > 0 {
                // Let the load start.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for _ in 0..adds {
                let ids: Vec<String> = (k..k + ADD_BATCH).map(|j| format!("add-{j:07}")).collect();
                let b = RecordBatch {
                    embeddings: Some(
                        (k..k + ADD_BATCH)
                            .map(|j| vector(10_000_000 + j, 0))
                            .collect(),
                    ),
                    documents: Some(ids.iter().map(|i| Some(format!("added {i}"))).collect()),
                    metadatas: None,
                    uris: None,
                    ids,
                };
                k += ADD_BATCH;
                let t = Instant::now();
                store.add(coll, &b).await.expect("add");
                lat_ms[which].push(t.elapsed().as_secs_f64() * 1000.0);
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(
                tokio::task::spawn_blocking(move || reader.join().expect("reader"))
                    .await
                    .expect("reader"),
                0,
                "the incrementals read the change feed"
            );
        }
        (
            lat_ms,
            cycles
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
        )
    });
    let lat = |v: &[f64]| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms ({} requests)",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.len()
        )
    };
    row(
        rows,
        format!("Chroma `add` of {ADD_BATCH} records, one at a time, alone"),
        lat(&lat_ms[0]),
        "—",
    );
    for w in 1..loads.len() {
        row(
            rows,
            format!(
                "the same adds during: {} ({} run back to back)",
                loads[w].0, cycles[w]
            ),
            lat(&lat_ms[w]),
            format!(
                "p50 {:.2}×, p99 {:.2}× alone (target within 1.2×)",
                percentile(&lat_ms[w], 50.0) / percentile(&lat_ms[0], 50.0),
                percentile(&lat_ms[w], 99.0) / percentile(&lat_ms[0], 99.0)
            ),
        );
    }
}

/// `cfg` recording no recall queries (`backup.verify_queries = 0`).
fn without_queries(cfg: &Arc<Config>) -> Arc<Config> {
    let mut c = (**cfg).clone();
    c.backup.verify_queries = 0;
    Arc::new(c)
}

fn print_rows(n: usize, rounds: usize, started: &Instant, load_before: &str, rows: &[Row]) {
    println!(
        "\n{n} records × {DIM}, {rounds} rounds; chroma {}; {:.0} s in all; load average before {load_before}, after {}\n",
        chroma_server::chroma_bin().display(),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    println!("| measurement | chromaprod | ratio |");
    println!("| --- | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.ratio);
    }
}
