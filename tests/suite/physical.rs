//! Physical snapshots of a real `chroma run` whose persist directory the
//! test owns: taken hot under a steady writer and restored into a new
//! directory that a second Chroma starts on; unchanged collections cost
//! nothing in the next snapshot; every refusal of `restore --data-dir`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chromaprod::chroma::{Include, QueryRequest, RecordBatch};
use common::chroma::ChromaServer;
use common::daemon::{config_text, offline};
use common::records::{collection_records, seed, store_for};
use serde_json::Value;

const DIM: usize = 16;

struct Setup {
    chroma: ChromaServer,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// A Chroma with `docs` (3,000 records) and `other` (1,500), and an
    /// encrypted repository configured with the server's persist directory.
    fn new() -> Setup {
        let chroma = ChromaServer::start();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let store = store_for(&chroma.base());
        rt.block_on(seed(&store, "docs", 3000, DIM));
        rt.block_on(seed(&store, "other", 1500, DIM));
        let dir = tempfile::tempdir().expect("tempdir");
        common::daemon::write_key(&dir.path().join("backup-key"));
        let config = dir.path().join("chromaprod.toml");
        let s = Setup {
            chroma,
            rt,
            dir,
            config,
        };
        let persist = s.chroma.data_dir();
        s.write_config(&s.config, &persist, "backup-key");
        s
    }

    /// A config file at `path` with `persist` as `chroma.persist_directory`
    /// and `key` (a file in the test directory) as the key.
    fn write_config(&self, path: &Path, persist: &Path, key: &str) {
        let text = config_text(
            self.dir.path(),
            &[self.chroma.base()],
            &format!(
                "[backup]\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\n",
                self.repo().display().to_string(),
                self.dir.path().join(key).display().to_string()
            ),
        )
        .replace(
            "[chroma]\n",
            &format!(
                "[chroma]\npersist_directory = {:?}\n",
                persist.display().to_string()
            ),
        );
        std::fs::write(path, text).expect("config");
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// `chromaprod --json ARGS` with `config`; the JSON result, or the
    /// failure's stderr.
    fn json(&self, config: &Path, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = offline(config, &all);
        if code != Some(0) {
            return Err(format!("exit {code:?}: {err}{out}"));
        }
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).map_err(|e| format!("{e}: {out}"))
    }

    fn physical_backup(&self) -> Value {
        self.json(&self.config, &["backup", "--physical"])
            .unwrap_or_else(|e| panic!("physical backup failed: {e}"))
    }

    fn show(&self, id: &str) -> Value {
        self.json(&self.config, &["backups", "show", id])
            .unwrap_or_else(|e| panic!("show failed: {e}"))
    }

