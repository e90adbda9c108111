//! The Debian package `make package` builds (target/debian/*.deb, or
//! `$CHROMAPROD_DEB`): its metadata and contents as dpkg-deb reports them,
//! lintian, and its whole life in a scratch root — install, upgrade over
//! itself keeping an edited conffile, reinstall, remove, purge — with the
//! real dpkg and the real maintainer scripts.
//!
//! The scratch root is `dpkg --root=DIR --force-script-chrootless`: dpkg
//! unpacks into DIR with its own database, and runs the maintainer scripts
//! on this host with `DPKG_ROOT=DIR` (the mode Debian's chrootless
//! bootstrapping uses). The scripts create the user with `systemd-sysusers
//! --root`, the state directory with `systemd-tmpfiles --root`, and track
//! the unit with `deb-systemd-helper`, all inside DIR; nothing on this host
//! changes. Only systemctl calls are left out there, as on any system that
//! does not run systemd.
//!
//! Needs root (dpkg and chown) and dpkg-deb, lintian, systemd-analyze:
//! `make test` installs them; a missing one fails the test.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::host::{repo, tool};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn arch() -> String {
    run(Command::new(tool("dpkg")).arg("--print-architecture"))
        .trim()
        .to_string()
}

/// The package under test.
pub(crate) fn deb() -> PathBuf {
    let path = std::env::var_os("CHROMAPROD_DEB").map_or_else(
        || repo().join(format!("target/debian/chromaprod_{VERSION}_{}.deb", arch())),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} does not exist: run `make package` (`make test` does)",
        path.display()
    );
    path
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new(tool("dpkg-deb"))
        .arg("--field")
        .arg(deb)
        .arg(name))
    .trim()
    .to_string()
}

/// Extracts the package's files into a temp dir.
pub(crate) fn extract(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    run(Command::new(tool("dpkg-deb"))
        .arg("-x")
        .arg(deb)
        .arg(dir.path()));
    dir
}

/// Every regular file and symlink the package installs (absolute paths).
fn package_files(deb: &Path) -> Vec<String> {
    run(Command::new(tool("dpkg-deb")).arg("--contents").arg(deb))
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

#[test]
fn metadata_and_contents() {
    let deb = deb();
    assert_eq!(field(&deb, "Package"), "chromaprod");
    assert_eq!(field(&deb, "Version"), VERSION);
    assert_eq!(field(&deb, "Architecture"), arch());
    let depends = field(&deb, "Depends");
    for dep in ["libc6 (>= ", "systemd | systemd-standalone-sysusers"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    assert!(field(&deb, "Maintainer").contains('@'));
    assert!(field(&deb, "Installed-Size").parse::<u64>().expect("size") > 1000);
    assert!(field(&deb, "Description").contains("Chroma"));

    let listing = run(Command::new(tool("dpkg-deb")).arg("--contents").arg(&deb));
    for line in listing.lines() {
        assert!(line.contains(" root/root "), "not owned by root: {line}");
    }
    let files = package_files(&deb);
    for want in [
        "/usr/bin/chromaprod",
        "/lib/systemd/system/chromaprod.service",
        "/usr/lib/sysusers.d/chromaprod.conf",
        "/usr/lib/tmpfiles.d/chromaprod.conf",
        "/etc/chromaprod/chromaprod.toml",
        "/usr/share/man/man1/chromaprod.1.gz",
        "/usr/share/man/man1/chromaprod-doctor.1.gz",
        "/usr/share/man/man1/chromaprod-restore.1.gz",
        "/usr/share/bash-completion/completions/chromaprod",
        "/usr/share/zsh/vendor-completions/_chromaprod",
        "/usr/share/fish/vendor_completions.d/chromaprod.fish",
        "/usr/share/doc/chromaprod/README.md",
        "/usr/share/doc/chromaprod/runbook.md",
        "/usr/share/doc/chromaprod/copyright",
        "/usr/share/doc/chromaprod/changelog.gz",
        "/usr/share/doc/chromaprod/examples/chromaprod.toml",
        "/usr/share/doc/chromaprod/examples/chromaprod.env",
        "/usr/share/doc/chromaprod/examples/chromaprod-alerts.yml",
        "/usr/share/doc/chromaprod/examples/migrations/README.md",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} missing:\n{listing}"
        );
    }
    // Nothing the service creates at run time (state, sockets) is shipped.
    for f in &files {
        assert!(
            !f.starts_with("/var/") && !f.starts_with("/run/"),
            "{f} must not be shipped"
        );
    }
    for want in [
        "./etc/chromaprod/credentials/",
        "./etc/chromaprod/migrations/",
    ] {
        assert!(listing.contains(want), "{want} missing:\n{listing}");
    }

    let control = tempfile::tempdir().expect("tempdir");
    run(Command::new(tool("dpkg-deb"))
        .arg("--control")
        .arg(&deb)
        .arg(control.path()));
    assert_eq!(
        std::fs::read_to_string(control.path().join("conffiles")).expect("conffiles"),
        "/etc/chromaprod/chromaprod.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let meta = std::fs::metadata(control.path().join(script)).expect(script);
        assert_eq!(meta.mode() & 0o777, 0o755, "{script}");
    }

    // The files are the repository's, the binary is stripped and runs.
    let root = extract(&deb);
    let same = |installed: &str, source: &str| {
        assert_eq!(
            std::fs::read(root.path().join(installed.trim_start_matches('/'))).expect(installed),
            std::fs::read(repo().join(source)).expect(source),
            "{installed} differs from {source}"
        );
    };
    same(
        "/lib/systemd/system/chromaprod.service",
        "systemd/chromaprod.service",
    );
    same(
        "/usr/lib/sysusers.d/chromaprod.conf",
        "systemd/chromaprod.sysusers",
    );
    same("/etc/chromaprod/chromaprod.toml", "etc/chromaprod.toml");
    same("/usr/share/doc/chromaprod/runbook.md", "docs/runbook.md");
    same(
        "/usr/share/doc/chromaprod/examples/chromaprod-alerts.yml",
        "docs/chromaprod-alerts.yml",
    );
    let bin = root.path().join("usr/bin/chromaprod");
    let sections = run(Command::new(tool("readelf")).arg("-S").arg(&bin));
    for s in [".symtab", ".debug_info"] {
        assert!(!sections.contains(s), "the binary is not stripped ({s})");
    }
    let version = run(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("chromaprod {VERSION}"));

    // Man page and completions come from the CLI definition: they know
    // `doctor`, and not the packaging helper `dist`.
    let man = run(Command::new(tool("gzip"))
        .arg("-dc")
        .arg(root.path().join("usr/share/man/man1/chromaprod.1.gz")));
    assert!(man.contains(".TH chromaprod 1"), "{man}");
    assert!(man.contains("chromaprod\\-doctor(1)"), "{man}");
    assert!(man.contains(".SH FILES") && man.contains(".SH EXIT STATUS"));
    let bash = std::fs::read_to_string(
        root.path()
            .join("usr/share/bash-completion/completions/chromaprod"),
    )
    .expect("bash completion");
    assert!(bash.contains("doctor"));
    assert!(!bash.contains(" dist "), "hidden helper in completions");
}

