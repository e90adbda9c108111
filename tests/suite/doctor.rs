//! `chromaprod doctor` against real parts: a Chroma server started by the
//! harness, local repositories, moto's S3 server, the daemon with its
//! control socket, and a clock shifted with libfaketime. One test per check
//! that can fail, and two healthy hosts (a local repository with a running
//! daemon, and an S3 repository).

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chromaprod::backup::crypto::MasterKey;
use chromaprod::backup::lock::LockInfo;
use chromaprod::backup::repository::Repository;
use chromaprod::storage::{Env, StorageOptions};
use common::chroma::ChromaServer;
use common::daemon::{bin, cli, generate_key, write_config, DaemonProcess};
use common::emulators;
use common::host::{rt, tool};
use serde_json::Value;

/// A secret that must never show up in doctor's output.
const AWS_SECRET: &str = "doctor-test-secret-7f3a9c";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{self}"))
    }

    /// The first check called `name` (status, summary, fix).
    fn check(&self, name: &str) -> (String, String, String) {
        let v = self.json();
        let c = v["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no check {name}:\n{self}"))
            .clone();
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["summary"].as_str().unwrap_or_default().to_string(),
            c["fix"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn status(&self, name: &str) -> String {
        self.check(name).0
    }

    /// Every check except `names` passed (ok), so a test shows one failure only.
    fn others_ok(&self, names: &[&str]) {
        for c in self.json()["checks"].as_array().expect("checks") {
            let name = c["name"].as_str().unwrap_or_default();
            // Skipped wherever chroma.persist_directory is unset.
            if name == "change_feed" && c["status"] == "skip" {
                continue;
            }
            if !names.contains(&name) {
                assert_eq!(c["status"], "ok", "{name} should pass:\n{self}");
            }
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .expect("current user has a name")
}

/// `[faketime OFFSET] chromaprod --config CONFIG doctor ARGS` with `env`, as the
/// current user's service unless ARGS name another.
fn doctor_with(
    config: &Path,
    args: &[&str],
    env: &[(&str, String)],
    faketime: Option<&str>,
) -> Run {
    let mut cmd = match faketime {
        Some(offset) => {
            let ft = tool("faketime");
            let mut c = Command::new(ft);
            // Only the wall clock: tokio's timers keep the real monotonic clock.
            c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .args(["-f", offset])
                .arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("--config")
        .arg(config)
        .args(["doctor", "--timeout", "10s"])
        .args(args)
        .env_remove("CHROMAPROD_CONFIG")
        .env_remove("CHROMAPROD_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY");
    if !args.contains(&"--service-user") {
        cmd.arg("--service-user").arg(current_user());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run chromaprod doctor");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(AWS_SECRET) && !run.stderr.contains(AWS_SECRET),
        "a secret leaked:\n{run}"
    );
    run
}

fn doctor(config: &Path, env: &[(&str, String)]) -> Run {
    doctor_with(config, &["--json"], env, None)
}

/// A host: a Chroma server, a config in a temp dir with an encrypted local
/// repository at `dir/repo` and its key at `dir/backup-key`.
struct Host {
    dir: tempfile::TempDir,
    chroma: ChromaServer,
    config: PathBuf,
}

impl Host {
    fn new(extra: &str) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let chroma = ChromaServer::start();
        let config = Self::config_in(dir.path(), &[chroma.base()], extra);
        Host {
            dir,
            chroma,
            config,
        }
    }

    fn config_in(dir: &Path, endpoints: &[String], extra: &str) -> PathBuf {
        let backup = format!(
            "[backup]\nstorage_path = \"{}\"\nencrypt = true\nkey_file = \"{}\"\n",
            dir.join("repo").display(),
            dir.join("backup-key").display()
        );
        let extra = if extra.contains("[backup]") {
            extra.to_string()
        } else {
            format!("{backup}\n{extra}")
        };
        write_config(dir, endpoints, &extra)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Sets `chroma.persist_directory` in the config.
    fn set_persist_directory(&self, dir: &Path) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("persist_directory"))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = text.replace(
            "[chroma]\n",
            &format!(
                "[chroma]\npersist_directory = {:?}\n",
                dir.display().to_string()
            ),
        );
        std::fs::write(&self.config, text).expect("config");
    }

    /// Writes the key file and creates the repository with it.
    fn create_repository(&self) -> MasterKey {
        let key = common::daemon::write_key(&self.path("backup-key"));
        let url = self.path("repo").display().to_string();
        rt().block_on(async {
            Repository::open(&url, &options(), Some(&key), true)
                .await
                .expect("create repository");
        });
        key
    }
}

fn options() -> StorageOptions {
    StorageOptions {
        env: Env::default(),
        ..StorageOptions::default()
    }
}

#[test]
fn healthy_host_with_a_local_repository_and_a_running_daemon() {
    let host = Host::new("");
    host.set_persist_directory(&host.chroma.data_dir());
    generate_key(&host.path("backup-key"));
    let daemon = DaemonProcess::spawn(&host.config, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let (code, _, err) = cli(
        &daemon.socket,
        &[
            "--config",
            host.config.to_str().expect("utf-8"),
            "backup",
            "--full",
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "backup failed: {err}");

    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    run.others_ok(&[]);
    let v = run.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["warnings"], 0);
    for name in [
        "config",
        "key",
        "chroma",
        "chroma_version",
        "chroma_database",
        "change_feed",
        "repository",
        "locks",
        "repository_write",
        "clock",
        "socket",
    ] {
        assert_eq!(run.status(name), "ok", "{name}:\n{run}");
    }
    assert!(
        run.check("change_feed").1.contains("match the server's"),
        "{run}"
    );
    assert!(run.check("repository").1.contains("1 snapshot(s)"), "{run}");
    assert!(run.check("socket").1.contains("ready"), "{run}");
    // Nothing of the key but its id.
    let key_text = std::fs::read_to_string(host.path("backup-key")).expect("key");
    assert!(!run.stdout.contains(key_text.trim()), "{run}");
    // The probe left nothing behind.
    let top: Vec<String> = std::fs::read_dir(host.path("repo"))
        .expect("repo")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !top.iter().any(|n| n.starts_with("doctor-probe")),
        "{top:?}"
    );

    // The text form says the same for a person.
    let text = doctor_with(&host.config, &[], &[], None);
    assert_eq!(text.code, Some(0), "{text}");
    assert!(text.stdout.contains("all checks passed"), "{text}");
    assert!(text.stdout.contains("  ok    chroma_version"), "{text}");
}

/// moto on 127.0.0.1 with a bucket, and the environment the backend reads.
fn moto_env(emu: &emulators::Emulator) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", emu.endpoint.clone()),
    ]
}

