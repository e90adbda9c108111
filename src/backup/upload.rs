//! The uploader of a backup: chunks encoded off the async threads and
//! stored a few at a time, within a budget of bytes in flight.

use tokio::task::JoinSet;

use super::format::{self, ObjectKind};
use super::manifest::ChunkRef;
use super::records::PlannedChunk;
use super::repository::{chunk_key, index_key, Repository};
use super::BackupError;

/// Chunk uploads in flight at once, at most.
const UPLOADS_IN_FLIGHT: usize = 4;
/// Plaintext bytes of the chunks being encoded or uploaded at once, at most
/// (one chunk larger than this goes alone). A chunk in flight holds its
/// plaintext and one buffer of about its compressed size, so this bounds
/// the uploads' memory to about twice as much, whatever the chunk sizes.
const UPLOAD_BYTES_IN_FLIGHT: usize = 16 * 1024 * 1024;

/// Encodes chunks off the async threads and uploads a few at a time.
///
/// Content addresses are computed from the plaintext, so an object that is
/// already stored (by an earlier or an interrupted backup) is not uploaded
/// again. Its stored bytes may differ from a fresh encoding (a new nonce), so
/// the reference records what is actually stored: the existing object is
/// read, checked, and its own checksum and size are used.
pub(super) struct Uploader {
    repo: Repository,
    tasks: JoinSet<Result<(usize, ChunkRef, u64, usize), BackupError>>,
    done: Vec<(usize, ChunkRef)>,
    next: usize,
    pub(super) written: u64,
    /// Plaintext bytes of the chunks in flight now, and at most so far.
    in_flight: usize,
    peak_in_flight: usize,
    budget: usize,
}

/// What is stored under one content address.
pub(super) struct StoredObject {
    pub(super) id: String,
    pub(super) checksum: String,
    pub(super) size: u64,
    pub(super) written: u64,
}

/// Stores `plaintext` as a `kind` object under its content address, unless
/// it is stored already; describes what is stored.
pub(super) async fn store_object(
    repo: &Repository,
    kind: ObjectKind,
    plaintext: Vec<u8>,
) -> Result<StoredObject, BackupError> {
    let id = repo.codec.content_id(&plaintext);
    let key = match kind {
        ObjectKind::Index => index_key(&id)?,
        ObjectKind::Block => super::repository::block_key(&id)?,
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
    pub(super) fn new(repo: Repository) -> Self {
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
    pub(super) async fn submit(&mut self, planned: PlannedChunk) -> Result<(), BackupError> {
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
    pub(super) async fn finish(mut self) -> Result<(Vec<ChunkRef>, u64), BackupError> {
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        self.done.sort_by_key(|(seq, _)| *seq);
        Ok((
            self.done.into_iter().map(|(_, c)| c).collect(),
            self.written,
        ))
    }

    pub(super) fn abort(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::records::{ChunkPlanner, Record};
    use crate::storage::StorageOptions;

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
}
