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
//! Key material lives only inside [`Secret`] (or ring key types); neither
//! `Debug`, `Display` nor any error message shows it. Secrets, derived keys
//! and the buffers that held a key file or an unwrapped key are zeroized
//! when dropped. ring's own key schedules (`LessSafeKey`, `hmac::Key`) are
//! not: ring offers no way to wipe them.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::secret::{ExposedFile, Secret};

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

/// The public id of a master key: the first 8 bytes, in hex, of
/// HMAC-SHA256(key, "chromaprod key id"). It names the key's slot and
/// tells an operator which key is which; it reveals nothing usable about
/// the key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id: exactly 16 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        if s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_string()))
        } else {
            Err(CryptoError::Malformed {
                what: "key id".into(),
                why: "expected 16 lowercase hex characters".into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// An operator-held key that wraps the repository's data key.
///
/// Key file format (what [`MasterKey::from_file`] accepts):
/// - exactly 32 bytes: the raw key (e.g. `head -c 32 /dev/urandom`, or a
///   `systemd-creds` credential);
/// - otherwise text, surrounding whitespace ignored: 64 hex characters
///   (what [`MasterKey::write_new_key_file`] writes, e.g. `openssl rand -hex 32`),
///   or standard base64 of 32 bytes (e.g. `openssl rand -base64 32`).
pub struct MasterKey {
    key: Secret<[u8; KEY_LEN]>,
    id: KeyId,
}

// The key lives in a `Secret`, which wipes it on drop; the id is public.
impl ZeroizeOnDrop for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey {{ id: {}, key: [redacted] }}", self.id)
    }
}

impl MasterKey {
    /// Takes the key out of `raw`, leaving zeros behind.
    fn from_raw(raw: &mut [u8; KEY_LEN]) -> Self {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, raw), KEY_ID_LABEL);
        let id = KeyId(to_hex(&tag.as_ref()[..8]));
        let key = Secret::new(*raw);
        raw.zeroize();
        Self { key, id }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_raw(&mut random_bytes::<KEY_LEN>()?))
    }

    /// Parses key file contents (see the type's docs for the formats).
    /// `path` is used in error messages only.
    pub fn from_key_file_bytes(contents: &[u8], path: &Path) -> Result<Self, CryptoError> {
        let bad = |why: &str| CryptoError::BadKeyFile {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        // 32 random bytes are all printable text with probability ~1e-14:
        // such a file is a typed passphrase, not a key.
        if contents.len() == KEY_LEN && !contents.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        {
            let mut raw = Zeroizing::new([0u8; KEY_LEN]);
            raw.copy_from_slice(contents);
            return Ok(Self::from_raw(&mut raw));
        }
        let text = std::str::from_utf8(contents)
            .map_err(|_| bad("expected 32 raw bytes, 64 hex characters or base64 of 32 bytes"))?
            .trim();
        if text.is_empty() {
            return Err(bad("the file is empty"));
        }
        if contents.len() == KEY_LEN {
            return Err(bad("32 characters of text is a passphrase, not a key; generate a key with `chromaprod key generate` or `openssl rand -hex 32`"));
        }
        let bytes = Zeroizing::new(if text.len() == 2 * KEY_LEN {
            from_hex(text).ok_or_else(|| bad("64 characters but not hex"))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| {
                    bad("expected 32 raw bytes, 64 hex characters or base64 of 32 bytes")
                })?
        });
        if bytes.len() != KEY_LEN {
            return Err(bad("the key must be exactly 32 bytes (256 bits)"));
        }
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        raw.copy_from_slice(&bytes);
        Ok(Self::from_raw(&mut raw))
    }

    /// Loads a key file. A file whose mode lets group or other users read
    /// or change it is refused ([`CryptoError::Exposed`], with the `chmod`
    /// that fixes it), as ssh refuses such private keys — unless systemd
    /// placed it (under `/run/credentials`), which sets its mode itself.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        use std::io::Read as _;
        let io = |source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CryptoError::NoKey {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        if !crate::secret::is_systemd_credential(path) {
            // The mode of the file being read, not of whatever the path names later.
            crate::secret::check_private(path, &file.metadata().map_err(io)?)?;
        }
        let mut contents = Zeroizing::new(Vec::with_capacity(128));
        // Bounded: a key file is under 100 bytes; a huge file is not a key.
        (&mut file)
            .take(4096)
            .read_to_end(&mut contents)
            .map_err(io)?;
        Self::from_key_file_bytes(&contents, path)
    }

    /// Loads the systemd credential `name` from `$CREDENTIALS_DIRECTORY`
    /// (set by `LoadCredential=` / `LoadCredentialEncrypted=`).
    pub fn from_credential(name: &str) -> Result<Self, CryptoError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY");
        Self::from_credential_in(dir.as_deref().map(Path::new), name)
    }

    /// [`MasterKey::from_credential`] with the directory given explicitly.
    pub fn from_credential_in(dir: Option<&Path>, name: &str) -> Result<Self, CryptoError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CryptoError::BadCredentialName {
                name: name.to_string(),
            });
        }
        let dir = dir.ok_or_else(|| CryptoError::NoCredentialsDirectory {
            name: name.to_string(),
        })?;
        Self::from_file(&dir.join(name)).map_err(|e| match e {
            CryptoError::NoKey { .. } => CryptoError::NoCredential {
                name: name.to_string(),
                dir: dir.to_path_buf(),
            },
            e => e,
        })
    }

    /// Writes this key as 64 hex characters and a newline to a new file
    /// with mode 0600. Never overwrites an existing file.
    pub fn write_new_key_file(&self, path: &Path) -> Result<(), CryptoError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CryptoError::KeyFileExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    io(e)
                }
            })?;
        let mut text = Zeroizing::new(to_hex(self.key.expose()));
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// This key's public id.
    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    fn kek(&self) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        hkdf32(self.key.expose(), INFO_KEK)
    }
}