#[test]
fn healthy_host_with_an_s3_repository_on_moto() {
    let emu = emulators::moto();
    rt().block_on(emu.create_bucket("backups"));
    let host = Host::new("");
    let config = Host::config_in(
        host.dir.path(),
        &[host.chroma.base()],
        &format!(
            "[backup]\nstorage_path = \"s3://backups/prod\"\nencrypt = true\nkey_file = \"{}\"\n",
            host.path("backup-key").display()
        ),
    );
    let env = moto_env(&emu);
    generate_key(&host.path("backup-key"));
    let mut backup = Command::new(bin());
    backup
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(host.path("no-daemon.sock"))
        .args(["backup", "--full", "--wait"]);
    for (k, v) in &env {
        backup.env(k, v);
    }
    let out = backup.output().expect("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Credentials come from an environment file, as the service's would.
    let env_file = host.path("chromaprod.env");
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&env_file, text).expect("env file");
    let run = doctor_with(
        &config,
        &["--json", "--env-file", env_file.to_str().expect("utf-8")],
        &[],
        None,
    );
    // No daemon runs here: the socket check warns, nothing fails.
    assert_eq!(run.code, Some(0), "{run}");
    run.others_ok(&["socket"]);
    assert_eq!(run.status("socket"), "warn", "{run}");
    assert!(
        run.check("repository").1.contains("s3://backups/prod"),
        "{run}"
    );
    assert!(
        run.check("clock").1.contains("Date header"),
        "the skew comes from moto's Date header:\n{run}"
    );
    assert!(
        run.check("repository_write").1.contains("probe object"),
        "{run}"
    );
}

