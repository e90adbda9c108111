//! A collection's chunks read back from the repository, in order, for a
//! restore: each chunk is fetched and decoded ahead while the caller works
//! on the one before it.

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::manifest::ChunkRef;
use super::records::Record;
use super::repository::{chunk_key, Repository};
use super::BackupError;

/// A chunk's live records, or why they could not be read.
type Decoded = Result<Vec<Record>, BackupError>;

/// A chunk's live records, read, checked and decoded off the async threads.
pub(super) async fn read_chunk(repo: Repository, chunk: ChunkRef) -> Decoded {
    let stored = repo.get(&chunk_key(&chunk.id)?, chunk.stored_size).await?;
    let id = chunk.id.clone();
    tokio::task::spawn_blocking(move || chunk.read_records(stored, &repo.codec))
        .await
        .map_err(|e| BackupError::Corrupt(e.to_string()))?
        .map_err(|e| BackupError::BadObject {
            object: format!("chunks/{id}"),
            why: e.to_string(),
        })
}

/// A collection's chunks in order, each read and decoded in the background
/// while the caller works on the one before it: at most two chunks'
/// records are held at once. The read ahead stops when this is dropped.
pub(super) struct ChunkStream<'a> {
    repo: Repository,
    chunks: std::slice::Iter<'a, ChunkRef>,
    ahead: Option<(&'a ChunkRef, AbortOnDropHandle<Decoded>)>,
}

impl<'a> ChunkStream<'a> {
    pub(super) fn new(repo: Repository, chunks: &'a [ChunkRef]) -> Self {
        let mut s = ChunkStream {
            repo,
            chunks: chunks.iter(),
            ahead: None,
        };
        s.read_ahead();
        s
    }

    fn read_ahead(&mut self) {
        self.ahead = self.chunks.next().map(|c| {
            let task = tokio::spawn(read_chunk(self.repo.clone(), c.clone()));
            (c, AbortOnDropHandle::new(task))
        });
    }

    /// The next chunk and its records; `None` after the last.
    pub(super) async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> Option<Result<(&'a ChunkRef, Vec<Record>), BackupError>> {
        let (chunk, task) = self.ahead.take()?;
        if cancel.is_cancelled() {
            return Some(Err(BackupError::Cancelled));
        }
        let records = match task.await {
            Ok(r) => r,
            Err(e) => Err(BackupError::Corrupt(e.to_string())),
        };
        if records.is_ok() {
            self.read_ahead();
        }
        Some(records.map(|r| (chunk, r)))
    }
}
