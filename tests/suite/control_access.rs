//! Who sees what over the control socket of a real daemon (run as root): the
//! other users are the `chromaprod` CLI run through `setpriv`, so the daemon
//! sees their real peer credentials.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command as Process;
use std::time::Duration;

use common::chroma::ChromaServer;
use common::daemon::{bin, cli, outcome, write_config, DaemonProcess};
use common::host::some_group;
use serde_json::Value;

/// `chromaprod --socket SOCKET ARGS…` as `uid` with primary group `gid` and
/// no supplementary groups; (exit code, stdout, stderr).
fn cli_as(uid: u32, gid: u32, socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Process::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args(["--clear-groups", "--"])
        .arg(bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("CHROMAPROD_CONFIG")
        .output()
        .expect("run setpriv");
    outcome(out)
}

fn documents(result: &Value) -> Vec<Value> {
    result["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["document"].clone())
        .collect()
}

#[test]
fn query_shows_documents_only_to_the_admin_level_and_the_service_group() {
    let chroma = ChromaServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(common::records::seed(
        &common::records::store_for(&chroma.base()),
        "docs",
        20,
        8,
    ));

    let (admins, admin_gid) = some_group();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = write_config(dir.path(), &[chroma.base()], "");
    // Anyone may connect; the daemon (root, group root) decides what each peer sees.
    let text = std::fs::read_to_string(&config).expect("read config");
    let text = text.replace(
        "[control]\n",
        &format!("[control]\nsocket_mode = \"0666\"\nadmin_group = \"{admins}\"\n"),
    );
    std::fs::write(&config, text).expect("write config");
    let daemon = DaemonProcess::spawn(&config, &[]);
    daemon.wait_ready(Duration::from_secs(20));
    let query = [
        "query", "-c", "docs", "--id", "r000003", "-k", "3", "--json",
    ];

    // Root: the admin level.
    let (code, out, err) = cli(&daemon.socket, &query);
    assert_eq!(code, Some(0), "{out}{err}");
    let root: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(documents(&root)[0], "record 3", "{root}");
    assert!(documents(&root).iter().all(Value::is_string), "{root}");
    assert_ne!(root["documents_withheld"], true, "{root}");

    // Another user outside the daemon's group and control.admin_group: ids,
    // distances and metadata, but no documents, and told so.
    let (code, out, err) = cli_as(65534, 65534, &daemon.socket, &query);
    assert_eq!(code, Some(0), "{out}{err}");
    let other: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(other["documents_withheld"], true, "{other}");
    assert!(documents(&other).iter().all(Value::is_null), "{other}");
    let ids = |v: &Value| -> Vec<Value> {
        v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["id"].clone())
            .collect()
    };
    assert_eq!(ids(&other), ids(&root));
    assert_eq!(other["results"][0]["metadata"]["i"], 3, "{other}");
    assert!(other["results"][0]["distance"].is_number(), "{other}");
    assert!(!out.contains("record 3"), "{out}");

    // The human output says why the column is empty.
    let (code, out, err) = cli_as(65534, 65534, &daemon.socket, &query[..query.len() - 1]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("documents withheld"), "{out}");
    assert!(out.contains("control.admin_group"), "{out}");

    // In the service's own group (the daemon's primary group, here root's): documents.
    let (code, out, err) = cli_as(65534, 0, &daemon.socket, &query);
    assert_eq!(code, Some(0), "{out}{err}");
    let group: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(documents(&group)[0], "record 3", "{group}");

    // In control.admin_group: documents.
    let (code, out, err) = cli_as(65534, admin_gid, &daemon.socket, &query);
    assert_eq!(code, Some(0), "{out}{err}");
    let admin: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(documents(&admin)[0], "record 3", "{admin}");
}
