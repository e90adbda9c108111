//! The operations a migration file lists (`op = "…"`), their arguments
//! and defaults, the names they give kept collections, their inverses, and
//! the checks of their arguments.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chroma::names::valid_collection_name;

/// The default sample size, `k` and overlap threshold of a rebuild's check.
pub const DEFAULT_SAMPLE: usize = 50;
pub const DEFAULT_K: usize = 10;
pub const DEFAULT_MIN_OVERLAP: f64 = 0.9;
pub const DEFAULT_MAX_PASSES: u32 = 10;
pub const DEFAULT_MAX_LAG: u64 = 100;
/// A catch-up pass this short (milliseconds) also ends the catching up.
pub const DEFAULT_MAX_LAG_MS: u64 = 1000;
pub const DEFAULT_SETTLE_MS: u64 = 2000;

/// One change to a Chroma deployment. In a file, `op` names the operation
/// and the other keys are its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Create a collection (configuration as Chroma accepts it on create).
    CreateCollection {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata: Option<Map<String, Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        configuration: Option<Value>,
    },
    /// Rename a collection (its id stays the same).
    RenameCollection { from: String, to: String },
    /// Drop a collection. Guarded: by default it is renamed aside to
    /// `NAME.dropped-vVERSION` and kept, so `down` brings it back; with
    /// `keep = false` it is deleted, which needs `confirm = NAME`.
    DropCollection {
        name: String,
        #[serde(default = "yes")]
        keep: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm: Option<String>,
    },
    /// Swap the names of two collections (blue/green).
    SwapCollections { a: String, b: String },
    /// Set and unset keys of a collection's own metadata.
    UpdateCollectionMetadata {
        collection: String,
        #[serde(default)]
        set: Map<String, Value>,
        #[serde(default)]
        unset: Vec<String>,
    },
    /// Change index parameters Chroma can change in place, e.g.
    /// `hnsw = { ef_search = 200 }`.
    UpdateIndex {
        collection: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hnsw: Option<Map<String, Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spann: Option<Map<String, Value>>,
    },
    /// Rename a metadata key of every record (matching `where`).
    RenameMetadataKey {
        collection: String,
        from: String,
        to: String,
        #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
        where_: Option<Value>,
    },
    /// Set a metadata value on every record (matching `where`); with
    /// `only_missing`, only where the key is absent (a backfill).
    SetMetadata {
        collection: String,
        key: String,
        value: Value,
        #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
        where_: Option<Value>,
        #[serde(default)]
        only_missing: bool,
    },
    /// Delete a metadata key from every record (matching `where`).
    DeleteMetadataKey {
        collection: String,
        key: String,
        #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
        where_: Option<Value>,
    },
    /// Delete the records matching `where` (required).
    DeleteRecords {
        collection: String,
        #[serde(rename = "where")]
        where_: Value,
    },
    /// Copy a collection into a new one with `configuration` (a new
    /// distance metric or fixed index parameters), verify it, and swap
    /// names. The old collection is kept as `NAME.pre-vVERSION` for `down`.
    Rebuild {
        collection: String,
        configuration: Value,
        #[serde(default = "default_sample")]
        sample: usize,
        #[serde(default = "default_k")]
        k: usize,
        #[serde(default = "default_min_overlap")]
        min_overlap: f64,
        /// Catch-up passes without headway (fixing no fewer records than
        /// the pass before; the first counts) before the rebuild is
        /// refused: a catch-up that keeps shrinking goes on.
        #[serde(default = "default_max_passes")]
        max_passes: u32,
        /// A catch-up pass that fixed at most this many records ends the
        /// catching up (writers rarely pause); what changes after it is
        /// copied after the swap (settle).
        #[serde(default = "default_max_lag")]
        max_lag: u64,
        /// So does a pass that took at most this many milliseconds: the copy
        /// then trails the source by about that long, whatever the writers'
        /// rate. So does a pass at its floor: no headway, its fixes in one
        /// write request, the rest of it within this many milliseconds
        /// (beside writers that keep Chroma's write queue long, no pass is
        /// shorter than one write's wait). With `max_lag = 0`, only a pass
        /// that finds nothing ends it.
        #[serde(default = "default_max_lag_ms")]
        max_lag_ms: u64,
        /// How long writes that still reach the old collection after the
        /// swap (clients holding its id) are copied over, in milliseconds;
        /// at least twice the last catch-up pass's longest write.
        #[serde(default = "default_settle_ms")]
        settle_ms: u64,
    },
    /// Re-embed every record's document through an OpenAI-compatible
    /// `/v1/embeddings` endpoint into a rebuilt collection (a new embedding
    /// model or dimension), caught up and swapped in as `rebuild` does. The
    /// API key comes from the environment variable `api_key_env`, never
    /// from the file.
    Reembed {
        collection: String,
        /// The endpoint, e.g. `https://api.openai.com/v1/embeddings`.
        url: String,
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_env: Option<String>,
        /// Asked of the endpoint (models that can shorten their vectors).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dimensions: Option<usize>,
        /// Changes to the new collection's configuration (e.g. the space).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        configuration: Option<Value>,
        /// Documents per embeddings request.
        #[serde(default = "default_embed_batch")]
        batch: usize,
        #[serde(default = "default_max_passes")]
        max_passes: u32,
        #[serde(default = "default_max_lag")]
        max_lag: u64,
        #[serde(default = "default_max_lag_ms")]
        max_lag_ms: u64,
        #[serde(default = "default_settle_ms")]
        settle_ms: u64,
    },
}

