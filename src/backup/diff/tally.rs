//! The pure part of a diff: one collection's records on two sides, as
//! (id, record digest) pairs, compared into counts (and, when asked, the
//! ids) of what was added, changed and removed; and which chunk indexes
//! each side of a snapshot-to-snapshot diff must read at all. No I/O.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::backup::manifest::ChunkRef;
use crate::backup::records::RecordDigest;

/// The ids of each category, each list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffIds {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// What one collection's comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// On side B only.
    pub added: u64,
    /// On both sides with different digests (a digest covers the id and
    /// the content, so: the same id, other content).
    pub changed: u64,
    /// On side A only.
    pub removed: u64,
    /// The ids, when asked for.
    pub ids: Option<DiffIds>,
}

/// Side A of one collection being collected: `push` every (id, digest),
/// in any order, then [`BaseTable::compare`].
///
/// Holds per record of A its id and its 16-byte digest (a boxed id, about
/// 32 bytes plus the id's bytes); once sealed, one bit more per record.
#[derive(Debug, Default)]
pub struct BaseTable {
    entries: Vec<(Box<str>, RecordDigest)>,
    with_ids: bool,
}

impl BaseTable {
    /// A table; `with_ids` keeps the ids of each category for the result.
    pub fn new(with_ids: bool) -> Self {
        Self {
            entries: Vec::new(),
            with_ids,
        }
    }

    pub fn push(&mut self, id: &str, digest: RecordDigest) {
        self.entries.push((id.into(), digest));
    }

    /// Seals side A (sorted by id; an id pushed twice counts once, its first
    /// digest kept) and starts taking side B.
    pub fn compare(mut self) -> Comparison {
        // Stable: the first copy of a duplicated id stays first.
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.entries.dedup_by(|later, first| later.0 == first.0);
        self.entries.shrink_to_fit();
        let seen = vec![0u64; self.entries.len().div_ceil(64)];
        Comparison {
            entries: self.entries,
            seen,
            added: 0,
            changed: 0,
            ids: self.with_ids.then(DiffIds::default),
        }
    }
}

/// Side B streaming against a sealed side A: `push` every (id, digest) of
/// B, in any order, then [`Comparison::finish`]. Holds nothing per record
/// of B except the ids it reports (with ids asked for).
#[derive(Debug)]
pub struct Comparison {
    entries: Vec<(Box<str>, RecordDigest)>,
    seen: Vec<u64>,
    added: u64,
    changed: u64,
    ids: Option<DiffIds>,
}

impl Comparison {
    /// One record of side B. Ids are unique within a side (Chroma's are per
    /// collection, and a snapshot holds each id live once); a second copy of
    /// an id that A holds is ignored.
    pub fn push(&mut self, id: &str, digest: RecordDigest) {
        match self.entries.binary_search_by(|(e, _)| (**e).cmp(id)) {
            Ok(at) => {
                let (word, bit) = (at / 64, 1u64 << (at % 64));
                if self.seen[word] & bit != 0 {
                    return;
                }
                self.seen[word] |= bit;
                if self.entries[at].1 != digest {
                    self.changed += 1;
                    if let Some(ids) = &mut self.ids {
                        ids.changed.push(id.to_string());
                    }
                }
            }
            Err(_) => {
                self.added += 1;
                if let Some(ids) = &mut self.ids {
                    ids.added.push(id.to_string());
                }
            }
        }
    }

    /// The counts: what A holds and B never named is removed.
    pub fn finish(self) -> Tally {
        let mut removed = 0u64;
        let mut ids = self.ids;
        for (at, (id, _)) in self.entries.iter().enumerate() {
            if self.seen[at / 64] & (1 << (at % 64)) == 0 {
                removed += 1;
                if let Some(ids) = &mut ids {
                    // `entries` is sorted: so is this list.
                    ids.removed.push(id.to_string());
                }
            }
        }
        if let Some(ids) = &mut ids {
            ids.added.sort_unstable();
            ids.changed.sort_unstable();
        }
        Tally {
            added: self.added,
            changed: self.changed,
            removed,
            ids,
        }
    }
}

/// Compares two sides given whole (for tests and small inputs).
pub fn compare<'a>(
    a: impl IntoIterator<Item = (&'a str, RecordDigest)>,
    b: impl IntoIterator<Item = (&'a str, RecordDigest)>,
    with_ids: bool,
) -> Tally {
    let mut table = BaseTable::new(with_ids);
    for (id, d) in a {
        table.push(id, d);
    }
    let mut cmp = table.compare();
    for (id, d) in b {
        cmp.push(id, d);
    }
    cmp.finish()
}

/// One side's read of one chunk index: which of its entries the side
/// contributes to the comparison.
#[derive(Debug)]
pub struct IndexRead<'a> {
    pub chunk: &'a ChunkRef,
    own_excluded: HashSet<&'a str>,
    /// When the other side references the same chunk: its exclusions.
    other_excluded: Option<HashSet<&'a str>>,
}

impl IndexRead<'_> {
    /// Whether the entry `id` of this chunk is compared: it is live on this
    /// side, and not also live in the same chunk on the other side (then it
    /// is the same record on both, and no other chunk of either side holds
    /// that id live).
    pub fn keeps(&self, id: &str) -> bool {
        !self.own_excluded.contains(id)
            && self
                .other_excluded
                .as_ref()
                .is_none_or(|other| other.contains(id))
    }
}

/// The chunk indexes a snapshot-to-snapshot diff of one collection reads.
#[derive(Debug)]
pub struct ChunkPlan<'a> {
    /// Side A's reads, then side B's.
    pub a: Vec<IndexRead<'a>>,
    pub b: Vec<IndexRead<'a>>,
    /// Chunks both sides reference with the same exclusions: not read at all.
    pub skipped: usize,
}

/// Plans the index reads for collection chunks `a` and `b`: a chunk only one
/// side references is read for that side; a chunk both reference with the
/// same exclusions holds the same live records on both and is skipped; one
/// both reference with different exclusions is read by each side for only
/// the records live on that side alone. So an incremental's diff against its
/// parent reads only what the incremental wrote or masked.
pub fn plan_chunks<'a>(a: &'a [ChunkRef], b: &'a [ChunkRef]) -> ChunkPlan<'a> {
    let excluded = |c: &'a ChunkRef| -> HashSet<&'a str> {
        c.excluded_ids.iter().map(String::as_str).collect()
    };
    let by_id = |side: &'a [ChunkRef]| -> HashMap<&'a str, &'a ChunkRef> {
        let mut m = HashMap::new();
        for c in side {
            m.entry(c.id.as_str()).or_insert(c);
        }
        m
    };
    let (a_ids, b_ids) = (by_id(a), by_id(b));
    let mut plan = ChunkPlan {
        a: Vec::new(),
        b: Vec::new(),
        skipped: 0,
    };
    for (side, other_ids, out) in [(a, &b_ids, &mut plan.a), (b, &a_ids, &mut plan.b)] {
        for chunk in side {
            let other = other_ids.get(chunk.id.as_str()).copied();
            let own_excluded = excluded(chunk);
            let other_excluded = other.map(excluded);
            if other_excluded.as_ref() == Some(&own_excluded) {
                continue;
            }
            out.push(IndexRead {
                chunk,
                own_excluded,
                other_excluded,
            });
        }
    }
    plan.skipped = a
        .iter()
        .filter(|c| {
            b_ids
                .get(c.id.as_str())
                .is_some_and(|o| excluded(o) == excluded(c))
        })
        .count();
    plan
}
