//! Backups through the real daemon and CLI: progress, schedules, restore
//! with no daemon at all, and what SIGKILL and SIGTERM leave behind.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, config_text, generate_key, offline, DaemonProcess};
use common::proxy::{Fault, FaultProxy};
use common::records::{seed, store_for};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    repo: PathBuf,
}

fn setup(chroma_url: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("backup-key");
    generate_key(&key);
    let repo = dir.path().join("repo");
    let text = config_text(
        dir.path(),
        &[chroma_url.to_string()],
        &format!(
            "[backup]\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\nlock_ttl = \"10s\"\n{extra}",
            repo.display().to_string(),
            key.display().to_string()
        ),
    );
    let config = dir.path().join("chromaprod.toml");
    std::fs::write(&config, text).expect("config");
    Setup { dir, config, repo }
}

fn snapshots(socket: &Path) -> Vec<Value> {
    let (code, out, err) = cli(socket, &["--json", "backups", "list"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str::<Value>(out.trim()).expect("json")["snapshots"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Complete objects below `dir` (the local backend stages writes as `KEY#N`).
/// Polls `jobs` until job `id` is in `state`.
fn wait_job(socket: &Path, id: u64, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = cli(socket, &["--json", "jobs"]);
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        let now = v["jobs"]
            .as_array()
            .and_then(|j| j.iter().find(|x| x["id"] == id))
            .map(|x| x["state"].clone());
        if now == Some(json!(state)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never became {state}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count_files(&e.path())
                    } else {
                        usize::from(!e.file_name().to_string_lossy().contains('#'))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn backup_through_the_daemon_then_restore_on_a_host_without_one() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 1500, 32));
    let s = setup(&chroma.base(), "");
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));

    // Progress streams as JSON events, then the result.
    let (code, out, err) = cli(&daemon.socket, &["--json", "backup", "--full", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().any(|l| l["event"]["phase"] == "backup"),
        "{out}"
    );
    let result = lines.last().expect("result");
    assert_eq!(result["collections"][0]["records"], 1500);
    let id = result["snapshot"].as_str().expect("id").to_string();

    // Without --wait: a job id at once; the job shows in `jobs`.
    let (code, out, _) = cli(&daemon.socket, &["--json", "backup", "--incremental"]);
    assert_eq!(code, Some(0));
    let job = serde_json::from_str::<Value>(out.trim()).expect("json")["job"]
        .as_u64()
        .expect("job id");
    wait_job(&daemon.socket, job, "succeeded");
    assert_eq!(snapshots(&daemon.socket).len(), 2);
    drop(daemon);

    // A fresh host: no daemon, only the config file and the key.
    let (code, out, err) = offline(
        &s.config,
        &["restore", &id, "--collection", "docs", "--as", "docs_copy"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let copy = rt
        .block_on(store.get_collection("docs_copy"))
        .expect("restored");
    assert_eq!(rt.block_on(store.count(&copy.id)).expect("count"), 1500);
    let (code, out, _) = offline(&s.config, &["backups", "verify", &id, "--full"]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn sigkill_mid_backup_leaves_no_snapshot_and_the_next_backup_reuses_chunks() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "big", 12_000, 128));
    // Reads go through a proxy that slows every request, so the backup takes seconds.
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let s = setup(&format!("http://{}", proxy.addr()), "");
    let mut daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    proxy.set(Fault::Latency(Duration::from_millis(150)));

    let (code, _, err) = cli(&daemon.socket, &["backup", "--full"]);
    assert_eq!(code, Some(0), "{err}");
    // Kill as soon as the first chunk is stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_files(&s.repo.join("chunks")) == 0 {
        assert!(
            Instant::now() < deadline,
            "no chunk was ever written; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal(Signal::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(5)).expect("killed");
    assert_eq!(
        count_files(&s.repo.join("snapshots")),
        0,
        "a killed backup left a snapshot"
    );

    // Restart: the repository opens, the stale lock does not block, the backup completes and reuses chunks.
    proxy.set(Fault::PassThrough);
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    let (code, out, err) = cli(&daemon.socket, &["--json", "backup", "--full", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}\nlog:\n{}", daemon.log());
    let result: Value = serde_json::from_str(out.lines().last().expect("line")).expect("json");
    let (written, referenced) = (
        result["bytes_written"].as_u64().expect("w"),
        result["bytes_referenced"].as_u64().expect("r"),
    );
    assert!(
        written < referenced,
        "nothing was reused: wrote {written} of {referenced}"
    );
    let list = snapshots(&daemon.socket);
    assert_eq!(list.len(), 1);
    let id = list[0]["backup_id"].as_str().expect("id");
    let (code, out, err) = cli(&daemon.socket, &["backups", "verify", id, "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn sigterm_mid_backup_stops_within_the_grace_period() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 4000, 64));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let s = setup(&format!("http://{}", proxy.addr()), "");
    let mut daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    proxy.set(Fault::Latency(Duration::from_millis(300)));
    let (code, _, _) = cli(&daemon.socket, &["backup", "--full"]);
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_timeout(Duration::from_secs(10)).expect("stops");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?} (grace is 5 s)",
        started.elapsed()
    );
    // Cleanly abandoned: no snapshot, and the repository still opens and lists.
    proxy.set(Fault::PassThrough);
    let (code, out, err) = offline(&s.config, &["--json", "backups", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).expect("json")["snapshots"],
        json!([])
    );
}

#[test]
fn a_restore_killed_midway_leaves_the_target_as_it_was() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    let col = rt.block_on(seed(&store, "docs", 6000, 64));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let s = setup(&format!("http://{}", proxy.addr()), "");
    let (code, out, err) = offline(&s.config, &["--json", "backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let id = serde_json::from_str::<Value>(out.lines().last().expect("line")).expect("json")
        ["snapshot"]
        .as_str()
        .expect("id")
        .to_string();

    // Change the live collection after the backup: the restore would undo this.
    rt.block_on(store.delete(&col, Some(&["r000001".to_string()]), None))
        .expect("delete one");
    let mut daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    proxy.set(Fault::Latency(Duration::from_millis(100)));
    let socket = daemon.socket.clone();
    let id2 = id.clone();
    let restore = std::thread::spawn(move || cli(&socket, &["restore", &id2, "--mode", "replace"]));
    // Kill once the staging collection has records.
    let staging = format!("docs-restore-{id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = rt.block_on(store.get_collection(&staging)) {
            if rt.block_on(store.count(&c.id)).unwrap_or(0) > 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "staging never filled; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal(Signal::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(5)).expect("killed");
    let _ = restore.join();
    let docs = rt
        .block_on(store.get_collection("docs"))
        .expect("target still exists");
    assert_eq!(docs.id, col, "the target collection was replaced");
    assert_eq!(
        rt.block_on(store.count(&col)).expect("count"),
        5999,
        "the target changed"
    );

    // The next restore replaces the leftover staging collection and succeeds.
    proxy.set(Fault::PassThrough);
    let (code, out, err) = offline(&s.config, &["restore", &id, "--mode", "replace"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let docs = rt.block_on(store.get_collection("docs")).expect("docs");
    assert_eq!(rt.block_on(store.count(&docs.id)).expect("count"), 6000);
    assert!(
        rt.block_on(store.get_collection(&staging)).is_err(),
        "staging left behind"
    );
}

#[test]
fn scheduled_backups_run_show_in_jobs_and_metrics_and_follow_a_reload() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 200, 8));
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let s = setup(
        &chroma.base(),
        &format!("enabled = true\nschedule = \"*/2 * * * * *\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = snapshots(&daemon.socket);
        if !list.is_empty() {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled backup; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(list[0]["trigger"], "schedule");
    let (_, out, _) = cli(&daemon.socket, &["--json", "jobs"]);
    let jobs: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(jobs["schedules"][0]["cron"], "*/2 * * * * *", "{jobs}");
    let metrics = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut s = String::new();
        c.read_to_string(&mut s).expect("read");
        s
    };
    assert!(
        metrics.contains("chromaprod_backup_last_success_timestamp_seconds{type=\"full\"}"),
        "{metrics}"
    );

    // A reload changes the schedule.
    let text = std::fs::read_to_string(&s.config)
        .expect("read")
        .replace("*/2 * * * * *", "0 0 3 * * *");
    std::fs::write(&s.config, text).expect("write");
    let (code, out, err) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (_, out, _) = cli(&daemon.socket, &["--json", "jobs"]);
    let jobs: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(jobs["schedules"][0]["cron"], "0 0 3 * * *", "{jobs}");
    drop(s.dir);
}

#[test]
fn keys_are_added_and_removed_without_reencrypting_and_a_tampered_manifest_is_named() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 300, 8));
    let s = setup(&chroma.base(), "");
    let (code, out, err) = offline(&s.config, &["--json", "backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let id = serde_json::from_str::<Value>(out.lines().last().expect("line")).expect("json")
        ["snapshot"]
        .as_str()
        .expect("id")
        .to_string();
    let first_key = s.dir.path().join("backup-key");
    let second_key = s.dir.path().join("second-key");
    let out = std::process::Command::new(bin())
        .args(["key", "generate"])
        .arg(&second_key)
        .output()
        .expect("generate");
    assert!(out.status.success());
    // A second generate never overwrites.
    let again = std::process::Command::new(bin())
        .args(["key", "generate"])
        .arg(&second_key)
        .output()
        .expect("generate");
    assert!(!again.status.success());

    let (code, out, err) = offline(
        &s.config,
        &["--json", "key", "add", &second_key.display().to_string()],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let second_id = serde_json::from_str::<Value>(out.trim()).expect("json")["added"]
        .as_str()
        .expect("id")
        .to_string();
    let (_, out, _) = offline(&s.config, &["--json", "key", "list"]);
    let keys: Value = serde_json::from_str(out.trim()).expect("json");
    let ids: Vec<String> = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{keys}");
    let first_id = ids
        .iter()
        .find(|id| **id != second_id)
        .expect("first key")
        .clone();

    // Switch the config to the second key: the snapshot still reads; then remove the first key.
    let use_key = |from: &Path, to: &Path| {
        let text = std::fs::read_to_string(&s.config).expect("read");
        std::fs::write(
            &s.config,
            text.replace(&from.display().to_string(), &to.display().to_string()),
        )
        .expect("write");
    };
    use_key(&first_key, &second_key);
    let (code, out, err) = offline(&s.config, &["backups", "verify", &id, "--full"]);
    assert_eq!(code, Some(0), "second key cannot read: {out}{err}");
    let (code, out, err) = offline(&s.config, &["key", "remove", &first_id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = offline(&s.config, &["backups", "verify", &id, "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The last key cannot be removed.
    let (code, _, _) = offline(&s.config, &["key", "remove", &second_id]);
    assert_ne!(code, Some(0));
    // The removed key no longer opens the repository.
    use_key(&second_key, &first_key);
    let (code, _, err) = offline(&s.config, &["backups", "list"]);
    assert_ne!(code, Some(0));
    assert!(err.to_lowercase().contains("key"), "{err}");
    use_key(&first_key, &second_key);

    // A tampered manifest: show and restore fail naming it.
    let manifest = s.repo.join("snapshots").join(&id);
    let mut bytes = std::fs::read(&manifest).expect("read manifest");
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&manifest, &bytes).expect("tamper");
    let (code, _, err) = offline(&s.config, &["backups", "show", &id]);
    assert_ne!(code, Some(0));
    assert!(err.contains(&format!("snapshots/{id}")), "{err}");
    let (code, _, err) = offline(&s.config, &["restore", &id, "--as", "x_restored"]);
    assert_ne!(code, Some(0));
    assert!(err.contains(&format!("snapshots/{id}")), "{err}");
}

#[test]
fn job_cancel_stops_a_backup_and_leaves_no_snapshot() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = store_for(&chroma.base());
    rt.block_on(seed(&store, "docs", 3000, 32));
    let proxy = rt.block_on(FaultProxy::start(chroma.addr()));
    let s = setup(&format!("http://{}", proxy.addr()), "");
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    proxy.set(Fault::Latency(Duration::from_millis(200)));
    let (code, out, err) = cli(&daemon.socket, &["--json", "backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let job = serde_json::from_str::<Value>(out.trim()).expect("json")["job"]
        .as_u64()
        .expect("job");
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = cli(&daemon.socket, &["job", "cancel", &job.to_string()]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_job(&daemon.socket, job, "cancelled");
    proxy.set(Fault::PassThrough);
    assert!(snapshots(&daemon.socket).is_empty());
    // Cancelling a job that is not running is a clear error.
    let (code, _, err) = cli(&daemon.socket, &["job", "cancel", "999"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no running job 999"), "{err}");
}

/// Every path under `dir` (itself included) whose owner is not `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    let meta = std::fs::symlink_metadata(dir).expect("lstat");
    if meta.uid() != uid {
        out.push(format!("{} (uid {})", dir.display(), meta.uid()));
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            out.extend(not_owned_by(&e.path(), uid));
        }
    }
    out
}

#[test]
fn offline_commands_as_root_leave_the_repository_and_audit_log_to_their_owner() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root: it checks what an operator's `sudo chromaprod backup` leaves in the service user's repository (CI runs the suite as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("this test needs the user nobody");
    let (uid, gid) = (nobody.uid, nobody.gid);
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(seed(&store_for(&chroma.base()), "docs", 200, 8));
    let s = setup(&chroma.base(), "");
    // The service user's repository and state directory, as the package makes them.
    let state = s.dir.path().join("state");
    for d in [&s.repo, &state] {
        std::fs::create_dir(d).expect("mkdir");
        nix::unistd::chown(d.as_path(), Some(uid), Some(gid)).expect("chown");
    }

    let (code, out, err) = offline(&s.config, &["backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(count_files(&s.repo) > 3, "the backup wrote objects");
    let foreign = not_owned_by(&s.repo, uid.as_raw());
    assert!(
        foreign.is_empty(),
        "root left entries nobody cannot prune:\n{}",
        foreign.join("\n")
    );

    // `key add` as root appends to (here: creates) the service user's audit log.
    let second = s.dir.path().join("second-key");
    let out = std::process::Command::new(bin())
        .args(["key", "generate"])
        .arg(&second)
        .output()
        .expect("generate");
    assert!(out.status.success());
    let (code, out, err) = offline(&s.config, &["key", "add", &second.display().to_string()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let foreign = not_owned_by(&state, uid.as_raw());
    assert!(
        foreign.is_empty(),
        "root left state the service cannot open:\n{}",
        foreign.join("\n")
    );
    assert!(state.join("audit.jsonl").is_file());
    let foreign = not_owned_by(&s.repo, uid.as_raw());
    assert!(foreign.is_empty(), "{}", foreign.join("\n"));
}
