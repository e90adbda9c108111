//! Change-aware incrementals against a real `chroma run` whose persist
//! directory the test owns (`chroma.persist_directory`): each kind of change
//! is read from Chroma's own sequence numbers and restores equal to the
//! collection at backup time; each reason not to trust the directory falls
//! back to reading every record, logged with its reason.

use crate::common;

use std::path::{Path, PathBuf};

use chromaprod::backup::records::Record;
use chromaprod::chroma::local::LocalChroma;
use chromaprod::chroma::{ProductionChromaStore, RecordBatch};
use common::chroma::ChromaServer;
use common::daemon::{config_text, offline, offline_cmd, outcome};
use common::records::{collection_records, seed, seed_with, store_for};
use serde_json::{json, Value};

struct Setup {
    chroma: ChromaServer,
    store: ProductionChromaStore,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    config: PathBuf,
    collection: String,
    restored: usize,
}

impl Setup {
    /// A Chroma with `docs` (600 records) and a config whose
    /// `persist_directory` is the server's own.
    fn new() -> Setup {
        Self::with(json!({"hnsw": {"space": "l2"}}))
    }

    /// The same, `docs` created with `configuration`.
    fn with(configuration: Value) -> Setup {
        Self::sized(600, configuration)
    }

    /// The same with `n` records.
    fn sized(n: usize, configuration: Value) -> Setup {
        let chroma = ChromaServer::start();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let store = store_for(&chroma.base());
        let collection = rt.block_on(seed_with(&store, "docs", n, 8, configuration));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Setup {
            config: dir.path().join("chromaprod.toml"),
            chroma,
            store,
            rt,
            dir,
            collection,
            restored: 0,
        };
        let persist = s.chroma.data_dir();
        s.point_at(&persist);
        s
    }

    /// Sets `chroma.persist_directory`.
    fn point_at(&mut self, persist: &Path) {
        let text = config_text(
            self.dir.path(),
            &[self.chroma.base()],
            &format!(
                "[backup]\nstorage_path = {:?}\nencrypt = false\n",
                self.dir.path().join("repo").display().to_string()
            ),
        )
        .replace(
            "[chroma]\n",
            &format!(
                "[chroma]\npersist_directory = {:?}\n",
                persist.display().to_string()
            ),
        );
        std::fs::write(&self.config, text).expect("config");
    }

    /// Runs a backup (`--full` or `--incremental`); returns its snapshot id
    /// and the log.
    fn backup(&self, kind: &str) -> (String, String) {
        // Info lines too: the change-aware read says what it read.
        let (code, out, err) = outcome(
            offline_cmd(&self.config, &["--json", "backup", kind])
                .env("CHROMAPROD_LOG", "info")
                .output()
                .expect("run chromaprod"),
        );
        assert_eq!(code, Some(0), "{out}{err}");
        let v: Value = serde_json::from_str(out.lines().last().expect("line")).expect("json");
        (v["snapshot"].as_str().expect("id").to_string(), err)
    }

    fn live(&self) -> Vec<Record> {
        self.rt.block_on(collection_records(&self.store, "docs")).1
    }

