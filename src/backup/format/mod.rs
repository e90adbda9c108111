//! The stored object format (version 1). `docs/backup-format.md` is the
//! byte-by-byte description; this module is its one implementation.
//!
//! Every object in a repository is
//!
//! ```text
//! header (8 bytes) = "CPBK" | version u8 | kind u8 | flags u8 | reserved u8 (0)
//! body             = zstd(plaintext)                                   (plain)
//!                  | nonce(12) || AES-256-GCM(enc_key, zstd(plaintext),
//!                                            aad = header) || tag(16)  (encrypted)
//! check (16 bytes) = SHA-256(header || body)[..16]
//! ```
//!
//! An object's name is its content address ([`Encoded::id`]) and the
//! repository records a checksum of the stored bytes ([`Encoded::checksum`])
//! so that corruption is found without the key.
//!
//! The framing of one object (header, compression, encryption, self-check)
//! is in `object.rs`; the JSON objects (the repository's `config`, key
//! slots) in `config.rs`.

mod config;
mod object;
#[cfg(test)]
mod tests;

use std::fmt;

use ring::digest;

use super::crypto::{to_hex, CryptoError, DataKey};

pub use config::{decode_json, decode_key_slot, encode_json, encode_key_slot, RepoConfig};
pub use object::{decode, decode_with_limit, encode, read_header, verify_self, Header, CHECK_LEN};

/// The first four bytes of every object.
pub const MAGIC: [u8; 4] = *b"CPBK";
/// The object format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the object header in bytes.
pub const HEADER_LEN: usize = 8;
/// Flag bit: the body is zstd-compressed.
pub const FLAG_COMPRESSED: u8 = 0b01;
/// Flag bit: the body is encrypted.
pub const FLAG_ENCRYPTED: u8 = 0b10;
/// Largest decompressed chunk (decompression-bomb guard); every other kind
/// has a smaller limit ([`ObjectKind::max_plaintext`]).
pub const MAX_PLAINTEXT: usize = 256 * 1024 * 1024;
/// Largest `config` object and key slot, stored or decompressed.
const MAX_SMALL_OBJECT: usize = 4 * 1024;
/// Largest manifest or chunk index, stored or decompressed. A manifest lists
/// chunk references (about 300 bytes each) and the ids an incremental
/// supersedes; an index holds a chunk's ids (at most 10,000) and digests.
const MAX_LISTING: usize = 64 * 1024 * 1024;
/// Largest queries object, stored or decompressed: 1,000 queries of 4,096
/// dimensions with 100 neighbours each fit (about 30 MiB); a larger sample
/// is cut to fit when recorded (logged).
pub const MAX_QUERIES: usize = 64 * 1024 * 1024;
/// Largest block of a physical snapshot, decompressed (blocks are cut at
/// 4 MiB; the margin leaves room to change that without a new format).
const MAX_BLOCK: usize = 16 * 1024 * 1024;
/// zstd level used for every object.
pub const ZSTD_LEVEL: i32 = 3;

/// What an object holds. The byte values are part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    /// The repository's [`RepoConfig`] (always plain: it says whether the
    /// repository is encrypted).
    Config = 1,
    /// One [`super::crypto::KeySlot`] (always plain: it is already wrapped).
    Key = 2,
    /// Records of one collection ([`super::records::encode_chunk`]).
    Chunk = 3,
    /// Per-record ids and digests of one chunk ([`super::records::ChunkIndex`]).
    Index = 4,
    /// A snapshot manifest ([`super::manifest::Manifest`]).
    Manifest = 5,
    /// Recorded queries and their neighbours of one collection
    /// ([`super::recall::RecordedQueries`]).
    Queries = 6,
    /// A block of one of Chroma's files in a physical snapshot
    /// ([`super::manifest::BlockRef`]).
    Block = 7,
}

