//! The scheduler's memory across restarts: one small JSON file with the last
//! run of each job kind, replaced atomically (temp file, fsync, rename).
//!
//! A missing file is a first start; an unreadable one is logged, kept aside
//! as `<file>.corrupt` and replaced — the scheduler never fails to start
//! because of it, it only loses catch-up for that once.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::JobKind;

/// Version of the file format; another version is treated as unreadable.
const FORMAT_VERSION: u32 = 1;

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The daemon stopped or crashed while the run was going.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// What is remembered about one job kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// When this kind was first scheduled with this state file: with no run
    /// yet, catch-up looks for fire times missed since then.
    pub since_ms: i64,
    /// Start of the most recent run.
    #[serde(default)]
    pub last_run_ms: Option<i64>,
    /// End of the most recent finished run.
    #[serde(default)]
    pub last_finished_ms: Option<i64>,
    #[serde(default)]
    pub last_outcome: Option<Outcome>,
    /// The error of the most recent run, when it failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// A run started and has not finished; found true at start-up, the run
    /// was interrupted.
    #[serde(default)]
    pub running: bool,
}

impl JobRecord {
    pub fn new(since_ms: i64) -> Self {
        JobRecord {
            since_ms,
            last_run_ms: None,
            last_finished_ms: None,
            last_outcome: None,
            last_error: None,
            running: false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    jobs: BTreeMap<JobKind, JobRecord>,
}

pub type Records = BTreeMap<JobKind, JobRecord>;

/// Read the state file (a small file, read once at start-up). Never fails:
/// problems are logged and give an empty state.
pub fn load(path: &Path) -> Records {
    let text = match fs_err::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::info!(
                state = %path.display(),
                "no job state yet (first start): nothing to catch up"
            );
            return Records::new();
        }
        Err(e) => {
            tracing::warn!(
                state = %path.display(),
                "cannot read the job state ({e}); starting fresh: missed jobs are not caught up this time"
            );
            return Records::new();
        }
    };
    let parsed = serde_json::from_str::<StateFile>(&text)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            if f.version == FORMAT_VERSION {
                Ok(f.jobs)
            } else {
                Err(format!(
                    "format version {} (this chromaprod reads {FORMAT_VERSION})",
                    f.version
                ))
            }
        });
    match parsed {
        Ok(jobs) => jobs,
        Err(why) => {
            let aside = sibling(path, "corrupt");
            let kept = match fs_err::rename(path, &aside) {
                Ok(()) => format!("the old file is kept as {}", aside.display()),
                Err(e) => format!("the old file could not be moved aside: {e}"),
            };
            tracing::warn!(
                state = %path.display(),
                "the job state is unreadable ({why}); starting fresh: missed jobs are not caught up this time; {kept}"
            );
            Records::new()
        }
    }
}

/// Replace the state file with `records`: write a temp file beside it, fsync,
/// rename over the old one, fsync the directory.
pub async fn save(path: &Path, records: &Records) -> io::Result<()> {
    let file = StateFile {
        version: FORMAT_VERSION,
        jobs: records.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs_err::tokio::create_dir_all(&dir).await?;
    let tmp = sibling(path, "tmp");
    {
        use tokio::io::AsyncWriteExt;
        let mut f = fs_err::tokio::File::create(&tmp).await?;
        f.write_all(&bytes).await?;
        f.sync_all().await?;
    }
    fs_err::tokio::rename(&tmp, path).await?;
    // Make the rename itself durable; not every filesystem allows it.
    if let Ok(d) = fs_err::tokio::File::open(&dir).await {
        let _ = d.sync_all().await;
    }
    Ok(())
}

/// `path` with `.suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}