#[test]
fn azure_on_azurite_and_gcs_on_fake_gcs_server_pass_with_their_own_clocks() {
    use common::emulators::{AZURITE_ACCOUNT, AZURITE_KEY};
    let azurite = emulators::azurite();
    let gcs = emulators::fake_gcs();
    let rt = rt();
    rt.block_on(azurite.create_bucket("backups"));
    rt.block_on(gcs.create_bucket("backups"));
    let host = Host::new("");
    for (url, env) in [
        (
            "az://backups/prod",
            vec![
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.to_string()),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.to_string()),
                (
                    "AZURE_STORAGE_ENDPOINT",
                    format!("{}/{AZURITE_ACCOUNT}", azurite.endpoint),
                ),
            ],
        ),
        (
            "gs://backups/prod",
            vec![("STORAGE_EMULATOR_HOST", gcs.endpoint.clone())],
        ),
    ] {
        let config = Host::config_in(
            host.dir.path(),
            &[host.chroma.base()],
            &format!("[backup]\nstorage_path = \"{url}\"\n"),
        );
        let run = doctor(&config, &env);
        assert_eq!(run.code, Some(0), "{url}:\n{run}");
        // No repository yet, no daemon, no encryption: warnings; the rest passes.
        run.others_ok(&["key", "repository", "locks", "socket"]);
        assert_eq!(run.status("key"), "warn", "{run}");
        assert_eq!(run.status("repository"), "warn", "{run}");
        assert!(
            run.check("repository_write").1.contains(url),
            "{url}:\n{run}"
        );
        assert!(run.check("clock").1.contains("Date header"), "{run}");
        assert!(!run.stdout.contains(AZURITE_KEY), "the account key leaked");
    }
}

#[test]
fn an_invalid_config_fails_and_skips_what_depends_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &["http://127.0.0.1:9".into()],
        "[pool]\nmax_connections = 0\n",
    );
    let run = doctor(&config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("config");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("pool.max_connections"), "{run}");
    assert!(fix.contains("chromaprod validate"), "{run}");
    for name in ["key", "chroma", "repository", "locks", "clock"] {
        assert_eq!(run.status(name), "skip", "{name}:\n{run}");
    }
    // The socket is still looked at (its path is read from the file).
    assert_eq!(run.status("socket"), "warn", "{run}");
}

#[test]
fn a_missing_wrong_or_exposed_key_is_reported() {
    let host = Host::new("");
    // Missing: the repository exists, the configured key file does not.
    host.create_repository();
    std::fs::rename(host.path("backup-key"), host.path("moved-key")).expect("move key");
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("key");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("does not exist"), "{run}");
    assert!(fix.contains("backup-key"), "{run}");
    run.others_ok(&["key", "socket"]);

    // Wrong: a key that is not one of the repository's.
    common::daemon::write_key(&host.path("backup-key"));
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.status("key"), "ok", "{run}");
    let (status, summary, _) = run.check("repository");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("does not open this repository"), "{run}");
    run.others_ok(&["repository", "socket"]);

    // Exposed: the right key, readable by everyone.
    std::fs::remove_file(host.path("backup-key")).expect("rm");
    std::fs::rename(host.path("moved-key"), host.path("backup-key")).expect("restore key");
    std::fs::set_permissions(
        host.path("backup-key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let run = doctor(&host.config, &[]);
    assert_eq!(
        run.code,
        Some(1),
        "chromaprod refuses such a key, so doctor fails:\n{run}"
    );
    let (status, summary, fix) = run.check("key");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("0644"), "{run}");
    assert_eq!(
        fix,
        format!("chmod 600 {}", host.path("backup-key").display()),
        "{run}"
    );
}

