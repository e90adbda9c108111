//! One reload path, four triggers: an in-place edit, a replacement by rename,
//! SIGHUP and `chromaprod reload`. Valid changes apply; invalid ones are
//! rejected while the daemon keeps serving.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::chroma::ChromaServer;
use common::daemon::{cli, config_text, write_config, DaemonProcess};
use common::notify::NotifyListener;
use nix::sys::signal::Signal;
use serde_json::Value;

fn pool_max(status: &Value) -> u64 {
    status["pool"]["max"].as_u64().expect("pool.max")
}

/// Polls `status` until `pred` holds.
fn wait_status(daemon: &DaemonProcess, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = daemon.status();
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "status never matched; last: {s:#}\nlog:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_pool(dir: &Path, chroma: &[String], max: usize, watch: bool) -> String {
    config_text(
        dir,
        chroma,
        &format!("[pool]\nmax_connections = {max}\n\n[breaker]\nfailure_threshold = 5\n# watch={watch}\n"),
    )
    .replace("shutdown_grace = \"5s\"", &format!("shutdown_grace = \"5s\"\nwatch_config = {watch}"))
}

fn start(chroma: &ChromaServer, dir: &Path, watch: bool) -> (DaemonProcess, NotifyListener) {
    let path = write_config(dir, &[], "");
    std::fs::write(&path, with_pool(dir, &[chroma.base()], 4, watch)).expect("write");
    let notify = NotifyListener::bind(dir);
    let daemon = DaemonProcess::spawn(
        &path,
        &[("NOTIFY_SOCKET", notify.path().display().to_string())],
    );
    daemon.wait_ready(Duration::from_secs(20));
    assert_eq!(pool_max(&daemon.status()), 4);
    (daemon, notify)
}

#[test]
fn in_place_edit_is_applied_with_reloading_then_ready() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, notify) = start(&chroma, dir.path(), true);
    let mark = notify.messages().len();

    std::fs::write(
        &daemon.config,
        with_pool(dir.path(), &[chroma.base()], 7, true),
    )
    .expect("edit");
    let s = wait_status(&daemon, Duration::from_secs(10), |s| pool_max(s) == 7);
    assert_eq!(s["config"]["last_reload"]["ok"], true);
    assert_eq!(s["config"]["last_reload"]["cause"]["by"], "file_changed");
    assert_eq!(
        s["config"]["last_reload"]["changed_keys"],
        serde_json::json!(["pool.max_connections"])
    );

    // sd_notify: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    let (i, reloading) = notify
        .wait_for(mark, Duration::from_secs(5), |m| m.has("RELOADING=1"))
        .expect("RELOADING=1");
    let usec: u64 = reloading
        .value("MONOTONIC_USEC")
        .expect("MONOTONIC_USEC")
        .parse()
        .expect("number");
    assert!(usec > 0);
    notify
        .wait_for(i + 1, Duration::from_secs(5), |m| m.has("READY=1"))
        .expect("READY=1 after reload");
}

#[test]
fn replacement_by_rename_is_applied() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, _notify) = start(&chroma, dir.path(), true);

    let tmp = dir.path().join(".chromaprod.toml.new");
    std::fs::write(&tmp, with_pool(dir.path(), &[chroma.base()], 9, true)).expect("write");
    std::fs::rename(&tmp, &daemon.config).expect("rename");
    wait_status(&daemon, Duration::from_secs(10), |s| pool_max(s) == 9);

    // And a second replacement after that (the watcher survived the first).
    std::fs::write(&tmp, with_pool(dir.path(), &[chroma.base()], 3, true)).expect("write");
    std::fs::rename(&tmp, &daemon.config).expect("rename");
    wait_status(&daemon, Duration::from_secs(10), |s| pool_max(s) == 3);
}

#[test]
fn sighup_reloads_when_the_watcher_is_off() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, _notify) = start(&chroma, dir.path(), false);

    std::fs::write(
        &daemon.config,
        with_pool(dir.path(), &[chroma.base()], 6, false),
    )
    .expect("edit");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(pool_max(&daemon.status()), 4, "applied without a trigger");
    daemon.signal(Signal::SIGHUP);
    let s = wait_status(&daemon, Duration::from_secs(10), |s| pool_max(s) == 6);
    assert_eq!(s["config"]["last_reload"]["cause"]["by"], "signal");
}

#[test]
fn reload_command_applies_a_new_endpoint_and_reports_keys() {
    let chroma = ChromaServer::start();
    let other = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, _notify) = start(&chroma, dir.path(), false);
    let before = daemon.status();
    assert_eq!(
        before["pool"]["endpoints"][0]["url"]
            .as_str()
            .map(|u| u.trim_end_matches('/')),
        Some(chroma.base().as_str())
    );

    std::fs::write(
        &daemon.config,
        with_pool(dir.path(), &[other.base()], 4, false),
    )
    .expect("edit");
    let (code, out, err) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("chroma.endpoints"), "{out}");

    // Behaviour follows: with the old server gone, the daemon still answers from the new one.
    drop(chroma);
    let s = wait_status(&daemon, Duration::from_secs(10), |s| {
        s["pool"]["endpoints"][0]["url"]
            .as_str()
            .map(|u| u.trim_end_matches('/'))
            == Some(other.base().as_str())
    });
    assert_eq!(s["config"]["last_reload"]["cause"]["by"], "command");
    let (code, out, err) = cli(
        &daemon.socket,
        &["query", "--collection", "nope", "--vector", "0.1,0.2"],
    );
    // The new server answers: a clear not-found for a missing collection, not a connection error.
    assert_ne!(code, Some(0));
    assert!(
        err.to_lowercase().contains("not found") || err.contains("does not exist"),
        "{out}{err}"
    );
}

