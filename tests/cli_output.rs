//! What the CLI prints: tables and human units for people, the daemon's JSON
//! with `--json`, and a reader that stops early (`chromaprod … | head`) is
//! no error — against a real Chroma and a real daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::chroma::ChromaServer;
use common::daemon::{bin, config_text};
use common::records::{seed, store_for};
use serde_json::Value;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A key, a local encrypted repository and a migrations directory, all in a
/// temp dir; the config points at `chroma_url`.
fn setup(chroma_url: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("backup-key");
    let out = Command::new(bin())
        .args(["key", "generate"])
        .arg(&key)
        .output()
        .expect("key generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).expect("migrations dir");
    let text = config_text(
        dir.path(),
        &[chroma_url.to_string()],
        &format!(
            "[backup]\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\n\n[migrations]\npath = {:?}\nrestore_point = false\n",
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
    // A command whose reader went away still does its work.
    let (code, err) = with_closed_stdout(&s.config, &["backup", "--full"]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(snapshot_count(&s.config), 4);
    drop(s.dir);
}
