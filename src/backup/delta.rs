//! `restore --mode delta`: brings live collections back to a snapshot's
//! state by writing only what differs from it, after a restore point.
//!
//! Per collection, against the live collection of the same name (or `--as`):
//! 1. the snapshot side: every live record's id and digest, from the chunk
//!    indexes (the chunks' `excluded_ids` left out) — no chunk is read;
//! 2. the live side, on a local Chroma whose change feed can say
//!    (`chroma.persist_directory` set, the snapshot's [`ChangeMark`] taken
//!    on the target's own metadata segment): the segment's `(id, seq_id)`
//!    rows, read in pages from SQLite. A record written at or before the
//!    mark is as the snapshot holds it (unchanged, never read); one written
//!    after it is compared by id in the write phase. Elsewhere (or when the
//!    feed cannot be used: logged with its reason and counted), every
//!    record, read as a backup reads it ([`CollectionReader`]: ids listed
//!    first, then fetched by id in batches), digested with
//!    [`record_digest`]. Same digest: unchanged. A different digest is not
//!    proof of change (Chroma alters cosine vectors and float metadata by an
//!    ulp or two on each write), so such records are compared again below,
//!    field by field, with [`records_match`];
//! 3. the write phase: only the chunks holding a missing or differing
//!    record are read; missing records and those that do not match within
//!    the server's rounding are upserted, in batches of up to
//!    [`FETCH_BATCH`] records gathered across chunks;
//! 4. live records the snapshot does not have are deleted, unless
//!    `keep_extra`.
//!
//! Before anything is written, an incremental backup of the targets (the
//! restore point; on a local Chroma it reads only what changed since their
//! last snapshot) is taken, so a delta restore can be undone with
//! `restore RESTORE_POINT --mode replace`. Killed midway, the collection is
//! part snapshot, part before; running the same delta restore again
//! recomputes the difference and converges (each step is an upsert or a
//! delete of what still differs).
//!
//! Memory: the snapshot's ids, 16-byte digests and chunk numbers of the
//! records not (yet) found unchanged — the map shrinks as the live side is
//! read — and the ids of live records the snapshot lacks. Records
//! themselves are held one fetch batch at a time, and in the write phase at
//! most two chunks' records (the one being written and the next, read
//! ahead) plus one batch of live records.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::changes;
use super::chunks::ChunkStream;
use super::compare::{overwrite, records_match};
use super::manifest::{BackupType, ChangeMark, ChunkRef, CollectionSnapshot, Trigger};
use super::records::{record_digest, Record, RecordDigest};
use super::restore::{RestoreOptions, RestoreOutcome};
use super::source::{to_batch, to_records, CollectionReader, FETCH_BATCH};
use super::{BackupError, BackupManager, BackupRequest};
use crate::chroma::configuration::space_of;
use crate::chroma::local::{LocalChroma, Unusable};
use crate::chroma::{Collection, GetRequest, Include};
use crate::progress::{Event, Progress};

/// What a delta restore did to one collection (or, in a dry run, would do).
/// `compared` = `unchanged` + `missing` + `changed` + `deleted` + `kept_extra`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRestored {
    /// Its name in the snapshot.
    pub collection: String,
    pub target: String,
    /// Distinct ids looked at, on either side.
    pub compared: u64,
    /// In both, equal (by digest, or within the server's rounding).
    pub unchanged: u64,
    /// In the snapshot, not in the live collection: written.
    pub missing: u64,
    /// In both, different: written.
    pub changed: u64,
    /// Records upserted (`missing` + `changed` unless the collection was
    /// written meanwhile).
    pub written: u64,
    /// Live records the snapshot does not have, deleted.
    pub deleted: u64,
    /// Live records the snapshot does not have, kept (`keep_extra`).
    pub kept_extra: u64,
}

/// A snapshot record not yet found unchanged on the live side.
struct Wanted {
    digest: RecordDigest,
    /// Its chunk, as an index into the collection's `chunks`.
    chunk: u32,
    /// Found live with another digest, or written after the snapshot's
    /// change mark: compared field by field when written.
    differs: bool,
}

