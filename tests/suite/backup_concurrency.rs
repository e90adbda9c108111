//! Backups while other things happen: writers and deleters in Chroma, a
//! prune, a second daemon on the same repository, a cancellation, stale and
//! live locks. Against a real Chroma server and a local repository.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chromaprod::backup::compare::records_match;
use chromaprod::backup::lock::{list_locks, now_ms, Lease, LockInfo};
use chromaprod::backup::records::Record;
use chromaprod::backup::repository::{key as object_key, Repository};
use chromaprod::backup::BackupError;
use chromaprod::backup::{
    BackupManager, BackupRequest, BackupType, Manifest, RestoreOptions, Trigger,
};
use chromaprod::chroma::{CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use common::chroma::ChromaServer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- helpers

struct Setup {
    _dir: tempfile::TempDir,
    key_path: std::path::PathBuf,
    repo_url: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("key");
        common::daemon::write_key(&key_path);
        let repo_url = dir.path().join("repo").display().to_string();
        Setup {
            _dir: dir,
            key_path,
            repo_url,
        }
    }

    /// A config for `chroma` and this repository; `tweak` sets retention and the like.
    fn config(&self, chroma: &url::Url, tweak: impl FnOnce(&mut Config)) -> Arc<Config> {
        let mut c = Config::default();
        c.chroma.endpoints = vec![chroma.clone()];
        c.backup.storage_path = self.repo_url.clone();
        c.backup.encrypt = true;
        c.backup.key_file = Some(self.key_path.clone());
        tweak(&mut c);
        Arc::new(c)
    }

    /// A manager with its own store and its own `Repository` object (as a
    /// separate daemon would have).
    async fn manager(&self, config: &Arc<Config>) -> BackupManager {
        let store =
            ProductionChromaStore::new(config, Arc::new(MetricsCollector::new())).expect("store");
        BackupManager::open(store, config.clone(), true)
            .await
            .expect("open repository")
    }
}

/// A retention that keeps only the newest snapshot.
fn keep_only_newest(c: &mut Config) {
    c.backup.keep_last = 1;
    c.backup.keep_hourly = 0;
    c.backup.keep_daily = 0;
    c.backup.keep_weekly = 0;
    c.backup.keep_monthly = 0;
    c.backup.retention_days = 0;
}

fn vector(i: usize, version: u32, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| ((i * 31 + j * 7 + version as usize * 13) % 997) as f32 / 997.0 - 0.5)
        .collect()
}

/// The state of record `id` (number `i`) at `version`: every field derives from both.
fn record(id: &str, i: usize, version: u32, dim: usize, doc_pad: usize) -> Record {
    let mut document = format!("{id} v{version} ");
    while document.len() < doc_pad {
        document.push_str(&format!("{i}-{version} lorem ipsum dolor sit amet "));
    }
    Record {
        id: id.to_string(),
        embedding: Some(vector(i, version, dim)),
        document: Some(document),
        metadata: Some(
            json!({"i": i, "version": version, "half": i as f64 * 0.5, "even": i % 2 == 0, "tag": format!("t{}", i % 13)})
                .as_object()
                .cloned()
                .expect("map"),
        ),
        uri: Some(format!("file:///data/{id}")),
    }
}

fn to_batch(records: &[Record]) -> RecordBatch {
    RecordBatch {
        ids: records.iter().map(|r| r.id.clone()).collect(),
        embeddings: Some(
            records
                .iter()
                .map(|r| r.embedding.clone().expect("e"))
                .collect(),
        ),
        documents: Some(records.iter().map(|r| r.document.clone()).collect()),
        metadatas: Some(records.iter().map(|r| r.metadata.clone()).collect()),
        uris: Some(records.iter().map(|r| r.uri.clone()).collect()),
    }
}

fn seed_id(i: usize) -> String {
    format!("r-{i:05}")
}

