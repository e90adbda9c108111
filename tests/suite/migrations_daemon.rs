//! Migrations through the daemon and the CLI: applied at start-up before
//! READY=1, resumed after a kill, one runner at a time across daemons, a
//! killed lock holder, a failing start-up, and the `migrate` verbs.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chromaprod::chroma::ProductionChromaStore;
use chromaprod::migrate::history::HistoryStore;
use chromaprod::migrate::{HistoryEntry, Outcome};
use common::chroma::ChromaServer;
use common::daemon::{cli, config_text, offline, DaemonProcess};
use common::notify::NotifyListener;
use common::proxy::{Fault, FaultProxy};
use common::records::{seed, store_for};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A temp dir with a config for `chroma_url` and a migrations directory.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    migrations: PathBuf,
}

fn setup(chroma_url: &str, migrations: &Path, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        dir.path(),
        &[chroma_url.to_string()],
        &format!(
            "[migrations]\npath = {:?}\n{extra}",
            migrations.display().to_string()
        ),
    );
    let config = dir.path().join("chromaprod.toml");
    std::fs::write(&config, text).expect("config");
    Setup {
        dir,
        config,
        migrations: migrations.to_path_buf(),
    }
}

fn migrations_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).expect("write");
    }
    d
}

async fn history(store: &ProductionChromaStore) -> Vec<HistoryEntry> {
    HistoryStore::peek(store, "chromaprod-migrations")
        .await
        .expect("history")
}

const REBUILD: &str = "version = 1\nname = \"docs cosine\"\n[[up]]\nop = \"rebuild\"\ncollection = \"docs\"\nconfiguration = { hnsw = { space = \"cosine\" } }\nsettle_ms = 0\n";

const RENAME: &str = "version = 2\nname = \"writer\"\n[[up]]\nop = \"rename_metadata_key\"\ncollection = \"docs\"\nfrom = \"author\"\nto = \"writer\"\n";

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .expect("write");
    let mut s = String::new();
    c.read_to_string(&mut s).expect("read");
    s
}

