//! Migration safety against a real Chroma server: a damaged lock record
//! gives an error that says what to do (no panic, no spin), lost claims of
//! the lock pause and give up after `migrations.lock_wait`, and a rebuild
//! run again after `down` never deletes the kept collection (which by then
//! holds the writes made after the first `up`) without a restore point.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::backup::{BackupManager, RestoreOptions};
use chromaprod::chroma::{CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::migrate::history::{HistoryStore, LockRecord};
use chromaprod::migrate::lease::MigrationLease;
use chromaprod::migrate::{MigrationError, MigrationManager};
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use common::chroma::ChromaServer;
use common::proxy::FaultProxy;
use common::records::collection_records;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const HISTORY: &str = "chromaprod-migrations";

/// A Chroma server behind a counting proxy, a config whose migrations live
/// in a temporary directory, and a store that talks through the proxy.
struct Env {
    _chroma: ChromaServer,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
    store: ProductionChromaStore,
    config: Arc<Config>,
}

impl Env {
    async fn new(restore_point: bool, lock_wait: Duration) -> Env {
        let chroma = ChromaServer::start();
        let proxy = FaultProxy::start(chroma.addr()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Config::default();
        c.chroma.endpoints = vec![proxy.url()];
        c.migrations.path = dir.path().join("migrations");
        c.migrations.restore_point = restore_point;
        c.migrations.lock_wait = lock_wait;
        c.backup.storage_path = dir.path().join("repo").display().to_string();
        std::fs::create_dir_all(&c.migrations.path).expect("mkdir");
        let config = Arc::new(c);
        let store =
            ProductionChromaStore::new(&config, Arc::new(MetricsCollector::new())).expect("store");
        Env {
            _chroma: chroma,
            proxy,
            _dir: dir,
            store,
            config,
        }
    }

    fn file(&self, name: &str, text: &str) {
        std::fs::write(self.config.migrations.path.join(name), text).expect("write migration");
    }

    fn manager(&self) -> MigrationManager {
        MigrationManager::new(
            self.store.clone(),
            self.config.clone(),
            Arc::new(MetricsCollector::new()),
        )
    }

    async fn up(&self) -> Result<Value, MigrationError> {
        let (p, _rx) = Progress::detached();
        let r = self.manager().up(None, &p, &CancellationToken::new()).await;
        r.map(|r| serde_json::to_value(r).expect("report"))
    }

    async fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .store
            .list_collections()
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.name)
            .filter(|n| n != HISTORY && n != chromaprod::chroma::swap::JOURNAL_COLLECTION)
            .collect();
        v.sort();
        v
    }

    async fn count(&self, name: &str) -> u64 {
        let c = self.store.get_collection(name).await.expect(name);
        self.store.count(&c.id).await.expect("count")
    }
}

fn vector(i: usize, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim)
        .map(|j| (((i * 31 + j * 17) % 211) as f32 / 211.0) - 0.5 + f32::from(j == i % dim))
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn records(prefix: &str, range: std::ops::Range<usize>, dim: usize) -> RecordBatch {
    RecordBatch {
        ids: range.clone().map(|i| format!("{prefix}{i:05}")).collect(),
        embeddings: Some(range.clone().map(|i| vector(i, dim)).collect()),
        documents: Some(range.map(|i| Some(format!("{prefix} {i}"))).collect()),
        metadatas: None,
        uris: None,
    }
}