/// A plaintext repository works, but has no authenticity: the key and
/// repository checks warn, with the way to an encrypted one.
#[test]
fn a_plaintext_repository_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chroma = ChromaServer::start();
    let repo = dir.path().join("repo");
    let config = Host::config_in(
        dir.path(),
        &[chroma.base()],
        &format!(
            "[backup]\nstorage_path = \"{}\"\nencrypt = false\n",
            repo.display()
        ),
    );
    let url = repo.display().to_string();
    rt().block_on(async {
        Repository::open(&url, &options(), None, true)
            .await
            .expect("create a plaintext repository");
    });
    let run = doctor(&config, &[]);
    assert_eq!(run.code, Some(0), "a warning is not a failure:\n{run}");
    let (status, summary, fix) = run.check("key");
    assert_eq!(status, "warn", "{run}");
    assert!(summary.contains("without authenticity"), "{run}");
    assert!(fix.contains("chromaprod key generate"), "{run}");
    let (status, summary, _) = run.check("repository");
    assert_eq!(status, "warn", "{run}");
    assert!(
        summary.contains("not encrypted") && summary.contains("undetected"),
        "{run}"
    );
    run.others_ok(&["key", "repository", "socket"]);
}

#[test]
fn an_unreachable_chroma_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::chroma::free_port();
    let config = Host::config_in(dir.path(), &[format!("http://127.0.0.1:{port}")], "");
    let run = doctor(&config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("chroma");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("cannot connect"), "{run}");
    assert!(fix.contains("chroma.endpoints"), "{run}");
    assert_eq!(run.status("chroma_version"), "skip", "{run}");
    assert_eq!(run.status("chroma_database"), "skip", "{run}");
}

/// A real HTTP server that is not Chroma: Python's http.server.
struct NotChroma {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for NotChroma {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn not_chroma() -> NotChroma {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("index.html"), "<p>not chroma</p>").expect("write");
    let port = common::chroma::free_port();
    let child = Command::new(tool("python3"))
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    NotChroma {
        child,
        port,
        _dir: dir,
    }
}

#[test]
fn a_server_that_is_not_a_supported_chroma_fails_the_version_check() {
    let server = not_chroma();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Host::config_in(
        dir.path(),
        &[format!("http://127.0.0.1:{}", server.port)],
        "",
    );
    let run = doctor(&config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.status("chroma"), "ok", "it answers HTTP:\n{run}");
    let (status, summary, fix) = run.check("chroma_version");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("not a supported Chroma"), "{run}");
    assert!(summary.contains("404"), "{run}");
    assert!(fix.contains("Chroma 1.x"), "{run}");
    assert_eq!(run.status("chroma_database"), "skip", "{run}");
}

#[test]
fn a_missing_chroma_database_fails() {
    let host = Host::new("");
    host.create_repository();
    let config = host.config.clone();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("[chroma]\n", "[chroma]\ndatabase = \"no_such_database\"\n");
    std::fs::write(&config, text).expect("write");
    let run = doctor(&config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("chroma_database");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("no_such_database"), "{run}");
    assert!(fix.contains("chroma.database"), "{run}");
    run.others_ok(&["chroma_database", "socket"]);
}

