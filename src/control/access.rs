//! Who may do what on the control socket: the peer's access level and
//! whether it may see document text, decided from its credentials.
//!
//! - admin: root, the daemon's own user, members of `control.admin_group`;
//! - operate: members of the socket file's group;
//! - read: anyone else who can connect.
//!
//! Document text in `query` results is for the admin level and for members
//! of the daemon's own (primary) group. "Member" means the peer's primary
//! group (from `SO_PEERCRED`) or a group the system's user database lists
//! the peer's user in.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::protocol::{kind, Command, Level};
use super::server::{resolve_group, set_group_and_mode, ControlError, HandlerError};
use crate::config::ControlConfig;

/// What a peer holds, decided once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clearance {
    pub level: Level,
    /// May see document text (`query`).
    pub documents: bool,
}

impl Clearance {
    /// Everything: root, the daemon's user, or a command run in-process.
    pub const FULL: Clearance = Clearance {
        level: Level::Admin,
        documents: true,
    };
}

/// The groups that grant levels, as values; pure decisions over them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    own_uid: u32,
    /// The daemon's primary group: its members see document text.
    own_gid: u32,
    /// The socket file's group: its members hold the operate level.
    socket_gid: u32,
    /// `control.admin_group`, name and gid.
    admin: Option<(String, u32)>,
}

impl Policy {
    /// The clearance of `uid`, a member of `groups`.
    fn clearance(&self, uid: u32, groups: &[u32]) -> Clearance {
        if uid == 0 || uid == self.own_uid {
            return Clearance::FULL;
        }
        let admin = self
            .admin
            .as_ref()
            .is_some_and(|(_, gid)| groups.contains(gid));
        let level = if admin {
            Level::Admin
        } else if groups.contains(&self.socket_gid) {
            Level::Operate
        } else {
            Level::Read
        };
        Clearance {
            level,
            documents: admin || groups.contains(&self.own_gid),
        }
    }

    /// Why `command` is refused to peer `uid` (who holds less than it needs).
    fn refusal(&self, command: &Command, uid: u32) -> HandlerError {
        let name = command.name();
        match command.level() {
            Level::Admin => {
                let how = match &self.admin {
                    Some((group, gid)) => format!(
                        "run it as root (sudo), as the daemon's user, or as a member of control.admin_group `{group}` (gid {gid}); uid {uid} is none of these"
                    ),
                    None => format!(
                        "run it as root (sudo) or as the daemon's user, or set control.admin_group to a group of administrators and join it; uid {uid} is neither and control.admin_group is not set"
                    ),
                };
                HandlerError::new(
                    kind::ADMIN_REQUIRED,
                    format!("`{name}` destroys data or history and needs the admin level: {how}"),
                )
            }
            _ => HandlerError::new(
                kind::PERMISSION_DENIED,
                format!(
                    "`{name}` changes the daemon; uid {uid} is not root, not the daemon's user, not in the control socket's group (gid {}) and not in control.admin_group",
                    self.socket_gid
                ),
            ),
        }
    }
}

/// The live access policy of one control socket: the server reads it for
/// every connection, a reload replaces it (with the socket file's group and
/// mode) through [`Access::reconfigure`].
#[derive(Debug)]
pub struct Access {
    socket_path: PathBuf,
    policy: RwLock<Policy>,
}

impl Access {
    /// The policy for the socket [`super::bind`] created from `cfg`: the
    /// socket file's group grants the operate level, `control.admin_group`
    /// the admin level.
    pub fn new(cfg: &ControlConfig) -> Result<Self, ControlError> {
        let path = cfg.socket_path.as_path();
        let socket_gid = std::fs::metadata(path).map_or_else(
            |_| nix::unistd::getegid().as_raw(),
            |m| std::os::unix::fs::MetadataExt::gid(&m),
        );
        Ok(Self {
            socket_path: path.to_path_buf(),
            policy: RwLock::new(Policy {
                own_uid: nix::unistd::geteuid().as_raw(),
                own_gid: nix::unistd::getegid().as_raw(),
                socket_gid,
                admin: admin_group(cfg, path)?,
            }),
        })
    }

