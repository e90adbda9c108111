//! docs/runbook.md works as written.
//!
//! - Every `chromaprod …` command in the runbook's and the README's shell
//!   blocks and inline code parses with the real CLI definition
//!   (`chromaprod dist parse`).
//! - The blocks that follow a `<!-- runbook-test: NAME -->` marker run as
//!   written, in bash, in order: on a first host against a real Chroma
//!   server and an S3 repository on moto, with the daemon started by a
//!   stand-in for `systemctl` (the unit's environment file and credentials
//!   directory, nothing more); then the restore drill on a second, fresh
//!   host with another Chroma server and no daemon. Paths under
//!   /etc/chromaprod, /var/lib/chromaprod, /run/chromaprod and /media/keys
//!   are moved into each host's temp dir; nothing else in a block changes.
//! - The systemd drop-ins the runbook writes pass `systemd-analyze verify`
//!   and keep the exposure at 1.5 or lower.
//! - Every metric name in the runbook and the alert rules is served by a
//!   live daemon's /metrics; the alert rules in the runbook are the shipped
//!   file and parse as Prometheus rule groups; every journal field the
//!   runbook filters on is a field of the daemon's own log lines.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chromaprod::backup::crypto::MasterKey;
use chromaprod::chroma::{CreateCollection, RecordBatch};
use common::chroma::{free_port, ChromaServer};
use common::daemon::bin;
use common::emulators;
use common::host::{repo, rt, tool};
use common::records::store_for;
use serde_json::{json, Value};

const AWS_SECRET: &str = "runbook-test-secret-2c81";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A fenced code block: its language, the `runbook-test` marker before it.
#[derive(Debug)]
struct Block {
    lang: String,
    tag: Option<String>,
    body: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut tag = None;
    while let Some(line) = lines.next() {
        if let Some(t) = line
            .trim()
            .strip_prefix("<!-- runbook-test:")
            .and_then(|r| r.strip_suffix("-->"))
        {
            tag = Some(t.trim().to_string());
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            out.push(Block {
                lang: lang.trim().to_string(),
                tag: tag.take(),
                body,
            });
            continue;
        }
        if !line.trim().is_empty() {
            tag = None;
        }
    }
    out
}

fn tagged(text: &str, name: &str) -> String {
    let found: Vec<Block> = blocks(text)
        .into_iter()
        .filter(|b| b.tag.as_deref() == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "one block marked runbook-test: {name}");
    found.into_iter().next().map(|b| b.body).unwrap_or_default()
}

/// Words of a shell command line: whitespace-separated, with '…' and "…"
/// quoting, backslash escapes and `#` comments (enough for the docs' commands).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // A comment runs to the end of the line.
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The arguments of `chromaprod` in one shell segment, after `sudo` and
/// `NAME=value` prefixes; `None` if the segment runs something else.
fn chromaprod_args(segment: &str) -> Option<Vec<String>> {
    let words = shell_words(segment);
    let mut rest = words.as_slice();
    loop {
        match rest.first().map(String::as_str) {
            Some("sudo") => rest = &rest[1..],
            Some(w) if w.contains('=') && !w.starts_with('-') => rest = &rest[1..],
            _ => break,
        }
    }
    match rest.first().map(String::as_str) {
        Some("chromaprod") => Some(rest[1..].to_vec()),
        _ => None,
    }
}

/// Every `chromaprod` command line in shell blocks and inline code.
fn commands_in(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in blocks(text).iter().filter(|b| b.lang == "sh") {
        for line in b.body.lines() {
            for segment in line.split(['|', ';']).flat_map(|s| s.split("&&")) {
                out.extend(chromaprod_args(segment));
            }
        }
    }
    for (i, span) in text.split('`').enumerate() {
        // Odd pieces are inside backticks; "…" marks prose, not a command.
        if i % 2 == 1 && !span.contains('…') && !span.contains('\n') {
            // A bare `chromaprod` in prose names the program or the group.
            out.extend(chromaprod_args(span).filter(|a| !a.is_empty()));
        }
    }
    out
}