    /// Restores `docs` of `snapshot` under a new name and checks it equals
    /// `expected` record by record.
    fn assert_restores(&mut self, snapshot: &str, expected: &[Record]) {
        self.restored += 1;
        let name = format!("docs_{}", self.restored);
        let (code, out, err) = offline(
            &self.config,
            &["restore", snapshot, "--collection", "docs", "--as", &name],
        );
        assert_eq!(code, Some(0), "{out}{err}");
        let got = self.rt.block_on(collection_records(&self.store, &name)).1;
        assert_eq!(got.len(), expected.len(), "records in {snapshot}");
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(g, e, "record {} of {snapshot}", e.id);
        }
    }

    /// Writes `ids` at `version`: an upsert of every field, or an update of
    /// the embedding only or of the metadata only.
    fn write(&self, ids: &[String], version: u32, write: Write) {
        let embedding = write != Write::MetadataOnly;
        let metadata = write != Write::EmbeddingOnly;
        let batch = RecordBatch {
            ids: ids.to_vec(),
            embeddings: embedding.then(|| {
                ids.iter()
                    .map(|_| vec![version as f32 / 100.0; 8])
                    .collect()
            }),
            documents: (write == Write::Upsert).then(|| {
                ids.iter()
                    .map(|i| Some(format!("{i} v{version}")))
                    .collect()
            }),
            metadatas: metadata.then(|| {
                ids.iter()
                    .map(|_| json!({"v": version}).as_object().cloned())
                    .collect()
            }),
            uris: None,
        };
        if write == Write::Upsert {
            self.rt
                .block_on(self.store.upsert(&self.collection, &batch))
                .expect("upsert");
        } else {
            self.rt
                .block_on(self.store.update(&self.collection, &batch))
                .expect("update");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Upsert,
    EmbeddingOnly,
    MetadataOnly,
}

/// The log line of a change-aware read of `docs` (the restored copies are
/// backed up too), if any.
fn feed_line(log: &str) -> Option<&str> {
    log.lines().find(|l| {
        l.contains("reading only the records written since") && l.contains(" collection=docs ")
    })
}

/// The `changed=` count of that line.
fn changed_count(log: &str) -> Option<u64> {
    let line = feed_line(log)?;
    let at = line.find("changed=")? + "changed=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The `read=` field of that line: how the change was found.
fn read_by(log: &str) -> Option<&str> {
    let line = feed_line(log)?;
    let at = line.find("read=")? + "read=".len();
    line[at..]
        .trim_start_matches('"')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("r{i:06}")).collect()
}

#[test]
fn each_kind_of_change_is_read_from_the_feed_and_restores_equal() {
    let mut s = Setup::new();
    let (full, log) = s.backup("--full");
    assert_eq!(
        changed_count(&log),
        None,
        "a full backup reads everything: {log}"
    );
    // A full backup lists the ids from the persist directory, and the
    // recall sample from that segment too.
    assert!(
        log.lines().any(|l| l.contains("recorded sample queries")
            && l.contains(" collection=docs ")
            && l.contains("ids_from=\"persist_directory\"")),
        "a full backup's sample should be listed from the persist directory:\n{log}"
    );
    s.assert_restores(&full, &s.live());

    // Each step: a change, an incremental that reads exactly the records it
    // touched, found the cheapest honest way (`read=`: nothing when the
    // segment's position has not moved; the rows written since the mark
    // with the record count when that count shows nothing deleted; the
    // whole listing otherwise), and a restore equal to the collection at
    // that moment.
    type Change = Box<dyn Fn(&Setup)>;
    let delete = |s: &Setup, ids: Vec<String>| {
        s.rt.block_on(s.store.delete(&s.collection, Some(&ids), None))
            .expect("delete");
    };
    let steps: Vec<(&str, Change, u64, &str)> = vec![
        (
            "adds",
            Box::new(|s: &Setup| s.write(&ids(600..620), 1, Write::Upsert)),
            20,
            "changes",
        ),
        (
            "upserts of existing records",
            Box::new(|s: &Setup| s.write(&ids(10..25), 2, Write::Upsert)),
            15,
            "changes",
        ),
        (
            "metadata-only updates",
            Box::new(|s: &Setup| s.write(&ids(100..105), 3, Write::MetadataOnly)),
            5,
            "changes",
        ),
        (
            "embedding-only updates",
            Box::new(|s: &Setup| s.write(&ids(200..203), 4, Write::EmbeddingOnly)),
            3,
            "changes",
        ),
        (
            "deletes",
            Box::new(move |s: &Setup| delete(s, ids(300..307))),
            0,
            "listing",
        ),
        (
            // The count is the parent's: only the listing can tell.
            "a delete and an add of as many records",
            Box::new(move |s: &Setup| {
                delete(s, ids(400..403));
                s.write(&ids(700..703), 5, Write::Upsert);
            }),
            3,
            "listing",
        ),
        (
            "records deleted and added again under the same ids",
            Box::new(move |s: &Setup| {
                delete(s, ids(410..412));
                s.write(&ids(410..412), 6, Write::Upsert);
            }),
            2,
            "changes",
        ),
        ("nothing", Box::new(|_: &Setup| {}), 0, "nothing"),
        (
            "a delete only, after nothing",
            Box::new(move |s: &Setup| delete(s, ids(500..501))),
            0,
            "listing",
        ),
    ];
    for (what, change, expected, how) in steps {
        change(&s);
        let live = s.live();
        let (snap, log) = s.backup("--incremental");
        assert_eq!(
            changed_count(&log),
            Some(expected),
            "after {what}, the incremental should read {expected} records through the change feed:\n{log}"
        );
        assert_eq!(
            read_by(&log),
            Some(how),
            "after {what}, the change should be found by `{how}`:\n{log}"
        );
        s.assert_restores(&snap, &live);
        // The recall sample's ids are drawn by the same scan of the
        // persist directory (recorded anew whenever the records changed),
        // which is not listed again for them.
        if what != "nothing" {
            assert!(
                log.lines().any(|l| l.contains("recorded sample queries")
                    && l.contains(" collection=docs ")
                    && l.contains("ids_from=\"scan\"")),
                "after {what}, the sample's ids should be drawn by the incremental's scan:\n{log}"
            );
        }
    }
}

#[test]
fn a_collection_dropped_and_created_again_is_read_whole_and_said_so() {
    let mut s = Setup::new();
    s.backup("--full");
    s.rt.block_on(s.store.delete_collection("docs"))
        .expect("drop");
    s.collection = s.rt.block_on(seed(&s.store, "docs", 300, 8));
    s.write(&ids(0..3), 9, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), None, "{log}");
    assert!(
        log.contains("re-created since the parent snapshot"),
        "the log should say why every record was read:\n{log}"
    );
    s.assert_restores(&snap, &live);
    // The next incremental reads through the feed again.
    s.write(&ids(0..2), 10, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), Some(2), "{log}");
    s.assert_restores(&snap, &live);
}