#[test]
fn auto_migrate_applies_before_ready_and_is_in_status_metrics_and_audit() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    let original = rt.block_on(seed(&store, "docs", 1500, 16));
    let m = migrations_dir(&[
        ("0001_docs_cosine.toml", REBUILD),
        ("0002_writer.toml", RENAME),
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let s = setup(
        &chroma.base(),
        m.path(),
        &format!("auto_migrate = true\nrestore_point = false\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let notify = NotifyListener::bind(s.dir.path());
    let daemon = DaemonProcess::spawn(
        &s.config,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    let (ready_at, _) = notify
        .wait_for(0, Duration::from_secs(90), |m| m.has("READY=1"))
        .unwrap_or_else(|| panic!("never ready; log:\n{}", daemon.log()));
    // Progress showed in STATUS= before READY=1, with more start-up time asked for.
    let before: Vec<_> = notify.messages()[..ready_at].to_vec();
    assert!(
        before.iter().any(|m| m
            .value("STATUS")
            .is_some_and(|s| s.starts_with("migrating: migrate 1 rebuild"))),
        "{:?}",
        notify.statuses()
    );
    assert!(before
        .iter()
        .any(|m| m.value("EXTEND_TIMEOUT_USEC").is_some()));
    // Both applied before READY: the collection was already rebuilt then.
    let h = rt.block_on(history(&store));
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|e| e.outcome == Outcome::Applied), "{h:?}");
    let docs = rt.block_on(store.get_collection("docs")).expect("docs");
    assert_ne!(docs.id, original);
    assert_eq!(docs.configuration_json["hnsw"]["space"], "cosine");

    let (code, out, err) = cli(&daemon.socket, &["--json", "migrate", "status"]);
    assert_eq!(code, Some(0), "{err}");
    let st: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(st["version"], 2, "{st}");
    assert_eq!(st["migrations"][1]["state"], "applied");
    assert!(
        scrape(port).contains("chromaprod_migration_version 2"),
        "{}",
        scrape(port)
    );
    let audit = std::fs::read_to_string(s.dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(audit.contains("\"migrate_up\""), "{audit}");
    assert!(
        daemon.log().contains("migration applied"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_daemon_killed_mid_rebuild_resumes_where_it_was() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    let original = rt.block_on(seed(&store, "docs", 6000, 32));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let m = migrations_dir(&[("0001_docs_cosine.toml", REBUILD)]);
    let s = setup(
        &format!("http://{}", proxy.addr()),
        m.path(),
        "auto_migrate = true\nrestore_point = false\nlock_ttl = \"5s\"\n",
    );
    let mut daemon = DaemonProcess::spawn(&s.config, &[]);
    // Kill once the copy is underway (its first checkpoint is saved right
    // after the first batch; later ones at most every 2 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    let staging_id = loop {
        let h = rt.block_on(history(&store));
        let cp = h
            .first()
            .and_then(|e| e.checkpoint.clone())
            .unwrap_or(Value::Null);
        if cp["phase"] == "copy" && cp["last_id"].is_string() {
            break rt
                .block_on(store.get_collection("docs.rebuild-v1"))
                .expect("staging")
                .id;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never got going; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    daemon.signal(Signal::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(5)).expect("killed");
    let h = rt.block_on(history(&store));
    assert_eq!(h[0].outcome, Outcome::Running);
    let docs = rt.block_on(store.get_collection("docs")).expect("docs");
    assert_eq!(docs.id, original, "the source still answers to its name");
    let copied_before = rt.block_on(store.count(&staging_id)).expect("count");
    assert!(copied_before > 0 && copied_before < 6000, "{copied_before}");

    proxy.set(Fault::PassThrough);
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(90));
    let log = daemon.log();
    assert!(log.contains("resuming migration"), "{log}");
    let docs = rt.block_on(store.get_collection("docs")).expect("docs");
    assert_eq!(
        docs.id, staging_id,
        "the copy continued into the same collection"
    );
    assert_eq!(docs.configuration_json["hnsw"]["space"], "cosine");
    assert_eq!(rt.block_on(store.count(&docs.id)).expect("count"), 6000);
    let h = rt.block_on(history(&store));
    assert_eq!(h[0].outcome, Outcome::Applied);
    assert_eq!(
        rt.block_on(store.get_collection("docs.pre-v1"))
            .expect("kept")
            .id,
        original
    );
}

#[test]
fn two_daemons_started_at_once_apply_each_migration_once() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 3000, 16));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    proxy.set(Fault::Latency(Duration::from_millis(20)));
    let m = migrations_dir(&[
        ("0001_docs_cosine.toml", REBUILD),
        ("0002_writer.toml", RENAME),
    ]);
    let url = format!("http://{}", proxy.addr());
    let extra =
        "auto_migrate = true\nrestore_point = false\nlock_ttl = \"5s\"\nlock_wait = \"2m\"\n";
    let (a, b) = (setup(&url, m.path(), extra), setup(&url, m.path(), extra));
    let da = DaemonProcess::spawn(&a.config, &[]);
    let db = DaemonProcess::spawn(&b.config, &[]);
    da.wait_ready(Duration::from_secs(120));
    db.wait_ready(Duration::from_secs(120));
    let logs = [da.log(), db.log()];
    let applied: usize = logs
        .iter()
        .map(|l| l.matches("migration applied").count())
        .sum();
    assert_eq!(
        applied, 2,
        "each migration applied exactly once:\n{}\n---\n{}",
        logs[0], logs[1]
    );
    let waited = logs
        .iter()
        .filter(|l| l.contains("waiting for the migration lock"))
        .count();
    assert_eq!(
        waited, 1,
        "one daemon waited for the other:\n{}\n---\n{}",
        logs[0], logs[1]
    );
    // The waiter saw them applied and ran nothing.
    assert!(
        logs.iter()
            .any(|l| l.contains("migrations up to date applied=0")),
        "{logs:?}"
    );
    let h = rt.block_on(history(&store));
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|e| e.outcome == Outcome::Applied));
    assert_eq!(h[0].token, h[1].token, "both under one lease");
}

