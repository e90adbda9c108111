//! The control socket over real Unix sockets: binding, the wire protocol,
//! hostile and slow clients, and peer-credential checks (run as root; the
//! "other user" cases run a client process as `nobody` via `setpriv`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use chromaprod::config::ControlConfig;
use chromaprod::control::{
    self, bind, call, call_with, kind, serve, Access, CallOptions, ClientError, Command,
    ControlError, EventSink, Handler, HandlerError, Limits, Line, Peer,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::common::host::some_group;

/// Environment variable that turns `child_client` into a client run by the
/// parent test under another uid.
const CHILD_SOCKET_ENV: &str = "CHROMAPROD_TEST_CHILD_SOCKET";
const CHILD_MARKER: &str = "CHILD-RESULT:";

/// The handler the tests serve: status and reload answer at once, query
/// streams `k` progress events first.
struct TestHandler;

impl Handler for TestHandler {
    async fn handle(
        &self,
        command: Command,
        peer: Peer,
        events: EventSink,
    ) -> Result<Value, HandlerError> {
        match command {
            Command::Status => Ok(json!({"state": "ready", "peer_uid": peer.uid})),
            Command::Reload => Ok(json!({"reloaded": true})),
            Command::Query { collection, k, .. } => {
                if collection == "slow" {
                    events.send(json!({"stage": "started"})).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                if collection == "missing" {
                    return Err(HandlerError::new("not_found", "no collection `missing`"));
                }
                for i in 0..k {
                    events.send(json!({"done": i + 1, "total": k})).await;
                }
                Ok(json!({"collection": collection, "k": k}))
            }
            // Every other command just says it ran, so tests see who got through.
            other => Ok(json!({"ran": other.name(), "peer_uid": peer.uid})),
        }
    }
}

fn test_limits() -> Limits {
    Limits {
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_millis(200),
        ..Limits::default()
    }
}

struct Server {
    /// Kept alive for the socket's lifetime.
    _dir: tempfile::TempDir,
    path: PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve returns after cancel")
            .expect("serve task");
    }
}

fn config(path: &Path, mode: u32, group: Option<&str>) -> ControlConfig {
    ControlConfig {
        socket_path: path.to_path_buf(),
        socket_mode: mode,
        socket_group: group.map(str::to_string),
        admin_group: None,
    }
}

/// A temp dir that other users may traverse (tempfile makes it 0700).
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

async fn start_with(mode: u32, group: Option<&str>, limits: Limits) -> Server {
    start_with_config(|path| config(path, mode, group), limits).await
}

async fn start_with_config(cfg: impl FnOnce(&Path) -> ControlConfig, limits: Limits) -> Server {
    let dir = open_tempdir();
    let path = dir.path().join("control.sock");
    let cfg = cfg(&path);
    let listener = bind(&cfg).expect("bind");
    let access = Access::new(&cfg).expect("access policy");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(TestHandler),
        Arc::new(access),
        limits,
        cancel.clone(),
    ));
    Server {
        _dir: dir,
        path,
        cancel,
        task,
    }
}

async fn start() -> Server {
    start_with(0o660, None, test_limits()).await
}

/// Send raw bytes (and, if `close`, shut the write side), then read every
/// line the server sends until it closes.
async fn raw(path: &Path, bytes: &[u8], close: bool) -> Vec<Line> {
    let mut stream = UnixStream::connect(path).await.expect("connect");
    let (mut r, mut w) = stream.split();
    let write = async {
        // The server may close early (e.g. an oversized request); that is fine.
        let _ = w.write_all(bytes).await;
        if close {
            let _ = w.shutdown().await;
        }
    };
    let read = async {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
        out
    };
    let (_, out) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .expect("server answers in time");
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("every server line is a protocol line"))
        .collect()
}

fn error_kind(lines: &[Line]) -> Option<String> {
    match lines.last() {
        Some(Line::Response {
            ok: false,
            error: Some(e),
            ..
        }) => Some(e.kind.clone()),
        _ => None,
    }
}