#[test]
fn a_sequence_that_went_backwards_falls_back_with_its_reason() {
    // Flushed every 100 writes, so all 600 seeded records are in the index
    // files and the queue holds nothing Chroma still needs.
    let mut s =
        Setup::with(json!({"hnsw": {"space": "l2", "sync_threshold": 100, "batch_size": 100}}));
    s.backup("--full");
    // What a purged queue does to Chroma's sequence: the collection's
    // position restarts, and new writes get low sequence numbers.
    s.chroma.stop();
    {
        let db =
            rusqlite::Connection::open(s.chroma.data_dir().join("chroma.sqlite3")).expect("open");
        db.execute_batch("DELETE FROM embeddings_queue; UPDATE max_seq_id SET seq_id = 0;")
            .expect("reset");
    }
    s.chroma.restart();
    s.write(&ids(0..4), 5, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), None, "{log}");
    assert!(log.contains("sequence_backwards"), "{log}");
    s.assert_restores(&snap, &live);
}

/// A persist directory put back from an earlier copy (a physical restore, a
/// restored file-system backup) keeps its segment ids but rewinds their
/// sequence: once new writes carry it past the parent's mark, rows written
/// since the copy look older than the mark. Such a directory is read whole.
#[test]
fn a_persist_directory_put_back_from_a_copy_is_read_whole() {
    let mut s = Setup::new();
    s.backup("--full");
    // The directory as it is now, copied while Chroma is stopped.
    s.chroma.stop();
    let data = s.chroma.data_dir();
    let earlier = s.dir.path().join("earlier");
    common::host::copy_tree(&data, &earlier);
    s.chroma.restart();
    // Ten records change and an incremental records them (its mark is
    // ten writes past the copy's position).
    s.write(&ids(0..10), 2, Write::Upsert);
    let (_, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), Some(10), "{log}");
    // The copy is put back, and twenty other records are written: the
    // sequence is past the mark again, and records 0..10 hold their values
    // from before the incremental, under sequence numbers below its mark.
    s.chroma.stop();
    std::fs::rename(&data, s.dir.path().join("replaced")).expect("move away");
    common::host::copy_tree(&earlier, &data);
    s.chroma.restart();
    s.write(&ids(100..120), 3, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), None, "{log}");
    assert!(log.contains("file_replaced"), "{log}");
    s.assert_restores(&snap, &live);
}

