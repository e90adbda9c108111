//! Backup and restore throughput of `BackupManager` against the raw way of
//! doing the same through Chroma's HTTP API, side by side in one run on a
//! real Chroma server (`chroma run`, found like the tests find it).
//!
//! `cargo bench --bench backup` (records: `BACKUP_BENCH_N`, default 100000;
//! restore rounds: `BACKUP_BENCH_ROUNDS`, default 2; read/backup rounds:
//! `BACKUP_BENCH_READ_ROUNDS`, default 3; `CHOPS_BIN` for the
//! chromadb-ops comparison, default `.tools/chops/bin/chops`).
//!
//! What it does, in order:
//! 1. seeds one l2 collection of N × 384 records (documents of 100–200
//!    characters, metadata with string, int, float and bool keys) with
//!    upserts of 1,000 (base64 embeddings); at N/4, N/2 and N it runs a full
//!    backup in a child process (this binary re-executed) and reads the
//!    child's peak RSS (`VmHWM`), then an incremental (nothing changed, so it
//!    reads every record and plans against the full) the same way, and a
//!    restore of that snapshot into a new collection on a second server;
//! 2. stops the server, times `tar czf` of its persist directory and
//!    `chops collection snapshot`, restarts it;
//! 3. alternates a raw paged read (`get`, limit/offset 1,000, all fields,
//!    decoded and dropped) with full backups (plain and encrypted), each into
//!    a fresh repository, and with a raw read by id (the backup's own access
//!    pattern), rotating the order each round;
//! 4. updates 1 % of the records (every 100th) and takes an incremental;
//! 5. rotates a restore (`--as`) of the full snapshot with raw upserts and
//!    raw adds of the same records in the same batches (one per chunk, as
//!    restore does, which the store sends in requests of about 4 MiB on
//!    both sides; restore writes with `add`).
//!
//! With `BACKUP_BENCH_MEMORY_ONLY=1` it stops after step 1.
//!
//! Prints a markdown table. The child mode (`BACKUP_BENCH_CHILD=1`) is for
//! step 1 only.

#[path = "../tests/common/chroma.rs"]
#[allow(dead_code)]
mod chroma_server;
#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::backup::crypto::MasterKey;
use chromaprod::backup::manifest::Manifest;
use chromaprod::backup::source::{list_ids, FETCH_BATCH};
use chromaprod::backup::{BackupManager, BackupRequest, BackupType, RestoreOptions, Trigger};
use chromaprod::chroma::{
    CreateCollection, GetRequest, Include, ProductionChromaStore, RecordBatch,
};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use common::{
    batch, best, dir_size, mb, median, op_seconds, raw_read, report_peak, request, run_child,
    seed_range, unit_malloc_tunables, COLLECTION, DIM, PAGE, SEED_BATCH,
};

/// The collection the memory step's restores write.
const MEM_RESTORED: &str = "bench-mem-restored";

// ---------------------------------------------------------------- helpers

fn config(url: url::Url, repo: &Path, key: Option<&Path>) -> Arc<Config> {
    let mut c = Config::default();
    c.chroma.endpoints = vec![url];
    c.backup.storage_path = repo.display().to_string();
    c.backup.encrypt = key.is_some();
    c.backup.key_file = key.map(Path::to_path_buf);
    Arc::new(c)
}

fn store_with(c: &Config, metrics: Arc<MetricsCollector>) -> ProductionChromaStore {
    ProductionChromaStore::new(c, metrics).expect("store")
}

async fn manager(c: &Arc<Config>, metrics: Arc<MetricsCollector>) -> BackupManager {
    BackupManager::open(store_with(c, metrics), c.clone(), true)
        .await
        .expect("open repository")
}

// ---------------------------------------------------------------- child

