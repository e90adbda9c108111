//! Snapshot manifests and the incremental plan.
//!
//! A [`Manifest`] lists, per collection, everything needed to restore it on
//! its own: the collection's settings verbatim and the chunks that hold its
//! records. An incremental snapshot reuses its parent's chunks and masks the
//! records that changed or were deleted (`excluded_ids`); the changed and
//! new records go into new chunks. There is never a chain to replay.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{self, Codec, Encoded, FormatError, ObjectKind};
use super::records::{decode_chunk, ChunkIndex, PlannedChunk, Record, RecordDigest};

/// Version of the manifest's JSON layout.
pub const MANIFEST_FORMAT: u32 = 1;
/// A reused chunk whose excluded fraction exceeds this is rewritten.
pub const DEFAULT_COMPACT_THRESHOLD: f64 = 0.5;

/// Errors of manifest validation.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid snapshot id {id:?}: expected 16 lowercase hex characters (as `chromaprod list` shows them)")]
    InvalidSnapshotId { id: String },
    #[error("manifest format version {found} is not supported (this chromaprod reads up to {supported}); upgrade chromaprod")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("manifest is inconsistent: {0}; the snapshot is damaged or was written by a faulty version — do not restore from it, run `chromaprod verify`")]
    Inconsistent(String),
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A snapshot id: 16 lowercase hex characters (64 random bits). Parsing
/// rejects everything else, so an id is always safe as a path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn parse(s: &str) -> Result<Self, ManifestError> {
        if s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_string()))
        } else {
            Err(ManifestError::InvalidSnapshotId { id: s.to_string() })
        }
    }

    /// A new random id.
    pub fn generate() -> Result<Self, super::crypto::CryptoError> {
        use ring::rand::SecureRandom as _;
        let mut b = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| super::crypto::CryptoError::Random)?;
        Ok(Self(super::crypto::to_hex(&b)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = ManifestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> Self {
        id.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

/// Kind of backup (the founding design's `BackupType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupType {
    /// Every collection of the database, all chunks written fresh.
    Full,
    /// Reuses the parent snapshot's chunks and writes only what changed.
    Incremental,
    /// Selected collections only.
    Collection,
}

/// What started a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Command,
    /// A restore point taken before migrating.
    Migration,
}

/// The founding design's `BackupMetadata`: what `list` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupMetadata {
    /// Equal to the manifest's snapshot id.
    pub backup_id: SnapshotId,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub backup_type: BackupType,
    /// Names of the collections in the snapshot, in manifest order.
    pub collections: Vec<String>,
    /// Stored bytes the snapshot references (chunks and indexes), = `bytes_referenced`.
    pub size_bytes: u64,
    /// [`Manifest::content_checksum`]: hex SHA-256 over the snapshot's
    /// chunk and index references, so two snapshots with equal content have
    /// equal checksums.
    pub checksum: String,
    /// Version of the Chroma server the snapshot was read from.
    pub chroma_version: String,
}

/// A stored chunk as a snapshot uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Content address of the chunk (`chunks/<id[..2]>/<id>`).
    pub id: String,
    /// Hex SHA-256 of the stored chunk bytes.
    pub checksum: String,
    pub stored_size: u64,
    /// Records in the chunk (including excluded ones).
    pub records: u64,
    /// Content address of the chunk's index (`index/<id[..2]>/<id>`).
    pub index_id: String,
    pub index_checksum: String,
    pub index_stored_size: u64,
    /// Records in this chunk that are not part of this snapshot: superseded
    /// by a record in a later chunk, or deleted. Sorted, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_ids: Vec<String>,
}

impl ChunkRef {
    /// Encodes a planned chunk and its index; returns the two objects to
    /// store (`chunks/…/<chunk.id>`, `index/…/<index.id>`) and the reference
    /// for the manifest.
    pub fn encode(
        planned: &PlannedChunk,
        codec: &Codec,
    ) -> Result<(Self, Encoded, Encoded), ManifestError> {
        let chunk = format::encode(ObjectKind::Chunk, &planned.plaintext, codec)?;
        let index = format::encode(ObjectKind::Index, &planned.index.encode()?, codec)?;
        let r = Self {
            id: chunk.id.clone(),
            checksum: chunk.checksum.clone(),
            stored_size: chunk.bytes.len() as u64,
            records: planned.index.entries.len() as u64,
            index_id: index.id.clone(),
            index_checksum: index.checksum.clone(),
            index_stored_size: index.bytes.len() as u64,
            excluded_ids: Vec::new(),
        };
        Ok((r, chunk, index))
    }

    /// Reads this chunk's records for a restore: checks the stored bytes'
    /// checksum and size, decrypts, checks the content address and record
    /// count, and leaves out the excluded records. The stored bytes are
    /// taken by value (an owned buffer or a reference), so an owned buffer
    /// is freed once decoded, before the records are built.
    pub fn read_records<B: AsRef<[u8]>>(
        &self,
        stored: B,
        codec: &Codec,
    ) -> Result<Vec<Record>, ManifestError> {
        self.check_stored(stored.as_ref(), &self.checksum, self.stored_size)?;
        let plain = format::decode(stored.as_ref(), ObjectKind::Chunk, codec, Some(&self.id))?;
        drop(stored);
        let records = decode_chunk(&plain)?;
        drop(plain);
        if records.len() as u64 != self.records {
            return Err(ManifestError::Inconsistent(format!(
                "chunk {} holds {} records but is referenced with {}",
                self.id,
                records.len(),
                self.records
            )));
        }
        let excluded: HashSet<&str> = self.excluded_ids.iter().map(String::as_str).collect();
        Ok(records
            .into_iter()
            .filter(|r| !excluded.contains(r.id.as_str()))
            .collect())
    }