async fn assert_still_serving(path: &Path) {
    let r = call(path, Command::Status, |_| {})
        .await
        .expect("status after a bad client");
    assert_eq!(r["state"], "ready");
}

#[tokio::test]
async fn socket_file_gets_the_configured_mode_and_group() {
    let (group, gid) = some_group();
    let dir = open_tempdir();
    let path = dir.path().join("run/chromaprod/control.sock");
    let listener = bind(&config(&path, 0o640, Some(&group))).expect("bind");
    let meta = std::fs::metadata(&path).expect("stat socket");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), gid);
    let parent = std::fs::metadata(path.parent().expect("parent")).expect("stat dir");
    assert_eq!(parent.mode() & 0o777, 0o755, "missing parent created 0755");
    drop(listener);

    // A numeric gid works too, and replaces the stale file left behind.
    let listener = bind(&config(&path, 0o600, Some(&gid.to_string()))).expect("bind by gid");
    let meta = std::fs::metadata(&path).expect("stat socket");
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o600, gid));
    drop(listener);

    let err = bind(&config(&path, 0o660, Some("no-such-group-here"))).expect_err("bad group");
    assert!(matches!(err, ControlError::UnknownGroup { .. }), "{err}");
    assert!(err.to_string().contains("no-such-group-here"));
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let server = start().await;
    // Live: another daemon is listening.
    let err = bind(&config(&server.path, 0o660, None)).expect_err("live socket");
    assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
    assert!(err.to_string().contains(&server.path.display().to_string()));
    assert_still_serving(&server.path).await;

    // Stale: a socket file nobody listens on.
    let dir = open_tempdir();
    let path = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("std bind"));
    assert!(path.exists(), "std leaves the socket file behind");
    let listener = bind(&config(&path, 0o660, None)).expect("stale socket replaced");
    drop(listener);

    // Not a socket: never deleted.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"precious").expect("write");
    let err = bind(&config(&file, 0o660, None)).expect_err("regular file");
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&file).expect("still there"), b"precious");
    server.stop().await;
}

#[tokio::test]
async fn a_request_round_trips_and_stop_removes_the_socket() {
    let server = start().await;
    let result = call(&server.path, Command::Status, |_| {})
        .await
        .expect("status");
    assert_eq!(result, json!({"state": "ready", "peer_uid": 0}));
    let err = call(
        &server.path,
        Command::Query {
            collection: "missing".into(),
            id: None,
            vector: None,
            k: 1,
        },
        |_| {},
    )
    .await
    .expect_err("handler error");
    assert!(
        matches!(&err, ClientError::Remote { kind, .. } if kind == "not_found"),
        "{err}"
    );
    let path = server.path.clone();
    server.stop().await;
    assert!(!path.exists(), "socket file removed on exit");
}

#[tokio::test]
async fn stopping_ends_running_commands_with_shutting_down() {
    let server = start().await;
    let path = server.path.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let client = tokio::spawn(async move {
        let slow = Command::Query {
            collection: "slow".into(),
            id: None,
            vector: None,
            k: 1,
        };
        call(&path, slow, |_| {
            if let Some(tx) = started_tx.take() {
                let _ = tx.send(());
            }
        })
        .await
    });
    started_rx.await.expect("command started");
    let stopped = std::time::Instant::now();
    server.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "grace, not the 30 s job"
    );
    let err = client.await.expect("client").expect_err("interrupted");
    assert!(
        matches!(&err, ClientError::Remote { kind, .. } if kind == "shutting_down"),
        "{err}"
    );
}

