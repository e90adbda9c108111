//! Physical restore: a physical snapshot written as a complete persist
//! directory into an empty directory, for a stopped Chroma to start on.
//!
//! Refused before anything is written: a target some process uses or that
//! is not empty, and a snapshot of other migration levels than the local
//! Chroma's (`chroma.persist_directory`) unless forced. Files are written
//! under a hidden staging directory inside the target, each checked against
//! its size and SHA-256 and synced, then moved into place; a failure leaves
//! the target as empty as it was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::blocks;
use super::inuse;
use crate::backup::crypto::to_hex;
use crate::backup::manifest::{Manifest, SnapshotId};
use crate::backup::{BackupError, BackupManager};
use crate::chroma::local::{migration_levels, DB_FILE};
use crate::progress::{Event, Progress};

/// Where and how to restore a physical snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalRestoreOptions {
    /// The directory to write the persist directory into: new or empty.
    pub data_dir: PathBuf,
    /// Restore onto other migration levels than the local Chroma's.
    pub force: bool,
}

/// What a physical restore wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhysicalRestored {
    pub snapshot: SnapshotId,
    pub data_dir: String,
    pub files: u64,
    /// Bytes written into the directory.
    pub bytes: u64,
    /// Stored bytes read from the repository.
    pub bytes_read: u64,
    pub collections: Vec<crate::backup::manifest::PhysicalCollection>,
    /// The Chroma the snapshot was taken from (API version, migration levels).
    pub chroma_version: String,
    /// Set when the local Chroma's migration levels differed and `force` was given.
    pub forced: bool,
    pub duration_ms: u64,
}