async fn seed(store: &ProductionChromaStore, name: &str, n: usize, dim: usize) -> String {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: None,
            configuration: Some(json!({"hnsw": {"space": "l2"}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    store
        .upsert(&col.id, &records("d", 0..n, dim))
        .await
        .expect("seed");
    col.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_record_at_the_last_token_is_refused_with_what_to_do() {
    let env = Env::new(false, Duration::from_secs(3)).await;
    seed(&env.store, "docs", 10, 4).await;
    env.file(
        "0001_meta.toml",
        "version = 1\nname = \"meta\"\n[[up]]\nop = \"update_collection_metadata\"\ncollection = \"docs\"\nset = { stage = 1 }\n",
    );
    let history = HistoryStore::open(env.store.clone(), HISTORY)
        .await
        .expect("history");
    // A lease record no counting up could have made: the last token there is.
    history
        .claim(&LockRecord {
            token: u64::MAX,
            holder: "ops@db-9 (pid 1) #3".into(),
            acquired_ms: 0,
            expires_ms: 0,
            released: true,
        })
        .await
        .expect("plant");
    env.proxy.reset_counters();
    let started = Instant::now();
    let run = tokio::spawn({
        let m = env.manager();
        async move {
            let (p, _rx) = Progress::detached();
            m.up(None, &p, &CancellationToken::new()).await
        }
    });
    let err = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("up gave an answer instead of spinning")
        .expect("up did not panic")
        .expect_err("no lease can follow the last token");
    let elapsed = started.elapsed();
    let msg = err.to_string();
    assert_eq!(err.code(), "lock_damaged", "{msg}");
    assert!(
        msg.contains("lock-18446744073709551615")
            && msg.contains(HISTORY)
            && msg.contains("delete")
            && msg.contains("no migration runs"),
        "the error names the record, where it is and what to do: {msg}"
    );
    assert!(
        elapsed < env.config.migrations.lock_wait,
        "refused at once, not after waiting: {elapsed:?}"
    );
    assert!(
        env.proxy.requests() < 20,
        "{} requests to Chroma",
        env.proxy.requests()
    );
    let docs = env.store.get_collection("docs").await.expect("docs");
    assert_eq!(docs.metadata, None, "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_claims_pause_and_give_up_after_lock_wait() {
    let env = Env::new(false, Duration::from_secs(2)).await;
    let history = HistoryStore::open(env.store.clone(), HISTORY)
        .await
        .expect("history");
    let col = env.store.get_collection(HISTORY).await.expect("history");
    // A damaged record under the first lease's id that is not a lease: no
    // lease shows, and every claim of token 1 is lost to it.
    env.store
        .upsert(
            &col.id,
            &RecordBatch {
                ids: vec!["lock-000000000001".into()],
                embeddings: Some(vec![vec![0.0]]),
                documents: Some(vec![Some("{".into())]),
                metadatas: Some(vec![Some(
                    json!({"kind": "note"}).as_object().cloned().expect("map"),
                )]),
                uris: None,
            },
        )
        .await
        .expect("plant");
    let wait = Duration::from_secs(2);
    env.proxy.reset_counters();
    let started = Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        MigrationLease::acquire(&history, "me", Duration::from_secs(30), wait, |_| {}),
    )
    .await
    .expect("acquire gave up instead of spinning");
    let elapsed = started.elapsed();
    let Err(err) = got else {
        panic!("a claim was won against the damaged record")
    };
    let msg = err.to_string();
    assert_eq!(err.code(), "lock_damaged", "{msg}");
    assert!(
        msg.contains("lock-000000000001") && msg.contains(HISTORY),
        "{msg}"
    );
    assert!(
        elapsed >= wait && elapsed < wait + Duration::from_secs(3),
        "gave up after lock_wait: {elapsed:?}"
    );
    // A pause between claims: a few requests per try, a few tries a second.
    let requests = env.proxy.requests();
    assert!(requests < 100, "{requests} requests in {elapsed:?}");

    // A live lease held by another runner: waited for, then refused naming
    // it, with requests spaced out as well.
    env.store
        .delete(&col.id, Some(&["lock-000000000001".to_string()]), None)
        .await
        .expect("remove the damaged record");
    let held = MigrationLease::acquire(
        &history,
        "ops@db-7 (pid 4242) #1",
        Duration::from_secs(30),
        wait,
        |_| {},
    )
    .await
    .expect("first runner");
    env.proxy.reset_counters();
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        MigrationLease::acquire(&history, "me", Duration::from_secs(30), wait, |_| {}),
    )
    .await
    .expect("acquire gave up")
    .err()
    .expect("the lock is held");
    let elapsed = started.elapsed();
    assert!(matches!(err, MigrationError::LockTimeout { .. }), "{err}");
    assert!(err.to_string().contains("ops@db-7 (pid 4242)"), "{err}");
    assert!(
        elapsed >= wait && elapsed < wait + Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(env.proxy.requests() < 40, "{}", env.proxy.requests());
    held.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_run_again_after_down_keeps_the_writes_in_the_kept_collection() {
    let mut env = Env::new(false, Duration::from_secs(5)).await;
    let original = seed(&env.store, "docs", 300, 8).await;
    env.file(
        "0001_docs_cosine.toml",
        "version = 1\nname = \"docs cosine\"\n[[up]]\nop = \"rebuild\"\ncollection = \"docs\"\nconfiguration = { hnsw = { space = \"cosine\" } }\nsample = 20\nk = 5\nsettle_ms = 0\n",
    );
    env.up().await.expect("rebuild");
    // Writes made after the swap go to the rebuilt collection...
    let rebuilt = env.store.get_collection("docs").await.expect("docs");
    env.store
        .upsert(&rebuilt.id, &records("late", 0..20, 8))
        .await
        .expect("late writes");
    // ...which `down` keeps as docs.pre-v1, with them.
    let (p, _rx) = Progress::detached();
    env.manager()
        .down(0, &p, &CancellationToken::new())
        .await
        .expect("down");
    assert_eq!(
        env.store.get_collection("docs").await.expect("docs").id,
        original
    );
    assert_eq!(env.count("docs.pre-v1").await, 320);

    // Without restore points, up again would delete it: refused, with the
    // command that keeps it, before anything changed.
    let err = env.up().await.expect_err("deleting the kept collection");
    let msg = err.to_string();
    assert_eq!(err.code(), "kept_collection", "{msg}");
    assert!(
        msg.contains("docs.pre-v1")
            && msg.contains("chromaprod backup --collection docs.pre-v1 --wait")
            && msg.contains("migrations.restore_point"),
        "{msg}"
    );
    assert_eq!(env.names().await, vec!["docs", "docs.pre-v1"]);
    assert_eq!(env.count("docs.pre-v1").await, 320);
    assert_eq!(
        env.store.get_collection("docs").await.expect("docs").id,
        original
    );
    assert!(env.manager().history().await.expect("history").is_empty());

    // With restore points, the kept collection is backed up before it goes.
    let mut c = (*env.config).clone();
    c.migrations.restore_point = true;
    env.config = Arc::new(c);
    let r = env.up().await.expect("rebuild again");
    let snapshot = r["restore_point"]
        .as_str()
        .expect("a restore point")
        .to_string();
    assert_eq!(
        r["applied"][0]["operations"][0]["deleted_kept"],
        json!({"collection": "docs.pre-v1", "restore_point": snapshot}),
        "{r}"
    );
    assert_eq!(
        env.store
            .get_collection("docs.pre-v1")
            .await
            .expect("kept")
            .id,
        original,
        "the kept collection is now the one this run replaced"
    );
    let backups = BackupManager::open(env.store.clone(), env.config.clone(), false)
        .await
        .expect("repo");
    let (p, _rx) = Progress::detached();
    backups
        .restore(
            &snapshot,
            &RestoreOptions::copy_as("docs.pre-v1", "docs-late"),
            &p,
            &CancellationToken::new(),
        )
        .await
        .expect("restore the deleted kept collection");
    let (_, back) = collection_records(&env.store, "docs-late").await;
    assert_eq!(back.len(), 320);
    assert_eq!(
        back.iter().filter(|r| r.id.starts_with("late")).count(),
        20,
        "the writes made after the first up are in the restore point"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_onto_a_kept_collection_is_refused_with_the_command_that_keeps_it() {
    let env = Env::new(false, Duration::from_secs(5)).await;
    env.file(
        "0001_notes.toml",
        "version = 1\nname = \"notes\"\n[[up]]\nop = \"create_collection\"\nname = \"notes\"\n",
    );
    let down = async || {
        let (p, _rx) = Progress::detached();
        env.manager().down(0, &p, &CancellationToken::new()).await
    };
    env.up().await.expect("create");
    let notes = env.store.get_collection("notes").await.expect("notes");
    env.store
        .upsert(&notes.id, &records("n", 0..5, 4))
        .await
        .expect("write");
    // `down` drops it aside, kept with its records; up creates it anew.
    down().await.expect("down");
    env.up().await.expect("create again");
    assert_eq!(env.names().await, vec!["notes", "notes.dropped-v1"]);
    let err = down().await.expect_err("the kept collection is in the way");
    let msg = err.to_string();
    assert!(
        msg.contains("chromaprod backup --collection notes.dropped-v1 --wait"),
        "{msg}"
    );
    assert_eq!(env.count("notes.dropped-v1").await, 5, "kept as it was");
}