impl ObjectKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Config,
            2 => Self::Key,
            3 => Self::Chunk,
            4 => Self::Index,
            5 => Self::Manifest,
            6 => Self::Queries,
            7 => Self::Block,
            _ => return None,
        })
    }

    /// The most a stored object of this kind may take; it is refused before
    /// its body is read. Chunks and indexes are read with the exact size
    /// their manifest records, which is at most this.
    pub fn max_stored(self) -> u64 {
        // zstd's worst case on incompressible input is a few bytes per
        // 128 KiB block; a nonce, a tag, the header and the check come on top.
        let plain = self.max_plaintext() as u64;
        plain + plain / 64 + (HEADER_LEN + CHECK_LEN + 64) as u64
    }

    /// The most an object of this kind may decompress to.
    pub fn max_plaintext(self) -> usize {
        match self {
            Self::Config | Self::Key => MAX_SMALL_OBJECT,
            Self::Index | Self::Manifest => MAX_LISTING,
            Self::Chunk => MAX_PLAINTEXT,
            Self::Queries => MAX_QUERIES,
            Self::Block => MAX_BLOCK,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Key => "key",
            Self::Chunk => "chunk",
            Self::Index => "index",
            Self::Manifest => "manifest",
            Self::Queries => "queries",
            Self::Block => "block",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors reading or writing stored objects and their contents.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a chromaprod backup object (bad magic bytes); the repository path may be wrong or the object is damaged")]
    BadMagic,
    #[error("object is truncated ({len} bytes); it is damaged, run `chromaprod verify`")]
    Truncated { len: usize },
    #[error("object format version {found} is not supported (this chromaprod reads version {supported}); upgrade chromaprod to read this repository")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error(
        "unknown object kind byte {found}; the object is damaged or written by a newer chromaprod"
    )]
    UnknownKind { found: u8 },
    #[error("expected a {expected} object but found a {found} object; the repository is damaged or mislabelled")]
    WrongKind {
        expected: ObjectKind,
        found: ObjectKind,
    },
    #[error("object header has unknown flags {flags:#04x} or a non-zero reserved byte; written by a newer chromaprod or damaged")]
    UnknownFlags { flags: u8 },
    #[error("this repository is encrypted; configure the key (key file or systemd credential) to read it")]
    EncryptedNeedsKey,
    #[error("a {kind} object is not encrypted although encryption is configured; refusing to read unauthenticated data from an encrypted repository (was it tampered with, or is the key configured for the wrong repository?)")]
    NotEncrypted { kind: ObjectKind },
    #[error("{kind} object is larger than the limit of {limit} bytes when decompressed; refusing to decompress it")]
    TooLarge { kind: ObjectKind, limit: usize },
    #[error("{kind} object is damaged (its integrity check does not match); restore it from another copy or run `chromaprod verify`")]
    Damaged { kind: ObjectKind },
    #[error("{kind} object body does not decompress: {why}; the object is damaged")]
    Decompress { kind: ObjectKind, why: String },
    #[error("{kind} object content address mismatch: expected {expected}, computed {actual}; the object is damaged or stored under the wrong name")]
    AddressMismatch {
        kind: ObjectKind,
        expected: String,
        actual: String,
    },
    #[error("stored bytes do not match their checksum: expected {expected}, computed {actual}; the object is damaged")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("{what} is malformed: {why}")]
    Malformed { what: String, why: String },
    #[error("{what} uses format version {found}, but this chromaprod reads up to {supported}; upgrade chromaprod")]
    UnsupportedContentVersion {
        what: &'static str,
        found: u64,
        supported: u64,
    },
    #[error("the object just written does not read back identically; not storing it (memory or library fault)")]
    SelfCheck,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// How objects are written and read: plain, or encrypted with a data key.
#[derive(Clone, Debug)]
pub enum Codec {
    Plain,
    Encrypted(DataKey),
}

impl Codec {
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Self::Encrypted(_))
    }

    /// The content address of `plaintext` under this codec: hex SHA-256
    /// when plain, hex HMAC-SHA256 with the data key's MAC key when
    /// encrypted (so names reveal no hash of the content).
    pub fn content_id(&self, plaintext: &[u8]) -> String {
        match self {
            Self::Plain => sha256_hex(plaintext),
            Self::Encrypted(key) => key.content_id(plaintext),
        }
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// An encoded object, ready to be stored as `<kind dir>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The bytes to store.
    pub bytes: Vec<u8>,
    /// Content address of the plaintext (see [`Codec::content_id`]);
    /// equal plaintexts under one codec have equal ids.
    pub id: String,
    /// Hex SHA-256 of `bytes`: verifiable without the key. Encrypted
    /// objects use a random nonce, so two encodings of one plaintext share
    /// an `id` but not a `checksum`.
    pub checksum: String,
}

/// Hex SHA-256 of stored bytes: what [`Encoded::checksum`] holds.
pub fn checksum(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}

/// Checks stored bytes against their recorded checksum, the header and the
/// self-check, without the key.
pub fn verify_stored(bytes: &[u8], expected_checksum: &str) -> Result<Header, FormatError> {
    let actual = checksum(bytes);
    if actual != expected_checksum {
        return Err(FormatError::ChecksumMismatch {
            expected: expected_checksum.to_string(),
            actual,
        });
    }
    verify_self(bytes)
}