#[test]
fn an_unknown_schema_or_a_missing_directory_falls_back_with_its_reason() {
    let mut s = Setup::new();
    s.backup("--full");
    // A copy of Chroma's database with a column renamed.
    let copy = s.dir.path().join("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    {
        let db =
            rusqlite::Connection::open(s.chroma.data_dir().join("chroma.sqlite3")).expect("open");
        db.execute(
            "VACUUM INTO ?1",
            [copy.join("chroma.sqlite3").display().to_string()],
        )
        .expect("copy");
    }
    rusqlite::Connection::open(copy.join("chroma.sqlite3"))
        .expect("open copy")
        .execute_batch("ALTER TABLE embeddings RENAME COLUMN seq_id TO sequence")
        .expect("rename");
    s.point_at(&copy);
    s.write(&ids(0..3), 6, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), None, "{log}");
    assert!(
        log.contains("reason=\"schema\"") || log.contains("reason=schema"),
        "{log}"
    );
    assert!(log.contains("no column seq_id"), "{log}");
    s.assert_restores(&snap, &live);

    s.point_at(&s.dir.path().join("nowhere"));
    s.write(&ids(3..5), 7, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), None, "{log}");
    assert!(log.contains("unreadable"), "{log}");
    s.assert_restores(&snap, &live);
}

#[test]
fn a_directory_another_server_uses_is_not_trusted() {
    let mut s = Setup::new();
    let other = ChromaServer::start();
    // Same collection name, another server: its database does not hold
    // this server's collection.
    let other_store = store_for(&other.base());
    s.rt.block_on(seed(&other_store, "docs", 600, 8));
    s.point_at(&other.data_dir());
    s.backup("--full");
    s.write(&ids(0..3), 8, Write::Upsert);
    let live = s.live();
    let (snap, log) = s.backup("--incremental");
    assert_eq!(changed_count(&log), None, "{log}");
    assert!(log.contains("no_collection"), "{log}");
    s.assert_restores(&snap, &live);
}