    /// Reads this chunk's index object (checksum, address, consistency).
    pub fn read_index(&self, stored: &[u8], codec: &Codec) -> Result<ChunkIndex, ManifestError> {
        self.check_stored(stored, &self.index_checksum, self.index_stored_size)?;
        let plain = format::decode(stored, ObjectKind::Index, codec, Some(&self.index_id))?;
        let index = ChunkIndex::decode(&plain)?;
        self.check_index(&index)?;
        Ok(index)
    }

    /// `verify` without the key: both stored objects match their checksums,
    /// sizes and kinds.
    pub fn verify_stored(&self, chunk: &[u8], index: &[u8]) -> Result<(), ManifestError> {
        for (bytes, checksum, size, kind) in [
            (chunk, &self.checksum, self.stored_size, ObjectKind::Chunk),
            (
                index,
                &self.index_checksum,
                self.index_stored_size,
                ObjectKind::Index,
            ),
        ] {
            self.check_stored(bytes, checksum, size)?;
            let header = format::read_header(bytes)?;
            if header.kind != kind {
                return Err(FormatError::WrongKind {
                    expected: kind,
                    found: header.kind,
                }
                .into());
            }
        }
        Ok(())
    }

    /// `verify --read-data` with the key: everything [`ChunkRef::verify_stored`]
    /// checks, plus both objects decrypt and decode, their content addresses
    /// match, and the index holds exactly the digests of the chunk's records.
    /// Returns the number of live records.
    pub fn verify_with_key(
        &self,
        chunk: &[u8],
        index: &[u8],
        codec: &Codec,
    ) -> Result<u64, ManifestError> {
        let idx = self.read_index(index, codec)?;
        self.check_stored(chunk, &self.checksum, self.stored_size)?;
        let plain = format::decode(chunk, ObjectKind::Chunk, codec, Some(&self.id))?;
        let records = decode_chunk(&plain)?;
        if ChunkIndex::from_records(&records) != idx {
            return Err(ManifestError::Inconsistent(format!(
                "the index of chunk {} does not match the chunk's records",
                self.id
            )));
        }
        Ok(self.live_records())
    }

    fn check_stored(&self, bytes: &[u8], checksum: &str, size: u64) -> Result<(), ManifestError> {
        if bytes.len() as u64 != size {
            return Err(ManifestError::Inconsistent(format!(
                "an object of chunk {} is {} bytes but was stored with {size}; it is damaged or truncated",
                self.id,
                bytes.len()
            )));
        }
        format::verify_stored(bytes, checksum)?;
        Ok(())
    }

    /// Records of this chunk that belong to the snapshot.
    pub fn live_records(&self) -> u64 {
        self.records.saturating_sub(self.excluded_ids.len() as u64)
    }

    /// Checks this reference against the chunk's index: same record count,
    /// every excluded id present in the chunk.
    pub fn check_index(&self, index: &ChunkIndex) -> Result<(), ManifestError> {
        if index.entries.len() as u64 != self.records {
            return Err(ManifestError::Inconsistent(format!(
                "chunk {} is referenced with {} records but its index lists {}",
                self.id,
                self.records,
                index.entries.len()
            )));
        }
        let ids: HashSet<&str> = index.entries.iter().map(|(id, _)| id.as_str()).collect();
        if let Some(missing) = self.excluded_ids.iter().find(|x| !ids.contains(x.as_str())) {
            return Err(ManifestError::Inconsistent(format!(
                "chunk {} excludes record {missing:?} which it does not hold",
                self.id
            )));
        }
        Ok(())
    }
}

/// One collection in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionSnapshot {
    pub name: String,
    /// The collection's id (UUID) on the server it was read from.
    pub id: String,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub database: String,
    /// Collection metadata, verbatim.
    pub metadata: Option<Value>,
    /// `configuration_json` as the server returned it, verbatim.
    pub configuration_json: Value,
    /// `schema` as the server returned it, verbatim.
    pub schema: Option<Value>,
    /// Records in this snapshot of the collection.
    pub record_count: u64,
    /// Chunks holding the records, in order.
    pub chunks: Vec<ChunkRef>,
}

