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

use std::fmt;
use std::io::Read as _;

use ring::digest;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::crypto::{to_hex, CryptoError, DataKey, KeyId, KeySlot};

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
}

impl ObjectKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Config,
            2 => Self::Key,
            3 => Self::Chunk,
            4 => Self::Index,
            5 => Self::Manifest,
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
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Key => "key",
            Self::Chunk => "chunk",
            Self::Index => "index",
            Self::Manifest => "manifest",
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

/// A parsed object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: ObjectKind,
    pub compressed: bool,
    pub encrypted: bool,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut flags = 0;
        if self.compressed {
            flags |= FLAG_COMPRESSED;
        }
        if self.encrypted {
            flags |= FLAG_ENCRYPTED;
        }
        let m = MAGIC;
        [
            m[0],
            m[1],
            m[2],
            m[3],
            self.version,
            self.kind as u8,
            flags,
            0,
        ]
    }
}

/// Parses and checks an object's header (no key needed).
pub fn read_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= 4 && bytes[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        return Err(FormatError::Truncated { len: bytes.len() });
    }
    if bytes[..4] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = bytes[4];
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let kind =
        ObjectKind::from_byte(bytes[5]).ok_or(FormatError::UnknownKind { found: bytes[5] })?;
    let flags = bytes[6];
    if flags & !(FLAG_COMPRESSED | FLAG_ENCRYPTED) != 0 || bytes[7] != 0 {
        return Err(FormatError::UnknownFlags { flags });
    }
    Ok(Header {
        version,
        kind,
        compressed: flags & FLAG_COMPRESSED != 0,
        encrypted: flags & FLAG_ENCRYPTED != 0,
    })
}

/// Encodes `plaintext` as a `kind` object: compress, then encrypt when the
/// codec is encrypted. The result is decoded again before it is returned
/// (verify right after writing), so a fault never reaches storage.
///
/// Memory: besides `plaintext`, one buffer of about the compressed size is
/// built (compressed into, encrypted in place) and, for an encrypted object,
/// one more for the check's decryption; the check decompresses as a stream
/// and compares, so no second copy of the plaintext is made.
pub fn encode(kind: ObjectKind, plaintext: &[u8], codec: &Codec) -> Result<Encoded, FormatError> {
    let header = Header {
        version: FORMAT_VERSION,
        kind,
        compressed: true,
        encrypted: codec.is_encrypted(),
    }
    .to_bytes();
    let prefix = match codec {
        Codec::Plain => HEADER_LEN,
        Codec::Encrypted(_) => HEADER_LEN + ring::aead::NONCE_LEN,
    };
    let mut bytes =
        compress_after(plaintext, prefix, super::crypto::TAG_LEN + CHECK_LEN).map_err(|e| {
            FormatError::Malformed {
                what: format!("{kind} object"),
                why: format!("zstd compression failed: {e}"),
            }
        })?;
    bytes[..HEADER_LEN].copy_from_slice(&header);
    if let Codec::Encrypted(key) = codec {
        key.encrypt_in_place(&header, &mut bytes, HEADER_LEN)?;
    }
    let check = self_check(&bytes);
    bytes.extend_from_slice(&check);
    if !decodes_to(&bytes, kind, codec, plaintext) {
        return Err(FormatError::SelfCheck);
    }
    let id = codec.content_id(plaintext);
    let checksum = sha256_hex(&bytes);
    Ok(Encoded {
        bytes,
        id,
        checksum,
    })
}

