//! `BackupManager`: create, list, show, verify, restore, delete and prune
//! snapshots of Chroma collections in a repository.
//!
//! Streaming and bounded: records are read in batches by id, grouped into
//! chunks of a few MiB, encoded (zstd, AES-256-GCM) off the async threads
//! and uploaded a few at a time while the next batches are read. The
//! manifest is written last, so a backup that is cancelled, killed or fails
//! leaves no snapshot behind; its chunks are reused by the next one.
//!
//! What a backup holds in memory, whatever the collection's size:
//! - the id listing: nothing (it is in a temporary file, `source::IdList`);
//! - fetched batches: `READ_AHEAD` waiting, up to
//!   `source::FETCH_CONCURRENCY` being fetched, one being chunked, each
//!   about `source::FETCH_BATCH_BYTES` of records;
//! - the chunk being built: at most 4 × its 4 MiB target (plus the record
//!   that crosses it);
//! - chunks being encoded and uploaded: `UPLOAD_BYTES_IN_FLIGHT` of
//!   plaintext (one larger chunk goes alone), each with a buffer of about
//!   its compressed size;
//! - for an incremental, 16 bytes and a bit per live record of the parent
//!   (`manifest::IncrementalPlanner`), and the parent's manifest.
//!
//! Verify works one chunk at a time; restore holds at most two chunks'
//! records (the one being written or checked, and the next, read ahead).

use std::time::{Instant, SystemTime};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::changes::{self, ParentIds, ReadBy};
use super::chunks::read_chunk;
use super::lock::Lease;
use super::manifest::{
    BackupMetadata, BackupType, ChangeMark, ChunkDecision, ChunkRef, CollectionSnapshot,
    IncrementalPlanner, Manifest, SnapshotId, Trigger, DEFAULT_COMPACT_THRESHOLD, MANIFEST_FORMAT,
};
use super::records::{record_digest, ChunkIndex, ChunkPlanner, Record};
use super::repository::{index_key, snapshot_key};
use super::source::{CollectionReader, FETCH_CONCURRENCY};
use super::upload::Uploader;
use super::{BackupError, BackupManager};
use crate::chroma::local::{LocalChroma, Position, Sample, Unusable};
use crate::chroma::Collection;
use crate::progress::{Event, Progress};

/// Batches fetched ahead of the one being processed.
const READ_AHEAD: usize = 2;

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub backup_type: BackupType,
    /// For `Collection` (required) and `Incremental` (optional scope).
    pub collections: Vec<String>,
    pub trigger: Trigger,
}

