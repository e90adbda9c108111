//! Objects holding JSON: the repository's `config` and key slots.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{decode, encode, Codec, Encoded, FormatError, ObjectKind, FORMAT_VERSION};
use crate::backup::crypto::{to_hex, CryptoError, KeyId, KeySlot};

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