/// A writer upserts existing records and adds new ones while a change-aware
/// incremental runs over 5,000 records (three pages of the counted scan):
/// the read stays the counted one (nothing deleted), every record that
/// existed for the whole backup is in the snapshot, none older than it was
/// when the backup began, and a record nobody wrote during the backup is
/// whole (every field of one version).
#[test]
fn a_writer_during_a_change_aware_incremental_loses_no_record() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    const N: usize = 5000;
    let s = Setup::sized(N, json!({"hnsw": {"space": "l2"}}));
    s.backup("--full");
    let before: HashMap<String, Record> = s.live().into_iter().map(|r| (r.id.clone(), r)).collect();
    // Per id, the rounds it was written in (version 0: as seeded).
    let versions: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let (stop, rounds) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let writer = {
        let (store, col) = (s.store.clone(), s.collection.clone());
        let (versions, stop, rounds) = (versions.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let mut round = 0u32;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                // Ten existing records spread over the pages, five new ones.
                let start = (round as usize * 377) % (N - 10);
                let mut batch = ids(start..start + 10);
                batch.extend(ids(10_000 + round as usize * 5..10_005 + round as usize * 5));
                {
                    let mut v = versions.lock().expect("lock");
                    for id in &batch {
                        v.entry(id.clone()).or_default().push(round);
                    }
                }
                let records = RecordBatch {
                    ids: batch.clone(),
                    embeddings: Some(
                        batch
                            .iter()
                            .map(|_| vec![round as f32 / 100.0; 8])
                            .collect(),
                    ),
                    documents: Some(
                        batch
                            .iter()
                            .map(|i| Some(format!("{i} v{round}")))
                            .collect(),
                    ),
                    metadatas: Some(
                        batch
                            .iter()
                            .map(|_| json!({"v": round}).as_object().cloned())
                            .collect(),
                    ),
                    uris: None,
                };
                rt.block_on(store.upsert(&col, &records)).expect("upsert");
                rounds.store(round, Ordering::SeqCst);
            }
        })
    };
    while rounds.load(Ordering::SeqCst) < 5 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Rounds up to `first` were acknowledged before the backup began.
    let first = rounds.load(Ordering::SeqCst);
    let (snap, log) = s.backup("--incremental");
    let last = rounds.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(
        last > first,
        "no write landed during the backup; the test proves nothing"
    );
    assert_eq!(read_by(&log), Some("changes"), "{log}");
    // Its requests to Chroma went one at a time, each after a pause, while
    // the writer's commits moved Chroma's file (`chroma::courtesy`).
    assert!(
        log.contains("requests to Chroma left it alone while it wrote"),
        "{log}"
    );

    let (code, out, err) = offline(
        &s.config,
        &["restore", &snap, "--collection", "docs", "--as", "docs_w"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let got: HashMap<String, Record> =
        s.rt.block_on(collection_records(&s.store, "docs_w"))
            .1
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    let missing: Vec<&String> = before.keys().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "existed for the whole backup but missing: {missing:?}"
    );
    let versions = versions.lock().expect("lock");
    let created_before: Vec<&String> = versions
        .iter()
        .filter(|(id, v)| !before.contains_key(*id) && v.iter().any(|r| *r <= first))
        .map(|(id, _)| id)
        .filter(|id| !got.contains_key(*id))
        .collect();
    assert!(
        created_before.is_empty(),
        "created before the backup began but missing: {created_before:?}"
    );
    for (id, r) in &got {
        let written = versions.get(id).cloned().unwrap_or_default();
        let seeded = before.get(id);
        // The version each field holds (0: as seeded), if any.
        let version = |field_is: &dyn Fn(u32) -> bool, seeded_is: bool| -> Option<u32> {
            if seeded_is {
                return Some(0);
            }
            written.iter().copied().find(|v| field_is(*v))
        };
        let doc = version(
            &|v| r.document.as_deref() == Some(format!("{id} v{v}").as_str()),
            seeded.is_some_and(|w| w.document == r.document),
        );
        let meta = version(
            &|v| r.metadata.as_ref().and_then(|m| m.get("v")) == Some(&json!(v)),
            seeded.is_some_and(|w| w.metadata == r.metadata),
        );
        let emb = version(
            &|v| r.embedding == Some(vec![v as f32 / 100.0; 8]),
            seeded.is_some_and(|w| w.embedding == r.embedding),
        );
        let (Some(doc), Some(meta), Some(emb)) = (doc, meta, emb) else {
            panic!("{id} holds a value it never had: {r:?}");
        };
        // Not older than when the backup began; nothing written after it.
        let floor = written.iter().copied().filter(|v| *v <= first).max();
        let floor = floor.unwrap_or(0);
        for v in [doc, meta, emb] {
            assert!(
                v >= floor && v <= last + 1,
                "{id}: version {v}, but it was at version {floor} when the backup began (rounds {first}..={last} ran during it)"
            );
        }
        if !written.iter().any(|v| *v > first) {
            assert!(
                doc == meta && meta == emb,
                "{id} was not written during the backup, yet its fields are from versions {doc}, {meta}, {emb}"
            );
            assert!(
                seeded.is_some() || doc > 0,
                "{id} was never written but is in the snapshot"
            );
        }
    }
}

