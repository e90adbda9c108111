//! `MigrationManager` against a real Chroma server: every operation forward,
//! down and forward again; a migration failing halfway; edited files,
//! `repair` and `stamp`; rebuilds to another metric, with a writer running.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chromaprod::backup::{BackupManager, RestoreMode, RestoreOptions, Trigger};
use chromaprod::chroma::{Collection, CreateCollection, ProductionChromaStore, RecordBatch};
use chromaprod::config::Config;
use chromaprod::migrate::{
    HistoryEntry, MigrationError, MigrationManager, MigrationState, Outcome,
};
use chromaprod::observe::MetricsCollector;
use chromaprod::progress::Progress;
use common::chroma::ChromaServer;
use common::records::collection_records;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Env {
    _chroma: ChromaServer,
    dir: tempfile::TempDir,
    store: ProductionChromaStore,
    config: Arc<Config>,
}

impl Env {
    async fn new(chroma: ChromaServer) -> Env {
        let url = chroma.url();
        Env::via(chroma, url).await
    }

    /// As [`Env::new`], with `chroma.persist_directory` set to the
    /// server's: catch-up passes read Chroma's change feed.
    async fn local(chroma: ChromaServer) -> Env {
        let url = chroma.url();
        let persist = chroma.data_dir();
        Env::with(chroma, url, Some(persist)).await
    }

    /// As [`Env::new`], with the manager talking to Chroma through `url`.
    async fn via(chroma: ChromaServer, url: url::Url) -> Env {
        Env::with(chroma, url, None).await
    }

    async fn with(chroma: ChromaServer, url: url::Url, persist: Option<PathBuf>) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Config::default();
        c.chroma.persist_directory = persist;
        c.chroma.endpoints = vec![url];
        c.migrations.path = dir.path().join("migrations");
        c.migrations.restore_point = true;
        c.backup.storage_path = dir.path().join("repo").display().to_string();
        std::fs::create_dir_all(&c.migrations.path).expect("mkdir");
        let config = Arc::new(c);
        let store =
            ProductionChromaStore::new(&config, Arc::new(MetricsCollector::new())).expect("store");
        Env {
            _chroma: chroma,
            dir,
            store,
            config,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.config.migrations.path.join(name);
        std::fs::write(&p, text).expect("write migration");
        p
    }

    fn manager(&self) -> MigrationManager {
        MigrationManager::new(
            self.store.clone(),
            self.config.clone(),
            Arc::new(MetricsCollector::new()),
        )
    }

    async fn up(&self, to: Option<u32>) -> Result<Value, MigrationError> {
        let (p, _rx) = Progress::detached();
        let r = self.manager().up(to, &p, &CancellationToken::new()).await;
        r.map(|r| serde_json::to_value(r).expect("report"))
    }

    async fn down(&self, to: u32) -> Result<Value, MigrationError> {
        let (p, _rx) = Progress::detached();
        let r = self.manager().down(to, &p, &CancellationToken::new()).await;
        r.map(|r| serde_json::to_value(r).expect("report"))
    }

    async fn history(&self) -> Vec<HistoryEntry> {
        self.manager().history().await.expect("history")
    }

    async fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .store
            .list_collections()
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.name)
            .filter(|n| {
                n != "chromaprod-migrations" && n != chromaprod::chroma::swap::JOURNAL_COLLECTION
            })
            .collect();
        v.sort();
        v
    }

    async fn get(&self, name: &str) -> Collection {
        self.store.get_collection(name).await.expect(name)
    }
}

