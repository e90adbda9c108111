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
//! - fetched batches: `READ_AHEAD` waiting, one being fetched, one being
//!   chunked, each about `source::FETCH_BATCH_BYTES` of records;
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::chunks::{read_chunk, ChunkStream};
use super::compare::records_match;
use super::crypto::MasterKey;
use super::format::{self, ObjectKind};
use super::lock::Lease;
use super::manifest::{
    BackupMetadata, BackupType, ChunkDecision, ChunkRef, CollectionSnapshot, IncrementalPlanner,
    Manifest, SnapshotId, Trigger, DEFAULT_COMPACT_THRESHOLD, MANIFEST_FORMAT,
};
use super::pin;
use super::records::{record_digest, ChunkIndex, ChunkPlanner, PlannedChunk, Record};
use super::repository::{chunk_key, index_key, snapshot_key, Repository};
use super::source::{to_batch, CollectionReader, FETCH_BATCH};
use super::BackupError;
use crate::chroma::configuration::{creatable_configuration, space_of};
use crate::chroma::swap::{self, SwapEntry, JOURNAL_COLLECTION};
use crate::chroma::{
    Collection, CreateCollection, GetRequest, Include, ModifyCollection, ProductionChromaStore,
};
use crate::config::Config;
use crate::progress::{Event, Progress};
use crate::schedule::{select, RetentionPolicy, SnapshotInfo};
use crate::storage::StorageOptions;

/// Chunk uploads in flight at once, at most.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Plaintext bytes of the chunks being encoded or uploaded at once, at most
/// (one chunk larger than this goes alone). A chunk in flight holds its
/// plaintext and one buffer of about its compressed size, so this bounds
/// the uploads' memory to about twice as much, whatever the chunk sizes.
const UPLOAD_BYTES_IN_FLIGHT: usize = 16 * 1024 * 1024;
/// Batches fetched ahead of the one being processed.
const READ_AHEAD: usize = 2;
/// How long a backup waits for a conflicting lock (a prune) before failing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub backup_type: BackupType,
    /// For `Collection` (required) and `Incremental` (optional scope).
    pub collections: Vec<String>,
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Refuse when the target collection exists.
    #[default]
    FailIfExists,
    /// Swap the restored collection in; the previous one is dropped after
    /// the swap succeeded (or kept with `keep_previous`).
    Replace,
}

/// What to restore and how; the default restores every collection of the
/// snapshot under its own name, refusing names that exist.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Collections of the snapshot to restore (empty: all).
    pub collections: Vec<String>,
    /// New name (one collection only).
    pub as_name: Option<String>,
    pub mode: RestoreMode,
    pub dry_run: bool,
    pub keep_previous: bool,
}

impl RestoreOptions {
    /// One collection under a new name, refused if that name exists
    /// (`chromaprod restore ID --collection NAME --as NEW_NAME`).
    pub fn copy_as(collection: &str, new_name: &str) -> Self {
        RestoreOptions {
            collections: vec![collection.to_string()],
            as_name: Some(new_name.to_string()),
            ..Self::default()
        }
    }
}

/// The result of a verify.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub snapshot: String,
    pub objects_checked: u64,
    pub bytes_read: u64,
    pub records: u64,
    pub full: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots_kept: Vec<String>,
    pub snapshots_deleted: Vec<String>,
    pub objects_deleted: u64,
    pub bytes_freed: u64,
}

/// One snapshot in `chromaprod backups list`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    #[serde(flatten)]
    pub metadata: BackupMetadata,
    pub parent: Option<SnapshotId>,
    pub records: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
    pub encrypted: bool,
    pub trigger: Trigger,
}

pub struct BackupManager {
    store: ProductionChromaStore,
    config: Arc<Config>,
    pub repo: Repository,
}