    /// Apply a reloaded `[control]` section to the live socket: the socket
    /// file's group (`socket_group`, unset = the daemon's group) and mode,
    /// and `admin_group`. Groups are resolved first, so an unknown group
    /// changes nothing. `cfg.socket_path` is not used: a new path needs a
    /// restart.
    pub fn reconfigure(&self, cfg: &ControlConfig) -> Result<(), ControlError> {
        let path = self.socket_path.as_path();
        let admin = admin_group(cfg, path)?;
        let group = match cfg.socket_group.as_deref().filter(|g| !g.is_empty()) {
            Some(name) => (name.to_string(), resolve_group(name, path)?),
            None => {
                let gid = nix::unistd::getegid().as_raw();
                (format!("gid {gid} (the daemon's group)"), gid)
            }
        };
        set_group_and_mode(path, Some((&group.0, group.1)), cfg.socket_mode)?;
        let mut policy = self.policy.write().unwrap_or_else(|e| e.into_inner());
        policy.socket_gid = group.1;
        policy.admin = admin;
        Ok(())
    }

    /// The clearance of a peer with `uid` and primary group `gid`. The
    /// user-database lookup of its other groups runs off the async threads,
    /// and only when the primary group does not already grant everything.
    pub(crate) async fn clearance(&self, uid: u32, gid: u32) -> Clearance {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fast = policy.clearance(uid, &[gid]);
        if fast == Clearance::FULL {
            return fast;
        }
        let groups = tokio::task::spawn_blocking(move || {
            let mut groups = user_groups(uid);
            groups.push(gid);
            groups
        })
        .await
        .unwrap_or_else(|_| vec![gid]);
        policy.clearance(uid, &groups)
    }

    /// The refusal for a peer whose clearance is below what `command` needs.
    pub(crate) fn refusal(&self, command: &Command, uid: u32) -> HandlerError {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .refusal(command, uid)
    }
}

fn admin_group(cfg: &ControlConfig, path: &Path) -> Result<Option<(String, u32)>, ControlError> {
    cfg.admin_group
        .as_deref()
        .filter(|g| !g.is_empty())
        .map(|g| {
            resolve_group(g, path)
                .map(|gid| (g.to_string(), gid))
                .map_err(|_| ControlError::UnknownAdminGroup {
                    group: g.to_string(),
                })
        })
        .transpose()
}

/// Every group the user database lists `uid` in (primary and
/// supplementary); empty if the uid has no user entry.
fn user_groups(uid: u32) -> Vec<u32> {
    use nix::unistd::{getgrouplist, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = CString::new(user.name) else {
        return vec![user.gid.as_raw()];
    };
    getgrouplist(&name, user.gid).map_or_else(
        |_| vec![user.gid.as_raw()],
        |g| g.into_iter().map(|g| g.as_raw()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(admin: Option<u32>) -> Policy {
        Policy {
            own_uid: 999,
            own_gid: 997,
            socket_gid: 998,
            admin: admin.map(|g| ("ops".to_string(), g)),
        }
    }

    #[test]
    fn levels_follow_uid_and_groups() {
        let p = policy(Some(996));
        assert_eq!(p.clearance(0, &[5]), Clearance::FULL);
        assert_eq!(p.clearance(999, &[5]), Clearance::FULL);
        let c = |groups: &[u32]| p.clearance(1000, groups);
        assert_eq!(c(&[1000]).level, Level::Read);
        assert!(!c(&[1000]).documents);
        assert_eq!(c(&[1000, 998]).level, Level::Operate);
        assert!(
            !c(&[998]).documents,
            "the socket group alone shows no documents"
        );
        assert_eq!(c(&[1000, 996]), Clearance::FULL);
        assert_eq!(
            c(&[997]),
            Clearance {
                level: Level::Read,
                documents: true
            }
        );
        // No admin group: only root and the daemon's user are admins.
        assert_eq!(
            policy(None).clearance(1000, &[996, 998]).level,
            Level::Operate
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let delete = Command::BackupDelete { id: "x".into() };
        let e = policy(Some(996)).refusal(&delete, 1000);
        assert_eq!(e.kind, kind::ADMIN_REQUIRED);
        assert!(e.message.contains("control.admin_group `ops`"), "{e}");
        assert!(e.message.contains("root"), "{e}");
        let e = policy(None).refusal(&delete, 1000);
        assert!(e.message.contains("set control.admin_group"), "{e}");
        let e = policy(None).refusal(&Command::Reload, 1000);
        assert_eq!(e.kind, kind::PERMISSION_DENIED);
        assert!(e.message.contains("uid 1000"), "{e}");
    }
}
