//! Migration files: one TOML file per version, `NNNN_name.toml`, loaded
//! and checked as a whole before anything runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::operation::Operation;
use super::MigrationError;

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
