//! One migration runner at a time, across hosts: a lease kept in Chroma
//! with an expiry, renewal and a fencing token.
//!
//! Each lease is its own record, `lock-<token>`. To take the lock a runner
//! reads the highest token; if that lease is live (not released, not
//! expired) it waits; otherwise it `add`s the record for the next token.
//! Chroma's `add` keeps the first record written under an id, so exactly
//! one runner wins each token, and nobody ever overwrites another's lease.
//! The holder renews its record every third of the lease; every history
//! write made under the lock goes through the lease ([`MigrationLease::record`],
//! [`MigrationLease::forget`]), which first checks that no higher token
//! exists (fencing), so a
//! holder whose lease lapsed (a long pause) stops instead of racing the
//! runner that took over. Expiry uses the runners' clocks: keep them in
//! sync (NTP) to well within `migrations.lock_ttl`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::history::{HistoryEntry, HistoryStore, LockRecord};
use super::MigrationError;
use crate::host::{hostname, now_ms};

/// A held lease; renewed in the background until released or dropped.
pub struct MigrationLease {
    history: HistoryStore,
    record: Arc<Mutex<LockRecord>>,
    /// Cancelled when the lease could not be renewed or was taken over.
    pub lost: CancellationToken,
    stop: CancellationToken,
}

/// Who this runner is, as shown to others waiting for the lock.
pub fn runner_id() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "chromaprod".into());
    format!(
        "{user}@{} (pid {}) #{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

fn describe(l: &LockRecord) -> String {
    let left = l.expires_ms.saturating_sub(now_ms());
    format!(
        "{} (token {}, lease ends in {})",
        l.holder
            .rsplit_once(" #")
            .map_or(l.holder.as_str(), |(h, _)| h),
        l.token,
        humantime::format_duration(Duration::from_millis(left / 1000 * 1000))
    )
}

impl MigrationLease {
    /// Takes the lock, waiting up to `wait` for a live holder; `on_wait` is
    /// told who holds it while waiting.
    pub async fn acquire(
        history: &HistoryStore,
        holder: &str,
        ttl: Duration,
        wait: Duration,
        mut on_wait: impl FnMut(&str),
    ) -> Result<Self, MigrationError> {
        let started = Instant::now();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // The last token claimed and lost, and how many claims were lost.
        let mut lost: Option<(u64, u32)> = None;
        loop {
            let top = history.locks().await?.into_iter().next();
            // A claim lost to a lease that shows now (even released or
            // expired since) was lost to a real runner: no sign of damage.
            if let (Some(l), Some((token, _))) = (&top, lost) {
                if l.token >= token {
                    lost = None;
                }
            }
            let live = top
                .as_ref()
                .filter(|l| !l.released && l.expires_ms > now_ms());
            if let Some(l) = live {
                if started.elapsed() >= wait {
                    return Err(MigrationError::LockTimeout {
                        holder: describe(l),
                        waited: wait,
                    });
                }
                on_wait(&describe(l));
                let pause =
                    Duration::from_millis((l.expires_ms.saturating_sub(now_ms())).clamp(200, 1000));
                tokio::time::sleep(
                    pause
                        .min(wait.saturating_sub(started.elapsed()))
                        .max(Duration::from_millis(50)),
                )
                .await;
                continue;
            }
            if let Some((token, tries)) = lost.filter(|_| started.elapsed() >= wait) {
                // Claims keep losing, yet no live lease shows: the record
                // under that token is not a lease.
                return Err(history.damaged(
                    token,
                    format!(
                        "every claim of it was lost for {} ({tries} tries), yet it is not a readable lease",
                        humantime::format_duration(wait)
                    ),
                ));
            }
            let token = match &top {
                None => 1,
                Some(l) => l.token.checked_add(1).ok_or_else(|| {
                    history.damaged(
                        l.token,
                        format!(
                            "it has token {}, the largest there is (tokens count up by one per run), so no lease can follow it",
                            l.token
                        ),
                    )
                })?,
            };
            let now = now_ms();
            let record = LockRecord {
                token,
                holder: holder.to_string(),
                acquired_ms: now,
                expires_ms: now.saturating_add(ttl_ms),
                released: false,
            };
            if history.claim(&record).await? {
                let _ = history.forget_locks_below(record.token).await;
                let lease = MigrationLease {
                    history: history.clone(),
                    record: Arc::new(Mutex::new(record)),
                    lost: CancellationToken::new(),
                    stop: CancellationToken::new(),
                };
                lease.spawn_renewal(ttl);
                return Ok(lease);
            }
            // Another runner won this token: pause (jittered, so racing
            // runners spread out), then look again, within `wait`.
            lost = Some((token, lost.map_or(1, |(_, n)| n + 1)));
            let pause = Duration::from_millis(100 + rand::random::<u64>() % 200);
            tokio::time::sleep(pause.min(wait.saturating_sub(started.elapsed()))).await;
        }
    }

    /// The fencing token of this lease.
    pub fn token(&self) -> u64 {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).token
    }

    fn spawn_renewal(&self, ttl: Duration) {
        let history = self.history.clone();
        let record = self.record.clone();
        let lost = self.lost.clone();
        let stop = self.stop.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ttl / 3) => {}
                }
                let mut next = record.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let taken = match history.locks().await {
                    Ok(ls) => ls.first().is_some_and(|l| l.token > next.token),
                    Err(_) => false,
                };
                if taken || now_ms() > next.expires_ms {
                    tracing::error!(token = next.token, "migration lock lost; stopping");
                    lost.cancel();
                    return;
                }
                next.expires_ms = now_ms().saturating_add(ttl_ms);
                if history.put_lock(&next).await.is_ok() {
                    *record.lock().unwrap_or_else(|e| e.into_inner()) = next;
                }
            }
        });
    }

    /// Fails if the lease lapsed or a later runner took the lock (fencing).
    pub async fn check(&self) -> Result<(), MigrationError> {
        let mine = self.token();
        if self.lost.is_cancelled() {
            return Err(MigrationError::LockLost { token: mine });
        }
        let top = self.history.locks().await?.into_iter().next();
        if top.is_some_and(|l| l.token > mine) {
            self.lost.cancel();
            return Err(MigrationError::LockLost { token: mine });
        }
        Ok(())
    }

    /// The recorded history, read afresh.
    pub async fn entries(&self) -> Result<Vec<HistoryEntry>, MigrationError> {
        Ok(self.history.entries().await?)
    }

    /// Writes a history entry, after checking the lease ([`Self::check`]):
    /// every history write made under the lock goes through here or
    /// [`Self::forget`].
    pub async fn record(&self, entry: &HistoryEntry) -> Result<(), MigrationError> {
        self.check().await?;
        Ok(self.history.put(entry).await?)
    }

    /// Removes the history entry of `version`, after checking the lease.
    pub async fn forget(&self, version: u32) -> Result<(), MigrationError> {
        self.check().await?;
        Ok(self.history.remove(version).await?)
    }

    /// Marks the lease released so the next runner need not wait.
    pub async fn release(self) {
        self.stop.cancel();
        let mut rec = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        rec.released = true;
        if let Err(e) = self.history.put_lock(&rec).await {
            tracing::warn!(error = %e, "could not release the migration lock; it frees itself when the lease ends");
        }
    }
}

impl Drop for MigrationLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
