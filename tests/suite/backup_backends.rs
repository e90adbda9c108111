//! The backup engine on every storage backend: a local directory, S3 (moto),
//! Azure Blob (Azurite) and GCS (fake-gcs-server), each with an encrypted
//! repository and a real Chroma server.
//!
//! On each backend: a full, a collection and an incremental snapshot of two
//! collections (one l2, one cosine) holding documents, uris and metadata of
//! every type; each snapshot is restored `--as` a new name and compared field
//! by field with what Chroma held when it was taken — bit for bit for l2
//! (embeddings and float metadata), within the server's own rounding for
//! cosine embeddings and float metadata — together with each collection's
//! configuration and metadata; and `verify --full` passes for every snapshot.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::backup::compare::records_match;
use chromaprod::backup::crypto::MasterKey;
use chromaprod::backup::records::Record;
use chromaprod::backup::repository::Repository;
use chromaprod::backup::{
    BackupManager, BackupRequest, BackupType, Manifest, RestoreOptions, Trigger,
};
use chromaprod::chroma::{Collection, CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use chromaprod::storage::{Env, StorageOptions};
use common::chroma::ChromaServer;
use common::emulators::{self, AZURITE_ACCOUNT, AZURITE_KEY};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Records per collection.
const N: usize = 300;
/// Embedding dimension.
const DIM: usize = 24;

fn storage_options(env: Env) -> StorageOptions {
    StorageOptions {
        env,
        retry_base_delay: Duration::from_millis(20),
        ..StorageOptions::default()
    }
}

/// Irregular values (most are not exactly representable in decimal), so the
/// server's rounding in cosine collections really shows.
fn vector(i: usize, version: u32) -> Vec<f32> {
    (0..DIM)
        .map(|j| {
            let x = (i as f32 + 1.0) * (j as f32 + 0.5) + version as f32 * 0.37;
            x.sin() * (1.0 + (j % 5) as f32)
        })
        .collect()
}

fn metadata(name: &str, i: usize, version: u32) -> serde_json::Map<String, Value> {
    json!({
        "i": i,
        "neg": -(i as i64) * 1000 - 1,
        "big": 9_007_199_254_740_992i64 - i as i64,
        "f": i as f64 / 3.0 + 0.1,
        "tiny": (i as f64 + 1.0) * 1.0e-7,
        "b": i % 2 == 0,
        "s": format!("{name}-{i} ünïcödé ✓"),
        "version": version,
    })
    .as_object()
    .cloned()
    .expect("object")
}

fn batch(name: &str, range: impl Iterator<Item = usize>, version: u32) -> RecordBatch {
    let mut b = RecordBatch {
        ids: Vec::new(),
        embeddings: Some(Vec::new()),
        documents: Some(Vec::new()),
        metadatas: Some(Vec::new()),
        uris: Some(Vec::new()),
    };
    for i in range {
        b.ids.push(format!("{name}-{i:05}"));
        b.embeddings.as_mut().expect("e").push(vector(i, version));
        b.documents
            .as_mut()
            .expect("d")
            .push(Some(format!("{name} document {i} v{version} — ünïcödé")));
        b.metadatas
            .as_mut()
            .expect("m")
            .push(Some(metadata(name, i, version)));
        b.uris
            .as_mut()
            .expect("u")
            .push(Some(format!("s3://bucket/{name}/{i}?v={version}")));
    }
    b
}

/// Creates a collection with its own metadata and index settings, and `n` records.
async fn seed(store: &ProductionChromaStore, name: &str, space: &str, ef_search: u64, n: usize) {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: Some(
                json!({"owner": "tests", "space": space, "n": n, "ratio": 0.75, "live": true})
                    .as_object()
                    .cloned()
                    .expect("map"),
            ),
            configuration: Some(
                json!({"hnsw": {"space": space, "ef_search": ef_search, "ef_construction": 120, "max_neighbors": 12}}),
            ),
            get_or_create: false,
        })
        .await
        .expect("create collection");
    store
        .upsert(&col.id, &batch(name, 0..n, 0))
        .await
        .expect("seed");
}

async fn all_records(store: &ProductionChromaStore, name: &str) -> (Collection, Vec<Record>) {
    common::records::collection_records(store, name).await
}

/// Distance in units in the last place between two finite floats of one sign class.
fn ulps32(a: f32, b: f32) -> u64 {
    fn ordered(x: f32) -> i64 {
        let bits = i64::from(x.to_bits() as i32);
        if bits < 0 {
            i64::from(i32::MIN) - bits
        } else {
            bits
        }
    }
    ordered(a).abs_diff(ordered(b))
}

