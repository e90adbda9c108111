//! The daemon under a real `NOTIFY_SOCKET`: readiness, status, watchdog,
//! graceful stop, configuration errors.

use crate::common;

use std::time::Duration;

use common::chroma::{free_port, ChromaServer};
use common::daemon::{write_config, DaemonProcess};
use common::notify::NotifyListener;
use nix::sys::signal::Signal;

#[test]
fn ready_only_after_chroma_is_reachable_with_status_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = write_config(dir.path(), std::slice::from_ref(&url), "");
    let notify = NotifyListener::bind(dir.path());
    let daemon = DaemonProcess::spawn(
        &config,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );

    // Nothing listens yet: the daemon says it is waiting, and is not ready.
    let waiting = notify.wait_for(0, Duration::from_secs(10), |m| {
        m.value("STATUS")
            .is_some_and(|s| s.starts_with("waiting for Chroma"))
    });
    assert!(
        waiting.is_some(),
        "no waiting STATUS; log:\n{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !notify.messages().iter().any(|m| m.has("READY=1")),
        "READY=1 before Chroma was up"
    );

    // Chroma comes up on that port: READY=1 follows, with a ready status.
    let _chroma = ChromaServer::start_on_port(port);
    let (_, ready) = notify
        .wait_for(0, Duration::from_secs(20), |m| m.has("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", daemon.log()));
    let status = ready
        .value("STATUS")
        .expect("STATUS with READY")
        .to_string();
    assert!(status.starts_with("ready"), "{status}");
    assert!(status.contains("1/1 endpoints up"), "{status}");
    let statuses = notify.statuses();
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("connecting to Chroma at")),
        "{statuses:?}"
    );
    // The control socket is up by the time READY=1 is sent.
    assert!(daemon.socket.exists());
    daemon.status();
}

#[test]
fn sigterm_sends_stopping_and_exits_zero_within_grace() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &[chroma.base()], "");
    let notify = NotifyListener::bind(dir.path());
    let mut daemon = DaemonProcess::spawn(
        &config,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    notify
        .wait_for(0, Duration::from_secs(20), |m| m.has("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", daemon.log()));

    daemon.signal(Signal::SIGTERM);
    let status = daemon
        .wait_timeout(Duration::from_secs(5))
        .expect("exit within the 5 s grace");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(notify.messages().iter().any(|m| m.has("STOPPING=1")));
    assert!(!daemon.socket.exists(), "control socket left behind");
}

#[test]
fn watchdog_pings_at_half_the_interval_and_stop_when_the_main_loop_is_stuck() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &[chroma.base()], "");
    let notify = NotifyListener::bind(dir.path());
    let daemon = DaemonProcess::spawn(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path().display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
            // Debug builds only: a reload request makes the main loop hang.
            ("CHROMAPROD_DEBUG_STALL_ON_RELOAD", "1".to_string()),
        ],
    );
    let (ready_at, _) = notify
        .wait_for(0, Duration::from_secs(20), |m| m.has("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", daemon.log()));

    std::thread::sleep(Duration::from_secs(2));
    let pings: Vec<_> = notify
        .messages()
        .into_iter()
        .skip(ready_at)
        .filter(|m| m.has("WATCHDOG=1"))
        .collect();
    // Every 200 ms over 2 s: about 10.
    assert!(
        (7..=13).contains(&pings.len()),
        "{} pings in 2 s",
        pings.len()
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(400)),
        "gap over the interval: {gaps:?}"
    );

    // Stall the main loop: pings stop within one interval.
    daemon.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(600));
    let before = notify
        .messages()
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .count();
    std::thread::sleep(Duration::from_secs(1));
    let after = notify
        .messages()
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .count();
    assert_eq!(
        before, after,
        "watchdog kept pinging while the main loop was stuck"
    );
    assert!(
        daemon.log().contains("withholding watchdog pings"),
        "log:\n{}",
        daemon.log()
    );
}

#[test]
fn bad_config_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &["http://127.0.0.1:1".to_string()],
        "[pool]\nmax_connections = \"lots\"\n",
    );
    let notify = NotifyListener::bind(dir.path());
    let mut daemon = DaemonProcess::spawn(
        &config,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    let status = daemon.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(78));
    let log = daemon.log();
    assert!(log.contains("pool.max_connections"), "{log}");
    assert!(!notify.messages().iter().any(|m| m.has("READY=1")));
}

#[test]
fn chroma_never_reachable_exits_69_after_startup_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(dir.path(), &[format!("http://127.0.0.1:{port}")], "");
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("startup_wait = \"20s\"", "startup_wait = \"1s\"");
    std::fs::write(&config, text).expect("write");
    let mut daemon = DaemonProcess::spawn(&config, &[]);
    let status = daemon.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(69), "log:\n{}", daemon.log());
    assert!(
        daemon.log().contains("did not become reachable"),
        "{}",
        daemon.log()
    );
}

/// Starts a daemon whose only endpoint is `url` with `startup_wait = "3s"`
/// and returns how long it took to give up, its exit code and its log.
fn give_up_time(url: &str) -> (Duration, Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &[url.to_string()], "");
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("startup_wait = \"20s\"", "startup_wait = \"3s\"");
    std::fs::write(&config, text).expect("write");
    let started = std::time::Instant::now();
    let mut daemon = DaemonProcess::spawn(&config, &[]);
    // Not exiting at all shows as no exit code after 30 s.
    let code = daemon
        .wait_timeout(Duration::from_secs(30))
        .and_then(|s| s.code());
    (started.elapsed(), code, daemon.log())
}

#[test]
fn dead_and_black_hole_endpoints_give_up_within_startup_wait() {
    // Dead: nothing listens, connections are refused at once.
    let dead = format!("http://127.0.0.1:{}", free_port());
    // Black hole: a listener that never accepts; the kernel completes the
    // handshake (backlog) and no byte ever comes back.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_url = format!("http://{}", hole.local_addr().expect("addr"));
    let runs = [dead, hole_url].map(|url| std::thread::spawn(move || (give_up_time(&url), url)));
    for run in runs {
        let ((elapsed, code, log), url) = run.join().expect("thread");
        assert_eq!(code, Some(69), "{url}: log:\n{log}");
        assert!(log.contains("did not become reachable"), "{url}: {log}");
        // startup_wait is 3 s: waiting much less means it did not retry,
        // much more means a call outlived the deadline.
        assert!(
            elapsed >= Duration::from_millis(2900) && elapsed <= Duration::from_secs(5),
            "{url}: gave up after {elapsed:?}, expected 3-5 s with startup_wait = 3s; log:\n{log}"
        );
    }
    drop(hole);
}
