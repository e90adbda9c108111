//! The daemon's view of Chroma going down and coming back: `status`, the
//! metrics endpoint and the systemd status line all show it.

use crate::common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::chroma::ChromaServer;
use common::daemon::{write_config, DaemonProcess};
use common::notify::NotifyListener;

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn chroma_killed_and_restarted_is_seen_in_status_metrics_and_status_line() {
    let mut chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let config = write_config(
        dir.path(),
        &[chroma.base()],
        &format!(
            "[metrics]\nlisten = \"{addr}\"\n\n[pool]\nhealth_check_interval = \"200ms\"\nrequest_timeout = \"1s\"\nconnect_timeout = \"300ms\"\n"
        ),
    );
    let notify = NotifyListener::bind(dir.path());
    let daemon = DaemonProcess::spawn(
        &config,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    daemon.wait_ready(Duration::from_secs(20));

    let up = scrape(&addr);
    assert!(up.contains("chromaprod_build_info"), "{up}");
    assert!(
        up.contains("chromaprod_endpoint_up{endpoint=") && up.contains("} 1"),
        "{up}"
    );

    chroma.stop();
    let down = wait(Duration::from_secs(10), || {
        let s = daemon.status();
        (s["pool"]["endpoints"][0]["healthy"] == false).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "status never showed the endpoint down; log:\n{}",
            daemon.log()
        )
    });
    assert!(
        down["health"]
            .as_str()
            .unwrap_or("")
            .starts_with("unavailable"),
        "{down:#}"
    );
    let m = wait(Duration::from_secs(5), || {
        let m = scrape(&addr);
        m.lines()
            .any(|l| l.starts_with("chromaprod_endpoint_up{") && l.ends_with(" 0"))
            .then_some(m)
    });
    assert!(m.is_some(), "metrics never showed endpoint_up 0");
    assert!(
        wait(Duration::from_secs(5), || notify
            .statuses()
            .iter()
            .any(|s| s.starts_with("unavailable"))
            .then_some(()))
        .is_some(),
        "STATUS= never said unavailable: {:?}",
        notify.statuses()
    );

    chroma.restart();
    wait(Duration::from_secs(15), || {
        let s = daemon.status();
        (s["pool"]["endpoints"][0]["healthy"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("pool never recovered; log:\n{}", daemon.log()));
    let m = wait(Duration::from_secs(5), || {
        let m = scrape(&addr);
        m.lines()
            .any(|l| l.starts_with("chromaprod_endpoint_up{") && l.ends_with(" 1"))
            .then_some(m)
    });
    assert!(m.is_some(), "metrics never showed endpoint_up 1 again");
}
