//! The service as systemd runs it: the package installed and driven by an
//! operator on a booted Debian (bookworm, systemd 252; trixie, systemd 257),
//! systemd as PID 1 in a `systemd-nspawn` container on this host's network.
//!
//! The root file systems are built once by scripts/install-debian-root.sh
//! (`make test` runs it beside the build) into .tools/debian/SUITE. Each
//! boot mounts one read-only under a throw-away overlay (`--volatile=overlay`),
//! so the cached root never changes. The container boots with
//! `systemd.wants=chromaprod-booted-test.service`, a oneshot unit that runs
//! tests/booted/operator.sh and powers the machine off; the script writes one
//! result line per step and each step's log into a bind-mounted directory,
//! which this test reads and asserts step by step, printing the log of each
//! step that failed. Chroma is a real `chroma run` on this host's
//! 127.0.0.1; the script asks this test (through request files in the same
//! directory) to pause and resume it.
//!
//! Needs root, systemd-nspawn (systemd-container) and the package
//! (`make test` builds it; see package.rs); a missing one fails the test.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::common::chroma::ChromaServer;
use crate::common::host::{repo, rt, tool};
use crate::common::records::{collection_records, seed, store_for};
use crate::package::{arch, deb, extract, run};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The steps of tests/booted/operator.sh, in order.
const STEPS: &[&str] = &[
    "install",
    "configure",
    "first_start",
    "socket_group",
    "restore",
    "reload",
    "bad_reload",
    "bad_start",
    "watchdog",
    "stop_during_backup",
    "auto_migrate",
    "journal",
    "security",
    "upgrade",
    "remove_purge",
];

/// The longest a whole run may take (boot, every step, power-off).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Records in `docs` (backups, restores, the journal) and `big` (the
/// start-up migration, long enough to outlast a 3 s start timeout).
const DOCS: usize = 200;
const BIG: usize = 5000;

const MIGRATION: &str = r#"version = 1
name = "big: cosine distance"

[[up]]
op = "rebuild"
collection = "big"
configuration = { hnsw = { space = "cosine" } }
sample = 50
k = 10
min_overlap = 0.9
"#;

const UNIT: &str = "[Unit]
Description=chromaprod as an operator runs it (tests/suite/booted.rs)
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/bash /srv/chromaprod-test/operator.sh
StandardOutput=append:/srv/results/operator.out
StandardError=inherit
";

#[test]
fn bookworm_runs_the_package_as_an_operator_would() {
    booted("bookworm");
}

#[test]
fn trixie_runs_the_package_as_an_operator_would() {
    booted("trixie");
}

