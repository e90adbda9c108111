//! Verifying a snapshot: every object it references (chunks, indexes,
//! recorded queries) present with its size, or, with `full`, read, decrypted
//! and checked (a chunk against its index).

use serde::Serialize;

use super::manifest::Manifest;
use super::repository::{block_key, chunk_key, index_key, queries_key};
use super::{BackupError, BackupManager};
use crate::progress::{Event, Progress};
use crate::storage::ObjectKey;

/// The result of a verify.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub snapshot: String,
    pub objects_checked: u64,
    pub bytes_read: u64,
    pub records: u64,
    pub full: bool,
}

impl BackupManager {
    /// Checks that every object the snapshot references is present with its
    /// size; with `full`, reads each one and checks its checksum, decrypts
    /// it, and checks the index against the chunk's records.
    pub async fn verify(
        &self,
        id: &str,
        full: bool,
        progress: &Progress,
    ) -> Result<VerifyReport, BackupError> {
        let manifest = self.show(id).await?;
        let lease = self.lock(false, "verify").await?;
        let result = self.verify_locked(&manifest, full, progress).await;
        lease.release().await;
        result
    }

    async fn verify_locked(
        &self,
        manifest: &Manifest,
        full: bool,
        progress: &Progress,
    ) -> Result<VerifyReport, BackupError> {
        let mut report = VerifyReport {
            snapshot: manifest.snapshot_id.to_string(),
            objects_checked: 0,
            bytes_read: 0,
            records: 0,
            full,
        };
        if manifest.is_physical() {
            return self.verify_physical(manifest, full, progress, report).await;
        }
        let total: usize = manifest.collections.iter().map(|c| c.chunks.len()).sum();
        let mut done = 0usize;
        for c in &manifest.collections {
            for chunk in &c.chunks {
                let (ck, ik) = (chunk_key(&chunk.id)?, index_key(&chunk.index_id)?);
                if full {
                    let cb = self.repo.get(&ck, chunk.stored_size).await?;
                    let ib = self.repo.get(&ik, chunk.index_stored_size).await?;
                    report.bytes_read += (cb.len() + ib.len()) as u64;
                    let codec = self.repo.codec.clone();
                    let chunk2 = chunk.clone();
                    let records = tokio::task::spawn_blocking(move || {
                        chunk2.verify_with_key(&cb, &ib, &codec)
                    })
                    .await
                    .map_err(|e| BackupError::Corrupt(e.to_string()))?
                    .map_err(|e| BackupError::BadObject {
                        object: format!("chunks/{} (index {})", chunk.id, chunk.index_id),
                        why: e.to_string(),
                    })?;
                    report.records += records;
                } else {
                    for (key, size) in [(&ck, chunk.stored_size), (&ik, chunk.index_stored_size)] {
                        self.check_size(key, size).await?;
                    }
                    report.records += chunk.live_records();
                }
                report.objects_checked += 2;
                done += 1;
                progress.send(Event::Verify {
                    chunks_done: done as u64,
                    chunks_total: total as u64,
                });
            }
            if let Some(q) = &c.queries {
                let key = queries_key(&q.id)?;
                if full {
                    let bytes = self.repo.get(&key, q.stored_size).await?;
                    report.bytes_read += bytes.len() as u64;
                    let (codec, q2) = (self.repo.codec.clone(), q.clone());
                    tokio::task::spawn_blocking(move || q2.decode(&bytes, &codec))
                        .await
                        .map_err(|e| BackupError::Corrupt(e.to_string()))?
                        .map_err(|why| BackupError::BadObject {
                            object: key.as_str().to_string(),
                            why,
                        })?;
                } else {
                    self.check_size(&key, q.stored_size).await?;
                }
                report.objects_checked += 1;
            }
        }
        Ok(report)
    }

    /// The object at `key` is present with `size` bytes.
    async fn check_size(&self, key: &ObjectKey, size: u64) -> Result<(), BackupError> {
        match self.repo.backend().head(key).await? {
            None => Err(BackupError::MissingObject(key.as_str().to_string())),
            Some(meta) if meta.size != size => Err(BackupError::BadObject {
                object: key.as_str().to_string(),
                why: format!(
                    "{} bytes stored, {size} expected (truncated or replaced)",
                    meta.size
                ),
            }),
            Some(_) => Ok(()),
        }
    }
}

impl BackupManager {
    /// A physical snapshot: every block present with its size; with `full`,
    /// read, checked against its checksum, decrypted, its content address
    /// checked, and each file's SHA-256 over its blocks.
    async fn verify_physical(
        &self,
        manifest: &Manifest,
        full: bool,
        progress: &Progress,
        mut report: VerifyReport,
    ) -> Result<VerifyReport, BackupError> {
        let Some(physical) = &manifest.physical else {
            return Ok(report);
        };
        let total: usize = physical.files.iter().map(|f| f.blocks.len()).sum();
        let mut done = 0u64;
        for f in &physical.files {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for b in &f.blocks {
                let key = block_key(&b.id)?;
                if full {
                    let plain = super::physical::blocks::fetch_block(&self.repo, b).await?;
                    ctx.update(&plain);
                    report.bytes_read += b.stored_size;
                } else {
                    match self.repo.backend().head(&key).await? {
                        None => return Err(BackupError::MissingObject(key.as_str().to_string())),
                        Some(meta) if meta.size != b.stored_size => {
                            return Err(BackupError::BadObject {
                                object: key.as_str().to_string(),
                                why: format!(
                                    "{} bytes stored, {} expected (truncated or replaced)",
                                    meta.size, b.stored_size
                                ),
                            })
                        }
                        Some(_) => {}
                    }
                }
                report.objects_checked += 1;
                done += 1;
                progress.send(Event::Verify {
                    chunks_done: done,
                    chunks_total: total as u64,
                });
            }
            if full {
                let sha = super::crypto::to_hex(ctx.finish().as_ref());
                if sha != f.sha256 {
                    return Err(BackupError::Corrupt(format!(
                        "file {} of snapshot {} reassembles to SHA-256 {sha}, but {} was recorded",
                        f.path, manifest.snapshot_id, f.sha256
                    )));
                }
            }
        }
        report.records = manifest.record_count();
        Ok(report)
    }
}
