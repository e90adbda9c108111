//! `chromaprod doctor`: checks a host the way an operator would and says
//! what to fix — the configuration, the backup key, each Chroma endpoint
//! (reachable, a supported version, the database), the backup repository
//! (reachable, its key, writable by the service user), its locks, the
//! control socket, and the clock against the repository's backend.
//!
//! Each check is a function returning [`Check`]s; nothing here changes the
//! host except a short-lived probe object written to and deleted from the
//! repository (`locks/<random>`, a shared lease that expires in seconds).
//! A local repository directory that does not exist is not created.
//! Secrets are never printed: errors from the storage and Chroma layers are
//! already scrubbed, keys are shown by id only.

mod checks;
pub mod clock;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use checks::api_version_supported;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works now, but deserves attention (or could not be checked from here).
    Warn,
    /// Broken: chromaprod will fail at what this check covers.
    Fail,
    /// Not run because a check it depends on did not pass.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's result: what was found and, unless it passed, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name: `config`, `key`, `chroma`, `chroma_version`,
    /// `chroma_database`, `repository`, `repository_write`, `locks`,
    /// `socket`, `clock`.
    pub name: &'static str,
    pub status: Status,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, summary: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            summary: summary.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Warn,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Fail,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(name: &'static str, why: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Skip,
            summary: why.into(),
            fix: None,
        }
    }
}

/// Every check of one run, in the order they ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: PathBuf,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// No check failed (warnings allowed).
    pub fn ok(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// The checks named `name`.
    pub fn get(&self, name: &str) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.name == name).collect()
    }

    /// The report as `chromaprod doctor --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok(),
            "config": self.config,
            "failed": self.count(Status::Fail),
            "warnings": self.count(Status::Warn),
            "checks": self.checks,
        })
    }

    /// The report as text: one line per check, the fix indented below.
    pub fn to_text(&self) -> String {
        let mut out = format!("chromaprod doctor: {}\n\n", self.config.display());
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<5} {:<17} {}\n",
                c.status.label(),
                c.name,
                c.summary
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("  {:<5} {:<17} fix: {fix}\n", "", ""));
            }
        }
        let (failed, warned) = (self.count(Status::Fail), self.count(Status::Warn));
        out.push('\n');
        out.push_str(&match (failed, warned) {
            (0, 0) => "all checks passed\n".to_string(),
            (0, w) => format!("no failures, {w} warning(s): see the WARN lines\n"),
            (f, w) => format!(
                "{f} check(s) failed, {w} warning(s): fix the FAIL lines, then run `chromaprod doctor` again\n"
            ),
        });
        out
    }
}

/// `chromaprod doctor` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// The user the service runs as (the unit's User=): the repository and
    /// state directory must be writable by it.
    #[arg(long, default_value = "chromaprod")]
    pub service_user: String,
    /// Read KEY=VALUE lines (systemd EnvironmentFile= syntax) into the
    /// environment first, e.g. the file holding the backend's credentials;
    /// variables already set keep their values.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Longest time one check may take.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What a run looks at.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// `--socket`, else the config's `control.socket_path`.
    pub socket: Option<PathBuf>,
    pub service_user: String,
    pub timeout: Duration,
}

/// `chromaprod doctor`: runs every check, prints the report, returns the
/// exit code (1 if any check failed).
pub fn main(config: &Path, socket: Option<&Path>, json: bool, args: &DoctorArgs) -> i32 {
    for file in &args.env_files {
        match read_env_file(file) {
            // Before any thread exists: the runtime is built below. A
            // variable already set wins, so one can be tried out on the
            // command line.
            Ok(vars) => {
                for (k, v) in vars {
                    if std::env::var_os(&k).is_none() {
                        std::env::set_var(k, v);
                    }
                }
            }
            Err(e) => {
                eprintln!("chromaprod doctor: {e}");
                return 1;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chromaprod doctor: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let options = Options {
        config: config.to_path_buf(),
        socket: socket.map(Path::to_path_buf),
        service_user: args.service_user.clone(),
        timeout: args.timeout,
    };
    let report = runtime.block_on(run(&options));
    let text = if json {
        format!("{}\n", report.to_json())
    } else {
        report.to_text()
    };
    // A reader that went away (`| head`) is no reason to fail or panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    i32::from(!report.ok())
}

/// Runs every check in order. Later checks that need an earlier one's
/// result are skipped when it did not pass.
pub async fn run(options: &Options) -> Report {
    checks::run_all(options).await
}

/// Parses a systemd `EnvironmentFile=`: `KEY=VALUE` lines, `#` and `;`
/// comments, optional `export `, values optionally in single or double quotes.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: {k:?} is not a variable name", n + 1));
        }
        let v = v.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if v.len() >= 2 && q == e => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = fs_err::read_to_string(path).map_err(|e| e.to_string())?;
    // Line numbers only: a value may be a secret.
    parse_env_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_like_systemd() {
        let text = "# comment\n; also\nAWS_REGION=eu-west-1\nexport A=\"quoted value\"\nB='single'\n\nC=\n";
        assert_eq!(
            parse_env_file(text).expect("parses"),
            vec![
                ("AWS_REGION".to_string(), "eu-west-1".to_string()),
                ("A".to_string(), "quoted value".to_string()),
                ("B".to_string(), "single".to_string()),
                ("C".to_string(), String::new()),
            ]
        );
        let err = parse_env_file("X=1\nnot a line\n").expect_err("bad line");
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_env_file("BAD-NAME=1").is_err());
    }

    #[test]
    fn exit_status_follows_failures_not_warnings() {
        let mut r = Report {
            config: "/etc/chromaprod/chromaprod.toml".into(),
            checks: vec![
                Check::ok("config", "valid"),
                Check::warn("socket", "x", "y"),
            ],
        };
        assert!(r.ok());
        assert!(r.to_text().contains("no failures, 1 warning(s)"));
        r.checks.push(Check::fail("chroma", "down", "start it"));
        assert!(!r.ok());
        let text = r.to_text();
        assert!(text.contains("FAIL  chroma"), "{text}");
        assert!(text.contains("fix: start it"), "{text}");
        assert_eq!(r.to_json()["failed"], 1);
    }
}