fn ulps64(a: f64, b: f64) -> u64 {
    fn ordered(x: f64) -> i128 {
        let bits = i128::from(x.to_bits() as i64);
        if bits < 0 {
            i128::from(i64::MIN) - bits
        } else {
            bits
        }
    }
    u64::try_from(ordered(a).abs_diff(ordered(b))).unwrap_or(u64::MAX)
}

/// How far the server may move a value it stores (measured: 1–2 ulp).
const SERVER_ROUNDING_ULPS: u64 = 4;

/// What Chroma held when the snapshot was taken, against what the restore
/// wrote: every record, every field; and the collection's configuration and
/// metadata.
fn assert_same(
    what: &str,
    (src_col, src): &(Collection, Vec<Record>),
    (dst_col, dst): &(Collection, Vec<Record>),
    cosine: bool,
) {
    assert_eq!(
        src_col.configuration_json, dst_col.configuration_json,
        "{what}: configuration"
    );
    assert_eq!(src_col.metadata, dst_col.metadata, "{what}: metadata");
    assert_eq!(
        dst_col.configuration_json.pointer("/hnsw/space"),
        Some(&Value::from(if cosine { "cosine" } else { "l2" })),
        "{what}: space"
    );
    for (field, value) in [
        ("ef_search", if cosine { 77 } else { 42 }),
        ("ef_construction", 120),
        ("max_neighbors", 12),
    ] {
        assert_eq!(
            dst_col
                .configuration_json
                .pointer(&format!("/hnsw/{field}")),
            Some(&Value::from(value)),
            "{what}: {field}"
        );
    }
    let ids = |v: &[Record]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(src), ids(dst), "{what}: ids");
    let (mut rounded, mut meta_rounded) = (0usize, 0usize);
    for (a, b) in src.iter().zip(dst) {
        let ctx = format!("{what}: record {}", a.id);
        assert_eq!(a.document, b.document, "{ctx}: document");
        assert_eq!(a.uri, b.uri, "{ctx}: uri");
        let (ea, eb) = (
            a.embedding.as_ref().expect("embedding"),
            b.embedding.as_ref().expect("embedding"),
        );
        assert_eq!(ea.len(), eb.len(), "{ctx}: dimension");
        for (x, y) in ea.iter().zip(eb) {
            if cosine {
                assert!(
                    ulps32(*x, *y) <= SERVER_ROUNDING_ULPS,
                    "{ctx}: embedding {x} vs {y} beyond the server's rounding"
                );
                rounded += usize::from(x.to_bits() != y.to_bits());
            } else {
                assert_eq!(x.to_bits(), y.to_bits(), "{ctx}: embedding not bit-exact");
            }
        }
        let (ma, mb) = (
            a.metadata.as_ref().expect("metadata"),
            b.metadata.as_ref().expect("metadata"),
        );
        assert_eq!(
            ma.keys().collect::<Vec<_>>(),
            mb.keys().collect::<Vec<_>>(),
            "{ctx}: metadata keys"
        );
        for (k, va) in ma {
            let vb = &mb[k];
            match (va, vb) {
                (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                    assert!(
                        x.is_f64() && y.is_f64(),
                        "{ctx}: metadata {k} changed type: {x} vs {y}"
                    );
                    let (x, y) = (x.as_f64().expect("f64"), y.as_f64().expect("f64"));
                    if !cosine {
                        assert_eq!(x.to_bits(), y.to_bits(), "{ctx}: float metadata {k}");
                    }
                    assert!(
                        ulps64(x, y) <= SERVER_ROUNDING_ULPS,
                        "{ctx}: float metadata {k}: {x} vs {y} beyond the server's rounding"
                    );
                    meta_rounded += usize::from(x.to_bits() != y.to_bits());
                }
                (Value::Number(x), Value::Number(y)) => {
                    assert_eq!(
                        (x.as_i64(), x.as_u64()),
                        (y.as_i64(), y.as_u64()),
                        "{ctx}: integer metadata {k}"
                    );
                }
                _ => assert_eq!(va, vb, "{ctx}: metadata {k}"),
            }
        }
        assert!(records_match(a, b, cosine), "{ctx}: records_match");
    }
    println!(
        "[{what}] {} records equal ({rounded} embedding floats and {meta_rounded} float metadata values moved by the server's rounding)",
        src.len()
    );
}

