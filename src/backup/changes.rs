//! Change-aware reads on a local Chroma: which records a backup must read,
//! from Chroma's own sequence numbers (`chroma::local`), instead of reading
//! every record to find out.
//!
//! A snapshot records, per collection, where the change feed stood when it
//! read it ([`ChangeMark`]: the metadata segment and its applied `seq_id`,
//! read before anything else). The next incremental then:
//! 1. reads the segment's position again and checks it against the
//!    parent's mark (same database file and segment, sequence not gone
//!    backwards) and its record count against the server's (so
//!    `chroma.persist_directory` is the directory this server uses, now);
//! 2. if the position has not moved and the count is the parent's, nothing
//!    was written since (every add, update, upsert and delete Chroma
//!    applies moves it): the parent's chunks stand, and neither they nor
//!    the segment are read ([`unchanged_since`], `read=nothing`);
//! 3. else goes through the segment's rows page by page, reading out only
//!    those written after the mark and counting the others (with the XOR of
//!    a hash of their ids): if the count and the hash are those of the
//!    parent's records less those written, no parent record is gone, and
//!    every parent record not written is unchanged (`read=changes`);
//! 4. else (records were deleted, or a row older than the mark is unknown
//!    to the parent) lists the segment's `(id, seq_id)` rows
//!    again in keyset pages: a row written after the mark goes to the list
//!    of ids to fetch; a row at or before it must be a live record of the
//!    parent, unchanged, and is marked as such in the
//!    [`IncrementalPlanner`]; parent records never marked were deleted
//!    (`read=listing`);
//! 5. the written ids are fetched over HTTP (embeddings are not in
//!    SQLite); anything unexpected ([`Unusable`]) sends the collection back
//!    to the full read, which the caller logs with its reason and counts.
//!
//! Memory: 40 bytes and a bit per live parent record ([`ParentIds`]: a
//! 16-byte key of the id, its record digest and an 8-byte id hash), beside
//! the planner's 16 bytes and a bit; the changed ids go to a temporary file
//! ([`IdSpool`]).

use std::collections::HashSet;

use ring::digest;

use super::manifest::{ChangeMark, ChunkRef, IncrementalPlanner};
use super::records::{ChunkIndex, RecordDigest};
use super::source::{IdList, IdSpool};
use super::BackupError;
use crate::chroma::local::{id_hash, LocalChroma, Position, Sample, Unusable, PAGE};
use crate::chroma::ProductionChromaStore;

/// Times the record counts are compared before the persist directory is
/// taken to disagree with the server (writes between the reads move them).
const COUNT_ATTEMPTS: usize = 3;

/// A 16-byte key of a record id (truncated SHA-256), so the parent's ids
/// cost the same whatever their length.
type IdKey = [u8; 16];

