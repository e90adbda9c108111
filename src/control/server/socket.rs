//! Binding the control socket: its directory, a stale socket, group and mode.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use super::ControlError;
use crate::config::ControlConfig;

/// Create the control socket described by `cfg`.
///
/// Creates the parent directory (0755) if missing; replaces a stale socket
/// file that nobody listens on, but refuses if a daemon is listening there
/// or if the path is not a socket; then sets the group (if configured) and
/// the mode. Must be called inside a Tokio runtime.
pub fn bind(cfg: &ControlConfig) -> Result<UnixListener, ControlError> {
    let path = cfg.socket_path.as_path();
    if cfg.socket_mode > 0o777 {
        return Err(ControlError::InvalidMode {
            mode: cfg.socket_mode,
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| ControlError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
    }
    remove_stale(path)?;
    let gid = cfg
        .socket_group
        .as_deref()
        .filter(|g| !g.is_empty())
        .map(|g| resolve_group(g, path).map(|gid| (g, gid)))
        .transpose()?;

    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    set_group_and_mode(path, gid, cfg.socket_mode)?;
    Ok(listener)
}

/// Give the socket file at `path` to `group` (name for messages, gid), if
/// any, then set its `mode`.
pub(in crate::control) fn set_group_and_mode(
    path: &Path,
    group: Option<(&str, u32)>,
    mode: u32,
) -> Result<(), ControlError> {
    if mode > 0o777 {
        return Err(ControlError::InvalidMode { mode });
    }
    if let Some((name, gid)) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            ControlError::SetGroup {
                path: path.to_path_buf(),
                group: name.to_string(),
                source: e.into(),
            }
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        ControlError::SetMode {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })
}

fn remove_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ControlError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ControlError::RemoveStale {
                path: path.to_path_buf(),
                source,
            }),
        Err(source) => Err(ControlError::Inspect {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(in crate::control) fn resolve_group(group: &str, path: &Path) -> Result<u32, ControlError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) | Err(_) => Err(ControlError::UnknownGroup {
            group: group.to_string(),
            path: path.to_path_buf(),
        }),
    }
}