fn unit(i: usize, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim)
        .map(|j| {
            (((i * 31 + j * 17) % 211) as f32 / 211.0) - 0.5 + if j == i % dim { 1.0 } else { 0.0 }
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// `n` records with `author`, `lang` and `n` metadata in a new collection.
async fn seed(
    store: &ProductionChromaStore,
    name: &str,
    space: &str,
    n: usize,
    dim: usize,
) -> String {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: Some(json!({"team": "search"}).as_object().cloned().expect("map")),
            configuration: Some(json!({"hnsw": {"space": space}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let langs = ["en", "de", "xx"];
    let batch = RecordBatch {
        ids: (0..n).map(|i| format!("d{i:05}")).collect(),
        embeddings: Some((0..n).map(|i| unit(i, dim)).collect()),
        documents: Some((0..n).map(|i| Some(format!("document {i}"))).collect()),
        metadatas: Some(
            (0..n)
                .map(|i| {
                    Some(
                        json!({"author": format!("a{}", i % 7), "lang": langs[i % 3], "n": i})
                            .as_object()
                            .cloned()
                            .expect("map"),
                    )
                })
                .collect(),
        ),
        uris: None,
    };
    store.upsert(&col.id, &batch).await.expect("seed");
    col.id
}

fn meta(r: &chromaprod::backup::records::Record) -> &serde_json::Map<String, Value> {
    r.metadata.as_ref().expect("metadata")
}

fn hnsw(c: &Collection, key: &str) -> Value {
    c.configuration_json["hnsw"][key].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_operations_go_up_down_and_up_again() {
    let env = Env::new(ChromaServer::start()).await;
    env.file(
        "0001_create_notes.toml",
        r#"version = 1
name = "create notes"
[[up]]
op = "create_collection"
name = "notes"
metadata = { team = "a" }
configuration = { hnsw = { space = "ip" } }
"#,
    );
    env.file(
        "0002_rename.toml",
        "version = 2\nname = \"rename\"\ndependencies = [1]\n[[up]]\nop = \"rename_collection\"\nfrom = \"notes\"\nto = \"memos\"\n",
    );
    env.file(
        "0003_metadata.toml",
        r#"version = 3
name = "collection metadata and index"
[[up]]
op = "update_collection_metadata"
collection = "memos"
set = { owner = "ops" }
unset = ["team"]
[[up]]
op = "update_index"
collection = "memos"
hnsw = { ef_search = 77 }
[[down]]
op = "update_index"
collection = "memos"
hnsw = { ef_search = 100 }
[[down]]
op = "update_collection_metadata"
collection = "memos"
set = { team = "a" }
unset = ["owner"]
"#,
    );
    env.file(
        "0004_swap_and_drop.toml",
        r#"version = 4
name = "blue green"
[[up]]
op = "create_collection"
name = "memos-green"
[[up]]
op = "swap_collections"
a = "memos"
b = "memos-green"
[[up]]
op = "drop_collection"
name = "memos-green"
"#,
    );

    let r = env.up(None).await.expect("up");
    assert_eq!(r["version"], 4, "{r}");
    assert_eq!(
        r["restore_point"],
        Value::Null,
        "nothing existed to back up"
    );
    // 4: the empty new collection now answers to "memos"; the old one was dropped aside.
    assert_eq!(env.names().await, vec!["memos", "memos-green.dropped-v4"]);
    let kept = env.get("memos-green.dropped-v4").await;
    assert_eq!(kept.metadata.as_ref().expect("m")["owner"], "ops");
    assert!(!kept.metadata.as_ref().expect("m").contains_key("team"));
    assert_eq!(hnsw(&kept, "ef_search"), 77);
    assert_eq!(hnsw(&kept, "space"), "ip");
    let h = env.history().await;
    assert_eq!(h.len(), 4);
    assert!(h.iter().all(|e| e.outcome == Outcome::Applied));
    assert!(h
        .iter()
        .all(|e| !e.applied_by.is_empty() && e.checksum.len() == 64));

    // Down to 2: the drop, the swap and the create undo; metadata and index go back.
    let r = env.down(2).await.expect("down");
    assert_eq!(r["version"], 2, "{r}");
    let memos = env.get("memos").await;
    assert_eq!(
        memos.id, kept.id,
        "the original collection is back under its name"
    );
    assert_eq!(memos.metadata.as_ref().expect("m")["team"], "a");
    assert!(!memos.metadata.as_ref().expect("m").contains_key("owner"));
    assert_eq!(hnsw(&memos, "ef_search"), 100);
    assert_eq!(env.names().await, vec!["memos", "memos-green.dropped-v4"]);

    // Down to 0: rename back, and the created collection is set aside, not deleted.
    env.down(0).await.expect("down to 0");
    assert_eq!(
        env.names().await,
        vec!["memos-green.dropped-v4", "notes.dropped-v1"]
    );
    assert!(env.history().await.is_empty());

    // And up again.
    std::fs::remove_file(env.config.migrations.path.join("0004_swap_and_drop.toml")).expect("rm");
    let r = env.up(None).await.expect("up again");
    assert_eq!(r["version"], 3, "{r}");
    let memos = env.get("memos").await;
    assert_eq!(hnsw(&memos, "ef_search"), 77);
    assert_eq!(hnsw(&memos, "space"), "ip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_operations_go_up_down_and_up_again() {
    let env = Env::new(ChromaServer::start()).await;
    seed(&env.store, "docs", "l2", 1200, 8).await;
    let (_, before) = collection_records(&env.store, "docs").await;
    env.file(
        "0001_writer.toml",
        "version = 1\nname = \"author is writer\"\n[[up]]\nop = \"rename_metadata_key\"\ncollection = \"docs\"\nfrom = \"author\"\nto = \"writer\"\n",
    );
    env.file(
        "0002_reviewed.toml",
        r#"version = 2
name = "backfill reviewed for german"
[[up]]
op = "set_metadata"
collection = "docs"
key = "reviewed"
value = false
where = { lang = "de" }
only_missing = true
[[down]]
op = "delete_metadata_key"
collection = "docs"
key = "reviewed"
"#,
    );

    let r = env.up(None).await.expect("up");
    assert_eq!(
        r["applied"][0]["operations"][0]["records_changed"], 1200,
        "{r}"
    );
    assert_eq!(
        r["applied"][1]["operations"][0]["records_changed"], 400,
        "{r}"
    );
    assert!(
        r["restore_point"].is_string(),
        "a restore point was taken: {r}"
    );
    let (_, after) = collection_records(&env.store, "docs").await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(meta(a)["writer"], meta(b)["author"]);
        assert!(!meta(a).contains_key("author"));
        assert_eq!(
            meta(a).get("reviewed"),
            (meta(b)["lang"] == "de").then_some(&json!(false))
        );
        assert_eq!(a.embedding, b.embedding, "vectors are untouched");
        assert_eq!(a.document, b.document);
    }

    env.down(0).await.expect("down");
    let (_, back) = collection_records(&env.store, "docs").await;
    assert_eq!(back, before, "down restores every record's metadata");

    env.up(Some(1)).await.expect("up to 1");
    let (_, once) = collection_records(&env.store, "docs").await;
    assert!(once
        .iter()
        .all(|r| meta(r).contains_key("writer") && !meta(r).contains_key("reviewed")));
    env.up(None).await.expect("up the rest");

    // Destructive operations apply, and `down` refuses before touching anything.
    env.file(
        "0003_prune.toml",
        r#"version = 3
name = "drop unknown language"
[[up]]
op = "delete_records"
collection = "docs"
where = { lang = "xx" }
[[up]]
op = "delete_metadata_key"
collection = "docs"
key = "n"
where = { lang = "en" }
"#,
    );
    env.up(None).await.expect("up 3");
    let (_, pruned) = collection_records(&env.store, "docs").await;
    assert_eq!(pruned.len(), 800);
    assert!(pruned.iter().all(|r| meta(r)["lang"] != "xx"));
    assert!(pruned
        .iter()
        .all(|r| meta(r).contains_key("n") == (meta(r)["lang"] == "de")));
    let err = env.down(0).await.expect_err("irreversible");
    assert!(
        matches!(err, MigrationError::Irreversible { version: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("delete_metadata_key") && err.to_string().contains("down"),
        "{err}"
    );
    assert_eq!(env.history().await.len(), 3, "nothing was undone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_failing_halfway_is_recorded_and_leaves_the_data_as_before() {
    let env = Env::new(ChromaServer::start()).await;
    seed(&env.store, "docs", "l2", 600, 8).await;
    let (_, before) = collection_records(&env.store, "docs").await;
    let broken = r#"version = 1
name = "rename then fail"
[[up]]
op = "rename_metadata_key"
collection = "docs"
from = "author"
to = "writer"
[[up]]
op = "set_metadata"
collection = "no-such-collection"
key = "k"
value = 1
"#;
    env.file("0001_rename_then_fail.toml", broken);
    let err = env.up(None).await.expect_err("fails");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            MigrationError::Failed {
                version: 1,
                op_index: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("set_metadata") && msg.contains("no-such-collection"),
        "{msg}"
    );
    assert!(msg.contains("undone") && msg.contains("as it was"), "{msg}");
    let (_, after) = collection_records(&env.store, "docs").await;
    assert_eq!(after, before, "the first operation was undone");
    let h = env.history().await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].outcome, Outcome::Failed);
    assert!(h[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("no-such-collection"));
    let restore_point = h[0]
        .restore_point
        .clone()
        .expect("a restore point was taken");

    // The restore point is a snapshot like any other, marked as such.
    let backups = BackupManager::open(env.store.clone(), env.config.clone(), false)
        .await
        .expect("repo");
    let list = backups.list().await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].trigger, Trigger::Migration);
    assert_eq!(list[0].metadata.backup_id.to_string(), restore_point);

    // Fixing the file is an edit of a recorded migration: repair first, then up.
    env.file(
        "0001_rename_then_fail.toml",
        &broken.replace("no-such-collection", "docs"),
    );
    let err = env.up(None).await.expect_err("edited after failing");
    assert!(matches!(err, MigrationError::Diverged { .. }), "{err}");
    let (p, _rx) = Progress::detached();
    let r = env.manager().repair(&p).await.expect("repair");
    assert_eq!(r.failures_cleared, [1]);
    env.up(None).await.expect("up after repair");
    let (_, done) = collection_records(&env.store, "docs").await;
    assert!(done
        .iter()
        .all(|r| meta(r)["k"] == 1 && meta(r).contains_key("writer")));

    // A failure after an operation without an inverse: the error points at
    // the restore point, and restoring it brings the data back.
    env.file(
        "0002_delete_then_fail.toml",
        "version = 2\nname = \"delete then fail\"\n[[up]]\nop = \"delete_records\"\ncollection = \"docs\"\nwhere = { lang = \"xx\" }\n[[up]]\nop = \"rename_collection\"\nfrom = \"missing-one\"\nto = \"other\"\n",
    );
    let (_, before2) = collection_records(&env.store, "docs").await;
    let err = env.up(None).await.expect_err("fails");
    let msg = err.to_string();
    let snapshot = env.history().await[1]
        .restore_point
        .clone()
        .expect("restore point");
    assert!(
        msg.contains(&format!("chromaprod restore {snapshot}")),
        "{msg}"
    );
    assert_eq!(collection_records(&env.store, "docs").await.1.len(), 400);
    let (p, _rx) = Progress::detached();
    backups
        .restore(
            &snapshot,
            &RestoreOptions {
                collections: vec!["docs".into()],
                mode: RestoreMode::Replace,
                ..RestoreOptions::default()
            },
            &p,
            &CancellationToken::new(),
        )
        .await
        .expect("restore");
    let (_, restored) = collection_records(&env.store, "docs").await;
    assert_eq!(restored, before2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_applied_migration_is_refused_and_repair_and_stamp_recover() {
    let env = Env::new(ChromaServer::start()).await;
    seed(&env.store, "docs", "l2", 30, 4).await;
    let text = "version = 1\nname = \"meta\"\n[[up]]\nop = \"update_collection_metadata\"\ncollection = \"docs\"\nset = { stage = 1 }\n";
    let path = env.file("0001_meta.toml", text);
    env.up(None).await.expect("up");

    std::fs::write(&path, format!("# reviewed\n{text}")).expect("edit");
    let err = env.manager().validate().await.expect_err("edited");
    assert!(
        matches!(err, MigrationError::Diverged { version: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("migrate repair"), "{err}");
    let err = env.up(None).await.expect_err("up refuses too");
    assert!(matches!(err, MigrationError::Diverged { .. }), "{err}");
    let status = env.manager().status().await.expect("status");
    assert_eq!(
        status.migrations[0].state,
        MigrationState::AppliedFileChanged,
        "{status:?}"
    );

    let (p, _rx) = Progress::detached();
    let r = env.manager().repair(&p).await.expect("repair");
    assert_eq!(r.checksums_realigned, [1]);
    env.manager().validate().await.expect("valid after repair");

    // A missing file is refused, and repair forgets it.
    std::fs::rename(&path, env.dir.path().join("moved.toml")).expect("move");
    assert!(matches!(
        env.manager().validate().await,
        Err(MigrationError::MissingFile { version: 1, .. })
    ));
    let r = env.manager().repair(&p).await.expect("repair");
    assert_eq!(r.forgotten, [1]);
    assert!(env.history().await.is_empty());

    // Stamp adopts a database as it is: nothing runs.
    std::fs::rename(env.dir.path().join("moved.toml"), &path).expect("back");
    env.file(
        "0002_more.toml",
        "version = 2\nname = \"more\"\n[[up]]\nop = \"update_collection_metadata\"\ncollection = \"docs\"\nset = { stage = 2 }\n",
    );
    let docs_before = env.get("docs").await;
    let r = env.manager().stamp(2, &p).await.expect("stamp");
    assert_eq!(r.stamped, [1, 2]);
    assert_eq!(
        env.get("docs").await.metadata,
        docs_before.metadata,
        "stamp runs nothing"
    );
    let h = env.history().await;
    assert!(h.iter().all(|e| e.outcome == Outcome::Baselined));
    assert_eq!(env.manager().status().await.expect("s").version, 2);
    assert!(env.up(None).await.expect("up")["applied"]
        .as_array()
        .expect("a")
        .is_empty());
    // Stamping lower forgets the versions above; up applies them for real.
    let r = env.manager().stamp(1, &p).await.expect("stamp 1");
    assert_eq!(r.removed, [2]);
    env.up(None).await.expect("up");
    assert_eq!(env.get("docs").await.metadata.expect("m")["stage"], 2);

    // `new` writes the next version's file; it stays invalid until it has operations.
    let created = chromaprod::migrate::file::new_file(&env.config.migrations.path, "Docs cosine!")
        .expect("new");
    assert!(
        created.ends_with("0003_docs_cosine.toml"),
        "{}",
        created.display()
    );
    let err = env.manager().validate().await.expect_err("empty up");
    assert!(
        err.to_string()
            .contains("0003_docs_cosine.toml: `up` lists no operations"),
        "{err}"
    );
}

fn rebuild_file(env: &Env, extra: &str) -> PathBuf {
    env.file(
        "0001_docs_cosine.toml",
        &format!(
            "version = 1\nname = \"docs cosine\"\n[[up]]\nop = \"rebuild\"\ncollection = \"docs\"\nconfiguration = {{ hnsw = {{ space = \"cosine\", max_neighbors = 24 }} }}\n{extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_changes_the_metric_verified_and_down_switches_back() {
    let env = Env::new(ChromaServer::start()).await;
    let original_id = seed(&env.store, "docs", "l2", 1500, 16).await;
    let (_, before) = collection_records(&env.store, "docs").await;
    rebuild_file(&env, "sample = 40\nk = 5\nsettle_ms = 0\n");

    let r = env.up(None).await.expect("rebuild");
    let op = &r["applied"][0]["operations"][0];
    assert_eq!(op["records"], 1500, "{r}");
    assert!(op["overlap"].as_f64().expect("overlap") >= 0.9, "{r}");
    let docs = env.get("docs").await;
    assert_ne!(docs.id, original_id, "a new collection answers to the name");
    assert_eq!(hnsw(&docs, "space"), "cosine");
    assert_eq!(hnsw(&docs, "max_neighbors"), 24);
    assert_eq!(
        docs.metadata,
        Some(json!({"team": "search"}).as_object().cloned().expect("m"))
    );
    let (_, after) = collection_records(&env.store, "docs").await;
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert!(
            chromaprod::backup::compare::records_match(b, a, true),
            "{} differs",
            a.id
        );
    }
    let old = env.get("docs.pre-v1").await;
    assert_eq!(old.id, original_id, "the old collection is kept for down");
    assert_eq!(hnsw(&old, "space"), "l2");
    assert_eq!(env.names().await, vec!["docs", "docs.pre-v1"]);

    env.down(0).await.expect("down");
    let docs = env.get("docs").await;
    assert_eq!(docs.id, original_id);
    assert_eq!(hnsw(&docs, "space"), "l2");
    assert_eq!(collection_records(&env.store, "docs").await.1, before);

    env.up(None).await.expect("rebuild again");
    assert_eq!(hnsw(&env.get("docs").await, "space"), "cosine");
    assert_eq!(env.names().await, vec!["docs", "docs.pre-v1"]);

    // Another metric on vectors of very different lengths changes who the
    // neighbours are: the overlap check catches it and nothing is swapped.
    let raw = env
        .store
        .create_collection(&CreateCollection {
            name: "raw".into(),
            metadata: None,
            configuration: Some(json!({"hnsw": {"space": "l2"}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let batch = RecordBatch {
        ids: (0..500).map(|i| format!("r{i}")).collect(),
        embeddings: Some(
            (0..500)
                .map(|i| {
                    unit(i, 16)
                        .into_iter()
                        .map(|x| x * (1 + i % 10) as f32)
                        .collect()
                })
                .collect(),
        ),
        documents: None,
        metadatas: None,
        uris: None,
    };
    env.store.upsert(&raw.id, &batch).await.expect("seed raw");
    env.file(
        "0002_raw_ip.toml",
        "version = 2\nname = \"raw ip\"\n[[up]]\nop = \"rebuild\"\ncollection = \"raw\"\nconfiguration = { hnsw = { space = \"ip\" } }\n",
    );
    let err = env.up(None).await.expect_err("overlap below threshold");
    assert!(
        err.to_string().contains("overlap") && err.to_string().contains("min_overlap = 0.9"),
        "{err}"
    );
    assert_eq!(env.get("raw").await.id, raw.id, "not swapped");
    assert_eq!(
        env.names().await,
        vec!["docs", "docs.pre-v1", "raw"],
        "the copy was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_catches_up_with_a_writer_and_loses_no_acknowledged_write() {
    rebuild_under_writes(Env::new(ChromaServer::start()).await, false).await;
}

/// The same with Chroma's change feed: catch-up passes read only what the
/// writer changed since the last pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_catches_up_through_the_change_feed_and_loses_no_acknowledged_write() {
    rebuild_under_writes(Env::local(ChromaServer::start()).await, true).await;
}

async fn rebuild_under_writes(env: Env, change_feed: bool) {
    let n = 3000;
    let dim = 16;
    let original = seed(&env.store, "docs", "l2", n, dim).await;
    rebuild_file(&env, "settle_ms = 1500\nmax_passes = 20\n");

    // Writers, each on ids of its own (so what Chroma acknowledged last
    // for an id is what the map holds), resolve the name before every write,
    // as a client that re-reads the collection would, and record what Chroma
    // acknowledged. Several keep the rate up on a loaded machine, where one
    // writer's round trips left too few writes inside a short copy.
    const WRITERS: usize = 4;
    // The last write Chroma acknowledged per id: its document, or `None`
    // for a delete.
    let acked: Arc<Mutex<HashMap<String, Option<String>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writes_to_old = Arc::new(Mutex::new(0u64));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, acked, stop, writes_to_old, original) = (
                env.store.clone(),
                acked.clone(),
                stop.clone(),
                writes_to_old.clone(),
                original.clone(),
            );
            tokio::spawn(async move {
                let mut j = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    j += 1;
                    let i = j * WRITERS + w;
                    // New records, updates of existing ones and deletes of
                    // existing ones, in turn; writer w updates and deletes
                    // only the records whose number is w modulo WRITERS.
                    let id = match j % 3 {
                        0 => format!("w{i:06}"),
                        1 => format!("d{:05}", ((j * 7919) % (n / WRITERS)) * WRITERS + w),
                        _ => format!("d{:05}", ((j * 104_729) % (n / WRITERS)) * WRITERS + w),
                    };
                    let doc = format!("write {i}");
                    // Between the swap's two renames the name briefly
                    // resolves to nothing: a client retries.
                    let Ok(col) = store.get_collection("docs").await else {
                        continue;
                    };
                    if j % 3 == 2 {
                        if store
                            .delete(&col.id, Some(std::slice::from_ref(&id)), None)
                            .await
                            .is_ok()
                        {
                            acked.lock().expect("lock").insert(id, None);
                            if col.id == original {
                                *writes_to_old.lock().expect("lock") += 1;
                            }
                        }
                        continue;
                    }
                    // An update also removes the record's `author` key,
                    // which the copy must lose too (an upsert merges
                    // metadata).
                    let metadata = (j % 3 == 1)
                        .then(|| json!({"author": null, "w": i}).as_object().cloned())
                        .flatten();
                    let batch = RecordBatch {
                        ids: vec![id.clone()],
                        embeddings: Some(vec![unit(i + 17, dim)]),
                        documents: Some(vec![Some(doc.clone())]),
                        metadatas: Some(vec![metadata]),
                        uris: None,
                    };
                    if store.upsert(&col.id, &batch).await.is_ok() {
                        acked.lock().expect("lock").insert(id, Some(doc));
                        if col.id == original {
                            *writes_to_old.lock().expect("lock") += 1;
                        }
                    }
                }
            })
        })
        .collect();

    let r = env.up(None).await.expect("rebuild under writes");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let op = &r["applied"][0]["operations"][0];
    let acked = acked.lock().expect("lock").clone();
    assert!(
        *writes_to_old.lock().expect("lock") > 20,
        "the writers ran during the copy: {r}"
    );
    assert!(
        op["caught_up_records"].as_u64().expect("caught up") > 0,
        "writes during the copy were caught up before the swap: {r}"
    );
    // The settle step lasted `settle_ms`, and at least twice the last
    // pass's longest write (a write sent to the old collection just before
    // the swap waits in Chroma's queue about as long).
    let longest = op["last_pass_writes"]["longest_ms"]
        .as_u64()
        .expect("the last pass's writes");
    let settle = op["settle_ms"].as_u64().expect("settle_ms");
    assert!(
        settle >= 1_500.max(2 * longest) && settle <= 1_500.max(2 * longest + 1),
        "{r}"
    );
    let by_feed = op["catch_up_by_change_feed"].as_u64().expect("feed passes");
    if change_feed {
        assert_eq!(
            Some(by_feed),
            op["catch_up_passes"].as_u64(),
            "every pass read the change feed: {r}"
        );
    } else {
        assert_eq!(by_feed, 0, "{r}");
    }

    let docs = env.get("docs").await;
    assert_eq!(hnsw(&docs, "space"), "cosine");
    let (_, records) = collection_records(&env.store, "docs").await;
    let by_id: HashMap<&str, Option<&String>> = records
        .iter()
        .map(|r| (r.id.as_str(), r.document.as_ref()))
        .collect();
    let kept_author: Vec<&str> = records
        .iter()
        .filter(|r| acked.get(&r.id).is_some_and(Option::is_some) && r.id.starts_with('d'))
        .filter(|r| {
            r.metadata
                .as_ref()
                .is_some_and(|m| m.contains_key("author"))
        })
        .map(|r| r.id.as_str())
        .collect();
    assert!(
        kept_author.is_empty(),
        "a metadata key the writers removed survived in the copy: {kept_author:?}; {r}"
    );
    let (mut lost, mut back) = (Vec::new(), Vec::new());
    for (id, doc) in &acked {
        match doc {
            Some(doc) if by_id.get(id.as_str()).copied().flatten() != Some(doc) => {
                lost.push(id.clone());
            }
            None if by_id.contains_key(id.as_str()) => back.push(id.clone()),
            _ => {}
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}; {r}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        back.is_empty(),
        "{} acknowledged deletes undone, e.g. {:?}; {r}",
        back.len(),
        &back[..back.len().min(5)]
    );
    let deleted = acked.values().filter(|d| d.is_none()).count();
    assert!(deleted > 0, "the writers deleted records: {r}");
    let new_ids = acked.keys().filter(|k| k.starts_with('w')).count();
    assert_eq!(records.len(), n + new_ids - deleted);
}

/// The second pass reads the source alone (by the first pass's digests):
/// it must still see every change the writer makes, or this would swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_whose_source_keeps_changing_is_not_swapped() {
    let env = Env::new(ChromaServer::start()).await;
    let original = seed(&env.store, "docs", "l2", 2000, 16).await;
    rebuild_file(&env, "max_passes = 2\nmax_lag = 0\n");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop, original) = (env.store.clone(), stop.clone(), original.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let batch = RecordBatch {
                    ids: (0..20)
                        .map(|j| format!("d{:05}", (i * 20 + j) % 2000))
                        .collect(),
                    embeddings: Some((0..20).map(|j| unit(i + j, 16)).collect()),
                    documents: None,
                    metadatas: None,
                    uris: None,
                };
                let _ = store.upsert(&original, &batch).await;
            }
        })
    };
    let err = env.up(None).await.expect_err("source keeps changing");
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    assert!(matches!(err, MigrationError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("kept changing"), "{err}");
    assert_eq!(env.get("docs").await.id, original);
    assert_eq!(env.names().await, vec!["docs"], "the copy was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_cannot_get_the_lock_names_the_holder_and_a_lapsed_holder_is_fenced() {
    use chromaprod::migrate::history::{HistoryStore, LockRecord};
    use chromaprod::migrate::lease::MigrationLease;
    use std::time::Duration;
    let chroma = ChromaServer::start();
    let mut env = Env::new(chroma).await;
    seed(&env.store, "docs", "l2", 10, 4).await;
    env.file(
        "0001_meta.toml",
        "version = 1\nname = \"meta\"\n[[up]]\nop = \"update_collection_metadata\"\ncollection = \"docs\"\nset = { stage = 1 }\n",
    );
    let history = HistoryStore::open(env.store.clone(), "chromaprod-migrations")
        .await
        .expect("history");
    let held = MigrationLease::acquire(
        &history,
        "ops@db-7 (pid 4242) #1",
        Duration::from_secs(30),
        Duration::from_secs(1),
        |_| {},
    )
    .await
    .expect("first runner");
    let mut c = (*env.config).clone();
    c.migrations.lock_wait = Duration::from_millis(1500);
    env.config = Arc::new(c);
    let started = std::time::Instant::now();
    let err = env.up(None).await.expect_err("locked");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let msg = err.to_string();
    assert!(matches!(err, MigrationError::LockTimeout { .. }), "{msg}");
    assert!(
        msg.contains("ops@db-7 (pid 4242)") && msg.contains("token 1"),
        "{msg}"
    );
    assert!(env.history().await.is_empty(), "nothing ran");

    // Another runner takes over (as after the lease lapsed): the old holder
    // is fenced off at its next check instead of writing on.
    history
        .claim(&LockRecord {
            token: held.token() + 1,
            holder: "ops@db-8 (pid 1) #2".into(),
            acquired_ms: 0,
            expires_ms: u64::MAX,
            released: false,
        })
        .await
        .expect("claim");
    // Every history write goes through the lease, which refuses it.
    let entry = chromaprod::migrate::history::HistoryEntry {
        version: 1,
        name: "meta".into(),
        token: held.token(),
        ..Default::default()
    };
    let err = held.record(&entry).await.expect_err("fenced write");
    assert!(
        matches!(err, MigrationError::LockLost { token: 1 }),
        "{err}"
    );
    assert!(
        env.history().await.is_empty(),
        "the fenced write was not made"
    );
    let err = held.forget(1).await.expect_err("fenced removal");
    assert!(
        matches!(err, MigrationError::LockLost { token: 1 }),
        "{err}"
    );
    let err = held.check().await.expect_err("fenced");
    assert!(
        matches!(err, MigrationError::LockLost { token: 1 }),
        "{err}"
    );
    // A token is won once: claiming it again for someone else fails.
    let again = history
        .claim(&LockRecord {
            token: 2,
            holder: "someone else".into(),
            acquired_ms: 0,
            expires_ms: u64::MAX,
            released: false,
        })
        .await
        .expect("claim");
    assert!(!again);
}

/// `demo/embed_server.py` (an OpenAI-compatible `/v1/embeddings` server) on a
/// free port, stopped on drop.
struct EmbedServer {
    child: std::process::Child,
    url: String,
}

impl EmbedServer {
    fn start(key: &str) -> EmbedServer {
        let port = common::chroma::free_port();
        let child = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/embed_server.py"))
            .arg(port.to_string())
            .args(["--key", key])
            .spawn()
            .expect("start embed_server.py");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "embed server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        EmbedServer {
            child,
            url: format!("http://127.0.0.1:{port}/v1/embeddings"),
        }
    }
}

impl Drop for EmbedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reembed_writes_new_vectors_from_the_documents_and_down_switches_back() {
    let env = Env::new(ChromaServer::start()).await;
    let original = seed(&env.store, "docs", "l2", 700, 8).await;
    let (_, before) = collection_records(&env.store, "docs").await;
    let key = "sk-test-0123456789abcdef";
    let server = EmbedServer::start(key);
    // Each test runs in its own process (nextest): this environment is ours.
    std::env::set_var("CHROMAPROD_TEST_EMBED_KEY", key);
    env.file(
        "0001_reembed.toml",
        &format!(
            "version = 1\nname = \"new model\"\n[[up]]\nop = \"reembed\"\ncollection = \"docs\"\nurl = {:?}\nmodel = \"hash-32\"\ndimensions = 32\napi_key_env = \"CHROMAPROD_TEST_EMBED_KEY\"\nconfiguration = {{ hnsw = {{ space = \"cosine\" }} }}\nbatch = 100\nsettle_ms = 0\n",
            server.url
        ),
    );
    let r = env.up(None).await.expect("reembed");
    assert_eq!(r["applied"][0]["operations"][0]["records"], 700, "{r}");
    let docs = env.get("docs").await;
    assert_ne!(docs.id, original);
    assert_eq!(hnsw(&docs, "space"), "cosine");
    let (_, after) = collection_records(&env.store, "docs").await;
    assert_eq!(after.len(), before.len());
    // Ask the endpoint directly for a few documents: the stored vectors are its answers.
    let sample: Vec<&chromaprod::backup::records::Record> = after.iter().step_by(97).collect();
    let answer: Value = reqwest::Client::new()
        .post(&server.url)
        .bearer_auth(key)
        .json(&json!({"model": "hash-32", "dimensions": 32, "input": sample.iter().map(|r| r.document.clone().expect("doc")).collect::<Vec<_>>()}))
        .send()
        .await
        .expect("embed")
        .json()
        .await
        .expect("json");
    for (r, a) in sample.iter().zip(answer["data"].as_array().expect("data")) {
        let want: Vec<f32> = serde_json::from_value(a["embedding"].clone()).expect("vec");
        let got = r.embedding.as_ref().expect("embedding");
        assert_eq!(got.len(), 32);
        assert!(
            want.iter()
                .zip(got)
                .all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1e-6)),
            "{} was not re-embedded",
            r.id
        );
    }
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            (&a.id, &a.document, &a.metadata),
            (&b.id, &b.document, &b.metadata)
        );
    }
    env.down(0).await.expect("down");
    assert_eq!(env.get("docs").await.id, original);
    assert_eq!(collection_records(&env.store, "docs").await.1, before);

    // A wrong key fails clearly, swaps nothing, and the key appears nowhere.
    std::env::set_var("CHROMAPROD_TEST_EMBED_KEY", "sk-wrong-key-value");
    let err = env.up(None).await.expect_err("401");
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("api_key_env"), "{msg}");
    assert!(
        !msg.contains("sk-wrong-key-value") && !format!("{err:?}").contains("sk-wrong-key-value")
    );
    assert_eq!(env.get("docs").await.id, original);
    assert_eq!(env.names().await, vec!["docs", "docs.pre-v1"]);
    // An unset variable is named before anything is copied.
    std::env::remove_var("CHROMAPROD_TEST_EMBED_KEY");
    let (p, _rx) = Progress::detached();
    env.manager().repair(&p).await.expect("clear the failure");
    let err = env.up(None).await.expect_err("no key");
    assert!(
        err.to_string()
            .contains("CHROMAPROD_TEST_EMBED_KEY, which is not set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_cut_off_halfway_is_not_claimed_undone() {
    use common::proxy::{Fault, FaultProxy};
    let chroma = ChromaServer::start();
    let direct = {
        let mut c = Config::default();
        c.chroma.endpoints = vec![chroma.url()];
        ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new())).expect("store")
    };
    let proxy = FaultProxy::start(chroma.addr()).await;
    proxy.set(Fault::Latency(std::time::Duration::from_millis(40)));
    let env = Env::via(chroma, proxy.url()).await;
    seed(&direct, "docs", "l2", 3000, 4).await;
    env.file(
        "0001_flag.toml",
        "version = 1\nname = \"flag\"\n[[up]]\nop = \"set_metadata\"\ncollection = \"docs\"\nkey = \"flag\"\nvalue = true\n",
    );
    let run = tokio::spawn({
        let (store, config) = (env.store.clone(), env.config.clone());
        async move {
            let (p, _rx) = Progress::detached();
            MigrationManager::new(store, config, Arc::new(MetricsCollector::new()))
                .up(None, &p, &CancellationToken::new())
                .await
        }
    });
    // Once some records are done, Chroma starts refusing every request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let h = chromaprod::migrate::history::HistoryStore::peek(&direct, "chromaprod-migrations")
            .await
            .expect("history");
        if h.first().is_some_and(|e| e.checkpoint.is_some()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    proxy.set(Fault::respond(
        400,
        &[],
        "{\"error\":\"refused by the test\"}",
    ));
    let err = run.await.expect("task").expect_err("cut off");
    let msg = err.to_string();
    assert!(
        msg.contains("left as it is") && !msg.contains("as it was"),
        "{msg}"
    );
    proxy.set(Fault::PassThrough);
    let (_, records) = collection_records(&direct, "docs").await;
    let flagged = records
        .iter()
        .filter(|r| meta(r).contains_key("flag"))
        .count();
    assert!(flagged > 0 && flagged < 3000, "{flagged} of 3000 flagged");
}
