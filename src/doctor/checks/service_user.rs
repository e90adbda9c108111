//! The service user, and which directories of a local repository it may write.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::doctor::Options;

/// The service user, for permission checks of a local repository.
pub(super) struct ServiceUser {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gids: Vec<u32>,
    /// Set when the configured user does not exist and the current one is used.
    pub(super) note: Option<String>,
}

pub(super) fn service_user(o: &Options) -> ServiceUser {
    use nix::unistd::{getgrouplist, Gid, User};
    let found = User::from_name(&o.service_user).ok().flatten();
    let (user, note) = match found {
        Some(u) => (Some(u), None),
        None => (
            User::from_uid(nix::unistd::geteuid()).ok().flatten(),
            Some(format!(
                "user {} does not exist on this host; checked as the current user",
                o.service_user
            )),
        ),
    };
    match user {
        Some(u) => {
            let gids = std::ffi::CString::new(u.name.clone())
                .ok()
                .and_then(|c| getgrouplist(&c, u.gid).ok())
                .unwrap_or_else(|| vec![u.gid])
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            ServiceUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gids,
                note,
            }
        }
        None => ServiceUser {
            name: format!("uid {}", nix::unistd::geteuid()),
            uid: nix::unistd::geteuid().as_raw(),
            gids: vec![nix::unistd::getegid().as_raw()],
            note,
        },
    }
}

/// Whether `user` may create and delete entries in directory `meta`.
pub(super) fn dir_writable(meta: &std::fs::Metadata, user: &ServiceUser) -> bool {
    if user.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o300 == 0o300
    } else if user.gids.contains(&meta.gid()) {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

pub(super) fn describe_owner(path: &Path, meta: &std::fs::Metadata) -> String {
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    format!(
        "{} ({user}:{group} {:04o})",
        path.display(),
        meta.mode() & 0o7777
    )
}

/// Directories of a local repository (the root, its subdirectories and
/// the fan-out directories below them) the service user cannot write.
pub(super) fn unwritable_dirs(root: &Path, user: &ServiceUser) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |p: &Path| {
        if let Ok(meta) = std::fs::metadata(p) {
            if meta.is_dir() && !dir_writable(&meta, user) {
                bad.push(describe_owner(p, &meta));
            }
        }
    };
    check(root);
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for sub in subdirs(root) {
        check(&sub);
        for fan in subdirs(&sub) {
            check(&fan);
        }
    }
    bad
}

/// The nearest existing ancestor of `path`.
pub(super) fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().skip(1).find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn directory_permissions_are_judged_for_the_service_user() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let meta = std::fs::metadata(dir.path()).expect("meta");
        let owner = ServiceUser {
            name: "owner".into(),
            uid: meta.uid(),
            gids: vec![meta.gid()],
            note: None,
        };
        let stranger = ServiceUser {
            name: "stranger".into(),
            uid: 54_321,
            gids: vec![54_321],
            note: None,
        };
        let member = ServiceUser {
            name: "member".into(),
            uid: 54_322,
            gids: vec![meta.gid()],
            note: None,
        };
        assert!(dir_writable(&meta, &owner) || owner.uid == 0);
        assert!(!dir_writable(&meta, &stranger));
        assert!(!dir_writable(&meta, &member));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770))
            .expect("chmod");
        let meta = std::fs::metadata(dir.path()).expect("meta");
        assert!(dir_writable(&meta, &member));
        assert_eq!(unwritable_dirs(dir.path(), &stranger).len(), 1);
    }
}
