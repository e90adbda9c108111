//! One stored object: its header, and the pipeline that writes it (compress,
//! encrypt, self-check, read back) and reads it.

use std::io::Read as _;

use ring::digest;

use super::{
    sha256_hex, Codec, Encoded, FormatError, ObjectKind, FLAG_COMPRESSED, FLAG_ENCRYPTED,
    FORMAT_VERSION, HEADER_LEN, MAGIC, ZSTD_LEVEL,
};

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
    let mut bytes = compress_after(
        plaintext,
        prefix,
        crate::backup::crypto::TAG_LEN + CHECK_LEN,
    )
    .map_err(|e| FormatError::Malformed {
        what: format!("{kind} object"),
        why: format!("zstd compression failed: {e}"),
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

pub(super) fn decompress(
    payload: &[u8],
    kind: ObjectKind,
    limit: usize,
) -> Result<Vec<u8>, FormatError> {
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