/// The random key that encrypts a repository's objects, and the keys
/// derived from it. Cheap to clone (shared).
#[derive(Clone)]
pub struct DataKey(std::sync::Arc<DataKeyInner>);

struct DataKeyInner {
    raw: Secret<[u8; KEY_LEN]>,
    enc: Secret<[u8; KEY_LEN]>,
    /// ring's HMAC key schedule: ring cannot wipe it (see the module docs).
    mac: hmac::Key,
}

// `raw` and `enc` are `Secret`s, wiped on drop; `mac` is ring's (module docs).
impl ZeroizeOnDrop for DataKeyInner {}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl PartialEq for DataKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.raw.expose() == other.0.raw.expose()
    }
}
impl Eq for DataKey {}

impl DataKey {
    /// Takes the key out of `raw`, leaving zeros behind.
    pub(crate) fn from_raw(raw: &mut [u8; KEY_LEN]) -> Result<Self, CryptoError> {
        let enc = hkdf32(raw, INFO_ENC)?;
        let mac = hkdf32(raw, INFO_MAC)?;
        let inner = DataKeyInner {
            raw: Secret::new(*raw),
            enc: Secret::new(*enc),
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac.as_ref()),
        };
        raw.zeroize();
        Ok(Self(std::sync::Arc::new(inner)))
    }

    /// A new random data key (once per repository).
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_raw(&mut random_bytes::<KEY_LEN>()?)
    }

    /// `nonce (12) || AES-256-GCM(enc_key, plaintext, aad) || tag (16)`.
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(self.0.enc.expose(), aad, plaintext)
    }

    /// [`DataKey::encrypt`] in place: `buf[at..at + 12]` receives the nonce,
    /// `buf[at + 12..]` is encrypted where it is, and the tag is appended, so
    /// `buf[at..]` ends up as `nonce || ciphertext || tag`.
    pub fn encrypt_in_place(
        &self,
        aad: &[u8],
        buf: &mut Vec<u8>,
        at: usize,
    ) -> Result<(), CryptoError> {
        seal_in_place(self.0.enc.expose(), aad, buf, at)
    }

    /// Opens what [`DataKey::encrypt`] produced. `what` names the object
    /// in the error if authentication fails.
    pub fn decrypt(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>, CryptoError> {
        open(self.0.enc.expose(), aad, sealed)?.ok_or_else(|| CryptoError::Corrupt {
            what: what.to_string(),
        })
    }

    /// The keyed content address of `plaintext`: hex HMAC-SHA256(mac_key, ·).
    pub fn content_id(&self, plaintext: &[u8]) -> String {
        to_hex(hmac::sign(&self.0.mac, plaintext).as_ref())
    }
}

