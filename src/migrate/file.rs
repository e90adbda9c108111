//! Migration files: one TOML file per version, `NNNN_name.toml`, loaded
//! and checked as a whole before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::MigrationError;
use crate::chroma::names::valid_collection_name;

/// The default sample size, `k` and overlap threshold of a rebuild's check.
pub const DEFAULT_SAMPLE: usize = 50;
pub const DEFAULT_K: usize = 10;
pub const DEFAULT_MIN_OVERLAP: f64 = 0.9;
pub const DEFAULT_MAX_PASSES: u32 = 10;
pub const DEFAULT_MAX_LAG: u64 = 100;
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
        #[serde(default = "default_max_passes")]
        max_passes: u32,
        /// A catch-up pass that fixed at most this many records ends the
        /// catching up (writers rarely pause); what changes after it is
        /// copied by digest after the swap.
        #[serde(default = "default_max_lag")]
        max_lag: u64,
        /// How long writes that still reach the old collection after the
        /// swap (clients holding its id) are copied over, in milliseconds.
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
    fn problems(&self) -> Vec<String> {
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

/// A migration file's contents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    version: u32,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dependencies: Vec<u32>,
    #[serde(default)]
    up: Vec<Operation>,
    #[serde(default)]
    down: Option<Vec<Operation>>,
}

/// One versioned migration, as loaded from its file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    pub description: Option<String>,
    /// Versions that must be applied first.
    pub dependencies: Vec<u32>,
    pub up: Vec<Operation>,
    /// As written; `None` means derived from `up` (see [`Migration::down_ops`]).
    pub down: Option<Vec<Operation>>,
    /// SHA-256 of the file with line endings normalised to `\n`, hex.
    pub checksum: String,
    pub path: PathBuf,
}

impl Migration {
    /// The operations that undo this migration: the file's `down`, or the
    /// inverses of `up` in reverse order when each is obvious.
    pub fn down_ops(&self) -> Result<Vec<Operation>, MigrationError> {
        if let Some(d) = &self.down {
            return Ok(d.clone());
        }
        self.up
            .iter()
            .rev()
            .map(|op| {
                op.inverse(self.version)
                    .ok_or_else(|| MigrationError::Irreversible {
                        version: self.version,
                        op: op.name().to_string(),
                    })
            })
            .collect()
    }

