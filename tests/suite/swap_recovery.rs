//! A process killed between the two renames of a swap (restore
//! `--mode replace`, migration `rebuild`): the name is missing until the
//! next start of the daemon or of an offline command finishes the swap
//! from the journal.
//!
//! Chroma traffic goes through a proxy that lets the first rename
//! (`PUT …/collections/{id}`) through and blackholes everything after it,
//! so the process stalls right after the first rename and is killed there.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chromaprod::chroma::swap::{entries, JOURNAL_COLLECTION};
use chromaprod::chroma::ProductionChromaStore;
use chromaprod::migrate::history::HistoryStore;
use chromaprod::migrate::Outcome;
use common::chroma::ChromaServer;
use common::daemon::{cli, config_text, encrypted_setup, offline, offline_cmd, DaemonProcess};
use common::proxy::{Fault, FaultProxy};
use common::records::{seed, store_for};
use nix::sys::signal::Signal;
use serde_json::Value;

/// `PUT /api/v2/…/collections/{id} HTTP/1.1`: a rename (or another change
/// of a collection; restore and rebuild make none before their swap).
fn is_rename(line: &str) -> bool {
    line.starts_with("PUT ")
        && line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.rsplit_once("/collections/"))
            .is_some_and(|(_, id)| !id.is_empty() && !id.contains('/'))
}

/// A config for `chroma_url` with an encrypted repository; returns it and its dir.
fn setup(chroma_url: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    encrypted_setup(chroma_url, &format!("lock_ttl = \"10s\"\n{extra}"))
}