/// One master key's wrapping of the data key, stored as `keys/<key_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlot {
    /// Id of the master key that wraps this slot.
    pub key_id: KeyId,
    /// When the slot was created (RFC 3339, UTC).
    pub created: String,
    /// base64(nonce || AES-256-GCM(kek, data_key, aad = "chromaprod key slot v1:" || key_id) || tag).
    pub wrapped: String,
}

fn slot_aad(key_id: &KeyId) -> Vec<u8> {
    let mut aad = SLOT_AAD_PREFIX.to_vec();
    aad.extend_from_slice(key_id.as_str().as_bytes());
    aad
}

/// Wraps `data_key` with `master` into a new key slot.
pub fn wrap(data_key: &DataKey, master: &MasterKey) -> Result<KeySlot, CryptoError> {
    let sealed = seal(
        &*master.kek()?,
        &slot_aad(master.key_id()),
        data_key.0.raw.expose(),
    )?;
    Ok(KeySlot {
        key_id: master.key_id().clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        wrapped: base64::engine::general_purpose::STANDARD.encode(sealed),
    })
}

/// Unwraps the data key from `slot` with `master`: `WrongKey` if `master`
/// is not the key this slot was made with, `Corrupt` if the slot names
/// this key but does not authenticate.
pub fn unwrap(slot: &KeySlot, master: &MasterKey) -> Result<DataKey, CryptoError> {
    let what = || format!("key slot {}", slot.key_id);
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&slot.wrapped)
        .map_err(|_| CryptoError::Malformed {
            what: what(),
            why: "`wrapped` is not base64".into(),
        })?;
    match open(&*master.kek()?, &slot_aad(&slot.key_id), &sealed)?.map(Zeroizing::new) {
        Some(plain) => {
            if plain.len() != KEY_LEN {
                return Err(CryptoError::Malformed {
                    what: what(),
                    why: "wrapped key has the wrong length".into(),
                });
            }
            let mut raw = Zeroizing::new([0u8; KEY_LEN]);
            raw.copy_from_slice(&plain);
            DataKey::from_raw(&mut raw)
        }
        None if &slot.key_id == master.key_id() => Err(CryptoError::Corrupt { what: what() }),
        None => Err(CryptoError::WrongKey { tried: 1 }),
    }
}

/// All key slots of a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub slots: Vec<KeySlot>,
}

impl KeyRing {
    /// A new repository's key ring: a fresh data key wrapped by `master`.
    pub fn create(master: &MasterKey) -> Result<(Self, DataKey), CryptoError> {
        let data_key = DataKey::generate()?;
        let slot = wrap(&data_key, master)?;
        Ok((Self { slots: vec![slot] }, data_key))
    }

