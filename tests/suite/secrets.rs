//! No secret reaches logs, `Debug` output, status or error messages.

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, generate_key, offline, outcome, write_config, DaemonProcess};

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

/// Runs the CLI with a config file and a socket path; (exit code, stdout, stderr).
fn run_cli(
    config: &std::path::Path,
    socket: &std::path::Path,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(common::daemon::bin())
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run chromaprod");
    outcome(out)
}

/// `restore --target` onto a server that is not a configured endpoint sends
/// it no configured token — through the daemon and offline — and a token
/// given for the target with `--target-token-file` goes to the target only,
/// never into the audit log or the daemon's log.
#[test]
fn restore_target_gets_no_configured_token() {
    const TARGET_TOKEN: &str = "tgt-91be5c07-target-only-token";
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = common::records::store_for(&chroma.base());
    rt.block_on(common::records::seed(&store, "docs", 50, 8));
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("chroma-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let target_token_file = dir.path().join("target-token");
    std::fs::write(&target_token_file, format!("{TARGET_TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&target_token_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    // The configured endpoint and the target: two addresses (recording
    // proxies) in front of the same server.
    let endpoint = rt.block_on(common::proxy::FaultProxy::start(chroma.addr()));
    let endpoint_url = format!("http://{}", endpoint.addr());
    let target = rt.block_on(common::proxy::FaultProxy::start(chroma.addr()));
    let target_url = format!("http://{}", target.addr());
    let target_file = target_token_file.display().to_string();
    let config = write_config(
        dir.path(),
        std::slice::from_ref(&endpoint_url),
        &format!(
            "[backup]\nstorage_path = {:?}\nlock_ttl = \"10s\"\n",
            dir.path().join("repo").display().to_string()
        ),
    );
    let text = std::fs::read_to_string(&config).expect("read").replace(
        "startup_wait = \"20s\"",
        &format!(
            "startup_wait = \"20s\"\nauth_token_file = {:?}",
            token_file.display().to_string()
        ),
    );
    std::fs::write(&config, text).expect("write");

    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    let (code, out, err) = cli(&daemon.socket, &["backup", "--full", "--wait"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        endpoint.request_heads().iter().any(|h| h.contains(TOKEN)),
        "the configured endpoint should get the configured token"
    );

    // Through the daemon, no token given for the target: none is sent.
    let (code, out, err) = cli(
        &daemon.socket,
        &[
            "restore",
            "latest",
            "-c",
            "docs",
            "--as",
            "docs_a",
            "--target",
            &target_url,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        target.forwarded() > 0,
        "the restore did not reach the target"
    );
    let heads = target.request_heads();
    for h in &heads {
        assert!(
            !h.contains(TOKEN),
            "the configured token was sent to the target:\n{h}"
        );
        assert!(!h.to_ascii_lowercase().contains("authorization"), "{h}");
    }

    // Through the daemon, with the target's own token: that one, and only to the target.
    let seen = heads.len();
    let (code, out, err) = cli(
        &daemon.socket,
        &[
            "restore",
            "latest",
            "-c",
            "docs",
            "--as",
            "docs_b",
            "--target",
            &target_url,
            "--target-token-file",
            &target_file,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let heads = target.request_heads();
    assert!(heads.len() > seen);
    for h in &heads[seen..] {
        assert!(
            !h.contains(TOKEN),
            "the configured token was sent to the target:\n{h}"
        );
        assert!(
            h.contains(&format!("Bearer {TARGET_TOKEN}")),
            "the target's token was not sent:\n{h}"
        );
    }
    assert!(!out.contains(TARGET_TOKEN) && !err.contains(TARGET_TOKEN));
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).expect("audit log");
    assert!(
        audit.contains("docs_b"),
        "the restore is not in the audit log:\n{audit}"
    );
    assert!(
        !audit.contains(TARGET_TOKEN),
        "target token in the audit log:\n{audit}"
    );
    assert!(
        !daemon.log().contains(TARGET_TOKEN),
        "target token in the daemon log"
    );
    drop(daemon);

    // Offline (no daemon answers): the same.
    let nosock = dir.path().join("no-daemon.sock");
    let seen = target.request_heads().len();
    let (code, out, err) = run_cli(
        &config,
        &nosock,
        &[
            "restore",
            "latest",
            "-c",
            "docs",
            "--as",
            "docs_c",
            "--target",
            &target_url,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let heads = target.request_heads();
    assert!(
        heads.len() > seen,
        "the offline restore did not reach the target"
    );
    for h in &heads[seen..] {
        assert!(
            !h.contains(TOKEN),
            "the configured token was sent to the target:\n{h}"
        );
    }
    for name in ["docs_a", "docs_b", "docs_c"] {
        let c = rt.block_on(store.get_collection(name)).expect("restored");
        assert_eq!(rt.block_on(store.count(&c.id)).expect("count"), 50);
    }

    // A configured endpoint given as the target keeps its configured token.
    let seen = endpoint.request_heads().len();
    let (code, out, err) = run_cli(
        &config,
        &nosock,
        &[
            "restore",
            "latest",
            "-c",
            "docs",
            "--as",
            "docs_d",
            "--target",
            &endpoint_url,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let heads = endpoint.request_heads();
    assert!(heads.len() > seen);
    assert!(heads[seen..].iter().all(|h| h.contains(TOKEN)), "{heads:?}");

    // A token to a plain-http target that is not loopback: refused without
    // connecting, unless allowed; a target URL with user info: refused.
    let started = std::time::Instant::now();
    let (code, out, err) = run_cli(
        &config,
        &nosock,
        &[
            "restore",
            "latest",
            "--target",
            "http://10.255.255.1:8000",
            "--target-token-file",
            &target_file,
        ],
    );
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(err.contains("--allow-plain-http"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it tried to connect"
    );
    let (code, out, err) = run_cli(
        &config,
        &nosock,
        &[
            "restore",
            "latest",
            "--target",
            "http://admin:pw-77aa@127.0.0.1:9",
        ],
    );
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(err.contains("user info"), "{err}");
    assert!(!err.contains("pw-77aa"), "{err}");
}

/// Credentials in an endpoint URL are refused by `validate`, naming the key
/// and not echoing them; plain http to a host that is not loopback with a
/// token configured is refused unless `chroma.allow_plain_http = true`.
#[test]
fn validate_refuses_credentials_in_urls_and_plain_http_with_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("chroma-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let validate = |text: &str| {
        let path = dir.path().join("chromaprod.toml");
        std::fs::write(&path, text).expect("write config");
        let out = std::process::Command::new(common::daemon::bin())
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .expect("validate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) =
        validate("[chroma]\nendpoints = [\"http://admin:pw-5ec2e7@127.0.0.1:8000\"]\n");
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("chroma.endpoints[0]"), "{out}");
    assert!(!out.contains("pw-5ec2e7"), "the password was echoed: {out}");

    let token = format!("auth_token_file = {:?}\n", token_file.display().to_string());
    let (code, out) = validate(&format!(
        "[chroma]\nendpoints = [\"http://10.255.255.1:8000\"]\n{token}"
    ));
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("chroma.endpoints[0]"), "{out}");
    assert!(out.contains("chroma.allow_plain_http"), "{out}");
    let (code, out) = validate(&format!(
        "[chroma]\nendpoints = [\"http://10.255.255.1:8000\"]\n{token}allow_plain_http = true\n"
    ));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = validate(&format!(
        "[chroma]\nendpoints = [\"https://10.255.255.1:8000\", \"http://127.0.0.1:8000\"]\n{token}"
    ));
    assert_eq!(code, Some(0), "{out}");
}

/// `chromaprod validate`, as `ExecReload=` runs it: exit code, stdout, stderr.
fn validate(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("validate")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run validate");
    outcome(out)
}

#[test]
fn key_and_token_files_others_can_read_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("chroma-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    let key = dir.path().join("backup-key");
    generate_key(&key);
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
    let (code, out, err) = offline(&config, &["backup", "--full"]);
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

/// With `chroma.auth_token_file` unset, the token is the systemd credential
/// `$CREDENTIALS_DIRECTORY/chroma-token` when one is handed over, as the
/// backup key is: the service (`LoadCredential=chroma-token:…`) and the
/// runbook's operator shell (`CREDENTIALS_DIRECTORY=/etc/chromaprod/credentials`)
/// read the same token, checked like any token file.
#[test]
fn an_unset_token_file_is_the_chroma_token_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    let config = write_config(dir.path(), &["http://127.0.0.1:9".to_string()], "");
    let validate = |creds: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("validate").arg("--config").arg(&config);
        match creds {
            Some(c) => cmd.env("CREDENTIALS_DIRECTORY", c),
            None => cmd.env_remove("CREDENTIALS_DIRECTORY"),
        };
        outcome(cmd.output().expect("run chromaprod"))
    };
    let token = creds.join("chroma-token");
    // Found and read: an empty credential is refused, naming it.
    std::fs::write(&token, "").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, out, err) = validate(Some(&creds));
    assert_ne!(
        code,
        Some(0),
        "an empty chroma-token credential passed:\n{out}{err}"
    );
    assert!(
        err.contains("chroma.auth_token_file") && err.contains("chroma-token"),
        "{err}"
    );
    // Checked like a token file: group-readable is refused.
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (code, _, err) = validate(Some(&creds));
    assert_ne!(code, Some(0), "a group-readable token passed");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, out, err) = validate(Some(&creds));
    assert_eq!(code, Some(0), "{out}{err}");
    // No credentials handed over: no token, and nothing to complain about.
    let (code, out, err) = validate(None);
    assert_eq!(code, Some(0), "{out}{err}");
}