fn id_key(id: &str) -> IdKey {
    let d = digest::digest(&digest::SHA256, id.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// The parent's live records by id: their digests, to mark unchanged
/// records in the planner without reading them.
#[derive(Debug, Default)]
pub struct ParentIds {
    /// Per record: the key of its id, its digest, and its id's
    /// [`id_hash`] (what a page of Chroma's rows is checked against).
    entries: Vec<(IdKey, RecordDigest, u64)>,
    sealed: bool,
}

impl ParentIds {
    pub fn with_capacity(records: u64) -> Self {
        ParentIds {
            entries: Vec::with_capacity(usize::try_from(records).unwrap_or(0)),
            sealed: false,
        }
    }

    /// Adds one parent chunk's live records.
    pub fn add(&mut self, chunk: &ChunkRef, index: &ChunkIndex) {
        let excluded: HashSet<&str> = chunk.excluded_ids.iter().map(String::as_str).collect();
        self.entries.extend(
            index
                .entries
                .iter()
                .filter(|(id, _)| !excluded.contains(id.as_str()))
                .map(|(id, d)| (id_key(id), *d, id_hash(id))),
        );
    }

    fn seal(&mut self) {
        if !self.sealed {
            self.entries.sort_unstable_by_key(|e| e.0);
            self.sealed = true;
        }
    }

    fn position(&self, id: &str) -> Option<usize> {
        let k = id_key(id);
        self.entries.binary_search_by(|e| e.0.cmp(&k)).ok()
    }

    fn digest(&self, id: &str) -> Option<RecordDigest> {
        self.position(id).map(|at| self.entries[at].1)
    }
}

/// What a change-aware incremental reads of one collection.
pub struct Changes {
    /// Ids written after the parent's mark: fetched over HTTP.
    pub changed: IdList,
    /// Parent records found unchanged (marked in the planner).
    pub unchanged: u64,
    /// The mark this snapshot records.
    pub mark: ChangeMark,
    /// How the change was found.
    pub read: ReadBy,
    /// The sample asked for, drawn from every row the scan read.
    pub sample: Option<Sample>,
}

/// Where `collection_id` stands in the persist directory, checked against
/// the server: the record counts agree (read position, server count,
/// position; retried while writes move them).
pub async fn position(
    local: &LocalChroma,
    store: &ProductionChromaStore,
    collection_id: &str,
) -> Result<Result<Position, Unusable>, BackupError> {
    let mut last = None;
    for _ in 0..COUNT_ATTEMPTS {
        let before = match local.position(collection_id).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let server = store.count(collection_id).await?;
        let after = match local.position(collection_id).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let (lo, hi) = (
            before.records.min(after.records),
            before.records.max(after.records),
        );
        if (lo..=hi).contains(&server) && before.segment == after.segment {
            // The later read: still before anything is listed, and nearer
            // to now.
            return Ok(Ok(after));
        }
        last = Some((before.records, server));
    }
    let (local_count, server) = last.unwrap_or_default();
    Ok(Err(Unusable::CountMismatch {
        collection: collection_id.to_string(),
        local: local_count,
        server,
    }))
}

/// Where `collection_id` stands now ([`position`]), if it is the database
/// file and the segment `mark` was read from and its sequence has not gone
/// back: then every record written at or before the mark is as it was when
/// the mark was read.
pub async fn after(
    local: &LocalChroma,
    store: &ProductionChromaStore,
    collection_id: &str,
    mark: &ChangeMark,
) -> Result<Result<Position, Unusable>, BackupError> {
    let now = match position(local, store, collection_id).await? {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    if mark.file.as_ref() != Some(&now.file) {
        return Ok(Err(Unusable::Replaced {
            was: mark.file.clone().unwrap_or_else(|| "not recorded".into()),
            now: now.file,
        }));
    }
    if now.segment != mark.segment {
        return Ok(Err(Unusable::SegmentChanged {
            collection: collection_id.to_string(),
            was: mark.segment.clone(),
            now: now.segment,
        }));
    }
    if now.seq_id < mark.seq_id {
        return Ok(Err(Unusable::SequenceBackwards {
            collection: collection_id.to_string(),
            was: mark.seq_id,
            now: now.seq_id,
        }));
    }
    Ok(Ok(now))
}

/// Every id of `segment`, from the persist directory, in id order: a full
/// read's listing without asking the server to list them (read after the
/// position, so every record at or before it is listed).
pub async fn list_all(
    local: &LocalChroma,
    segment: &str,
) -> Result<Result<IdList, Unusable>, BackupError> {
    let mut ids = IdSpool::new()?;
    let mut rows = local.rows(segment, None);
    loop {
        let page = match rows.next().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        };
        for (id, _) in &page {
            ids.push(id)?;
        }
    }
    Ok(Ok(ids.finish()?))
}

/// Whether a collection holds exactly its parent's records: the segment's
/// applied position is still the parent's mark (every add, update, upsert
/// and delete Chroma applies moves it) and the count agrees. `now` is
/// [`after`] the mark, so the same file and segment.
pub fn unchanged_since(mark: &ChangeMark, parent_records: u64, now: &Position) -> bool {
    now.seq_id == mark.seq_id && now.records == parent_records
}

/// How a change-aware incremental found what changed (the `read=` field of
/// its log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBy {
    /// The position had not moved: nothing was read ([`unchanged_since`]).
    Nothing,
    /// The segment's rows page by page, only those written since the mark
    /// read out and the others counted: the count showed every parent
    /// record still there.
    Changes,
    /// Every row of the segment by id, page by page: records were deleted.
    Listing,
}

impl ReadBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadBy::Nothing => "nothing",
            ReadBy::Changes => "changes",
            ReadBy::Listing => "listing",
        }
    }
}

