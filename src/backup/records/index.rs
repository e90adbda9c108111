//! Record digests (what an incremental compares) and chunk indexes (a
//! chunk's ids and digests, readable without the chunk).

use std::collections::HashSet;

use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{malformed, Record, CHUNK_FORMAT};
use crate::backup::crypto::{from_hex, to_hex};
use crate::backup::format::FormatError;

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
