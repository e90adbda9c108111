//! A real `NOTIFY_SOCKET` listener: receives the sd_notify datagrams a child
//! process sends, exactly as systemd would.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One datagram, split into its `KEY=VALUE` lines, with its arrival time.
#[derive(Debug, Clone)]
pub struct Message {
    pub at: Instant,
    pub lines: Vec<String>,
}

impl Message {
    pub fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

pub struct NotifyListener {
    path: PathBuf,
    received: Arc<Mutex<Vec<Message>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl NotifyListener {
    pub fn bind(dir: &Path) -> NotifyListener {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = received.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let lines = text.lines().map(str::to_string).collect();
                r.lock().expect("lock").push(Message {
                    at: Instant::now(),
                    lines,
                });
            }
        });
        NotifyListener {
            path,
            received,
            _thread: thread,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn messages(&self) -> Vec<Message> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits for the first message (from index `from`) matching `pred`.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<(usize, Message)> {
        let deadline = Instant::now() + timeout;
        loop {
            let msgs = self.messages();
            if let Some((i, m)) = msgs.iter().enumerate().skip(from).find(|(_, m)| pred(m)) {
                return Some((i, m.clone()));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every STATUS= value received so far.
    pub fn statuses(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| m.value("STATUS").map(str::to_string))
            .collect()
    }
}