/// A full backup (through the CLI, offline); returns its snapshot id.
fn full_backup(config: &Path) -> String {
    let (code, out, err) = offline(config, &["--json", "backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str::<Value>(out.lines().last().expect("line")).expect("json")["snapshot"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Waits until `name` exists (checked straight on Chroma); returns its id.
fn wait_for(
    rt: &tokio::runtime::Runtime,
    store: &ProductionChromaStore,
    name: &str,
    log: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = rt.block_on(store.get_collection(name)) {
            return c.id;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never appeared; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(rt: &tokio::runtime::Runtime, store: &ProductionChromaStore) -> Vec<String> {
    let mut v: Vec<String> = rt
        .block_on(store.list_collections())
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    v.sort();
    v
}

#[test]
fn a_daemon_killed_between_the_renames_of_a_restore_finishes_the_swap_at_its_next_start() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    let original = rt.block_on(seed(&store, "docs", 1500, 32));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let (dir, config) = setup(&format!("http://{}", proxy.addr()), "");
    let id = full_backup(&config);
    // The live collection changes after the backup: 1499 records, the snapshot 1500.
    rt.block_on(store.delete(&original, Some(&["r000001".to_string()]), None))
        .expect("delete one");

    let mut daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    proxy.after(is_rename, Fault::Blackhole);
    let socket = daemon.socket.clone();
    let id2 = id.clone();
    let restore = std::thread::spawn(move || cli(&socket, &["restore", &id2, "--mode", "replace"]));
    let previous = format!("docs-pre-restore-{id}");
    let staging = format!("docs-restore-{id}");
    let moved = wait_for(&rt, &store, &previous, || daemon.log());
    assert_eq!(moved, original);
    let staged = rt
        .block_on(store.get_collection(&staging))
        .expect("staging")
        .id;
    daemon.signal(Signal::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(5)).expect("killed");
    let _ = restore.join();
    assert!(
        rt.block_on(store.get_collection("docs")).is_err(),
        "killed between the renames: docs should be missing now; {:?}",
        names(&rt, &store)
    );
    assert_eq!(rt.block_on(entries(&store)).expect("journal").len(), 1);

    proxy.set(Fault::PassThrough);
    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    let docs = rt
        .block_on(store.get_collection("docs"))
        .unwrap_or_else(|e| {
            panic!(
                "docs is missing after the restart ({e}): {:?}; log:\n{}",
                names(&rt, &store),
                daemon.log()
            )
        });
    assert_eq!(docs.id, staged, "the restored collection holds the name");
    assert_eq!(rt.block_on(store.count(&docs.id)).expect("count"), 1500);
    // Replace without --keep-previous: the old collection is gone too.
    assert_eq!(
        names(&rt, &store),
        vec![JOURNAL_COLLECTION.to_string(), "docs".to_string()]
    );
    assert!(rt.block_on(entries(&store)).expect("journal").is_empty());
    let log = daemon.log();
    assert!(
        log.contains("interrupted restore swap of \"docs\""),
        "{log}"
    );
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(
        audit.contains("swap_recovered") && audit.contains("finished"),
        "{audit}"
    );
}

#[test]
fn an_offline_restore_killed_between_the_renames_is_finished_by_the_next_offline_command() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    let original = rt.block_on(seed(&store, "docs", 1500, 32));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let (_dir, config) = setup(&format!("http://{}", proxy.addr()), "");
    let id = full_backup(&config);
    rt.block_on(store.delete(&original, Some(&["r000001".to_string()]), None))
        .expect("delete one");

    proxy.after(is_rename, Fault::Blackhole);
    let mut child = offline_cmd(
        &config,
        &["restore", &id, "--mode", "replace", "--keep-previous"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("restore");
    let previous = format!("docs-pre-restore-{id}");
    wait_for(&rt, &store, &previous, String::new);
    let staged = rt
        .block_on(store.get_collection(&format!("docs-restore-{id}")))
        .expect("staging")
        .id;
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        rt.block_on(store.get_collection("docs")).is_err(),
        "{:?}",
        names(&rt, &store)
    );

    // The next offline command that touches Chroma finishes the swap first.
    proxy.set(Fault::PassThrough);
    let (code, out, err) = offline(&config, &["--json", "backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let docs = rt
        .block_on(store.get_collection("docs"))
        .unwrap_or_else(|e| {
            panic!(
                "docs is missing after the next command ({e}): {:?}; stderr:\n{err}",
                names(&rt, &store)
            )
        });
    assert!(
        err.contains("interrupted restore swap of \"docs\"") && err.contains("finished"),
        "{err}"
    );
    assert_eq!(docs.id, staged);
    assert_eq!(rt.block_on(store.count(&docs.id)).expect("count"), 1500);
    // --keep-previous: the old data stays, under the name the journal gave.
    let kept = rt.block_on(store.get_collection(&previous)).expect("kept");
    assert_eq!(kept.id, original);
    assert_eq!(rt.block_on(store.count(&kept.id)).expect("count"), 1499);
    assert!(rt.block_on(entries(&store)).expect("journal").is_empty());
    // The backup saw docs, and not the journal.
    let last: Value = serde_json::from_str(out.lines().last().expect("line")).expect("json");
    let backed: Vec<&str> = last["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(backed.contains(&"docs"), "{last}");
    assert!(!backed.contains(&JOURNAL_COLLECTION), "{last}");
}

const REBUILD: &str = "version = 1\nname = \"docs cosine\"\n[[up]]\nop = \"rebuild\"\ncollection = \"docs\"\nconfiguration = { hnsw = { space = \"cosine\" } }\nsettle_ms = 0\n";

#[test]
fn a_daemon_killed_between_the_renames_of_a_rebuild_gets_the_name_back_at_start_without_migrating()
{
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    let original = rt.block_on(seed(&store, "docs", 1500, 16));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let m = tempfile::tempdir().expect("tempdir");
    std::fs::write(m.path().join("0001_docs_cosine.toml"), REBUILD).expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let with = |auto: bool| {
        let text = config_text(
            dir.path(),
            &[format!("http://{}", proxy.addr())],
            &format!(
                "[migrations]\npath = {:?}\nauto_migrate = {auto}\nrestore_point = false\nlock_ttl = \"5s\"\n",
                m.path().display().to_string()
            ),
        );
        let config = dir.path().join("chromaprod.toml");
        std::fs::write(&config, text).expect("config");
        config
    };

    proxy.after(is_rename, Fault::Blackhole);
    let mut daemon = DaemonProcess::spawn(&with(true), &[]);
    let moved = wait_for(&rt, &store, "docs.pre-v1", || daemon.log());
    assert_eq!(moved, original);
    let staged = rt
        .block_on(store.get_collection("docs.rebuild-v1"))
        .expect("copy")
        .id;
    daemon.signal(Signal::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(5)).expect("killed");
    assert!(
        rt.block_on(store.get_collection("docs")).is_err(),
        "{:?}",
        names(&rt, &store)
    );

    // Started without auto_migrate: the swap is finished all the same.
    proxy.set(Fault::PassThrough);
    let config = with(false);
    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let docs = rt
        .block_on(store.get_collection("docs"))
        .unwrap_or_else(|e| {
            panic!(
                "docs is missing after the restart ({e}); log:\n{}",
                daemon.log()
            )
        });
    assert_eq!(docs.id, staged);
    assert_eq!(docs.configuration_json["hnsw"]["space"], "cosine");
    assert_eq!(rt.block_on(store.count(&docs.id)).expect("count"), 1500);
    assert_eq!(
        rt.block_on(store.get_collection("docs.pre-v1"))
            .expect("kept")
            .id,
        original
    );
    assert!(rt.block_on(entries(&store)).expect("journal").is_empty());
    drop(daemon);

    // The migration, still recorded as running, completes on the next up.
    let (code, out, err) = offline(&config, &["migrate", "up"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let h = rt
        .block_on(HistoryStore::peek(&store, "chromaprod-migrations"))
        .expect("history");
    assert_eq!(h[0].outcome, Outcome::Applied);
    assert_eq!(
        rt.block_on(store.get_collection("docs")).expect("docs").id,
        staged
    );
}