/// A snapshot's creation time, to the millisecond: snapshots taken within
/// one second must still order by time (the newest is the incremental's
/// parent and what `keep_last` keeps), and their ids are random.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl BackupManager {
    /// Takes a snapshot. Nothing is recorded unless it completes.
    pub async fn create(
        &self,
        req: BackupRequest,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Manifest, BackupError> {
        let started = Instant::now();
        let lease = self
            .lock(
                false,
                &format!("{:?} backup", req.backup_type).to_lowercase(),
            )
            .await?;
        let local = LocalChroma::configured(&self.config, self.store.metrics()).await;
        // Beside a local Chroma, the backup's requests leave Chroma alone
        // while it writes (`chroma::courtesy`).
        let courteous = local.as_ref().map(|l| BackupManager {
            store: self.store.courteous(l),
            config: self.config.clone(),
            repo: self.repo.clone(),
        });
        // On the heap: the snapshot's future is large, and migrations hold
        // it inside their own (a restore point before a rebuild).
        let result = Box::pin(courteous.as_ref().unwrap_or(self).create_locked(
            &req,
            local.as_ref(),
            progress,
            cancel,
            &lease,
            started,
        ))
        .await;
        if let Some(courtesy) = courteous.as_ref().and_then(|m| m.store.courtesy()) {
            courtesy.log();
        }
        lease.release().await;
        result
    }

    async fn create_locked(
        &self,
        req: &BackupRequest,
        local: Option<&LocalChroma>,
        progress: &Progress,
        cancel: &CancellationToken,
        lease: &Lease,
        started: Instant,
    ) -> Result<Manifest, BackupError> {
        let collections = self.scope(req).await?;
        // Newest first. Each collection is planned against the newest
        // snapshot that holds it (the newest overall may be a collection
        // backup of another one); `parent` names the newest overall.
        // Physical snapshots hold no records to reuse.
        let earlier = if req.backup_type == BackupType::Incremental {
            let mut all = self.repo.manifests().await?;
            all.retain(|m| !m.is_physical());
            all
        } else {
            Vec::new()
        };
        let parent = earlier.first();
        let info = self.store.check_ready().await?;
        let snapshot_id = SnapshotId::generate()?;
        let mut written = 0u64;
        let mut snaps = Vec::new();
        for collection in collections {
            let newest = earlier
                .iter()
                .find_map(|p| p.collections.iter().find(|c| c.name == collection.name));
            let parent_col = earlier.iter().find_map(|p| {
                p.collections
                    .iter()
                    .find(|c| c.name == collection.name && c.id == collection.id)
            });
            if let Some(was) = newest.filter(|c| c.id != collection.id) {
                tracing::info!(collection = %collection.name, was = %was.id, now = %collection.id, "reading every record: the collection was re-created since the parent snapshot (its id changed)");
            }
            let sample = self.recall_sample(&snapshot_id, &collection);
            let (mut snap, bytes, drawn) = self
                .snapshot_collection(
                    collection.clone(),
                    parent_col,
                    local,
                    sample,
                    progress,
                    cancel,
                    lease,
                )
                .await?;
            // Recorded after the read, at one moment, over the whole
            // collection (also for an incremental): see `recall`.
            if cancel.is_cancelled() {
                return Err(BackupError::Cancelled);
            }
            let k = u64::try_from(self.config.backup.verify_k).unwrap_or(0);
            let lent = earlier
                .iter()
                .filter_map(|p| p.collections.iter().find(|c| c.name == collection.name))
                .filter_map(|c| same_records_as(&snap, Some(c)))
                .find_map(|c| c.queries.clone())
                .filter(|q| {
                    // As many queries as asked for now (or the whole
                    // collection), of the same k.
                    let wanted = (self.config.backup.verify_queries as u64).min(snap.record_count);
                    wanted > 0 && q.k == k && q.queries >= wanted
                });
            let (queries, queries_bytes) = match lent {
                // Exactly the records of an earlier snapshot (the parent,
                // or one before a snapshot taken without queries): its
                // recorded answers stand, and the live index is not asked
                // again.
                Some(q) => (Some(q), 0),
                None => {
                    // Read through the local Chroma's files: the sample's
                    // ids were drawn by the scan of the segment, or come
                    // from that segment.
                    let feed = local.zip(snap.change_mark.as_ref());
                    self.record_queries(&snapshot_id, &collection, feed, drawn)
                        .await?
                }
            };
            snap.queries = queries;
            written += bytes + queries_bytes;
            snaps.push(snap);
        }
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        let mut manifest = Manifest {
            format_version: MANIFEST_FORMAT,
            snapshot_id: snapshot_id.clone(),
            metadata: BackupMetadata {
                backup_id: snapshot_id.clone(),
                created_at: now_rfc3339(),
                backup_type: req.backup_type,
                collections: Vec::new(),
                size_bytes: 0,
                checksum: String::new(),
                chroma_version: format!("api {}", info.api_version),
            },
            parent: parent.map(|p| p.snapshot_id.clone()),
            host: crate::host::hostname(),
            trigger: req.trigger,
            duration_ms: 0,
            encrypted: self.repo.codec.is_encrypted(),
            bytes_written: 0,
            bytes_referenced: 0,
            collections: snaps,
            physical: None,
        };
        manifest.finalize();
        manifest.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let encoded = manifest.encode(&self.repo.codec)?;
        manifest.bytes_written = written + encoded.bytes.len() as u64;
        // bytes_written is part of the manifest itself: encode once more with it.
        let encoded = manifest.encode(&self.repo.codec)?;
        if lease.lost.is_cancelled() {
            return Err(BackupError::LockLost);
        }
        self.repo.put(&snapshot_key(&snapshot_id)?, encoded).await?;
        progress.send(Event::Done {
            snapshot: snapshot_id.to_string(),
            bytes_written: manifest.bytes_written,
        });
        Ok(manifest)
    }

    /// One collection: every record (full) or only what changed since the
    /// parent's copy of it (incremental). Returns the bytes written, and
    /// `sample` when a scan of the persist directory drew it.
    #[allow(clippy::too_many_arguments)]
    async fn snapshot_collection(
        &self,
        collection: Collection,
        parent: Option<&CollectionSnapshot>,
        local: Option<&LocalChroma>,
        sample: Option<Sample>,
        progress: &Progress,
        cancel: &CancellationToken,
        lease: &Lease,
    ) -> Result<(CollectionSnapshot, u64, Option<Sample>), BackupError> {
        let name = collection.name.clone();
        let span = tracing::info_span!("backup_collection", collection = %name);
        let _enter = span.enter();
        drop(_enter);
        // Where the change feed stands against the parent's mark, when it
        // may say what changed.
        let feed = self.feed_position(&collection, local, parent).await?;
        if let (Some(p), Some(mark), Some((_, now))) = (
            parent,
            parent.and_then(|p| p.change_mark.as_ref()),
            feed.as_ref(),
        ) {
            if changes::unchanged_since(mark, p.record_count, now) {
                // Not a record written since: the parent's chunks stand,
                // and neither they nor the segment are read.
                tracing::info!(collection = %name, changed = 0, unchanged = p.record_count, since = mark.seq_id, read = ReadBy::Nothing.as_str(), "reading only the records written since the parent snapshot");
                self.store.metrics().change_feed(None);
                let mark = changes::mark_of(now.clone());
                let snap = self.collection_snapshot(collection, p.chunks.clone(), Some(mark));
                return Ok((snap, 0, None));
            }
        }
        // The parent's live records, as digests (16 bytes each, whatever the
        // ids), and by id when the change feed may tell which are unchanged.
        let by_id = feed.is_some();
        let mut planner =
            parent.map(|p| IncrementalPlanner::new(p.record_count, DEFAULT_COMPACT_THRESHOLD));
        let mut parent_ids = parent
            .filter(|_| by_id)
            .map(|p| ParentIds::with_capacity(p.record_count));
        if let (Some(p), Some(planner)) = (parent, planner.as_mut()) {
            for chunk in &p.chunks {
                let index = self.parent_index(chunk).await?;
                planner.add_parent(chunk, &index);
                if let Some(ids) = parent_ids.as_mut() {
                    ids.add(chunk, &index);
                }
            }
        }
        let (reader, change_mark, drawn) = self
            .reader(
                &collection,
                local,
                parent,
                feed,
                parent_ids,
                planner.as_mut(),
                sample,
            )
            .await?;
        let total = reader.listed();
        // Read ahead: the next batches are fetched while this one is digested,
        // chunked and encoded, so Chroma and chromaprod work at the same time.
        // Batches are sized by bytes (`FETCH_BATCH_BYTES`) and fetched
        // `FETCH_CONCURRENCY` at a time, so this holds at most
        // READ_AHEAD + FETCH_CONCURRENCY + 1 batches' worth.
        let (batches_tx, mut batches) = tokio::sync::mpsc::channel(READ_AHEAD);
        let read_ahead = tokio::spawn(reader.send_all(FETCH_CONCURRENCY, batches_tx));
        let _stop_reading = AbortOnDrop(read_ahead);
        let mut uploader = Uploader::new(self.repo.clone());
        let mut chunker = ChunkPlanner::default();
        let mut nan_vectors = 0u64;
        let mut done = 0usize;
        let stop = |uploader: &mut Uploader| {
            let why = if cancel.is_cancelled() {
                Some(BackupError::Cancelled)
            } else if lease.lost.is_cancelled() {
                Some(BackupError::LockLost)
            } else {
                None
            };
            if why.is_some() {
                uploader.abort();
            }
            why
        };
        while let Some(batch) = batches.recv().await {
            let batch = batch?;
            if let Some(e) = stop(&mut uploader) {
                return Err(e);
            }
            done += batch.len();
            for record in batch {
                if record
                    .embedding
                    .as_ref()
                    .is_some_and(|e| e.iter().any(|x| x.is_nan()))
                {
                    nan_vectors += 1;
                }
                if let Some(planner) = planner.as_mut() {
                    if planner.unchanged(&record_digest(&record)) {
                        continue; // stays in its parent chunk
                    }
                }
                if let Some(chunk) = chunker.push(&record)? {
                    uploader.submit(chunk).await?;
                }
            }
            progress.send(Event::Backup {
                collection: name.clone(),
                records_done: done as u64,
                records_total: total as u64,
                bytes_written: uploader.written,
            });
        }
        if nan_vectors > 0 {
            tracing::warn!(collection = %name, nan_vectors, "Chroma returned vectors containing NaN; they are stored as returned");
        }

        // The parent's chunks: kept with new exclusions, dropped, or
        // compacted (their still-current records written again).
        let mut chunks: Vec<ChunkRef> = Vec::new();
        if let (Some(p), Some(planner)) = (parent, planner.as_mut()) {
            for chunk in &p.chunks {
                if let Some(e) = stop(&mut uploader) {
                    return Err(e);
                }
                match planner.decide(chunk, &self.parent_index(chunk).await?) {
                    ChunkDecision::Keep(k) => chunks.push(k.chunk),
                    ChunkDecision::Drop { .. } => {}
                    ChunkDecision::Compact { rewrite, .. } => {
                        for r in self.chunk_records(chunk).await? {
                            if rewrite.contains(&record_digest(&r)) {
                                if let Some(c) = chunker.push(&r)? {
                                    uploader.submit(c).await?;
                                }
                            }
                        }
                    }
                }
            }
        }
        drop(planner);
        if let Some(c) = chunker.finish() {
            uploader.submit(c).await?;
        }
        let (new_refs, bytes) = uploader.finish().await?;
        chunks.extend(new_refs);
        Ok((
            self.collection_snapshot(collection, chunks, change_mark),
            bytes,
            drawn,
        ))
    }

    /// A collection's entry in a manifest: the live collection's metadata
    /// and configuration with `chunks` (the recall queries come later).
    fn collection_snapshot(
        &self,
        collection: Collection,
        chunks: Vec<ChunkRef>,
        change_mark: Option<ChangeMark>,
    ) -> CollectionSnapshot {
        let record_count = chunks.iter().map(ChunkRef::live_records).sum();
        CollectionSnapshot {
            name: collection.name,
            id: collection.id,
            tenant: self.config.chroma.tenant.clone(),
            database: self.config.chroma.database.clone(),
            metadata: collection.metadata.map(Value::Object),
            configuration_json: collection.configuration_json,
            schema: collection.schema,
            record_count,
            chunks,
            change_mark,
            queries: None,
        }
    }

    /// The segment's position now, checked against the parent's change
    /// mark ([`changes::after`]), when there is a local Chroma and a mark;
    /// `Some((local, position))` when the feed can say what changed. A
    /// position that cannot be trusted is logged with its reason and
    /// counted, and the collection is read whole.
    async fn feed_position<'l>(
        &self,
        collection: &Collection,
        local: Option<&'l LocalChroma>,
        parent: Option<&CollectionSnapshot>,
    ) -> Result<Option<(&'l LocalChroma, Position)>, BackupError> {
        let (Some(local), Some(mark)) = (local, parent.and_then(|p| p.change_mark.as_ref())) else {
            return Ok(None);
        };
        match changes::after(local, &self.store, &collection.id, mark).await? {
            Ok(now) => Ok(Some((local, now))),
            Err(why) => {
                why.report(
                    self.store.metrics(),
                    &collection.name,
                    "reading every record",
                );
                Ok(None)
            }
        }
    }

    /// What to read of a collection, and the change mark this snapshot
    /// records for it: only the records written since the parent's mark
    /// when the local change feed can say (`changes::since`, which marks
    /// the unchanged ones in `planner` and offers every row to `sample`),
    /// else every record (a fallback is logged with its reason and
    /// counted). The sample is returned when the scan drew it.
    #[allow(clippy::too_many_arguments)]
    async fn reader(
        &self,
        collection: &Collection,
        local: Option<&LocalChroma>,
        parent: Option<&CollectionSnapshot>,
        feed: Option<(&LocalChroma, Position)>,
        parent_ids: Option<ParentIds>,
        planner: Option<&mut IncrementalPlanner>,
        sample: Option<Sample>,
    ) -> Result<(CollectionReader, Option<ChangeMark>, Option<Sample>), BackupError> {
        let metrics = self.store.metrics();
        let fallback =
            |why: &Unusable| why.report(metrics, &collection.name, "reading every record");
        let parent_mark = parent.and_then(|p| p.change_mark.as_ref());
        if let (Some((feed, now)), Some(mark), Some(ids), Some(planner)) =
            (feed, parent_mark, parent_ids, planner)
        {
            match changes::since(feed, now, mark, ids, planner, sample).await? {
                Ok(changed) => {
                    tracing::info!(collection = %collection.name, changed = changed.changed.len(), unchanged = changed.unchanged, since = mark.seq_id, read = changed.read.as_str(), "reading only the records written since the parent snapshot");
                    metrics.change_feed(None);
                    let reader = CollectionReader::from_ids(
                        self.store.clone(),
                        collection.clone(),
                        changed.changed,
                    );
                    return Ok((reader, Some(changed.mark), changed.sample));
                }
                Err(why) => {
                    planner.reset_seen();
                    fallback(&why);
                }
            }
        }
        // The mark is read before the listing: every record written at or
        // before it is in the listing.
        if local.is_some() && parent.is_some() && parent_mark.is_none() {
            tracing::info!(collection = %collection.name, "reading every record once: the parent snapshot has no change mark");
            metrics.change_feed(Some("no_mark"));
        }
        // The ids come from the persist directory too when it can be read:
        // listing them costs the server nothing.
        if let Some(local) = local {
            match changes::position(local, &self.store, &collection.id).await? {
                Ok(p) => match changes::list_all(local, &p.segment).await? {
                    Ok(ids) => {
                        let reader =
                            CollectionReader::from_ids(self.store.clone(), collection.clone(), ids);
                        return Ok((reader, Some(changes::mark_of(p)), None));
                    }
                    Err(why) => fallback(&why),
                },
                Err(why) => fallback(&why),
            }
        }
        let reader = CollectionReader::open(self.store.clone(), collection.clone()).await?;
        Ok((reader, None, None))
    }

    /// A parent chunk's index, read and checked (also what a diff reads).
    pub(super) async fn parent_index(&self, chunk: &ChunkRef) -> Result<ChunkIndex, BackupError> {
        let bytes = self
            .repo
            .get(&index_key(&chunk.index_id)?, chunk.index_stored_size)
            .await?;
        chunk
            .read_index(&bytes, &self.repo.codec)
            .map_err(|e| BackupError::BadObject {
                object: format!("index/{}", chunk.index_id),
                why: e.to_string(),
            })
    }

    /// A chunk's live records, read, checked and decoded off the async threads.
    async fn chunk_records(&self, chunk: &ChunkRef) -> Result<Vec<Record>, BackupError> {
        read_chunk(self.repo.clone(), chunk.clone()).await
    }
}

/// `parent`, when `snap` holds exactly its records (the same collection,
/// the same chunks masked the same way): nothing in it changed between the
/// two.
fn same_records_as<'a>(
    snap: &CollectionSnapshot,
    parent: Option<&'a CollectionSnapshot>,
) -> Option<&'a CollectionSnapshot> {
    parent.filter(|p| {
        p.id == snap.id && p.record_count == snap.record_count && p.chunks == snap.chunks
    })
}

/// Aborts a background task when the owner goes away (cancel, error).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
