//! A backup repository: the layout of `docs/backup-format.md` on any
//! storage backend, opened with (or without) its key.
//!
//! ```text
//! config                      repository id, format version, encrypted flag (plain)
//! keys/<key_id>               the data key wrapped by one master key (plain)
//! chunks/<id[..2]>/<id>       records
//! index/<id[..2]>/<id>        record digests of one chunk
//! queries/<id[..2]>/<id>      recorded queries of one collection (`recall`)
//! blocks/<id[..2]>/<id>       blocks of Chroma's files (physical snapshots)
//! snapshots/<snapshot_id>     manifests, written last
//! locks/<lock_id>             leases (see `lock.rs`)
//! ```

use std::sync::Arc;

use bytes::Bytes;

use super::crypto::{KeyId, KeyRing, MasterKey};
use super::format::{self, Codec, Encoded, ObjectKind, RepoConfig};
use super::manifest::{Manifest, SnapshotId};
use super::BackupError;
use crate::storage::{self, Backend, ObjectKey, StorageOptions, Written};

/// An open repository: its backend and the codec its objects use.
#[derive(Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    pub config: RepoConfig,
    pub codec: Codec,
    /// Where it lives, for messages (never with credentials).
    pub location: String,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location)
            .field("encrypted", &self.config.encrypted)
            .finish()
    }
}

pub fn key(path: &str) -> Result<ObjectKey, BackupError> {
    ObjectKey::new(path).map_err(BackupError::Storage)
}

fn fanned(prefix: &str, id: &str) -> Result<ObjectKey, BackupError> {
    if id.len() < 3 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BackupError::Corrupt(format!("{id:?} is not an object id")));
    }
    key(&format!("{prefix}/{}/{id}", &id[..2]))
}

pub fn chunk_key(id: &str) -> Result<ObjectKey, BackupError> {
    fanned("chunks", id)
}

pub fn index_key(id: &str) -> Result<ObjectKey, BackupError> {
    fanned("index", id)
}

pub fn queries_key(id: &str) -> Result<ObjectKey, BackupError> {
    fanned("queries", id)
}

pub fn block_key(id: &str) -> Result<ObjectKey, BackupError> {
    fanned("blocks", id)
}

pub fn snapshot_key(id: &SnapshotId) -> Result<ObjectKey, BackupError> {
    key(&format!("snapshots/{id}"))
}