    /// The data key, opened with `master`: the slot whose key id matches is
    /// tried first, then every other slot (a slot's id is not trusted).
    pub fn unlock(&self, master: &MasterKey) -> Result<DataKey, CryptoError> {
        let (matching, others): (Vec<&KeySlot>, Vec<&KeySlot>) = self
            .slots
            .iter()
            .partition(|s| &s.key_id == master.key_id());
        let mut first_error = None;
        for slot in matching.into_iter().chain(others) {
            match unwrap(slot, master) {
                Ok(key) => return Ok(key),
                Err(e @ (CryptoError::Corrupt { .. } | CryptoError::Malformed { .. })) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        Err(first_error.unwrap_or(CryptoError::WrongKey {
            tried: self.slots.len(),
        }))
    }

    /// Adds a slot for `master` wrapping `data_key` (which the caller
    /// obtained with [`KeyRing::unlock`]). Returns the new slot, to be stored.
    pub fn add(&mut self, data_key: &DataKey, master: &MasterKey) -> Result<&KeySlot, CryptoError> {
        if self.slots.iter().any(|s| &s.key_id == master.key_id()) {
            return Err(CryptoError::KeyExists {
                key_id: master.key_id().to_string(),
            });
        }
        let slot = wrap(data_key, master)?;
        self.slots.push(slot);
        let last = self.slots.len() - 1;
        Ok(&self.slots[last])
    }

    /// Removes the slot of `key_id`; refuses to remove the last slot.
    pub fn remove(&mut self, key_id: &KeyId) -> Result<KeySlot, CryptoError> {
        let pos = self
            .slots
            .iter()
            .position(|s| &s.key_id == key_id)
            .ok_or_else(|| CryptoError::UnknownKeyId {
                key_id: key_id.to_string(),
            })?;
        if self.slots.len() == 1 {
            return Err(CryptoError::LastKey {
                key_id: key_id.to_string(),
            });
        }
        Ok(self.slots.remove(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_text(k: &MasterKey) -> String {
        to_hex(k.key.expose())
    }

    #[test]
    fn key_file_formats_all_load_the_same_key() {
        let k = MasterKey::generate().expect("rng");
        let raw = *k.key.expose();
        let p = Path::new("/k");
        let hex = MasterKey::from_key_file_bytes(format!("  {}\n", to_hex(&raw)).as_bytes(), p)
            .expect("hex");
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let b64 = MasterKey::from_key_file_bytes(format!("{b64}\n").as_bytes(), p).expect("b64");
        let bin = MasterKey::from_key_file_bytes(&raw, p).expect("raw");
        for other in [&hex, &b64, &bin] {
            assert_eq!(other.key_id(), k.key_id());
            assert_eq!(key_text(other), key_text(&k));
        }
    }

    #[test]
    fn bad_key_files_are_rejected_with_the_path_and_without_the_contents() {
        let p = Path::new("/etc/chromaprod/backup.key");
        for bad in [
            &b""[..],
            b"\n\n",
            b"not a key at all",
            b"00112233",
            b"correct horse battery staple 123",
            &[0xffu8; 31],
            "zz".repeat(32).as_bytes(),
        ] {
            let err = MasterKey::from_key_file_bytes(bad, p).expect_err("must fail");
            let msg = err.to_string();
            assert!(matches!(err, CryptoError::BadKeyFile { .. }), "{msg}");
            assert!(msg.contains("/etc/chromaprod/backup.key"), "{msg}");
            assert!(!msg.contains("not a key at all"), "{msg}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let k = MasterKey::generate().expect("rng");
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&key_text(&k)));
        assert!(dbg.contains(k.key_id().as_str()));
        let d = DataKey::generate().expect("rng");
        let dbg = format!(
            "{d:?} {:?}",
            crate::backup::format::Codec::Encrypted(d.clone())
        );
        assert!(!dbg.contains(&to_hex(d.0.raw.expose())));
        assert!(!dbg.contains(&to_hex(d.0.enc.expose())));
    }

    /// Compile-time: key types wipe their key material when dropped. This
    /// shows the wiring (the trait, backed by `Secret`'s wipe), not the
    /// absence of every copy: ring's key schedules are not wiped.
    #[test]
    fn key_types_are_zeroized_on_drop() {
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<MasterKey>();
        wipes_on_drop::<DataKeyInner>();
        wipes_on_drop::<Zeroizing<[u8; KEY_LEN]>>();
        // `from_raw` leaves zeros where the key was handed in.
        let mut raw = [7u8; KEY_LEN];
        let k = MasterKey::from_raw(&mut raw);
        assert_eq!(raw, [0u8; KEY_LEN]);
        assert_eq!(k.key.expose(), &[7u8; KEY_LEN]);
        let mut raw = [9u8; KEY_LEN];
        let d = DataKey::from_raw(&mut raw).expect("dk");
        assert_eq!(raw, [0u8; KEY_LEN]);
        assert_eq!(d.0.raw.expose(), &[9u8; KEY_LEN]);
    }

    #[test]
    fn key_id_is_stable_and_not_the_key() {
        let k = MasterKey::from_key_file_bytes(&[7u8; 32], Path::new("k")).expect("key");
        let again = MasterKey::from_key_file_bytes(&[7u8; 32], Path::new("k")).expect("key");
        assert_eq!(k.key_id(), again.key_id());
        assert_eq!(k.key_id().as_str().len(), 16);
        assert!(!key_text(&k).contains(k.key_id().as_str()));
        KeyId::parse(k.key_id().as_str()).expect("own ids parse");
        assert!(KeyId::parse("../../etc/passwd").is_err());
        assert!(KeyId::parse("ABCDEF0123456789").is_err());
    }

    #[test]
    fn key_file_is_written_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.key");
        let k = MasterKey::generate().expect("rng");
        k.write_new_key_file(&path).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = MasterKey::from_file(&path).expect("load");
        assert_eq!(loaded.key_id(), k.key_id());
        let other = MasterKey::generate().expect("rng");
        let err = other.write_new_key_file(&path).expect_err("exists");
        assert!(matches!(err, CryptoError::KeyFileExists { .. }));
        assert_eq!(
            MasterKey::from_file(&path).expect("load").key_id(),
            k.key_id()
        );
    }

    #[test]
    fn a_key_file_group_or_other_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.key");
        let k = MasterKey::generate().expect("rng");
        k.write_new_key_file(&path).expect("write");
        for mode in [0o640, 0o604, 0o644, 0o660, 0o606] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = MasterKey::from_file(&path).expect_err("refused");
            let msg = err.to_string();
            assert!(matches!(err, CryptoError::Exposed { .. }), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(!msg.contains(&key_text(&k)), "{msg}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(
                MasterKey::from_file(&path).expect("private").key_id(),
                k.key_id()
            );
        }
        // A credentials directory that is not systemd's (an operator shell's
        // $CREDENTIALS_DIRECTORY) holds files that are judged the same way.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err =
            MasterKey::from_credential_in(Some(dir.path()), "backup.key").expect_err("exposed");
        assert!(matches!(err, CryptoError::Exposed(_)), "{err}");
        assert!(crate::secret::is_systemd_credential(Path::new(
            "/run/credentials/chromaprod.service/backup-key"
        )));
        assert!(!crate::secret::is_systemd_credential(Path::new(
            "/run/credentials/../../tmp/backup-key"
        )));
    }

    #[test]
    fn missing_key_file_and_credential_say_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = MasterKey::from_file(&dir.path().join("nope")).expect_err("missing");
        assert!(matches!(err, CryptoError::NoKey { .. }));
        let err = MasterKey::from_credential_in(None, "backup-key").expect_err("no dir");
        assert!(err.to_string().contains("LoadCredential=backup-key"));
        let err = MasterKey::from_credential_in(Some(dir.path()), "../x").expect_err("name");
        assert!(matches!(err, CryptoError::BadCredentialName { .. }));
        let k = MasterKey::generate().expect("rng");
        k.write_new_key_file(&dir.path().join("backup-key"))
            .expect("write");
        let loaded = MasterKey::from_credential_in(Some(dir.path()), "backup-key").expect("load");
        assert_eq!(loaded.key_id(), k.key_id());
    }

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let master = MasterKey::generate().expect("rng");
        let other = MasterKey::generate().expect("rng");
        let (ring, data) = KeyRing::create(&master).expect("create");
        assert_eq!(ring.unlock(&master).expect("unlock"), data);
        assert!(matches!(
            ring.unlock(&other),
            Err(CryptoError::WrongKey { tried: 1 })
        ));
        assert!(matches!(
            unwrap(&ring.slots[0], &other),
            Err(CryptoError::WrongKey { .. })
        ));
        // The slot holds no plaintext key.
        let json = serde_json::to_string(&ring).expect("json");
        assert!(!json.contains(&to_hex(data.0.raw.expose())));
    }

    #[test]
    fn tampered_slot_is_corrupt_not_wrong_key() {
        let master = MasterKey::generate().expect("rng");
        let (mut ring, _) = KeyRing::create(&master).expect("create");
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&ring.slots[0].wrapped)
            .expect("b64");
        raw[20] ^= 1;
        ring.slots[0].wrapped = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(matches!(
            ring.unlock(&master),
            Err(CryptoError::Corrupt { .. })
        ));
    }

