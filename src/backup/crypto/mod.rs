//! Keys and encryption for backup repositories.
//!
//! Two levels of keys, as in restic: a random 32-byte [`DataKey`] encrypts
//! every object of a repository, and each operator-held [`MasterKey`] wraps
//! that data key in a [`KeySlot`]. Adding or removing a master key rewrites
//! one small key slot and never re-encrypts data.
//!
//! From the data key, HKDF-SHA256 derives an AES-256-GCM key (object
//! encryption) and an HMAC-SHA256 key (content addresses, so object names
//! reveal no hash of their plaintext). From a master key, HKDF derives the
//! key-encryption key (KEK) that wraps the data key, and HMAC derives its
//! public key id.
//!
//! Key material lives only inside [`Secret`](crate::secret::Secret) (or ring key types); neither
//! `Debug`, `Display` nor any error message shows it. Secrets, derived keys
//! and the buffers that held a key file or an unwrapped key are zeroized
//! when dropped. ring's own key schedules (`LessSafeKey`, `hmac::Key`) are
//! not: ring offers no way to wipe them.
//!
//! Master keys and their files are in `master.rs`; the data key, key slots
//! and the key ring in `data_key.rs`.

mod data_key;
mod master;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::secret::ExposedFile;

pub use data_key::{unwrap, wrap, DataKey, KeyRing, KeySlot};
pub use master::{KeyId, MasterKey};

/// Length of every key in this module (master, data, derived), in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the AES-GCM authentication tag appended to ciphertexts.
pub const TAG_LEN: usize = 16;

const HKDF_SALT: &[u8] = b"chromaprod backup v1";
const INFO_KEK: &[u8] = b"chromaprod key-encryption key v1";
const INFO_ENC: &[u8] = b"chromaprod object encryption key v1";
const INFO_MAC: &[u8] = b"chromaprod content address key v1";
const KEY_ID_LABEL: &[u8] = b"chromaprod key id";
const SLOT_AAD_PREFIX: &[u8] = b"chromaprod key slot v1:";

/// Errors of key handling and authenticated encryption. Messages never
/// contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the key does not open this repository (tried {tried} key slot(s)); check that the configured key file or credential is one that was added with `chromaprod key add`")]
    WrongKey { tried: usize },
    #[error("key file {path} does not exist; for a new repository create it with `chromaprod key generate {path}`, otherwise point backup.key_file at the repository's key (a new key cannot open an existing repository)")]
    NoKey { path: PathBuf },
    #[error("systemd credential `{name}` is not available: $CREDENTIALS_DIRECTORY is not set. Create the key with `chromaprod key generate /etc/chromaprod/credentials/{name}` (a new repository only), hand it to the service with `LoadCredential={name}:/etc/chromaprod/credentials/{name}` in a drop-in (runbook: \"The key's life cycle\"), or set backup.key_file")]
    NoCredentialsDirectory { name: String },
    #[error("systemd credential `{name}` is not in {dir}; create the key with `chromaprod key generate /etc/chromaprod/credentials/{name}` (a new repository only) and hand it to the service with `LoadCredential={name}:/etc/chromaprod/credentials/{name}` in a drop-in (runbook: \"The key's life cycle\")")]
    NoCredential { name: String, dir: PathBuf },
    #[error("invalid credential name `{name}`: it must be a plain file name")]
    BadCredentialName { name: String },
    #[error("key file {0}")]
    Exposed(#[from] ExposedFile),
    #[error("key file {path} is not usable: {why}")]
    BadKeyFile { path: PathBuf, why: String },
    #[error("key file {path} already exists; refusing to overwrite a key (move it away first if you really mean to replace it)")]
    KeyFileExists { path: PathBuf },
    #[error("cannot access key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed authentication: it is damaged, was tampered with, or belongs to a different repository; run `chromaprod verify`")]
    Corrupt { what: String },
    #[error("{what} is malformed: {why}")]
    Malformed { what: String, why: String },
    #[error("a key with id {key_id} is already in the repository")]
    KeyExists { key_id: String },
    #[error("no key with id {key_id} in the repository; `chromaprod key list` shows the ids")]
    UnknownKeyId { key_id: String },
    #[error("refusing to remove key {key_id}: it is the last key, and without it the repository could never be opened again; add another key first")]
    LastKey { key_id: String },
    #[error("the system random number generator failed")]
    Random,
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Bytes of a hex string (either case); `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CryptoError::Random)?;
    Ok(buf)
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

fn hkdf32(ikm: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(ikm);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    let infos = [info];
    prk.expand(&infos, Len32)
        .and_then(|okm| okm.fill(out.as_mut()))
        .map_err(|_| CryptoError::Malformed {
            what: "key derivation".into(),
            why: "HKDF expansion failed".into(),
        })?;
    Ok(out)
}

fn aead_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, CryptoError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Malformed {
            what: "AES-256-GCM key".into(),
            why: "wrong length".into(),
        })
}

/// `nonce || AES-256-GCM(key, plaintext, aad)` with a fresh random nonce.
fn seal(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&[0u8; NONCE_LEN]);
    out.extend_from_slice(plaintext);
    seal_in_place(key, aad, &mut out, 0)?;
    Ok(out)
}

/// [`seal`] without a copy: `buf[at..at + NONCE_LEN]` receives the nonce,
/// `buf[at + NONCE_LEN..]` (the plaintext) is encrypted where it is, and the
/// tag is appended.
fn seal_in_place(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<(), CryptoError> {
    let too_short = || CryptoError::Malformed {
        what: "plaintext".into(),
        why: "buffer has no room for the nonce".into(),
    };
    if buf.len() < at + NONCE_LEN {
        return Err(too_short());
    }
    let key = aead_key(key)?;
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    buf[at..at + NONCE_LEN].copy_from_slice(&nonce_bytes);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut buf[at + NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Malformed {
            what: "plaintext".into(),
            why: "too large for AES-GCM".into(),
        })?;
    buf.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Opens what [`seal`] produced; `None` if authentication fails.
fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Result<Option<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Ok(None);
    }
    let key = aead_key(key)?;
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(nonce);
    let mut body = body.to_vec();
    match key.open_in_place(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad),
        &mut body,
    ) {
        Ok(plain) => {
            let n = plain.len();
            body.truncate(n);
            Ok(Some(body))
        }
        Err(_) => Ok(None),
    }
}
