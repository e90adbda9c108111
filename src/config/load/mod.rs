//! Layered loading and whole-file validation.
//!
//! Reading typed values key by key is in `reader.rs`; the checks across
//! keys, unknown keys and secret files in `validate.rs`.

mod reader;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Config, ENV_PREFIX};

use reader::Reader;
pub use validate::{
    parse_utc_offset, plain_http_problem, secret_file_issues, url_location, without_user_info,
};
use validate::{unknown_keys, validate};

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `pool.max_connections`.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass --config or set CHROMAPROD_CONFIG to an existing file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration in {source_name} ({} problem{}):\n{}", issues.len(), if issues.len() == 1 { "" } else { "s" }, issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        source_name: String,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// Every key path with a problem (for tests and `status`).
    pub fn issues(&self) -> Vec<ConfigIssue> {
        match self {
            ConfigError::Invalid { issues, .. } => issues.clone(),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => Vec::new(),
        }
    }
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Environment variables that overrode file values (names only, never values).
    pub env_overrides: Vec<String>,
}

/// A loaded configuration with its provenance.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
}

/// Load `path`, apply `CHROMAPROD__…` overrides from the process environment,
/// and validate everything.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = fs_err::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(e.kind(), e.to_string()),
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let config = from_parts(&text, &path.display().to_string(), &env)?;
    Ok(Loaded {
        config,
        source: ConfigSource {
            path: path.to_path_buf(),
            env_overrides: env.into_iter().map(|(k, _)| k).collect(),
        },
    })
}

/// The control socket a config file names, even when the rest of the file is
/// invalid (so `chromaprod reload` can report a rejected file to the daemon
/// that is running). Environment override first, then the file, else `None`.
pub fn socket_path_hint(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(format!("{ENV_PREFIX}__CONTROL__SOCKET_PATH")) {
        return Some(PathBuf::from(p));
    }
    let text = fs_err::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table
        .get("control")?
        .get("socket_path")?
        .as_str()
        .map(PathBuf::from)
}

/// Parse and validate TOML text without environment overrides (tests, `validate`).
pub fn load_from_str(text: &str) -> Result<Config, ConfigError> {
    from_parts(text, "<string>", &[])
}

fn from_parts(
    text: &str,
    source_name: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    // Layer environment overrides through the `config` crate's own source so the
    // key mapping matches its documented behaviour.
    let env_map: std::collections::HashMap<String, String> = env.iter().cloned().collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("chroma.endpoints")
            .with_list_parse_key("retry.retryable_errors")
            .source(Some(env_map)),
    );
    let merged = builder.build().map_err(|e| ConfigError::Parse {
        path: source_name.to_string(),
        message: e.to_string(),
    })?;
    let root: Value =
        merged
            .try_deserialize()
            .map_err(|e: config::ConfigError| ConfigError::Parse {
                path: source_name.to_string(),
                message: e.to_string(),
            })?;
    let empty = Map::new();
    let root = root.as_object().unwrap_or(&empty);
    let mut r = Reader {
        root,
        issues: Vec::new(),
        seen: BTreeSet::new(),
    };
    let config = r.read();
    let mut issues = r.issues;
    issues.extend(unknown_keys(root, &r.seen));
    issues.extend(validate(&config));
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            source_name: source_name.to_string(),
            issues,
        })
    }
}
