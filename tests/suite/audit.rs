//! Mutating commands land in the hash-chained audit log with the caller's
//! credentials; `chromaprod audit verify` names the first tampered line.

use crate::common;

use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, offline, write_config, DaemonProcess};
use serde_json::json;

#[test]
fn reload_is_audited_with_peer_credentials_and_tampering_is_named() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &[chroma.base()], "");
    let mut daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));

    let (code, out, err) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_timeout(Duration::from_secs(10)).expect("stops");

    let audit = dir.path().join("state/audit.jsonl");
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let actions: Vec<&str> = lines.iter().filter_map(|l| l["action"].as_str()).collect();
    assert_eq!(
        actions,
        ["daemon_start", "config_reload", "daemon_stop"],
        "{text}"
    );
    let reload = &lines[1];
    assert_eq!(reload["actor"]["uid"], nix::unistd::getuid().as_raw());
    assert!(
        reload["actor"]["pid"].as_i64().is_some_and(|p| p > 0),
        "{reload}"
    );
    assert_eq!(reload["details"]["ok"], true);

    let verify = |path: &std::path::Path| {
        std::process::Command::new(bin())
            .args(["audit", "verify", "--file"])
            .arg(path)
            .output()
            .expect("run verify")
    };
    let ok = verify(&audit);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 entries"));

    // Edit line 2: verify fails and names it.
    let tampered = text.replacen("\"ok\":true", "\"ok\":false", 1);
    assert_ne!(tampered, text);
    std::fs::write(&audit, tampered).expect("tamper");
    let bad = verify(&audit);
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("line 2"), "{msg}");
}

fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn key_add_and_remove_are_audited_with_who_and_which_key() {
    use chromaprod::backup::repository::Repository;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let first = dir.path().join("backup-key");
    let second = dir.path().join("second-key");
    let first_key = common::daemon::write_key(&first);
    let second_key = common::daemon::write_key(&second);
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(Repository::open(
            repo.to_str().expect("utf-8"),
            &Default::default(),
            Some(&first_key),
            true,
        ))
        .expect("create repository");
    let config = write_config(
        dir.path(),
        &["http://127.0.0.1:9".to_string()],
        &format!(
            "[backup]\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\n",
            repo.display().to_string(),
            first.display().to_string()
        ),
    );
    let audit = dir.path().join("state/audit.jsonl");
    let (first_id, second_id) = (
        first_key.key_id().to_string(),
        second_key.key_id().to_string(),
    );

    let (code, out, err) = offline(&config, &["key", "add", &second.display().to_string()]);
    assert_eq!(code, Some(0), "{out}{err}");
    // Adding it again fails, and the attempt is recorded too.
    let (code, out, err) = offline(&config, &["key", "add", &second.display().to_string()]);
    assert_ne!(code, Some(0), "{out}{err}");
    let (code, out, err) = offline(&config, &["key", "remove", &first_id]);
    assert_eq!(code, Some(0), "{out}{err}");
    // Listing changes nothing and is not recorded.
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replace(&first.display().to_string(), &second.display().to_string()),
    )
    .expect("switch key");
    let (code, out, err) = offline(&config, &["key", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");

    let lines = audit_lines(&audit);
    let actions: Vec<&str> = lines.iter().filter_map(|l| l["action"].as_str()).collect();
    assert_eq!(actions, ["key_add", "key_add", "key_remove"], "{lines:#?}");
    let me = nix::unistd::getuid().as_raw();
    for l in &lines {
        assert_eq!(l["actor"]["uid"], me, "{l}");
        assert!(l["actor"]["pid"].as_i64().is_some_and(|p| p > 0), "{l}");
        assert_eq!(l["details"]["via"], "cli", "{l}");
        assert_eq!(l["details"]["opened_with"], first_id.as_str(), "{l}");
    }
    assert_eq!(lines[0]["details"]["key_id"], second_id.as_str());
    assert_eq!(lines[0]["details"]["ok"], true);
    assert_eq!(lines[1]["details"]["key_id"], second_id.as_str());
    assert_eq!(lines[1]["details"]["ok"], false);
    assert!(
        lines[1]["details"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("already")),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["details"]["key_id"], first_id.as_str());
    assert_eq!(lines[2]["details"]["ok"], true);
    let ok = std::process::Command::new(bin())
        .args(["audit", "verify", "--file"])
        .arg(&audit)
        .output()
        .expect("verify");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn reload_audit_line_has_old_and_new_values() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &[chroma.base()],
        "[pool]\nmax_connections = 4\n",
    );
    let mut daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));

    // Two endpoints now. (Credentials in a URL are refused by validation;
    // the diff's redaction of them is unit-tested in config::diff.)
    let with_creds = "http://127.0.0.1:9/";
    let text = common::daemon::config_text(
        dir.path(),
        &[chroma.base(), with_creds.to_string()],
        "[pool]\nmax_connections = 7\n",
    )
    .replace("level = \"info\"", "level = \"debug\"");
    std::fs::write(&config, text).expect("edit");
    let (code, out, err) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_timeout(Duration::from_secs(10)).expect("stops");

    let lines = audit_lines(&dir.path().join("state/audit.jsonl"));
    let reload = lines
        .iter()
        .find(|l| l["action"] == "config_reload")
        .expect("reload line");
    let changes = reload["details"]["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {reload}"));
    let change = |key: &str| {
        changes
            .iter()
            .find(|c| c["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {reload}"))
            .clone()
    };
    let pool = change("pool.max_connections");
    assert_eq!(
        (&pool["old"], &pool["new"]),
        (&json!(4), &json!(7)),
        "{reload}"
    );
    let level = change("log.level");
    assert_eq!(
        (&level["old"], &level["new"]),
        (&json!("info"), &json!("debug"))
    );
    let endpoints = change("chroma.endpoints");
    let base = format!("{}/", chroma.base().trim_end_matches('/'));
    assert_eq!(endpoints["old"], json!([base]), "{reload}");
    assert_eq!(
        endpoints["new"],
        json!([base, "http://127.0.0.1:9/"]),
        "{reload}"
    );
    // The list of changed keys stays as before.
    assert_eq!(
        reload["details"]["changed_keys"],
        json!(["chroma.endpoints", "log.level", "pool.max_connections"])
    );
}