/// Whether `bytes` decode (self-check, kind, decryption, decompression) to
/// exactly `plaintext`. Decompresses as a stream and compares piece by
/// piece, so it needs no buffer the size of the plaintext.
fn decodes_to(bytes: &[u8], kind: ObjectKind, codec: &Codec, plaintext: &[u8]) -> bool {
    let Ok((header, checked)) = split_checked(bytes) else {
        return false;
    };
    if header.kind != kind || !header.compressed || header.encrypted != codec.is_encrypted() {
        return false;
    }
    let body = &checked[HEADER_LEN..];
    let opened;
    let payload: &[u8] = match codec {
        Codec::Plain => body,
        Codec::Encrypted(key) => match key.decrypt(&checked[..HEADER_LEN], body, "new object") {
            Ok(p) => {
                opened = p;
                &opened
            }
            Err(_) => return false,
        },
    };
    let Ok(mut decoder) = zstd::stream::read::Decoder::with_buffer(payload) else {
        return false;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0usize;
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => return at == plaintext.len(),
            Ok(n) => {
                if plaintext.get(at..at + n) != Some(&buf[..n]) {
                    return false;
                }
                at += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Decodes a stored `kind` object with its kind's size limit
/// ([`ObjectKind::max_plaintext`]). When `expected_id` is given, the plaintext's content
/// address must equal it.
pub fn decode(
    bytes: &[u8],
    kind: ObjectKind,
    codec: &Codec,
    expected_id: Option<&str>,
) -> Result<Vec<u8>, FormatError> {
    decode_with_limit(bytes, kind, codec, expected_id, kind.max_plaintext())
}

/// [`decode`] with an explicit limit on the decompressed size.
pub fn decode_with_limit(
    bytes: &[u8],
    kind: ObjectKind,
    codec: &Codec,
    expected_id: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>, FormatError> {
    let (header, checked) = split_checked(bytes)?;
    if header.kind != kind {
        return Err(FormatError::WrongKind {
            expected: kind,
            found: header.kind,
        });
    }
    let body = &checked[HEADER_LEN..];
    let opened;
    let payload: &[u8] = match (codec, header.encrypted) {
        (Codec::Plain, true) => return Err(FormatError::EncryptedNeedsKey),
        (Codec::Encrypted(_), false) => return Err(FormatError::NotEncrypted { kind }),
        (Codec::Plain, false) => body,
        (Codec::Encrypted(key), true) => {
            opened = key.decrypt(&checked[..HEADER_LEN], body, &format!("{kind} object"))?;
            &opened
        }
    };
    let plaintext = if header.compressed {
        decompress(payload, kind, limit)?
    } else {
        if payload.len() > limit {
            return Err(FormatError::TooLarge { kind, limit });
        }
        payload.to_vec()
    };
    if let Some(expected) = expected_id {
        let actual = codec.content_id(&plaintext);
        if actual != expected {
            return Err(FormatError::AddressMismatch {
                kind,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(plaintext)
}

/// Length of the integrity check that ends every object.
pub const CHECK_LEN: usize = 16;

/// First 16 bytes of SHA-256 of everything before it: makes every object
/// self-checking against damage without the key or a recorded checksum
/// (no authenticity against an attacker: that is the GCM tag's job).
fn self_check(before: &[u8]) -> [u8; CHECK_LEN] {
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest::digest(&digest::SHA256, before).as_ref()[..CHECK_LEN]);
    out
}

/// Checks the header and the trailing self-check; returns the header and
/// the bytes before the check.
fn split_checked(bytes: &[u8]) -> Result<(Header, &[u8]), FormatError> {
    let header = read_header(bytes)?;
    let Some(split) = bytes
        .len()
        .checked_sub(CHECK_LEN)
        .filter(|n| *n >= HEADER_LEN)
    else {
        return Err(FormatError::Truncated { len: bytes.len() });
    };
    let (checked, check) = bytes.split_at(split);
    if self_check(checked)[..] != *check {
        return Err(FormatError::Damaged { kind: header.kind });
    }
    Ok((header, checked))
}

/// Checks an object on its own, without the key or a recorded checksum:
/// header and trailing self-check. Finds damage, not tampering.
pub fn verify_self(bytes: &[u8]) -> Result<Header, FormatError> {
    split_checked(bytes).map(|(h, _)| h)
}

/// zstd at [`ZSTD_LEVEL`], with the frame's content size and checksum,
/// placed after `prefix` bytes (left zero for the caller to fill) in a
/// buffer with room for `extra` more, so the caller adds a header, a nonce
/// and a tag without copying the frame again.
fn compress_after(plaintext: &[u8], prefix: usize, extra: usize) -> std::io::Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    let bound = zstd::zstd_safe::compress_bound(plaintext.len());
    let room = prefix + bound + extra;
    let mut out = crate::mem::buffer_for(room);
    c.compress_to_buffer(plaintext, &mut out)?;
    let n = out.len();
    out.resize(n + prefix, 0);
    out.copy_within(0..n, prefix);
    out[..prefix].fill(0);
    Ok(out)
}

fn decompress(payload: &[u8], kind: ObjectKind, limit: usize) -> Result<Vec<u8>, FormatError> {
    let err = |e: std::io::Error| FormatError::Decompress {
        kind,
        why: e.to_string(),
    };
    let declared = zstd::zstd_safe::get_frame_content_size(payload)
        .ok()
        .flatten()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let out = match declared {
        Some(n) if n > limit => return Err(FormatError::TooLarge { kind, limit }),
        // The frame states its size (ours always do): decompress in one
        // call into a buffer of that size. zstd writes into the spare room
        // directly, so only the pages it writes become resident; a read
        // loop would zero the room ahead of each read, and in a large
        // buffer up to twice the content. A frame whose content is not the
        // size it states fails zstd's own check.
        Some(n) => {
            let mut out = crate::mem::buffer_for(n.max(1));
            zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(payload, &mut out))
                .map_err(err)?;
            out
        }
        // No stated size: read the stream, never past the limit.
        None => {
            let decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(err)?;
            let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            let mut out = Vec::new();
            decoder.take(cap).read_to_end(&mut out).map_err(err)?;
            out
        }
    };
    if out.len() > limit {
        return Err(FormatError::TooLarge { kind, limit });
    }
    Ok(out)
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

/// Encodes a value as JSON inside a `kind` object.
pub fn encode_json<T: Serialize>(
    kind: ObjectKind,
    value: &T,
    codec: &Codec,
) -> Result<Encoded, FormatError> {
    let json = serde_json::to_vec(value).map_err(|e| FormatError::Malformed {
        what: format!("{kind} object"),
        why: e.to_string(),
    })?;
    encode(kind, &json, codec)
}

/// Decodes a `kind` object holding JSON.
pub fn decode_json<T: DeserializeOwned>(
    bytes: &[u8],
    kind: ObjectKind,
    codec: &Codec,
    expected_id: Option<&str>,
) -> Result<T, FormatError> {
    let plain = decode(bytes, kind, codec, expected_id)?;
    serde_json::from_slice(&plain).map_err(|e| FormatError::Malformed {
        what: format!("{kind} object"),
        why: e.to_string(),
    })
}

/// A key slot as the object `keys/<key_id>` (always plain: the data key in
/// it is wrapped).
pub fn encode_key_slot(slot: &KeySlot) -> Result<Encoded, FormatError> {
    encode_json(ObjectKind::Key, slot, &Codec::Plain)
}

/// Reads `keys/<key_id>`; the slot inside must carry the id it is stored
/// under.
pub fn decode_key_slot(bytes: &[u8], stored_as: &KeyId) -> Result<KeySlot, FormatError> {
    let slot: KeySlot = decode_json(bytes, ObjectKind::Key, &Codec::Plain, None)?;
    if &slot.key_id != stored_as {
        return Err(FormatError::Malformed {
            what: format!("key object {stored_as}"),
            why: format!("it holds the slot of key {}", slot.key_id),
        });
    }
    Ok(slot)
}

/// The repository's `config` object (always stored plain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Object format version of the repository ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Random 32 lowercase hex characters, fixed at `init`.
    pub repository_id: String,
    /// Whether objects are encrypted. A client configured with a key must
    /// refuse a repository that says `false`, and vice versa.
    pub encrypted: bool,
    /// When the repository was created (RFC 3339, UTC).
    pub created: String,
}

impl RepoConfig {
    /// A new repository's configuration with a random id.
    pub fn new(encrypted: bool) -> Result<Self, FormatError> {
        use ring::rand::SecureRandom as _;
        let mut id = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| CryptoError::Random)?;
        Ok(Self {
            format_version: u32::from(FORMAT_VERSION),
            repository_id: to_hex(&id),
            encrypted,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }

    /// The `config` object (always plain).
    pub fn encode(&self) -> Result<Encoded, FormatError> {
        encode_json(ObjectKind::Config, self, &Codec::Plain)
    }

    /// Reads the `config` object. Does not [`RepoConfig::check`] it.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        decode_json(bytes, ObjectKind::Config, &Codec::Plain, None)
    }

    /// Checks what a client needs before touching the repository: a known
    /// format version and encryption matching the configuration.
    pub fn check(&self, key_configured: bool) -> Result<(), FormatError> {
        if self.format_version != u32::from(FORMAT_VERSION) {
            return Err(FormatError::UnsupportedContentVersion {
                what: "repository",
                found: u64::from(self.format_version),
                supported: u64::from(FORMAT_VERSION),
            });
        }
        match (self.encrypted, key_configured) {
            (true, false) => Err(FormatError::EncryptedNeedsKey),
            (false, true) => Err(FormatError::Malformed {
                what: "repository configuration".into(),
                why: "the repository is not encrypted but a key is configured; refusing to write plaintext backups (create a new encrypted repository, or remove the key from the configuration to use this one)".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc() -> Codec {
        Codec::Encrypted(DataKey::generate().expect("rng"))
    }

    #[test]
    fn plain_and_encrypted_round_trip() {
        for codec in [Codec::Plain, enc()] {
            let e = encode(ObjectKind::Chunk, b"hello hello hello", &codec).expect("encode");
            assert_eq!(&e.bytes[..4], b"CPBK");
            assert_eq!(e.bytes[4], 1);
            assert_eq!(e.bytes[5], ObjectKind::Chunk as u8);
            let back = decode(&e.bytes, ObjectKind::Chunk, &codec, Some(&e.id)).expect("decode");
            assert_eq!(back, b"hello hello hello");
            let h = verify_stored(&e.bytes, &e.checksum).expect("verify");
            assert_eq!(h.encrypted, codec.is_encrypted());
            assert!(h.compressed);
        }
    }

    #[test]
    fn ids_are_content_addresses() {
        let plain = encode(ObjectKind::Index, b"abc", &Codec::Plain).expect("encode");
        assert_eq!(
            plain.id,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let codec = enc();
        let a = encode(ObjectKind::Index, b"abc", &codec).expect("encode");
        let b = encode(ObjectKind::Index, b"abc", &codec).expect("encode");
        assert_eq!(a.id, b.id, "same plaintext, same address");
        assert_ne!(a.id, plain.id, "keyed address reveals no plain hash");
        assert_ne!(a.checksum, b.checksum, "random nonces");
        assert_ne!(a.id, enc().content_id(b"abc"), "address depends on the key");
    }

    #[test]
    fn encrypted_object_with_plain_codec_asks_for_the_key() {
        let e = encode(ObjectKind::Manifest, b"{}", &enc()).expect("encode");
        let err = decode(&e.bytes, ObjectKind::Manifest, &Codec::Plain, None).expect_err("no key");
        assert!(matches!(err, FormatError::EncryptedNeedsKey));
        assert!(err.to_string().contains("configure the key"));
    }

    #[test]
    fn plain_object_in_encrypted_repository_is_refused() {
        let e = encode(ObjectKind::Manifest, b"{}", &Codec::Plain).expect("encode");
        let err = decode(&e.bytes, ObjectKind::Manifest, &enc(), None).expect_err("plain");
        assert!(matches!(err, FormatError::NotEncrypted { .. }));
    }

    #[test]
    fn wrong_key_fails_authentication() {
        let e = encode(ObjectKind::Chunk, b"data", &enc()).expect("encode");
        let err = decode(&e.bytes, ObjectKind::Chunk, &enc(), None).expect_err("wrong key");
        assert!(matches!(
            err,
            FormatError::Crypto(CryptoError::Corrupt { .. })
        ));
    }

    #[test]
    fn unknown_version_is_named() {
        let mut e = encode(ObjectKind::Chunk, b"data", &Codec::Plain).expect("encode");
        e.bytes[4] = 7;
        let err = decode(&e.bytes, ObjectKind::Chunk, &Codec::Plain, None).expect_err("v7");
        assert!(matches!(
            err,
            FormatError::UnsupportedVersion { found: 7, .. }
        ));
        assert!(err.to_string().contains("version 7"));
    }

    #[test]
    fn wrong_kind_and_address_are_detected() {
        let e = encode(ObjectKind::Chunk, b"data", &Codec::Plain).expect("encode");
        assert!(matches!(
            decode(&e.bytes, ObjectKind::Index, &Codec::Plain, None),
            Err(FormatError::WrongKind { .. })
        ));
        assert!(matches!(
            decode(
                &e.bytes,
                ObjectKind::Chunk,
                &Codec::Plain,
                Some(&"0".repeat(64))
            ),
            Err(FormatError::AddressMismatch { .. })
        ));
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let big = vec![0u8; 4 * 1024 * 1024];
        let e = encode(ObjectKind::Chunk, &big, &Codec::Plain).expect("encode");
        assert!(e.bytes.len() < 4096, "zeros compress well");
        let err = decode_with_limit(
            &e.bytes,
            ObjectKind::Chunk,
            &Codec::Plain,
            None,
            1024 * 1024,
        )
        .expect_err("too large");
        assert!(matches!(err, FormatError::TooLarge { .. }));
    }

    #[test]
    fn frames_without_a_stated_size_decompress_within_the_limit() {
        let data = b"chunk ".repeat(50_000);
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.include_contentsize(false).expect("no size");
        std::io::Write::write_all(&mut enc, &data).expect("write");
        let frame = enc.finish().expect("finish");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).expect("frame"),
            None,
            "the frame states no size"
        );
        let out = decompress(&frame, ObjectKind::Chunk, data.len()).expect("within the limit");
        assert_eq!(out, data);
        let err = decompress(&frame, ObjectKind::Chunk, data.len() - 1).expect_err("over");
        assert!(matches!(err, FormatError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_frame_that_states_its_size_decompresses_into_a_large_buffer() {
        let data = b"record ".repeat(300_000);
        let frame = zstd::bulk::compress(&data, 3).expect("compress");
        let out = decompress(&frame, ObjectKind::Chunk, data.len()).expect("decompress");
        assert_eq!(out, data);
        assert!(
            out.capacity() > 32 << 20,
            "a large buffer: {}",
            out.capacity()
        );
    }

    #[test]
    fn config_and_key_objects_round_trip() {
        let c = RepoConfig::new(true).expect("rng");
        assert_eq!(c.repository_id.len(), 32);
        let e = c.encode().expect("enc");
        assert_eq!(RepoConfig::decode(&e.bytes).expect("dec"), c);
        let master = crate::backup::crypto::MasterKey::generate().expect("rng");
        let (ring, data) = crate::backup::crypto::KeyRing::create(&master).expect("ring");
        let e = encode_key_slot(&ring.slots[0]).expect("enc");
        let slot = decode_key_slot(&e.bytes, master.key_id()).expect("dec");
        assert_eq!(
            crate::backup::crypto::unwrap(&slot, &master).expect("unwrap"),
            data
        );
        let other = KeyId::parse("0123456789abcdef").expect("id");
        assert!(decode_key_slot(&e.bytes, &other).is_err());
    }

    #[test]
    fn repo_config_refuses_silent_downgrade() {
        let mut c = RepoConfig {
            format_version: 1,
            repository_id: "0".repeat(32),
            encrypted: true,
            created: "2026-01-01T00:00:00Z".into(),
        };
        assert!(matches!(
            c.check(false),
            Err(FormatError::EncryptedNeedsKey)
        ));
        c.check(true).expect("key configured");
        c.encrypted = false;
        assert!(c.check(true).is_err());
        c.check(false).expect("plain repo, no key");
        c.format_version = 2;
        assert!(c.check(false).is_err());
    }

    /// Objects written by format version 1, kept as fixtures: every later
    /// chromaprod must read them (zstd output may change between releases,
    /// so encoding is not pinned, decoding is).
    const FIXTURE_PLAIN: &str = "4350424b0103010028b52ffd2415a900006368726f6d6170726f64206669787475726520763138cb92dcd436dc3758d7d12b6e343f84b868c62a";
    const FIXTURE_ENCRYPTED: &str = "4350424b010303009fa00b883e3268f17f3d6af7c5cd2f3f10e4a68ee96f3f928dc2f5c47a3b4867c152bdf435d8c2fb33048e7b855104ede974eb37635869ec67b51255d72ac81359b38f1f7577b5779c2cdcede263";

    #[test]
    fn version_1_fixtures_still_decode() {
        let plain = crate::backup::crypto::from_hex(FIXTURE_PLAIN).expect("hex");
        let id = "f32cd0da2867836b4805e11ccc13bc9d85eb12f0551185115498c365a925272d";
        verify_self(&plain).expect("self-check");
        let out = decode(&plain, ObjectKind::Chunk, &Codec::Plain, Some(id)).expect("plain");
        assert_eq!(out, b"chromaprod fixture v1");
        let enc = crate::backup::crypto::from_hex(FIXTURE_ENCRYPTED).expect("hex");
        let codec = Codec::Encrypted(DataKey::from_raw(&mut [0x42; 32]).expect("dk"));
        let id = "48d7e5c123424ca7ebcb52f8992cdaf4ea7ffaac71b9d5fb54ed532907cc8b6e";
        let h = verify_self(&enc).expect("self-check without the key");
        assert!(h.encrypted && h.compressed && h.kind == ObjectKind::Chunk);
        let out = decode(&enc, ObjectKind::Chunk, &codec, Some(id)).expect("encrypted");
        assert_eq!(out, b"chromaprod fixture v1");
        assert!(matches!(
            decode(&enc, ObjectKind::Chunk, &Codec::Plain, None),
            Err(FormatError::EncryptedNeedsKey)
        ));
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn chunk_with_document(doc: &str) -> Vec<u8> {
        use crate::backup::records::{encode_chunk, Record};
        let r = Record {
            id: "r1".into(),
            embedding: Some(vec![0.25; 8]),
            document: Some(doc.to_string()),
            metadata: None,
            uri: None,
        };
        encode_chunk(&[r]).expect("chunk")
    }

    #[test]
    fn encrypted_objects_never_show_the_document() {
        let doc = "the launch code is swordfish-7731, tell nobody";
        let plaintext = chunk_with_document(doc);
        assert!(contains(&plaintext, doc.as_bytes()));
        // Plain repositories offer no confidentiality (compression may or
        // may not leave the text readable); encrypted ones must.
        let plain = encode(ObjectKind::Chunk, &plaintext, &Codec::Plain).expect("enc");
        // Encrypted: neither the text nor any piece of its compressed form.
        let enc = encode(ObjectKind::Chunk, &plaintext, &enc()).expect("enc");
        assert!(!contains(&enc.bytes, b"swordfish"));
        let zstd_body = &plain.bytes[HEADER_LEN..plain.bytes.len() - CHECK_LEN];
        for w in zstd_body.windows(12) {
            assert!(!contains(&enc.bytes, w));
        }
    }

    fn kinds() -> impl Strategy<Value = ObjectKind> {
        prop_oneof![
            Just(ObjectKind::Config),
            Just(ObjectKind::Key),
            Just(ObjectKind::Chunk),
            Just(ObjectKind::Index),
            Just(ObjectKind::Manifest),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), kind in kinds()) {
            let _ = read_header(&bytes);
            let _ = decode(&bytes, kind, &Codec::Plain, None);
            let _ = decode(&bytes, kind, &enc(), None);
            // Same with a valid header in front.
            let mut framed = b"CPBK\x01".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed, kind, &Codec::Plain, None);
            let _ = decode(&framed, kind, &enc(), None);
        }

        #[test]
        fn truncation_is_an_error(plain in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>(), encrypted in any::<bool>()) {
            let codec = if encrypted { enc() } else { Codec::Plain };
            let e = encode(ObjectKind::Chunk, &plain, &codec).expect("encode");
            let n = cut.index(e.bytes.len());
            let truncated = &e.bytes[..n];
            prop_assert!(decode(truncated, ObjectKind::Chunk, &codec, Some(&e.id)).is_err());
            prop_assert!(verify_stored(truncated, &e.checksum).is_err());
            prop_assert!(verify_self(truncated).is_err());
        }

        #[test]
        fn any_flipped_bit_is_detected(plain in proptest::collection::vec(any::<u8>(), 0..512), bit in any::<prop::sample::Index>(), encrypted in any::<bool>()) {
            let codec = if encrypted { enc() } else { Codec::Plain };
            let e = encode(ObjectKind::Chunk, &plain, &codec).expect("encode");
            let mut bytes = e.bytes.clone();
            let b = bit.index(bytes.len() * 8);
            bytes[b / 8] ^= 1 << (b % 8);
            prop_assert!(verify_stored(&bytes, &e.checksum).is_err());
            prop_assert!(decode(&bytes, ObjectKind::Chunk, &codec, Some(&e.id)).is_err());
            // Objects check themselves: no id or checksum needed.
            prop_assert!(decode(&bytes, ObjectKind::Chunk, &codec, None).is_err());
            prop_assert!(verify_self(&bytes).is_err());
        }

        #[test]
        fn encrypted_chunks_never_contain_their_documents(doc in "[a-zA-Z0-9 éß漢]{16,64}") {
            let plaintext = chunk_with_document(&doc);
            let e = encode(ObjectKind::Chunk, &plaintext, &enc()).expect("enc");
            prop_assert!(!contains(&e.bytes, doc.as_bytes()));
            let back = decode(&e.bytes, ObjectKind::Chunk, &Codec::Plain, None);
            prop_assert!(matches!(back, Err(FormatError::EncryptedNeedsKey)));
        }

        #[test]
        fn round_trip_any_plaintext(plain in proptest::collection::vec(any::<u8>(), 0..2048), kind in kinds(), encrypted in any::<bool>()) {
            let codec = if encrypted { enc() } else { Codec::Plain };
            let e = encode(kind, &plain, &codec).expect("encode");
            prop_assert_eq!(decode(&e.bytes, kind, &codec, Some(&e.id)).expect("decode"), plain);
        }
    }
}
