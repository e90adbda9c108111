//! What the CLI prints: tables and human units for people, the daemon's JSON
//! with `--json`, and a reader that stops early (`chromaprod … | head`) is
//! no error — against a real Chroma and a real daemon.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, config_text, generate_key, DaemonProcess};
use common::records::{seed, store_for};
use serde_json::Value;

const RENAME: &str = "version = 1\nname = \"writer\"\n[[up]]\nop = \"rename_metadata_key\"\ncollection = \"docs\"\nfrom = \"author\"\nto = \"writer\"\n";

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A key, a local encrypted repository and a migrations directory, all in a
/// temp dir; the config points at `chroma_url`.
fn setup(chroma_url: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("backup-key");
    generate_key(&key);
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).expect("migrations dir");
    std::fs::write(migrations.join("0001_writer.toml"), RENAME).expect("migration");
    let text = config_text(
        dir.path(),
        &[chroma_url.to_string()],
        &format!(
            "[backup]\nenabled = true\nschedule = \"0 0 3 * * *\"\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\n\n[migrations]\npath = {:?}\n",
            dir.path().join("repo").display().to_string(),
            key.display().to_string(),
            migrations.display().to_string(),
        ),
    );
    let config = dir.path().join("chromaprod.toml");
    std::fs::write(&config, text).expect("config");
    Setup { dir, config }
}

/// The CLI with no daemon (a socket nobody listens on).
fn offline_cmd(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(config.parent().expect("dir").join("no-daemon.sock"))
        .args(args)
        .env_remove("CHROMAPROD_CONFIG");
    c
}