#[test]
fn an_unreachable_repository_fails() {
    let emu = emulators::moto();
    let host =
        Host::new("[backup]\nstorage_path = \"s3://no-such-bucket/prod\"\nencrypt = false\n");
    let run = doctor(&host.config, &moto_env(&emu));
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("repository");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("does not exist"), "{run}");
    assert!(fix.contains("create the bucket"), "{run}");
    assert_eq!(run.status("locks"), "skip", "{run}");
    assert_eq!(run.status("repository_write"), "skip", "{run}");
    // The clock is still compared with the endpoint's.
    assert_eq!(run.status("clock"), "ok", "{run}");

    // Nothing listens at the endpoint at all.
    let port = common::chroma::free_port();
    let mut env = moto_env(&emu);
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")));
    let run = doctor(&host.config, &env);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, _, fix) = run.check("repository");
    assert_eq!(status, "fail", "{run}");
    assert!(fix.contains("reaches the storage endpoint"), "{run}");
}

#[test]
fn a_repository_the_service_user_cannot_write_fails() {
    let host = Host::new("");
    host.create_repository();
    std::fs::set_permissions(host.path("repo"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("this test needs the user nobody");
    assert_ne!(nobody.uid, nix::unistd::geteuid());
    let run = doctor_with(
        &host.config,
        &["--json", "--service-user", "nobody"],
        &[],
        None,
    );
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("repository_write");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("nobody cannot write"), "{run}");
    assert!(fix.contains("chown -R nobody"), "{run}");

    // A repository that does not exist yet in a directory nobody cannot write.
    let config = Host::config_in(
        host.dir.path(),
        &[host.chroma.base()],
        &format!(
            "[backup]\nstorage_path = \"{}\"\n",
            host.path("repo/not-yet").display()
        ),
    );
    let run = doctor_with(&config, &["--json", "--service-user", "nobody"], &[], None);
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.status("repository"), "warn", "{run}");
    let (status, summary, fix) = run.check("repository_write");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("cannot create"), "{run}");
    assert!(fix.contains("install -d -o nobody"), "{run}");
    assert!(
        !host.path("repo/not-yet").exists(),
        "doctor must not create the repository"
    );
}

fn write_lock(repo: &Path, id: &str, info: &LockInfo) {
    std::fs::create_dir_all(repo.join("locks")).expect("locks dir");
    std::fs::write(
        repo.join("locks").join(id),
        serde_json::to_vec(info).expect("json"),
    )
    .expect("write lock");
}

#[test]
fn expired_locks_warn_and_locks_from_the_future_fail() {
    let host = Host::new("");
    host.create_repository();
    let now = chromaprod::backup::lock::now_ms();
    write_lock(
        &host.path("repo"),
        "00000000000000aa",
        &LockInfo {
            holder: "old-host".into(),
            pid: 4242,
            purpose: "backup".into(),
            exclusive: false,
            created_ms: now - 600_000,
            expires_ms: now - 480_000,
        },
    );
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let (status, summary, _) = run.check("locks");
    assert_eq!(status, "warn", "{run}");
    assert!(
        summary.contains("1 expired lock(s)") && summary.contains("old-host"),
        "{run}"
    );

    write_lock(
        &host.path("repo"),
        "00000000000000bb",
        &LockInfo {
            holder: "fast-clock-host".into(),
            pid: 77,
            purpose: "prune".into(),
            exclusive: true,
            created_ms: now + 3_600_000,
            expires_ms: now + 3_720_000,
        },
    );
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("locks");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("fast-clock-host"), "{run}");
    assert!(summary.contains("in the future"), "{run}");
    assert!(fix.contains("timedatectl"), "{run}");
    run.others_ok(&["locks", "socket"]);
}

#[test]
fn a_world_accessible_socket_fails_and_a_stale_one_warns() {
    let host = Host::new("");
    host.create_repository();
    let daemon = DaemonProcess::spawn(&host.config, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let run = doctor(&host.config, &[]);
    assert_eq!(run.status("socket"), "ok", "{run}");

    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("socket");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("0666"), "{run}");
    assert!(fix.contains("socket_mode"), "{run}");
    run.others_ok(&["socket"]);

    // A socket file nobody listens on (what SIGKILL leaves behind).
    let socket = daemon.socket.clone();
    let mut daemon = daemon;
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_timeout(Duration::from_secs(10));
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(1), "the 0666 mode still fails:\n{run}");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let (status, summary, _) = run.check("socket");
    assert_eq!(status, "warn", "{run}");
    assert!(summary.contains("stale"), "{run}");
}

