//! The backup engine against a real Chroma server and a local repository:
//! round trips of every field, incrementals, integrity, encryption.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use chromaprod::backup::crypto::MasterKey;
use chromaprod::backup::{
    BackupError, BackupManager, BackupRequest, BackupType, RestoreOptions, Trigger,
};
use chromaprod::chroma::{CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use common::chroma::ChromaServer;
use common::proxy::{Fault, FaultProxy};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn config_for(chroma: &ChromaServer, repo: &Path, key: Option<&Path>) -> Arc<Config> {
    let mut c = Config::default();
    c.chroma.endpoints = vec![chroma.url()];
    c.backup.storage_path = repo.display().to_string();
    c.backup.encrypt = key.is_some();
    c.backup.key_file = key.map(Path::to_path_buf);
    Arc::new(c)
}

async fn manager(config: &Arc<Config>) -> BackupManager {
    let store =
        ProductionChromaStore::new(config, Arc::new(MetricsCollector::new())).expect("store");
    BackupManager::open(store, config.clone(), true)
        .await
        .expect("open repository")
}

fn vector(i: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| ((i * 31 + j * 7) % 997) as f32 / 997.0 - 0.5)
        .collect()
}

/// A collection with every field and metadata type; returns its id.
async fn seed(store: &ProductionChromaStore, name: &str, space: &str, n: usize) -> String {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: Some(
                json!({"owner": "tests", "version": 3})
                    .as_object()
                    .cloned()
                    .expect("map"),
            ),
            configuration: Some(json!({"hnsw": {"space": space, "ef_search": 42}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let mut batch = RecordBatch {
        ids: Vec::new(),
        embeddings: Some(Vec::new()),
        documents: Some(Vec::new()),
        metadatas: Some(Vec::new()),
        uris: Some(Vec::new()),
    };
    for i in 0..n {
        batch.ids.push(format!("id-{i:05}"));
        batch.embeddings.as_mut().expect("e").push(vector(i, 16));
        batch
            .documents
            .as_mut()
            .expect("d")
            .push(Some(format!("document number {i} — ünïcödé")));
        batch.metadatas.as_mut().expect("m").push(Some(
            json!({"i": i, "big": 9_007_199_254_740_993i64 - i as i64, "f": i as f64 / 3.0, "b": i % 2 == 0, "s": format!("s{i}")})
                .as_object()
                .cloned()
                .expect("map"),
        ));
        batch
            .uris
            .as_mut()
            .expect("u")
            .push(Some(format!("s3://bucket/{i}")));
    }
    store.upsert(&col.id, &batch).await.expect("upsert");
    col.id
}

async fn all_records(
    store: &ProductionChromaStore,
    name: &str,
) -> Vec<chromaprod::backup::records::Record> {
    common::records::collection_records(store, name).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backup_restores_every_field_exactly_for_l2() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("key");
    common::daemon::write_key(&key_path);
    let config = config_for(&chroma, &dir.path().join("repo"), Some(&key_path));
    let m = manager(&config).await;
    seed(m.store(), "docs", "l2", 1200).await;

    let (progress, _rx) = Progress::detached();
    let cancel = CancellationToken::new();
    let snap = full_backup(&m).await;
    assert_eq!(snap.collections.len(), 1);
    assert_eq!(snap.collections[0].record_count, 1200);
    assert!(snap.encrypted);

    let report = m
        .verify(snap.snapshot_id.as_str(), true, &progress)
        .await
        .expect("verify");
    assert_eq!(report.records, 1200);

    let opts = RestoreOptions::copy_as("docs", "docs_restored");
    m.restore(snap.snapshot_id.as_str(), &opts, &progress, &cancel)
        .await
        .expect("restore");
    let (a, b) = (
        all_records(m.store(), "docs").await,
        all_records(m.store(), "docs_restored").await,
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.id, y.id);
        let (ex, ey) = (
            x.embedding.as_ref().expect("e"),
            y.embedding.as_ref().expect("e"),
        );
        assert!(
            ex.iter().zip(ey).all(|(p, q)| p.to_bits() == q.to_bits()),
            "embedding of {} differs",
            x.id
        );
        assert_eq!(x.document, y.document);
        assert_eq!(x.uri, y.uri);
        let (mx, my) = (
            x.metadata.as_ref().expect("m"),
            y.metadata.as_ref().expect("m"),
        );
        for k in ["i", "big", "b", "s"] {
            assert_eq!(mx.get(k), my.get(k), "metadata {k} of {}", x.id);
        }
        assert!(mx["big"].is_i64() && my["big"].is_i64());
    }
    // Configuration and metadata came back too.
    let restored = m
        .store()
        .get_collection("docs_restored")
        .await
        .expect("get");
    assert_eq!(
        restored.configuration_json.pointer("/hnsw/space"),
        Some(&Value::from("l2"))
    );
    assert_eq!(
        restored.configuration_json.pointer("/hnsw/ef_search"),
        Some(&Value::from(42))
    );
    assert_eq!(
        restored.metadata.as_ref().and_then(|m| m.get("owner")),
        Some(&Value::from("tests"))
    );

    // fail-if-exists refuses; the target stays.
    let err = m
        .restore(snap.snapshot_id.as_str(), &opts, &progress, &cancel)
        .await
        .expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");

    // No plaintext document text in any stored object.
    for entry in walk(&dir.path().join("repo")) {
        let bytes = std::fs::read(&entry).expect("read");
        assert!(
            !contains(&bytes, "ünïcödé".as_bytes()),
            "plaintext in {}",
            entry.display()
        );
        assert!(
            !contains(&bytes, b"document number"),
            "plaintext in {}",
            entry.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_after_one_percent_writes_at_most_three_percent() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Record data only: the recall check's sample is an object of its own.
    let mut config = (*config_for(&chroma, &dir.path().join("repo"), None)).clone();
    config.backup.verify_queries = 0;
    let config = Arc::new(config);
    let m = manager(&config).await;
    let id = seed(m.store(), "docs", "l2", 3000).await;
    let (progress, _rx) = Progress::detached();
    let cancel = CancellationToken::new();
    let req = |t| BackupRequest {
        backup_type: t,
        collections: vec![],
        trigger: Trigger::Command,
    };
    let full = m
        .create(req(BackupType::Full), &progress, &cancel)
        .await
        .expect("full");

    // Update 1% of the records (spread over the collection).
    let ids: Vec<String> = (0..3000)
        .step_by(100)
        .map(|i| format!("id-{i:05}"))
        .collect();
    let batch = RecordBatch {
        embeddings: Some(ids.iter().map(|_| vec![0.25f32; 16]).collect()),
        documents: Some(ids.iter().map(|i| Some(format!("updated {i}"))).collect()),
        metadatas: None,
        uris: None,
        ids: ids.clone(),
    };
    m.store().upsert(&id, &batch).await.expect("update");
    let inc = m
        .create(req(BackupType::Incremental), &progress, &cancel)
        .await
        .expect("incremental");
    assert_eq!(inc.parent.as_ref(), Some(&full.snapshot_id));
    let ratio = inc.bytes_written as f64 / full.bytes_written as f64;
    assert!(
        ratio <= 0.03,
        "incremental wrote {} of the full backup's {} bytes ({ratio:.3})",
        inc.bytes_written,
        full.bytes_written
    );

    // The incremental restores on its own, with the updates.
    let opts = RestoreOptions {
        as_name: Some("docs_inc".into()),
        ..RestoreOptions::default()
    };
    m.restore(inc.snapshot_id.as_str(), &opts, &progress, &cancel)
        .await
        .expect("restore");
    let restored = all_records(m.store(), "docs_inc").await;
    assert_eq!(restored.len(), 3000);
    let r100 = restored
        .iter()
        .find(|r| r.id == "id-00100")
        .expect("record");
    assert_eq!(r100.document.as_deref(), Some("updated id-00100"));

    // Prune with keep_last = 1 removes the full snapshot but keeps every chunk the incremental needs.
    let mut c2 = (*config).clone();
    c2.backup.keep_last = 1;
    c2.backup.keep_daily = 0;
    c2.backup.keep_weekly = 0;
    c2.backup.keep_monthly = 0;
    c2.backup.retention_days = 0;
    let m2 = BackupManager::with_repository(m.store().clone(), Arc::new(c2), m.repo.clone());
    let dry = m2.prune(true).await.expect("dry run");
    assert_eq!(dry.snapshots_deleted, vec![full.snapshot_id.to_string()]);
    let pruned = m2.prune(false).await.expect("prune");
    assert_eq!(pruned.snapshots_kept, vec![inc.snapshot_id.to_string()]);
    m2.verify(inc.snapshot_id.as_str(), true, &progress)
        .await
        .expect("incremental still verifies after prune");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_objects_are_named_and_keys_are_enforced() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("key");
    common::daemon::write_key(&key_path);
    let repo = dir.path().join("repo");
    let config = config_for(&chroma, &repo, Some(&key_path));
    let m = manager(&config).await;
    seed(m.store(), "docs", "l2", 300).await;
    let (progress, _rx) = Progress::detached();
    let cancel = CancellationToken::new();
    let snap = full_backup(&m).await;

    // Wrong key and no key: refused with a clear error.
    let other = dir.path().join("other-key");
    common::daemon::write_key(&other);
    let wrong = config_for(&chroma, &repo, Some(&other));
    let store =
        ProductionChromaStore::new(&wrong, Arc::new(MetricsCollector::new())).expect("store");
    let err = BackupManager::open(store.clone(), wrong, false)
        .await
        .err()
        .expect("wrong key refused");
    assert!(err.to_string().to_lowercase().contains("key"), "{err}");
    let none = config_for(&chroma, &repo, None);
    let err = BackupManager::open(store.clone(), none, false)
        .await
        .err()
        .expect("no key refused");
    assert!(err.to_string().contains("encrypted"), "{err}");
    let missing = config_for(&chroma, &repo, Some(&dir.path().join("nope")));
    let err = BackupManager::open(store, missing, false)
        .await
        .err()
        .expect("missing key refused");
    assert!(err.to_string().contains("nope"), "{err}");

    // Flip one byte in one chunk: verify --full names it; restore fails; the target is untouched.
    let chunk = &snap.collections[0].chunks[0];
    let path = repo.join("chunks").join(&chunk.id[..2]).join(&chunk.id);
    let mut bytes = std::fs::read(&path).expect("read chunk");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = m
        .verify(snap.snapshot_id.as_str(), true, &progress)
        .await
        .expect_err("verify fails");
    assert!(err.to_string().contains(&chunk.id), "{err}");
    let opts = RestoreOptions {
        as_name: Some("docs_r".into()),
        ..RestoreOptions::default()
    };
    let err = m
        .restore(snap.snapshot_id.as_str(), &opts, &progress, &cancel)
        .await
        .expect_err("restore fails");
    assert!(err.to_string().contains(&chunk.id), "{err}");
    assert!(
        m.store().get_collection("docs_r").await.is_err(),
        "a failed restore left a collection"
    );

    // Without the key, a check of every stored object finds it too.
    let keyless = chromaprod::backup::repository::Repository::open_keyless(
        &repo.display().to_string(),
        &chromaprod::storage::StorageOptions::default(),
    )
    .await
    .expect("open without key");
    let err = keyless
        .check_objects()
        .await
        .expect_err("damage found without the key");
    assert!(err.to_string().contains(&chunk.id), "{err}");

    // Truncate it: the cheap verify (sizes) catches it too.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = m
        .verify(snap.snapshot_id.as_str(), false, &progress)
        .await
        .expect_err("verify fails");
    assert!(err.to_string().contains(&chunk.id), "{err}");
    // Missing.
    std::fs::remove_file(&path).expect("remove");
    let err = m
        .verify(snap.snapshot_id.as_str(), false, &progress)
        .await
        .expect_err("verify fails");
    assert!(
        err.to_string().contains(&chunk.id) && err.to_string().contains("missing"),
        "{err}"
    );
    // Hostile snapshot ids never reach the backend.
    for bad in [
        "../../etc/passwd",
        "0123456789abcdef/..",
        "ABCDEF0123456789",
    ] {
        let err = m.show(bad).await.expect_err("rejected");
        assert!(err.to_string().contains("invalid snapshot id"), "{err}");
    }
}

/// The restore's read-back decides: a staging copy that does not read back
/// as backed up is never swapped in, and is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_copy_does_not_read_back_as_backed_up_is_refused() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_for(&chroma, &dir.path().join("repo"), None);
    let direct = manager(&config).await;
    seed(direct.store(), "docs", "l2", 1200).await;
    let snap = full_backup(&direct).await;

    // The restore reaches Chroma through a proxy that holds every request
    // back, which leaves time to change the staging copy after the write
    // pass and before its last records are read back (ids 1000–1199, the
    // last `get` of the one chunk).
    let proxy = FaultProxy::start(chroma.addr()).await;
    proxy.set(Fault::Latency(Duration::from_millis(500)));
    let mut c = (*config).clone();
    c.chroma.endpoints = vec![proxy.url()];
    let slow = manager(&Arc::new(c)).await;
    let (progress, mut rx) = Progress::detached();
    let staging = format!("docs_restored-restore-{}", snap.snapshot_id);
    let store = direct.store().clone();
    let tamper = tokio::spawn(async move {
        loop {
            let ev = rx.recv().await.expect("progress");
            assert_ne!(ev["phase"], "restore_verify", "read back before the change");
            if ev["phase"] == "restore" && ev["records_done"] == 1200 {
                break;
            }
        }
        let id = store.get_collection(&staging).await.expect("staging").id;
        store
            .update(
                &id,
                &RecordBatch {
                    ids: vec!["id-01199".into()],
                    embeddings: None,
                    documents: Some(vec![Some("changed behind the restore".into())]),
                    metadatas: None,
                    uris: None,
                },
            )
            .await
            .expect("update");
    });
    let err = slow
        .restore(
            snap.snapshot_id.as_str(),
            &RestoreOptions::copy_as("docs", "docs_restored"),
            &progress,
            &CancellationToken::new(),
        )
        .await
        .expect_err("the read-back differs");
    tamper.await.expect("tamper");
    assert!(matches!(err, BackupError::RestoreMismatch { .. }), "{err}");
    assert!(err.to_string().contains("\"id-01199\""), "{err}");
    let names: Vec<String> = direct
        .store()
        .list_collections()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["docs"], "nothing swapped in, staging removed");
}

async fn full_backup(m: &BackupManager) -> chromaprod::backup::Manifest {
    let (progress, _rx) = Progress::detached();
    m.create(
        BackupRequest {
            backup_type: BackupType::Full,
            collections: vec![],
            trigger: Trigger::Command,
        },
        &progress,
        &CancellationToken::new(),
    )
    .await
    .expect("backup")
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn config_with_state(
    chroma: &ChromaServer,
    repo: &Path,
    key: Option<&Path>,
    state: &Path,
) -> Arc<Config> {
    std::fs::create_dir_all(state).expect("state dir");
    let mut c = (*config_for(chroma, repo, key)).clone();
    c.daemon.state_dir = state.to_path_buf();
    Arc::new(c)
}

async fn open_err(config: &Arc<Config>, create: bool) -> BackupError {
    let store =
        ProductionChromaStore::new(config, Arc::new(MetricsCollector::new())).expect("store");
    match BackupManager::open(store, config.clone(), create).await {
        Ok(m) => panic!(
            "the repository was opened (id {}), but it must be refused",
            m.repo.config.repository_id
        ),
        Err(e) => e,
    }
}

/// Deleting a repository's `config` object (a lifecycle rule, a bad `rm`, a
/// half-synced copy) must never make the next backup create a second
/// repository, with a new data key, over the first one's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_missing_its_config_is_refused_not_recreated() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("key");
    common::daemon::write_key(&key_path);
    let repo = dir.path().join("repo");
    // What is not chromaprod's at the location (a mount point's lost+found,
    // a note) does not stop a repository being created there.
    std::fs::create_dir_all(repo.join("lost+found")).expect("lost+found");
    std::fs::write(repo.join("README.txt"), "backups of the docs cluster\n").expect("note");
    let config = config_with_state(&chroma, &repo, Some(&key_path), &dir.path().join("state"));
    let m = manager(&config).await;
    seed(m.store(), "docs", "l2", 120).await;
    let first = full_backup(&m).await;

    let saved = std::fs::read(repo.join("config")).expect("config object");
    std::fs::remove_file(repo.join("config")).expect("delete config");
    let before = walk(&repo);

    for create in [true, false] {
        let err = open_err(&config, create).await;
        let msg = err.to_string();
        assert_eq!(err.kind(), "corrupt", "{msg}");
        assert!(msg.contains("no `config` object"), "{msg}");
        assert!(msg.contains(&repo.display().to_string()), "{msg}");
        assert!(msg.contains("empty location"), "says what to do: {msg}");
    }
    assert_eq!(walk(&repo), before, "nothing was written to the repository");

    // Put back, the config makes the repository whole again.
    std::fs::write(repo.join("config"), saved).expect("restore config");
    let ids: Vec<String> = manager(&config)
        .await
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.metadata.backup_id.to_string())
        .collect();
    assert_eq!(ids, vec![first.snapshot_id.to_string()]);
}

/// A repository is created by writing its key slots, then its `config`.
/// Between the two, a reader (`backups list`, the daemon's scheduled backup
/// polled by an operator) must see no repository yet, not a damaged one, and
/// a second creator must be told to retry, not that the repository is corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_being_created_is_no_repository_yet_to_readers_and_busy_to_creators() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("key");
    common::daemon::write_key(&key_path);
    let repo = dir.path().join("repo");
    let created = config_with_state(&chroma, &repo, Some(&key_path), &dir.path().join("state"));
    drop(manager(&created).await);
    // What a creator has written just before its `config`: the key slots.
    std::fs::remove_file(repo.join("config")).expect("delete config");
    assert!(
        walk(&repo).iter().all(|p| p.starts_with(repo.join("keys"))),
        "only key slots are left: {:?}",
        walk(&repo)
    );
    let before = walk(&repo);
    // Another host (no pin in its state directory) opens the location.
    let config = config_with_state(&chroma, &repo, Some(&key_path), &dir.path().join("other"));

    let err = open_err(&config, false).await;
    assert!(
        matches!(err, BackupError::NoRepository { .. }),
        "a reader sees no repository yet: {err}"
    );
    let err = open_err(&config, true).await;
    let msg = err.to_string();
    assert_eq!(err.kind(), "busy", "{msg}");
    assert!(msg.contains("being created"), "{msg}");
    assert!(msg.contains("keys/"), "says what to do if no one is: {msg}");
    assert_eq!(walk(&repo), before, "nothing was written to the repository");
}

