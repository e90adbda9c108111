//! Cutting a collection's records into chunks of a target size.

use ring::digest;

use super::index::{record_digest, ChunkIndex};
use super::{
    record_json, Record, CHUNK_PREFIX, CHUNK_SUFFIX, DEFAULT_MAX_RECORDS, DEFAULT_TARGET_BYTES,
};
use crate::backup::format::FormatError;
use crate::mem::{large_buffer, LARGE_BUFFER_FROM};

/// A chunk the planner has closed: its plaintext (to pass to
/// `format::encode(ObjectKind::Chunk, …)`) and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChunk {
    pub plaintext: Vec<u8>,
    pub index: ChunkIndex,
}

impl PlannedChunk {
    pub fn records(&self) -> usize {
        self.index.entries.len()
    }
}

/// Groups a stream of records into chunks of about `target_bytes` of
/// serialised records (at most `max_records` each).
///
/// Boundaries are content-defined and depend only on the records, in
/// order: once a chunk holds `target_bytes / 4`, it closes after a record
/// whose id hashes below a threshold proportional to the record's size
/// (so chunks average about `target_bytes`); it always closes at
/// `4 × target_bytes` or `max_records`. Boundaries thereby resynchronise
/// after an insertion or deletion, so a full backup of a slightly changed
/// collection still shares most chunks with the previous one. Same records in the same order → identical chunks →
/// identical content addresses → nothing re-uploaded.
#[derive(Debug)]
pub struct ChunkPlanner {
    target_bytes: usize,
    max_records: usize,
    pub(super) buf: Vec<u8>,
    index: ChunkIndex,
}

impl Default for ChunkPlanner {
    fn default() -> Self {
        Self::new(DEFAULT_TARGET_BYTES, DEFAULT_MAX_RECORDS)
    }
}

impl ChunkPlanner {
    pub fn new(target_bytes: usize, max_records: usize) -> Self {
        Self {
            target_bytes: target_bytes.max(1),
            max_records: max_records.max(1),
            buf: Vec::new(),
            index: ChunkIndex::default(),
        }
    }

    /// Adds a record; returns a chunk when this record closes one.
    pub fn push(&mut self, record: &Record) -> Result<Option<PlannedChunk>, FormatError> {
        let json = record_json(record)?;
        self.reserve(json.len() + CHUNK_PREFIX.len() + CHUNK_SUFFIX.len() + 1);
        if self.index.entries.is_empty() {
            self.buf.extend_from_slice(CHUNK_PREFIX);
        } else {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(&json);
        self.index
            .entries
            .push((record.id.clone(), record_digest(record)));
        let size = self.buf.len() + CHUNK_SUFFIX.len();
        let soft = size >= self.target_bytes / 4 && self.is_boundary(&record.id, json.len());
        if size >= self.target_bytes.saturating_mul(4)
            || self.index.entries.len() >= self.max_records
            || soft
        {
            Ok(self.take())
        } else {
            Ok(None)
        }
    }

    /// Grows the buffer for `more` bytes: doubling, but never past the hard
    /// limit of `4 × target` (plus the record that crosses it), so the
    /// buffer of a chunk near the limit is not twice the chunk's size.
    fn reserve(&mut self, more: usize) {
        let need = self.buf.len() + more;
        if need <= self.buf.capacity() {
            return;
        }
        let ceiling = self.target_bytes.saturating_mul(4).max(need);
        if self.buf.capacity() == 0 && ceiling >= LARGE_BUFFER_FROM {
            // Once, for the whole chunk: see `large_buffer`.
            self.buf = large_buffer(ceiling.saturating_add(64 * 1024));
            return;
        }
        let want = self.buf.capacity().saturating_mul(2).clamp(need, ceiling);
        self.buf.reserve_exact(want - self.buf.len());
    }

    /// Whether a chunk may end after this record: true with probability
    /// `record_bytes / (3/4 · target)`, decided by a hash of the id alone,
    /// so the decision survives edits to other records.
    fn is_boundary(&self, id: &str, record_bytes: usize) -> bool {
        let span = u64::try_from(self.target_bytes / 4 * 3)
            .unwrap_or(u64::MAX)
            .max(1);
        let bytes = u64::try_from(record_bytes).unwrap_or(u64::MAX);
        let threshold = (u64::MAX / span).saturating_mul(bytes);
        let h = digest::digest(&digest::SHA256, id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_ref()[..8]);
        u64::from_le_bytes(first) < threshold
    }

    /// Closes the last, partial chunk (if any records are pending).
    pub fn finish(&mut self) -> Option<PlannedChunk> {
        self.take()
    }

    fn take(&mut self) -> Option<PlannedChunk> {
        if self.index.entries.is_empty() {
            return None;
        }
        let mut plaintext = std::mem::take(&mut self.buf);
        plaintext.extend_from_slice(CHUNK_SUFFIX);
        Some(PlannedChunk {
            plaintext,
            index: std::mem::take(&mut self.index),
        })
    }
}
