//! This host as the tests see it: the repository, tools on `PATH`, a Tokio
//! runtime for tests that drive blocking processes, a non-root group.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (the package's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of a tool the test needs; a missing tool fails the test.
pub fn tool(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "{name} is not installed: `make test` installs the test tools (make test-tools)"
    );
    PathBuf::from(path)
}

/// A two-worker runtime, for tests that are plain `#[test]`s because they
/// wait on child processes.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A group other than root's and nogroup, from /etc/group: (name, gid).
pub fn some_group() -> (String, u32) {
    let text = std::fs::read_to_string("/etc/group").expect("/etc/group");
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            Some((name.to_string(), gid))
        })
        .find(|(_, gid)| *gid != 0 && *gid != 65534)
        .expect("a non-root group in /etc/group")
}

/// Copies a directory tree (files and folders), as `cp -a` would.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