/// What another process does to the location at the worst moment.
#[derive(Debug)]
enum Race {
    /// A creator writes its `config` (these bytes), then its lock, the first
    /// time the location is listed: between a reader's look for the
    /// `config` and its listing of what else is there.
    CreatorFinishes(bytes::Bytes),
    /// Another creator's `config` (these bytes) is stored just before this
    /// process writes its own.
    CreatorWins(bytes::Bytes),
    /// This process's `config` is stored, but the response is lost and the
    /// retried write finds it there (`AlreadyExists`).
    LostResponse,
}

/// The local backend, with a [`Race`].
#[derive(Debug)]
struct Racing {
    inner: Arc<dyn chromaprod::storage::Backend>,
    race: Race,
    done: std::sync::atomic::AtomicBool,
}

type Fut<'a, T> = futures_util::future::BoxFuture<'a, chromaprod::storage::Result<T>>;
type Key = chromaprod::storage::ObjectKey;

impl Racing {
    fn first(&self) -> bool {
        !self.done.swap(true, std::sync::atomic::Ordering::SeqCst)
    }
}

impl chromaprod::storage::Backend for Racing {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list<'a>(
        &'a self,
        prefix: Option<&'a Key>,
    ) -> Fut<'a, Vec<chromaprod::storage::ObjectMeta>> {
        Box::pin(async move {
            if let Race::CreatorFinishes(config) = &self.race {
                if self.first() {
                    let key = |k: &str| Key::new(k).expect("key");
                    self.inner
                        .write_if_absent(&key("config"), config.clone())
                        .await?;
                    self.inner
                        .write_if_absent(&key("locks/creator"), bytes::Bytes::from_static(b"lock"))
                        .await?;
                }
            }
            self.inner.list(prefix).await
        })
    }
    fn read<'a>(&'a self, key: &'a Key) -> Fut<'a, bytes::Bytes> {
        self.inner.read(key)
    }
    fn read_range<'a>(
        &'a self,
        key: &'a Key,
        range: std::ops::Range<u64>,
    ) -> Fut<'a, bytes::Bytes> {
        self.inner.read_range(key, range)
    }
    fn write_if_absent<'a>(
        &'a self,
        key: &'a Key,
        data: bytes::Bytes,
    ) -> Fut<'a, chromaprod::storage::Written> {
        Box::pin(async move {
            if key.as_str() == "config" {
                match &self.race {
                    Race::CreatorWins(theirs) if self.first() => {
                        self.inner.write_if_absent(key, theirs.clone()).await?;
                    }
                    Race::LostResponse if self.first() => {
                        self.inner.write_if_absent(key, data.clone()).await?;
                    }
                    _ => {}
                }
            }
            self.inner.write_if_absent(key, data).await
        })
    }
    fn delete<'a>(&'a self, key: &'a Key) -> Fut<'a, ()> {
        self.inner.delete(key)
    }
    fn head<'a>(&'a self, key: &'a Key) -> Fut<'a, Option<chromaprod::storage::ObjectMeta>> {
        self.inner.head(key)
    }
}