/// Creates `name` (l2) and upserts `n` records at version 0; returns its id.
async fn seed(
    store: &ProductionChromaStore,
    name: &str,
    n: usize,
    dim: usize,
    doc_pad: usize,
) -> String {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: Some(json!({"seeded": n}).as_object().cloned().expect("map")),
            configuration: Some(json!({"hnsw": {"space": "l2"}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let all: Vec<Record> = (0..n)
        .map(|i| record(&seed_id(i), i, 0, dim, doc_pad))
        .collect();
    for part in all.chunks(1000) {
        store.upsert(&col.id, &to_batch(part)).await.expect("seed");
    }
    col.id
}

/// Overwrites records `ids` (numbers) with `version`.
async fn modify(
    store: &ProductionChromaStore,
    col: &str,
    ids: impl Iterator<Item = usize>,
    version: u32,
    dim: usize,
    doc_pad: usize,
) {
    let recs: Vec<Record> = ids
        .map(|i| record(&seed_id(i), i, version, dim, doc_pad))
        .collect();
    for part in recs.chunks(1000) {
        store.upsert(col, &to_batch(part)).await.expect("modify");
    }
}

async fn all_records(store: &ProductionChromaStore, name: &str) -> Vec<Record> {
    common::records::collection_records(store, name).await.1
}

fn request(t: BackupType) -> BackupRequest {
    BackupRequest {
        backup_type: t,
        collections: vec![],
        trigger: Trigger::Command,
    }
}

async fn take(m: &BackupManager, t: BackupType) -> Manifest {
    let (progress, _rx) = Progress::detached();
    m.create(request(t), &progress, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{t:?} backup: {e}"))
}

async fn restore_as(m: &BackupManager, snap: &str, collection: &str, as_name: &str) {
    let (progress, _rx) = Progress::detached();
    m.restore(
        snap,
        &RestoreOptions::copy_as(collection, as_name),
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("restore {snap} {collection} as {as_name}: {e}"));
}

async fn verify_full(m: &BackupManager, snap: &str) -> u64 {
    let (progress, _rx) = Progress::detached();
    m.verify(snap, true, &progress)
        .await
        .unwrap_or_else(|e| panic!("verify --full {snap}: {e}"))
        .records
}

fn assert_same_records(what: &str, want: &[Record], got: &[Record]) {
    assert_eq!(want.len(), got.len(), "{what}: record count");
    for (w, g) in want.iter().zip(got) {
        assert_eq!(w.id, g.id, "{what}: ids");
        assert!(
            w.bit_eq(g) || records_match(w, g, false),
            "{what}: record {} differs",
            w.id
        );
    }
}

/// Chunk and index objects in the repository (for checking what prune left).
async fn stored_objects(repo: &Repository) -> HashSet<String> {
    let mut out = HashSet::new();
    for prefix in ["chunks", "index"] {
        for meta in repo.list(prefix).await.expect("list") {
            out.insert(meta.key.as_str().to_string());
        }
    }
    out
}

fn referenced_objects(manifests: &[Manifest]) -> HashSet<String> {
    let mut out = HashSet::new();
    for m in manifests {
        for c in &m.collections {
            for r in &c.chunks {
                out.insert(format!("chunks/{}/{}", &r.id[..2], r.id));
                out.insert(format!("index/{}/{}", &r.index_id[..2], r.index_id));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- writers and deleters

/// The stated meaning of a backup taken during writes: every record that
/// existed for the whole backup is in it, each in a state it really had
/// during the backup; records created after the listing are not; records
/// deleted meanwhile may be absent.
///
/// Checked field by field: each field of each record holds a value that
/// record really had (seeded, or written during the backup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_writes_and_deletes_holds_every_survivor_in_a_real_state() {
    backup_during_writes(false).await;
}

/// The same with a change-aware incremental (Chroma's persist directory
/// read for what changed since a full backup) running during the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_aware_incremental_during_writes_and_deletes_holds_every_survivor() {
    backup_during_writes(true).await;
}

async fn backup_during_writes(change_aware: bool) {
    const N: usize = 5000;
    const DIM: usize = 96;
    const PAD: usize = 200;
    let chroma = ChromaServer::start();
    let setup = Setup::new();
    let config = setup.config(&chroma.url(), |c| {
        if change_aware {
            c.chroma.persist_directory = Some(chroma.data_dir());
        }
    });
    let m = setup.manager(&config).await;
    let store = m.store().clone();
    let t0 = Instant::now();
    let col = seed(&store, "docs", N, DIM, PAD).await;
    println!("seeded {N} records in {:.2?}", t0.elapsed());
    if change_aware {
        // The parent: its change mark is where the incremental reads from.
        let full = m
            .create(
                request(BackupType::Full),
                &Progress::detached().0,
                &CancellationToken::new(),
            )
            .await
            .expect("full backup");
        assert!(full.collections[0].change_mark.is_some(), "{full:?}");
    }

    // Deleted during the backup: a known set. Modified: others, never deleted.
    let doomed: Vec<usize> = (0..N).filter(|i| i % 7 == 3).collect();
    let modified: Vec<usize> = (0..N).filter(|i| i % 5 == 1 && i % 7 != 3).collect();
    // Every version each id was (or is being) written with; version 0 = seeded.
    let versions: Arc<Mutex<HashMap<String, HashSet<u32>>>> = Arc::new(Mutex::new(
        (0..N).map(|i| (seed_id(i), HashSet::from([0]))).collect(),
    ));
    // New ids: those whose upsert began before / after the backup's listing was known to be done.
    let new_ids: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let new_after_listing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let listed = Arc::new(AtomicBool::new(false));
    let (writes, deletes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = CancellationToken::new();

    // A change-aware incremental reads only what changed: let the writer
    // change enough first that the read spans many batches (and the deleter
    // still runs by then).
    let (writes_first, delete_pause) = if change_aware {
        (15, Duration::from_millis(40))
    } else {
        (2, Duration::from_millis(5))
    };
    let writer = {
        let (store, col, stop) = (store.clone(), col.clone(), stop.clone());
        let (versions, new_ids, new_after, listed, writes) = (
            versions.clone(),
            new_ids.clone(),
            new_after_listing.clone(),
            listed.clone(),
            writes.clone(),
        );
        let modified = modified.clone();
        tokio::spawn(async move {
            let mut round: u32 = 0;
            let mut next_new = N;
            while !stop.is_cancelled() {
                round += 1;
                // 40 modifications (cycling through the modified set) and 20 new records.
                let start = (round as usize * 40) % modified.len();
                let mut recs = Vec::new();
                for k in 0..40 {
                    let i = modified[(start + k) % modified.len()];
                    let id = seed_id(i);
                    versions
                        .lock()
                        .expect("lock")
                        .get_mut(&id)
                        .expect("seeded")
                        .insert(round);
                    recs.push(record(&id, i, round, DIM, PAD));
                }
                let after = listed.load(Ordering::SeqCst);
                for _ in 0..20 {
                    let id = format!("n-{next_new:06}");
                    new_ids.lock().expect("lock").insert(id.clone(), next_new);
                    if after {
                        new_after.lock().expect("lock").insert(id.clone());
                    }
                    recs.push(record(&id, next_new, round, DIM, PAD));
                    next_new += 1;
                }
                store.upsert(&col, &to_batch(&recs)).await.expect("write");
                writes.fetch_add(1, Ordering::SeqCst);
            }
            round
        })
    };
    let deleter = {
        let (store, col, stop, deletes) =
            (store.clone(), col.clone(), stop.clone(), deletes.clone());
        let doomed = doomed.clone();
        tokio::spawn(async move {
            for part in doomed.chunks(6) {
                if stop.is_cancelled() {
                    break;
                }
                let ids: Vec<String> = part.iter().map(|i| seed_id(*i)).collect();
                store.delete(&col, Some(&ids), None).await.expect("delete");
                deletes.fetch_add(part.len() as u64, Ordering::SeqCst);
                tokio::time::sleep(delete_pause).await;
            }
        })
    };
    // Let both get going, then back up while they run.
    while writes.load(Ordering::SeqCst) < writes_first || deletes.load(Ordering::SeqCst) < 12 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (progress, mut rx) = Progress::detached();
    let watcher = {
        let listed = listed.clone();
        tokio::spawn(async move {
            // The first progress event comes after the listing and the first batch.
            while let Ok(ev) = rx.recv().await {
                if ev["phase"] == "backup" {
                    listed.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let (w0, d0) = (
        writes.load(Ordering::SeqCst),
        deletes.load(Ordering::SeqCst),
    );
    let started = Instant::now();
    let kind = if change_aware {
        BackupType::Incremental
    } else {
        BackupType::Full
    };
    let snap = m
        .create(request(kind), &progress, &CancellationToken::new())
        .await
        .expect("a backup during writes succeeds");
    if change_aware {
        let metrics = m.store().metrics().encode();
        assert!(
            metrics.contains("chromaprod_change_feed_reads_total{outcome=\"used\",reason=\"\"} 1"),
            "the incremental did not read through the change feed:\n{metrics}"
        );
    }
    let took = started.elapsed();
    let (w1, d1) = (
        writes.load(Ordering::SeqCst),
        deletes.load(Ordering::SeqCst),
    );
    stop.cancel();
    let rounds = writer.await.expect("writer");
    deleter.await.expect("deleter");
    drop(progress);
    watcher.await.expect("watcher");
    println!(
        "backup took {took:.2?}; during it: {} write batches, {} deletes ({rounds} write rounds in all)",
        w1 - w0,
        d1 - d0
    );
    assert!(
        w1 > w0,
        "no write happened during the backup ({took:?}); the test proves nothing"
    );
    assert!(
        d1 > d0,
        "no delete happened during the backup ({took:?}); the test proves nothing"
    );

    restore_as(&m, snap.snapshot_id.as_str(), "docs", "docs_snap").await;
    let got = all_records(&store, "docs_snap").await;
    assert_eq!(got.len() as u64, snap.collections[0].record_count);
    let got: HashMap<&str, &Record> = got.iter().map(|r| (r.id.as_str(), r)).collect();
    let versions = versions.lock().expect("lock").clone();
    let new_ids = new_ids.lock().expect("lock").clone();
    let new_after = new_after_listing.lock().expect("lock").clone();
    let doomed: HashSet<String> = doomed.iter().map(|i| seed_id(*i)).collect();

    // Each record present is in a state it really had: each field holds a
    // value of a version that record was written with. (Not necessarily all
    // from the same write: Chroma's `get` can return a record being upserted
    // with the new embedding and the old document; the README says so.)
    let state_of = |r: &Record| -> u32 {
        let v = r
            .metadata
            .as_ref()
            .and_then(|m| m.get("version"))
            .and_then(Value::as_u64);
        u32::try_from(v.unwrap_or_else(|| panic!("{} has no version", r.id))).expect("u32")
    };
    let (mut kept_modified, mut doomed_present, mut new_present, mut torn) = (0, 0, 0, 0);
    for (id, r) in &got {
        let (i, allowed): (usize, HashSet<u32>) = if let Some(i) = new_ids.get(*id) {
            new_present += 1;
            assert!(
                !new_after.contains(*id),
                "{id} was created after the backup's listing but is in the snapshot"
            );
            (*i, HashSet::from([state_of(r)]))
        } else {
            let i: usize = id
                .strip_prefix("r-")
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unknown id {id} in the snapshot"));
            doomed_present += usize::from(doomed.contains(*id));
            (i, versions[*id].clone())
        };
        // The version each field comes from.
        let field_version = |field: &str, pick: &dyn Fn(&Record, &Record) -> bool| -> u32 {
            let mut vs: Vec<u32> = allowed.iter().copied().collect();
            vs.sort_unstable();
            vs.into_iter()
                .find(|v| pick(&record(id, i, *v, DIM, PAD), r))
                .unwrap_or_else(|| {
                    panic!("{id}: its {field} is from no version it was written with ({allowed:?}): {r:?}")
                })
        };
        let ve = field_version("embedding", &|w, g| {
            w.embedding
                .as_ref()
                .zip(g.embedding.as_ref())
                .is_some_and(|(a, b)| {
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                })
        });
        let vd = field_version("document", &|w, g| w.document == g.document);
        let vm = field_version("metadata", &|w, g| {
            let (a, b) = (w.metadata.as_ref(), g.metadata.as_ref());
            let only = |m: Option<&serde_json::Map<String, Value>>| {
                m.map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "half")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<Vec<_>>()
                })
            };
            only(a) == only(b)
                && a.and_then(|m| m["half"].as_f64()) == b.and_then(|m| m["half"].as_f64())
        });
        assert_eq!(r.uri, record(id, i, 0, DIM, PAD).uri, "{id}: uri");
        if doomed.contains(*id) {
            assert_eq!(
                (ve, vd, vm),
                (0, 0, 0),
                "{id} was only ever deleted, never modified"
            );
        }
        kept_modified += usize::from(vm > 0 || ve > 0);
        if ve != vd || vd != vm {
            torn += 1;
            if torn <= 3 {
                println!(
                    "{id}: embedding from version {ve}, document from {vd}, metadata from {vm}"
                );
            }
        }
    }
    // Every record that existed for the whole backup is there.
    let missing: Vec<String> = (0..N)
        .map(seed_id)
        .filter(|id| !doomed.contains(id) && !got.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records existed for the whole backup but are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    println!(
        "snapshot: {} records; {kept_modified} in a modified state ({torn} with fields from different writes), {doomed_present} of {} deleted ones, {new_present} of {} new ones ({} written after the listing, none in it)",
        got.len(),
        doomed.len(),
        new_ids.len(),
        new_after.len()
    );
    assert!(
        !new_after.is_empty(),
        "no record was created after the listing; the test proves nothing about them"
    );
    verify_full(&m, snap.snapshot_id.as_str()).await;
}

// ---------------------------------------------------------------- prune during a backup

/// A prune that would delete every older snapshot, started while a backup
/// runs (and once at the same moment as one), never deletes a chunk the new
/// snapshot needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_during_a_backup_keeps_every_chunk_the_new_snapshot_needs() {
    const N: usize = 4000;
    const DIM: usize = 64;
    const PAD: usize = 600;
    let chroma = ChromaServer::start();
    let setup = Setup::new();
    let config = setup.config(&chroma.url(), keep_only_newest);
    let m = Arc::new(setup.manager(&config).await);
    let store = m.store().clone();
    let col = seed(&store, "docs", N, DIM, PAD).await;
    let old = take(&m, BackupType::Full).await;
    assert!(old.collections[0].chunks.len() > 1, "several chunks");

    for round in 1..=2u32 {
        // Change a third of the records: the next snapshot shares some chunks
        // with the old one and needs new ones.
        modify(&store, &col, (0..N).filter(|i| i % 3 == 0), round, DIM, PAD).await;
        let source = all_records(&store, "docs").await;
        let (progress, mut rx) = Progress::detached();
        let backup = {
            let m = m.clone();
            tokio::spawn(async move {
                m.create(
                    request(BackupType::Full),
                    &progress,
                    &CancellationToken::new(),
                )
                .await
            })
        };
        if round == 1 {
            // Mid-backup: once the first batch has been read.
            loop {
                match rx.recv().await {
                    Ok(ev) if ev["phase"] == "backup" => break,
                    Ok(_) => {}
                    Err(e) => panic!("backup ended before it reported progress: {e}"),
                }
            }
        }
        let started = Instant::now();
        let pruned = m.prune(false).await.expect("prune");
        let snap = backup
            .await
            .expect("join")
            .expect("a backup with a concurrent prune succeeds");
        println!(
            "round {round}: prune took {:.2?}; kept {:?}, deleted {:?}, {} objects",
            started.elapsed(),
            pruned.snapshots_kept,
            pruned.snapshots_deleted,
            pruned.objects_deleted
        );
        assert!(
            !pruned
                .snapshots_deleted
                .contains(&snap.snapshot_id.to_string()),
            "prune deleted the snapshot being written"
        );
        // The new snapshot is whole.
        let records = verify_full(&m, snap.snapshot_id.as_str()).await;
        assert_eq!(records, N as u64);
        let name = format!("docs_round{round}");
        restore_as(&m, snap.snapshot_id.as_str(), "docs", &name).await;
        assert_same_records(&name, &source, &all_records(&store, &name).await);
        store.delete_collection(&name).await.expect("drop the copy");
        // A prune now leaves exactly what the newest snapshot references.
        m.prune(false).await.expect("second prune");
        let manifests = m.repo.manifests().await.expect("manifests");
        assert_eq!(manifests.len(), 1, "only the newest snapshot is kept");
        assert_eq!(manifests[0].snapshot_id, snap.snapshot_id);
        assert_eq!(
            stored_objects(&m.repo).await,
            referenced_objects(&manifests),
            "prune left exactly the referenced objects"
        );
    }
}

/// "Newest" means last taken, also for snapshots taken within one second:
/// `list` shows the last one first, and a prune keeping one keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_of_snapshots_taken_within_one_second() {
    let chroma = ChromaServer::start();
    let setup = Setup::new();
    let config = setup.config(&chroma.url(), keep_only_newest);
    let m = setup.manager(&config).await;
    seed(m.store(), "docs", 20, 8, 10).await;
    for round in 0..6 {
        // Start just after a second begins, so both fall in the same second.
        let into_second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1020 - into_second))).await;
        let first = take(&m, BackupType::Full).await;
        let second = take(&m, BackupType::Full).await;
        let listed = m.list().await.expect("list");
        assert_eq!(
            listed[0].metadata.backup_id,
            second.snapshot_id,
            "round {round}: list shows {} (created_at {}) before the later {} (created_at {})",
            listed[0].metadata.backup_id,
            listed[0].metadata.created_at,
            second.snapshot_id,
            second.metadata.created_at
        );
        let pruned = m.prune(false).await.expect("prune");
        assert_eq!(
            pruned.snapshots_kept,
            vec![second.snapshot_id.to_string()],
            "round {round}: keep_last = 1 kept the earlier snapshot {} (created_at {}) and deleted the later one (created_at {})",
            first.snapshot_id,
            first.metadata.created_at,
            second.metadata.created_at
        );
    }
}

// ---------------------------------------------------------------- two daemons

/// Two managers with their own stores and repository handles on one
/// repository: concurrent backups, and a prune by one while the other backs
/// up. Every snapshot that is listed afterwards verifies in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_back_up_and_prune_one_repository_concurrently() {
    const N: usize = 2500;
    const DIM: usize = 64;
    const PAD: usize = 400;
    let chroma = ChromaServer::start();
    let setup = Setup::new();
    let c1 = setup.config(&chroma.url(), |_| {});
    let c2 = setup.config(&chroma.url(), keep_only_newest);
    // The repository is created by the first; the second opens it.
    let m1 = Arc::new(setup.manager(&c1).await);
    let m2 = Arc::new(setup.manager(&c2).await);
    let store = m1.store().clone();
    let col = seed(&store, "docs", N, DIM, PAD).await;

    // Two full backups at once (the same data: the same chunks, raced).
    let (a, b) = tokio::join!(take(&m1, BackupType::Full), take(&m2, BackupType::Full));
    assert_ne!(a.snapshot_id, b.snapshot_id);
    for m in [&m1, &m2] {
        let ids: HashSet<String> = m
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.metadata.backup_id.to_string())
            .collect();
        assert_eq!(
            ids,
            HashSet::from([a.snapshot_id.to_string(), b.snapshot_id.to_string()]),
            "both snapshots are listed by each manager"
        );
    }
    for s in [&a, &b] {
        assert_eq!(verify_full(&m1, s.snapshot_id.as_str()).await, N as u64);
        assert_eq!(verify_full(&m2, s.snapshot_id.as_str()).await, N as u64);
    }

    // One prunes (keep only the newest) while the other takes an incremental.
    modify(&store, &col, (0..N).filter(|i| i % 4 == 0), 1, DIM, PAD).await;
    let source = all_records(&store, "docs").await;
    let (progress, _rx) = Progress::detached();
    let backup = {
        let m1 = m1.clone();
        tokio::spawn(async move {
            m1.create(
                request(BackupType::Incremental),
                &progress,
                &CancellationToken::new(),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pruned = m2.prune(false).await.expect("prune by the second manager");
    let inc = backup
        .await
        .expect("join")
        .expect("incremental by the first manager");
    println!(
        "prune kept {:?}, deleted {:?}; incremental {} (parent {:?})",
        pruned.snapshots_kept, pruned.snapshots_deleted, inc.snapshot_id, inc.parent
    );
    let listed1: Vec<String> = m1
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.metadata.backup_id.to_string())
        .collect();
    let listed2: Vec<String> = m2
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.metadata.backup_id.to_string())
        .collect();
    assert_eq!(listed1, listed2, "both managers see the same snapshots");
    assert!(listed1.contains(&inc.snapshot_id.to_string()));
    for id in &listed1 {
        verify_full(&m1, id).await;
        verify_full(&m2, id).await;
    }
    restore_as(&m2, inc.snapshot_id.as_str(), "docs", "docs_inc").await;
    assert_same_records(
        "incremental",
        &source,
        &all_records(&store, "docs_inc").await,
    );
    // No lock is left behind by either.
    assert!(list_locks(&m1.repo).await.expect("locks").is_empty());
}

// ---------------------------------------------------------------- cancel

/// Cancelling mid-backup: `Cancelled`, no snapshot, no lock left; the next
/// backup succeeds and reuses the chunks the cancelled one stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_backup_records_nothing_and_the_next_backup_reuses_its_chunks() {
    // About 35 MB of records: ~9 chunks, more than the uploads in flight.
    const N: usize = 5000;
    const DIM: usize = 64;
    const PAD: usize = 7000;
    let chroma = ChromaServer::start();
    let setup = Setup::new();
    let config = setup.config(&chroma.url(), |_| {});
    let m = setup.manager(&config).await;
    let store = m.store().clone();
    let t0 = Instant::now();
    seed(&store, "docs", N, DIM, PAD).await;
    println!("seeded in {:.2?}", t0.elapsed());

    let (progress, mut rx) = Progress::detached();
    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut last = json!(null);
            while let Ok(ev) = rx.recv().await {
                let done = ev["records_done"].as_u64().unwrap_or(0);
                let written = ev["bytes_written"].as_u64().unwrap_or(0);
                if ev["phase"] == "backup" && written > 0 && done * 10 >= N as u64 * 5 {
                    cancel.cancel();
                    return ev;
                }
                last = ev;
            }
            panic!("the backup ended before it could be cancelled; last progress {last}");
        })
    };
    let err = m
        .create(request(BackupType::Full), &progress, &cancel)
        .await
        .expect_err("a cancelled backup fails");
    assert!(matches!(err, BackupError::Cancelled), "{err}");
    drop(progress);
    let at_cancel = watcher.await.expect("watcher");
    let written_before_cancel = at_cancel["bytes_written"].as_u64().expect("bytes");
    println!("cancelled at {at_cancel}");
    assert!(
        at_cancel["records_done"].as_u64() < Some(N as u64),
        "cancelled before the end"
    );
    assert!(
        m.list().await.expect("list").is_empty(),
        "no snapshot recorded"
    );
    assert!(
        m.repo.snapshot_ids().await.expect("ids").is_empty(),
        "no manifest stored"
    );
    assert!(
        list_locks(&m.repo).await.expect("locks").is_empty(),
        "lock released"
    );

    let next = take(&m, BackupType::Full).await;
    println!(
        "next backup: wrote {} of {} referenced bytes ({} were stored before the cancel)",
        next.bytes_written, next.bytes_referenced, written_before_cancel
    );
    // What the cancelled run stored is reused, not written again.
    assert!(
        next.bytes_written + written_before_cancel <= next.bytes_referenced + (256 << 10),
        "the next backup wrote {} bytes although {} of its {} were stored by the cancelled one",
        next.bytes_written,
        written_before_cancel,
        next.bytes_referenced
    );
    assert!(
        (next.bytes_written as f64) < 0.7 * next.bytes_referenced as f64,
        "the next backup wrote {} of {} bytes: chunks were not reused",
        next.bytes_written,
        next.bytes_referenced
    );
    assert_eq!(verify_full(&m, next.snapshot_id.as_str()).await, N as u64);
}

// ---------------------------------------------------------------- locks

async fn plant_lock(repo: &Repository, holder: &str, pid: u32, exclusive: bool, expires_ms: u64) {
    let info = LockInfo {
        holder: holder.into(),
        pid,
        purpose: "prune".into(),
        exclusive,
        created_ms: now_ms().saturating_sub(600_000),
        expires_ms,
    };
    let name = format!("locks/{:016x}", u64::from(pid) << 20 | 0xabc);
    repo.backend()
        .write_if_absent(
            &object_key(&name).expect("key"),
            Bytes::from(serde_json::to_vec(&info).expect("json")),
        )
        .await
        .expect("plant lock");
}

/// A lock left by a killed process (expired) does not block a backup and is
/// removed; a live exclusive lock makes a backup wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_is_ignored_and_a_live_exclusive_lock_is_waited_for() {
    let chroma = ChromaServer::start();
    let setup = Setup::new();
    let config = setup.config(&chroma.url(), |_| {});
    let m = setup.manager(&config).await;
    seed(m.store(), "docs", 500, 32, 100).await;

    // Expired five minutes ago: removed, not waited for.
    plant_lock(&m.repo, "dead-host", 999_999, true, now_ms() - 300_000).await;
    let started = Instant::now();
    let snap = take(&m, BackupType::Full).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a stale lock delayed the backup by {:.2?}",
        started.elapsed()
    );
    assert!(
        list_locks(&m.repo).await.expect("locks").is_empty(),
        "the stale lock was removed"
    );
    assert_eq!(verify_full(&m, snap.snapshot_id.as_str()).await, 500);

    // A live exclusive lock expiring in 3 s: the backup waits, then runs.
    let wait = Duration::from_secs(3);
    plant_lock(
        &m.repo,
        "other-host",
        4242,
        true,
        now_ms() + u64::try_from(wait.as_millis()).expect("ms"),
    )
    .await;
    let started = Instant::now();
    let second = take(&m, BackupType::Full).await;
    let waited = started.elapsed();
    println!("backup behind a live exclusive lock took {waited:.2?}");
    assert!(
        waited >= wait - Duration::from_millis(300),
        "the backup did not wait for the live lock ({waited:.2?})"
    );
    assert_eq!(verify_full(&m, second.snapshot_id.as_str()).await, 500);
    assert!(list_locks(&m.repo).await.expect("locks").is_empty());

    // A shared lock (another backup) does not block a backup.
    plant_lock(&m.repo, "peer-host", 777, false, now_ms() + 300_000).await;
    let started = Instant::now();
    take(&m, BackupType::Full).await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A live exclusive lock that outlasts the wait fails the backup with an