    #[test]
    fn two_keys_remove_one_other_still_unlocks_and_last_is_kept() {
        let a = MasterKey::generate().expect("rng");
        let b = MasterKey::generate().expect("rng");
        let (mut ring, data) = KeyRing::create(&a).expect("create");
        ring.add(&data, &b).expect("add b");
        assert!(matches!(
            ring.add(&data, &b),
            Err(CryptoError::KeyExists { .. })
        ));
        assert_eq!(ring.unlock(&b).expect("b unlocks"), data);
        ring.remove(a.key_id()).expect("remove a");
        assert!(matches!(ring.unlock(&a), Err(CryptoError::WrongKey { .. })));
        assert_eq!(ring.unlock(&b).expect("b still unlocks"), data);
        let err = ring.remove(b.key_id()).expect_err("last key");
        assert!(matches!(err, CryptoError::LastKey { .. }));
        assert_eq!(ring.slots.len(), 1);
        assert!(matches!(
            ring.remove(a.key_id()),
            Err(CryptoError::UnknownKeyId { .. })
        ));
    }

    #[test]
    fn unlock_tries_all_slots_when_ids_do_not_match() {
        let a = MasterKey::generate().expect("rng");
        let (mut ring, data) = KeyRing::create(&a).expect("create");
        // The id is bound to the slot (it is in the AAD): a relabelled slot
        // opens for nobody. Other slots are still tried.
        ring.slots[0].key_id = KeyId::parse("0000000000000000").expect("id");
        assert!(ring.unlock(&a).is_err());
        let b = MasterKey::generate().expect("rng");
        ring.add(&data, &b).expect("add");
        assert_eq!(ring.unlock(&b).expect("unlock"), data);
    }

