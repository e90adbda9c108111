//! Files and directories that root creates in someone else's directory are
//! handed to that directory's owner.
//!
//! An operator runs an offline command (`chromaprod backup`, `key add`) as
//! root against a local repository or state directory that belongs to the
//! service user. What root creates there would otherwise be root's, and the
//! service user could later neither delete under it (prune) nor open it
//! (the audit log). Processes that are not root change nothing.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The owner new entries under `base` are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopt {
    base: PathBuf,
    uid: u32,
    gid: u32,
}

impl Adopt {
    /// When this process is root and the nearest existing directory at or
    /// above `dir` belongs to another user: that directory and its owner.
    /// `None` otherwise (nothing to hand over). Call it before creating `dir`.
    pub fn for_dir(dir: &Path) -> Option<Adopt> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let base = dir.ancestors().find(|p| p.exists())?;
        let meta = std::fs::metadata(base).ok()?;
        (meta.uid() != 0).then(|| Adopt {
            base: base.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// Gives `path` and every directory between it and the base to the
    /// base's owner (those not already theirs). `path` must lie under the
    /// base; anything else is left alone. Symbolic links are not followed.
    pub fn claim(&self, path: &Path) -> io::Result<()> {
        for p in path.ancestors() {
            if p == self.base || !p.starts_with(&self.base) {
                break;
            }
            let meta = match std::fs::symlink_metadata(p) {
                Ok(m) => m,
                // Removed meanwhile (a concurrent prune): nothing to hand over.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.uid() != self.uid || meta.gid() != self.gid {
                std::os::unix::fs::lchown(p, Some(self.uid), Some(self.gid))?;
            }
        }
        Ok(())
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_stops_at_the_base_and_ignores_paths_outside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let adopt = Adopt {
            base: dir.path().join("repo"),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        std::fs::create_dir_all(dir.path().join("repo/data/ab")).expect("mkdir");
        std::fs::write(dir.path().join("repo/data/ab/x"), "x").expect("write");
        // Already owned by the target owner: nothing to change, no error.
        adopt
            .claim(&dir.path().join("repo/data/ab/x"))
            .expect("claim");
        adopt.claim(&dir.path().join("elsewhere")).expect("outside");
        adopt
            .claim(&dir.path().join("repo/data/gone"))
            .expect("missing entries are skipped");
    }
}