#[test]
fn invalid_change_is_rejected_and_the_daemon_keeps_serving() {
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, _notify) = start(&chroma, dir.path(), true);

    let bad = with_pool(dir.path(), &[chroma.base()], 4, true)
        .replace("max_connections = 4", "max_connections = \"many\"");
    std::fs::write(&daemon.config, bad).expect("edit");
    let s = wait_status(&daemon, Duration::from_secs(10), |s| {
        s["config"]["last_reload"]["ok"] == false
    });
    let error = s["config"]["last_reload"]["error"]
        .as_str()
        .expect("error text");
    assert!(error.contains("pool.max_connections"), "{error}");
    assert_eq!(pool_max(&s), 4, "running config replaced by an invalid one");
    assert!(
        daemon.log().contains("configuration rejected"),
        "{}",
        daemon.log()
    );

    // `chromaprod reload` reports the rejection with a non-zero exit.
    let (code, out, _) = cli(&daemon.socket, &["reload"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("pool.max_connections"), "{out}");

    // Found through the (invalid) config file alone, without --socket.
    let out = std::process::Command::new(common::daemon::bin())
        .arg("--config")
        .arg(&daemon.config)
        .arg("reload")
        .output()
        .expect("run reload");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pool.max_connections"));

    // Human status shows it too, and the daemon still serves.
    let (code, out, _) = cli(&daemon.socket, &["status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("FAILED"), "{out}");

    // A later valid edit is applied.
    std::fs::write(
        &daemon.config,
        with_pool(dir.path(), &[chroma.base()], 5, true),
    )
    .expect("edit");
    wait_status(&daemon, Duration::from_secs(10), |s| {
        pool_max(s) == 5 && s["config"]["last_reload"]["ok"] == true
    });
}

#[test]
fn reload_applies_socket_mode_and_group_to_the_live_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let chroma = ChromaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, _notify) = start(&chroma, dir.path(), false);
    let meta = std::fs::metadata(&daemon.socket).expect("stat socket");
    assert_eq!(meta.mode() & 0o777, 0o660);
    let (group, gid) = {
        let text = std::fs::read_to_string("/etc/group").expect("/etc/group");
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?.to_string();
                let gid = f.nth(1)?.parse::<u32>().ok()?;
                Some((name, gid))
            })
            .find(|(_, gid)| *gid != 0 && *gid != 65534 && *gid != meta.gid())
            .expect("another group in /etc/group")
    };

    let moved = dir.path().join("elsewhere.sock");
    let text = with_pool(dir.path(), &[chroma.base()], 4, false).replace(
        "[control]\n",
        &format!("[control]\nsocket_mode = \"0670\"\nsocket_group = \"{group}\"\n"),
    );
    std::fs::write(&daemon.config, &text).expect("edit");
    let (code, out, err) = cli(&daemon.socket, &["reload", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("reload JSON");
    let changed = report["changed_keys"].to_string();
    assert!(changed.contains("control.socket_mode"), "{report}");
    assert!(changed.contains("control.socket_group"), "{report}");
    assert_eq!(report["needs_restart"], serde_json::json!([]), "{report}");

    // What the report calls applied is applied to the socket file.
    let meta = std::fs::metadata(&daemon.socket).expect("stat socket");
    assert_eq!(meta.mode() & 0o777, 0o670, "socket_mode not applied");
    assert_eq!(meta.gid(), gid, "socket_group not applied");
    // And the daemon's access check follows: a member of the new group may reload.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg(common::daemon::bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["reload", "--json"])
        .output()
        .expect("setpriv");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A group that does not exist rejects the reload and changes nothing.
    let bad = text.replace(&format!("\"{group}\""), "\"no-such-group-here\"");
    std::fs::write(&daemon.config, &bad).expect("edit");
    let (code, out, _) = cli(&daemon.socket, &["reload", "--json"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no-such-group-here"), "{out}");
    let meta = std::fs::metadata(&daemon.socket).expect("stat socket");
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o670, gid));

    // A new socket path is reported as needing a restart, and the socket stays where it is.
    let text = text.replace(
        &format!("socket_path = \"{}\"", daemon.socket.display()),
        &format!("socket_path = \"{}\"", moved.display()),
    );
    std::fs::write(&daemon.config, &text).expect("edit");
    let (code, out, err) = cli(&daemon.socket, &["reload", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("reload JSON");
    assert_eq!(
        report["needs_restart"],
        serde_json::json!(["control.socket_path"]),
        "{report}"
    );
    assert!(!moved.exists());
    assert_eq!(daemon.status()["config"]["last_reload"]["ok"], true);
}