fn io(action: &'static str, path: &Path, e: &std::io::Error) -> BackupError {
    BackupError::LocalIo {
        action,
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// Refuses a target in use or not empty. Returns whether it exists.
pub fn check_target(dir: &Path) -> Result<bool, BackupError> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("inspect", dir, &e)),
        Ok(m) if !m.is_dir() => {
            return Err(BackupError::DataDirNotEmpty {
                dir: shown,
                found: "a file, not a directory".into(),
            })
        }
        Ok(_) => {}
    }
    if let Some(holder) = inuse::holder(dir) {
        return Err(BackupError::DataDirInUse { dir: shown, holder });
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| io("list", dir, &e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !names.is_empty() {
        names.sort();
        let n = names.len();
        let mut found = names.into_iter().take(3).collect::<Vec<_>>().join(", ");
        if n > 3 {
            found = format!("{n} entries, e.g. {found}");
        }
        return Err(BackupError::DataDirNotEmpty { dir: shown, found });
    }
    Ok(true)
}

impl BackupManager {
    /// Restores physical snapshot `id` into `opts.data_dir`.
    pub async fn restore_physical(
        &self,
        id: &str,
        opts: &PhysicalRestoreOptions,
        progress: &Progress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<PhysicalRestored, BackupError> {
        let started = Instant::now();
        let manifest = self.show(id).await?;
        let Some(physical) = &manifest.physical else {
            return Err(BackupError::NotPhysical(id.to_string()));
        };
        let dir = &opts.data_dir;
        if !dir.is_absolute() {
            return Err(BackupError::Invalid(format!(
                "--data-dir {} is not an absolute path",
                dir.display()
            )));
        }
        let existed = check_target(dir)?;
        let forced = self.check_levels(&manifest, opts.force)?;
        let lease = self.lock(false, "physical restore").await?;
        if !existed {
            std::fs::create_dir_all(dir).map_err(|e| io("create", dir, &e))?;
        }
        let staging = dir.join(format!(".chromaprod-restore-{}", manifest.snapshot_id));
        let result = async {
            std::fs::create_dir(&staging).map_err(|e| io("create", &staging, &e))?;
            let (mut bytes, mut bytes_read) = (0u64, 0u64);
            let total = physical.files.len() as u64;
            for (i, f) in physical.files.iter().enumerate() {
                if cancel.is_cancelled() {
                    return Err(BackupError::Cancelled);
                }
                if lease.lost.is_cancelled() {
                    return Err(BackupError::LockLost);
                }
                let path = staging.join(&f.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create", parent, &e))?;
                }
                let mut out = std::fs::File::create(&path).map_err(|e| io("write", &path, &e))?;
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut size = 0u64;
                for b in &f.blocks {
                    let plain = blocks::fetch_block(&self.repo, b).await?;
                    bytes_read += b.stored_size;
                    ctx.update(&plain);
                    size += plain.len() as u64;
                    let (o, p) = (out, path.clone());
                    out = tokio::task::spawn_blocking(move || {
                        let mut o = o;
                        blocks::write_all(&mut o, &p, &plain).map(|()| o)
                    })
                    .await
                    .map_err(|e| BackupError::Corrupt(format!("write task failed: {e}")))??;
                }
                let sha = to_hex(ctx.finish().as_ref());
                if size != f.size || sha != f.sha256 {
                    return Err(BackupError::Corrupt(format!(
                        "{} restored as {size} bytes with SHA-256 {sha}, but the snapshot recorded {} bytes with {}; run `chromaprod backups verify {} --full`",
                        f.path, f.size, f.sha256, manifest.snapshot_id
                    )));
                }
                let p = path.clone();
                tokio::task::spawn_blocking(move || out.sync_all().map_err(|e| io("sync", &p, &e)))
                    .await
                    .map_err(|e| BackupError::Corrupt(format!("sync task failed: {e}")))??;
                bytes += size;
                progress.send(Event::PhysicalRestore {
                    files_done: i as u64 + 1,
                    files_total: total,
                    bytes_written: bytes,
                });
            }
            // Into place: the database last, so a directory with it is whole.
            let mut entries: Vec<_> = std::fs::read_dir(&staging)
                .map_err(|e| io("list", &staging, &e))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            entries.sort_by_key(|n| n == DB_FILE);
            for name in entries {
                let (from, to) = (staging.join(&name), dir.join(&name));
                std::fs::rename(&from, &to).map_err(|e| io("move", &from, &e))?;
            }
            std::fs::remove_dir(&staging).map_err(|e| io("remove", &staging, &e))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok((bytes, bytes_read))
        }
        .await;
        lease.release().await;
        let (bytes, bytes_read) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                if !existed {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e);
            }
        };
        Ok(PhysicalRestored {
            snapshot: manifest.snapshot_id.clone(),
            data_dir: dir.display().to_string(),
            files: physical.files.len() as u64,
            bytes,
            bytes_read,
            collections: physical.collections.clone(),
            chroma_version: manifest.metadata.chroma_version.clone(),
            forced,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Compares the snapshot's migration levels with the local Chroma's
    /// when `chroma.persist_directory` is set and holds a database. Returns
    /// whether they differ (allowed only with `force`).
    fn check_levels(&self, manifest: &Manifest, force: bool) -> Result<bool, BackupError> {
        let Some(physical) = &manifest.physical else {
            return Ok(false);
        };
        let Some(local_dir) = &self.config.chroma.persist_directory else {
            return Ok(false);
        };
        let db = local_dir.join(DB_FILE);
        if !db.exists() {
            return Ok(false);
        }
        let taken: Vec<(String, i64)> = physical
            .migrations
            .iter()
            .map(|l| (l.dir.clone(), l.version))
            .collect();
        let local = match migration_levels(&db) {
            Ok(l) => l,
            Err(e) if force => {
                tracing::warn!(error = %e, "cannot read the local Chroma's migration levels; restoring anyway (--force)");
                return Ok(true);
            }
            Err(e) => return Err(BackupError::LocalFiles(e)),
        };
        if local == taken {
            return Ok(false);
        }
        if force {
            tracing::warn!(snapshot = %manifest.snapshot_id, taken = %super::describe_levels(&taken), local = %super::describe_levels(&local), "restoring a physical snapshot of other migration levels than the local Chroma's (--force)");
            return Ok(true);
        }
        Err(BackupError::MigrationLevelsDiffer {
            snapshot: manifest.snapshot_id.to_string(),
            taken: super::describe_levels(&taken),
            local: super::describe_levels(&local),
            local_dir: local_dir.display().to_string(),
        })
    }
}