#[test]
fn every_chromaprod_command_in_the_docs_parses() {
    for doc in ["docs/runbook.md", "README.md"] {
        let commands = commands_in(&read(doc));
        assert!(commands.len() > 20, "{doc}: too few commands found");
        for args in commands {
            let out = Command::new(bin())
                .args(["dist", "parse", "--"])
                .args(&args)
                .output()
                .expect("chromaprod dist parse");
            assert!(
                out.status.success(),
                "{doc}: `chromaprod {}` does not parse:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The checker itself rejects what the CLI rejects.
    let out = Command::new(bin())
        .args(["dist", "parse", "--", "backups", "verify"])
        .output()
        .expect("parse");
    assert!(!out.status.success(), "a missing argument must not parse");
}

#[test]
fn the_runbooks_systemd_drop_ins_verify_and_keep_the_exposure() {
    let runbook = read("docs/runbook.md");
    let unit = read("systemd/chromaprod.service");
    let mut drop_ins = Vec::new();
    for b in blocks(&runbook).iter().filter(|b| b.lang == "sh") {
        for line in b.body.lines() {
            if let Some(rest) = line.strip_prefix("printf '") {
                let (content, target) = rest.split_once("' > ").expect("printf '…' > FILE");
                assert!(
                    target.starts_with("/etc/systemd/system/chromaprod.service.d/")
                        && target.ends_with(".conf"),
                    "{target}"
                );
                drop_ins.push(content.replace("\\n", "\n"));
            }
        }
    }
    assert!(drop_ins.len() >= 4, "drop-ins found: {drop_ins:?}");
    let analyze = tool("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    // The binary must exist for verify; drop-in settings are merged the way
    // systemd merges them: appended to the unit's [Service] section.
    let mut merged = unit.replace("/usr/bin/chromaprod", bin());
    for d in &drop_ins {
        assert!(d.starts_with("[Service]\n"), "{d}");
        let settings = d.trim_start_matches("[Service]\n");
        merged = merged.replace("\n[Install]", &format!("\n{settings}\n[Install]"));
    }
    let path = dir.path().join("chromaprod.service");
    std::fs::write(&path, &merged).expect("unit");
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let report = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("security");
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for chromaprod.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score:\n{report}"));
    assert!(
        score <= 1.5,
        "exposure {score} with the drop-ins:\n{report}"
    );
}

#[test]
fn the_alert_rules_are_the_shipped_file_and_parse() {
    let runbook = read("docs/runbook.md");
    let file = read("docs/chromaprod-alerts.yml");
    assert_eq!(
        tagged(&runbook, "alerts"),
        file,
        "the runbook's rules differ from docs/chromaprod-alerts.yml"
    );
    // Parsed by PyYAML from the test venv (the chromadb wheel depends on it).
    let python = repo().join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "run `make test` (it installs .tools/venv)"
    );
    let check = r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
names = []
for group in doc["groups"]:
    assert group["name"]
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"], rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule
        e = rule["expr"]
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
        names.append(rule["alert"])
assert len(names) == len(set(names)), names
print(" ".join(names))
"#;
    let out = Command::new(python)
        .args(["-c", check])
        .arg(repo().join("docs/chromaprod-alerts.yml"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8_lossy(&out.stdout);
    for want in [
        "ChromaprodBackupTooOld",
        "ChromaprodVerifyFailing",
        "ChromaprodEndpointDown",
        "ChromaprodCircuitOpen",
        "ChromaprodReloadFailed",
    ] {
        assert!(names.contains(want), "{want} missing: {names}");
    }
}

// ------------------------------------------------------------ the hosts

/// A host's directories inside a temp dir.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in [
            "etc/chromaprod/credentials",
            "etc/chromaprod/migrations",
            "var/lib/chromaprod",
            "run/chromaprod",
            "media/keys",
            "bin",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).expect("host dir");
        }
        let h = Host { dir };
        // The package's stand-ins: chromaprod itself, and systemctl/sudo.
        std::os::unix::fs::symlink(bin(), h.path("bin/chromaprod")).expect("symlink");
        write_exec(&h.path("bin/systemctl"), SYSTEMCTL);
        write_exec(&h.path("bin/sudo"), SUDO);
        // The installed example configuration, as the package leaves it.
        std::fs::copy(
            repo().join("etc/chromaprod.toml"),
            h.path("etc/chromaprod/chromaprod.toml"),
        )
        .expect("conffile");
        h
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The runbook's paths moved into this host.
    fn rewrite(&self, text: &str) -> String {
        let root = self.root();
        let mut t = text.to_string();
        for p in [
            "/etc/chromaprod",
            "/var/lib/chromaprod",
            "/run/chromaprod",
            "/media/keys",
        ] {
            t = t.replace(p, &format!("{root}{p}"));
        }
        t
    }

    /// This host's configuration: the example file with this host's paths,
    /// `endpoint`, the S3 repository and the metrics listener.
    fn configure(&self, path: &Path, endpoint: &str, metrics: &str) {
        let root = self.root();
        let text = read("etc/chromaprod.toml")
            .replace(
                "endpoints = [\"http://127.0.0.1:8000\"]",
                &format!("endpoints = [\"{endpoint}\"]"),
            )
            .replace(
                "storage_path = \"/var/lib/chromaprod/backups\"",
                "storage_path = \"s3://backups/chromaprod\"",
            )
            .replace(
                "# listen = \"127.0.0.1:9464\"",
                &format!("listen = \"{metrics}\""),
            )
            .replace("/run/chromaprod", &format!("{root}/run/chromaprod"))
            .replace(
                "state_dir = \"/var/lib/chromaprod\"",
                &format!("state_dir = \"{root}/var/lib/chromaprod\""),
            );
        assert!(text.contains(endpoint) && text.contains(metrics) && text.contains("s3://"));
        std::fs::write(path, text).expect("config");
    }

    /// Runs the runbook's operator-shell block, then `block`, in bash.
    fn run(&self, runbook: &str, block: &str, cwd: &Path, substitutions: &[(&str, String)]) {
        let mut script = format!(
            "{}\n{}",
            self.rewrite(&tagged(runbook, "operator-shell")),
            self.rewrite(&tagged(runbook, block))
        );
        for (from, to) in substitutions {
            script = script.replace(from, to);
        }
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(tool("bash"))
            .args(["-e", "-o", "pipefail", "-c", &script])
            .current_dir(cwd)
            .env("PATH", path)
            .env(
                "CHROMAPROD_CONFIG",
                self.path("etc/chromaprod/chromaprod.toml"),
            )
            .env_remove("CHROMAPROD_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RB_PIDFILE", self.path("daemon.pid"))
            .env("RB_LOG", self.path("daemon.log"))
            .env("RB_ENV_FILE", self.path("etc/chromaprod/chromaprod.env"))
            .env("RB_CREDENTIALS", self.path("etc/chromaprod/credentials"))
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stdout.contains(AWS_SECRET) && !stderr.contains(AWS_SECRET),
            "a secret leaked"
        );
        assert!(
            out.status.success(),
            "runbook block {block} failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- daemon log (tail)\n{}",
            out.status,
            self.log_tail()
        );
        eprintln!("== {block}\n{stdout}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Host {
    /// Stops a daemon the stand-in started.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("daemon.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Stand-in for systemctl: the daemon with what the unit gives it — its
/// environment file (EnvironmentFile=) and its credentials directory
/// (LoadCredential=) — after `chromaprod validate`. The
/// daemon logs JSON (so the test can read its fields) and health-checks
/// every second.
const SYSTEMCTL: &str = r#"#!/usr/bin/env bash
set -euo pipefail
stop() {
  if [ -f "$RB_PIDFILE" ]; then
    pid=$(cat "$RB_PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$RB_PIDFILE"
  fi
}
start() {
  chromaprod validate >/dev/null
  ( set -a; if [ -f "$RB_ENV_FILE" ]; then . "$RB_ENV_FILE"; fi; set +a
    export CREDENTIALS_DIRECTORY="$RB_CREDENTIALS"
    export CHROMAPROD__LOG__FORMAT=json CHROMAPROD__POOL__HEALTH_CHECK_INTERVAL=1s
    exec chromaprod daemon ) >>"$RB_LOG" 2>&1 </dev/null &
  echo $! >"$RB_PIDFILE"
  for _ in $(seq 1 300); do
    if chromaprod status >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "systemctl stand-in: the daemon did not start" >&2
  exit 1
}
case "$*" in
  "daemon-reload") ;;
  "start chromaprod"|"enable --now chromaprod") start ;;
  "restart chromaprod") stop; start ;;
  "stop chromaprod") stop ;;
  "status chromaprod") chromaprod status ;;
  *) echo "systemctl stand-in: '$*' is not supported" >&2; exit 1 ;;
