//! Requests of background work that leave Chroma alone while it writes.
//!
//! A backup asks Chroma for records, counts and recall queries while
//! Chroma's own clients add, upsert and delete. Chroma serves both from the
//! same threads, locks and index, so each of a backup's requests a write
//! meets makes that write wait. The persist directory's readers already
//! leave Chroma's file alone between reads while it writes
//! ([`crate::chroma::local`]); [`Courtesy`] does the same for requests to
//! the server: while Chroma writes (it committed to its database within the
//! last second, [`LocalChroma::writing`]), reads go one at a time, each
//! followed by a pause [`LEFT_ALONE`] times as long as it took, so the
//! backup holds Chroma at most a fifth of the time. While Chroma does not
//! write, requests go as they come, as many at once as the caller sends.
//!
//! Only a store made with [`ProductionChromaStore::courteous`] waits (a
//! backup's, restore points included), and only its reads: writes, and the
//! requests of a restore's or a migration's own work, are never held back.
//!
//! [`ProductionChromaStore::courteous`]: super::store::ProductionChromaStore::courteous

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::local::{LocalChroma, LEFT_ALONE};

/// The longest pause after one request (a read that queued a long time
/// behind Chroma's writes does not stall the backup for long after).
pub const MAX_LEFT_ALONE: Duration = Duration::from_secs(1);

/// Reads that leave Chroma alone while it writes (see the module).
#[derive(Debug)]
pub struct Courtesy {
    local: LocalChroma,
    /// Taken by each read while Chroma writes: when the next may begin.
    next: tokio::sync::Mutex<Option<Instant>>,
    /// Whether Chroma wrote when the last read was sent.
    writing: AtomicBool,
    /// Reads that waited for their turn, and how long in all (µs).
    paused: AtomicU64,
    paused_us: AtomicU64,
}

impl Courtesy {
    /// Reads beside the local Chroma whose writes `local` sees.
    pub fn new(local: LocalChroma) -> Self {
        Courtesy {
            local,
            next: tokio::sync::Mutex::new(None),
            writing: AtomicBool::new(false),
            paused: AtomicU64::new(0),
            paused_us: AtomicU64::new(0),
        }
    }

    /// Runs the read `request`: at once while Chroma does not write; while
    /// it does, after the previous read's pause, alone.
    pub async fn read<T>(&self, request: impl Future<Output = T>) -> T {
        let writing = self.local.writing().await;
        self.writing.store(writing, Ordering::Relaxed);
        if !writing {
            return request.await;
        }
        let mut next = self.next.lock().await;
        if let Some(at) = *next {
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                self.paused.fetch_add(1, Ordering::Relaxed);
                self.paused_us.fetch_add(
                    u64::try_from(wait.as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(wait).await;
            }
        }
        let began = Instant::now();
        let out = request.await;
        let ended = Instant::now();
        *next = Some(ended + ((ended - began) * LEFT_ALONE).min(MAX_LEFT_ALONE));
        out
    }

    /// Whether Chroma wrote when the last read was sent: callers size
    /// their requests by it (a write that arrives during one waits for it).
    pub fn writing(&self) -> bool {
        self.writing.load(Ordering::Relaxed)
    }

    /// Logs how many reads waited, and how long in all, if any did.
    pub fn log(&self) {
        let (reads, paused) = self.paused();
        if reads > 0 {
            tracing::info!(
                reads,
                paused_ms = paused.as_millis(),
                "requests to Chroma left it alone while it wrote"
            );
        }
    }

    /// How many reads waited, and how long in all.
    pub fn paused(&self) -> (u64, Duration) {
        (
            self.paused.load(Ordering::Relaxed),
            Duration::from_micros(self.paused_us.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::chroma::local::fixture::{database, SEGMENT};

    /// When each of three requests sent at once began and ended.
    async fn three_at_once(courtesy: &Courtesy, each: Duration) -> Vec<(Instant, Instant)> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let request = || {
            let spans = spans.clone();
            courtesy.read(async move {
                let began = Instant::now();
                tokio::time::sleep(each).await;
                spans.lock().expect("lock").push((began, Instant::now()));
            })
        };
        tokio::join!(request(), request(), request());
        let mut spans = spans.lock().expect("lock").clone();
        spans.sort();
        spans
    }

    /// Requests go as they come while nothing commits to Chroma's file;
    /// after a commit, one at a time, each begun at least [`LEFT_ALONE`]
    /// times as long as the one before took after it ended.
    #[tokio::test]
    async fn while_chroma_writes_requests_go_one_at_a_time_each_after_a_pause() {
        let dir = tempfile::tempdir().expect("should succeed");
        let writer = database(dir.path(), &[("a", 1)], Some(1));
        let local = LocalChroma::open(dir.path()).await.expect("should succeed");
        assert!(local.writing().await, "a first look cannot tell: writing");
        let courtesy = Courtesy::new(local.clone());

        let quiet = three_at_once(&courtesy, Duration::from_millis(200)).await;
        let last_began = quiet.iter().map(|s| s.0).max().expect("three");
        let first_ended = quiet.iter().map(|s| s.1).min().expect("three");
        assert!(
            last_began < first_ended,
            "nothing was written: the requests ran together"
        );
        assert_eq!(courtesy.paused().0, 0);
        assert!(!courtesy.writing());

        writer
            .execute(
                "INSERT INTO embeddings (segment_id, embedding_id, seq_id) VALUES (?1, 'b', 2)",
                [SEGMENT],
            )
            .expect("should succeed");
        let writing = three_at_once(&courtesy, Duration::from_millis(20)).await;
        for pair in writing.windows(2) {
            let ((began, ended), (next, _)) = (pair[0], pair[1]);
            let left_alone = next.saturating_duration_since(ended);
            assert!(
                left_alone >= (ended - began) * LEFT_ALONE,
                "Chroma was left alone {left_alone:?} after a request of {:?}",
                ended - began
            );
        }
        assert_eq!(courtesy.paused().0, 2, "the second and third waited");
        assert!(courtesy.writing());
    }
}