#[test]
fn a_rejected_reload_warns_until_the_file_is_fixed_and_reloaded() {
    let host = Host::new("");
    host.create_repository();
    let daemon = DaemonProcess::spawn(&host.config, &[]);
    daemon.wait_ready(Duration::from_secs(30));
    let good = std::fs::read_to_string(&host.config).expect("config");
    std::fs::write(
        &host.config,
        format!("{good}\n[pool]\nmax_connections = 0\n"),
    )
    .expect("bad edit");
    let (code, _, _) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(1), "the daemon rejects the file");
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(1), "the file itself is invalid:\n{run}");
    assert_eq!(run.status("config"), "fail", "{run}");
    let (status, summary, fix) = run.check("socket");
    assert_eq!(status, "warn", "{run}");
    assert!(summary.contains("last reload was rejected"), "{run}");
    assert!(summary.contains("pool.max_connections"), "{run}");
    assert!(fix.contains("chromaprod reload"), "{run}");

    std::fs::write(&host.config, &good).expect("fix");
    let (code, _, err) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(0), "{err}");
    let run = doctor(&host.config, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    run.others_ok(&[]);
}

#[test]
fn a_clock_an_hour_off_fails_against_a_local_and_an_s3_backend() {
    let host = Host::new("");
    host.create_repository();
    let run = doctor_with(&host.config, &["--json"], &[], Some("+1h"));
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, fix) = run.check("clock");
    assert_eq!(status, "fail", "{run}");
    assert!(summary.contains("behind this host"), "{run}");
    assert!(summary.contains("modification time"), "{run}");
    assert!(fix.contains("timedatectl set-ntp true"), "{run}");
    run.others_ok(&["clock", "socket"]);

    let emu = emulators::moto();
    rt().block_on(emu.create_bucket("backups"));
    let config = Host::config_in(
        host.dir.path(),
        &[host.chroma.base()],
        "[backup]\nstorage_path = \"s3://backups/skew\"\n",
    );
    let run = doctor_with(&config, &["--json"], &moto_env(&emu), Some("-30m"));
    assert_eq!(run.code, Some(1), "{run}");
    let (status, summary, _) = run.check("clock");
    assert_eq!(status, "fail", "{run}");
    assert!(
        summary.contains("ahead of this host") && summary.contains("Date header"),
        "{run}"
    );
}

/// `change_feed` warns, with the fix, when the persist directory cannot be
/// read or belongs to another server; backups then read over HTTP.
#[test]
fn change_feed_warns_about_a_directory_it_cannot_use() {
    let host = Host::new("");
    host.create_repository();
    host.set_persist_directory(&host.path("nowhere"));
    let run = doctor(&host.config, &[]);
    let (status, summary, fix) = run.check("change_feed");
    assert_eq!(status, "warn", "{run}");
    assert!(summary.contains("read every record over HTTP"), "{run}");
    assert!(fix.contains("setfacl"), "{run}");

    // Another server's directory: it does not hold this server's collections.
    let other = ChromaServer::start();
    let store = common::records::store_for(&host.chroma.base());
    rt().block_on(common::records::seed(&store, "docs", 10, 4));
    host.set_persist_directory(&other.data_dir());
    let run = doctor(&host.config, &[]);
    let (status, summary, fix) = run.check("change_feed");
    assert_eq!(status, "warn", "{run}");
    assert!(summary.contains("collection docs"), "{run}");
    assert!(fix.contains("--path"), "{run}");
}
