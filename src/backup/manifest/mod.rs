//! Snapshot manifests and the incremental plan.
//!
//! A [`Manifest`] lists, per collection, everything needed to restore it on
//! its own: the collection's settings verbatim and the chunks that hold its
//! records. An incremental snapshot reuses its parent's chunks and masks the
//! records that changed or were deleted (`excluded_ids`); the changed and
//! new records go into new chunks. There is never a chain to replay.
//!
//! The types of a manifest are here; a chunk as a snapshot references it is
//! [`ChunkRef`] (`chunk_ref.rs`), the streaming incremental plan is
//! [`IncrementalPlanner`] (`planner.rs`).

mod chunk_ref;
pub mod physical;
mod planner;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{self, Codec, Encoded, FormatError, ObjectKind};
use super::recall::QueriesRef;

pub use chunk_ref::ChunkRef;
pub use physical::{
    BlockRef, MigrationLevel, PhysicalCollection, PhysicalContent, PhysicalFile,
    PHYSICAL_MANIFEST_FORMAT,
};
pub use planner::{ChunkDecision, IncrementalPlanner, KeptChunk};

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
    /// Chroma's persist directory itself (a local single-node Chroma): its
    /// files, restored into an empty directory by `restore --data-dir`.
    /// Written with manifest format 2, which older readers refuse.
    Physical,
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
    /// Stored bytes the snapshot references (chunks, indexes, queries), = `bytes_referenced`.
    pub size_bytes: u64,
    /// [`Manifest::content_checksum`]: hex SHA-256 over the snapshot's
    /// chunk and index references, so two snapshots with equal content have
    /// equal checksums.
    pub checksum: String,
    /// Version of the Chroma server the snapshot was read from.
    pub chroma_version: String,
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
    /// Where Chroma's own change feed stood when this snapshot read the
    /// collection (a local Chroma with `chroma.persist_directory` set): the
    /// next incremental reads only the records written after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_mark: Option<ChangeMark>,
    /// The sample queries and the neighbours the live index returned for
    /// them when this snapshot was taken (`backup::recall`); absent in
    /// snapshots taken without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<QueriesRef>,
}

impl CollectionSnapshot {
    /// Stored bytes of the objects this collection references.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|r| r.stored_size + r.index_stored_size)
            .sum::<u64>()
            + self.queries.as_ref().map_or(0, |q| q.stored_size)
    }
}

/// A position in a local Chroma's change feed (`chroma::local`): the
/// collection's metadata segment and the sequence number of the last write
/// applied to it, in the database file `file` identifies. Every record of
/// the snapshot written at or before `seq_id` is as the snapshot holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeMark {
    pub segment: String,
    pub seq_id: u64,
    /// `chroma.sqlite3`'s identity (device, inode, creation time): a
    /// directory put back from a copy has another. Absent in marks an
    /// earlier chromaprod wrote, which are then not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
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
    /// Stored bytes of all chunks, indexes and queries objects the snapshot references.
    pub bytes_referenced: u64,
    /// Logical snapshots: the collections and their records. Empty in a
    /// physical snapshot.
    pub collections: Vec<CollectionSnapshot>,
    /// A physical snapshot's files (`backup_type` `physical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalContent>,
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
        if let Some(p) = &self.physical {
            put(b"physical");
            for f in &p.files {
                put(f.path.as_bytes());
                put(f.sha256.as_bytes());
                for b in &f.blocks {
                    put(b.id.as_bytes());
                }
            }
        }
        super::crypto::to_hex(ctx.finish().as_ref())
    }

    /// Fills in the derived fields (`collections`, `size_bytes`,
    /// `bytes_referenced`, `checksum`) from the collection list.
    pub fn finalize(&mut self) {
        self.metadata.collections = self.collection_names();
        let referenced = self.referenced_bytes();
        self.bytes_referenced = referenced;
        self.metadata.size_bytes = referenced;
        self.metadata.checksum = self.content_checksum();
    }

    /// The collection names `list` shows: a logical snapshot's
    /// collections, or the collections in a physical snapshot's copy.
    fn collection_names(&self) -> Vec<String> {
        match &self.physical {
            Some(p) => p.collections.iter().map(|c| c.name.clone()).collect(),
            None => self.collections.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// Stored bytes of the chunks and indexes (or blocks) referenced.
    fn referenced_bytes(&self) -> u64 {
        let chunks: u64 = self
            .collections
            .iter()
            .map(CollectionSnapshot::stored_bytes)
            .sum();
        chunks
            + self
                .physical
                .as_ref()
                .map_or(0, PhysicalContent::stored_bytes)
    }

    /// Whether this is a physical snapshot (Chroma's files).
    pub fn is_physical(&self) -> bool {
        self.physical.is_some()
    }

    /// Records in the snapshot.
    pub fn record_count(&self) -> u64 {
        match &self.physical {
            Some(p) => p.collections.iter().map(|c| c.records).sum(),
            None => self.collections.iter().map(|c| c.record_count).sum(),
        }
    }

    /// Checks internal consistency; a manifest that fails must not be
    /// written or restored from.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Inconsistent(s));
        let expected = if self.physical.is_some() {
            PHYSICAL_MANIFEST_FORMAT
        } else {
            MANIFEST_FORMAT
        };
        if self.format_version != expected {
            return Err(ManifestError::UnsupportedVersion {
                found: self.format_version,
                supported: PHYSICAL_MANIFEST_FORMAT,
            });
        }
        if (self.metadata.backup_type == BackupType::Physical) != self.physical.is_some() {
            return bad("a physical snapshot needs backup_type physical and its files, and only it has them".into());
        }
        if let Some(p) = &self.physical {
            if !self.collections.is_empty() {
                return bad("a physical snapshot lists logical collections".into());
            }
            if let Err(why) = p.validate() {
                return bad(format!("physical snapshot: {why}"));
            }
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
        if self.collection_names() != self.metadata.collections {
            return bad("the collection list differs from the collections described".into());
        }
        let mut seen_names = HashSet::new();
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
            }
            if let Some(q) = &c.queries {
                for (what, v) in [("queries id", &q.id), ("queries checksum", &q.checksum)] {
                    if !is_hex64(v) {
                        return bad(format!(
                            "collection {:?}: {what} {v:?} is not 64 lowercase hex characters",
                            c.name
                        ));
                    }
                }
            }
            if live != c.record_count {
                return bad(format!(
                    "collection {:?} claims {} records but its chunks hold {live}",
                    c.name, c.record_count
                ));
            }
        }
        let referenced = self.referenced_bytes();
        if referenced != self.bytes_referenced || referenced != self.metadata.size_bytes {
            return bad(format!(
                "size is recorded as {} / {} bytes but the objects add up to {referenced}",
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
        if let Some(v) = version.filter(|v| {
            *v != u64::from(MANIFEST_FORMAT) && *v != u64::from(PHYSICAL_MANIFEST_FORMAT)
        }) {
            return Err(ManifestError::UnsupportedVersion {
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: PHYSICAL_MANIFEST_FORMAT,
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
