//! Master keys: their ids, their files and credentials.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{from_hex, hkdf32, random_bytes, to_hex, CryptoError, INFO_KEK, KEY_ID_LABEL, KEY_LEN};
use crate::secret::Secret;

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
    pub(super) key: Secret<[u8; KEY_LEN]>,
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
    pub(super) fn from_raw(raw: &mut [u8; KEY_LEN]) -> Self {
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

    pub(super) fn kek(&self) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        hkdf32(self.key.expose(), INFO_KEK)
    }
}