fn racing(url: &str, race: Race) -> Arc<Racing> {
    use chromaprod::storage::StorageOptions;
    Arc::new(Racing {
        inner: chromaprod::storage::open(url, &StorageOptions::default()).expect("backend"),
        race,
        done: std::sync::atomic::AtomicBool::new(false),
    })
}

/// Creating a repository races with other processes at three moments, and
/// none may leave two data keys in one repository or call a new one damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_creation_races_end_in_one_repository() {
    use chromaprod::backup::repository::Repository;
    use chromaprod::storage::StorageOptions;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = MasterKey::generate().expect("key");
    let repo = dir.path().join("repo");
    let url = format!("file://{}", repo.display());
    let created = Repository::open(&url, &StorageOptions::default(), Some(&key), true)
        .await
        .expect("create");
    let config = bytes::Bytes::from(std::fs::read(repo.join("config")).expect("config"));

    // A reader (or a second creator) that found no `config`, then lists the
    // location as the creator writes its `config` and lock, opens the new
    // repository.
    for create in [false, true] {
        std::fs::remove_file(repo.join("config")).expect("delete config");
        let _ = std::fs::remove_dir_all(repo.join("locks"));
        let backend = racing(&url, Race::CreatorFinishes(config.clone()));
        let opened = Repository::open_on(backend, &url, Some(&key), create)
            .await
            .unwrap_or_else(|e| panic!("create={create}: the new repository is opened: {e}"));
        assert_eq!(
            opened.config.repository_id, created.config.repository_id,
            "create={create}"
        );
    }

    // A creator that loses the race for the `config` to another creator
    // (another key) removes its key slot: only the winner's stays.
    let other = dir.path().join("other");
    let other_url = format!("file://{}", other.display());
    let mine = MasterKey::generate().expect("key");
    let err = Repository::open_on(
        racing(&other_url, Race::CreatorWins(config.clone())),
        &other_url,
        Some(&mine),
        true,
    )
    .await
    .expect_err("the other creator won");
    assert_eq!(err.kind(), "busy", "{err}");
    assert!(
        walk(&other.join("keys")).is_empty(),
        "the loser's key slot was removed: {:?}",
        walk(&other)
    );

    // A `config` write whose response was lost, retried: the repository is
    // this process's own.
    let third = dir.path().join("third");
    let third_url = format!("file://{}", third.display());
    let opened = Repository::open_on(
        racing(&third_url, Race::LostResponse),
        &third_url,
        Some(&mine),
        true,
    )
    .await
    .expect("its own config");
    let reopened = Repository::open(&third_url, &StorageOptions::default(), Some(&mine), false)
        .await
        .expect("reopen");
    assert_eq!(opened.config.repository_id, reopened.config.repository_id);
}

