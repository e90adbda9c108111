//! Watches the config file and reports when its content changes.
//!
//! The parent directory is watched (not the file), so editors that replace
//! the file by renaming a new one over it are seen. Events are debounced, and
//! a content check on a timer backs up the watcher (and replaces it where
//! inotify is unavailable). Only a change of content is reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before the change is reported.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Calls `on_change` whenever the file's content differs from what it was at
/// the previous report (or at start). Returns when `cancel` fires.
pub async fn watch_file(
    path: PathBuf,
    poll_interval: Duration,
    cancel: CancellationToken,
    on_change: impl FnMut() + Send,
) {
    run(path, poll_interval, true, cancel, on_change).await;
}

async fn run(
    path: PathBuf,
    poll_interval: Duration,
    use_watcher: bool,
    cancel: CancellationToken,
    mut on_change: impl FnMut() + Send,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = if use_watcher {
        start_watcher(&path, tx)
    } else {
        Err(notify::Error::generic("disabled"))
    };
    match &watcher {
        Ok(_) => tracing::debug!(path = %path.display(), "watching config file"),
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            poll_interval = %humantime::format_duration(poll_interval),
            "file watcher unavailable; polling the config file instead"
        ),
    }
    let mut last = fingerprint(&path).await;
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut pending: Option<Instant> = None;
    loop {
        let debounce_done = async {
            match pending {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(()) = rx.recv() => {
                pending = Some(Instant::now() + DEBOUNCE);
                continue;
            }
            () = debounce_done => pending = None,
            _ = poll.tick() => {}
        }
        let now = fingerprint(&path).await;
        // A missing file (mid-rename) is not a change: wait for it to reappear.
        if now.is_some() && now != last {
            last = now;
            on_change();
        }
    }
    drop(watcher);
}

fn start_watcher(path: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(ev) => {
                ev.paths.is_empty() || ev.paths.iter().any(|p| p.file_name() == name.as_deref())
            }
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// SHA-256 of the file's bytes; `None` while it cannot be read.
async fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(
        ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    async fn wait_for(count: &AtomicUsize, n: usize) -> bool {
        for _ in 0..100 {
            if count.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn sees_in_place_edits_and_rename_replacement_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "a = 1\n").expect("write");
        let count = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let c = count.clone();
        let task = tokio::spawn(watch_file(
            path.clone(),
            Duration::from_secs(60),
            cancel.clone(),
            move || {
                c.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;

        std::fs::write(&path, "a = 2\n").expect("write");
        assert!(wait_for(&count, 1).await, "in-place edit not seen");

        let tmp = dir.path().join(".c.toml.swp");
        std::fs::write(&tmp, "a = 3\n").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert!(wait_for(&count, 2).await, "rename replacement not seen");

        // Touching without a content change reports nothing.
        std::fs::write(&path, "a = 3\n").expect("write");
        tokio::time::sleep(DEBOUNCE * 3).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);

        cancel.cancel();
        task.await.expect("join");
    }

    #[tokio::test]
    async fn polling_backstop_sees_changes_without_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "a = 1\n").expect("write");
        let count = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let c = count.clone();
        // No watcher at all: the poll alone must notice.
        let task = tokio::spawn(run(
            path.clone(),
            Duration::from_millis(100),
            false,
            cancel.clone(),
            move || {
                c.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, "a = 2\n").expect("write");
        assert!(wait_for(&count, 1).await);
        cancel.cancel();
        task.await.expect("join");
    }
}
