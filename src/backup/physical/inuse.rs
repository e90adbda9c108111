//! Whether a directory is one a running Chroma uses: a process with a file
//! under it open (`/proc/*/fd`), or a SQLite journal beside its database
//! (a writer is mid-transaction, or crashed in one).
//!
//! Processes of other users are visible only to root (or with
//! `CAP_SYS_PTRACE`); as another user the scan sees fewer holders, so the
//! runbook says to stop Chroma first whatever this finds.

use std::path::{Path, PathBuf};

/// Who holds a file under `dir` open: `pid 1234 (chroma) has
/// /var/lib/chroma/chroma.sqlite3 open`, or the journal found; `None` when
/// nothing is seen.
pub fn holder(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let journal = dir.join(format!("{}-journal", crate::chroma::local::DB_FILE));
    if journal.exists() {
        return Some(format!(
            "{} exists (a writer is in a transaction, or crashed in one)",
            journal.display()
        ));
    }
    let me = std::process::id().to_string();
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if under(&target, &dir) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                return Some(format!(
                    "pid {pid} ({}) has {} open",
                    comm.trim(),
                    target.display()
                ));
            }
        }
    }
    None
}

fn under(target: &Path, dir: &PathBuf) -> bool {
    target == dir.as_path() || target.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_file_under_the_directory_is_found_and_a_closed_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("chroma.sqlite3");
        std::fs::write(&path, b"x").expect("write");
        // This process is skipped (it is the one restoring), so hold the
        // file open in a child.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(&path).expect("open"))
            .spawn()
            .expect("sleep");
        let seen = holder(dir.path());
        let _ = child.kill();
        let _ = child.wait();
        let seen = seen.expect("the child holds the file");
        assert!(seen.contains(&child.id().to_string()), "{seen}");
        assert!(seen.contains("sleep"), "{seen}");
        assert_eq!(holder(dir.path()), None);
        std::fs::write(dir.path().join("chroma.sqlite3-journal"), b"j").expect("journal");
        assert!(holder(dir.path()).is_some_and(|h| h.contains("journal")));
    }
}
