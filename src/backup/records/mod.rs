//! What a chunk holds: records of one collection, exactly as Chroma
//! returned them, and the per-record digests that let an incremental
//! backup see which records changed.
//!
//! Chunk plaintext (before compression and encryption) is JSON:
//!
//! ```text
//! {"format":1,"records":[{"id":"…","embedding":"<base64 of f32 LE>","document":"…","metadata":{…},"uri":"…"},…]}
//! ```
//!
//! Absent fields mean `None`; an empty string, list or map is `Some`.
//! Embeddings are base64 of little-endian IEEE-754 `f32` bits, so every
//! value (NaN payloads, -0.0, subnormals, ±inf) round-trips bit-exactly.
//! Metadata stays JSON: integers stay integers, floats stay floats (serde_json
//! with `float_roundtrip` reads back exactly the `f64` it wrote).
//!
//! Record digests and chunk indexes are in `index.rs`, the cutting of a
//! collection's records into chunks in `planner.rs`.

mod index;
mod planner;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::format::FormatError;

pub use index::{record_digest, ChunkIndex, RecordDigest};
pub use planner::{ChunkPlanner, PlannedChunk};

/// Version of the chunk and index JSON layouts.
pub const CHUNK_FORMAT: u64 = 1;
/// Default chunk size target: 4 MiB of serialised records.
pub const DEFAULT_TARGET_BYTES: usize = 4 * 1024 * 1024;
/// Default cap on records per chunk.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;

/// One Chroma record as read from the server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub id: String,
    pub embedding: Option<Vec<f32>>,
    pub document: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub uri: Option<String>,
}

impl Record {
    /// About how many bytes this record occupies in memory once decoded
    /// (id, embedding, document, metadata keys and values, uri). Used to
    /// size fetch batches by bytes rather than by count.
    pub fn approx_bytes(&self) -> usize {
        fn value(v: &Value) -> usize {
            match v {
                Value::String(s) => 32 + s.len(),
                Value::Array(a) => 32 + a.iter().map(value).sum::<usize>(),
                Value::Object(o) => {
                    48 + o
                        .iter()
                        .map(|(k, v)| 32 + k.len() + value(v))
                        .sum::<usize>()
                }
                _ => 32,
            }
        }
        96 + self.id.len()
            + self.embedding.as_ref().map_or(0, |e| 4 * e.len())
            + self.document.as_ref().map_or(0, String::len)
            + self
                .metadata
                .as_ref()
                .map_or(0, |m| m.iter().map(|(k, v)| 32 + k.len() + value(v)).sum())
            + self.uri.as_ref().map_or(0, String::len)
    }

    /// Bit-level equality (NaN equals the same NaN, -0.0 differs from 0.0).
    pub fn bit_eq(&self, other: &Self) -> bool {
        let emb = |e: &Option<Vec<f32>>| {
            e.as_ref()
                .map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
        };
        self.id == other.id
            && emb(&self.embedding) == emb(&other.embedding)
            && self.document == other.document
            && self.metadata == other.metadata
            && self.uri == other.uri
    }
}

#[derive(Serialize)]
struct RecordOut<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<&'a str>,
}

#[derive(Deserialize)]
struct RecordIn {
    id: String,
    /// Decoded from base64 as it is parsed: the text is never held.
    #[serde(default, deserialize_with = "de_embedding")]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    document: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize)]
struct ChunkIn {
    format: u64,
    records: Vec<RecordIn>,
}

fn malformed(what: &str, why: impl ToString) -> FormatError {
    FormatError::Malformed {
        what: what.to_string(),
        why: why.to_string(),
    }
}

fn embedding_to_b64(e: &[f32]) -> String {
    let bytes: Vec<u8> = e.iter().flat_map(|f| f.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn embedding_from_b64(s: &str) -> Result<Vec<f32>, FormatError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| malformed("chunk record embedding", e))?;
    if bytes.len() % 4 != 0 {
        return Err(malformed(
            "chunk record embedding",
            "length is not a multiple of 4 bytes",
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A record's `embedding`: base64 of little-endian f32, or null.
fn de_embedding<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
    struct Embedding;
    impl<'de> serde::de::Visitor<'de> for Embedding {
        type Value = Option<Vec<f32>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a base64 embedding or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            embedding_from_b64(s).map(Some).map_err(E::custom)
        }
    }
    d.deserialize_option(Embedding)
}

/// One record's serialised JSON (an element of the chunk's `records`).
fn record_json(r: &Record) -> Result<Vec<u8>, FormatError> {
    let out = RecordOut {
        id: &r.id,
        embedding: r.embedding.as_deref().map(embedding_to_b64),
        document: r.document.as_deref(),
        metadata: r.metadata.as_ref(),
        uri: r.uri.as_deref(),
    };
    serde_json::to_vec(&out).map_err(|e| malformed("record", e))
}

const CHUNK_PREFIX: &[u8] = b"{\"format\":1,\"records\":[";
const CHUNK_SUFFIX: &[u8] = b"]}";

/// Serialises records as chunk plaintext (deterministic: same records, same bytes).
pub fn encode_chunk(records: &[Record]) -> Result<Vec<u8>, FormatError> {
    let mut out = CHUNK_PREFIX.to_vec();
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&record_json(r)?);
    }
    out.extend_from_slice(CHUNK_SUFFIX);
    Ok(out)
}

/// Parses chunk plaintext. Rejects unknown layout versions and duplicate ids.
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<Record>, FormatError> {
    let chunk: ChunkIn = serde_json::from_slice(bytes).map_err(|e| malformed("chunk", e))?;
    if chunk.format != CHUNK_FORMAT {
        return Err(FormatError::UnsupportedContentVersion {
            what: "chunk",
            found: chunk.format,
            supported: CHUNK_FORMAT,
        });
    }
    let mut seen = HashSet::with_capacity(chunk.records.len());
    if let Some(r) = chunk.records.iter().find(|r| !seen.insert(r.id.as_str())) {
        return Err(malformed(
            "chunk",
            format!("duplicate record id {:?}", r.id),
        ));
    }
    Ok(chunk
        .records
        .into_iter()
        .map(|r| Record {
            id: r.id,
            embedding: r.embedding,
            document: r.document,
            metadata: r.metadata,
            uri: r.uri,
        })
        .collect())
}