    /// The collections `up` and `down` touch.
    pub fn collections(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .up
            .iter()
            .chain(self.down.iter().flatten())
            .flat_map(|o| o.collections().into_iter().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The checksum of a file's bytes: SHA-256 over the text with `\r\n`
/// turned into `\n`, so a checkout's line endings do not change it.
pub fn checksum(bytes: &[u8]) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut rest = bytes;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        h.update(&rest[..i]);
        rest = &rest[i + 1..];
    }
    h.update(rest);
    hex(h.finish().as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The version a file name declares: `0002_docs_cosine.toml` → 2.
fn version_of(file_name: &str) -> Option<u32> {
    let stem = file_name.strip_suffix(".toml")?;
    let (num, rest) = stem.split_once('_')?;
    if rest.is_empty() || num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse().ok()
}

/// Parses one file; problems are returned, not raised.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Migration, Vec<String>> {
    let shown = path.display();
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let text = std::str::from_utf8(bytes).map_err(|e| vec![format!("{shown}: not UTF-8: {e}")])?;
    let body: FileBody = toml::from_str(text).map_err(|e| {
        vec![format!(
            "{shown}: {}",
            e.to_string().trim().replace('\n', " ")
        )]
    })?;
    let mut problems = Vec::new();
    match version_of(file_name) {
        Some(v) if v == body.version => {}
        Some(v) => problems.push(format!(
            "{shown}: the file name says version {v} but the file says version {}",
            body.version
        )),
        None => problems.push(format!(
            "{shown}: name it NNNN_name.toml, with its version first"
        )),
    }
    if body.version == 0 {
        problems.push(format!("{shown}: versions start at 1"));
    }
    if body.up.is_empty() {
        problems.push(format!("{shown}: `up` lists no operations"));
    }
    for (i, op) in body.up.iter().chain(body.down.iter().flatten()).enumerate() {
        for p in op.problems() {
            problems.push(format!("{shown}: operation {}: {p}", i + 1));
        }
    }
    if body.dependencies.contains(&body.version) {
        problems.push(format!("{shown}: a migration cannot depend on itself"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Migration {
        version: body.version,
        name: body.name,
        description: body.description,
        dependencies: body.dependencies,
        up: body.up,
        down: body.down,
        checksum: checksum(bytes),
        path: path.to_path_buf(),
    })
}

/// Loads every `*.toml` of `dir` and checks the set: parse errors, unknown
/// operations, duplicate versions, missing dependencies and dependency
/// cycles are all reported together, before anything runs. A directory
/// that does not exist holds no migrations.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(MigrationError::Io {
                path: dir.to_path_buf(),
                why: e.to_string(),
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut problems = Vec::new();
    let mut migrations = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| MigrationError::Io {
            path: p.clone(),
            why: e.to_string(),
        })?;
        match parse(&p, &bytes) {
            Ok(m) => migrations.push(m),
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    problems.extend(check_set(&migrations));
    if !problems.is_empty() {
        return Err(MigrationError::Invalid { problems });
    }
    migrations.sort_by_key(|m| m.version);
    Ok(migrations)
}

/// Duplicate versions, dependencies on versions that do not exist, and cycles.
pub fn check_set(migrations: &[Migration]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_version: BTreeMap<u32, Vec<&Migration>> = BTreeMap::new();
    for m in migrations {
        by_version.entry(m.version).or_default().push(m);
    }
    for (v, ms) in &by_version {
        if ms.len() > 1 {
            let files: Vec<String> = ms.iter().map(|m| m.path.display().to_string()).collect();
            problems.push(format!(
                "version {v} is declared by {} files: {}",
                ms.len(),
                files.join(", ")
            ));
        }
    }
    for m in migrations {
        for d in &m.dependencies {
            if !by_version.contains_key(d) {
                problems.push(format!(
                    "migration {} ({}) depends on version {d}, which no file declares",
                    m.version, m.name
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(migrations) {
        let path: Vec<String> = cycle.iter().map(u32::to_string).collect();
        problems.push(format!("dependency cycle: {}", path.join(" → ")));
    }
    problems
}

/// A dependency cycle as the list of versions around it, if there is one.
fn find_cycle(migrations: &[Migration]) -> Option<Vec<u32>> {
    let deps: HashMap<u32, &[u32]> = migrations
        .iter()
        .map(|m| (m.version, m.dependencies.as_slice()))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state: HashMap<u32, u8> = HashMap::new();
    fn visit(
        v: u32,
        deps: &HashMap<u32, &[u32]>,
        state: &mut HashMap<u32, u8>,
        stack: &mut Vec<u32>,
    ) -> Option<Vec<u32>> {
        match state.get(&v) {
            Some(1) => {
                let start = stack.iter().position(|x| *x == v).unwrap_or(0);
                let mut c = stack[start..].to_vec();
                c.push(v);
                return Some(c);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(v, 1);
        stack.push(v);
        for d in deps.get(&v).copied().unwrap_or(&[]) {
            if deps.contains_key(d) {
                if let Some(c) = visit(*d, deps, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state.insert(v, 2);
        None
    }
    let mut versions: Vec<u32> = deps.keys().copied().collect();
    versions.sort_unstable();
    for v in versions {
        let mut stack = Vec::new();
        if let Some(c) = visit(v, &deps, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// Writes a new, empty migration file with the next version; returns its path.
pub fn new_file(dir: &Path, name: &str) -> Result<PathBuf, MigrationError> {
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let slug = slug.trim_matches('_').to_string();
    if slug.is_empty() {
        return Err(MigrationError::Invalid {
            problems: vec![format!(
                "{name:?} gives an empty file name; use letters and digits"
            )],
        });
    }
    let mut highest = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if let Some(v) = e.file_name().to_str().and_then(version_of) {
                highest = highest.max(v);
            }
        }
    }
    let version = highest + 1;
    std::fs::create_dir_all(dir).map_err(|e| MigrationError::Io {
        path: dir.to_path_buf(),
        why: e.to_string(),
    })?;
    let path = dir.join(format!("{version:04}_{slug}.toml"));
    let body = format!(
        "# Migration {version}: {name}\n\
         # Operations and their arguments: see the README's \"Migrations\" section.\n\
         version = {version}\n\
         name = {name:?}\n\
         dependencies = []\n\
         \n\
         # [[up]]\n\
         # op = \"rename_metadata_key\"\n\
         # collection = \"docs\"\n\
         # from = \"author\"\n\
         # to = \"author_name\"\n\
         \n\
         # `down` is derived from `up` where the inverse is obvious; otherwise list it:\n\
         # [[down]]\n\
         # op = \"…\"\n"
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| MigrationError::Io {
            path: path.clone(),
            why: e.to_string(),
        })?;
    std::io::Write::write_all(&mut f, body.as_bytes()).map_err(|e| MigrationError::Io {
        path: path.clone(),
        why: e.to_string(),
    })?;
    Ok(path)
}