    #[test]
    fn data_key_encrypt_round_trip_and_aad_binding() {
        let d = DataKey::generate().expect("rng");
        let sealed = d.encrypt(b"header", b"hello").expect("seal");
        assert_eq!(d.decrypt(b"header", &sealed, "x").expect("open"), b"hello");
        assert!(matches!(
            d.decrypt(b"other", &sealed, "x"),
            Err(CryptoError::Corrupt { .. })
        ));
        let other = DataKey::generate().expect("rng");
        assert!(other.decrypt(b"header", &sealed, "x").is_err());
        assert_ne!(d.content_id(b"a"), other.content_id(b"a"));
        assert_eq!(d.content_id(b"a"), d.content_id(b"a"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn key_file_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = MasterKey::from_key_file_bytes(&bytes, Path::new("k"));
        }

        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        }

        #[test]
        fn any_flipped_bit_in_a_slot_fails(bit in 0usize..(8 * (NONCE_LEN + KEY_LEN + TAG_LEN))) {
            let master = MasterKey::from_key_file_bytes(&[3u8; 32], Path::new("k")).expect("key");
            let data = DataKey::from_raw(&mut [9u8; 32]).expect("dk");
            let slot = wrap(&data, &master).expect("wrap");
            let mut raw = base64::engine::general_purpose::STANDARD.decode(&slot.wrapped).expect("b64");
            raw[bit / 8] ^= 1 << (bit % 8);
            let bad = KeySlot { wrapped: base64::engine::general_purpose::STANDARD.encode(raw), ..slot };
            prop_assert!(unwrap(&bad, &master).is_err());
        }
    }
}