#[test]
fn a_killed_lock_holder_frees_the_lock_when_its_lease_ends() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 4000, 16));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    proxy.set(Fault::Latency(Duration::from_millis(60)));
    let m = migrations_dir(&[("0001_docs_cosine.toml", REBUILD)]);
    let url = format!("http://{}", proxy.addr());
    let extra = "auto_migrate = true\nrestore_point = false\nlock_ttl = \"6s\"\n";
    let (a, b) = (setup(&url, m.path(), extra), setup(&url, m.path(), extra));
    let mut da = DaemonProcess::spawn(&a.config, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !da.log().contains("migration lock taken") {
        assert!(Instant::now() < deadline, "{}", da.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    da.signal(Signal::SIGKILL);
    da.wait_timeout(Duration::from_secs(5)).expect("killed");
    let killed = Instant::now();

    let db = DaemonProcess::spawn(&b.config, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.log().contains("migration lock taken") {
        assert!(Instant::now() < deadline, "{}", db.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = killed.elapsed();
    let log = db.log();
    assert!(log.contains("waiting for the migration lock"), "{log}");
    assert!(
        log.contains(&format!("(pid {})", da.pid())),
        "the holder is named: {log}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6 + 5),
        "the lock came free at the lease's end, not before or long after: {waited:?}"
    );
    proxy.set(Fault::PassThrough);
    db.wait_ready(Duration::from_secs(90));
    let h = rt.block_on(history(&store));
    assert_eq!(h[0].outcome, Outcome::Applied);
    assert_eq!(
        rt.block_on(store.get_collection("docs"))
            .expect("docs")
            .configuration_json["hnsw"]["space"],
        "cosine"
    );
}

#[test]
fn a_failing_startup_migration_stops_the_daemon_before_ready() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 100, 4));
    let m = migrations_dir(&[(
        "0001_bad.toml",
        "version = 1\nname = \"bad\"\n[[up]]\nop = \"rename_collection\"\nfrom = \"nope\"\nto = \"other\"\n",
    )]);
    let s = setup(
        &chroma.base(),
        m.path(),
        "auto_migrate = true\nrestore_point = false\n",
    );
    let notify = NotifyListener::bind(s.dir.path());
    let mut daemon = DaemonProcess::spawn(
        &s.config,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    let status = daemon.wait_timeout(Duration::from_secs(60)).expect("exits");
    assert_eq!(status.code(), Some(70), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("migration 1 (bad) failed at operation 1 (rename_collection)")
            && log.contains("\"nope\" does not exist"),
        "{log}"
    );
    assert!(!notify.messages().iter().any(|m| m.has("READY=1")));
    let h = rt.block_on(history(&store));
    assert_eq!(h[0].outcome, Outcome::Failed);

    // Invalid files: exit 65 with every problem named, before touching Chroma.
    std::fs::write(
        m.path().join("0002_x.toml"),
        "version = 2\nname = \"x\"\ndependencies = [9]\n[[up]]\nop = \"teleport\"\n",
    )
    .expect("write");
    std::fs::write(
        m.path().join("0003_y.toml"),
        "version = 3\nname = \"y\"\ndependencies = [9]\n[[up]]\nop = \"drop_collection\"\nname = \"docs\"\n",
    )
    .expect("write");
    let mut daemon = DaemonProcess::spawn(&s.config, &[]);
    let status = daemon.wait_timeout(Duration::from_secs(60)).expect("exits");
    assert_eq!(status.code(), Some(65), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("teleport") && log.contains("depends on version 9"),
        "{log}"
    );
}

#[test]
fn migrate_verbs_work_over_the_socket_and_offline() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 200, 4));
    let m = migrations_dir(&[
        (
            "0001_meta.toml",
            "version = 1\nname = \"meta\"\n[[up]]\nop = \"update_collection_metadata\"\ncollection = \"docs\"\nset = { stage = 1 }\n[[down]]\nop = \"update_collection_metadata\"\ncollection = \"docs\"\nunset = [\"stage\"]\n",
        ),
        ("0002_writer.toml", RENAME),
    ]);
    let s = setup(&chroma.base(), m.path(), "restore_point = false\n");
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(30));

    let (code, out, err) = cli(&daemon.socket, &["--json", "migrate", "status"]);
    assert_eq!(code, Some(0), "{err}");
    let st: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(st["pending"], json!([1, 2]), "{st}");
    let (code, out, err) = cli(&daemon.socket, &["migrate", "up", "--to", "1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("migration 1 update_collection_metadata"),
        "progress is shown: {err}"
    );
    let (code, out, _) = cli(&daemon.socket, &["migrate", "status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("version 1") && out.contains("pending: 2"),
        "{out}"
    );
    let (code, _, err) = cli(&daemon.socket, &["migrate", "up"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&daemon.socket, &["migrate", "down", "--to", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&daemon.socket, &["--json", "migrate", "validate"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let valid: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(valid["valid"], true, "{out}");
    let audit = std::fs::read_to_string(s.dir.path().join("state/audit.jsonl")).expect("audit");
    assert!(
        audit.contains("\"migrate_up\"") && audit.contains("\"migrate_down\""),
        "{audit}"
    );
    drop(daemon);

    // Offline, the same verbs work from the config file alone.
    let (code, out, err) = offline(&s.config, &["migrate", "up"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let h = rt.block_on(history(&store));
    assert_eq!(h.len(), 2);
    let docs = rt.block_on(store.get_collection("docs")).expect("docs");
    assert_eq!(docs.metadata.expect("m")["stage"], 1);
    // An edit of an applied file: status exits 65 and names it; validate fails; repair fixes.
    let f = s.migrations.join("0002_writer.toml");
    std::fs::write(&f, format!("{RENAME}# edited\n")).expect("edit");
    let (code, out, _) = offline(&s.config, &["migrate", "status"]);
    assert_eq!(code, Some(65), "{out}");
    assert!(
        out.contains("applied, file changed") && out.contains("problem:"),
        "{out}"
    );
    let (code, _, err) = offline(&s.config, &["migrate", "validate"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("migrate repair"), "{err}");
    let (code, _, err) = offline(&s.config, &["migrate", "repair"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = offline(&s.config, &["migrate", "stamp", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rt.block_on(history(&store)).len(), 1);
    let (code, out, err) = offline(&s.config, &["migrate", "new", "backfill lang"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.trim().ends_with("0003_backfill_lang.toml"), "{out}");
    assert!(Path::new(out.trim()).exists());
}