/// A snapshot manifest (`snapshots/<id>`), written last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub snapshot_id: SnapshotId,
    /// What `list` shows (stored under the key `metadata`).
    pub metadata: BackupMetadata,
    /// The snapshot whose chunks this one reuses (for incrementals); a
    /// snapshot restores without it.
    pub parent: Option<SnapshotId>,
    pub host: String,
    pub trigger: Trigger,
    pub duration_ms: u64,
    pub encrypted: bool,
    /// Stored bytes this backup uploaded (new chunks, indexes).
    pub bytes_written: u64,
    /// Stored bytes of all chunks and indexes the snapshot references.
    pub bytes_referenced: u64,
    pub collections: Vec<CollectionSnapshot>,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// Hex SHA-256 over every collection's name and chunk references (ids,
    /// record counts, exclusions, index ids): what `BackupMetadata::checksum`
    /// must hold. Independent of stored checksums, so re-uploading an
    /// encrypted chunk (new nonce) does not change it.
    pub fn content_checksum(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut put = |b: &[u8]| {
            ctx.update(&(b.len() as u64).to_le_bytes());
            ctx.update(b);
        };
        put(b"chromaprod snapshot content v1");
        for c in &self.collections {
            put(c.name.as_bytes());
            put(&c.record_count.to_le_bytes());
            for r in &c.chunks {
                put(r.id.as_bytes());
                put(&r.records.to_le_bytes());
                put(r.index_id.as_bytes());
                put(&(r.excluded_ids.len() as u64).to_le_bytes());
                for x in &r.excluded_ids {
                    put(x.as_bytes());
                }
            }
        }
        super::crypto::to_hex(ctx.finish().as_ref())
    }

    /// Fills in the derived fields (`collections`, `size_bytes`,
    /// `bytes_referenced`, `checksum`) from the collection list.
    pub fn finalize(&mut self) {
        self.metadata.collections = self.collections.iter().map(|c| c.name.clone()).collect();
        let referenced: u64 = self
            .collections
            .iter()
            .flat_map(|c| &c.chunks)
            .map(|r| r.stored_size + r.index_stored_size)
            .sum();
        self.bytes_referenced = referenced;
        self.metadata.size_bytes = referenced;
        self.metadata.checksum = self.content_checksum();
    }

    /// Checks internal consistency; a manifest that fails must not be
    /// written or restored from.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Inconsistent(s));
        if self.format_version != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedVersion {
                found: self.format_version,
                supported: MANIFEST_FORMAT,
            });
        }
        if self.metadata.backup_id != self.snapshot_id {
            return bad(format!(
                "backup_id {} differs from snapshot_id {}",
                self.metadata.backup_id, self.snapshot_id
            ));
        }
        if humantime::parse_rfc3339(&self.metadata.created_at).is_err() {
            return bad(format!(
                "created_at {:?} is not an RFC 3339 UTC time",
                self.metadata.created_at
            ));
        }
        if self.parent.as_ref() == Some(&self.snapshot_id) {
            return bad("the snapshot names itself as parent".into());
        }
        if self.metadata.backup_type == BackupType::Incremental && self.parent.is_none() {
            return bad("an incremental snapshot has no parent".into());
        }
        let names: Vec<String> = self.collections.iter().map(|c| c.name.clone()).collect();
        if names != self.metadata.collections {
            return bad("the collection list differs from the collections described".into());
        }
        let mut seen_names = HashSet::new();
        let mut referenced = 0u64;
        for c in &self.collections {
            if c.name.is_empty() {
                return bad("a collection has an empty name".into());
            }
            if !seen_names.insert(c.name.as_str()) {
                return bad(format!("collection {:?} appears twice", c.name));
            }
            let mut chunk_ids = HashSet::new();
            let mut live = 0u64;
            for r in &c.chunks {
                for (what, v) in [
                    ("chunk id", &r.id),
                    ("chunk checksum", &r.checksum),
                    ("index id", &r.index_id),
                    ("index checksum", &r.index_checksum),
                ] {
                    if !is_hex64(v) {
                        return bad(format!(
                            "collection {:?}: {what} {v:?} is not 64 lowercase hex characters",
                            c.name
                        ));
                    }
                }
                if !chunk_ids.insert(r.id.as_str()) {
                    return bad(format!(
                        "collection {:?} references chunk {} twice",
                        c.name, r.id
                    ));
                }
                if r.records == 0 {
                    return bad(format!("chunk {} has no records", r.id));
                }
                let excluded: HashSet<&str> = r.excluded_ids.iter().map(String::as_str).collect();
                if excluded.len() != r.excluded_ids.len() {
                    return bad(format!("chunk {} excludes a record twice", r.id));
                }
                if r.excluded_ids.len() as u64 >= r.records {
                    return bad(format!(
                        "chunk {} excludes all of its {} records (it should not be referenced)",
                        r.id, r.records
                    ));
                }
                live += r.live_records();
                referenced += r.stored_size + r.index_stored_size;
            }
            if live != c.record_count {
                return bad(format!(
                    "collection {:?} claims {} records but its chunks hold {live}",
                    c.name, c.record_count
                ));
            }
        }
        if referenced != self.bytes_referenced || referenced != self.metadata.size_bytes {
            return bad(format!(
                "size is recorded as {} / {} bytes but the chunks add up to {referenced}",
                self.bytes_referenced, self.metadata.size_bytes
            ));
        }
        let checksum = self.content_checksum();
        if checksum != self.metadata.checksum {
            return bad(format!(
                "content checksum is {} but the chunk list hashes to {checksum}",
                self.metadata.checksum
            ));
        }
        Ok(())
    }

    /// Validates, then encodes as a `Manifest` object.
    pub fn encode(&self, codec: &Codec) -> Result<Encoded, ManifestError> {
        self.validate()?;
        Ok(format::encode_json(ObjectKind::Manifest, self, codec)?)
    }

    /// Decodes a `Manifest` object and validates it. `expected_id`, when
    /// given, must be the snapshot id the object was stored under.
    pub fn decode(
        bytes: &[u8],
        codec: &Codec,
        expected_id: Option<&SnapshotId>,
    ) -> Result<Self, ManifestError> {
        let plain = format::decode(bytes, ObjectKind::Manifest, codec, None)?;
        let version: Option<u64> = serde_json::from_slice::<Value>(&plain)
            .ok()
            .and_then(|v| v.get("format_version").and_then(Value::as_u64));
        if let Some(v) = version.filter(|v| *v != u64::from(MANIFEST_FORMAT)) {
            return Err(ManifestError::UnsupportedVersion {
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: MANIFEST_FORMAT,
            });
        }
        let m: Self = serde_json::from_slice(&plain).map_err(|e| {
            ManifestError::Format(FormatError::Malformed {
                what: "manifest".into(),
                why: e.to_string(),
            })
        })?;
        if let Some(id) = expected_id {
            if &m.snapshot_id != id {
                return Err(ManifestError::Inconsistent(format!(
                    "stored as snapshot {id} but describes snapshot {}",
                    m.snapshot_id
                )));
            }
        }
        m.validate()?;
        Ok(m)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // The planner before it streamed: ids in maps, every current (id,
    // digest) pair at once. Kept as the reference the streaming planner is
    // checked against.
    /// What an incremental backup of one collection must do.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct IncrementalPlan {
        /// Parent chunks to reference again, with merged exclusions.
        pub keep: Vec<KeptChunk>,
        /// Ids whose current records go into new chunks, in the order they
        /// were seen: changed, new, and those moved out of compacted chunks.
        pub write_ids: Vec<String>,
        /// Ids present in the parent with a different digest.
        pub changed_ids: Vec<String>,
        /// Ids absent from the parent.
        pub new_ids: Vec<String>,
        /// Parent ids absent now.
        pub deleted_ids: Vec<String>,
        /// Parent chunks dropped (fully superseded, or compacted), by id.
        pub dropped_chunks: Vec<String>,
        /// Unchanged ids rewritten because their chunk was compacted.
        pub compacted_ids: Vec<String>,
    }

    /// Plans an incremental backup of one collection.
    ///
    /// `parent` is the parent snapshot's chunk references for the collection
    /// with their indexes; `current` yields every (id, digest) the collection
    /// holds now, in the order the engine read it. Unchanged records stay
    /// where they are; a changed or deleted record is masked in its old chunk
    /// (`excluded_ids`); changed and new records are written to new chunks.
    /// A kept chunk whose excluded fraction would exceed `compact_threshold`
    /// is dropped and its remaining live records rewritten, so old chunks do
    /// not linger mostly dead. Pure and deterministic.
    pub fn plan_incremental(
        parent: &[(ChunkRef, ChunkIndex)],
        current: impl IntoIterator<Item = (String, RecordDigest)>,
        compact_threshold: f64,
    ) -> IncrementalPlan {
        // Live parent records: id -> (chunk position, digest).
        let mut live: HashMap<&str, (usize, RecordDigest)> = HashMap::new();
        let mut new_exclusions: Vec<Vec<String>> = vec![Vec::new(); parent.len()];
        for (pos, (chunk, index)) in parent.iter().enumerate() {
            let excluded: HashSet<&str> = chunk.excluded_ids.iter().map(String::as_str).collect();
            for (id, digest) in &index.entries {
                if excluded.contains(id.as_str()) {
                    continue;
                }
                if let Some((old_pos, _)) = live.insert(id.as_str(), (pos, *digest)) {
                    // Live twice (not produced by this code): keep the later one.
                    new_exclusions[old_pos].push(id.clone());
                }
            }
        }

        let mut plan = IncrementalPlan::default();
        let mut seen: HashSet<String> = HashSet::new();
        // (id, unchanged-and-kept-in-chunk) in current order, for compaction.
        let mut order: Vec<(String, Option<usize>)> = Vec::new();
        for (id, digest) in current {
            if !seen.insert(id.clone()) {
                continue; // a duplicate id in the listing: the first one counts
            }
            match live.get(id.as_str()) {
                Some((pos, old)) if *old == digest => order.push((id, Some(*pos))),
                Some((pos, _)) => {
                    new_exclusions[*pos].push(id.clone());
                    plan.changed_ids.push(id.clone());
                    order.push((id, None));
                }
                None => {
                    plan.new_ids.push(id.clone());
                    order.push((id, None));
                }
            }
        }
        for (pos, (_, index)) in parent.iter().enumerate() {
            for (id, _) in &index.entries {
                if let Some((p, _)) = live.get(id.as_str()) {
                    if *p == pos && !seen.contains(id) {
                        new_exclusions[pos].push(id.clone());
                        plan.deleted_ids.push(id.clone());
                    }
                }
            }
        }

        let mut compacted = vec![false; parent.len()];
        for (pos, (chunk, _)) in parent.iter().enumerate() {
            let mut excluded: Vec<String> = chunk.excluded_ids.clone();
            excluded.extend(new_exclusions[pos].iter().cloned());
            excluded.sort();
            excluded.dedup();
            let total = chunk.records.max(1) as f64;
            if excluded.len() as u64 >= chunk.records {
                plan.dropped_chunks.push(chunk.id.clone());
            } else if excluded.len() as f64 / total > compact_threshold {
                compacted[pos] = true;
                plan.dropped_chunks.push(chunk.id.clone());
            } else {
                plan.keep.push(KeptChunk {
                    newly_excluded: new_exclusions[pos].len(),
                    chunk: ChunkRef {
                        excluded_ids: excluded,
                        ..chunk.clone()
                    },
                });
            }
        }

        for (id, kept_in) in order {
            match kept_in {
                None => plan.write_ids.push(id),
                Some(pos) if compacted[pos] => {
                    plan.compacted_ids.push(id.clone());
                    plan.write_ids.push(id);
                }
                Some(_) => {}
            }
        }
        plan
    }

    use crate::backup::crypto::DataKey;
    use crate::backup::records::tests::synthetic;
    use crate::backup::records::{record_digest, ChunkPlanner, Record};
    use proptest::prelude::*;

    fn sid(s: &str) -> SnapshotId {
        SnapshotId::parse(s).expect("id")
    }

    #[test]
    fn snapshot_ids_are_validated() {
        SnapshotId::parse("0123456789abcdef").expect("valid");
        let g = SnapshotId::generate().expect("rng");
        SnapshotId::parse(g.as_str()).expect("generated ids parse");
        for bad in [
            "",
            "../../../etc/pa",
            "0123456789abcde/",
            "../0123456789abcd",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcdeg",
            "0123456789abcd\n",
            "０123456789abcde",
        ] {
            assert!(SnapshotId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let json = r#""../etc/passwd""#;
        assert!(serde_json::from_str::<SnapshotId>(json).is_err());
    }

    /// Writes records as chunks with the planner; returns refs + indexes and
    /// the total plaintext size.
    fn write_chunks(
        records: &[Record],
        codec: &Codec,
        target: usize,
    ) -> (Vec<(ChunkRef, ChunkIndex)>, usize) {
        let mut p = ChunkPlanner::new(target, 10_000);
        let mut planned = Vec::new();
        for r in records {
            planned.extend(p.push(r).expect("push"));
        }
        planned.extend(p.finish());
        let mut plain = 0;
        let out = planned
            .into_iter()
            .map(|c| {
                plain += c.plaintext.len();
                let (r, _, _) = ChunkRef::encode(&c, codec).expect("encode");
                (r, c.index)
            })
            .collect();
        (out, plain)
    }

    /// The streaming planner run the way the engine runs it, as an
    /// `IncrementalPlan` (without the changed/new/deleted split, which it
    /// does not keep): unchanged records skipped, the rest written in the
    /// order read, then the live records of compacted chunks.
    fn streamed(
        parent: &[(ChunkRef, ChunkIndex)],
        current: &[Record],
        threshold: f64,
    ) -> (IncrementalPlan, usize) {
        let live: u64 = parent.iter().map(|(c, _)| c.live_records()).sum();
        let mut p = IncrementalPlanner::new(live, threshold);
        for (c, i) in parent {
            p.add_parent(c, i);
        }
        let mut plan = IncrementalPlan::default();
        for r in current {
            if !p.unchanged(&record_digest(r)) {
                plan.write_ids.push(r.id.clone());
            }
        }
        let memory = p.memory_bytes();
        for (c, i) in parent {
            match p.decide(c, i) {
                ChunkDecision::Keep(k) => plan.keep.push(k),
                ChunkDecision::Drop { chunk_id } => plan.dropped_chunks.push(chunk_id),
                ChunkDecision::Compact { chunk_id, rewrite } => {
                    plan.dropped_chunks.push(chunk_id);
                    for (id, d) in &i.entries {
                        if rewrite.contains(d) {
                            plan.compacted_ids.push(id.clone());
                            plan.write_ids.push(id.clone());
                        }
                    }
                }
            }
        }
        (plan, memory)
    }

    /// The streaming planner decides what the reference planner decides:
    /// the same chunks kept with the same exclusions, the same chunks
    /// dropped, the same records written.
    fn assert_same_plan(parent: &[(ChunkRef, ChunkIndex)], current: &[Record], threshold: f64) {
        let reference = plan_incremental(
            parent,
            current.iter().map(|r| (r.id.clone(), record_digest(r))),
            threshold,
        );
        let (got, _) = streamed(parent, current, threshold);
        assert_eq!(got.keep, reference.keep);
        assert_eq!(got.dropped_chunks, reference.dropped_chunks);
        let set = |v: &[String]| v.iter().cloned().collect::<HashSet<String>>();
        assert_eq!(set(&got.write_ids), set(&reference.write_ids));
        assert_eq!(got.write_ids.len(), reference.write_ids.len());
        assert_eq!(set(&got.compacted_ids), set(&reference.compacted_ids));
    }

    fn manifest(chunks: Vec<ChunkRef>, parent: Option<SnapshotId>) -> Manifest {
        let id = sid("00112233445566ff");
        let record_count = chunks.iter().map(ChunkRef::live_records).sum();
        let mut m = Manifest {
            format_version: MANIFEST_FORMAT,
            snapshot_id: id.clone(),
            metadata: BackupMetadata {
                backup_id: id,
                created_at: "2026-11-25T20:00:00Z".into(),
                backup_type: if parent.is_some() {
                    BackupType::Incremental
                } else {
                    BackupType::Full
                },
                collections: vec![],
                size_bytes: 0,
                checksum: String::new(),
                chroma_version: "1.5.9".into(),
            },
            parent,
            host: "db1".into(),
            trigger: Trigger::Schedule,
            duration_ms: 1234,
            encrypted: true,
            bytes_written: 0,
            bytes_referenced: 0,
            collections: vec![CollectionSnapshot {
                name: "docs".into(),
                id: "6b4a1c1e-0000-4000-8000-000000000000".into(),
                tenant: "default_tenant".into(),
                database: "default_database".into(),
                metadata: Some(serde_json::json!({"owner": "search"})),
                configuration_json: serde_json::json!({"hnsw": {"space": "l2", "ef_search": 100}}),
                schema: Some(serde_json::json!({"defaults": {}})),
                record_count,
                chunks,
            }],
        };
        m.finalize();
        m
    }

    fn current(records: &[Record]) -> Vec<(String, RecordDigest)> {
        records
            .iter()
            .map(|r| (r.id.clone(), record_digest(r)))
            .collect()
    }

    #[test]
    fn manifest_round_trip_and_validation() {
        let codec = Codec::Encrypted(DataKey::generate().expect("rng"));
        let records: Vec<Record> = (0..300).map(|i| synthetic(i, 8)).collect();
        let (chunks, _) = write_chunks(&records, &codec, 8 * 1024);
        let refs: Vec<ChunkRef> = chunks.iter().map(|(r, _)| r.clone()).collect();
        let m = manifest(refs, None);
        m.validate().expect("valid");
        let e = m.encode(&codec).expect("encode");
        let back = Manifest::decode(&e.bytes, &codec, Some(&m.snapshot_id)).expect("decode");
        assert_eq!(back, m);
        assert!(Manifest::decode(&e.bytes, &codec, Some(&sid("ffffffffffffffff"))).is_err());
        assert!(matches!(
            Manifest::decode(&e.bytes, &Codec::Plain, None),
            Err(ManifestError::Format(FormatError::EncryptedNeedsKey))
        ));
        for (r, idx) in &chunks {
            r.check_index(idx).expect("index matches");
        }

        let broken = |f: &dyn Fn(&mut Manifest)| {
            let mut x = m.clone();
            f(&mut x);
            x.validate().expect_err("must be rejected")
        };
        broken(&|x| x.collections[0].record_count += 1);
        broken(&|x| {
            let c = x.collections[0].chunks[0].clone();
            x.collections[0].chunks.push(c);
        });
        broken(&|x| x.collections[0].chunks[0].id = "../../etc/passwd".into());
        broken(&|x| x.collections[0].chunks[0].excluded_ids = vec!["a".into(), "a".into()]);
        broken(&|x| x.metadata.backup_id = sid("0000000000000001"));
        broken(&|x| x.metadata.checksum = "0".repeat(64));
        broken(&|x| x.metadata.backup_type = BackupType::Incremental);
        broken(&|x| x.format_version = 2);
        broken(&|x| x.bytes_referenced += 1);
        broken(&|x| x.metadata.created_at = "yesterday".into());
        // Exclusions are reflected in the count after sealing.
        let mut x = m.clone();
        x.collections[0].chunks[0].excluded_ids = vec!["doc-000000".into()];
        x.collections[0].record_count -= 1;
        x.finalize();
        x.validate().expect("valid with exclusion");
        let idx = &chunks[0].1;
        x.collections[0].chunks[0]
            .check_index(idx)
            .expect("excluded id is in chunk");
        x.collections[0].chunks[0].excluded_ids = vec!["nope".into()];
        assert!(x.collections[0].chunks[0].check_index(idx).is_err());
    }

    #[test]
    fn chunk_refs_read_and_verify_with_and_without_the_key() {
        let codec = Codec::Encrypted(DataKey::generate().expect("rng"));
        let records: Vec<Record> = (0..50).map(|i| synthetic(i, 8)).collect();
        let mut p = ChunkPlanner::new(1 << 30, 10_000);
        for r in &records {
            assert!(p.push(r).expect("push").is_none());
        }
        let planned = p.finish().expect("one chunk");
        let (mut r, chunk, index) = ChunkRef::encode(&planned, &codec).expect("encode");
        r.verify_stored(&chunk.bytes, &index.bytes)
            .expect("no key needed");
        assert_eq!(
            r.verify_with_key(&chunk.bytes, &index.bytes, &codec)
                .expect("key"),
            50
        );
        r.excluded_ids = vec!["doc-000003".into(), "doc-000007".into()];
        let live = r.read_records(&chunk.bytes, &codec).expect("read");
        assert_eq!(live.len(), 48);
        assert!(live
            .iter()
            .all(|x| x.id != "doc-000003" && x.id != "doc-000007"));
        assert!(live[0].bit_eq(&records[0]));
        // Without the key: only the stored-bytes checks are possible.
        assert!(matches!(
            r.read_records(&chunk.bytes, &Codec::Plain),
            Err(ManifestError::Format(FormatError::EncryptedNeedsKey))
        ));
        // Damage is found with and without the key.
        let mut bad = chunk.bytes.clone();
        bad[40] ^= 0x10;
        assert!(r.verify_stored(&bad, &index.bytes).is_err());
        assert!(r.read_records(&bad, &codec).is_err());
        assert!(r
            .verify_stored(&chunk.bytes[..chunk.bytes.len() - 1], &index.bytes)
            .is_err());
        assert!(r.verify_stored(&index.bytes, &chunk.bytes).is_err());
        // An index that lies about the records is caught with the key.
        let mut lying = planned.index.clone();
        lying.entries[5].1 = lying.entries[6].1;
        let li =
            format::encode(ObjectKind::Index, &lying.encode().expect("idx"), &codec).expect("enc");
        let liar = ChunkRef {
            index_id: li.id.clone(),
            index_checksum: li.checksum.clone(),
            index_stored_size: li.bytes.len() as u64,
            ..r.clone()
        };
        liar.verify_stored(&chunk.bytes, &li.bytes)
            .expect("stored bytes are fine");
        assert!(matches!(
            liar.verify_with_key(&chunk.bytes, &li.bytes, &codec),
            Err(ManifestError::Inconsistent(_))
        ));
    }

    #[test]
    fn newer_manifest_version_is_named() {
        let json = br#"{"format_version":7,"whatever":true}"#;
        let e = format::encode(ObjectKind::Manifest, json, &Codec::Plain).expect("enc");
        let err = Manifest::decode(&e.bytes, &Codec::Plain, None).expect_err("v7");
        assert!(matches!(
            err,
            ManifestError::UnsupportedVersion { found: 7, .. }
        ));
    }

    #[test]
    fn one_percent_changed_writes_only_those_records() {
        let codec = Codec::Plain;
        let n = 10_000;
        let mut records: Vec<Record> = (0..n).map(|i| synthetic(i, 32)).collect();
        let (parent, full_plain) = write_chunks(&records, &codec, 64 * 1024);
        assert!(parent.len() > 20);

        // Update 1% of records spread over the collection, delete 5, add 5.
        for i in (0..n).step_by(100) {
            records[i].document = Some(format!("updated document {i}"));
        }
        let deleted: Vec<String> = records.drain(50..55).map(|r| r.id).collect();
        records.extend((n..n + 5).map(|i| synthetic(i, 32)));

        let plan = plan_incremental(&parent, current(&records), DEFAULT_COMPACT_THRESHOLD);
        assert_same_plan(&parent, &records, DEFAULT_COMPACT_THRESHOLD);
        assert_eq!(plan.changed_ids.len(), 100);
        assert_eq!(plan.new_ids.len(), 5);
        assert_eq!(plan.deleted_ids, deleted);
        assert!(plan.dropped_chunks.is_empty(), "no chunk is mostly dead");
        assert!(plan.compacted_ids.is_empty());
        assert_eq!(plan.keep.len(), parent.len());
        assert_eq!(plan.write_ids.len(), 105);

        let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
        let to_write: Vec<Record> = plan
            .write_ids
            .iter()
            .map(|id| (*by_id[id.as_str()]).clone())
            .collect();
        let (new_chunks, new_plain) = write_chunks(&to_write, &codec, 64 * 1024);
        assert!(
            new_plain * 100 <= full_plain * 3,
            "wrote {new_plain} of {full_plain} plaintext bytes"
        );

        // The new snapshot is consistent and holds exactly the current records.
        let mut refs: Vec<ChunkRef> = plan.keep.iter().map(|k| k.chunk.clone()).collect();
        refs.extend(new_chunks.iter().map(|(r, _)| r.clone()));
        let m = manifest(refs, Some(sid("00000000000000aa")));
        m.validate().expect("valid incremental");
        assert_eq!(m.collections[0].record_count, records.len() as u64);
        let mut live: HashMap<String, RecordDigest> = HashMap::new();
        let all_indexes: HashMap<&str, &ChunkIndex> = parent
            .iter()
            .chain(&new_chunks)
            .map(|(r, i)| (r.id.as_str(), i))
            .collect();
        for r in &m.collections[0].chunks {
            let idx = all_indexes[r.id.as_str()];
            r.check_index(idx).expect("consistent");
            for (id, d) in &idx.entries {
                if !r.excluded_ids.contains(id) {
                    assert!(live.insert(id.clone(), *d).is_none(), "{id} live twice");
                }
            }
        }
        let expected: HashMap<String, RecordDigest> = current(&records).into_iter().collect();
        assert_eq!(live, expected);

        // Unchanged collection: nothing to write, nothing newly excluded.
        let again = plan_incremental(
            &parent,
            current(&(0..n).map(|i| synthetic(i, 32)).collect::<Vec<_>>()),
            DEFAULT_COMPACT_THRESHOLD,
        );
        assert!(again.write_ids.is_empty());
        assert!(again.keep.iter().all(|k| k.newly_excluded == 0));
    }

    #[test]
    fn mostly_dead_chunks_are_compacted() {
        let records: Vec<Record> = (0..40).map(|i| synthetic(i, 4)).collect();
        let (parent, _) = write_chunks(&records, &Codec::Plain, 1 << 30); // one chunk
        assert_eq!(parent.len(), 1);
        let mut now = records.clone();
        // Change 45%: kept with exclusions.
        for r in now.iter_mut().take(18) {
            r.document = Some("changed".into());
        }
        let plan = plan_incremental(&parent, current(&now), 0.5);
        assert_same_plan(&parent, &now, 0.5);
        assert_eq!(plan.keep.len(), 1);
        assert_eq!(plan.keep[0].chunk.excluded_ids.len(), 18);
        assert_eq!(plan.write_ids.len(), 18);
        // Change 55%: the chunk is dropped and every record rewritten.
        for r in now.iter_mut().take(22) {
            r.document = Some("changed".into());
        }
        let plan = plan_incremental(&parent, current(&now), 0.5);
        assert_same_plan(&parent, &now, 0.5);
        assert!(plan.keep.is_empty());
        assert_eq!(plan.dropped_chunks, vec![parent[0].0.id.clone()]);
        assert_eq!(plan.compacted_ids.len(), 18);
        assert_eq!(plan.write_ids.len(), 40);
        let ids: Vec<&str> = plan.write_ids.iter().map(String::as_str).collect();
        let expected: Vec<&str> = now.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, expected, "written in the order read");
        // Everything deleted: the chunk is dropped, nothing to write.
        let plan = plan_incremental(&parent, Vec::new(), 0.5);
        assert_same_plan(&parent, &[], 0.5);
        assert!(plan.keep.is_empty() && plan.write_ids.is_empty());
        assert_eq!(plan.deleted_ids.len(), 40);
    }

    #[test]
    fn earlier_exclusions_carry_over() {
        let records: Vec<Record> = (0..20).map(|i| synthetic(i, 4)).collect();
        let (mut parent, _) = write_chunks(&records, &Codec::Plain, 1 << 30);
        parent[0].0.excluded_ids = vec!["doc-000003".into()];
        // doc-000003 was superseded by a later chunk (not part of this parent
        // slice): it is current and must be written, not resurrected.
        let plan = plan_incremental(&parent, current(&records), 0.5);
        assert_same_plan(&parent, &records, 0.5);
        assert_eq!(
            plan.keep[0].chunk.excluded_ids,
            vec!["doc-000003".to_string()]
        );
        assert_eq!(plan.new_ids, vec!["doc-000003".to_string()]);
    }

    #[test]
    fn planner_memory_is_sixteen_bytes_a_record_whatever_the_ids() {
        // Ids of 200 bytes: the planner holds none of them.
        let long = |i: usize| Record {
            id: format!("{}-{i:08}", "x".repeat(190)),
            ..synthetic(i, 4)
        };
        let records: Vec<Record> = (0..5_000).map(long).collect();
        let (parent, _) = write_chunks(&records, &Codec::Plain, 64 * 1024);
        let mut now = records.clone();
        for r in now.iter_mut().step_by(100) {
            r.document = Some("changed".into());
        }
        let (plan, memory) = streamed(&parent, &now, DEFAULT_COMPACT_THRESHOLD);
        assert_eq!(plan.write_ids.len(), 50);
        let n = records.len();
        assert!(
            memory <= n * 16 + n.div_ceil(64) * 8 + 64,
            "{memory} bytes for {n} records"
        );
        assert_same_plan(&parent, &now, DEFAULT_COMPACT_THRESHOLD);
    }

    #[test]
    fn a_record_live_in_two_parent_chunks_stays_live_once() {
        let records: Vec<Record> = (0..10).map(|i| synthetic(i, 4)).collect();
        let (mut a, _) = write_chunks(&records[..5], &Codec::Plain, 1 << 30);
        let (b, _) = write_chunks(&records[4..], &Codec::Plain, 1 << 30);
        a.extend(b); // doc-000004 is live in both
        let (plan, _) = streamed(&a, &records, 0.5);
        assert!(plan.write_ids.is_empty());
        let excluded: Vec<&String> = plan
            .keep
            .iter()
            .flat_map(|k| &k.chunk.excluded_ids)
            .collect();
        assert_eq!(excluded, vec!["doc-000004"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn garbage_manifests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes, &Codec::Plain, None);
            if let Ok(e) = format::encode(ObjectKind::Manifest, &bytes, &Codec::Plain) {
                prop_assert!(Manifest::decode(&e.bytes, &Codec::Plain, None).is_err());
            }
        }

        #[test]
        fn flipped_manifest_bits_are_errors(bit in any::<prop::sample::Index>()) {
            let refs = vec![ChunkRef {
                id: "a".repeat(64), checksum: "b".repeat(64), stored_size: 10, records: 3,
                index_id: "c".repeat(64), index_checksum: "d".repeat(64), index_stored_size: 5,
                excluded_ids: vec![],
            }];
            let m = manifest(refs, None);
            let e = m.encode(&Codec::Plain).expect("enc");
            let mut bytes = e.bytes.clone();
            let b = bit.index(bytes.len() * 8);
            bytes[b / 8] ^= 1 << (b % 8);
            prop_assert!(format::verify_stored(&bytes, &e.checksum).is_err());
            prop_assert!(Manifest::decode(&bytes, &Codec::Plain, None).is_err());
        }

        #[test]
        fn plan_is_exact_for_random_edits(
            n in 1usize..120,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..40),
        ) {
            let mut records: Vec<Record> = (0..n).map(|i| synthetic(i, 2)).collect();
            let (parent, _) = write_chunks(&records, &Codec::Plain, 1024);
            for (next, (at, op)) in (n..).zip(edits) {
                if records.is_empty() { break; }
                let i = at.index(records.len());
                match op {
                    0 => records[i].document = Some(format!("edit {next}")),
                    1 => { records.remove(i); }
                    _ => records.push(synthetic(next + 1000, 2)),
                }
            }
            let plan = plan_incremental(&parent, current(&records), 0.5);
            assert_same_plan(&parent, &records, 0.5);
            let idx: HashMap<&str, &ChunkIndex> = parent.iter().map(|(r, i)| (r.id.as_str(), i)).collect();
            let mut live: HashSet<String> = HashSet::new();
            for k in &plan.keep {
                for (id, _) in &idx[k.chunk.id.as_str()].entries {
                    if !k.chunk.excluded_ids.contains(id) {
                        prop_assert!(live.insert(id.clone()));
                    }
                }
                prop_assert!(k.chunk.excluded_ids.len() as f64 / k.chunk.records as f64 <= 0.5);
            }
            for id in &plan.write_ids {
                prop_assert!(live.insert(id.clone()), "{} both kept and written", id);
            }
            let expected: HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
            prop_assert_eq!(live, expected);
        }
    }
}
