//! A real Chroma server for tests: `chroma run` on 127.0.0.1 with a free
//! port and a temporary persist directory, killed (with its process group)
//! on drop so no process outlives the test.
//!
//! The binary is `$CHROMA_BIN`, else `<crate>/.tools/venv/bin/chroma`
//! (installed by `make test`). A missing binary fails the test: tests never
//! skip silently.
//!
//! ```ignore
//! let server = ChromaServer::start();
//! let url = server.url(); // http://127.0.0.1:PORT/
//! server.stop();          // connections now refused
//! server.restart();       // same port, same data
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a starting server to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ChromaServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// A persist directory given by the test (default: `data` in `dir`).
    data: Option<PathBuf>,
}

/// The `chroma` executable, or a panic that says how to get it.
pub fn chroma_bin() -> PathBuf {
    let bin = std::env::var_os("CHROMA_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/chroma"),
        PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "Chroma server binary not found at {}: run `make test` (it installs chromadb into \
         .tools/venv) or set CHROMA_BIN to a `chroma` executable",
        bin.display()
    );
    bin
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// One blocking `GET path` on `addr`; returns the status code.
pub fn http_get_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

impl ChromaServer {
    /// Start a server and wait (at most [`START_TIMEOUT`]) until healthy.
    pub fn start() -> Self {
        Self::start_on_port(free_port())
    }

    /// Start a server on a given port (e.g. one a daemon is already waiting for).
    pub fn start_on_port(port: u16) -> Self {
        Self::launch(port, None)
    }

    /// Start a server on a persist directory the test owns (e.g. one a
    /// physical restore wrote); it is not removed on drop.
    pub fn start_on_dir(data: PathBuf) -> Self {
        Self::launch(free_port(), Some(data))
    }

    fn launch(port: u16, data: Option<PathBuf>) -> Self {
        let bin = chroma_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut s = ChromaServer {
            child: None,
            addr,
            dir,
            bin,
            data,
        };
        s.spawn();
        s
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("chroma.log")
    }

    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open chroma log");
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--path")
            .arg(self.data_dir())
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.addr.port().to_string())
            .env("ANONYMIZED_TELEMETRY", "False")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let started = Instant::now();
        loop {
            if http_get_status(self.addr, "/api/v2/healthcheck", Duration::from_millis(500))
                == Some(200)
            {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "chroma exited with {status} before becoming healthy; log:\n{}",
                        self.log_tail()
                    );
                }
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "chroma on {} not healthy after {START_TIMEOUT:?}; log:\n{}",
                self.addr,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last 4 KiB of the server's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }

    /// `http://127.0.0.1:PORT/`
    /// The base URL as a string without a trailing slash, for config files.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("url")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The persist directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// Kill the server (its whole process group) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Wait until the port is free again (bounded).
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10)
            && TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The server's process id (the leader of its process group), while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for ChromaServer {
    fn drop(&mut self) {
        self.stop();
    }
}