impl BackupManager {
    /// `restore --mode delta`: the checks, the restore point (not for a dry
    /// run), then each collection in turn.
    pub(super) async fn restore_delta(
        &self,
        snapshot: &str,
        selected: &[&CollectionSnapshot],
        opts: &RestoreOptions,
        recovered_swaps: Vec<String>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<RestoreOutcome, BackupError> {
        let live = self.store.list_collections().await?;
        let mut targets: Vec<(&CollectionSnapshot, Collection)> = Vec::new();
        for c in selected {
            let target = opts.as_name.as_deref().unwrap_or(&c.name);
            let Some(l) = live.iter().find(|l| l.name == target) else {
                return Err(BackupError::DeltaTargetMissing(target.to_string()));
            };
            let (want, have) = (
                space_of(&c.configuration_json),
                space_of(&l.configuration_json),
            );
            if want != have {
                return Err(BackupError::DeltaSpaceDiffers {
                    collection: c.name.clone(),
                    target: target.to_string(),
                    live: have.to_string(),
                    snapshot: want.to_string(),
                });
            }
            targets.push((c, l.clone()));
        }
        let restore_point = if opts.dry_run {
            None
        } else {
            Some(self.delta_restore_point(&targets, progress, cancel).await?)
        };
        let lease = if opts.dry_run {
            None
        } else {
            Some(self.lock(false, "restore").await?)
        };
        let mut results = Vec::new();
        let mut failed = None;
        for (c, live) in targets {
            match self
                .delta_collection(c, &live, opts, progress, cancel)
                .await
            {
                Ok(r) => results.push(r),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        if let Some(e) = failed {
            if let Some(id) = &restore_point {
                tracing::warn!(restore_point = %id, error = %e, "delta restore stopped; re-run it to converge, or restore the restore point with --mode replace to undo it");
            }
            return Err(e);
        }
        Ok(RestoreOutcome::Delta {
            snapshot: snapshot.to_string(),
            dry_run: opts.dry_run,
            restore_point,
            delta: results,
            recovered_swaps,
        })
    }

    /// An incremental backup of the targets as they are now (a complete
    /// snapshot of them that reuses their last snapshot's chunks); its id.
    async fn delta_restore_point(
        &self,
        targets: &[(&CollectionSnapshot, Collection)],
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<String, BackupError> {
        let names: Vec<String> = targets.iter().map(|(_, l)| l.name.clone()).collect();
        progress.send(Event::RestorePoint {
            collections: names.clone(),
        });
        let manifest = self
            .create(
                BackupRequest {
                    backup_type: BackupType::Incremental,
                    collections: names.clone(),
                    trigger: Trigger::Command,
                },
                progress,
                cancel,
            )
            .await?;
        tracing::info!(backup_id = %manifest.snapshot_id, collections = ?names, "restore point taken before a delta restore");
        Ok(manifest.snapshot_id.to_string())
    }

    /// One collection: compare, write what differs, delete what the
    /// snapshot lacks (see the module's docs).
    async fn delta_collection(
        &self,
        c: &CollectionSnapshot,
        live: &Collection,
        opts: &RestoreOptions,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<DeltaRestored, BackupError> {
        let mut wanted = self.snapshot_digests(c, cancel).await?;
        let mut out = DeltaRestored {
            collection: c.name.clone(),
            target: live.name.clone(),
            compared: wanted.len() as u64,
            unchanged: 0,
            missing: 0,
            changed: 0,
            written: 0,
            deleted: 0,
            kept_extra: 0,
        };

        // The live side: from the change feed where it can say, else every
        // record read and digested.
        // The snapshot's mark speaks of its own collection only: another one
        // (`--as`, or the collection re-created since) is read whole.
        let mark = c.change_mark.as_ref().filter(|_| c.id == live.id);
        let local = match mark {
            Some(_) => LocalChroma::configured(&self.config, self.store.metrics()).await,
            None => None,
        };
        let by_feed = match (&local, mark) {
            (Some(local), Some(mark)) => {
                match self
                    .compare_by_feed((local, mark), c, live, &mut wanted, progress, cancel)
                    .await?
                {
                    Ok(found) => Some(found),
                    Err(why) => {
                        why.report(
                            self.store.metrics(),
                            &live.name,
                            "delta restore compares every record",
                        );
                        // The pass may have taken unchanged records out.
                        wanted = self.snapshot_digests(c, cancel).await?;
                        None
                    }
                }
            }
            _ => None,
        };
        let (extra, unchanged) = match by_feed {
            Some(found) => found,
            None => {
                self.compare_all(c, live, &mut wanted, progress, cancel)
                    .await?
            }
        };
        out.unchanged += unchanged;
        out.compared += extra.len() as u64;

        // The write phase: only chunks that hold something to write.
        let mut pending = vec![0u64; c.chunks.len()];
        for w in wanted.values() {
            pending[w.chunk as usize] += 1;
        }
        let to_read: Vec<ChunkRef> = c
            .chunks
            .iter()
            .zip(&pending)
            .filter(|(_, n)| **n > 0)
            .map(|(chunk, _)| chunk.clone())
            .collect();
        let to_delete = if opts.keep_extra { 0 } else { extra.len() };
        let total = (wanted.len() + to_delete) as u64;
        let mut done = 0u64;
        let step = |done: u64| Event::DeltaWrite {
            collection: c.name.clone(),
            records_done: done,
            records_total: total,
        };
        progress.send(step(0));
        let cosine = space_of(&c.configuration_json) == "cosine";
        // Records to write gather across chunks (a small change touches a
        // few records in each of many chunks) and go in full batches.
        let mut chunks = ChunkStream::new(self.repo.clone(), &to_read);
        let mut part: Vec<Record> = Vec::with_capacity(FETCH_BATCH);
        loop {
            let next = chunks.next(cancel).await;
            let last = next.is_none();
            if let Some(next) = next {
                let (_, records) = next?;
                part.extend(records.into_iter().filter(|r| wanted.contains_key(&r.id)));
            }
            while part.len() >= FETCH_BATCH || (last && !part.is_empty()) {
                if cancel.is_cancelled() {
                    return Err(BackupError::Cancelled);
                }
                let rest = part.split_off(part.len().min(FETCH_BATCH));
                let batch = std::mem::replace(&mut part, rest);
                done += batch.len() as u64;
                let (write, clear) = self
                    .differing(&live.id, batch, &wanted, cosine, &mut out)
                    .await?;
                if opts.dry_run {
                    out.written += write.len() as u64;
                } else if !write.is_empty() {
                    if !clear.is_empty() {
                        self.store.delete(&live.id, Some(&clear), None).await?;
                    }
                    out.written += self.write_back(c, &live.id, write).await?;
                }
                progress.send(step(done));
            }
            if last {
                break;
            }
        }
        drop(wanted);

        if opts.keep_extra {
            out.kept_extra = extra.len() as u64;
        } else if opts.dry_run {
            out.deleted = extra.len() as u64;
        } else {
            for ids in extra.chunks(FETCH_BATCH) {
                if cancel.is_cancelled() {
                    return Err(BackupError::Cancelled);
                }
                self.store.delete(&live.id, Some(ids), None).await?;
                out.deleted += ids.len() as u64;
                done += ids.len() as u64;
                progress.send(step(done));
            }
        }

        if !opts.dry_run {
            let count = self.store.count(&live.id).await?;
            let expected = c.record_count + out.kept_extra;
            if count != expected {
                return Err(BackupError::DeltaIncomplete {
                    collection: c.name.clone(),
                    why: format!(
                        "{count} records after it, {expected} expected (the snapshot's {} and {} kept); was the collection written meanwhile?",
                        c.record_count, out.kept_extra
                    ),
                });
            }
        }
        Ok(out)
    }

    /// The live side from the change feed: `wanted` loses the records
    /// written at or before the snapshot's mark (unchanged), and those
    /// written after it are flagged to compare. Returns the live ids the
    /// snapshot lacks and how many were unchanged.
    async fn compare_by_feed(
        &self,
        (local, mark): (&LocalChroma, &ChangeMark),
        c: &CollectionSnapshot,
        live: &Collection,
        wanted: &mut HashMap<String, Wanted>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Result<(Vec<String>, u64), Unusable>, BackupError> {
        let now = match changes::after(local, &self.store, &live.id, mark).await? {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        let (mut extra, mut unchanged, mut done) = (Vec::new(), 0u64, 0u64);
        let mut rows = local.rows(&now.segment, None);
        loop {
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let page = match rows.next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(why) => return Ok(Err(why)),
            };
            done += page.len() as u64;
            for (id, seq) in page {
                if seq > mark.seq_id {
                    match wanted.get_mut(&id) {
                        Some(w) => w.differs = true,
                        None => extra.push(id),
                    }
                } else if wanted.remove(&id).is_some() {
                    unchanged += 1;
                } else {
                    return Ok(Err(Unusable::UnknownRecord {
                        id,
                        seq,
                        mark: mark.seq_id,
                    }));
                }
            }
            progress.send(Event::DeltaCompare {
                collection: c.name.clone(),
                records_done: done,
                records_total: now.records,
            });
        }
        tracing::info!(collection = %live.name, unchanged, written_since = wanted.values().filter(|w| w.differs).count(), since = mark.seq_id, "delta restore compared through the change feed");
        self.store.metrics().change_feed(None);
        Ok(Ok((extra, unchanged)))
    }

    /// The live side read whole: every live record fetched and digested;
    /// `wanted` loses those with the snapshot's digest and flags the others.
    /// Returns the live ids the snapshot lacks and how many were unchanged.
    async fn compare_all(
        &self,
        c: &CollectionSnapshot,
        live: &Collection,
        wanted: &mut HashMap<String, Wanted>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<(Vec<String>, u64), BackupError> {
        let mut reader = CollectionReader::open(self.store.clone(), live.clone()).await?;
        let listed = reader.listed() as u64;
        let (mut extra, mut unchanged) = (Vec::new(), 0u64);
        while let Some(batch) = reader.next_batch().await? {
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            for r in &batch {
                let digest = record_digest(r);
                let same = match wanted.get_mut(&r.id) {
                    None => {
                        extra.push(r.id.clone());
                        continue;
                    }
                    Some(w) => {
                        w.differs = w.digest != digest;
                        !w.differs
                    }
                };
                if same {
                    wanted.remove(&r.id);
                    unchanged += 1;
                }
            }
            progress.send(Event::DeltaCompare {
                collection: c.name.clone(),
                records_done: reader.position() as u64,
                records_total: listed,
            });
        }
        Ok((extra, unchanged))
    }

    /// The snapshot's live records of `c` as id → digest and chunk, from
    /// the chunk indexes alone.
    async fn snapshot_digests(
        &self,
        c: &CollectionSnapshot,
        cancel: &CancellationToken,
    ) -> Result<HashMap<String, Wanted>, BackupError> {
        let capacity = usize::try_from(c.record_count).unwrap_or(0);
        let mut wanted = HashMap::with_capacity(capacity);
        for (i, chunk) in c.chunks.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let number = u32::try_from(i).map_err(|_| {
                BackupError::Corrupt(format!(
                    "collection {:?} has more chunks than a delta restore handles",
                    c.name
                ))
            })?;
            let index = self.parent_index(chunk).await?;
            let excluded: HashSet<&str> = chunk.excluded_ids.iter().map(String::as_str).collect();
            for (id, digest) in index.entries {
                if !excluded.contains(id.as_str()) {
                    wanted.insert(
                        id,
                        Wanted {
                            digest,
                            chunk: number,
                            differs: false,
                        },
                    );
                }
            }
        }
        Ok(wanted)
    }

    /// Of `part` (snapshot records still wanted), those to write: the
    /// missing ones, and those whose live record does not match within the
    /// server's rounding (read again here, by id). Counts them in `out`.
    ///
    /// A changed record is written to overwrite the live one ([`overwrite`]);
    /// a live record holding a document or uri the snapshot's lacks is named
    /// in the second list, to delete before the upsert.
    async fn differing(
        &self,
        collection_id: &str,
        part: Vec<Record>,
        wanted: &HashMap<String, Wanted>,
        cosine: bool,
        out: &mut DeltaRestored,
    ) -> Result<(Vec<Record>, Vec<String>), BackupError> {
        let ids: Vec<String> = part
            .iter()
            .filter(|r| wanted.get(&r.id).is_some_and(|w| w.differs))
            .map(|r| r.id.clone())
            .collect();
        let live: HashMap<String, Record> = if ids.is_empty() {
            HashMap::new()
        } else {
            let got = self
                .store
                .get_records(collection_id, &GetRequest::ids(ids, &Include::RECORD))
                .await?;
            to_records(got)
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect()
        };
        let mut write = Vec::with_capacity(part.len());
        let mut clear = Vec::new();
        for mut r in part {
            match live.get(&r.id) {
                // Missing, or found differing at first and gone since.
                None => {
                    out.missing += 1;
                    write.push(r);
                }
                Some(l) if records_match(&r, l, cosine) => out.unchanged += 1,
                Some(l) => {
                    out.changed += 1;
                    if overwrite(&mut r, l) {
                        clear.push(r.id.clone());
                    }
                    write.push(r);
                }
            }
        }
        Ok((write, clear))
    }

    /// Upserts snapshot records into the live collection; returns how many.
    async fn write_back(
        &self,
        c: &CollectionSnapshot,
        collection_id: &str,
        records: Vec<Record>,
    ) -> Result<u64, BackupError> {
        let (batch, without) = to_batch(records);
        if !without.is_empty() {
            return Err(BackupError::DeltaIncomplete {
                collection: c.name.clone(),
                why: format!(
                    "{} records of the snapshot have no embedding and cannot be written back",
                    without.len()
                ),
            });
        }
        self.store.upsert(collection_id, &batch).await?;
        Ok(batch.len() as u64)
    }
}