/// Loads the key when `backup.encrypt` is set: the configured file, else the
/// `backup-key` systemd credential. A missing or unreadable key is an error,
/// never a reason to write plaintext.
pub fn load_key(config: &Config) -> Result<Option<MasterKey>, BackupError> {
    if !config.backup.encrypt {
        return Ok(None);
    }
    Ok(Some(match &config.backup.key_file {
        Some(path) => MasterKey::from_file(path)?,
        None => MasterKey::from_credential("backup-key")?,
    }))
}

/// A snapshot's creation time, to the millisecond: snapshots taken within
/// one second must still order by time (the newest is the incremental's
/// parent and what `keep_last` keeps), and their ids are random.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

/// Whether a collection is in a full backup's scope.
/// The swap journal (`chroma::swap`) never is: it describes this database's
/// swaps in progress, not a restored one's.
pub fn in_scope(config: &Config, name: &str) -> bool {
    name != JOURNAL_COLLECTION
        && config.backup.include.iter().any(|p| glob(p, name))
        && !config.backup.exclude.iter().any(|p| glob(p, name))
}

impl BackupManager {
    /// Opens (creating if `create`) the configured repository, checked
    /// against the repository id pinned in the state directory: once pinned,
    /// a repository is never created again at that location, and one with
    /// another id is refused (`pin.rs`).
    pub async fn open(
        store: ProductionChromaStore,
        config: Arc<Config>,
        create: bool,
    ) -> Result<Self, BackupError> {
        let key = load_key(&config)?;
        let url = &config.backup.storage_path;
        let backend = crate::storage::open(url, &StorageOptions::default())?;
        let location = backend.describe();
        let state_dir = &config.daemon.state_dir;
        let pinned = pin::read(state_dir, &location);
        let opened =
            Repository::open_on(backend, url, key.as_ref(), create && pinned.is_none()).await;
        let repo = match (opened, &pinned) {
            (Err(BackupError::NoRepository { .. }), Some((pin, file))) => {
                return Err(BackupError::RepositoryGone {
                    location,
                    pinned: pin.repository_id.clone(),
                    pin_file: file.display().to_string(),
                })
            }
            (opened, _) => opened?,
        };
        match pinned {
            Some((pin, file)) if pin.repository_id != repo.config.repository_id => {
                return Err(BackupError::RepositoryChanged {
                    location,
                    found: repo.config.repository_id.clone(),
                    pinned: pin.repository_id,
                    pin_file: file.display().to_string(),
                });
            }
            Some(_) => {}
            None => match pin::write(state_dir, &location, &repo.config.repository_id) {
                Ok(file) => {
                    tracing::info!(location = %location, repository = %repo.config.repository_id, file = %file.display(), "pinned the backup repository")
                }
                Err(e) => tracing::debug!(error = %e, "the backup repository was not pinned"),
            },
        }
        Ok(BackupManager {
            store,
            config,
            repo,
        })
    }

    pub fn with_repository(
        store: ProductionChromaStore,
        config: Arc<Config>,
        repo: Repository,
    ) -> Self {
        BackupManager {
            store,
            config,
            repo,
        }
    }

    pub fn store(&self) -> &ProductionChromaStore {
        &self.store
    }

    async fn lock(&self, exclusive: bool, purpose: &str) -> Result<Lease, BackupError> {
        Lease::acquire(
            &self.repo,
            exclusive,
            purpose,
            self.config.backup.lock_ttl,
            LOCK_WAIT,
        )
        .await
    }

