//! The data key that encrypts a repository, the key slots that wrap it
//! under each master key, and the key ring of a repository.

use std::fmt;

use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::master::{KeyId, MasterKey};
use super::{
    hkdf32, open, random_bytes, seal, seal_in_place, to_hex, CryptoError, INFO_ENC, INFO_MAC,
    KEY_LEN, SLOT_AAD_PREFIX,
};
use crate::secret::Secret;

/// The random key that encrypts a repository's objects, and the keys
/// derived from it. Cheap to clone (shared).
#[derive(Clone)]
pub struct DataKey(pub(super) std::sync::Arc<DataKeyInner>);

pub(super) struct DataKeyInner {
    pub(super) raw: Secret<[u8; KEY_LEN]>,
    pub(super) enc: Secret<[u8; KEY_LEN]>,
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
