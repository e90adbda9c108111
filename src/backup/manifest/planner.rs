//! The incremental plan: which parent chunks an incremental snapshot
//! keeps, masks, compacts or drops, streamed record by record.

#[cfg(test)]
mod tests;

use std::collections::HashSet;

use super::ChunkRef;
use crate::backup::records::{ChunkIndex, RecordDigest};

/// A parent chunk kept by an incremental, with its updated exclusions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptChunk {
    pub chunk: ChunkRef,
    /// Exclusions this plan added.
    pub newly_excluded: usize,
}

/// What an incremental does with one chunk of its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkDecision {
    /// Referenced again, with the exclusions merged.
    Keep(KeptChunk),
    /// Dropped because more than the compaction threshold of it is dead;
    /// its records whose digests are listed are still current and must be
    /// written again (read them from the chunk).
    Compact {
        chunk_id: String,
        rewrite: HashSet<RecordDigest>,
    },
    /// Dropped: none of its records is current any more.
    Drop { chunk_id: String },
}

/// Plans an incremental backup of one collection while its records stream
/// by, in memory that depends on neither the ids nor the records: 16 bytes
/// per live record of the parent (its digest) and one bit.
///
/// A record digest covers the id as well as the content, so a current
/// record whose digest is among the parent's live digests is the same
/// record, unchanged (to the 2^-64 birthday bound of 128-bit digests, as
/// content addresses are trusted). And a parent record is still current
/// exactly when its digest was seen again. So the plan needs no map from
/// ids: the parent's live digests, sorted, and a bit per digest for "seen".
///
/// Use: [`IncrementalPlanner::new`]; [`IncrementalPlanner::add_parent`]
/// for each parent chunk's index, in order; [`IncrementalPlanner::unchanged`]
/// for every current record as it is read (a record that is not unchanged
/// — changed or new — goes into new chunks); then
/// [`IncrementalPlanner::decide`] for each parent chunk with its index
/// again. Unchanged records stay where they are; a changed or deleted
/// record is masked in its old chunk (`excluded_ids`); a kept chunk whose
/// excluded fraction would exceed `compact_threshold` is dropped and its
/// remaining live records rewritten, so old chunks do not linger mostly
/// dead. Pure and deterministic.
#[derive(Debug)]
pub struct IncrementalPlanner {
    live: Vec<RecordDigest>,
    sealed: bool,
    seen: Vec<u64>,
    compact_threshold: f64,
}

impl IncrementalPlanner {
    /// `live_records`: how many live records the parent holds (its
    /// `record_count`), to size the digest list once.
    pub fn new(live_records: u64, compact_threshold: f64) -> Self {
        Self {
            live: Vec::with_capacity(usize::try_from(live_records).unwrap_or(0)),
            sealed: false,
            seen: Vec::new(),
            compact_threshold,
        }
    }

    /// Adds the live records of one parent chunk (`index` is its index).
    pub fn add_parent(&mut self, chunk: &ChunkRef, index: &ChunkIndex) {
        debug_assert!(!self.sealed, "add_parent after the first record");
        let excluded: HashSet<&str> = chunk.excluded_ids.iter().map(String::as_str).collect();
        self.live.extend(
            index
                .entries
                .iter()
                .filter(|(id, _)| !excluded.contains(id.as_str()))
                .map(|(_, d)| *d),
        );
    }

    fn seal(&mut self) {
        if !self.sealed {
            self.live.sort_unstable();
            self.live.dedup();
            self.live.shrink_to_fit();
            self.seen = vec![0u64; self.live.len().div_ceil(64)];
            self.sealed = true;
        }
    }

    fn position(&self, digest: &RecordDigest) -> Option<usize> {
        self.live.binary_search(digest).ok()
    }

    fn is_seen(&self, at: usize) -> bool {
        self.seen[at / 64] & (1 << (at % 64)) != 0
    }

    fn set_seen(&mut self, at: usize, on: bool) {
        if on {
            self.seen[at / 64] |= 1 << (at % 64);
        } else {
            self.seen[at / 64] &= !(1 << (at % 64));
        }
    }

    /// Whether a current record (by its digest) is in the parent unchanged,
    /// so it stays where it is; `false` means it is changed or new and must
    /// be written.
    pub fn unchanged(&mut self, digest: &RecordDigest) -> bool {
        self.seal();
        match self.position(digest) {
            Some(at) => {
                self.set_seen(at, true);
                true
            }
            None => false,
        }
    }

    /// Forgets every record marked unchanged so far (a change-aware read
    /// that gave up before the records are read one by one).
    pub fn reset_seen(&mut self) {
        self.seen.iter_mut().for_each(|w| *w = 0);
    }

    /// Decides a parent chunk after every current record was seen. Call it
    /// once per parent chunk, in the parent's order: a record live in two
    /// parent chunks (which a correct parent never has) stays live in the
    /// first only.
    pub fn decide(&mut self, chunk: &ChunkRef, index: &ChunkIndex) -> ChunkDecision {
        self.seal();
        let old: HashSet<&str> = chunk.excluded_ids.iter().map(String::as_str).collect();
        let mut newly: Vec<String> = Vec::new();
        let mut live: Vec<RecordDigest> = Vec::new();
        for (id, digest) in &index.entries {
            if old.contains(id.as_str()) {
                continue;
            }
            match self.position(digest) {
                Some(at) if self.is_seen(at) => {
                    self.set_seen(at, false); // taken: a second copy is excluded
                    live.push(*digest);
                }
                _ => newly.push(id.clone()),
            }
        }
        if live.is_empty() {
            return ChunkDecision::Drop {
                chunk_id: chunk.id.clone(),
            };
        }
        let excluded = chunk.excluded_ids.len() + newly.len();
        let total = chunk.records.max(1) as f64;
        if excluded as f64 / total > self.compact_threshold {
            return ChunkDecision::Compact {
                chunk_id: chunk.id.clone(),
                rewrite: live.into_iter().collect(),
            };
        }
        let newly_excluded = newly.len();
        let mut excluded_ids = chunk.excluded_ids.clone();
        excluded_ids.extend(newly);
        excluded_ids.sort();
        excluded_ids.dedup();
        ChunkDecision::Keep(KeptChunk {
            newly_excluded,
            chunk: ChunkRef {
                excluded_ids,
                ..chunk.clone()
            },
        })
    }

    /// Bytes this planner holds, whatever the parent's ids: 16 per live
    /// parent record and a bit.
    pub fn memory_bytes(&self) -> usize {
        self.live.capacity() * std::mem::size_of::<RecordDigest>() + self.seen.capacity() * 8
    }
}