#[tokio::test]
async fn events_stream_before_the_response() {
    let server = start().await;
    let mut events = Vec::new();
    let query = Command::Query {
        collection: "docs".into(),
        id: Some("a".into()),
        vector: None,
        k: 5,
    };
    let result = call(&server.path, query.clone(), |e| events.push(e))
        .await
        .expect("query");
    assert_eq!(result, json!({"collection": "docs", "k": 5}));
    let done: Vec<_> = events.iter().map(|e| e["done"].clone()).collect();
    assert_eq!(done, vec![json!(1), json!(2), json!(3), json!(4), json!(5)]);

    // On the wire: five event lines, then exactly one response line.
    let mut request = serde_json::to_vec(&control::Request::new(query)).expect("encode");
    request.push(b'\n');
    let lines = raw(&server.path, &request, false).await;
    assert_eq!(lines.len(), 6);
    assert!(lines[..5].iter().all(|l| matches!(l, Line::Event { .. })));
    assert!(matches!(lines[5], Line::Response { ok: true, .. }));
    server.stop().await;
}

#[tokio::test]
async fn bad_clients_get_the_right_error_and_the_server_keeps_serving() {
    let server = start().await;
    let p = &server.path;

    let lines = raw(p, b"{\"v\":1,\"cmd\":\n", false).await;
    assert_eq!(error_kind(&lines).as_deref(), Some(kind::BAD_REQUEST));
    assert_still_serving(p).await;

    let lines = raw(p, b"not json at all\n", false).await;
    assert_eq!(error_kind(&lines).as_deref(), Some(kind::BAD_REQUEST));
    assert_still_serving(p).await;

    let lines = raw(p, b"{\"v\":2,\"cmd\":\"status\"}\n", false).await;
    assert_eq!(
        error_kind(&lines).as_deref(),
        Some(kind::UNSUPPORTED_VERSION)
    );
    assert_still_serving(p).await;

    let lines = raw(p, b"{\"v\":1,\"cmd\":\"teleport\"}\n", false).await;
    assert_eq!(error_kind(&lines).as_deref(), Some(kind::UNKNOWN_COMMAND));
    assert_still_serving(p).await;

    // 2 MiB without a newline.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let lines = raw(p, &big, false).await;
    assert_eq!(error_kind(&lines).as_deref(), Some(kind::REQUEST_TOO_LARGE));
    assert_still_serving(p).await;

    // Half a line, then silence.
    let started = std::time::Instant::now();
    let mut slow = UnixStream::connect(p).await.expect("connect");
    slow.write_all(b"{\"v\":1,\"cmd\":\"sta")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
        .await
        .expect("server gives up on the slow client")
        .expect("read");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let line: Line = serde_json::from_slice(&out).expect("one line");
    assert_eq!(error_kind(&[line]).as_deref(), Some(kind::TIMEOUT));
    assert_still_serving(p).await;

    // Connect and close without a word.
    drop(UnixStream::connect(p).await.expect("connect"));
    // A request ended by EOF instead of a newline is accepted.
    let lines = raw(p, b"{\"v\":1,\"cmd\":\"status\"}", true).await;
    assert!(matches!(
        lines.last(),
        Some(Line::Response { ok: true, .. })
    ));
    assert_still_serving(p).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_busy() {
    let server = start_with(
        0o660,
        None,
        Limits {
            max_connections: 1,
            read_timeout: Duration::from_secs(3),
            ..test_limits()
        },
    )
    .await;
    // Holds the only slot: connected, request not yet sent.
    let mut holder = UnixStream::connect(&server.path).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = call(&server.path, Command::Status, |_| {})
        .await
        .expect_err("busy");
    assert!(
        matches!(&err, ClientError::Remote { kind, .. } if kind == "busy"),
        "{err}"
    );
    holder
        .write_all(b"{\"v\":1,\"cmd\":\"status\"}\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    holder.read_to_end(&mut out).await.expect("read");
    drop(holder);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_still_serving(&server.path).await;
    server.stop().await;
}

#[tokio::test]
async fn daemon_not_running_names_the_socket() {
    let dir = open_tempdir();
    let path = dir.path().join("control.sock");
    let err = call(&path, Command::Status, |_| {})
        .await
        .expect_err("no socket");
    assert!(
        matches!(&err, ClientError::DaemonNotRunning { path: p } if *p == path),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        err.to_string().contains("systemctl start chromaprod"),
        "{err}"
    );

    drop(std::os::unix::net::UnixListener::bind(&path).expect("std bind"));
    let err = call(&path, Command::Status, |_| {})
        .await
        .expect_err("stale socket");
    assert!(
        matches!(&err, ClientError::DaemonNotRunning { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_daemon_times_out() {
    let dir = open_tempdir();
    let path = dir.path().join("control.sock");
    let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let options = CallOptions {
        idle_timeout: Duration::from_millis(200),
        ..CallOptions::default()
    };
    let err = call_with(&path, Command::Status, &options, |_| {})
        .await
        .expect_err("timeout");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
}

/// Run this test binary's `child_client` as uid/gid 65534 against `socket`;
/// returns what the child's `call` produced.
fn run_child_as_nobody(socket: &Path, cmd: &str) -> Value {
    let command = match cmd {
        "reload" => Command::Reload,
        _ => Command::Status,
    };
    run_child_as(65534, 65534, socket, &command)
}

/// Run this test binary's `child_client` as `uid` with primary group `gid`
/// and no supplementary groups, sending `command` to `socket`; returns what
/// the child's `call` produced.
fn run_child_as(uid: u32, gid: u32, socket: &Path, command: &Command) -> Value {
    let exe = std::env::current_exe().expect("test binary");
    // The test's name in the suite binary: its module path without the crate.
    let child_test = format!(
        "{}::child_client",
        module_path!()
            .split_once("::")
            .expect("a module of the suite")
            .1
    );
    let out = Process::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--"])
        .arg(exe)
        .arg(child_test)
        .args(["--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_SOCKET_ENV, socket)
        .env(
            "CHROMAPROD_TEST_CHILD_CMD",
            serde_json::to_string(command).expect("encode command"),
        )
        .output()
        .expect("run setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(CHILD_MARKER).map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result; stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("child result")
}

/// Not a test on its own: when the parent sets `CHROMAPROD_TEST_CHILD_SOCKET`,
/// this is the client process running as another user.
#[tokio::test]
async fn child_client() {
    let Some(socket) = std::env::var_os(CHILD_SOCKET_ENV) else {
        return;
    };
    let command: Command = std::env::var("CHROMAPROD_TEST_CHILD_CMD")
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Command::Status);
    let report = match call(Path::new(&socket), command, |_| {}).await {
        Ok(v) => json!({"ok": v}),
        Err(ClientError::PermissionDenied { path, group }) => json!({
            "client_error": "permission_denied",
            "path": path,
            "group": group,
        }),
        Err(ClientError::Remote { kind, message }) => json!({"remote": kind, "message": message}),
        Err(e) => json!({"other": e.to_string()}),
    };
    println!("{CHILD_MARKER}{report}");
}

#[tokio::test]
async fn another_user_cannot_connect_to_a_0660_socket() {
    let server = start_with(0o660, Some("root"), test_limits()).await;
    let result = tokio::task::spawn_blocking({
        let path = server.path.clone();
        move || run_child_as_nobody(&path, "status")
    })
    .await
    .expect("child");
    assert_eq!(result["client_error"], "permission_denied", "{result}");
    assert_eq!(result["group"], "root", "{result}");

    // The same with a client that is not ours.
    let py = Process::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c"])
        .arg(
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             try:\n  s.connect(sys.argv[1]); print('connected')\n\
             except PermissionError: print('EACCES')",
        )
        .arg(&server.path)
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "EACCES");
    assert_still_serving(&server.path).await;
    server.stop().await;
}

#[tokio::test]
async fn the_server_refuses_mutating_commands_from_outside_the_group() {
    // 0666 lets anyone connect; the peer-credential check is the second line.
    let server = start_with(0o666, Some("root"), test_limits()).await;
    let path = server.path.clone();
    let (reload, status) = tokio::task::spawn_blocking(move || {
        (
            run_child_as_nobody(&path, "reload"),
            run_child_as_nobody(&path, "status"),
        )
    })
    .await
    .expect("child");
    assert_eq!(reload["remote"], kind::PERMISSION_DENIED, "{reload}");
    assert!(
        reload["message"]
            .as_str()
            .is_some_and(|m| m.contains("65534")),
        "{reload}"
    );
    assert_eq!(status["ok"]["peer_uid"], 65534, "{status}");

    // Root may reload.
    let r = call(&server.path, Command::Reload, |_| {})
        .await
        .expect("root reload");
    assert_eq!(r["reloaded"], true);
    server.stop().await;
}

/// `n` distinct groups other than root's and nogroup, from /etc/group.
fn groups_besides_root(n: usize) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string("/etc/group").expect("/etc/group");
    let groups: Vec<(String, u32)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            Some((name.to_string(), gid))
        })
        .filter(|(_, gid)| *gid != 0 && *gid != 65534)
        .take(n)
        .collect();
    assert_eq!(groups.len(), n, "need {n} non-root groups in /etc/group");
    groups
}

/// Commands an operator (a member of the socket's group) may run.
fn operational_commands() -> Vec<Command> {
    vec![
        Command::Reload,
        Command::Backup {
            backup_type: chromaprod::backup::BackupType::Full,
            collections: vec![],
            wait: false,
        },
        Command::JobCancel { id: 1 },
        Command::Restore {
            id: "latest".into(),
            collections: vec!["docs".into()],
            as_name: Some("docs-restored".into()),
            target: None,
            target_token: None,
            allow_plain_http: false,
            mode: chromaprod::backup::RestoreMode::FailIfExists,
            dry_run: false,
            keep_previous: false,
            keep_extra: false,
            no_recall: false,
            wait: false,
        },
        Command::Restore {
            id: "latest".into(),
            collections: vec![],
            as_name: None,
            target: None,
            target_token: None,
            allow_plain_http: false,
            mode: chromaprod::backup::RestoreMode::Replace,
            dry_run: true,
            keep_previous: false,
            keep_extra: false,
            no_recall: false,
            wait: false,
        },
        Command::MigrateUp {
            to: None,
            wait: false,
        },
        Command::Prune { dry_run: true },
    ]
}

/// Commands that destroy data or history: the admin level only.
fn destructive_commands() -> Vec<Command> {
    vec![
        Command::BackupDelete {
            id: "latest".into(),
        },
        Command::Prune { dry_run: false },
        Command::Restore {
            id: "latest".into(),
            collections: vec![],
            as_name: None,
            target: None,
            target_token: None,
            allow_plain_http: false,
            mode: chromaprod::backup::RestoreMode::Replace,
            dry_run: false,
            keep_previous: true,
            keep_extra: false,
            no_recall: false,
            wait: false,
        },
        Command::Restore {
            id: "latest".into(),
            collections: vec!["docs".into()],
            as_name: None,
            target: None,
            target_token: None,
            allow_plain_http: false,
            mode: chromaprod::backup::RestoreMode::Delta,
            dry_run: false,
            keep_previous: false,
            keep_extra: true,
            no_recall: false,
            wait: false,
        },
        Command::MigrateDown { to: 0, wait: false },
        Command::MigrateRepair,
        Command::MigrateStamp { version: 3 },
    ]
}

#[tokio::test]
async fn destructive_commands_need_the_admin_level() {
    let groups = groups_besides_root(2);
    let (operators, op_gid) = groups[0].clone();
    // 0666 lets anyone connect; the peer-credential check decides.
    let server = start_with(0o666, Some(&operators), test_limits()).await;
    let path = server.path.clone();
    let (allowed, refused) = tokio::task::spawn_blocking(move || {
        let run = |c: Vec<Command>| -> Vec<(Command, Value)> {
            c.into_iter()
                .map(|c| {
                    let r = run_child_as(65534, op_gid, &path, &c);
                    (c, r)
                })
                .collect()
        };
        (run(operational_commands()), run(destructive_commands()))
    })
    .await
    .expect("children");
    for (c, r) in &allowed {
        assert!(r["ok"].is_object(), "operator may run {c:?}: {r}");
    }
    for (c, r) in &refused {
        assert_eq!(r["remote"], "admin_required", "operator ran {c:?}: {r}");
        let message = r["message"].as_str().unwrap_or_default();
        assert!(message.contains(c.name()), "{message}");
        assert!(message.contains("control.admin_group"), "{message}");
        assert!(message.contains("root"), "{message}");
    }

    // Root holds the admin level.
    for c in destructive_commands() {
        let r = call(&server.path, c.clone(), |_| {})
            .await
            .unwrap_or_else(|e| panic!("root runs {c:?}: {e}"));
        assert_eq!(r["ran"], c.name());
    }
    server.stop().await;

    // Members of control.admin_group hold it too (and, with it, the operate level).
    let (admins, admin_gid) = groups[1].clone();
    let server = start_with_config(
        |path| ControlConfig {
            admin_group: Some(admins),
            ..config(path, 0o666, Some(&operators))
        },
        test_limits(),
    )
    .await;
    let path = server.path.clone();
    let (admin, operator) = tokio::task::spawn_blocking(move || {
        let all: Vec<Command> = destructive_commands()
            .into_iter()
            .chain(operational_commands())
            .collect();
        let admin: Vec<(Command, Value)> = all
            .iter()
            .map(|c| (c.clone(), run_child_as(65534, admin_gid, &path, c)))
            .collect();
        let operator = run_child_as(65534, op_gid, &path, &Command::MigrateRepair);
        (admin, operator)
    })
    .await
    .expect("children");
    for (c, r) in &admin {
        assert!(r["ok"].is_object(), "admin group member may run {c:?}: {r}");
    }
    assert_eq!(operator["remote"], "admin_required", "{operator}");
    let message = operator["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("control.admin_group `{}`", groups[1].0)),
        "{message}"
    );
    server.stop().await;

    // An admin group that does not exist is refused with the key's name.
    let dir = open_tempdir();
    let cfg = ControlConfig {
        admin_group: Some("no-such-admins-here".into()),
        ..config(&dir.path().join("control.sock"), 0o660, None)
    };
    let err = Access::new(&cfg).expect_err("unknown admin group");
    assert!(
        err.to_string()
            .contains("control.admin_group `no-such-admins-here`"),
        "{err}"
    );
}

#[tokio::test]
async fn one_users_idle_connections_do_not_lock_out_another_user() {
    let server = start_with(
        0o666,
        None,
        Limits {
            read_timeout: Duration::from_secs(30),
            ..test_limits()
        },
    )
    .await;
    // Root opens as many idle connections as the server takes in all.
    let mut idle = Vec::new();
    for _ in 0..Limits::default().max_connections {
        idle.push(UnixStream::connect(&server.path).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Root itself is told busy, by its own limit...
    let err = call(&server.path, Command::Status, |_| {})
        .await
        .expect_err("busy");
    assert!(
        matches!(&err, ClientError::Remote { kind, message } if kind == "busy" && message.contains("uid 0 already has 8")),
        "{err}"
    );
    // ...but another user is still served.
    let path = server.path.clone();
    let status = tokio::task::spawn_blocking(move || run_child_as_nobody(&path, "status"))
        .await
        .expect("child");
    assert_eq!(status["ok"]["peer_uid"], 65534, "{status}");
    drop(idle);
    server.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_the_server(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        newline in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let server = start_with(0o660, None, Limits {
                read_timeout: Duration::from_millis(100),
                ..test_limits()
            }).await;
            let mut payload = bytes.clone();
            if newline {
                payload.push(b'\n');
            }
            let mut stream = UnixStream::connect(&server.path).await.expect("connect");
            let _ = stream.write_all(&payload).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            // Whatever came back is protocol lines ending in one response.
            let lines: Vec<Line> = out
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).expect("protocol line"))
                .collect();
            assert!(lines.len() <= 1 || lines[..lines.len() - 1].iter().all(|l| matches!(l, Line::Event { .. })));
            assert_still_serving(&server.path).await;
            server.stop().await;
        });
    }
}