esac
"#;

/// Stand-in for sudo: the tests already run as the operator; `sudo -i`
/// (open a root shell) is a no-op.
const SUDO: &str = r#"#!/bin/sh
if [ "$1" = "-i" ]; then exit 0; fi
exec env "$@"
"#;

/// A `docs` collection of 40 records.
async fn seed(url: &str) {
    let store = store_for(url);
    let col = store
        .create_collection(&CreateCollection {
            name: "docs".into(),
            metadata: None,
            configuration: Some(json!({"hnsw": {"space": "l2"}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    let ids: Vec<usize> = (0..40).collect();
    let batch = RecordBatch {
        ids: ids.iter().map(|i| format!("doc-{i}")).collect(),
        embeddings: Some(
            ids.iter()
                .map(|i| (0..8).map(|j| ((i * 7 + j) % 13) as f32 / 13.0).collect())
                .collect(),
        ),
        documents: Some(ids.iter().map(|i| Some(format!("note {i}"))).collect()),
        metadatas: None,
        uris: None,
    };
    store.upsert(&col.id, &batch).await.expect("seed");
}

async fn count(url: &str, name: &str) -> Option<u64> {
    let store = store_for(url);
    let col = store.get_collection(name).await.ok()?;
    store.count(&col.id).await.ok()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every key of every JSON object in a log line, recursively.
fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone());
                keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// Metric names a Prometheus text exposition serves: sample names, and
/// declared families with their sample suffixes (families without samples
/// yet, like retries on a healthy system).
fn served_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

#[test]
fn the_runbook_runs_as_written() {
    let runbook = read("docs/runbook.md");
    tool("curl");
    tool("shred");
    let emu = emulators::moto();
    rt().block_on(emu.create_bucket("backups"));
    let env_file = format!(
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\nAWS_REGION=us-east-1\nAWS_ENDPOINT_URL={}\n",
        emu.endpoint
    );

    // --- the first host: Chroma with data, the package's files, the S3
    // repository's credentials in the environment file.
    let mut chroma = ChromaServer::start();
    rt().block_on(seed(&chroma.base()));
    let host = Host::new();
    let metrics = format!("127.0.0.1:{}", free_port());
    host.configure(
        &host.path("etc/chromaprod/chromaprod.toml"),
        &chroma.base(),
        &metrics,
    );
    std::fs::write(host.path("etc/chromaprod/chromaprod.env"), &env_file).expect("env file");
    let cwd = host.path("");

    host.run(&runbook, "key-create", &cwd, &[]);
    let key_path = host.path("etc/chromaprod/credentials/backup-key");
    let first_key = MasterKey::from_file(&key_path)
        .expect("key")
        .key_id()
        .to_string();
    host.run(&runbook, "first-start", &cwd, &[]);
    host.run(&runbook, "key-backup", &cwd, &[]);
    assert!(host.path("media/keys/chromaprod-backup-key").is_file());
    host.run(
        &runbook,
        "key-rotate",
        &cwd,
        &[("OLD_KEY_ID", first_key.clone())],
    );
    let new_key = MasterKey::from_file(&key_path)
        .expect("key")
        .key_id()
        .to_string();
    assert_ne!(new_key, first_key);
    assert!(!host
        .path("etc/chromaprod/credentials/backup-key.old")
        .exists());
    let keys_now = Command::new(bin())
        .args(["--json", "key", "list"])
        .env(
            "CHROMAPROD_CONFIG",
            host.path("etc/chromaprod/chromaprod.toml"),
        )
        .env(
            "CREDENTIALS_DIRECTORY",
            host.path("etc/chromaprod/credentials"),
        )
        .envs(env_file.lines().filter_map(|l| l.split_once('=')))
        .output()
        .expect("key list");
    let listed = String::from_utf8_lossy(&keys_now.stdout);
    assert!(
        listed.contains(&new_key) && !listed.contains(&first_key),
        "after rotation only the new key opens the repository: {listed}"
    );
    host.run(
        &runbook,
        "metrics",
        &cwd,
        &[("127.0.0.1:9464", metrics.clone())],
    );
    host.run(&runbook, "upgrade-chroma", &cwd, &[]);

    // What the runbook's monitoring section names exists. Metrics:
    let scrape = http_get(&metrics, "/metrics");
    let served = served_metrics(&scrape);
    let mut named = BTreeSet::new();
    for text in [runbook.clone(), read("docs/chromaprod-alerts.yml")] {
        for (i, _) in text.match_indices("chromaprod_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named.insert(name);
        }
    }
    // Package file names (chromaprod_0.1.0_amd64.deb) are not metrics.
    named.retain(|n| n.as_bytes().get(11).is_some_and(u8::is_ascii_lowercase));
    assert!(named.len() >= 11, "{named:?}");
    for name in &named {
        assert!(
            served.contains(name),
            "{name} is named in the docs but not served:\n{scrape}"
        );
    }

    // Journal fields: Chroma going away and coming back (as in an
    // upgrade), and a query failing meanwhile.
    chroma.stop();
    let q = Command::new(bin())
        .args(["query", "-c", "docs", "--id", "doc-1"])
        .env(
            "CHROMAPROD_CONFIG",
            host.path("etc/chromaprod/chromaprod.toml"),
        )
        .output()
        .expect("query");
    assert!(!q.status.success(), "a query fails while Chroma is down");
    wait_for(
        "the failed call in the log",
        Duration::from_secs(30),
        || host.log().contains("Chroma call failed"),
    );
    chroma.restart();
    wait_for(
        "the endpoint back in the log",
        Duration::from_secs(30),
        || host.log().contains("healthy again"),
    );
    let mut fields = BTreeSet::new();
    for line in host.log().lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            keys(&v, &mut fields);
        }
    }
    let mut filtered = BTreeSet::new();
    for line in runbook.lines() {
        let from_command = line
            .strip_prefix("journalctl ")
            .into_iter()
            .flat_map(|l| l.split_whitespace())
            .filter_map(|w| w.split_once('=').map(|(k, _)| k.to_string()))
            .filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        filtered.extend(from_command);
        if let Some(rest) = line.strip_prefix("| `") {
            let cell = rest.split(" |").next().unwrap_or_default();
            for name in cell
                .split('`')
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            {
                filtered.insert(name.to_string());
            }
        }
    }
    // PRIORITY is journald's own (the log level), not a field of ours.
    filtered.remove("PRIORITY");
    assert!(filtered.len() >= 6, "{filtered:?}");
    for f in &filtered {
        assert!(
            fields.contains(&f.to_ascii_lowercase()),
            "journal field {f} is not a field of any log line; fields seen: {fields:?}"
        );
    }

    // --- the restore drill on a fresh host: another Chroma, no daemon, the
    // saved configuration, environment file and key.
    let fresh_chroma = ChromaServer::start();
    let fresh = Host::new();
    let safe = fresh.path("safe");
    std::fs::create_dir_all(&safe).expect("safe");
    // The saved configuration is the first host's (encryption on, the same
    // repository), pointed at the new host's Chroma and paths.
    let saved = std::fs::read_to_string(host.path("etc/chromaprod/chromaprod.toml"))
        .expect("config")
        .replace(&host.root(), &fresh.root())
        .replace(&chroma.base(), &fresh_chroma.base())
        .replace(&metrics, &format!("127.0.0.1:{}", free_port()));
    assert!(saved.contains("encrypt = true"));
    std::fs::write(safe.join("chromaprod.toml"), saved).expect("saved config");
    std::fs::write(safe.join("chromaprod.env"), &env_file).expect("env copy");
    std::fs::copy(
        host.path("media/keys/chromaprod-backup-key"),
        safe.join("backup-key"),
    )
    .expect("key copy");
    // The offline copy predates the rotation: refresh it, as the runbook says.
    std::fs::copy(&key_path, safe.join("backup-key")).expect("key copy");
    assert_eq!(rt().block_on(count(&fresh_chroma.base(), "docs")), None);
    fresh.run(&runbook, "drill", &safe, &[]);
    assert_eq!(
        rt().block_on(count(&fresh_chroma.base(), "docs")),
        Some(40),
        "the drill restored the collection"
    );
}
