//! `FaultProxy`: an HTTP/1.1-aware TCP proxy on 127.0.0.1:0 in front of an
//! upstream address, whose behaviour the test changes at run time.
//!
//! Faults apply per request (not per connection), so a change takes effect
//! on kept-alive connections too. [`FaultProxy::next`] queues faults for the
//! next N requests; after them the standing [`FaultProxy::set`] mode
//! applies. The proxy runs on the test's tokio runtime and stops on drop.
//!
//! ```ignore
//! let proxy = FaultProxy::start(server.addr()).await;
//! proxy.set(Fault::Latency(Duration::from_millis(300)));
//! proxy.next(2, Fault::respond(503, &[("Retry-After", "1")], "busy"));
//! assert_eq!(proxy.requests(), 3);
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forward to the upstream and relay the answer.
    PassThrough,
    /// Wait this long, then forward.
    Latency(Duration),
    /// Read the request, then reset the connection (RST) without answering.
    Reset,
    /// Read the request and never answer (the connection stays open).
    Blackhole,
    /// Reset every new connection right after accepting it (the client sees
    /// a reset, not ECONNREFUSED; stop the upstream for a refused connect).
    Refuse,
    /// Answer the request itself.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Fault {
    pub fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Fault {
        Fault::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            body: body.to_string(),
        }
    }
}

/// A change of the standing mode armed by [`FaultProxy::after`]: the
/// request line it waits for, and the mode that follows.
type Trigger = (fn(&str) -> bool, Fault);

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Fault>>,
    trigger: Mutex<Option<Trigger>>,
    queue: Mutex<VecDeque<Fault>>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    forwarded: AtomicUsize,
    /// The head (request line and headers) of every request read.
    heads: Mutex<Vec<String>>,
}

impl Shared {
    fn next_fault(&self) -> Fault {
        if let Some(f) = self.queue.lock().expect("proxy state lock").pop_front() {
            return f;
        }
        self.mode
            .lock()
            .expect("proxy state lock")
            .clone()
            .unwrap_or(Fault::PassThrough)
    }

    fn peek_fault(&self) -> Fault {
        if let Some(f) = self.queue.lock().expect("proxy state lock").front() {
            return f.clone();
        }
        self.mode
            .lock()
            .expect("proxy state lock")
            .clone()
            .unwrap_or(Fault::PassThrough)
    }
}

