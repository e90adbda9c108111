//! Daemon lifecycle: start-up (`start`), reload (`reload`), the control
//! handler (`control`, a thin layer over [`crate::commands`]) and the one
//! stop path (`stop`), around the state they share (`shared`); the job
//! table, systemd notification and the watchdog.

mod control;
pub mod jobs;
mod reload;
pub mod sd;
mod shared;
mod start;
mod status;
mod stop;
pub mod watchdog;

use std::time::Duration;

pub use reload::{ReloadCause, ReloadReport};
pub use start::run;

use crate::chroma::ChromaError;

/// Exit code when Chroma did not become reachable during start-up (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code when migration files or history are refused (`EX_DATAERR`).
pub const EXIT_DATAERR: i32 = 65;
/// Exit code when a migration failed at start-up (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: i32 = 70;
/// Exit code after a second stop signal cut the graceful stop short.
pub const EXIT_FORCED: i32 = 130;

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("Chroma did not become reachable at {endpoints} within {}: {last_error}; check that the server runs and chroma.endpoints is right, or raise chroma.startup_wait", humantime::format_duration(*waited))]
    ChromaUnavailable {
        endpoints: String,
        waited: Duration,
        last_error: String,
    },
    #[error("cannot set up the Chroma pool: {0}")]
    Chroma(#[source] ChromaError),
    #[error("control socket: {0}")]
    Control(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("state directory: {0}; check daemon.state_dir and that the service may write it (StateDirectory=)")]
    StateDir(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
    #[error("stopped at once by a second stop signal")]
    ForcedStop,
    #[error("migrating at start-up failed: {0}")]
    Migration(#[source] crate::migrate::MigrationError),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::ChromaUnavailable { .. } => EXIT_UNAVAILABLE,
            DaemonError::ForcedStop => EXIT_FORCED,
            DaemonError::Migration(e) if e.is_data_error() => EXIT_DATAERR,
            DaemonError::Migration(_) => EXIT_SOFTWARE,
            _ => 1,
        }
    }
}
