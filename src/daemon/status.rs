//! The typed results of the commands about the daemon itself: `status`
//! and `jobs` (docs/control-protocol.md gives their wire form).

use std::path::PathBuf;

use serde::Serialize;

use super::jobs::JobInfo;
use super::reload::ReloadReport;
use crate::chroma::PoolStatus;
use crate::schedule::JobStatus;

/// `status`: the daemon, its configuration, its Chroma pool and its
/// running jobs.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub version: &'static str,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub config: ConfigStatus,
    pub chroma: ChromaTarget,
    pub pool: PoolStatus,
    /// `HealthMonitor::summary`: ok, degraded or unavailable, and why.
    pub health: String,
    /// Jobs running now.
    pub jobs: Vec<JobInfo>,
}

/// Where the running configuration came from, and its last reload.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    pub path: PathBuf,
    pub env_overrides: Vec<String>,
    pub last_reload: Option<ReloadReport>,
}

/// The tenant and database the daemon works in.
#[derive(Debug, Clone, Serialize)]
pub struct ChromaTarget {
    pub tenant: String,
    pub database: String,
}

/// `jobs`: running and recent jobs, and the schedules.
#[derive(Debug, Clone, Serialize)]
pub struct JobsListing {
    pub jobs: Vec<JobInfo>,
    pub schedules: Vec<JobStatus>,
}