    /// The collections a request covers, as Chroma describes them now.
    async fn scope(&self, req: &BackupRequest) -> Result<Vec<Collection>, BackupError> {
        let all = self.store.list_collections().await?;
        if req.collections.is_empty() {
            if req.backup_type == BackupType::Collection {
                return Err(BackupError::Invalid(
                    "a collection backup needs --collection NAME".into(),
                ));
            }
            return Ok(all
                .into_iter()
                .filter(|c| in_scope(&self.config, &c.name))
                .collect());
        }
        let mut out = Vec::new();
        for name in &req.collections {
            match all.iter().find(|c| &c.name == name) {
                Some(c) => out.push(c.clone()),
                None => return Err(BackupError::NoCollection(name.clone())),
            }
        }
        Ok(out)
    }

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
        let result = self
            .create_locked(&req, progress, cancel, &lease, started)
            .await;
        lease.release().await;
        result
    }

    async fn create_locked(
        &self,
        req: &BackupRequest,
        progress: &Progress,
        cancel: &CancellationToken,
        lease: &Lease,
        started: Instant,
    ) -> Result<Manifest, BackupError> {
        let collections = self.scope(req).await?;
        // Newest first. Each collection is planned against the newest
        // snapshot that holds it (the newest overall may be a collection
        // backup of another one); `parent` names the newest overall.
        let earlier = if req.backup_type == BackupType::Incremental {
            self.repo.manifests().await?
        } else {
            Vec::new()
        };
        let parent = earlier.first();
        let info = self.store.check_ready().await?;
        let snapshot_id = SnapshotId::generate()?;
        let mut written = 0u64;
        let mut snaps = Vec::new();
        for collection in collections {
            let parent_col = earlier.iter().find_map(|p| {
                p.collections
                    .iter()
                    .find(|c| c.name == collection.name && c.id == collection.id)
            });
            let (snap, bytes) = self
                .snapshot_collection(collection, parent_col, progress, cancel, lease)
                .await?;
            written += bytes;
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
    /// parent's copy of it (incremental). Returns the bytes written.
    async fn snapshot_collection(
        &self,
        collection: Collection,
        parent: Option<&CollectionSnapshot>,
        progress: &Progress,
        cancel: &CancellationToken,
        lease: &Lease,
    ) -> Result<(CollectionSnapshot, u64), BackupError> {
        let name = collection.name.clone();
        let span = tracing::info_span!("backup_collection", collection = %name);
        let _enter = span.enter();
        drop(_enter);
        // The parent's live records, as digests (16 bytes each, whatever the ids).
        let mut planner =
            parent.map(|p| IncrementalPlanner::new(p.record_count, DEFAULT_COMPACT_THRESHOLD));
        if let (Some(p), Some(planner)) = (parent, planner.as_mut()) {
            for chunk in &p.chunks {
                planner.add_parent(chunk, &self.parent_index(chunk).await?);
            }
        }

        let mut reader = CollectionReader::open(self.store.clone(), collection.clone()).await?;
        let total = reader.listed();
        // Read ahead: the next batches are fetched while this one is digested,
        // chunked and encoded, so Chroma and chromaprod work at the same time.
        // Batches are sized by bytes (`FETCH_BATCH_BYTES`), so this holds at
        // most READ_AHEAD + 2 batches' worth.
        let (batches_tx, mut batches) = tokio::sync::mpsc::channel(READ_AHEAD);
        let read_ahead = tokio::spawn(async move {
            loop {
                let next = reader.next_batch().await.transpose();
                let Some(batch) = next else { break };
                if batches_tx.send(batch).await.is_err() {
                    break;
                }
            }
        });
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
        let record_count = chunks.iter().map(ChunkRef::live_records).sum();
        Ok((
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
            },
            bytes,
        ))
    }

    /// A parent chunk's index, read and checked.
    async fn parent_index(&self, chunk: &ChunkRef) -> Result<ChunkIndex, BackupError> {
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

    pub async fn list(&self) -> Result<Vec<SnapshotSummary>, BackupError> {
        Ok(self
            .repo
            .manifests()
            .await?
            .into_iter()
            .map(|m| SnapshotSummary {
                records: m.collections.iter().map(|c| c.record_count).sum(),
                parent: m.parent,
                bytes_written: m.bytes_written,
                duration_ms: m.duration_ms,
                encrypted: m.encrypted,
                trigger: m.trigger,
                metadata: m.metadata,
            })
            .collect())
    }

    pub async fn show(&self, id: &str) -> Result<Manifest, BackupError> {
        self.repo.manifest(&SnapshotId::parse(id)?).await
    }

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
                        match self.repo.backend().head(key).await? {
                            None => {
                                return Err(BackupError::MissingObject(key.as_str().to_string()))
                            }
                            Some(meta) if meta.size != size => {
                                return Err(BackupError::BadObject {
                                    object: key.as_str().to_string(),
                                    why: format!(
                                        "{} bytes stored, {size} expected (truncated or replaced)",
                                        meta.size
                                    ),
                                })
                            }
                            Some(_) => {}
                        }
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
        }
        Ok(report)
    }

    /// Restores collections of a snapshot: into a staging collection first,
    /// verified, then swapped in by renaming. The target is untouched until
    /// the swap, and the previous collection is kept until the swap succeeded.
    pub async fn restore(
        &self,
        id: &str,
        opts: &RestoreOptions,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let manifest = self.show(id).await?;
        let selected: Vec<&CollectionSnapshot> = if opts.collections.is_empty() {
            manifest.collections.iter().collect()
        } else {
            let mut v = Vec::new();
            for name in &opts.collections {
                v.push(
                    manifest
                        .collections
                        .iter()
                        .find(|c| &c.name == name)
                        .ok_or_else(|| {
                            BackupError::Invalid(format!(
                                "snapshot {id} holds no collection {name:?}"
                            ))
                        })?,
                );
            }
            v
        };
        if opts.as_name.is_some() && selected.len() != 1 {
            return Err(BackupError::Invalid(
                "--as needs exactly one collection (use --collection)".into(),
            ));
        }
        if selected
            .iter()
            .any(|c| opts.as_name.as_deref().unwrap_or(&c.name) == JOURNAL_COLLECTION)
        {
            return Err(BackupError::Invalid(format!(
                "{JOURNAL_COLLECTION:?} is chromaprod's swap journal; restore it under another name with --as"
            )));
        }
        // A swap on this Chroma interrupted by a crash is finished first, so
        // the target names below are what they should be (a dry run changes
        // nothing).
        let recovered = if opts.dry_run {
            Vec::new()
        } else {
            swap::recover(&self.store).await?
        };
        for r in &recovered {
            tracing::warn!(collection = %r.entry.target, resolution = ?r.resolution, "{r}");
        }
        let existing: HashSet<String> = self
            .store
            .list_collections()
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        let mut plan = Vec::new();
        for c in &selected {
            let target = opts.as_name.clone().unwrap_or_else(|| c.name.clone());
            let exists = existing.contains(&target);
            if exists && opts.mode == RestoreMode::FailIfExists {
                return Err(BackupError::TargetExists(target));
            }
            plan.push(json!({"collection": c.name, "target": target, "records": c.record_count, "replaces_existing": exists}));
        }
        if opts.dry_run {
            return Ok(json!({"snapshot": id, "dry_run": true, "plan": plan}));
        }
        let lease = self.lock(false, "restore").await?;
        let mut results = Vec::new();
        for c in selected {
            let target = opts.as_name.clone().unwrap_or_else(|| c.name.clone());
            let r = self
                .restore_collection(
                    &manifest.snapshot_id,
                    c,
                    &target,
                    existing.contains(&target),
                    opts.keep_previous,
                    progress,
                    cancel,
                )
                .await;
            match r {
                Ok(v) => results.push(v),
                Err(e) => {
                    lease.release().await;
                    return Err(e);
                }
            }
        }
        lease.release().await;
        let mut out = json!({"snapshot": id, "restored": results});
        if !recovered.is_empty() {
            out["recovered_swaps"] = json!(recovered
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>());
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_collection(
        &self,
        snapshot: &SnapshotId,
        c: &CollectionSnapshot,
        target: &str,
        target_exists: bool,
        keep_previous: bool,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<Value, BackupError> {
        let staging = format!("{target}-restore-{snapshot}");
        // A staging collection left by an interrupted restore is ours to replace.
        match self.store.delete_collection(&staging).await {
            Ok(()) | Err(crate::chroma::ChromaError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let created = self
            .store
            .create_collection(&CreateCollection {
                name: staging.clone(),
                metadata: c.metadata.clone().and_then(|m| m.as_object().cloned()),
                configuration: Some(creatable_configuration(&c.configuration_json)),
                get_or_create: false,
            })
            .await?;
        let cosine = space_of(&c.configuration_json) == "cosine";
        let outcome = self
            .fill_and_check(c, &created.id, cosine, progress, cancel)
            .await;
        if let Err(e) = outcome {
            let _ = self.store.delete_collection(&staging).await;
            return Err(e);
        }
        // Swap names: target → previous, staging → target, journaled so a
        // crash between the renames is finished at the next start.
        let previous = format!("{target}-pre-restore-{snapshot}");
        if target_exists {
            let old = self.store.get_collection(target).await?;
            let entry = SwapEntry::new(
                "restore",
                target,
                &previous,
                &staging,
                &old.id,
                &created.id,
                !keep_previous,
            );
            swap::swap(&self.store, &entry).await?;
        } else {
            // One rename: the data is under `staging` or `target`, never elsewhere.
            self.store
                .modify_collection(
                    &created.id,
                    &ModifyCollection {
                        new_name: Some(target.to_string()),
                        ..Default::default()
                    },
                )
                .await?;
        }
        Ok(json!({
            "collection": c.name, "target": target, "records": c.record_count,
            "previous": (target_exists && keep_previous).then_some(previous),
        }))
    }

    /// Loads every chunk of `c` into `collection_id`, then reads the
    /// collection back and compares it, record by record, with the chunks
    /// read again from the repository.
    ///
    /// The two passes are separate on purpose: a read between writes slows
    /// Chroma's next write (by 4 % of the write time, measured), while a
    /// pass of reads alone can send two at once (Chroma answers a `get` on
    /// one thread, so the second uses another core: 30 % faster, measured).
    async fn fill_and_check(
        &self,
        c: &CollectionSnapshot,
        collection_id: &str,
        cosine: bool,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<(), BackupError> {
        let mut done = 0u64;
        let mut chunks = ChunkStream::new(self.repo.clone(), &c.chunks);
        while let Some(next) = chunks.next(cancel).await {
            let (_, records) = next?;
            let (batch, without) = to_batch(records);
            if !without.is_empty() {
                return Err(BackupError::RestoreMismatch {
                    collection: c.name.clone(),
                    why: format!(
                        "{} records have no embedding and cannot be written back",
                        without.len()
                    ),
                });
            }
            if !batch.is_empty() {
                // The staging collection is new, so add (a retried add
                // changes nothing; see `add_all` for add against upsert).
                self.store.add_all(collection_id, &batch).await?;
            }
            done += batch.len() as u64;
            progress.send(Event::Restore {
                collection: c.name.clone(),
                records_done: done,
                records_total: c.record_count,
            });
        }
        let mut checked = 0u64;
        let mut chunks = ChunkStream::new(self.repo.clone(), &c.chunks);
        while let Some(next) = chunks.next(cancel).await {
            let (chunk, expected) = next?;
            let by_id: HashMap<&str, &Record> =
                expected.iter().map(|r| (r.id.as_str(), r)).collect();
            let check = |part| self.check_restored(c, collection_id, chunk, part, &by_id, cosine);
            let mut parts = expected.chunks(FETCH_BATCH);
            while let Some(a) = parts.next() {
                match parts.next() {
                    Some(b) => {
                        tokio::try_join!(check(a), check(b))?;
                    }
                    None => check(a).await?,
                }
            }
            checked += expected.len() as u64;
            progress.send(Event::RestoreVerify {
                collection: c.name.clone(),
                records_done: checked,
                records_total: c.record_count,
            });
        }
        let count = self.store.count(collection_id).await?;
        if count != c.record_count {
            return Err(BackupError::RestoreMismatch {
                collection: c.name.clone(),
                why: format!(
                    "{count} records after restore, {} in the snapshot",
                    c.record_count
                ),
            });
        }
        Ok(())
    }

    /// Reads `part` of a chunk back from the restored collection and
    /// compares each record with the backup's (`by_id`).
    async fn check_restored(
        &self,
        c: &CollectionSnapshot,
        collection_id: &str,
        chunk: &ChunkRef,
        part: &[Record],
        by_id: &HashMap<&str, &Record>,
        cosine: bool,
    ) -> Result<(), BackupError> {
        let ids: Vec<String> = part.iter().map(|r| r.id.clone()).collect();
        let got = self
            .store
            .get_records(collection_id, &GetRequest::ids(ids, &Include::RECORD))
            .await?;
        let got = super::source::to_records(got);
        if got.len() != part.len() {
            return Err(BackupError::RestoreMismatch {
                collection: c.name.clone(),
                why: format!(
                    "{} of {} records of chunk {} are missing after upsert",
                    part.len() - got.len(),
                    part.len(),
                    chunk.id
                ),
            });
        }
        match got.iter().find(|r| {
            !by_id
                .get(r.id.as_str())
                .is_some_and(|want| records_match(want, r, cosine))
        }) {
            Some(r) => Err(BackupError::RestoreMismatch {
                collection: c.name.clone(),
                why: format!(
                    "record {:?} differs from the backup beyond the server's rounding",
                    r.id
                ),
            }),
            None => Ok(()),
        }
    }

    /// Removes a snapshot's manifest (its chunks go at the next prune).
    pub async fn delete(&self, id: &str) -> Result<(), BackupError> {
        let id = SnapshotId::parse(id)?;
        let _ = self.repo.manifest(&id).await?;
        let lease = self.lock(true, "delete").await?;
        let r = self.repo.delete(&snapshot_key(&id)?).await;
        lease.release().await;
        r
    }

    /// Applies retention, then deletes chunks and indexes no remaining
    /// snapshot references. Holds the exclusive lock, so no backup runs meanwhile.
    pub async fn prune(&self, dry_run: bool) -> Result<PruneReport, BackupError> {
        let lease = self.lock(true, "prune").await?;
        let r = self.prune_locked(dry_run).await;
        lease.release().await;
        r
    }

    async fn prune_locked(&self, dry_run: bool) -> Result<PruneReport, BackupError> {
        let manifests = self.repo.manifests().await?;
        let infos: Vec<SnapshotInfo> = manifests
            .iter()
            .map(|m| SnapshotInfo {
                id: m.snapshot_id.to_string(),
                created_at_ms: humantime::parse_rfc3339(&m.metadata.created_at)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            })
            .collect();
        let now = i64::try_from(crate::host::now_ms()).unwrap_or(i64::MAX);
        let offset = crate::config::parse_utc_offset(&self.config.backup.timezone).unwrap_or(0);
        let decisions = select(
            &infos,
            &RetentionPolicy::from(&self.config.backup),
            now,
            offset,
        );
        let keep: HashSet<String> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.clone())
            .collect();
        let mut referenced: HashSet<String> = HashSet::new();
        for m in manifests
            .iter()
            .filter(|m| keep.contains(m.snapshot_id.as_str()))
        {
            for c in &m.collections {
                for r in &c.chunks {
                    referenced.insert(format!("chunks/{}/{}", &r.id[..2], r.id));
                    referenced.insert(format!("index/{}/{}", &r.index_id[..2], r.index_id));
                }
            }
        }
        let mut report = PruneReport {
            dry_run,
            snapshots_kept: decisions
                .iter()
                .filter(|d| d.keep)
                .map(|d| d.id.clone())
                .collect(),
            snapshots_deleted: decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.id.clone())
                .collect(),
            objects_deleted: 0,
            bytes_freed: 0,
        };
        let mut doomed = Vec::new();
        for prefix in ["chunks", "index"] {
            for meta in self.repo.list(prefix).await? {
                if !referenced.contains(meta.key.as_str()) {
                    report.objects_deleted += 1;
                    report.bytes_freed += meta.size;
                    doomed.push(meta.key);
                }
            }
        }
        if dry_run {
            return Ok(report);
        }
        // Manifests first: a crash in between leaves unreferenced chunks, never a snapshot without them.
        for id in &report.snapshots_deleted {
            self.repo
                .delete(&snapshot_key(&SnapshotId::parse(id)?)?)
                .await?;
        }
        for key in doomed {
            self.repo.delete(&key).await?;
        }
        Ok(report)
    }
}

/// Aborts a background task when the owner goes away (cancel, error).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Encodes chunks off the async threads and uploads a few at a time.
///
/// Content addresses are computed from the plaintext, so an object that is
/// already stored (by an earlier or an interrupted backup) is not uploaded
/// again. Its stored bytes may differ from a fresh encoding (a new nonce), so
/// the reference records what is actually stored: the existing object is
/// read, checked, and its own checksum and size are used.
struct Uploader {
    repo: Repository,
    tasks: JoinSet<Result<(usize, ChunkRef, u64, usize), BackupError>>,
    done: Vec<(usize, ChunkRef)>,
    next: usize,
    written: u64,
    /// Plaintext bytes of the chunks in flight now, and at most so far.
    in_flight: usize,
    peak_in_flight: usize,
    budget: usize,
}

/// What is stored under one content address.
struct StoredObject {
    id: String,
    checksum: String,
    size: u64,
    written: u64,
}

async fn store_object(
    repo: &Repository,
    kind: ObjectKind,
    plaintext: Vec<u8>,
) -> Result<StoredObject, BackupError> {
    let id = repo.codec.content_id(&plaintext);
    let key = match kind {
        ObjectKind::Index => index_key(&id)?,
        _ => chunk_key(&id)?,
    };
    if !repo.exists(&key).await? {
        let codec = repo.codec.clone();
        let encoded = tokio::task::spawn_blocking(move || format::encode(kind, &plaintext, &codec))
            .await
            .map_err(|e| BackupError::Corrupt(e.to_string()))??;
        let (checksum, size) = (encoded.checksum.clone(), encoded.bytes.len() as u64);
        let written = repo.put(&key, encoded).await?;
        if written > 0 {
            return Ok(StoredObject {
                id,
                checksum,
                size,
                written,
            });
        }
    }
    // Already there: describe the stored bytes, after checking them.
    let bytes = repo.get(&key, kind.max_stored()).await?;
    format::verify_self(&bytes).map_err(|e| BackupError::BadObject {
        object: key.as_str().to_string(),
        why: format!(
            "{e} (an existing object is damaged; delete it so the next backup rewrites it)"
        ),
    })?;
    Ok(StoredObject {
        id,
        checksum: format::checksum(&bytes),
        size: bytes.len() as u64,
        written: 0,
    })
}

impl Uploader {
    fn new(repo: Repository) -> Self {
        Self::with_budget(repo, UPLOAD_BYTES_IN_FLIGHT)
    }

    fn with_budget(repo: Repository, budget: usize) -> Self {
        Uploader {
            repo,
            tasks: JoinSet::new(),
            done: Vec::new(),
            next: 0,
            written: 0,
            in_flight: 0,
            peak_in_flight: 0,
            budget,
        }
    }

    /// Starts encoding and uploading a chunk once there is room: fewer than
    /// [`UPLOADS_IN_FLIGHT`] uploads, and its plaintext within the byte
    /// budget (or nothing else in flight).
    async fn submit(&mut self, planned: PlannedChunk) -> Result<(), BackupError> {
        let size = planned.plaintext.len();
        while !self.tasks.is_empty()
            && (self.tasks.len() >= UPLOADS_IN_FLIGHT || self.in_flight + size > self.budget)
        {
            self.join_one().await?;
        }
        self.in_flight += size;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
        let repo = self.repo.clone();
        let seq = self.next;
        self.next += 1;
        self.tasks.spawn(async move {
            let records = planned.records() as u64;
            let index_plain = planned.index.encode()?;
            let chunk = store_object(&repo, ObjectKind::Chunk, planned.plaintext).await?;
            let index = store_object(&repo, ObjectKind::Index, index_plain).await?;
            let written = chunk.written + index.written;
            Ok((
                seq,
                ChunkRef {
                    id: chunk.id,
                    checksum: chunk.checksum,
                    stored_size: chunk.size,
                    records,
                    index_id: index.id,
                    index_checksum: index.checksum,
                    index_stored_size: index.size,
                    excluded_ids: Vec::new(),
                },
                written,
                size,
            ))
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), BackupError> {
        if let Some(r) = self.tasks.join_next().await {
            let (seq, chunk, written, size) =
                r.map_err(|e| BackupError::Corrupt(format!("upload task failed: {e}")))??;
            self.in_flight -= size;
            self.written += written;
            self.done.push((seq, chunk));
        }
        Ok(())
    }

    /// Waits for every upload; the references in submission order, and the bytes written.
    async fn finish(mut self) -> Result<(Vec<ChunkRef>, u64), BackupError> {
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        self.done.sort_by_key(|(seq, _)| *seq);
        Ok((
            self.done.into_iter().map(|(_, c)| c).collect(),
            self.written,
        ))
    }

    fn abort(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of very different sizes (one near the 16 MiB ceiling): the
    /// plaintext in flight never exceeds the budget, except a chunk larger
    /// than the budget going alone; and every chunk is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_in_flight_stay_within_the_byte_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repository::open(
            &dir.path().display().to_string(),
            &StorageOptions::default(),
            None,
            true,
        )
        .await
        .expect("repository");
        let budget = 3 * 1024 * 1024;
        let mut up = Uploader::with_budget(repo.clone(), budget);
        let sizes_kib = [900, 1_100, 700, 5_000, 300, 1_500, 1_400, 200, 2_900, 100];
        let mut largest = 0;
        for (i, kib) in sizes_kib.iter().enumerate() {
            let mut p = ChunkPlanner::new(1 << 30, 1_000_000);
            let mut n = 0;
            while n * 1_024 < kib * 1024 {
                let r = Record {
                    id: format!("c{i}-r{n}"),
                    document: Some(format!("{i}-{n}-{}", "x".repeat(1000))),
                    ..Record::default()
                };
                n += 1;
                assert!(p.push(&r).expect("push").is_none());
            }
            let chunk = p.finish().expect("chunk");
            let size = chunk.plaintext.len();
            largest = largest.max(size);
            up.submit(chunk).await.expect("submit");
            assert!(
                up.in_flight <= budget || up.in_flight == size,
                "{} bytes in flight",
                up.in_flight
            );
        }
        assert!(
            up.peak_in_flight <= budget.max(largest),
            "{} bytes in flight at most",
            up.peak_in_flight
        );
        let (refs, written) = up.finish().await.expect("finish");
        assert_eq!(refs.len(), sizes_kib.len());
        assert!(written > 0);
        for r in &refs {
            assert!(repo
                .exists(&chunk_key(&r.id).expect("key"))
                .await
                .expect("exists"));
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("docs_*", "docs_2024"));
        assert!(!glob("docs_*", "other"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
    }
}
