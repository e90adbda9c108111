//! Where the scheduler gets the time from.
//!
//! Cron fire times are wall-clock instants, so the driver needs "now" as Unix
//! time; it waits with tokio's timer. [`TokioClock`] derives Unix time from
//! tokio's (pausable) clock, so tests run months of schedule in no real time.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A boxed sleep, so that a [`Clock`] can be shared as `dyn Clock`.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The time source of the scheduler.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix milliseconds (UTC).
    fn now_unix_ms(&self) -> i64;

    /// Wait for `duration`. The driver never sleeps longer than a minute at a
    /// time and re-reads [`Clock::now_unix_ms`] after every sleep, so a wall
    /// clock that jumps (NTP, suspend) delays a fire by at most that minute.
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The real clock: `SystemTime` for now, tokio's timer for waiting.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that reads tokio's clock: Unix time is `start_unix_ms` plus the
/// tokio time elapsed since the clock was made. Under
/// `#[tokio::test(start_paused = true)]` time only moves when every task
/// waits, straight to the next timer, so schedules run without real waiting.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_unix_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start_unix_ms` now.
    pub fn starting_at(start_unix_ms: i64) -> Self {
        TokioClock {
            start_unix_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_unix_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_unix_ms.saturating_add(elapsed)
    }
}