/// The repository a host backs up to is pinned in its state directory: one
/// recreated or replaced at the same location is refused until the operator
/// says the change is intended (by removing the pin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_replaced_at_its_location_is_refused_by_its_pin() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let state = dir.path().join("state");
    let config = config_with_state(&chroma, &repo, None, &state);
    let m = manager(&config).await;
    seed(m.store(), "docs", "l2", 50).await;
    full_backup(&m).await;
    let pinned = m.repo.config.repository_id.clone();

    // The whole repository is gone: the next backup must not start a new one.
    std::fs::rename(&repo, dir.path().join("repo.moved")).expect("move repository");
    let err = open_err(&config, true).await;
    let msg = err.to_string();
    assert!(msg.contains(&pinned), "{msg}");
    assert!(msg.contains("remove"), "says what to do: {msg}");
    assert!(
        walk(&repo).is_empty(),
        "no repository was created in its place"
    );

    // Someone else's new repository at the same location: refused too.
    let other = config_with_state(&chroma, &repo, None, &dir.path().join("other-state"));
    let replacement = manager(&other).await.repo.config.repository_id.clone();
    let err = open_err(&config, true).await;
    let msg = err.to_string();
    assert!(msg.contains(&pinned) && msg.contains(&replacement), "{msg}");
    let pin_file = msg
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == ';' || c == ',' || c == ':' || c == '.'))
        .find(|w| w.starts_with(&state.display().to_string()))
        .unwrap_or_else(|| panic!("the error names the pin file: {msg}"))
        .to_string();

    // Removing the pin accepts the new repository, and pins it.
    std::fs::remove_file(&pin_file).expect("remove pin");
    assert_eq!(
        manager(&config).await.repo.config.repository_id,
        replacement
    );
    assert!(std::path::Path::new(&pin_file).exists(), "pinned again");
}