fn default_embed_batch() -> usize {
    64
}

fn yes() -> bool {
    true
}
fn default_sample() -> usize {
    DEFAULT_SAMPLE
}
fn default_k() -> usize {
    DEFAULT_K
}
fn default_min_overlap() -> f64 {
    DEFAULT_MIN_OVERLAP
}
fn default_max_passes() -> u32 {
    DEFAULT_MAX_PASSES
}
fn default_max_lag() -> u64 {
    DEFAULT_MAX_LAG
}
fn default_max_lag_ms() -> u64 {
    DEFAULT_MAX_LAG_MS
}
fn default_settle_ms() -> u64 {
    DEFAULT_SETTLE_MS
}

/// Where a dropped collection is kept.
pub fn dropped_name(name: &str, version: u32) -> String {
    format!("{name}.dropped-v{version}")
}

/// Where a rebuilt collection's predecessor is kept.
pub fn previous_name(name: &str, version: u32) -> String {
    format!("{name}.pre-v{version}")
}

/// The staging collection of a rebuild.
pub fn staging_name(name: &str, version: u32) -> String {
    format!("{name}.rebuild-v{version}")
}

impl Operation {
    /// The `op` name as written in files.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::CreateCollection { .. } => "create_collection",
            Operation::RenameCollection { .. } => "rename_collection",
            Operation::DropCollection { .. } => "drop_collection",
            Operation::SwapCollections { .. } => "swap_collections",
            Operation::UpdateCollectionMetadata { .. } => "update_collection_metadata",
            Operation::UpdateIndex { .. } => "update_index",
            Operation::RenameMetadataKey { .. } => "rename_metadata_key",
            Operation::SetMetadata { .. } => "set_metadata",
            Operation::DeleteMetadataKey { .. } => "delete_metadata_key",
            Operation::DeleteRecords { .. } => "delete_records",
            Operation::Rebuild { .. } => "rebuild",
            Operation::Reembed { .. } => "reembed",
        }
    }

    /// The collections this operation reads or changes (for the restore point).
    pub fn collections(&self) -> Vec<&str> {
        match self {
            Operation::CreateCollection { name, .. } | Operation::DropCollection { name, .. } => {
                vec![name]
            }
            Operation::RenameCollection { from, .. } => vec![from],
            Operation::SwapCollections { a, b } => vec![a, b],
            Operation::UpdateCollectionMetadata { collection, .. }
            | Operation::UpdateIndex { collection, .. }
            | Operation::RenameMetadataKey { collection, .. }
            | Operation::SetMetadata { collection, .. }
            | Operation::DeleteMetadataKey { collection, .. }
            | Operation::DeleteRecords { collection, .. }
            | Operation::Rebuild { collection, .. }
            | Operation::Reembed { collection, .. } => vec![collection],
        }
    }

    /// The collection an earlier run of this operation kept and that this
    /// one deletes if it is still there: a rebuild's `NAME.pre-vVERSION`
    /// (after `down`, or a run that was undone, it holds the rebuilt
    /// collection and every write made to it since).
    pub fn replaces_kept(&self, version: u32) -> Option<(&str, String)> {
        match self {
            Operation::Rebuild { collection, .. } | Operation::Reembed { collection, .. } => {
                Some((collection, previous_name(collection, version)))
            }
            _ => None,
        }
    }

    /// The inverse, where it is obvious; `None` where a `down` must be written.
    pub fn inverse(&self, version: u32) -> Option<Operation> {
        match self {
            Operation::CreateCollection { name, .. } => Some(Operation::DropCollection {
                name: name.clone(),
                keep: true,
                confirm: None,
            }),
            Operation::RenameCollection { from, to } => Some(Operation::RenameCollection {
                from: to.clone(),
                to: from.clone(),
            }),
            Operation::DropCollection {
                name, keep: true, ..
            } => Some(Operation::RenameCollection {
                from: dropped_name(name, version),
                to: name.clone(),
            }),
            Operation::SwapCollections { a, b } => Some(Operation::SwapCollections {
                a: a.clone(),
                b: b.clone(),
            }),
            Operation::RenameMetadataKey {
                collection,
                from,
                to,
                where_: None,
            } => Some(Operation::RenameMetadataKey {
                collection: collection.clone(),
                from: to.clone(),
                to: from.clone(),
                where_: None,
            }),
            Operation::Rebuild { collection, .. } | Operation::Reembed { collection, .. } => {
                Some(Operation::SwapCollections {
                    a: collection.clone(),
                    b: previous_name(collection, version),
                })
            }
            _ => None,
        }
    }

    /// Problems with the arguments, found before anything runs.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.collections() {
            if !valid_collection_name(c) {
                out.push(format!("{}: {c:?} is not a valid Chroma collection name (3-512 characters of [a-zA-Z0-9._-], starting and ending with a letter or digit)", self.name()));
            }
        }
        match self {
            Operation::RenameCollection { to, .. } if !valid_collection_name(to) => {
                out.push(format!(
                    "rename_collection: {to:?} is not a valid Chroma collection name"
                ));
            }
            Operation::DropCollection {
                name,
                keep: false,
                confirm,
            } if confirm.as_deref() != Some(name.as_str()) => out.push(format!(
                "drop_collection of {name:?} with keep = false deletes its data: add confirm = {name:?}"
            )),
            Operation::RenameMetadataKey { from, to, .. } if from == to || to.is_empty() => {
                out.push(format!(
                    "rename_metadata_key: from {from:?} to {to:?} renames nothing"
                ))
            }
            Operation::SetMetadata { value, .. }
                if !(value.is_string() || value.is_number() || value.is_boolean()) =>
            {
                out.push(
                    "set_metadata: value must be a string, a number or a boolean".to_string(),
                )
            }
            Operation::UpdateIndex { hnsw, spann, .. } if hnsw.is_none() && spann.is_none() => {
                out.push("update_index: give hnsw = { … } or spann = { … }".to_string())
            }
            Operation::UpdateIndex {
                hnsw: Some(h),
                ..
            } if h.contains_key("space") => out.push(
                "update_index: the distance metric (space) cannot change in place; use rebuild"
                    .to_string(),
            ),
            Operation::Rebuild {
                configuration,
                sample,
                k,
                min_overlap,
                max_passes,
                ..
            } => {
                if !configuration.is_object() {
                    out.push("rebuild: configuration must be a table, e.g. { hnsw = { space = \"cosine\" } }".into());
                }
                if *sample == 0 || *k == 0 {
                    out.push("rebuild: sample and k must be at least 1".into());
                }
                if !(0.0..=1.0).contains(min_overlap) {
                    out.push("rebuild: min_overlap must be between 0 and 1".into());
                }
                if *max_passes == 0 {
                    out.push("rebuild: max_passes must be at least 1".into());
                }
            }
            Operation::Reembed {
                url,
                batch,
                max_passes,
                api_key_env,
                ..
            } => {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url::Url::parse(url).is_err()
                {
                    out.push(format!("reembed: url {url:?} is not an http(s) URL"));
                }
                if *batch == 0 || *max_passes == 0 {
                    out.push("reembed: batch and max_passes must be at least 1".into());
                }
                if api_key_env.as_deref().is_some_and(str::is_empty) {
                    out.push("reembed: api_key_env names an environment variable".into());
                }
            }
            _ => {}
        }
        out
    }
}
