//! Mutating commands land in the hash-chained audit log with the caller's
//! credentials; `chromaprod audit verify` names the first tampered line.

mod common;

use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, write_config, DaemonProcess};

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
