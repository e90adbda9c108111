//! No secret reaches logs, `Debug` output, status or error messages.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, write_config, DaemonProcess};

const TOKEN: &str = "tok-7f3a9c2e-secret-value-d41d8cd9";

#[test]
fn token_never_appears_in_logs_status_or_errors() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("chroma-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod token");
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

/// `chromaprod validate`, as `ExecStartPre=` runs it: exit code, stdout, stderr.
fn validate(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("validate")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run validate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn key_and_token_files_others_can_read_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("chroma-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    let key = dir.path().join("backup-key");
    let out = std::process::Command::new(bin())
        .args(["key", "generate"])
        .arg(&key)
        .output()
        .expect("key generate");
    assert!(out.status.success());
    let config = write_config(
        dir.path(),
        &["http://127.0.0.1:9".to_string()],
        &format!(
            "[backup]\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\n",
            dir.path().join("repo").display().to_string(),
            key.display().to_string()
        ),
    );
    let text = std::fs::read_to_string(&config).expect("read").replace(
        "startup_wait = \"20s\"",
        &format!(
            "startup_wait = \"20s\"\nauth_token_file = {:?}",
            token.display().to_string()
        ),
    );
    std::fs::write(&config, text).expect("write");
    let chmod = |f: &std::path::Path, mode: u32| {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };

    // Both readable by others: validate names both files, their mode and the fix.
    chmod(&token, 0o644);
    chmod(&key, 0o640);
    let (code, out, err) = validate(&config);
    assert_eq!(code, Some(78), "{out}{err}");
    assert!(err.contains("chroma.auth_token_file"), "{err}");
    assert!(err.contains("0644"), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", token.display())),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
    // The key file is judged even when the token is the only problem load sees.
    chmod(&token, 0o600);
    let (code, out, err) = validate(&config);
    assert_eq!(code, Some(78), "{out}{err}");
    assert!(err.contains("backup.key_file"), "{err}");
    assert!(err.contains("0640"), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );

    // An offline backup refuses the exposed key the same way, before writing anything.
    let (code, out, err) = {
        let out = std::process::Command::new(bin())
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("none.sock"))
            .args(["backup", "--full"])
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run backup");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    assert!(!dir.path().join("repo").exists(), "nothing written: {err}");

    chmod(&key, 0o600);
    let (code, out, err) = validate(&config);
    assert_eq!(code, Some(0), "{out}{err}");
}