/// Each kind of object has its own size limit, checked before its body is
/// read or decompressed: a manifest that expands to 100 MiB, or a 20 MiB
/// `config`, is refused instead of being taken into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_past_their_kinds_size_limit_are_refused_unread() {
    use chromaprod::backup::format::{self, Codec, ObjectKind};
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let config = config_with_state(&chroma, &repo, None, &dir.path().join("state"));
    let m = manager(&config).await;
    seed(m.store(), "docs", "l2", 20).await;
    full_backup(&m).await;

    // A small stored manifest that decompresses to 100 MiB.
    let bomb = format::encode(ObjectKind::Manifest, &vec![b' '; 100 << 20], &Codec::Plain)
        .expect("encode");
    assert!(bomb.bytes.len() < 64 * 1024, "{} bytes", bomb.bytes.len());
    std::fs::write(repo.join("snapshots/00000000000000aa"), &bomb.bytes).expect("plant");
    let err = m
        .show("00000000000000aa")
        .await
        .expect_err("a bomb is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("manifest object is larger than the limit"),
        "{msg}"
    );

    // A `config` far past a few KiB is refused before it is read.
    std::fs::write(repo.join("config"), vec![0u8; 20 << 20]).expect("plant");
    let err = open_err(&config, false).await;
    let msg = err.to_string();
    assert!(msg.contains("object config is damaged"), "{msg}");
    assert!(msg.contains("it was not read"), "{msg}");
}