pub struct FaultProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl FaultProxy {
    /// Listen on 127.0.0.1:0 and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let upstream = Arc::new(Mutex::new(upstream));
        let (s, c, u) = (shared.clone(), cancel.clone(), upstream.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = c.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                if s.peek_fault() == Fault::Refuse {
                    s.next_fault();
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                let (s, c, up) = (s.clone(), c.clone(), *u.lock().expect("proxy state lock"));
                tokio::spawn(async move {
                    tokio::select! {
                        () = c.cancelled() => {}
                        () = serve(client, up, s) => {}
                    }
                });
            }
        });
        FaultProxy {
            addr,
            upstream,
            shared,
            cancel,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("url")
    }

    /// The standing behaviour (after any queued faults).
    pub fn set(&self, fault: Fault) {
        *self.shared.mode.lock().expect("proxy state lock") = Some(fault);
    }

    /// Apply `fault` to the next `n` requests (or connections, for `Refuse`).
    pub fn next(&self, n: usize, fault: Fault) {
        let mut q = self.shared.queue.lock().expect("proxy state lock");
        for _ in 0..n {
            q.push_back(fault.clone());
        }
    }

    /// Once a forwarded request whose request line (`PUT /api/… HTTP/1.1`)
    /// satisfies `matches` has been answered by the upstream, the standing
    /// mode becomes `fault` (before that answer is relayed): e.g. let one
    /// write through, then blackhole what follows it.
    pub fn after(&self, matches: fn(&str) -> bool, fault: Fault) {
        *self.shared.trigger.lock().expect("proxy state lock") = Some((matches, fault));
    }

    /// Whether the request armed by [`FaultProxy::after`] went through.
    pub fn triggered(&self) -> bool {
        self.shared
            .trigger
            .lock()
            .expect("proxy state lock")
            .is_none()
    }

    /// Forward new connections to another upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("proxy state lock") = upstream;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests read so far (whatever was done with them).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests forwarded to the upstream.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// The head (request line and headers) of every request read so far,
    /// whatever was done with it: what a server at this address would see.
    pub fn request_heads(&self) -> Vec<String> {
        self.shared.heads.lock().expect("proxy state lock").clone()
    }

    pub fn reset_counters(&self) {
        self.shared.connections.store(0, Ordering::SeqCst);
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.forwarded.store(0, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An HTTP/1.1 message: head bytes and body bytes.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read one message; `None` on a clean EOF before it starts.
async fn read_message<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    is_response: bool,
) -> std::io::Result<Option<Message>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut body = Vec::new();
    if let Some(len) = header_value(&text, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).await?;
    } else if header_value(&text, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        // Relay chunked framing verbatim.
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line).await?;
            body.extend_from_slice(&size_line);
            let size_str = String::from_utf8_lossy(&size_line);
            let size = usize::from_str_radix(size_str.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let mut chunk = vec![0; size + 2];
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let mut l = Vec::new();
                    r.read_until(b'\n', &mut l).await?;
                    body.extend_from_slice(&l);
                    if l == b"\r\n" || l.is_empty() {
                        break;
                    }
                }
                break;
            }
            r.read_exact(&mut chunk).await?;
            body.extend_from_slice(&chunk);
        }
    } else if is_response && !text.starts_with("HTTP/1.1 204") && !text.starts_with("HTTP/1.1 304")
    {
        r.read_to_end(&mut body).await?;
    }
    Ok(Some(Message { head, body }))
}

async fn serve(client: TcpStream, upstream: SocketAddr, s: Arc<Shared>) {
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    let mut up: Option<(
        BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    )> = None;
    loop {
        let req = match read_message(&mut cr, false).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        s.requests.fetch_add(1, Ordering::SeqCst);
        s.heads
            .lock()
            .expect("proxy state lock")
            .push(String::from_utf8_lossy(&req.head).to_string());
        let fault = s.next_fault();
        match fault {
            Fault::Reset | Fault::Refuse => {
                let client = cr.into_inner().reunite(cw).expect("same stream");
                let _ = client.set_zero_linger();
                return;
            }
            Fault::Blackhole => {
                // Hold the connection until the client gives up.
                let mut sink = Vec::new();
                let _ = cr.read_to_end(&mut sink).await;
                return;
            }
            Fault::Respond {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} Canned\r\ncontent-length: {}\r\ncontent-type: application/json\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                if cw.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Fault::Latency(d) => tokio::time::sleep(d).await,
            Fault::PassThrough => {}
        }
        if up.is_none() {
            match TcpStream::connect(upstream).await {
                Ok(u) => {
                    let (r, w) = u.into_split();
                    up = Some((BufReader::new(r), w));
                }
                Err(_) => {
                    // Upstream down: the client sees a reset.
                    let client = cr.into_inner().reunite(cw).expect("same stream");
                    let _ = client.set_zero_linger();
                    return;
                }
            }
        }
        let Some((ur, uw)) = up.as_mut() else { return };
        s.forwarded.fetch_add(1, Ordering::SeqCst);
        if uw.write_all(&req.head).await.is_err() || uw.write_all(&req.body).await.is_err() {
            return;
        }
        let resp = match read_message(ur, true).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        {
            let line = String::from_utf8_lossy(&req.head);
            let line = line.lines().next().unwrap_or_default();
            let mut trigger = s.trigger.lock().expect("proxy state lock");
            if trigger.as_ref().is_some_and(|(m, _)| m(line)) {
                if let Some((_, fault)) = trigger.take() {
                    *s.mode.lock().expect("proxy state lock") = Some(fault);
                }
            }
        }
        if cw.write_all(&resp.head).await.is_err() || cw.write_all(&resp.body).await.is_err() {
            return;
        }
    }
}