fn booted(suite: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test boots a container with systemd-nspawn and needs root (CI runs as root)"
    );
    let root = repo().join(".tools/debian").join(suite);
    assert!(
        root.join("usr/lib/systemd/systemd").is_file() || root.join("lib/systemd/systemd").is_file(),
        "no Debian {suite} root at {}: run `scripts/install-debian-root.sh {suite}` (`make test` does)",
        root.display()
    );
    let nspawn = tool("systemd-nspawn");
    let deb = deb();

    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl");
    let results = dir.path().join("results");
    for d in [ctl.join("debs"), results.clone()] {
        std::fs::create_dir_all(d).expect("mkdir");
    }

    // The package, and a newer build of it for the upgrade.
    let next = format!("{VERSION}+booted1");
    std::fs::copy(&deb, ctl.join("debs").join(deb.file_name().expect("name"))).expect("copy deb");
    let extracted = extract(&deb);
    run(Command::new(repo().join("packaging/build-deb.sh"))
        .env("DEB_VERSION", &next)
        .env("DEB_OUT_DIR", ctl.join("debs"))
        .env(
            "CHROMAPROD_BIN",
            extracted.path().join("usr/bin/chromaprod"),
        ));

    // Chroma on this host, with the collections the steps use.
    let mut chroma = ChromaServer::start();
    let rt = rt();
    let store = store_for(&chroma.base());
    rt.block_on(async {
        seed(&store, "docs", DOCS, 16).await;
        seed(&store, "big", BIG, 16).await;
    });

    std::fs::write(
        ctl.join("params.env"),
        format!(
            "CHROMA={}\nVERSION={VERSION}\nNEXT={next}\nARCH={}\n",
            chroma.base(),
            arch()
        ),
    )
    .expect("params");
    std::fs::write(ctl.join("migration.toml"), MIGRATION).expect("migration");
    std::fs::write(ctl.join("chromaprod-booted-test.service"), UNIT).expect("unit");
    std::fs::copy(
        repo().join("tests/booted/operator.sh"),
        ctl.join("operator.sh"),
    )
    .expect("script");

    let console = std::fs::File::create(dir.path().join("console.log")).expect("console log");
    let started = Instant::now();
    let mut child = Command::new(&nspawn)
        .args([
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--volatile=overlay",
        ])
        .arg("--console=pipe")
        .arg(format!(
            "--machine=chromaprod-{suite}-{}",
            std::process::id()
        ))
        .arg("--directory")
        .arg(&root)
        .arg(format!("--bind-ro={}:/srv/chromaprod-test", ctl.display()))
        .arg(format!(
            "--bind-ro={}:/etc/systemd/system/chromaprod-booted-test.service",
            ctl.join("chromaprod-booted-test.service").display()
        ))
        .arg(format!("--bind={}:/srv/results", results.display()))
        .args(["--boot", "systemd.wants=chromaprod-booted-test.service"])
        .stdin(Stdio::null())
        .stdout(console.try_clone().expect("fd"))
        .stderr(console)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nspawn.display()));

    // Serve the script's requests until the machine powers off.
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        serve_requests(&results, &mut chroma);
        if started.elapsed() > RUN_TIMEOUT && !timed_out {
            // systemd-nspawn powers the container off on SIGTERM.
            timed_out = true;
            let _ = nix::sys::signal::kill(pid_of(&child), Signal::SIGTERM);
        }
        if started.elapsed() > RUN_TIMEOUT + Duration::from_secs(30) {
            let _ = killpg(pid_of(&child), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{suite}: booted, ran {} steps and powered off in {:.1} s ({status})",
        STEPS.len(),
        started.elapsed().as_secs_f64()
    );
    let console = read(&dir.path().join("console.log"));
    let lines = read(&results.join("results"));
    assert!(
        !lines.is_empty() || results.join("done").exists(),
        "the {suite} container did not run the operator script ({status}); console:\n{console}\n\
         script output:\n{}",
        read(&results.join("operator.out"))
    );

    let mut failed = Vec::new();
    for step in STEPS {
        let outcome = lines
            .lines()
            .find_map(|l| l.strip_suffix(step).filter(|o| o.ends_with(' ')))
            .map(str::trim);
        if outcome != Some("ok") {
            failed.push(format!(
                "--- step {step}: {}\n{}",
                outcome.unwrap_or("did not run"),
                tail(&read(&results.join(format!("{step}.log"))), 60)
            ));
        }
    }
    if timed_out {
        failed.push(format!("the run took longer than {RUN_TIMEOUT:?}"));
    }
    assert!(
        failed.is_empty(),
        "{suite}: {} of {} steps failed:\n{}\n--- the daemon's journal (tail)\n{}",
        failed.len(),
        STEPS.len(),
        failed.join("\n"),
        tail(
            &read(&results.join("journal.txt"))
                .lines()
                .filter(|l| l.contains("chromaprod"))
                .collect::<Vec<_>>()
                .join("\n"),
            60
        )
    );
    assert!(
        status.success(),
        "{suite}: systemd-nspawn exited {status}; console:\n{console}"
    );

    // What the restore step wrote is in Chroma.
    let (_, restored) = rt.block_on(collection_records(&store, "docs_restored"));
    let restored = restored.len();
    assert_eq!(restored, DOCS, "docs_restored");
}

fn pid_of(child: &std::process::Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid"))
}

/// Pauses (SIGSTOP) or resumes (SIGCONT) Chroma when the script asks.
fn serve_requests(results: &Path, chroma: &mut ChromaServer) {
    for (name, sig) in [
        ("chroma-pause", Signal::SIGSTOP),
        ("chroma-resume", Signal::SIGCONT),
    ] {
        let request = results.join(format!("request-{name}"));
        let done = results.join(format!("done-{name}"));
        if request.exists() && !done.exists() {
            let pid = chroma.pid().expect("chroma runs");
            killpg(Pid::from_raw(pid), sig).expect("signal chroma");
            std::fs::write(&done, "").expect("answer");
        }
    }
}

fn read(path: &PathBuf) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