    fn restore(
        &self,
        config: &Path,
        id: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Value, String> {
        let d = dir.display().to_string();
        let mut args = vec!["restore", id, "--data-dir", d.as_str()];
        args.extend_from_slice(extra);
        self.json(config, &args)
    }
}

fn batch(ids: &[String], seed: usize) -> RecordBatch {
    RecordBatch {
        ids: ids.to_vec(),
        embeddings: Some(
            (0..ids.len())
                .map(|i| (0..DIM).map(|j| unit(seed + i, j)).collect())
                .collect(),
        ),
        documents: Some(ids.iter().map(|i| Some(format!("written {i}"))).collect()),
        metadatas: None,
        uris: None,
    }
}

/// A pseudo-random value in [0, 1) for (i, j): distinct vectors, no ties.
fn unit(i: usize, j: usize) -> f32 {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (j as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % 1_000_003) as f32 / 1_000_003.0
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_snapshot_under_a_steady_writer_restores_what_was_acknowledged_and_answers_queries() {
    let s = Setup::new();
    let store = store_for(&s.chroma.base());
    let docs =
        s.rt.block_on(store.get_collection("docs"))
            .expect("docs")
            .id;
    // The writer: batches of 100 new records, in order, acknowledged one
    // by one (a flush of the vector segment every 10 batches).
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, base) = (acked.clone(), stop.clone(), s.chroma.base());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let store = store_for(&base);
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let ids: Vec<String> = (n..n + 100).map(|i| format!("w{i:06}")).collect();
                rt.block_on(store.upsert(&docs, &batch(&ids, n)))
                    .expect("writer upsert");
                acked.lock().expect("acked").extend(ids);
                n += 100;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    while acked.lock().expect("acked").len() < 1500 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before: Vec<String> = acked.lock().expect("acked").clone();
    let taken = s.physical_backup();
    let during = acked.lock().expect("acked").len();
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(
        during > before.len(),
        "the writer wrote during the snapshot ({} then {during})",
        before.len()
    );
    assert_eq!(taken["type"], "physical", "{taken}");
    let id = taken["snapshot"].as_str().expect("id").to_string();
    let p = &taken["physical"];
    assert!(p["files"].as_u64().unwrap_or(0) >= 3, "{taken}");
    assert!(p["writer_blocked_ms"].is_u64(), "{taken}");

    // Quick and full verify see every block.
    let v = s
        .json(&s.config, &["backups", "verify", &id, "--full"])
        .expect("verify --full");
    assert!(v["objects_checked"].as_u64().unwrap_or(0) >= 3, "{v}");

    let target = s.dir.path().join("restored");
    let restored = s
        .restore(&s.config, &id, &target, &[])
        .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(restored["snapshot"], id.as_str());
    assert!(target.join("chroma.sqlite3").is_file());

    let live_docs = s.rt.block_on(collection_records(&store, "docs")).1;
    let live_other = s.rt.block_on(collection_records(&store, "other")).1;
    let second = ChromaServer::start_on_dir(target.clone());
    let store2 = store_for(&second.base());
    let got_docs = s.rt.block_on(collection_records(&store2, "docs")).1;
    let got_other = s.rt.block_on(collection_records(&store2, "other")).1;
    assert_eq!(got_other, live_other, "the collection no one wrote to");

    // Every record acknowledged before the snapshot started is there, and
    // the writer's records are a prefix of what it wrote (one sequence
    // point), each equal to the live record.
    let got_ids: BTreeSet<&str> = got_docs.iter().map(|r| r.id.as_str()).collect();
    for id in &before {
        assert!(
            got_ids.contains(id.as_str()),
            "{id} acknowledged before the snapshot is missing"
        );
    }
    let written: Vec<String> = acked.lock().expect("acked").clone();
    let k = written
        .iter()
        .take_while(|i| got_ids.contains(i.as_str()))
        .count();
    assert!(
        written[k..].iter().all(|i| !got_ids.contains(i.as_str())),
        "the restored records are not one prefix of the writes"
    );
    let live: BTreeMap<&str, _> = live_docs.iter().map(|r| (r.id.as_str(), r)).collect();
    assert_eq!(
        got_docs.len(),
        3000 + k,
        "seeded records and the first {k} written"
    );
    for r in &got_docs {
        assert_eq!(Some(&r), live.get(r.id.as_str()), "record {}", r.id);
    }

    // The index answers: a record's own embedding finds it first.
    let col = s.rt.block_on(store2.get_collection("docs")).expect("docs");
    let probe = got_docs
        .iter()
        .find(|r| r.id.starts_with('w'))
        .unwrap_or(&got_docs[0]);
    let q =
        s.rt.block_on(store2.query(
            &col.id,
            &QueryRequest {
                query_embeddings: vec![probe.embedding.clone().expect("embedding")],
                n_results: 5,
                where_: None,
                include: vec![Include::Distances],
            },
        ))
        .expect("query");
    assert_eq!(q.ids[0].len(), 5);
    assert_eq!(q.ids[0][0], probe.id);
}

/// Block ids of each file of a physical snapshot, by path.
fn blocks_by_file(show: &Value) -> BTreeMap<String, Vec<String>> {
    show["physical"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                f["blocks"]
                    .as_array()
                    .expect("blocks")
                    .iter()
                    .map(|b| b["id"].as_str().expect("id").to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn a_second_snapshot_stores_only_the_files_of_the_collection_that_changed() {
    let s = Setup::new();
    let first = s.physical_backup();
    let a = s.show(first["snapshot"].as_str().expect("id"));
    assert_eq!(a["metadata"]["backup_type"], "physical");
    assert_eq!(a["format_version"], 2);
    let chroma = a["metadata"]["chroma_version"].as_str().unwrap_or_default();
    assert!(
        chroma.contains("api ") && chroma.contains("sysdb"),
        "{chroma}"
    );
    let segment_of = |show: &Value, name: &str| -> String {
        show["physical"]["collections"]
            .as_array()
            .expect("collections")
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["segment"].as_str())
            .expect("segment")
            .to_string()
    };
    let (docs_seg, other_seg) = (segment_of(&a, "docs"), segment_of(&a, "other"));

    // Change docs only: enough to flush its vector segment.
    let store = store_for(&s.chroma.base());
    let docs =
        s.rt.block_on(store.get_collection("docs"))
            .expect("docs")
            .id;
    let ids: Vec<String> = (0..1200).map(|i| format!("n{i:05}")).collect();
    s.rt.block_on(store.upsert(&docs, &batch(&ids, 7)))
        .expect("upsert");

    let second = s.physical_backup();
    let b = s.show(second["snapshot"].as_str().expect("id"));
    let (fa, fb) = (blocks_by_file(&a), blocks_by_file(&b));
    let old: BTreeSet<&String> = fa.values().flatten().collect();
    let mut new_blocks = BTreeSet::new();
    for (path, blocks) in &fb {
        for id in blocks.iter().filter(|id| !old.contains(id)) {
            assert!(
                path == "chroma.sqlite3" || path.starts_with(&format!("{docs_seg}/")),
                "{path} of an unchanged collection was stored anew"
            );
            new_blocks.insert(id.clone());
        }
        if path.starts_with(&format!("{other_seg}/")) {
            assert_eq!(Some(blocks), fa.get(path), "{path} changed");
        }
    }
    assert!(
        fb.keys().any(|p| p.starts_with(&format!("{other_seg}/"))),
        "other's files are in the snapshot"
    );
    assert!(
        new_blocks.iter().any(|id| fb
            .iter()
            .any(|(p, bl)| p.starts_with(&format!("{docs_seg}/")) && bl.contains(id))),
        "docs' changed files were stored"
    );
    assert_eq!(
        second["physical"]["objects_written"].as_u64(),
        Some(new_blocks.len() as u64),
        "{second}"
    );
    let (wa, wb) = (
        first["bytes_written"].as_u64().unwrap_or(0),
        second["bytes_written"].as_u64().unwrap_or(0),
    );
    assert!(
        wb < wa,
        "the second snapshot wrote {wb} bytes, the first {wa}"
    );

    // Prune with both kept deletes nothing; verify still passes.
    let pruned = s.json(&s.config, &["prune"]).expect("prune");
    assert_eq!(pruned["objects_deleted"], 0, "{pruned}");
}

#[test]
fn physical_restore_refuses_what_it_must_and_names_the_cause() {
    let s = Setup::new();
    let taken = s.physical_backup();
    let id = taken["snapshot"].as_str().expect("id").to_string();

    // A non-empty directory, left as it was.
    let full = s.dir.path().join("full");
    std::fs::create_dir(&full).expect("dir");
    std::fs::write(full.join("notes.txt"), b"mine").expect("file");
    let err = s
        .restore(&s.config, &id, &full, &[])
        .expect_err("non-empty");
    assert!(
        err.contains("is not empty") && err.contains("notes.txt"),
        "{err}"
    );
    assert_eq!(entries(&full), vec!["notes.txt".to_string()]);

    // The directory the running Chroma uses.
    let err = s
        .restore(&s.config, &id, &s.chroma.data_dir(), &[])
        .expect_err("in use");
    assert!(err.contains("is in use") && err.contains("pid "), "{err}");

    // Other migration levels than the local Chroma's: a test-owned copy of
    // its database with one level edited.
    let local = s.dir.path().join("local-chroma");
    std::fs::create_dir(&local).expect("dir");
    let restored = s.dir.path().join("for-levels");
    s.restore(&s.config, &id, &restored, &[]).expect("restore");
    std::fs::copy(
        restored.join("chroma.sqlite3"),
        local.join("chroma.sqlite3"),
    )
    .expect("copy");
    {
        let c = rusqlite::Connection::open(local.join("chroma.sqlite3")).expect("open copy");
        let n = c
            .execute(
                "UPDATE migrations SET version = 99 WHERE dir = 'metadb' AND version = \
                 (SELECT MAX(version) FROM migrations WHERE dir = 'metadb')",
                [],
            )
            .expect("edit");
        assert_eq!(n, 1);
    }
    let other_levels = s.dir.path().join("other-levels.toml");
    s.write_config(&other_levels, &local, "backup-key");
    let target = s.dir.path().join("levels");
    let err = s
        .restore(&other_levels, &id, &target, &[])
        .expect_err("other levels");
    assert!(
        err.contains("migration levels") && err.contains("metadb 99") && err.contains("logical"),
        "{err}"
    );
    assert!(entries(&target).is_empty(), "nothing written");
    let forced = s
        .restore(&other_levels, &id, &target, &["--force"])
        .expect("forced restore");
    assert_eq!(forced["forced"], true, "{forced}");

    // A wrong key.
    common::daemon::write_key(&s.dir.path().join("wrong-key"));
    let wrong = s.dir.path().join("wrong.toml");
    s.write_config(&wrong, &s.chroma.data_dir(), "wrong-key");
    let target = s.dir.path().join("wrong-key-target");
    let err = s.restore(&wrong, &id, &target, &[]).expect_err("wrong key");
    assert!(err.to_lowercase().contains("key"), "{err}");
    assert!(!target.exists(), "nothing written");

    // A damaged block, then a missing one: named, and nothing left behind.
    let show = s.show(&id);
    let files = blocks_by_file(&show);
    let mut ids = files.values().flatten();
    let (damaged, missing) = (
        ids.next().expect("a block"),
        ids.next().expect("two blocks"),
    );
    let path_of = |b: &str| s.repo().join("blocks").join(&b[..2]).join(b);
    let original = std::fs::read(path_of(damaged)).expect("read block");
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(path_of(damaged), bytes).expect("damage");
    let target = s.dir.path().join("damaged");
    let err = s
        .restore(&s.config, &id, &target, &[])
        .expect_err("damaged");
    assert!(
        err.contains(&format!("blocks/{}/{damaged}", &damaged[..2])),
        "{err}"
    );
    assert!(
        entries(&target).is_empty(),
        "nothing left behind: {:?}",
        entries(&target)
    );
    let err = s
        .json(&s.config, &["backups", "verify", &id, "--full"])
        .expect_err("verify --full finds the damage");
    assert!(err.contains(damaged.as_str()), "{err}");
    std::fs::write(path_of(damaged), original).expect("repair");

    std::fs::remove_file(path_of(missing)).expect("remove block");
    let err = s
        .json(&s.config, &["backups", "verify", &id])
        .expect_err("verify finds the missing block");
    assert!(err.contains(missing.as_str()), "{err}");
    let target = s.dir.path().join("missing");
    let err = s
        .restore(&s.config, &id, &target, &[])
        .expect_err("missing");
    assert!(
        err.contains(&format!("blocks/{}/{missing}", &missing[..2])) && err.contains("missing"),
        "{err}"
    );
    assert!(entries(&target).is_empty());
}

#[test]
fn a_logical_restore_of_a_physical_snapshot_says_how_to_restore_it() {
    let s = Setup::new();
    let taken = s.physical_backup();
    let id = taken["snapshot"].as_str().expect("id");
    let err = s
        .json(
            &s.config,
            &["restore", id, "--collection", "docs", "--as", "docs_copy"],
        )
        .expect_err("logical restore of a physical snapshot");
    assert!(err.contains("--data-dir"), "{err}");
    // And a physical restore of a logical snapshot.
    let logical = s.json(&s.config, &["backup", "--full"]).expect("full");
    let target = s.dir.path().join("t");
    let err = s
        .restore(
            &s.config,
            logical["snapshot"].as_str().expect("id"),
            &target,
            &[],
        )
        .expect_err("physical restore of a logical snapshot");
    assert!(err.contains("logical snapshot"), "{err}");
    // An incremental after a physical snapshot still reads against the
    // newest logical one.
    let inc = s
        .json(&s.config, &["backup", "--incremental"])
        .expect("incremental");
    assert_eq!(inc["parent"], logical["snapshot"], "{inc}");

    // Without chroma.persist_directory, the error names the key.
    let unset = s.dir.path().join("unset.toml");
    let text = std::fs::read_to_string(&s.config).expect("config");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("persist_directory"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&unset, &text).expect("write");
    let err = s
        .json(&unset, &["backup", "--physical"])
        .expect_err("no persist directory");
    assert!(err.contains("chroma.persist_directory"), "{err}");
    std::fs::write(
        &unset,
        text.replace("[backup]\n", "[backup]\nphysical = true\n"),
    )
    .expect("write");
    let (code, out, err) = offline(&unset, &["validate"]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("backup.physical"),
        "{out}{err}"
    );
}

#[test]
fn through_the_daemon_a_physical_snapshot_is_taken_and_restored_as_a_job() {
    use common::daemon::{cli, DaemonProcess};
    let s = Setup::new();
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(std::time::Duration::from_secs(60));
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(&daemon.socket, &all);
        assert_eq!(code, Some(0), "{args:?}: {err}{out}\n{}", daemon.log());
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("json")
    };
    let taken = json(&["backup", "--physical", "--wait"]);
    assert_eq!(taken["type"], "physical", "{taken}");
    let target = s.dir.path().join("by-daemon");
    let d = target.display().to_string();
    let restored = json(&["restore", "latest", "--data-dir", &d]);
    assert_eq!(restored["snapshot"], taken["snapshot"], "{restored}");
    assert!(target.join("chroma.sqlite3").is_file());
    let jobs = json(&["jobs"]);
    let text = jobs.to_string();
    assert!(
        text.contains("\"physical\"") && text.contains("\"restore\""),
        "{text}"
    );
}

/// The daemon takes physical snapshots on `backup.physical_schedule`, and
/// `backup.physical = true` makes the scheduled full backups physical.
#[test]
fn scheduled_physical_snapshots_follow_their_own_key_and_backup_physical() {
    use common::daemon::{cli, DaemonProcess};
    let s = Setup::new();
    let json = |daemon: &DaemonProcess, args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (code, out, err) = cli(&daemon.socket, &all);
        assert_eq!(code, Some(0), "{args:?}: {err}{out}\n{}", daemon.log());
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("json")
    };
    // The first scheduled snapshot of `type` taken by `daemon`.
    let scheduled = |daemon: &DaemonProcess, of_type: &str| -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let list = json(daemon, &["backups", "list"]);
            let found = list["snapshots"].as_array().and_then(|l| {
                l.iter()
                    .find(|b| b["backup_type"] == of_type && b["trigger"] == "schedule")
                    .cloned()
            });
            if let Some(b) = found {
                return b;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no scheduled {of_type} snapshot: {list}\n{}",
                daemon.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    let base = std::fs::read_to_string(&s.config).expect("config");
    let with = |backup: &str| {
        std::fs::write(
            &s.config,
            base.replace("[backup]\n", &format!("[backup]\n{backup}")),
        )
        .expect("config");
    };

    // Its own key: full backups stay nightly, physical ones every 2 s.
    with("enabled = true\nschedule = \"0 0 3 * * *\"\nphysical_schedule = \"*/2 * * * * *\"\n");
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(std::time::Duration::from_secs(60));
    let jobs = json(&daemon, &["jobs"]);
    let kinds: Vec<&str> = jobs["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .filter_map(|j| j["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"physical_backup"), "{jobs}");
    let first = scheduled(&daemon, "physical");
    let id = first["backup_id"]
        .as_str()
        .expect("snapshot id")
        .to_string();
    // A physical snapshot, restorable as one.
    let target = s.dir.path().join("scheduled");
    let restored = s
        .restore(&s.config, &id, &target, &[])
        .unwrap_or_else(|e| panic!("restore of the scheduled snapshot: {e}"));
    assert!(target.join("chroma.sqlite3").is_file(), "{restored}");
    drop(daemon);

    // backup.physical = true: the full schedule takes physical snapshots,
    // and no logical full backup is made.
    with("enabled = true\nphysical = true\nschedule = \"*/2 * * * * *\"\n");
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(std::time::Duration::from_secs(60));
    let count = |list: &Value| list["snapshots"].as_array().map_or(0, Vec::len);
    let before = count(&json(&daemon, &["backups", "list"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let list = loop {
        let list = json(&daemon, &["backups", "list"]);
        if count(&list) > before {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled snapshot: {list}\n{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let types: BTreeSet<&str> = list["snapshots"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|b| b["backup_type"].as_str())
        .collect();
    assert_eq!(types, BTreeSet::from(["physical"]), "{list}");
}