/// error naming its holder. The engine waits `LOCK_WAIT` (60 s); the clock
/// is paused here so the test runs in well under a second of real time
/// (the lock's expiry is wall-clock, so it stays live throughout).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_live_exclusive_lock_fails_a_backup_naming_its_holder() {
    let setup = Setup::new();
    // No Chroma is needed: the lock is taken before Chroma is asked anything.
    let chroma: url::Url = "http://127.0.0.1:9/".parse().expect("url");
    let config = setup.config(&chroma, |_| {});
    let m = setup.manager(&config).await;
    plant_lock(&m.repo, "other-host", 4242, true, now_ms() + 3_600_000).await;

    // Through the lease directly, with a short wait.
    let err = Lease::acquire(
        &m.repo,
        false,
        "backup",
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await
    .err()
    .expect("a live exclusive lock blocks a shared one");
    let msg = err.to_string();
    assert!(matches!(err, BackupError::Locked(_)), "{msg}");
    for part in ["other-host", "4242", "prune", "exclusive"] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }

    // Through the manager, with its own wait.
    let started = tokio::time::Instant::now();
    let (progress, _rx) = Progress::detached();
    let err = m
        .create(
            request(BackupType::Full),
            &progress,
            &CancellationToken::new(),
        )
        .await
        .expect_err("backup blocked by a live exclusive lock");
    let msg = err.to_string();
    println!("after {:.2?} (paused clock): {msg}", started.elapsed());
    assert!(matches!(err, BackupError::Locked(_)), "{msg}");
    assert!(msg.contains("other-host") && msg.contains("4242"), "{msg}");
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "it waited first"
    );
    // Only the planted lock remains: the waiter removed its own attempts.
    let locks = list_locks(&m.repo).await.expect("locks");
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0].holder, "other-host");
}