/// Child mode: one backup of the server's collections (full, or with
/// `BACKUP_BENCH_CHILD_TYPE=incremental` an incremental into the same
/// repository; `BACKUP_BENCH_CHILD_COLLECTION` limits it to one
/// collection), or with `BACKUP_BENCH_CHILD_TYPE=restore` a restore of the
/// repository's latest snapshot of [`COLLECTION`] as [`MEM_RESTORED`] (onto
/// the server at `BACKUP_BENCH_URL`);
/// prints `VmHWM_KB <n> MS <ms> BYTES <n>`.
fn child() {
    let url = url::Url::parse(&std::env::var("BACKUP_BENCH_URL").expect("url")).expect("url");
    let repo = PathBuf::from(std::env::var("BACKUP_BENCH_REPO").expect("repo"));
    let kind = std::env::var("BACKUP_BENCH_CHILD_TYPE").unwrap_or_default();
    let incremental = kind == "incremental";
    let only = std::env::var("BACKUP_BENCH_CHILD_COLLECTION").ok();
    let request = BackupRequest {
        backup_type: match (incremental, &only) {
            (true, _) => BackupType::Incremental,
            (false, Some(_)) => BackupType::Collection,
            (false, None) => BackupType::Full,
        },
        collections: only.into_iter().collect(),
        trigger: Trigger::Command,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (ms, bytes) = rt.block_on(async move {
        let c = config(url, &repo, None);
        let m = manager(&c, Arc::new(MetricsCollector::new())).await;
        let (progress, _rx) = Progress::detached();
        let t = Instant::now();
        if kind == "restore" {
            let list = m.list().await.expect("list");
            let latest = list
                .first()
                .expect("a snapshot")
                .metadata
                .backup_id
                .to_string();
            m.restore(
                &latest,
                &RestoreOptions::copy_as(COLLECTION, MEM_RESTORED),
                &progress,
                &CancellationToken::new(),
            )
            .await
            .expect("restore");
            return (t.elapsed().as_millis(), 0);
        }
        let man = m
            .create(request, &progress, &CancellationToken::new())
            .await
            .expect("backup");
        (t.elapsed().as_millis(), man.bytes_written)
    });
    report_peak(ms, bytes);
}

/// Peak RSS (kB) and time (ms) of a child process running `kind` (`full`,
/// `incremental` or `restore`, see [`child`]); `tunables`: the unit's
/// `GLIBC_TUNABLES`, else glibc's defaults.
fn peak_rss_of_child(
    url: &url::Url,
    repo: &Path,
    kind: &str,
    tunables: Option<&str>,
) -> (u64, u64) {
    run_child(
        &[
            ("BACKUP_BENCH_CHILD", "1".into()),
            ("BACKUP_BENCH_CHILD_TYPE", kind.into()),
            ("BACKUP_BENCH_URL", url.as_str().into()),
            ("BACKUP_BENCH_REPO", repo.into()),
        ],
        tunables,
    )
}

// ---------------------------------------------------------------- main

struct Row {
    what: String,
    chromaprod: String,
    raw: String,
    ratio: String,
}

fn main() {
    if std::env::var_os("BACKUP_BENCH_CHILD").is_some() {
        child();
        return;
    }
    let n: usize = std::env::var("BACKUP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("BACKUP_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let read_rounds: usize = std::env::var("BACKUP_BENCH_READ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let chops = std::env::var_os("CHOPS_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/chops/bin/chops"),
        PathBuf::from,
    );
    let mut server = chroma_server::ChromaServer::start();
    // The memory step's restores go to a second server, so the first one's
    // persist directory (tarred below) holds only the seeded collection.
    let restore_server = chroma_server::ChromaServer::start();
    let restore_store = store_with(
        &config(restore_server.url(), &PathBuf::from("unused"), None),
        Arc::new(MetricsCollector::new()),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = server.url();
    let base_cfg = config(url.clone(), &work.path().join("unused"), None);
    let store = store_with(&base_cfg, Arc::new(MetricsCollector::new()));
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // 1. Seed, with peak-memory backups at N/4, N/2, N.
    let coll_id = rt.block_on(async {
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
    let mut seed_time = Duration::ZERO;
    let mut mem = Vec::new();
    let tunables = unit_malloc_tunables();
    let mut seeded = 0;
    for stop_at in [n / 4, n / 2, n] {
        let t = Instant::now();
        rt.block_on(seed_range(&store, &coll_id, seeded, stop_at));
        seeded = stop_at;
        seed_time += t.elapsed();
        eprintln!("seeded {seeded} in {:.1} s", seed_time.as_secs_f64());
        let mut m = Vec::new();
        for tunables in [None, Some(tunables.as_str())] {
            let repo = work.path().join(format!("mem-{stop_at}-{}", m.len()));
            for incremental in [false, true] {
                let kind = if incremental { "incremental" } else { "full" };
                let (kb, ms) = peak_rss_of_child(&url, &repo, kind, tunables);
                eprintln!(
                    "child {} of {stop_at} ({}): VmHWM {kb} kB, {ms} ms",
                    if incremental {
                        "incremental"
                    } else {
                        "full backup"
                    },
                    tunables.unwrap_or("glibc defaults")
                );
                m.push((kb, ms));
            }
        }
        // A restore of the last snapshot onto the second server, with
        // glibc's defaults (as the CLI runs on a fresh host, outside the unit).
        // And once with the unit's tunable (a restore run by the daemon).
        let repo = work.path().join(format!("mem-{stop_at}-0"));
        for t in [None, Some(tunables.as_str())] {
            let (kb, ms) = peak_rss_of_child(&restore_server.url(), &repo, "restore", t);
            eprintln!(
                "child restore of {stop_at} ({}): VmHWM {kb} kB, {ms} ms",
                t.unwrap_or("glibc defaults")
            );
            m.push((kb, ms));
            rt.block_on(restore_store.delete_collection(MEM_RESTORED))
                .expect("drop the restored copy");
        }
        mem.push((stop_at, m));
    }
    let seed_rate = n as f64 / seed_time.as_secs_f64();
    rows.push(Row {
        what: format!("seeding {n} records (upserts of {SEED_BATCH}, base64)"),
        chromaprod: "—".into(),
        raw: format!("{:.1} s ({seed_rate:.0} rec/s)", seed_time.as_secs_f64()),
        ratio: "—".into(),
    });
    let cell = |(kb, ms): (u64, u64)| {
        format!("{:.1} MB ({:.1} s)", kb as f64 / 1024.0, ms as f64 / 1000.0)
    };
    for (at, m) in &mem {
        rows.push(Row {
            what: format!(
                "peak RSS (VmHWM, child process), {at} records: full backup; then an incremental with nothing changed; then a restore (`--as`) of that"
            ),
            chromaprod: format!(
                "glibc defaults: full {}, incremental {}, restore {}; with the unit's `GLIBC_TUNABLES={tunables}`: full {}, incremental {}, restore {}",
                cell(m[0]),
                cell(m[1]),
                cell(m[4]),
                cell(m[2]),
                cell(m[3]),
                cell(m[5])
            ),
            raw: "—".into(),
            ratio: "—".into(),
        });
    }

    if std::env::var_os("BACKUP_BENCH_MEMORY_ONLY").is_some() {
        print_table(n, 0, 0, &rows, &notes);
        return;
    }

    // 2. Physical copies, server stopped.
    server.stop();
    let data = server.data_dir();
    let persist = dir_size(&data);
    let tgz = work.path().join("persist.tar.gz");
    let t = Instant::now();
    let st = Command::new("tar")
        .arg("czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&data)
        .arg(".")
        .status()
        .expect("tar");
    let tar_s = t.elapsed().as_secs_f64();
    assert!(st.success(), "tar failed");
    let tgz_size = std::fs::metadata(&tgz).map(|m| m.len()).unwrap_or(0);
    rows.push(Row {
        what: format!(
            "`tar czf` of the persist directory ({:.0} MB, server stopped)",
            mb(persist)
        ),
        chromaprod: "—".into(),
        raw: format!("{tar_s:.1} s, {:.1} MB", mb(tgz_size)),
        ratio: "—".into(),
    });
    if chops.is_file() {
        let snap = work.path().join("chops-snapshot.sqlite3");
        let t = Instant::now();
        let out = Command::new(&chops)
            .args(["collection", "snapshot"])
            .arg(&data)
            .args(["--collection", COLLECTION, "--output"])
            .arg(&snap)
            .arg("-y")
            .output()
            .expect("chops");
        let s = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
        if out.status.success() && size > 0 {
            rows.push(Row {
                what: "`chops collection snapshot` (chromadb-ops, server stopped)".into(),
                chromaprod: "—".into(),
                raw: format!("{s:.1} s, {:.1} MB", mb(size)),
                ratio: "—".into(),
            });
        } else {
            let msg: String = format!("{stdout}\n{stderr}")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" / ");
            rows.push(Row {
                what: "`chops collection snapshot` (chromadb-ops, server stopped)".into(),
                chromaprod: "—".into(),
                raw: format!("failed after {s:.1} s ({})", out.status),
                ratio: "—".into(),
            });
            notes.push(format!("chops said: {msg}"));
        }
    } else {
        notes.push(format!("chops not found at {}", chops.display()));
    }
    server.restart();

    // 3. Full backup vs raw paged read, alternating.
    let key_path = work.path().join("key");
    MasterKey::generate()
        .expect("key")
        .write_new_key_file(&key_path)
        .expect("key file");
    let (mut raw_s, mut plain_s, mut enc_s, mut byid_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut raw_bytes_json = 0u64;
    let mut full: Option<(PathBuf, Manifest)> = None;
    let mut full_bytes = 0u64;
    rt.block_on(async {
        // Warm the server (just restarted) with one untimed read.
        let _ = raw_read(&store, &coll_id).await;
        for round in 0..read_rounds {
            for k in 0..4 {
                match (round + k) % 4 {
                    0 => {
                        let t = Instant::now();
                        let (count, bytes) = raw_read(&store, &coll_id).await;
                        raw_s.push(t.elapsed().as_secs_f64());
                        assert_eq!(count, n);
                        raw_bytes_json = bytes;
                        eprintln!("raw paged read: {:.2} s", raw_s.last().unwrap_or(&0.0));
                    }
                    1 => {
                        let repo = work.path().join(format!("repo-plain-{round}"));
                        let c = config(url.clone(), &repo, None);
                        let m = manager(&c, Arc::new(MetricsCollector::new())).await;
                        let (progress, _rx) = Progress::detached();
                        let t = Instant::now();
                        let man = m
                            .create(
                                request(BackupType::Full),
                                &progress,
                                &CancellationToken::new(),
                            )
                            .await
                            .expect("full");
                        plain_s.push(t.elapsed().as_secs_f64());
                        full_bytes = man.bytes_written;
                        eprintln!(
                            "full backup: {:.2} s, {} bytes",
                            plain_s.last().unwrap_or(&0.0),
                            man.bytes_written
                        );
                        full = Some((repo, man));
                    }
                    3 => {
                        let t = Instant::now();
                        let count = raw_read_by_id(&store, &coll_id).await;
                        byid_s.push(t.elapsed().as_secs_f64());
                        assert_eq!(count, n);
                        eprintln!("raw read by id: {:.2} s", byid_s.last().unwrap_or(&0.0));
                    }
                    _ => {
                        let repo = work.path().join(format!("repo-enc-{round}"));
                        let c = config(url.clone(), &repo, Some(&key_path));
                        let m = manager(&c, Arc::new(MetricsCollector::new())).await;
                        let (progress, _rx) = Progress::detached();
                        let t = Instant::now();
                        let man = m
                            .create(
                                request(BackupType::Full),
                                &progress,
                                &CancellationToken::new(),
                            )
                            .await
                            .expect("full encrypted");
                        enc_s.push(t.elapsed().as_secs_f64());
                        eprintln!(
                            "full backup (encrypted): {:.2} s, {} bytes",
                            enc_s.last().unwrap_or(&0.0),
                            man.bytes_written
                        );
                    }
                }
            }
        }
    });
    let (full_repo, full_manifest) = full.expect("a full backup ran");
    let rate = |s: f64| format!("{:.0} rec/s", n as f64 / s);
    let cell = |v: &[f64], bytes: u64| {
        format!(
            "best {:.2} s = {} ({:.1} MB/s); median {:.2} s = {}",
            best(v),
            rate(best(v)),
            mb(bytes) / best(v),
            median(v),
            rate(median(v))
        )
    };
    rows.push(Row {
        what: format!(
            "full backup vs raw paged read (get {PAGE}/page, all fields), {} runs each",
            raw_s.len()
        ),
        chromaprod: format!(
            "{}; {:.1} MB written",
            cell(&plain_s, raw_bytes_json),
            mb(full_bytes)
        ),
        raw: format!(
            "{} (MB/s of JSON received: {:.1} MB)",
            cell(&raw_s, raw_bytes_json),
            mb(raw_bytes_json)
        ),
        ratio: format!(
            "{:.2}× best, {:.2}× median",
            best(&raw_s) / best(&plain_s),
            median(&raw_s) / median(&plain_s)
        ),
    });
    rows.push(Row {
        what: "full backup, encrypted (AES-256-GCM) vs the same raw reads".into(),
        chromaprod: cell(&enc_s, raw_bytes_json),
        raw: "(as above)".into(),
        ratio: format!(
            "{:.2}× best, {:.2}× median",
            best(&raw_s) / best(&enc_s),
            median(&raw_s) / median(&enc_s)
        ),
    });

    rows.push(Row {
        what: format!("raw read by id ({FETCH_BATCH} ids per get after listing the ids: the backup's own access pattern) vs raw paged read"),
        chromaprod: "—".into(),
        raw: cell(&byid_s, raw_bytes_json),
        ratio: format!(
            "paged ÷ by-id time: {:.2}× best, {:.2}× median",
            best(&raw_s) / best(&byid_s),
            median(&raw_s) / median(&byid_s)
        ),
    });

    // 4. Incremental after a 1 % update.
    let changed: Vec<usize> = (0..n).step_by(100).collect();
    let inc = rt.block_on(async {
        for part in changed.chunks(SEED_BATCH) {
            let set: std::collections::HashSet<usize> = part.iter().copied().collect();
            let mut b = RecordBatch {
                ids: vec![],
                embeddings: Some(vec![]),
                documents: Some(vec![]),
                metadatas: Some(vec![]),
                uris: None,
            };
            for &i in part {
                let one = batch(i..i + 1, |j| u64::from(set.contains(&j)));
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
            store.upsert(&coll_id, &b).await.expect("update");
        }
        let c = config(url.clone(), &full_repo, None);
        let m = manager(&c, Arc::new(MetricsCollector::new())).await;
        let (progress, _rx) = Progress::detached();
        let t = Instant::now();
        let man = m
            .create(
                request(BackupType::Incremental),
                &progress,
                &CancellationToken::new(),
            )
            .await
            .expect("incremental");
        (t.elapsed().as_secs_f64(), man)
    });
    rows.push(Row {
        what: format!(
            "incremental after updating {} records (1 %, every 100th)",
            changed.len()
        ),
        chromaprod: format!(
            "{:.2} s, {:.2} MB written ({:.1} % of the full's {:.1} MB)",
            inc.0,
            mb(inc.1.bytes_written),
            100.0 * inc.1.bytes_written as f64 / full_bytes as f64,
            mb(full_bytes)
        ),
        raw: "—".into(),
        ratio: format!("{:.2}× the full's time (median)", inc.0 / median(&plain_s)),
    });

    // 5. Restore vs raw upserts and raw adds in the same batches, rotating.
    let chunk_sizes: Vec<usize> = full_manifest
        .collections
        .iter()
        .flat_map(|c| c.chunks.iter().map(|ch| ch.records as usize))
        .collect();
    assert_eq!(chunk_sizes.iter().sum::<usize>(), n);
    let (mut restore_s, mut write_s, mut verify_s, mut upsert_s, mut add_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 0..rounds {
            for k in 0..3 {
                let side = (round + k) % 3;
                if side < 2 {
                    let add = side == 1;
                    let name = format!("raw_{round}_{side}");
                    let id = store
                        .create_collection(&CreateCollection {
                            name: name.clone(),
                            configuration: Some(json!({"hnsw": {"space": "l2"}})),
                            ..CreateCollection::default()
                        })
                        .await
                        .expect("create")
                        .id;
                    let mut start = 0;
                    let mut elapsed = Duration::ZERO;
                    for &len in &chunk_sizes {
                        let b = batch(start..start + len, |_| 0); // built outside the clock
                        start += len;
                        let t = Instant::now();
                        if add {
                            store.add_all(&id, &b).await.expect("raw add");
                        } else {
                            store.upsert(&id, &b).await.expect("raw upsert");
                        }
                        elapsed += t.elapsed();
                    }
                    let what = if add { "adds" } else { "upserts" };
                    eprintln!("raw {what}: {:.2} s", elapsed.as_secs_f64());
                    if add { &mut add_s } else { &mut upsert_s }.push(elapsed.as_secs_f64());
                    store.delete_collection(&name).await.expect("drop");
                } else {
                    let name = format!("restored_{round}");
                    let c = config(url.clone(), &full_repo, None);
                    let metrics = Arc::new(MetricsCollector::new());
                    let m = BackupManager::open(store_with(&c, metrics.clone()), c.clone(), false)
                        .await
                        .expect("open");
                    let (progress, mut rx) = Progress::detached();
                    // When the write pass ended: the last `restore` event.
                    let last_write = tokio::spawn(async move {
                        let mut at = None;
                        loop {
                            match rx.recv().await {
                                Ok(ev) if ev["phase"] == "restore" => at = Some(Instant::now()),
                                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return at,
                            }
                        }
                    });
                    let t = Instant::now();
                    m.restore(
                        full_manifest.snapshot_id.as_str(),
                        &RestoreOptions::copy_as(COLLECTION, &name),
                        &progress,
                        &CancellationToken::new(),
                    )
                    .await
                    .expect("restore");
                    let end = Instant::now();
                    drop(progress);
                    let written = last_write.await.expect("watcher").expect("write events");
                    restore_s.push((end - t).as_secs_f64());
                    write_s.push(op_seconds(&metrics, "add"));
                    verify_s.push((end - written).as_secs_f64());
                    eprintln!(
                        "restore: {:.2} s (add calls {:.2} s, read-back pass {:.2} s, get calls {:.2} s)",
                        restore_s.last().unwrap_or(&0.0),
                        write_s.last().unwrap_or(&0.0),
                        verify_s.last().unwrap_or(&0.0),
                        op_seconds(&metrics, "get")
                    );
                    store.delete_collection(&name).await.expect("drop");
                }
            }
        }
    });
    let sizes = {
        let mut s = chunk_sizes.clone();
        s.sort_unstable();
        format!("{} batches of {}–{} records", s.len(), s[0], s[s.len() - 1])
    };
    let timed = |v: &[f64]| {
        format!(
            "best {:.1} s = {}; median {:.1} s = {}",
            best(v),
            rate(best(v)),
            median(v),
            rate(median(v))
        )
    };
    let ratio = |raw: &[f64], ours: &[f64]| {
        format!(
            "{:.2}× best, {:.2}× median",
            best(raw) / best(ours),
            median(raw) / median(ours)
        )
    };
    rows.push(Row {
        what: format!("restore (`--as`, total incl. read-back verify) vs raw upserts ({sizes})"),
        chromaprod: timed(&restore_s),
        raw: timed(&upsert_s),
        ratio: ratio(&upsert_s, &restore_s),
    });
    rows.push(Row {
        what: "restore (as above) vs raw adds (restore's own write) in the same batches".into(),
        chromaprod: "(as above)".into(),
        raw: timed(&add_s),
        ratio: ratio(&add_s, &restore_s),
    });
    rows.push(Row {
        what: "restore, write pass alone (sum of its add calls) vs raw adds".into(),
        chromaprod: format!(
            "{}; then the read-back pass (gets two at a time, compare, count, rename) {:.1} s (median)",
            timed(&write_s),
            median(&verify_s)
        ),
        raw: "(as above)".into(),
        ratio: ratio(&add_s, &write_s),
    });

    print_table(n, read_rounds, rounds, &rows, &notes);
}

fn print_table(n: usize, read_rounds: usize, rounds: usize, rows: &[Row], notes: &[String]) {
    println!(
        "\n{n} records × {DIM} dims, {read_rounds} backup/read rounds, {rounds} restore rounds; chroma {}\n",
        chroma_server::chroma_bin().display()
    );
    println!(
        "| measurement | chromaprod | raw / other tool | ratio (raw time ÷ chromaprod time) |"
    );
    println!("| --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what, r.chromaprod, r.raw, r.ratio
        );
    }
    for note in notes {
        println!("\nNote: {note}");
    }
}

/// Lists the ids in one `get`, then fetches every record by id in batches
/// of [`FETCH_BATCH`], all fields, decoded and dropped: what the backup's
/// reader does, without chunking, compression or writes.
async fn raw_read_by_id(store: &ProductionChromaStore, id: &str) -> usize {
    let ids = list_ids(store, id).await.expect("list ids");
    let mut got = 0;
    for part in ids.chunks(FETCH_BATCH) {
        let r = store
            .get_records(id, &GetRequest::ids(part.to_vec(), &Include::RECORD))
            .await
            .expect("get by id");
        got += r.ids.len();
    }
    got
}