async fn take(m: &BackupManager, t: BackupType, collections: &[&str]) -> Manifest {
    let (progress, _rx) = Progress::detached();
    m.create(
        BackupRequest {
            backup_type: t,
            collections: collections.iter().map(|s| s.to_string()).collect(),
            trigger: Trigger::Command,
        },
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{t:?} backup: {e}"))
}

async fn restore_as(m: &BackupManager, snap: &Manifest, collection: &str, as_name: &str) {
    let (progress, _rx) = Progress::detached();
    m.restore(
        snap.snapshot_id.as_str(),
        &RestoreOptions::copy_as(collection, as_name),
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("restore {collection} as {as_name}: {e}"));
}

fn collection_names(snap: &Manifest) -> Vec<&str> {
    let mut v: Vec<&str> = snap.collections.iter().map(|c| c.name.as_str()).collect();
    v.sort_unstable();
    v
}

/// The whole scenario on one backend: `url` with `options` (the emulator's
/// endpoint and credentials).
async fn round_trips_on(label: &str, url: &str, options: StorageOptions) {
    let started = Instant::now();
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("key");
    common::daemon::write_key(&key_path);
    let key = MasterKey::from_file(&key_path).expect("read key");
    let mut c = Config::default();
    c.chroma.endpoints = vec![chroma.url()];
    c.backup.storage_path = url.to_string();
    c.backup.encrypt = true;
    c.backup.key_file = Some(key_path.clone());
    let config = Arc::new(c);
    let store =
        ProductionChromaStore::new(&config, Arc::new(MetricsCollector::new())).expect("store");
    let repo = Repository::open(url, &options, Some(&key), true)
        .await
        .unwrap_or_else(|e| panic!("[{label}] open repository {url}: {e}"));
    assert!(repo.config.encrypted);
    let m = BackupManager::with_repository(store.clone(), config.clone(), repo);

    seed(&store, "alpha", "l2", 42, N).await;
    seed(&store, "beta", "cosine", 77, N).await;
    let seeded = started.elapsed();

    // Full: both collections.
    let at_full = (
        all_records(&store, "alpha").await,
        all_records(&store, "beta").await,
    );
    let full = take(&m, BackupType::Full, &[]).await;
    assert!(full.encrypted, "[{label}] full snapshot is encrypted");
    assert_eq!(collection_names(&full), ["alpha", "beta"]);
    assert!(full.collections.iter().all(|c| c.record_count == N as u64));

    // Collection: only "beta".
    let coll = take(&m, BackupType::Collection, &["beta"]).await;
    assert_eq!(collection_names(&coll), ["beta"]);
    let at_coll = all_records(&store, "beta").await;

    // Change both collections: update, add, delete; then an incremental.
    for (name, col) in [("alpha", &at_full.0 .0), ("beta", &at_full.1 .0)] {
        store
            .upsert(&col.id, &batch(name, (0..N).step_by(10), 1))
            .await
            .expect("update");
        store
            .upsert(&col.id, &batch(name, N..N + 15, 1))
            .await
            .expect("add");
        let gone: Vec<String> = (5..N)
            .step_by(50)
            .map(|i| format!("{name}-{i:05}"))
            .collect();
        store
            .delete(&col.id, Some(&gone), None)
            .await
            .expect("delete");
    }
    let at_inc = (
        all_records(&store, "alpha").await,
        all_records(&store, "beta").await,
    );
    assert_eq!(at_inc.0 .1.len(), N + 15 - N.div_ceil(50));
    let inc = take(&m, BackupType::Incremental, &[]).await;
    assert!(inc.parent.is_some(), "[{label}] incremental has a parent");
    assert_eq!(collection_names(&inc), ["alpha", "beta"]);
    assert!(
        inc.bytes_written < full.bytes_written,
        "[{label}] incremental wrote {} bytes, the full {}",
        inc.bytes_written,
        full.bytes_written
    );
    let backed_up = started.elapsed();

    // Every snapshot restores as a new collection, equal to what it captured.
    restore_as(&m, &full, "alpha", "alpha_full").await;
    restore_as(&m, &full, "beta", "beta_full").await;
    restore_as(&m, &coll, "beta", "beta_coll").await;
    restore_as(&m, &inc, "alpha", "alpha_inc").await;
    restore_as(&m, &inc, "beta", "beta_inc").await;
    let restored = started.elapsed();
    for (what, source, target, cosine) in [
        ("full alpha (l2)", &at_full.0, "alpha_full", false),
        ("full beta (cosine)", &at_full.1, "beta_full", true),
        ("collection beta (cosine)", &at_coll, "beta_coll", true),
        ("incremental alpha (l2)", &at_inc.0, "alpha_inc", false),
        ("incremental beta (cosine)", &at_inc.1, "beta_inc", true),
    ] {
        let what = format!("{label}: {what}");
        assert_same(&what, source, &all_records(&store, target).await, cosine);
    }
    // The incremental holds the changes, not the state of its parent.
    let (_, a_inc) = all_records(&store, "alpha_inc").await;
    let r0 = a_inc
        .iter()
        .find(|r| r.id == "alpha-00000")
        .expect("alpha-00000");
    assert_eq!(r0.metadata.as_ref().expect("m")["version"], json!(1));
    assert!(a_inc.iter().any(|r| r.id == format!("alpha-{:05}", N + 14)));
    assert!(!a_inc.iter().any(|r| r.id == "alpha-00005"));

    // verify --full passes for every snapshot, and counts every record.
    let (progress, _rx) = Progress::detached();
    for (snap, records) in [
        (&full, 2 * N),
        (&coll, N),
        (&inc, at_inc.0 .1.len() + at_inc.1 .1.len()),
    ] {
        let report = m
            .verify(snap.snapshot_id.as_str(), true, &progress)
            .await
            .unwrap_or_else(|e| panic!("[{label}] verify --full {}: {e}", snap.snapshot_id));
        assert!(report.full);
        assert_eq!(report.records, records as u64, "[{label}] verified records");
        assert!(report.objects_checked > 0 && report.bytes_read > 0);
    }
    let listed = m.list().await.expect("list");
    assert_eq!(listed.len(), 3, "[{label}] three snapshots listed");
    println!(
        "[{label}] seed {seeded:.2?}, three backups {:.2?}, five restores {:.2?}, compare+verify {:.2?}; full wrote {} bytes, incremental {}",
        backed_up - seeded,
        restored - backed_up,
        started.elapsed() - restored,
        full.bytes_written,
        inc.bytes_written
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_full_collection_incremental_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    let url = root.to_str().expect("utf-8 path").to_string();
    round_trips_on("local", &url, storage_options(Env::default())).await;
    assert!(Path::new(&root).join("config").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_on_moto_full_collection_incremental_round_trip() {
    let emu = emulators::moto();
    emu.create_bucket("backups").await;
    let env = Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", emu.endpoint.as_str()),
    ]);
    round_trips_on("s3", "s3://backups/chroma/prod", storage_options(env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_on_azurite_full_collection_incremental_round_trip() {
    let emu = emulators::azurite();
    emu.create_bucket("backups").await;
    let env = Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.to_string()),
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.to_string()),
        (
            "AZURE_STORAGE_ENDPOINT",
            format!("{}/{AZURITE_ACCOUNT}", emu.endpoint),
        ),
    ]);
    round_trips_on("azure", "az://backups/chroma/prod", storage_options(env)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_on_fake_gcs_server_full_collection_incremental_round_trip() {
    let emu = emulators::fake_gcs();
    emu.create_bucket("backups").await;
    let env = Env::from_pairs([("STORAGE_EMULATOR_HOST", emu.endpoint.clone())]);
    round_trips_on("gcs", "gs://backups/chroma/prod", storage_options(env)).await;
}

/// An incremental after a collection-only snapshot: each other collection
/// is planned against the newest snapshot that holds it, so only what
/// changed is written (not a re-chunked copy of the whole collection, which
/// with changes spread over it rewrites nearly every chunk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_after_a_collection_snapshot_writes_only_what_changed() {
    const BIG: usize = 3000;
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("repo").display().to_string();
    let mut c = Config::default();
    c.chroma.endpoints = vec![chroma.url()];
    c.backup.storage_path = url.clone();
    let config = Arc::new(c);
    let store =
        ProductionChromaStore::new(&config, Arc::new(MetricsCollector::new())).expect("store");
    let repo = Repository::open(&url, &storage_options(Env::default()), None, true)
        .await
        .expect("open");
    let m = BackupManager::with_repository(store.clone(), config.clone(), repo);
    seed(&store, "alpha", "l2", 42, BIG).await;
    seed(&store, "beta", "l2", 42, 50).await;
    let full = take(&m, BackupType::Full, &[]).await;
    take(&m, BackupType::Collection, &["beta"]).await;
    // 1% of alpha changes, spread over it.
    let alpha = store.get_collection("alpha").await.expect("alpha");
    store
        .upsert(&alpha.id, &batch("alpha", (0..BIG).step_by(100), 1))
        .await
        .expect("update");
    let inc = take(&m, BackupType::Incremental, &[]).await;
    let ratio = inc.bytes_written as f64 / full.bytes_written as f64;
    assert!(
        ratio <= 0.1,
        "the incremental wrote {} of the full backup's {} bytes ({ratio:.2})",
        inc.bytes_written,
        full.bytes_written
    );
}