fn offline(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = offline_cmd(config, args).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs the CLI with its standard output on a pipe whose reading end is
/// already closed (what `chromaprod … | head -1` does once `head` has its
/// line): every write to stdout fails with EPIPE. Returns (code, stderr).
fn with_closed_stdout(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = offline_cmd(config, args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn snapshot_count(config: &Path) -> usize {
    let (code, out, err) = offline(config, &["--json", "backups", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str::<Value>(out.trim()).expect("json")["snapshots"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_reader_that_stops_early_is_no_error() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(seed(&store_for(&chroma.base()), "docs", 200, 8));
    let s = setup(&chroma.base());
    for _ in 0..3 {
        let (code, out, err) = offline(&s.config, &["backup", "--full"]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    for args in [
        &["backups", "list"][..],
        &["--json", "backups", "list"],
        &["backups", "show", "latest"],
        &["backups", "verify", "latest"],
        &["key", "list"],
    ] {
        let (code, err) = with_closed_stdout(&s.config, args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        assert_eq!(code, Some(0), "{args:?}: {err}");
    }
    // doctor reports on its own (its exit code is its verdict): no panic.
    for args in [&["doctor"][..], &["--json", "doctor"]] {
        let (_, err) = with_closed_stdout(&s.config, args);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A command whose reader went away still does its work.
    let (code, err) = with_closed_stdout(&s.config, &["backup", "--full"]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(snapshot_count(&s.config), 4);
    drop(s.dir);
}

/// Whether `out` shows JSON to a person: an object or array line, or a
/// quoted key.
fn looks_like_json(out: &str) -> bool {
    out.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with('{') || l.starts_with('[') || l.contains("\":")
    })
}

/// Runs a command for a person: exit 0, no JSON, and every word present.
fn human(socket: &Path, args: &[&str], words: &[&str]) -> String {
    let (code, out, err) = cli(socket, args);
    assert_eq!(code, Some(0), "{args:?}: {out}{err}");
    assert!(!looks_like_json(&out), "{args:?} printed JSON:\n{out}");
    assert!(
        !looks_like_json(&err),
        "{args:?} printed JSON on stderr:\n{err}"
    );
    for w in words {
        assert!(out.contains(w), "{args:?}: no {w:?} in\n{out}");
    }
    out
}

/// Runs a command with `--json`: every stdout line is JSON (progress events
/// as `{"event": …}`, then the result); returns the result, which has every
/// field named.
fn json(socket: &Path, args: &[&str], fields: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = cli(socket, &all);
    assert_eq!(code, Some(0), "{all:?}: {out}{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{all:?}: {e}: {l}")))
        .collect();
    let (result, events) = lines.split_last().expect("a result line");
    assert!(events.iter().all(|e| e["event"].is_object()), "{out}");
    for f in fields {
        assert!(result.get(f).is_some(), "{all:?}: no {f:?} in {result}");
    }
    result.clone()
}

#[test]
fn every_command_speaks_to_people_and_with_json_to_scripts() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(seed(&store_for(&chroma.base()), "docs", 300, 8));
    let s = setup(&chroma.base());
    let daemon = DaemonProcess::spawn(&s.config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    let sock = daemon.socket.as_path();

    human(sock, &["status"], &["health:", "pool:", "endpoint:"]);
    json(sock, &["status"], &["pool", "config", "version"]);

    // backup: the new snapshot in a few lines and a table of collections.
    human(
        sock,
        &["backup", "--full", "--wait"],
        &[
            "snapshot",
            "type",
            "full",
            "300 records",
            "KiB",
            "COLLECTION",
            "docs",
        ],
    );
    let b = json(
        sock,
        &["backup", "--full", "--wait"],
        &[
            "snapshot",
            "type",
            "collections",
            "bytes_written",
            "bytes_referenced",
            "duration_ms",
        ],
    );
    let id = b["snapshot"].as_str().expect("snapshot id").to_string();
    let started = human(sock, &["backup", "--incremental"], &["started as job"]);
    let job = json(sock, &["backup", "--incremental"], &["job", "state"]);
    assert!(job["job"].is_u64(), "{job}");
    drop(started);
    // Both incrementals finish before the listing, so it holds them all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while json(sock, &["jobs"], &["jobs"])["jobs"]
        .as_array()
        .is_some_and(|j| j.iter().any(|x| x["state"] == "running"))
    {
        assert!(std::time::Instant::now() < deadline, "jobs never finished");
        std::thread::sleep(Duration::from_millis(100));
    }

    let list = human(
        sock,
        &["backups", "list"],
        &[
            "ID",
            "CREATED",
            "TYPE",
            "COLLECTIONS",
            "RECORDS",
            "SIZE",
            "DURATION",
            &id,
            "full",
            "docs",
            "snapshots, newest first",
        ],
    );
    assert!(list.contains(" ms") || list.contains(" s"), "{list}");
    let listed = json(sock, &["backups", "list"], &["snapshots"]);
    let first = &listed["snapshots"][0];
    for f in [
        "backup_id",
        "backup_type",
        "created_at",
        "collections",
        "records",
        "size_bytes",
        "duration_ms",
    ] {
        assert!(first.get(f).is_some(), "{f} in {first}");
    }

    human(
        sock,
        &["backups", "show", &id],
        &[
            "snapshot",
            &id,
            "created",
            "encrypted",
            "COLLECTION",
            "RECORDS",
            "CHUNKS",
            "docs",
            "300",
        ],
    );
    json(
        sock,
        &["backups", "show", &id],
        &["snapshot_id", "collections", "metadata"],
    );
    human(
        sock,
        &["backups", "verify", &id, "--full"],
        &["intact", "full check", "objects checked", "records"],
    );
    json(
        sock,
        &["backups", "verify", "latest"],
        &["snapshot", "objects_checked", "records", "full"],
    );
    human(
        sock,
        &["backups", "check"],
        &["objects checked", "without the key"],
    );
    json(
        sock,
        &["backups", "check"],
        &["objects_checked", "key_used"],
    );
    human(
        sock,
        &["prune", "--dry-run"],
        &["dry run", "kept", "would delete", &id],
    );
    json(
        sock,
        &["prune", "--dry-run"],
        &[
            "dry_run",
            "snapshots_kept",
            "snapshots_deleted",
            "bytes_freed",
        ],
    );

    human(
        sock,
        &["jobs"],
        &[
            "ID",
            "KIND",
            "STATE",
            "succeeded",
            "full",
            "SCHEDULE",
            "0 0 3 * * *",
        ],
    );
    let jobs = json(sock, &["jobs"], &["jobs", "schedules"]);
    assert!(jobs["jobs"][0]["state"].is_string(), "{jobs}");

    human(
        sock,
        &[
            "restore",
            &id,
            "-c",
            "docs",
            "--as",
            "docs_copy",
            "--dry-run",
        ],
        &[
            "dry run",
            "nothing was changed",
            "COLLECTION",
            "TARGET",
            "docs_copy",
            "300",
        ],
    );
    json(
        sock,
        &[
            "restore",
            &id,
            "-c",
            "docs",
            "--as",
            "docs_copy",
            "--dry-run",
        ],
        &["dry_run", "plan"],
    );
    human(
        sock,
        &["restore", &id, "-c", "docs", "--as", "docs_a"],
        &["restored", "TARGET", "docs_a", "300"],
    );
    let r = json(
        sock,
        &["restore", &id, "-c", "docs", "--as", "docs_b"],
        &["snapshot", "restored"],
    );
    assert_eq!(r["restored"][0]["target"], "docs_b", "{r}");

    human(
        sock,
        &["query", "-c", "docs", "--id", "r000003", "-k", "2"],
        &["RANK", "DISTANCE", "r000003"],
    );
    json(
        sock,
        &["query", "-c", "docs", "--id", "r000003", "-k", "2"],
        &["results"],
    );

    human(
        sock,
        &["migrate", "status"],
        &["VERSION", "STATE", "writer", "pending"],
    );
    json(
        sock,
        &["migrate", "status"],
        &["version", "migrations", "pending", "problems"],
    );
    human(sock, &["migrate", "validate"], &["valid", "1 files"]);
    json(sock, &["migrate", "validate"], &["valid"]);
    human(
        sock,
        &["migrate", "up"],
        &[
            "applied 1 migration",
            "version 1",
            "restore point",
            "writer",
            "300 records changed",
        ],
    );
    human(
        sock,
        &["migrate", "down", "--to", "0"],
        &["undid 1 migration", "version 0", "writer"],
    );
    let up = json(
        sock,
        &["migrate", "up"],
        &["applied", "version", "restore_point"],
    );
    assert_eq!(up["version"], 1, "{up}");
    let down = json(
        sock,
        &["migrate", "down", "--to", "0"],
        &["undone", "version"],
    );
    assert_eq!(down["version"], 0, "{down}");

    human(
        sock,
        &["backups", "delete", &id],
        &["deleted", &id, "prune"],
    );
    // The oldest: the first full backup, not `id`.
    let oldest = listed["snapshots"]
        .as_array()
        .and_then(|a| a.last())
        .expect("snapshots");
    assert_ne!(oldest["backup_id"], id.as_str());
    let other = oldest["backup_id"].as_str().expect("id").to_string();
    json(sock, &["backups", "delete", &other], &["deleted"]);

    human(sock, &["reload"], &["reloaded"]);
    json(sock, &["reload"], &["ok"]);

    // Key commands run here, from the config file.
    let cfg = s.config.display().to_string();
    human(
        sock,
        &["--config", &cfg, "key", "list"],
        &["KEY ID", "ADDED"],
    );
    json(sock, &["--config", &cfg, "key", "list"], &["keys"]);
    drop(daemon);

    // Offline, the same words and the same JSON.
    let (code, out, err) = offline(&s.config, &["backups", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        !looks_like_json(&out) && out.contains("newest first"),
        "{out}"
    );
    let (code, out, err) = offline(&s.config, &["backup", "--full"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        !looks_like_json(&out) && !looks_like_json(&err),
        "{out}{err}"
    );
    assert!(
        out.contains("COLLECTION") && err.contains("backup docs: "),
        "{out}{err}"
    );
    drop(s.dir);
}
