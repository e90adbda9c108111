//! The `chromaprod` binary as a child process with a test configuration, a
//! state directory and a control socket in a temp dir.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chromaprod")
}

/// A config file for tests: the given Chroma URLs, everything else in `dir`,
/// short intervals. `extra` is appended verbatim (later keys win per section
/// only if the section is not repeated: pass whole sections not used here).
pub fn write_config(dir: &Path, endpoints: &[String], extra: &str) -> PathBuf {
    let path = dir.join("chromaprod.toml");
    let text = config_text(dir, endpoints, extra);
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn config_text(dir: &Path, endpoints: &[String], extra: &str) -> String {
    let eps = endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[chroma]
endpoints = [{eps}]
startup_wait = "20s"

[control]
socket_path = "{sock}"

[daemon]
state_dir = "{state}"
shutdown_grace = "5s"
watch_poll_interval = "200ms"

[log]
format = "text"
level = "info"

{extra}
"#,
        sock = dir.join("control.sock").display(),
        state = dir.join("state").display(),
    )
}

pub struct DaemonProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
    log_path: PathBuf,
}

impl DaemonProcess {
    /// Starts `chromaprod daemon --config CONFIG` with extra environment.
    pub fn spawn(config: &Path, env: &[(&str, String)]) -> DaemonProcess {
        let dir = config.parent().expect("config dir");
        let log_path = dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_nanos()
        ));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args(["daemon", "--config"])
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn chromaprod daemon");
        DaemonProcess {
            child,
            socket: dir.join("control.sock"),
            config: config.to_path_buf(),
            log_path,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the control socket answers `status`.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.socket.exists() && cli(&self.socket, &["status", "--json"]).0 == Some(0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon not ready within {timeout:?}; log:\n{}", self.log());
    }

    /// `chromaprod status --json` parsed.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = cli(&self.socket, &["status", "--json"]);
        assert_eq!(code, Some(0), "status failed: {err}");
        serde_json::from_str(out.trim()).expect("status JSON")
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI against `socket`; returns (exit code, stdout, stderr).
pub fn cli(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CHROMAPROD_CONFIG")
        .output()
        .expect("run chromaprod");
    outcome(out)
}

/// `chromaprod --config CONFIG --socket DIR/no-daemon.sock ARGS`: the CLI
/// with no daemon (a socket nobody listens on, next to the config), so
/// commands run in-process; no systemd credentials directory is inherited.
pub fn offline_cmd(config: &Path, args: &[&str]) -> Command {
    let socket = config.parent().expect("config dir").join("no-daemon.sock");
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY");
    c
}

/// Runs [`offline_cmd`]; returns (exit code, stdout, stderr).
pub fn offline(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    outcome(offline_cmd(config, args).output().expect("run chromaprod"))
}

/// A finished process as (exit code, stdout, stderr).
pub fn outcome(out: Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new master key, written to `path` as a key file (what `key generate`
/// writes, without running the CLI); panics if it cannot be.
pub fn write_key(path: &Path) -> chromaprod::backup::crypto::MasterKey {
    let key = chromaprod::backup::crypto::MasterKey::generate().expect("key");
    key.write_new_key_file(path).expect("write key");
    key
}

/// `chromaprod key generate PATH`; panics with its stderr if it fails.
pub fn generate_key(path: &Path) {
    let out = Command::new(bin())
        .args(["key", "generate"])
        .arg(path)
        .output()
        .expect("key generate");
    assert!(
        out.status.success(),
        "key generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir with a key (`backup-key`) and a config (`chromaprod.toml`)
/// for `chroma_url` whose `[backup]` is an encrypted repository in `repo/`,
/// followed by the lines `backup`. Returns the dir and the config's path.
pub fn encrypted_setup(chroma_url: &str, backup: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("backup-key");
    generate_key(&key);
    let config = write_config(
        dir.path(),
        &[chroma_url.to_string()],
        &format!(
            "[backup]\nstorage_path = {:?}\nencrypt = true\nkey_file = {:?}\n{backup}",
            dir.path().join("repo").display().to_string(),
            key.display().to_string()
        ),
    );
    (dir, config)
}