/// Lists what changed in `collection_id` since `parent`'s mark (`now`:
/// [`after`] it) and marks the unchanged parent records in `planner`. On
/// `Err(Unusable)` the planner may hold marks: the caller resets it
/// ([`IncrementalPlanner::reset_seen`]) before reading every record instead.
///
/// First the segment's rows go by page by page ([`LocalChroma::page_split`]):
/// the rows written after the mark are read out, the others only counted.
/// A row at or before the mark belongs to a record nobody wrote since the
/// mark, which the parent therefore read, as it still is; each id is in one
/// page only. So if the rows counted are the parent's records not among the
/// written ones (as many, and the same ids by the XOR of their
/// [`id_hash`]es), each of those was there when its page was read: none was
/// deleted before this backup, and all are unchanged. Otherwise records
/// were deleted (or a row the parent lacks is older than the mark), and the
/// rows are listed again by id to find which.
///
/// `sample` (the recall sample, [`Sample`]) is offered every row of the
/// scan, so the recall check does not list the segment again.
pub async fn since(
    local: &LocalChroma,
    now: Position,
    parent: &ChangeMark,
    parent_ids: ParentIds,
    planner: &mut IncrementalPlanner,
    sample: Option<Sample>,
) -> Result<Result<Changes, Unusable>, BackupError> {
    since_in_pages(local, now, parent, parent_ids, planner, sample, PAGE).await
}

/// [`since`], its counted scan in pages of `page` rows.
async fn since_in_pages(
    local: &LocalChroma,
    now: Position,
    parent: &ChangeMark,
    mut parent_ids: ParentIds,
    planner: &mut IncrementalPlanner,
    sample: Option<Sample>,
    page: usize,
) -> Result<Result<Changes, Unusable>, BackupError> {
    parent_ids.seal();
    let mut written = IdSpool::new()?;
    // Which parent records were written since the mark: a bit each.
    let mut rewritten = vec![0u64; parent_ids.entries.len().div_ceil(64)];
    let (mut at_or_before, mut at_or_before_ids) = (0u64, 0u64);
    let mut scan = local.scan(&now.segment, Some(parent.seq_id), page, sample);
    loop {
        let page = match scan.next_split().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        };
        at_or_before += page.at_or_before;
        at_or_before_ids ^= page.at_or_before_ids;
        for (id, _) in &page.written {
            written.push(id)?;
            if let Some(at) = parent_ids.position(id) {
                rewritten[at / 64] |= 1 << (at % 64);
            }
        }
    }
    let sample = scan.into_sample();
    // The parent's records not written since: as many, and the same ids,
    // as the rows counted?
    let is_rewritten = |at: usize| rewritten[at / 64] & (1 << (at % 64)) != 0;
    let (mut kept, mut kept_ids) = (0u64, 0u64);
    for (at, (_, _, h)) in parent_ids.entries.iter().enumerate() {
        if !is_rewritten(at) {
            kept += 1;
            kept_ids ^= h;
        }
    }
    if (at_or_before, at_or_before_ids) == (kept, kept_ids) {
        let mut unchanged = 0u64;
        for (at, (_, digest, _)) in parent_ids.entries.iter().enumerate() {
            if !is_rewritten(at) && planner.unchanged(digest) {
                unchanged += 1;
            }
        }
        return Ok(Ok(Changes {
            changed: written.finish()?,
            unchanged,
            mark: mark_of(now),
            read: ReadBy::Changes,
            sample,
        }));
    }
    drop(written);
    let mut changed = IdSpool::new()?;
    let mut unchanged = 0u64;
    let mut rows = local.rows(&now.segment, None);
    loop {
        let page = match rows.next().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        };
        for (id, seq) in &page {
            if *seq > parent.seq_id {
                changed.push(id)?;
                continue;
            }
            match parent_ids.digest(id) {
                Some(d) if planner.unchanged(&d) => unchanged += 1,
                _ => {
                    return Ok(Err(Unusable::UnknownRecord {
                        id: id.clone(),
                        seq: *seq,
                        mark: parent.seq_id,
                    }))
                }
            }
        }
    }
    Ok(Ok(Changes {
        changed: changed.finish()?,
        unchanged,
        // Read before the listing: every record written at or before it
        // is in the listing.
        mark: mark_of(now),
        read: ReadBy::Listing,
        // The scan read every row before the listing.
        sample,
    }))
}