/// A store made courteous beside a local Chroma: after Chroma commits a
/// write, its reads go one at a time, each after a pause, and a backup's
/// fetches through it are small; its own writes are never held back.
#[test]
fn a_courteous_store_pauses_its_reads_while_chroma_writes_and_never_its_writes() {
    use chromaprod::backup::source::{
        next_batch_size, CollectionReader, IdSpool, COURTEOUS_FETCH_BYTES,
    };

    let s = Setup::new();
    let (local, courteous) = s.rt.block_on(async {
        let local = LocalChroma::open(&s.chroma.data_dir())
            .await
            .expect("local chroma");
        // The first look sets where the file stands.
        local.writing().await;
        let courteous = s.store.courteous(&local);
        (local, courteous)
    });
    let paused = || courteous.courtesy().expect("courteous").paused().0;
    // 200 records with 4 KiB documents: 500 to a fetch as a rule, 31 while
    // Chroma writes.
    const BIG: usize = 200;
    let big = ids(20_000..20_000 + BIG);
    s.rt.block_on(async {
        for part in big.chunks(50) {
            let records = RecordBatch {
                ids: part.to_vec(),
                embeddings: Some(vec![vec![0.5; 8]; part.len()]),
                documents: Some(vec![Some("d".repeat(4096)); part.len()]),
                metadatas: None,
                uris: None,
            };
            courteous
                .upsert(&s.collection, &records)
                .await
                .expect("upsert");
        }
        assert_eq!(paused(), 0, "writes go as they come");
        assert!(local.writing().await, "Chroma committed the upserts");
        for _ in 0..3 {
            courteous.count(&s.collection).await.expect("count");
        }
    });
    assert!(
        paused() >= 2,
        "each read after the first waited its turn ({} did)",
        paused()
    );

    // Fetch sizes: each fetch after the first (which learns the record
    // size) is sized for a writing Chroma when the read before it found
    // one, and for a quiet one when not.
    let fetch_sizes = |write_between: bool| -> Vec<usize> {
        s.rt.block_on(async {
            let collection = courteous.get_collection("docs").await.expect("collection");
            let mut spool = IdSpool::new().expect("spool");
            for id in &big {
                spool.push(id).expect("push");
            }
            let mut reader = CollectionReader::from_ids(
                courteous.clone(),
                collection,
                spool.finish().expect("list"),
            );
            let mut sizes = Vec::new();
            loop {
                if write_between {
                    let one = RecordBatch {
                        ids: vec!["written-between".into()],
                        embeddings: Some(vec![vec![0.1; 8]]),
                        documents: None,
                        metadatas: None,
                        uris: None,
                    };
                    courteous.upsert(&s.collection, &one).await.expect("upsert");
                    // The look at Chroma's file before the fetch sees it.
                    courteous.count(&s.collection).await.expect("count");
                }
                match reader.next_batch().await.expect("batch") {
                    Some(b) => sizes.push(b.len()),
                    None => return sizes,
                }
            }
        })
    };
    let courteous_batch = next_batch_size(4096, COURTEOUS_FETCH_BYTES);
    let writing = fetch_sizes(true);
    assert_eq!(writing.iter().sum::<usize>(), BIG);
    assert!(
        writing[1..].iter().all(|n| *n <= courteous_batch) && writing.len() > 3,
        "while Chroma writes, fetches of at most {courteous_batch}: {writing:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let quiet = fetch_sizes(false);
    assert_eq!(
        quiet.len(),
        2,
        "quiet: the first fetch, then the rest: {quiet:?}"
    );
}
