//! Repository locks: leases with an expiry, renewed while held.
//!
//! Each holder writes its own object `locks/<random id>` (create-only) with
//! its host, pid, purpose and expiry, then lists `locks/`: a shared lock
//! (backup, restore, verify) conflicts with a live exclusive one; an
//! exclusive lock (prune, delete) conflicts with any other live lock. On a
//! conflict the holder removes its object and retries after a random pause,
//! so two racing holders cannot both win. A holder that dies stops renewing;
//! its lease expires after `ttl` and the next holder removes it. Expiry uses
//! the wall clock: hosts sharing a repository need synchronised clocks
//! (`chromaprod doctor` checks the skew against the backend).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::repository::{key, Repository};
use super::BackupError;
pub use crate::host::{hostname, now_ms};
use crate::storage::Written;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub holder: String,
    pub pid: u32,
    pub purpose: String,
    pub exclusive: bool,
    pub created_ms: u64,
    pub expires_ms: u64,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} lock held by {} (pid {}) for {}, expiring in {}s",
            if self.exclusive {
                "an exclusive"
            } else {
                "a shared"
            },
            self.holder,
            self.pid,
            self.purpose,
            self.expires_ms.saturating_sub(now_ms()) / 1000
        )
    }
}

fn lock_id() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// Largest lock object read; a lock is a few hundred bytes of JSON.
const MAX_LOCK_OBJECT: u64 = 64 * 1024;

/// A held lock. Dropping it without [`Lease::release`] leaves the lease to expire.
pub struct Lease {
    repo: Repository,
    current: Arc<Mutex<String>>,
    stop: CancellationToken,
    /// Cancelled if the lease could not be renewed before it expired: the
    /// holder must stop writing.
    pub lost: CancellationToken,
}

impl Lease {
    /// Takes a lock, waiting up to `wait` for conflicting holders.
    pub async fn acquire(
        repo: &Repository,
        exclusive: bool,
        purpose: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, BackupError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (id, info) = write_lock(repo, exclusive, purpose, ttl).await?;
            match conflict(repo, &id, &info).await {
                Ok(None) => {
                    let lease = Lease {
                        repo: repo.clone(),
                        current: Arc::new(Mutex::new(id)),
                        stop: CancellationToken::new(),
                        lost: CancellationToken::new(),
                    };
                    lease.spawn_renewal(exclusive, purpose.to_string(), ttl);
                    return Ok(lease);
                }
                Ok(Some(other)) => {
                    let _ = repo.delete(&key(&format!("locks/{id}"))?).await;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(BackupError::Locked(other.describe()));
                    }
                    let pause = rand::thread_rng().gen_range(100..400);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => {
                    let _ = repo.delete(&key(&format!("locks/{id}"))?).await;
                    return Err(e);
                }
            }
        }
    }

    fn spawn_renewal(&self, exclusive: bool, purpose: String, ttl: Duration) {
        let (repo, current, stop, lost) = (
            self.repo.clone(),
            self.current.clone(),
            self.stop.clone(),
            self.lost.clone(),
        );
        tokio::spawn(async move {
            let mut expires = now_ms() + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ttl / 3) => {}
                }
                match write_lock(&repo, exclusive, &purpose, ttl).await {
                    Ok((new_id, info)) => {
                        expires = info.expires_ms;
                        let old = std::mem::replace(
                            &mut *current.lock().unwrap_or_else(|e| e.into_inner()),
                            new_id,
                        );
                        if let Ok(k) = key(&format!("locks/{old}")) {
                            let _ = repo.delete(&k).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the repository lock");
                        if now_ms() >= expires {
                            tracing::error!(
                                "repository lock expired before it could be renewed; stopping"
                            );
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Stops renewing and removes the lock object.
    pub async fn release(self) {
        self.stop.cancel();
        let id = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Ok(k) = key(&format!("locks/{id}")) {
            if let Err(e) = self.repo.delete(&k).await {
                tracing::warn!(error = %e, "cannot remove the repository lock; it expires by itself");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn write_lock(
    repo: &Repository,
    exclusive: bool,
    purpose: &str,
    ttl: Duration,
) -> Result<(String, LockInfo), BackupError> {
    let now = now_ms();
    let info = LockInfo {
        holder: hostname(),
        pid: std::process::id(),
        purpose: purpose.to_string(),
        exclusive,
        created_ms: now,
        expires_ms: now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    };
    let bytes = serde_json::to_vec(&info).map_err(|e| BackupError::Corrupt(e.to_string()))?;
    loop {
        let id = lock_id();
        if repo
            .backend()
            .write_if_absent(&key(&format!("locks/{id}"))?, Bytes::from(bytes.clone()))
            .await?
            == Written::Created
        {
            return Ok((id, info));
        }
    }
}

/// The first live lock that conflicts with ours; expired ones are removed.
async fn conflict(
    repo: &Repository,
    own: &str,
    ours: &LockInfo,
) -> Result<Option<LockInfo>, BackupError> {
    let now = now_ms();
    for meta in repo.list("locks").await? {
        let name = meta.key.as_str().trim_start_matches("locks/");
        if name == own {
            continue;
        }
        let other: LockInfo = match repo.get(&meta.key, MAX_LOCK_OBJECT).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(info) => info,
                Err(_) => {
                    tracing::warn!(
                        object = meta.key.as_str(),
                        "removing an unreadable lock object"
                    );
                    let _ = repo.delete(&meta.key).await;
                    continue;
                }
            },
            Err(BackupError::MissingObject(_)) => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        if other.expires_ms < now {
            tracing::info!(holder = %other.holder, pid = other.pid, "removing an expired repository lock");
            let _ = repo.delete(&meta.key).await;
            continue;
        }
        if ours.exclusive || other.exclusive {
            return Ok(Some(other));
        }
    }
    Ok(None)
}

/// Every lock object with its state (for `status` and `doctor`).
pub async fn list_locks(repo: &Repository) -> Result<Vec<LockInfo>, BackupError> {
    let mut out = Vec::new();
    for meta in repo.list("locks").await? {
        if let Ok(bytes) = repo.get(&meta.key, MAX_LOCK_OBJECT).await {
            if let Ok(info) = serde_json::from_slice(&bytes) {
                out.push(info);
            }
        }
    }
    Ok(out)
}
