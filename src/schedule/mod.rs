//! Scheduled jobs: full and incremental backups, prune and verify.
//!
//! [`plan`] and [`retention`] are pure decisions over values (which jobs the
//! config asks for, when a cron fires next, whether a fire was missed, which
//! snapshots a prune keeps). [`Scheduler`] is the thin driver that carries
//! them out on tokio, with its state in one JSON file and its time from a
//! [`Clock`], so tests run with tokio's clock paused.

mod clock;
pub mod plan;
pub mod retention;
mod scheduler;
mod state;
#[cfg(test)]
mod tests;

pub use clock::{Clock, Sleep, SystemClock, TokioClock};
pub use plan::{missed_since, next_fire, specs, utc_offset, JobKind, JobSpec, PlanError};
pub use retention::{select, Decision, RetentionPolicy, SnapshotInfo};
pub use scheduler::{JobRunner, JobStatus, Scheduler, Trigger};
pub use state::Outcome;
