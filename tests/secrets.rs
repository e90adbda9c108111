//! No secret reaches logs, `Debug` output, status or error messages.

mod common;

use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{cli, write_config, DaemonProcess};

const TOKEN: &str = "tok-7f3a9c2e-secret-value-d41d8cd9";

#[test]
fn token_never_appears_in_logs_status_or_errors() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("chroma-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    let config = write_config(
        dir.path(),
        &[chroma.base()],
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    // Trace-level logs, with the token configured (and a header Chroma ignores without auth).
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("level = \"info\"", "level = \"trace\"")
        .replace(
            "startup_wait = \"20s\"",
            &format!(
                "startup_wait = \"20s\"\nauth_token_file = {:?}",
                token_file.display().to_string()
            ),
        );
    std::fs::write(&config, text).expect("write");
    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));

    let mut outputs = Vec::new();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["query", "--collection", "missing", "--vector", "1,2,3"],
    ] {
        let (_, out, err) = cli(&daemon.socket, &args);
        outputs.push(out);
        outputs.push(err);
    }
    // Provoke transport errors: Chroma goes away, calls fail and are logged.
    drop(chroma);
    std::thread::sleep(Duration::from_millis(500));
    let (_, out, err) = cli(
        &daemon.socket,
        &["query", "--collection", "c", "--vector", "1,2,3"],
    );
    outputs.push(out);
    outputs.push(err);
    // A rejected reload logs and reports its error.
    std::fs::write(&daemon.config, "[chroma]\nendpoints = 7\n").expect("edit");
    let (_, out, err) = cli(&daemon.socket, &["reload"]);
    outputs.push(out);
    outputs.push(err);
    // Offline validation output, human and JSON.
    for json in [false, true] {
        let mut cmd = std::process::Command::new(common::daemon::bin());
        cmd.args(["validate", "--config"]).arg(&config);
        if json {
            cmd.arg("--json");
        }
        let o = cmd.output().expect("validate");
        outputs.push(String::from_utf8_lossy(&o.stdout).to_string());
        outputs.push(String::from_utf8_lossy(&o.stderr).to_string());
    }

    let log = daemon.log();
    assert!(log.len() > 1000, "expected trace logs, got:\n{log}");
    assert!(!log.contains(TOKEN), "token in daemon log");
    for o in &outputs {
        assert!(!o.contains(TOKEN), "token in CLI output: {o}");
    }
}