/// Absolute paths under /usr or /lib that a text names.
fn packaged_paths_named_in(text: &str) -> Vec<String> {
    // Plain text out of roff font escapes and file: URLs.
    let text = text
        .replace("\\fI", "")
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\-", "-")
        .replace("file://", " ");
    let text = text.as_str();
    let mut out = Vec::new();
    for (i, _) in text.match_indices('/') {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '.' || c == ':') {
            continue;
        }
        let path: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "/._-*".contains(*c))
            .collect();
        let path = path.trim_end_matches('.').to_string();
        if (path.starts_with("/usr/") || path.starts_with("/lib/")) && !path.contains('*') {
            out.push(path);
        }
    }
    out
}

#[test]
fn every_packaged_path_the_docs_name_is_in_the_package() {
    let deb = deb();
    let listing = run(Command::new(tool("dpkg-deb")).arg("--contents").arg(&deb));
    let files = package_files(&deb);
    let root = extract(&deb);
    let man = run(Command::new(tool("gzip"))
        .arg("-dc")
        .arg(root.path().join("usr/share/man/man1/chromaprod.1.gz")));
    let mut checked = 0;
    for (doc, text) in [
        (
            "docs/runbook.md",
            std::fs::read_to_string(repo().join("docs/runbook.md")).expect("runbook"),
        ),
        (
            "the unit",
            std::fs::read_to_string(repo().join("systemd/chromaprod.service")).expect("unit"),
        ),
        ("chromaprod(1)", man),
    ] {
        for path in packaged_paths_named_in(&text) {
            let found = if path.ends_with('/') {
                listing.contains(&format!(" .{path}"))
            } else {
                files.contains(&path)
            };
            assert!(found, "{doc} names {path}, which the package does not ship");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} paths checked");
}

#[test]
fn lintian_reports_no_errors() {
    let deb = deb();
    let out = Command::new(tool("lintian"))
        .args(["--fail-on", "error", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{report}");
    assert!(
        out.status.success(),
        "lintian failed ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{report}"
    );
}

/// A minimal system for `dpkg --root`: a dpkg database that records the
/// package's dependencies as this host has them installed (the maintainer
/// scripts run with this host's tools), and account files with root and
/// nobody.
fn scratch_root() -> tempfile::TempDir {
    let s = tempfile::tempdir().expect("scratch root");
    let dpkg = s.path().join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(dpkg.join(d)).expect("dpkg dirs");
    }
    std::fs::write(dpkg.join("available"), "").expect("available");
    let mut status = String::new();
    for pkg in ["libc6", "libgcc-s1", "systemd"] {
        let stanza = run(Command::new(tool("dpkg-query")).args(["-s", pkg]));
        // The package's status without its conffile list (the files are not here).
        let mut in_conffiles = false;
        for line in stanza.lines() {
            if line.starts_with("Conffiles:") {
                in_conffiles = true;
                continue;
            }
            if in_conffiles && line.starts_with(' ') {
                continue;
            }
            in_conffiles = false;
            status.push_str(line);
            status.push('\n');
        }
        status.push('\n');
        let name = run(Command::new(tool("dpkg-query"))
            .args(["-W", "-f", "${binary:Package}"])
            .arg(pkg));
        std::fs::write(dpkg.join("info").join(format!("{}.list", name.trim())), "").expect("list");
    }
    std::fs::write(dpkg.join("status"), status).expect("status");
    let etc = s.path().join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    for (file, text, mode) in [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            0o644,
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("gshadow", "root:*::\n", 0o640),
    ] {
        std::fs::write(etc.join(file), text).expect("account file");
        std::fs::set_permissions(
            etc.join(file),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .expect("chmod");
    }
    s
}

fn dpkg(root: &Path, args: &[&str], deb: Option<&Path>) -> String {
    let mut cmd = Command::new(tool("dpkg"));
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-unsafe-io"])
        .args(args)
        .env_remove("DPKG_ROOT")
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(d) = deb {
        cmd.arg(d);
    }
    run(&mut cmd)
}

/// `Status Version` of chromaprod in the scratch root's database.
fn installed(root: &Path) -> String {
    let out = Command::new(tool("dpkg-query"))
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Status} ${Version}", "chromaprod"])
        .output()
        .expect("dpkg-query");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// uid and gid of `name` in the scratch root.
fn account(root: &Path, file: &str, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("etc").join(file)).expect(file);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}:")))
        .collect();
    assert_eq!(lines.len(), 1, "{name} in {file}:\n{text}");
    lines[0].split(':').map(str::to_string).collect()
}

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn installs_upgrades_keeping_an_edited_conffile_and_purges_in_a_scratch_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs a package with dpkg and needs root (CI runs as root)"
    );
    let deb = deb();
    let scratch = scratch_root();
    let s = scratch.path();

    // --- install
    dpkg(s, &["--install"], Some(&deb));
    assert_eq!(installed(s), format!("install ok installed {VERSION}"));
    let user = account(s, "passwd", "chromaprod");
    assert_eq!(user[5], "/var/lib/chromaprod");
    assert_eq!(user[6], "/usr/sbin/nologin");
    let group = account(s, "group", "chromaprod");
    let (uid, gid): (u32, u32) = (
        user[2].parse().expect("uid"),
        group[2].parse().expect("gid"),
    );
    assert_eq!(user[3], group[2], "the user's primary group is chromaprod");
    assert_eq!(mode_owner(&s.join("var/lib/chromaprod")), (0o700, uid, gid));
    assert_eq!(mode_owner(&s.join("etc/chromaprod")), (0o750, 0, gid));
    assert_eq!(
        mode_owner(&s.join("etc/chromaprod/chromaprod.toml")),
        (0o640, 0, gid)
    );
    assert_eq!(
        mode_owner(&s.join("etc/chromaprod/credentials")),
        (0o700, 0, 0)
    );
    assert_eq!(
        mode_owner(&s.join("etc/chromaprod/migrations")),
        (0o750, 0, gid)
    );
    let bin = s.join("usr/bin/chromaprod");
    assert_eq!(
        run(Command::new(&bin).arg("--version")).trim(),
        format!("chromaprod {VERSION}")
    );
    // The shipped configuration is valid as installed.
    run(Command::new(&bin)
        .arg("validate")
        .arg("--config")
        .arg(s.join("etc/chromaprod/chromaprod.toml"))
        .env_remove("CHROMAPROD_CONFIG"));
    check_installed_unit(s, &bin);

    // --- upgrade over itself: a newer version of the same build, after the
    // operator edited the conffile.
    let conffile = s.join("etc/chromaprod/chromaprod.toml");
    let edited = std::fs::read_to_string(&conffile)
        .expect("conffile")
        .replace("max_connections = 10", "max_connections = 12")
        + "# edited by the operator\n";
    std::fs::write(&conffile, &edited).expect("edit conffile");
    let newer = tempfile::tempdir().expect("tempdir");
    let extracted = extract(&deb);
    let next = format!("{VERSION}+upgradetest1");
    run(Command::new(repo().join("packaging/build-deb.sh"))
        .env("DEB_VERSION", &next)
        .env("DEB_OUT_DIR", newer.path())
        .env(
            "CHROMAPROD_BIN",
            extracted.path().join("usr/bin/chromaprod"),
        ));
    let deb2 = newer
        .path()
        .join(format!("chromaprod_{next}_{}.deb", arch()));
    dpkg(s, &["--install"], Some(&deb2));
    assert_eq!(installed(s), format!("install ok installed {next}"));
    assert_eq!(
        std::fs::read_to_string(&conffile).expect("conffile"),
        edited,
        "the upgrade must keep the operator's conffile"
    );
    assert!(
        !s.join("etc/chromaprod/chromaprod.toml.dpkg-new").exists()
            && !s.join("etc/chromaprod/chromaprod.toml.dpkg-dist").exists(),
        "an unchanged shipped conffile needs no decision"
    );
    account(s, "passwd", "chromaprod"); // still exactly one
    assert_eq!(mode_owner(&conffile), (0o640, 0, gid));
    // Reinstalling the same version changes nothing either.
    dpkg(s, &["--install"], Some(&deb2));
    assert_eq!(
        std::fs::read_to_string(&conffile).expect("conffile"),
        edited
    );

    // --- what the service and the operator leave behind
    let state = s.join("var/lib/chromaprod");
    std::fs::write(state.join("audit.jsonl"), "{}\n").expect("audit");
    std::fs::write(state.join("schedule.json"), "{}\n").expect("schedule");
    let repo_files = [
        ("backups/config", "repository config"),
        ("backups/keys/0123456789abcdef", "key slot"),
        ("backups/snapshots/0123456789abcdef", "manifest"),
        ("backups/chunks/ab/abcdef", "chunk"),
    ];
    for (rel, body) in repo_files {
        let p = state.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, body).expect("repository file");
    }
    let key = s.join("etc/chromaprod/credentials/backup-key");
    std::fs::write(&key, "k".repeat(64)).expect("key");
    for d in ["var/cache/chromaprod", "var/log/chromaprod"] {
        std::fs::create_dir_all(s.join(d)).expect("service dir");
    }

    // --- remove: the program goes, configuration and data stay
    dpkg(s, &["--remove", "chromaprod"], None);
    assert_eq!(installed(s), format!("deinstall ok config-files {next}"));
    assert!(!bin.exists());
    assert_eq!(
        std::fs::read_to_string(&conffile).expect("conffile"),
        edited
    );
    assert!(state.join("audit.jsonl").exists());

    // --- purge: everything the package and the service created goes,
    // except the backup repository and the key
    dpkg(s, &["--purge", "chromaprod"], None);
    assert_eq!(installed(s), "", "purged packages leave no database entry");
    for f in package_files(&deb) {
        assert!(
            !s.join(f.trim_start_matches('/')).exists(),
            "{f} left behind"
        );
    }
    assert!(!conffile.exists());
    assert!(!state.join("audit.jsonl").exists());
    assert!(!state.join("schedule.json").exists());
    for d in ["var/cache/chromaprod", "var/log/chromaprod"] {
        assert!(!s.join(d).exists(), "{d} left behind");
    }
    for (rel, body) in repo_files {
        assert_eq!(
            std::fs::read_to_string(state.join(rel)).expect("purge kept the repository"),
            body,
            "{rel}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&key).expect("purge kept the key"),
        "k".repeat(64)
    );
    assert!(
        !s.join("etc/systemd/system/chromaprod.service").exists(),
        "no mask left behind"
    );
    assert!(
        !s.join("var/lib/systemd/deb-systemd-helper-enabled/chromaprod.service.dsh-also")
            .exists(),
        "no deb-systemd-helper state left behind"
    );
}

/// The installed unit passes `systemd-analyze verify` (its Exec lines
/// pointed at the installed binary) and keeps its exposure score.
fn check_installed_unit(root: &Path, bin: &Path) {
    let analyze = tool("systemd-analyze");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/chromaprod.service"))
        .expect("installed unit");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("chromaprod.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/chromaprod", bin.to_str().expect("utf-8")),
    )
    .expect("unit copy");
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
    let report = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("chromaprod.service"));
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for chromaprod.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score:\n{report}"));
    assert!(score <= 1.5, "exposure {score} above 1.5:\n{report}");
}
