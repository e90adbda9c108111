//! The systemd watchdog: ping at half the interval, but only while every
//! registered loop has shown it is alive within the interval. A stuck loop
//! stops the pings, and systemd restarts the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sd::Notifier;

/// A loop's proof of life: it calls [`Beat::beat`] at least once per period.
#[derive(Clone, Debug)]
pub struct Beat {
    name: &'static str,
    last_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Beat {
    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// The set of loops the watchdog vouches for.
#[derive(Clone, Debug)]
pub struct Liveness {
    epoch: Instant,
    beats: Arc<Mutex<Vec<Beat>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            epoch: Instant::now(),
            beats: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Register a loop; it must beat from now on.
    pub fn register(&self, name: &'static str) -> Beat {
        let beat = Beat {
            name,
            last_ms: Arc::new(AtomicU64::new(0)),
            epoch: self.epoch,
        };
        beat.beat();
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(beat.clone());
        beat
    }

    /// The first loop that has not beaten within `max_age`, if any.
    pub fn stale(&self, max_age: Duration) -> Option<&'static str> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|b| now.saturating_sub(b.last_ms.load(Ordering::Relaxed)) > max)
            .map(|b| b.name)
    }
}

/// How often loops should beat so the watchdog sees them in time.
pub fn beat_period(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_millis(10))
}

/// Pings every `interval / 2` while all loops are live. Returns on cancel.
pub async fn run(
    interval: Duration,
    liveness: Liveness,
    notifier: Notifier,
    cancel: CancellationToken,
    mut ping: impl FnMut(&Notifier) + Send,
) {
    let mut tick = tokio::time::interval(interval / 2);
    let mut reported = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match liveness.stale(interval) {
            None => {
                reported = false;
                ping(&notifier);
            }
            Some(name) => {
                if !reported {
                    tracing::error!(
                        r#loop = name,
                        "loop is stuck; withholding watchdog pings so systemd restarts the service"
                    );
                    reported = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn pings_at_half_the_interval_and_stop_when_a_loop_is_stuck() {
        let liveness = Liveness::new();
        let beat = liveness.register("main");
        let pings = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let p = pings.clone();
        let interval = Duration::from_secs(10);
        let task = tokio::spawn(run(
            interval,
            liveness.clone(),
            Notifier,
            cancel.clone(),
            move |_| {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        // A live loop: beats every period for 30 s → pings at 0, 5, …, 30.
        for _ in 0..12 {
            beat.beat();
            tokio::time::sleep(beat_period(interval)).await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let live_pings = pings.load(Ordering::SeqCst);
        assert_eq!(live_pings, 7, "expected a ping every 5 s over 30 s");
        // The loop stops beating: at most the pings inside one interval follow, then none.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = pings.load(Ordering::SeqCst);
        assert!(
            after - live_pings <= 2,
            "pings went on for a stuck loop: {after}"
        );
        assert_eq!(liveness.stale(interval), Some("main"));
        // It recovers: pings resume.
        beat.beat();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(pings.load(Ordering::SeqCst) > after);
        cancel.cancel();
        task.await.expect("join");
    }
}