/// The mark a snapshot records for a position.
pub fn mark_of(p: Position) -> ChangeMark {
    ChangeMark {
        segment: p.segment,
        seq_id: p.seq_id,
        file: Some(p.file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::records::RecordDigest;
    use crate::chroma::local::fixture::{database, SEGMENT};

    /// A parent of records `ids` (digest `[i; 16]` for the i-th), marked at
    /// sequence 10, and what `since` makes of the database holding `rows`,
    /// read in pages of 3: the result, and which parent records the
    /// planner was told are unchanged.
    async fn changes_over(
        ids: &[&str],
        rows: &[(&str, i64)],
    ) -> (Result<Changes, Unusable>, Vec<String>) {
        let dir = tempfile::tempdir().expect("should succeed");
        let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(10);
        drop(database(dir.path(), rows, Some(max)));
        let local = LocalChroma::open(dir.path()).await.expect("should succeed");
        let chunk = ChunkRef {
            id: String::new(),
            checksum: String::new(),
            stored_size: 0,
            records: ids.len() as u64,
            index_id: String::new(),
            index_checksum: String::new(),
            index_stored_size: 0,
            excluded_ids: Vec::new(),
        };
        let index = ChunkIndex {
            entries: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.to_string(), RecordDigest([i as u8; 16])))
                .collect(),
        };
        let mut parent_ids = ParentIds::with_capacity(ids.len() as u64);
        parent_ids.add(&chunk, &index);
        let mut planner = IncrementalPlanner::new(ids.len() as u64, 0.5);
        planner.add_parent(&chunk, &index);
        let now = Position {
            file: local.file_identity().expect("should succeed"),
            segment: SEGMENT.into(),
            seq_id: max as u64,
            records: rows.len() as u64,
        };
        let mark = ChangeMark {
            segment: SEGMENT.into(),
            seq_id: 10,
            file: Some(now.file.clone()),
        };
        let got = since_in_pages(
            &local,
            now,
            &mark,
            parent_ids,
            &mut planner,
            Some(Sample::new(9, 4)),
            3,
        )
        .await
        .expect("should succeed");
        // The recall sample saw every row, whichever way the change was
        // found: the same ids as drawn from all of them at once.
        if let Ok(c) = &got {
            let mut direct = Sample::new(9, 4);
            for (id, _) in rows {
                direct.offer(id, id_hash(id));
            }
            let drawn = c.sample.clone().expect("a sample");
            assert_eq!(drawn.seen(), rows.len() as u64);
            assert_eq!(drawn.into_ids(), direct.into_ids());
        }
        // The parent records the planner keeps live.
        let kept = match planner.decide(&chunk, &index) {
            crate::backup::manifest::ChunkDecision::Keep(k) => ids
                .iter()
                .filter(|id| !k.chunk.excluded_ids.iter().any(|e| e == *id))
                .map(|id| id.to_string())
                .collect(),
            other => panic!("{other:?}"),
        };
        (got, kept)
    }

    fn written(ids: &mut IdList) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let part = ids.next(100).expect("should succeed");
            if part.is_empty() {
                break;
            }
            out.extend(part);
        }
        out.sort();
        out
    }

    const PARENT: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

    /// The parent's rows (sequence numbers at or below the mark, 10) with
    /// c rewritten and z added since, less `drop`, plus `add`.
    fn rows(drop: &[&str], add: &[(&'static str, i64)]) -> Vec<(&'static str, i64)> {
        let all = [
            ("a", 1),
            ("b", 2),
            ("c", 11),
            ("d", 4),
            ("e", 5),
            ("f", 6),
            ("g", 7),
            ("h", 8),
            ("z", 12),
        ];
        all.into_iter()
            .filter(|(id, _)| !drop.contains(id))
            .chain(add.iter().copied())
            .collect()
    }

    #[tokio::test]
    async fn rows_written_since_are_read_out_and_the_rest_counted_over_many_pages() {
        // Every other parent record is still there.
        let (got, kept) = changes_over(&PARENT, &rows(&[], &[])).await;
        let mut got = got.expect("the feed can say");
        assert_eq!(got.read, ReadBy::Changes);
        assert_eq!(written(&mut got.changed), vec!["c", "z"]);
        assert_eq!(got.unchanged, 7);
        assert_eq!(kept, vec!["a", "b", "d", "e", "f", "g", "h"]);
    }

    #[tokio::test]
    async fn a_deleted_record_sends_the_read_to_the_listing() {
        let (got, kept) = changes_over(&PARENT, &rows(&["d"], &[])).await;
        let mut got = got.expect("the feed can say");
        assert_eq!(got.read, ReadBy::Listing);
        assert_eq!(written(&mut got.changed), vec!["c", "z"]);
        assert_eq!(kept, vec!["a", "b", "e", "f", "g", "h"], "d was deleted");
    }

    #[tokio::test]
    async fn a_deletion_balanced_by_a_row_older_than_the_mark_is_not_trusted() {
        // d deleted and y, unknown to the parent, at a sequence number below
        // the mark: as many rows counted as the parent expects, but not the
        // same ids; the listing names y.
        let rows = rows(&["d", "z"], &[("y", 9)]);
        let (got, _) = changes_over(&PARENT, &rows).await;
        let why = got.err().expect("not trusted");
        assert_eq!(why.reason(), "unknown_record", "{why}");
        assert!(why.to_string().contains("\"y\""), "{why}");
    }

    #[tokio::test]
    async fn an_empty_id_is_a_row_like_any_other() {
        let mut parent = PARENT.to_vec();
        parent.insert(0, "");
        let rows = rows(&["z"], &[("", 3)]);
        let (got, kept) = changes_over(&parent, &rows).await;
        let got = got.expect("the feed can say");
        assert_eq!((got.read, got.unchanged), (ReadBy::Changes, 8));
        assert!(kept.contains(&String::new()), "{kept:?}");
        assert_eq!(kept.len(), 8, "all but c, rewritten");
    }

    #[test]
    fn parent_ids_find_live_records_and_skip_excluded_ones() {
        let chunk = ChunkRef {
            id: String::new(),
            checksum: String::new(),
            stored_size: 0,
            records: 3,
            index_id: String::new(),
            index_checksum: String::new(),
            index_stored_size: 0,
            excluded_ids: vec!["b".into()],
        };
        let index = ChunkIndex {
            entries: vec![
                ("a".into(), RecordDigest([1; 16])),
                ("b".into(), RecordDigest([2; 16])),
                ("c".into(), RecordDigest([3; 16])),
            ],
        };
        let mut ids = ParentIds::with_capacity(3);
        ids.add(&chunk, &index);
        ids.seal();
        assert_eq!(ids.digest("a"), Some(RecordDigest([1; 16])));
        assert_eq!(ids.digest("b"), None, "excluded in its chunk: not live");
        assert_eq!(ids.digest("c"), Some(RecordDigest([3; 16])));
        assert_eq!(ids.digest("d"), None);
    }
}