/// The repository's `config` object, or `None` where there is none.
async fn read_config(backend: &dyn Backend) -> Result<Option<RepoConfig>, BackupError> {
    match read_bounded(backend, &key("config")?, ObjectKind::Config.max_stored()).await {
        Ok(bytes) => Ok(Some(RepoConfig::decode(&bytes)?)),
        Err(BackupError::Storage(e)) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// What is stored at a location that has no `config` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unconfigured {
    /// No repository object: a repository may be created here.
    Empty,
    /// Key slots only: a repository is being created (its `config` is
    /// written last), or its creation was interrupted. No snapshot can exist
    /// yet, because a backup starts only once the `config` is there.
    Creating,
}

/// What a location without a `config` object holds. Fails with
/// [`BackupError::ConfigMissing`] if any repository object other than a key
/// slot (a snapshot, index, chunk, recorded queries, block or lock) is
/// stored there: a repository that lost its `config` must never be created
/// again over its data. Other names (a `lost+found`, a README beside it) are
/// not chromaprod's and do not count.
async fn unconfigured(backend: &dyn Backend, location: &str) -> Result<Unconfigured, BackupError> {
    let slots = backend.list(Some(&key("keys")?)).await?;
    let mut objects = Vec::new();
    for prefix in ["snapshots", "index", "chunks", "queries", "blocks", "locks"] {
        objects.extend(backend.list(Some(&key(prefix)?)).await?);
    }
    if objects.is_empty() {
        return Ok(if slots.is_empty() {
            Unconfigured::Empty
        } else {
            Unconfigured::Creating
        });
    }
    objects.extend(slots);
    let mut names: Vec<&str> = objects.iter().map(|m| m.key.as_str()).collect();
    names.sort_unstable();
    let shown = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    let found = match names.len() {
        1 => shown,
        n => format!("{n} objects, e.g. {shown}"),
    };
    Err(BackupError::ConfigMissing {
        location: location.to_string(),
        found,
    })
}

/// The repository's `config`, or else what the location holds without one.
/// A creator writes its `config`, then its lock: one may have done both
/// since the first look, so what was listed is judged only if the `config`
/// is still missing on a second.
async fn config_or_state(
    backend: &dyn Backend,
    location: &str,
) -> Result<Result<RepoConfig, Unconfigured>, BackupError> {
    if let Some(config) = read_config(backend).await? {
        return Ok(Ok(config));
    }
    let state = unconfigured(backend, location).await;
    match read_config(backend).await? {
        Some(config) => Ok(Ok(config)),
        None => state.map(Err),
    }
}

/// The object at `key` if it is at most `max` bytes, read with one ranged
/// request so a larger one is refused before its body is read. A missing
/// object is the backend's `NotFound`.
async fn read_bounded(
    backend: &dyn Backend,
    key: &ObjectKey,
    max: u64,
) -> Result<Bytes, BackupError> {
    // A size from a manifest is capped by the largest kind, so a manifest
    // that claims a huge chunk cannot make a huge read.
    let max = max.min(ObjectKind::Chunk.max_stored());
    let bytes = backend.read_range(key, 0..max.saturating_add(1)).await?;
    if bytes.len() as u64 > max {
        return Err(BackupError::BadObject {
            object: key.as_str().to_string(),
            why: format!(
                "it is larger than {max} bytes, the most such an object may be; it was not read"
            ),
        });
    }
    Ok(bytes)
}

impl Repository {
    /// Opens the repository at `url`, creating it if it is empty. `master`
    /// must be given exactly when the repository is (or is to be) encrypted:
    /// an encrypted repository without a key, or a key for a plain one, is
    /// refused — never a silent fallback to plaintext.
    pub async fn open(
        url: &str,
        options: &StorageOptions,
        master: Option<&MasterKey>,
        create: bool,
    ) -> Result<Repository, BackupError> {
        let backend = storage::open(url, options)?;
        Self::open_on(backend, url, master, create).await
    }

    pub async fn open_on(
        backend: Arc<dyn Backend>,
        url: &str,
        master: Option<&MasterKey>,
        create: bool,
    ) -> Result<Repository, BackupError> {
        let location = backend.describe();
        let config = match config_or_state(&*backend, &location).await? {
            Ok(config) => config,
            // A repository is created only where its prefix is empty:
            // objects without a `config` are a damaged repository, and a new
            // one over them would fork it.
            Err(state) => {
                return match (state, create) {
                    (Unconfigured::Empty, true) => Self::init(backend, master, location).await,
                    (Unconfigured::Creating, true) => Err(BackupError::Busy(format!(
                        "the repository at {location} is being created (it has key slots but no `config` object yet); retry in a moment. If no chromaprod is creating it, an earlier creation was interrupted: delete the objects under keys/ there (nothing was written under them)"
                    ))),
                    (_, false) => Err(BackupError::NoRepository {
                        location: url.to_string(),
                    }),
                }
            }
        };
        config.check(master.is_some())?;
        let codec = if config.encrypted {
            let master = master.ok_or_else(|| BackupError::KeyRequired {
                location: location.clone(),
            })?;
            let ring = Self::read_keyring(&*backend).await?;
            Codec::Encrypted(ring.unlock(master)?)
        } else {
            Codec::Plain
        };
        Ok(Repository {
            backend,
            config,
            codec,
            location,
        })
    }

    /// Opens the repository without its key, for [`Repository::check_objects`]
    /// only: objects can be checked for damage but not read.
    pub async fn open_keyless(
        url: &str,
        options: &StorageOptions,
    ) -> Result<Repository, BackupError> {
        let backend = storage::open(url, options)?;
        let location = backend.describe();
        let Ok(config) = config_or_state(&*backend, &location).await? else {
            return Err(BackupError::NoRepository {
                location: url.to_string(),
            });
        };
        Ok(Repository {
            backend,
            config,
            codec: Codec::Plain,
            location,
        })
    }

    /// Reads every stored object and checks its self-check (header and
    /// body hash): finds flipped bytes and truncation without the key.
    /// Returns the number of objects checked, or the first damaged one.
    pub async fn check_objects(&self) -> Result<u64, BackupError> {
        let mut n = 0;
        for (prefix, kind) in [
            ("keys", ObjectKind::Key),
            ("snapshots", ObjectKind::Manifest),
            ("index", ObjectKind::Index),
            ("chunks", ObjectKind::Chunk),
            ("queries", ObjectKind::Queries),
            ("blocks", ObjectKind::Block),
        ] {
            for meta in self.list(prefix).await? {
                let bytes = self.get(&meta.key, kind.max_stored()).await?;
                format::verify_self(&bytes).map_err(|e| BackupError::BadObject {
                    object: meta.key.as_str().to_string(),
                    why: e.to_string(),
                })?;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn init(
        backend: Arc<dyn Backend>,
        master: Option<&MasterKey>,
        location: String,
    ) -> Result<Repository, BackupError> {
        let config = RepoConfig::new(master.is_some())?;
        let mut slots = Vec::new();
        let codec = match master {
            Some(m) => {
                let (ring, data_key) = KeyRing::create(m)?;
                for slot in &ring.slots {
                    let enc = format::encode_key_slot(slot)?;
                    let slot_key = key(&format!("keys/{}", slot.key_id))?;
                    let written = backend
                        .write_if_absent(&slot_key, Bytes::from(enc.bytes))
                        .await?;
                    // A slot already there wraps someone else's data key:
                    // going on would encrypt under a key stored nowhere.
                    if written == Written::AlreadyExists {
                        return Err(BackupError::Busy(format!(
                            "another process is creating the repository at {location}; retry in a moment"
                        )));
                    }
                    slots.push(slot_key);
                }
                Codec::Encrypted(data_key)
            }
            None => Codec::Plain,
        };
        // The config is written last: a repository without it is not yet one.
        let written = backend
            .write_if_absent(&key("config")?, Bytes::from(config.encode()?.bytes))
            .await?;
        // `AlreadyExists` may be this very write, retried after a lost
        // response: the stored config says whose it is.
        let ours = written == Written::Created
            || read_config(&*backend)
                .await?
                .is_some_and(|c| c.repository_id == config.repository_id);
        if !ours {
            // Another creator won, with a data key of its own: this one's
            // slots must not stay, or this master key would later unlock a
            // data key no snapshot of that repository uses, and fork it.
            for slot in &slots {
                backend.delete(slot).await?;
            }
            return Err(BackupError::Busy(
                "another process created the repository at the same time; retry".into(),
            ));
        }
        tracing::info!(location = %location, encrypted = config.encrypted, "created backup repository");
        Ok(Repository {
            backend,
            config,
            codec,
            location,
        })
    }

    async fn read_keyring(backend: &dyn Backend) -> Result<KeyRing, BackupError> {
        let mut ring = KeyRing::default();
        for meta in backend.list(Some(&key("keys")?)).await? {
            let name = meta.key.as_str().trim_start_matches("keys/");
            let id = KeyId::parse(name)?;
            let bytes = read_bounded(backend, &meta.key, ObjectKind::Key.max_stored()).await?;
            ring.slots.push(format::decode_key_slot(&bytes, &id)?);
        }
        Ok(ring)
    }

    /// The key slots (for `chromaprod key list|add|remove`).
    pub async fn keyring(&self) -> Result<KeyRing, BackupError> {
        Self::read_keyring(&*self.backend).await
    }

    pub async fn add_key(&self, new: &MasterKey) -> Result<KeyId, BackupError> {
        let Codec::Encrypted(data_key) = &self.codec else {
            return Err(BackupError::NotEncrypted);
        };
        let mut ring = self.keyring().await?;
        let slot = ring.add(data_key, new)?.clone();
        let enc = format::encode_key_slot(&slot)?;
        self.backend
            .write_if_absent(
                &key(&format!("keys/{}", slot.key_id))?,
                Bytes::from(enc.bytes),
            )
            .await?;
        Ok(slot.key_id)
    }

    pub async fn remove_key(&self, id: &KeyId) -> Result<(), BackupError> {
        let mut ring = self.keyring().await?;
        ring.remove(id)?;
        self.backend.delete(&key(&format!("keys/{id}"))?).await?;
        Ok(())
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Stores an encoded object unless an object with that content address
    /// exists already. Returns the bytes actually written (0 when reused).
    pub async fn put(&self, key: &ObjectKey, encoded: Encoded) -> Result<u64, BackupError> {
        let n = encoded.bytes.len() as u64;
        match self
            .backend
            .write_if_absent(key, Bytes::from(encoded.bytes))
            .await?
        {
            Written::Created => Ok(n),
            Written::AlreadyExists => Ok(0),
        }
    }

    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, BackupError> {
        Ok(self.backend.head(key).await?.is_some())
    }

    /// The object at `key`, refused unread if it is larger than `max`
    /// bytes (a kind's [`ObjectKind::max_stored`], or the size a manifest
    /// records).
    pub async fn get(&self, key: &ObjectKey, max: u64) -> Result<Bytes, BackupError> {
        read_bounded(&*self.backend, key, max)
            .await
            .map_err(|e| match e {
                BackupError::Storage(e) if e.is_not_found() => {
                    BackupError::MissingObject(key.as_str().to_string())
                }
                e => e,
            })
    }

    /// Snapshot ids, oldest id order (callers sort by time from manifests).
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, BackupError> {
        let mut ids = Vec::new();
        for meta in self.backend.list(Some(&key("snapshots")?)).await? {
            let name = meta.key.as_str().trim_start_matches("snapshots/");
            match SnapshotId::parse(name) {
                Ok(id) => ids.push(id),
                Err(_) => tracing::warn!(
                    object = meta.key.as_str(),
                    "ignoring a stray object under snapshots/"
                ),
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub async fn manifest(&self, id: &SnapshotId) -> Result<Manifest, BackupError> {
        let bytes = self
            .get(&snapshot_key(id)?, ObjectKind::Manifest.max_stored())
            .await
            .map_err(|e| match e {
                BackupError::MissingObject(_) => BackupError::NoSnapshot(id.to_string()),
                e => e,
            })?;
        Manifest::decode(&bytes, &self.codec, Some(id)).map_err(|e| BackupError::BadObject {
            object: format!("snapshots/{id}"),
            why: e.to_string(),
        })
    }

    /// Every manifest, newest first. A manifest that cannot be read is an error.
    pub async fn manifests(&self) -> Result<Vec<Manifest>, BackupError> {
        let mut out = Vec::new();
        for id in self.snapshot_ids().await? {
            out.push(self.manifest(&id).await?);
        }
        // By time, not by text: `…:07Z` and `…:07.250Z` (manifests written
        // before creation times had milliseconds) compare wrongly as strings.
        let time = |m: &Manifest| humantime::parse_rfc3339(&m.metadata.created_at).ok();
        out.sort_by(|a, b| {
            time(b)
                .cmp(&time(a))
                .then_with(|| b.metadata.created_at.cmp(&a.metadata.created_at))
                .then(b.snapshot_id.cmp(&a.snapshot_id))
        });
        Ok(out)
    }

    pub async fn delete(&self, key: &ObjectKey) -> Result<(), BackupError> {
        Ok(self.backend.delete(key).await?)
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<storage::ObjectMeta>, BackupError> {
        Ok(self.backend.list(Some(&key(prefix)?)).await?)
    }
}
