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

use std::collections::HashSet;

use base64::Engine as _;
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::crypto::{from_hex, to_hex};
use super::format::FormatError;
use crate::mem::{large_buffer, LARGE_BUFFER_FROM};

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

/// A stable 128-bit digest of a record's canonical bytes (truncated
/// SHA-256; see [`record_digest`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordDigest(pub [u8; 16]);

impl std::fmt::Debug for RecordDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordDigest({})", to_hex(&self.0))
    }
}

impl Serialize for RecordDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for RecordDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        from_hex(&s)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("record digest must be 32 hex characters"))
    }
}

struct Canon(digest::Context);

impl Canon {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn tag(&mut self, t: u8) {
        self.0.update(&[t]);
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.tag(0),
            Some(s) => {
                self.tag(1);
                self.bytes(s.as_bytes());
            }
        }
    }
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.tag(b'n'),
            Value::Bool(false) => self.tag(b'f'),
            Value::Bool(true) => self.tag(b't'),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.tag(b'i');
                    self.0.update(&i.to_le_bytes());
                } else if let Some(u) = n.as_u64() {
                    self.tag(b'u');
                    self.0.update(&u.to_le_bytes());
                } else {
                    // serde_json numbers are i64, u64 or finite f64.
                    self.tag(b'd');
                    self.0
                        .update(&n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
                }
            }
            Value::String(s) => {
                self.tag(b's');
                self.bytes(s.as_bytes());
            }
            Value::Array(a) => {
                self.tag(b'a');
                self.0.update(&(a.len() as u64).to_le_bytes());
                for x in a {
                    self.value(x);
                }
            }
            Value::Object(o) => self.object(o),
        }
    }
    fn object(&mut self, o: &Map<String, Value>) {
        self.tag(b'o');
        self.0.update(&(o.len() as u64).to_le_bytes());
        let mut entries: Vec<(&String, &Value)> = o.iter().collect();
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (k, v) in entries {
            self.bytes(k.as_bytes());
            self.value(v);
        }
    }
}

/// The digest of a record: SHA-256 over a canonical encoding, truncated to
/// 16 bytes. The encoding is defined here, byte by byte (length-prefixed
/// fields, f32/f64 bit patterns, integers little-endian, metadata keys sorted
/// by their UTF-8 bytes), so it is stable across Rust releases, machines and
/// map implementations. Changing it is a format change.
pub fn record_digest(r: &Record) -> RecordDigest {
    let mut c = Canon(digest::Context::new(&digest::SHA256));
    c.0.update(b"chromaprod record v1\0");
    c.bytes(r.id.as_bytes());
    match &r.embedding {
        None => c.tag(0),
        Some(e) => {
            c.tag(1);
            c.0.update(&(e.len() as u64).to_le_bytes());
            for f in e {
                c.0.update(&f.to_bits().to_le_bytes());
            }
        }
    }
    c.opt_str(r.document.as_deref());
    match &r.metadata {
        None => c.tag(0),
        Some(m) => {
            c.tag(1);
            c.object(m);
        }
    }
    c.opt_str(r.uri.as_deref());
    let d = c.0.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    RecordDigest(out)
}

/// One chunk's record ids and digests, in chunk order. Stored as its own
/// (small) object so an incremental can compare without reading chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkIndex {
    pub entries: Vec<(String, RecordDigest)>,
}

#[derive(Serialize, Deserialize)]
struct IndexWire {
    format: u64,
    entries: Vec<(String, RecordDigest)>,
}

impl ChunkIndex {
    pub fn from_records(records: &[Record]) -> Self {
        Self {
            entries: records
                .iter()
                .map(|r| (r.id.clone(), record_digest(r)))
                .collect(),
        }
    }

