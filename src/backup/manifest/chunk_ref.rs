//! A stored chunk as a snapshot references it: encoding, reading and
//! verifying its two objects (the chunk and its index).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::ManifestError;
use crate::backup::format::{self, Codec, Encoded, FormatError, ObjectKind};
use crate::backup::records::{decode_chunk, ChunkIndex, PlannedChunk, Record};

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
