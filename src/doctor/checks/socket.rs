//! The `socket` check: the control socket, its mode and group, and the daemon behind it.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use super::one_line;
use crate::config::Config;
use crate::control::{self, ClientError, Command};
use crate::doctor::{Check, Options};

pub(super) async fn check_socket(path: &Path, cfg: Option<&Config>, o: &Options) -> Vec<Check> {
    use std::os::unix::fs::FileTypeExt as _;
    const NAME: &str = "socket";
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![Check::warn(
                NAME,
                format!("no control socket at {shown}: the daemon is not running"),
                "start it: `systemctl enable --now chromaprod` (if it stopped, `journalctl -u chromaprod -e` says why); restores and backups also work without it",
            )]
        }
        Err(e) => {
            return vec![Check::fail(
                NAME,
                format!("cannot inspect {shown}: {e}"),
                "run as root or as a member of the socket's group",
            )]
        }
    };
    if !meta.file_type().is_socket() {
        return vec![Check::fail(
            NAME,
            format!("{shown} exists and is not a socket: the daemon cannot start"),
            "move it away, or set control.socket_path to another path",
        )];
    }
    let mode = meta.mode() & 0o777;
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    if mode & 0o007 != 0 {
        return vec![Check::fail(
            NAME,
            format!("{shown} has mode {mode:04o}: every local user can control the daemon (backups, restores, deletes, reloads)"),
            "set control.socket_mode = \"0660\" (and control.socket_group) in the configuration, then `chromaprod reload`",
        )];
    }
    let options = control::CallOptions {
        connect_timeout: o.timeout.min(Duration::from_secs(5)),
        idle_timeout: o.timeout,
        ..control::CallOptions::default()
    };
    let status = control::call_with(path, Command::Status, &options, |_| {}).await;
    let v = match status {
        Ok(v) => v,
        Err(ClientError::DaemonNotRunning { .. }) => {
            return vec![Check::warn(
                NAME,
                format!("{shown} is a stale socket: no daemon listens on it"),
                "start the daemon (`systemctl start chromaprod`; it replaces the stale socket); `journalctl -u chromaprod -e` says why it stopped",
            )]
        }
        Err(e @ ClientError::PermissionDenied { .. }) => {
            return vec![Check::fail(NAME, e.to_string(), format!("members of group {group} may use the socket: `sudo usermod -aG {group} $USER`, then log in again"))]
        }
        Err(e) => {
            return vec![Check::fail(
                NAME,
                format!("{shown}: {e}"),
                "the daemon does not answer: `systemctl status chromaprod` and `journalctl -u chromaprod -e`",
            )]
        }
    };
    let answer = format!(
        "daemon {} (pid {}) answers on {shown} (mode {mode:04o}, group {group}); {}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["health"].as_str().unwrap_or("health unknown")
    );
    let reload = &v["config"]["last_reload"];
    if reload["ok"] == serde_json::Value::Bool(false) {
        return vec![Check::warn(
            NAME,
            format!(
                "{answer}; its last reload was rejected: {}",
                one_line(reload["error"].as_str().unwrap_or("no reason given"))
            ),
            "fix the file (`chromaprod validate` lists every problem), then `chromaprod reload`; until then the daemon keeps the configuration it had",
        )];
    }
    if let Some(cfg) = cfg {
        let want_mode = cfg.control.socket_mode;
        if mode != want_mode {
            return vec![Check::warn(
                NAME,
                format!("{answer}; but control.socket_mode is {want_mode:04o}"),
                "`chromaprod reload` (or `systemctl reload chromaprod`) applies control.socket_mode to the running socket (or correct the setting)",
            )];
        }
        if let Some(want) = cfg
            .control
            .socket_group
            .as_deref()
            .filter(|g| !g.is_empty())
        {
            if want != group {
                return vec![Check::warn(
                    NAME,
                    format!("{answer}; but control.socket_group is {want}"),
                    "`chromaprod reload` (or `systemctl reload chromaprod`) applies control.socket_group to the running socket (or correct the setting)",
                )];
            }
        }
    }
    vec![Check::ok(NAME, answer)]
}