    /// Serialises as `{"format":1,"entries":[["<id>","<32 hex>"],…]}`.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        serde_json::to_vec(&IndexWire {
            format: CHUNK_FORMAT,
            entries: self.entries.clone(),
        })
        .map_err(|e| malformed("chunk index", e))
    }

    /// Parses an index; rejects unknown versions and duplicate ids.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let wire: IndexWire =
            serde_json::from_slice(bytes).map_err(|e| malformed("chunk index", e))?;
        if wire.format != CHUNK_FORMAT {
            return Err(FormatError::UnsupportedContentVersion {
                what: "chunk index",
                found: wire.format,
                supported: CHUNK_FORMAT,
            });
        }
        let mut seen = HashSet::with_capacity(wire.entries.len());
        for (id, _) in &wire.entries {
            if !seen.insert(id.as_str()) {
                return Err(malformed(
                    "chunk index",
                    format!("duplicate record id {id:?}"),
                ));
            }
        }
        Ok(Self {
            entries: wire.entries,
        })
    }
}

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
    buf: Vec<u8>,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn synthetic(i: usize, dim: usize) -> Record {
        let mut m = Map::new();
        m.insert("n".into(), Value::from(i as i64));
        m.insert("score".into(), Value::from(i as f64 / 7.0));
        m.insert("tag".into(), Value::from(format!("t{}", i % 13)));
        Record {
            id: format!("doc-{i:06}"),
            embedding: Some((0..dim).map(|j| ((i * 31 + j) as f32).sin()).collect()),
            document: Some(format!("document number {i} about things")),
            metadata: Some(m),
            uri: None,
        }
    }

    fn f32_any() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<u32>().prop_map(f32::from_bits), // includes NaN payloads, subnormals
            Just(-0.0f32),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(f32::MIN_POSITIVE / 2.0),
            any::<f32>(),
        ]
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            Just(Value::from(i64::MIN)),
            Just(Value::from(i64::MAX)),
            Just(Value::from(u64::MAX)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            Just(Value::from(-0.0f64)),
            Just(Value::from(f64::MIN_POSITIVE / 3.0)),
            ".*".prop_map(Value::from),
        ]
    }

    fn record_any() -> impl Strategy<Value = Record> {
        (
            ".*",
            proptest::option::of(proptest::collection::vec(f32_any(), 0..16)),
            proptest::option::of(".*"),
            proptest::option::of(proptest::collection::btree_map(".*", json_leaf(), 0..6)),
            proptest::option::of(".*"),
        )
            .prop_map(|(id, embedding, document, metadata, uri)| Record {
                id,
                embedding,
                document,
                metadata: metadata.map(|m| m.into_iter().collect()),
                uri,
            })
    }

    fn unique(records: Vec<Record>) -> Vec<Record> {
        let mut seen = HashSet::new();
        records
            .into_iter()
            .filter(|r| seen.insert(r.id.clone()))
            .collect()
    }

    #[test]
    fn special_floats_round_trip_bit_exactly() {
        let nan_payload = f32::from_bits(0x7fc0_1234);
        let r = Record {
            id: "x".into(),
            embedding: Some(vec![
                nan_payload,
                -0.0,
                0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::from_bits(1),
                f32::MAX,
            ]),
            document: Some(String::new()),
            metadata: Some(Map::new()),
            uri: Some("s3://b/k".into()),
        };
        let back =
            decode_chunk(&encode_chunk(std::slice::from_ref(&r)).expect("enc")).expect("dec");
        assert!(back[0].bit_eq(&r));
        let e = back[0].embedding.as_ref().expect("emb");
        assert_eq!(e[0].to_bits(), 0x7fc0_1234);
        assert_eq!(e[1].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn none_and_empty_are_distinct() {
        let a = Record {
            id: "a".into(),
            ..Record::default()
        };
        let b = Record {
            id: "a".into(),
            embedding: Some(vec![]),
            document: Some(String::new()),
            metadata: Some(Map::new()),
            uri: Some(String::new()),
        };
        let back =
            decode_chunk(&encode_chunk(std::slice::from_ref(&a)).expect("enc")).expect("dec");
        assert_eq!(back[0], a);
        let back =
            decode_chunk(&encode_chunk(std::slice::from_ref(&b)).expect("enc")).expect("dec");
        assert_eq!(back[0], b);
        assert_ne!(record_digest(&a), record_digest(&b));
    }

    #[test]
    fn metadata_types_are_kept() {
        let json = r#"{"i":1,"f":1.0,"b":true,"s":"1","big":9007199254740993,"neg":-9223372036854775808,"tiny":5e-324}"#;
        let m: Map<String, Value> = serde_json::from_str(json).expect("json");
        let r = Record {
            id: "m".into(),
            metadata: Some(m.clone()),
            ..Record::default()
        };
        let back = decode_chunk(&encode_chunk(&[r]).expect("enc")).expect("dec");
        let bm = back[0].metadata.as_ref().expect("meta");
        assert!(bm["i"].is_i64());
        assert!(bm["f"].is_f64());
        assert!(bm["b"].is_boolean());
        assert!(bm["s"].is_string());
        assert_eq!(bm["big"].as_u64(), Some(9_007_199_254_740_993));
        assert_eq!(bm["neg"].as_i64(), Some(i64::MIN));
        assert_eq!(bm["tiny"].as_f64().map(f64::to_bits), Some(1));
        // 1 and 1.0 digest differently.
        let with = |v: Value| Record {
            id: "m".into(),
            metadata: Some([("k".to_string(), v)].into_iter().collect()),
            ..Record::default()
        };
        assert_ne!(
            record_digest(&with(Value::from(1))),
            record_digest(&with(Value::from(1.0)))
        );
    }

    #[test]
    fn digest_is_pinned() {
        // These values are part of the format: a change here means every
        // incremental after an upgrade rewrites everything. Bump the record
        // digest version instead of editing them.
        let empty = record_digest(&Record {
            id: "a".into(),
            ..Record::default()
        });
        assert_eq!(to_hex(&empty.0), "b57e56b70f77277776e6acf95e1a2e09");
        let full = Record {
            id: "doc-1".into(),
            embedding: Some(vec![1.5, -0.0, f32::from_bits(0x7fc0_0001)]),
            document: Some("héllo".into()),
            metadata: Some(
                serde_json::from_str(r#"{"z":1,"a":2.5,"b":true,"s":"x","n":null,"l":[1,"2"]}"#)
                    .expect("json"),
            ),
            uri: Some("file:///x".into()),
        };
        assert_eq!(to_hex(&record_digest(&full).0), PINNED_FULL_DIGEST);
    }

    const PINNED_FULL_DIGEST: &str = "9e0bcbeacbe7a8b1ba7f42c66a862329";

    #[test]
    fn digest_ignores_metadata_key_order_and_sees_every_field() {
        let mut a = synthetic(5, 8);
        let mut rev = Map::new();
        let meta = a.metadata.clone().expect("meta");
        for (k, v) in meta.iter().rev() {
            rev.insert(k.clone(), v.clone());
        }
        let mut b = a.clone();
        b.metadata = Some(rev);
        assert_eq!(record_digest(&a), record_digest(&b));
        let base = record_digest(&a);
        a.document = Some("changed".into());
        assert_ne!(record_digest(&a), base);
        let mut c = synthetic(5, 8);
        if let Some(e) = c.embedding.as_mut() {
            e[3] = f32::from_bits(e[3].to_bits() ^ 1); // one ulp
        }
        assert_ne!(record_digest(&c), base);
        let mut z = synthetic(5, 8);
        z.uri = Some(String::new());
        assert_ne!(record_digest(&z), base);
    }

    #[test]
    fn planner_is_deterministic_and_matches_encode_chunk() {
        let records: Vec<Record> = (0..2000).map(|i| synthetic(i, 16)).collect();
        let plan = |rs: &[Record]| {
            let mut p = ChunkPlanner::new(32 * 1024, 10_000);
            let mut out = Vec::new();
            for r in rs {
                out.extend(p.push(r).expect("push"));
            }
            out.extend(p.finish());
            out
        };
        let a = plan(&records);
        let b = plan(&records);
        assert_eq!(a, b);
        assert!(a.len() > 5);
        let mut start = 0;
        for c in &a {
            let n = c.records();
            assert_eq!(
                c.plaintext,
                encode_chunk(&records[start..start + n]).expect("enc")
            );
            assert!(c.plaintext.len() <= 4 * 32 * 1024 + 2048);
            assert_eq!(
                c.index,
                ChunkIndex::from_records(&records[start..start + n])
            );
            start += n;
        }
        assert_eq!(start, records.len());
        // Deleting one early record: most later chunks are unchanged.
        let mut fewer = records.clone();
        fewer.remove(10);
        let c = plan(&fewer);
        let before: HashSet<&Vec<u8>> = a.iter().map(|c| &c.plaintext).collect();
        let shared = c.iter().filter(|c| before.contains(&c.plaintext)).count();
        assert!(
            shared + 3 >= a.len(),
            "{shared} of {} chunks shared",
            a.len()
        );
    }

    #[test]
    fn planner_caps_record_count_and_takes_huge_records_alone() {
        let mut p = ChunkPlanner::new(1 << 30, 3);
        let rs: Vec<Record> = (0..7).map(|i| synthetic(i, 2)).collect();
        let mut sizes = Vec::new();
        for r in &rs {
            if let Some(c) = p.push(r).expect("push") {
                sizes.push(c.records());
            }
        }
        sizes.extend(p.finish().map(|c| c.records()));
        assert_eq!(sizes, vec![3, 3, 1]);
        let mut p = ChunkPlanner::new(100, 1000);
        let c = p.push(&synthetic(0, 512)).expect("push").expect("closes");
        assert_eq!(c.records(), 1);
        assert!(p.finish().is_none());
    }

    #[test]
    fn planner_buffer_never_outgrows_the_chunk_ceiling() {
        // Records of ~1.6 KiB into 64 KiB chunks: the ceiling is 256 KiB.
        let target = 64 * 1024;
        let mut p = ChunkPlanner::new(target, 1_000_000);
        let mut largest = 0;
        for i in 0..3_000 {
            let mut r = synthetic(i, 384);
            r.id = format!("x{i}"); // ids unlikely to close early don't matter: the cap does
            largest = largest.max(p.buf.capacity());
            if let Some(c) = p.push(&r).expect("push") {
                assert!(c.plaintext.len() <= 4 * target + 4096);
            }
            largest = largest.max(p.buf.capacity());
        }
        assert!(largest <= 4 * target + 4096, "buffer grew to {largest}");
    }

    #[test]
    fn index_round_trip() {
        let rs: Vec<Record> = (0..10).map(|i| synthetic(i, 3)).collect();
        let idx = ChunkIndex::from_records(&rs);
        assert_eq!(
            ChunkIndex::decode(&idx.encode().expect("enc")).expect("dec"),
            idx
        );
        assert!(ChunkIndex::decode(br#"{"format":2,"entries":[]}"#).is_err());
        assert!(ChunkIndex::decode(br#"{"format":1,"entries":[["a","00"]]}"#).is_err());
    }

    #[test]
    fn chunk_rejects_duplicates_and_unknown_versions() {
        let r = synthetic(1, 2);
        let dup = encode_chunk(&[r.clone(), r]).expect("enc");
        assert!(decode_chunk(&dup).is_err());
        assert!(matches!(
            decode_chunk(br#"{"format":9,"records":[]}"#),
            Err(FormatError::UnsupportedContentVersion { found: 9, .. })
        ));
        assert!(
            decode_chunk(br#"{"format":1,"records":[{"id":"a","embedding":"AAA="}]}"#).is_err()
        );
        for bad in [r#""!!!!""#, "[1.0]", "7"] {
            let chunk = format!(r#"{{"format":1,"records":[{{"id":"a","embedding":{bad}}}]}}"#);
            let err = decode_chunk(chunk.as_bytes()).expect_err(bad);
            assert!(matches!(err, FormatError::Malformed { .. }), "{bad}: {err}");
        }
        let none =
            decode_chunk(br#"{"format":1,"records":[{"id":"a","embedding":null},{"id":"b"}]}"#)
                .expect("a null or absent embedding is none");
        assert!(none.iter().all(|r| r.embedding.is_none()));
        let one = decode_chunk(br#"{"format":1,"records":[{"id":"a","embedding":"AACAPw=="}]}"#)
            .expect("one float");
        assert_eq!(one[0].embedding.as_deref(), Some(&[1.0f32][..]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn chunk_round_trip_is_bit_exact(records in proptest::collection::vec(record_any(), 0..8)) {
            let records = unique(records);
            let bytes = encode_chunk(&records).expect("enc");
            let back = decode_chunk(&bytes).expect("dec");
            prop_assert_eq!(back.len(), records.len());
            for (a, b) in records.iter().zip(&back) {
                prop_assert!(a.bit_eq(b), "{:?} != {:?}", a, b);
                prop_assert_eq!(record_digest(a), record_digest(b));
            }
            // Deterministic.
            prop_assert_eq!(encode_chunk(&back).expect("enc"), bytes);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_chunk(&bytes);
            let _ = ChunkIndex::decode(&bytes);
        }

        #[test]
        fn corrupted_chunks_never_panic(records in proptest::collection::vec(record_any(), 1..4), pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let records = unique(records);
            let mut bytes = encode_chunk(&records).expect("enc");
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let _ = decode_chunk(&bytes);
            let n = cut.index(bytes.len());
            prop_assert!(decode_chunk(&bytes[..n]).is_err());
            let idx = ChunkIndex::from_records(&records).encode().expect("enc");
            let n = cut.index(idx.len());
            prop_assert!(ChunkIndex::decode(&idx[..n]).is_err());
        }
    }
}
