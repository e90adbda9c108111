//! Object-store emulators for the storage conformance suite: moto's S3
//! server, Azurite (blob) and fake-gcs-server, each started on 127.0.0.1 with
//! a free port in its own process group and killed with that group on drop.
//!
//! Binaries come from `<repo>/.tools` (installed by
//! `scripts/install-emulators.sh`, which `make test` runs) or from the env
//! vars `MOTO_SERVER`, `AZURITE_BLOB`, `FAKE_GCS_SERVER`. A missing binary
//! fails the test: these suites are never skipped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running emulator; dropping it kills its whole process group.
pub struct Emulator {
    name: &'static str,
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Emulator {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        // Children of the leader (Azurite's workers) may outlive it briefly.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools")
}

/// The binary from `env_var`, else `<repo>/.tools/<rel>`; panics with the fix if absent.
fn find_binary(env_var: &str, rel: &str) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join(rel));
    assert!(
        path.exists(),
        "emulator binary {} not found (set {env_var} or run `make test`, which runs scripts/install-emulators.sh)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

fn start(
    name: &'static str,
    program: PathBuf,
    args: impl Fn(u16, &std::path::Path) -> Vec<String>,
) -> Emulator {
    let mut dir = tempfile::tempdir().expect("emulator temp dir");
    // A port taken between probing and binding makes the child exit; try again.
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("emulator.log")).expect("log file");
        let child = Command::new(&program)
            .args(args(port, dir.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {name} ({}): {e}; run `make test`",
                    program.display()
                )
            });
        let mut emu = Emulator {
            name,
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return emu;
            }
            if let Ok(Some(status)) = emu.child.try_wait() {
                eprintln!("{name} exited early ({status}):\n{}", emu.log());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on {port} within 60 s:\n{}",
                emu.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        dir = std::mem::replace(&mut emu.dir, tempfile::tempdir().expect("temp dir"));
        drop(emu);
    }
    panic!("{name} failed to start three times")
}

/// moto's S3 server (any key and secret are accepted; region us-east-1).
pub fn moto() -> Emulator {
    let bin = find_binary("MOTO_SERVER", "emu/bin/moto_server");
    start("moto_server", bin, |port, _| {
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]
    })
}

/// Azurite's blob service with the development account.
pub fn azurite() -> Emulator {
    let bin = find_binary("AZURITE_BLOB", "node/node_modules/.bin/azurite-blob");
    start("azurite-blob", bin, |port, dir| {
        vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            dir.join("data").display().to_string(),
            "--skipApiVersionCheck".into(),
            "--loose".into(),
            "--silent".into(),
            "--disableTelemetry".into(),
        ]
    })
}

/// fake-gcs-server, in memory, over plain http.
pub fn fake_gcs() -> Emulator {
    let bin = find_binary("FAKE_GCS_SERVER", "emu/bin/fake-gcs-server");
    start("fake-gcs-server", bin, |port, _| {
        [
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-backend",
            "memory",
            "-log-level",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
}

impl Emulator {
    /// Creates a bucket (moto: unsigned PUT; fake-gcs: POST /storage/v1/b)
    /// or a container (Azurite: Shared Key signed PUT).
    pub async fn create_bucket(&self, bucket: &str) {
        let http = reqwest::Client::new();
        let resp = match self.name {
            "moto_server" => http.put(format!("{}/{bucket}", self.endpoint)).send().await,
            "fake-gcs-server" => {
                http.post(format!("{}/storage/v1/b", self.endpoint))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"name":"{bucket}"}}"#))
                    .send()
                    .await
            }
            "azurite-blob" => {
                let (date, auth) = azure_shared_key("PUT", bucket);
                http.put(format!(
                    "{}/{AZURITE_ACCOUNT}/{bucket}?restype=container",
                    self.endpoint
                ))
                .header("x-ms-date", date)
                .header("x-ms-version", "2021-08-06")
                .header("content-length", "0")
                .header("authorization", auth)
                .send()
                .await
            }
            other => panic!("unknown emulator {other}"),
        }
        .unwrap_or_else(|e| panic!("{}: creating bucket {bucket}: {e}", self.name));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{}: creating bucket {bucket}: {status} {body}",
            self.name
        );
    }
}

/// `x-ms-date` and the Shared Key `Authorization` for a Create Container request.
fn azure_shared_key(verb: &str, container: &str) -> (String, String) {
    use base64::Engine as _;
    // RFC 7231 date, e.g. `Wed, 25 Nov 2026 20:00:00 GMT`.
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let string_to_sign = format!(
        "{verb}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:2021-08-06\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .expect("dev key is base64");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        string_to_sign.as_bytes(),
    );
    let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (date, format!("SharedKey {AZURITE_ACCOUNT}:{sig}"))
}
