//! Backends for the backup repository: immutable objects on local disk, S3,
//! Azure Blob Storage or Google Cloud Storage, behind one small trait.
//!
//! The repository only ever creates objects (content-addressed chunks,
//! manifests written last) and deletes unreferenced ones, so the trait has no
//! overwrite: [`Backend::write_if_absent`] is create-only everywhere.
//!
//! Credentials come from the environment and the standard credential chains
//! only (see [`open`]); the TOML configuration names the URL, never a secret.

mod error;
mod gcs;
mod http;
mod key;
mod objstore;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use error::{ErrorKind, StorageError};
pub use key::{ObjectKey, MAX_KEY_LEN, MAX_SEGMENT_LEN};

/// Result of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One stored object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
}

/// Outcome of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// This call created the object.
    Created,
    /// The key was already present; the stored object was left unchanged
    /// (and may differ from the bytes given).
    AlreadyExists,
}

/// An immutable-object store rooted at a prefix.
///
/// Object-safe on purpose: the daemon picks a backend at run time from a URL
/// and keeps it as `Arc<dyn Backend>` across reloads, so methods return boxed
/// futures instead of `async fn` (one allocation per call, negligible next to
/// a network round trip).
///
/// Common contract:
/// - Keys are [`ObjectKey`]s, validated when built, so an escaping or
///   malformed key never reaches a backend.
/// - A reader never sees a partial object: an object is visible whole or not
///   at all (S3/Azure/GCS commit uploads atomically; the local backend writes
///   a temporary file, fsyncs, and links it into place).
/// - Errors are [`StorageError`]s; [`StorageError::is_transient`] marks the
///   ones worth retrying. Backends already retry transient failures a bounded
///   number of times with backoff before returning them.
pub trait Backend: fmt::Debug + Send + Sync {
    /// A short description for logs and errors, e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Every object whose key lies under `prefix` as a directory (`a` covers
    /// `a/b` and `a/b/c`, not `ab`); all objects if `prefix` is `None`.
    /// Order is unspecified. Objects whose names are not valid keys (written
    /// by something else) are skipped with a warning.
    fn list<'a>(&'a self, prefix: Option<&'a ObjectKey>) -> BoxFuture<'a, Result<Vec<ObjectMeta>>>;

    /// The whole object. `NotFound` if absent.
    fn read<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Bytes>>;

    /// Bytes `range.start..range.end` of the object; if `range.end` is past
    /// the end, the bytes up to the end. An empty range returns empty bytes
    /// without I/O. `NotFound` if absent; an error of kind `Other` if
    /// `range.start` is at or past the end of a non-empty object.
    fn read_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes>>;

    /// Creates the object with `data` unless the key exists. Never
    /// overwrites: if the key exists (even with other content) the result is
    /// `Ok(Written::AlreadyExists)` and the stored object is unchanged. Of
    /// concurrent writers of one key exactly one gets `Created`. A write that
    /// was retried after a lost response may report `AlreadyExists` for the
    /// object it created itself, so callers treat `AlreadyExists` as "the key
    /// is present". On error nothing is visible under the key.
    fn write_if_absent<'a>(
        &'a self,
        key: &'a ObjectKey,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Written>>;

    /// Removes the object. Idempotent: deleting a missing key is `Ok`.
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<()>>;

    /// The object's metadata, or `None` if absent.
    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>>;
}

/// Environment variables a backend reads its endpoint and credentials from.
///
/// [`Env::process`] snapshots the process environment (what the daemon
/// uses); tests pass their own map so parallel tests need not mutate the
/// process environment. `Debug` shows names only, never values.
#[derive(Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// A snapshot of the process environment.
    pub fn process() -> Self {
        Self(std::env::vars().collect())
    }

    /// An explicit set of variables (nothing is read from the process).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Variables whose names start with `prefix`.
    pub(crate) fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Values of variables that hold secrets, to scrub them from error texts.
    pub(crate) fn secret_values(&self) -> Vec<String> {
        const SECRET_NAMES: &[&str] = &[
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_STORAGE_SAS_TOKEN",
            "AZURE_STORAGE_TOKEN",
            "AZURE_STORAGE_CLIENT_SECRET",
            "AZURE_CLIENT_SECRET",
            "GOOGLE_OAUTH_ACCESS_TOKEN",
        ];
        SECRET_NAMES
            .iter()
            .filter_map(|n| self.get(n))
            .map(str::to_string)
            .collect()
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// How a backend is opened: where its environment comes from and its
/// timeouts, retry bound and upload sizes. Nothing here is a credential.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub env: Env,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any read on an established connection.
    pub read_timeout: Duration,
    /// Retries of a transient failure per call (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// First backoff delay; doubled per retry with full jitter, capped at 10 s.
    pub retry_base_delay: Duration,
    /// GCS: objects larger than this use a resumable upload, smaller ones a
    /// single multipart request.
    pub gcs_resumable_threshold: usize,
    /// GCS: bytes per resumable-upload request (rounded down to a multiple of 256 KiB).
    pub gcs_chunk_size: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            env: Env::process(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_retries: 4,
            retry_base_delay: Duration::from_millis(200),
            gcs_resumable_threshold: 128 << 20,
            gcs_chunk_size: 16 << 20,
        }
    }
}

/// Opens the backend a `backup.storage_path` URL names.
///
/// | URL | backend | environment |
/// | --- | --- | --- |
/// | `/abs/path`, `file:///abs/path` | local disk | — |
/// | `s3://bucket/prefix` | S3 or compatible | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, … (else the standard chain: web identity, ECS, instance metadata) |
/// | `az://container/prefix` | Azure Blob | `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` (or SAS, token, client secret, managed identity), `AZURE_STORAGE_ENDPOINT` (e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite), or `AZURE_STORAGE_USE_EMULATOR=true` (object_store then reads `AZURITE_BLOB_STORAGE_URL` from the process environment) |
/// | `gs://bucket/prefix` | GCS (JSON API) | `GOOGLE_APPLICATION_CREDENTIALS` (service-account key file), `GOOGLE_OAUTH_ACCESS_TOKEN`, `CHROMAPROD_GCS_TOKEN_FILE`, `STORAGE_EMULATOR_HOST` (else the metadata server) |
///
/// Plain `http://` endpoints are accepted only on loopback addresses or with
/// `AWS_ALLOW_HTTP=true` (any backend). Opening creates a local repository's
/// directory and reads GCS key files; cloud endpoints are first contacted by
/// the first call, which reports unreachable ones.
///
/// Size limits: S3 and Azure objects are written in one create-only request
/// (S3 caps those at 5 GiB; object_store cannot make a multipart upload
/// create-only), GCS objects above `gcs_resumable_threshold` go through a
/// resumable session. Backup chunks are far smaller than either cap.
pub fn open(url: &str, options: &StorageOptions) -> Result<Arc<dyn Backend>> {
    match Location::parse(url)? {
        Location::Local(path) => objstore::open_local(&path, options),
        Location::S3 { bucket, prefix } => objstore::open_s3(&bucket, prefix, options),
        Location::Azure { container, prefix } => objstore::open_azure(&container, prefix, options),
        Location::Gcs { bucket, prefix } => gcs::open(&bucket, prefix, options),
    }
}

/// Where a `backup.storage_path` points, parsed without any I/O (for
/// `chromaprod validate` and the config check as well as [`open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 {
        bucket: String,
        prefix: Option<ObjectKey>,
    },
    Azure {
        container: String,
        prefix: Option<ObjectKey>,
    },
    Gcs {
        bucket: String,
        prefix: Option<ObjectKey>,
    },
}

impl Location {
    /// Parses a path or `file://`, `s3://`, `az://` (or `azure://`), `gs://` URL.
    /// Prefixes follow the key rules; URLs carrying credentials, a query or
    /// a fragment are refused.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.starts_with('/') {
            return Ok(Self::Local(std::path::PathBuf::from(url)));
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            StorageError::config(format!(
                "'{url}' is neither an absolute path nor a URL ({e}); use /path, file:///path, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix"
            ))
        })?;
        if parsed.scheme() == "file" {
            let path = parsed.to_file_path().map_err(|()| {
                StorageError::config(format!("'{url}' is not an absolute local path"))
            })?;
            return Ok(Self::Local(path));
        }
        let (bucket, prefix) = bucket_and_prefix(url, &parsed)?;
        match parsed.scheme() {
            "s3" => Ok(Self::S3 { bucket, prefix }),
            "az" | "azure" => Ok(Self::Azure {
                container: bucket,
                prefix,
            }),
            "gs" => Ok(Self::Gcs { bucket, prefix }),
            other => Err(StorageError::config(format!(
                "unsupported storage scheme '{other}:'; use a path, file://, s3://, az:// or gs://"
            ))),
        }
    }
}

/// Splits `scheme://bucket/a/b` into `bucket` and the prefix key `a/b`.
fn bucket_and_prefix(raw: &str, url: &url::Url) -> Result<(String, Option<ObjectKey>)> {
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(StorageError::config(format!(
            "storage URL {}://{}/… must not carry a query, fragment or credentials; credentials come from the environment",
            url.scheme(),
            url.host_str().unwrap_or("")
        )));
    }
    let bucket = url.host_str().unwrap_or("").to_string();
    if bucket.is_empty() {
        return Err(StorageError::config(format!(
            "storage URL '{url}' names no bucket/container: use {}://NAME/prefix",
            url.scheme()
        )));
    }
    // The prefix is checked as written: URL parsing would silently resolve
    // `..` and `.` segments.
    let path = raw
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(_, p)| p)
        .trim_matches('/');
    let prefix = if path.is_empty() {
        None
    } else {
        Some(
            ObjectKey::new(path)
                .map_err(|e| StorageError::config(format!("prefix of '{url}': {e}")))?,
        )
    };
    Ok((bucket, prefix))
}

/// Whether a plain-http endpoint is acceptable: loopback only, unless the
/// operator opted in with `AWS_ALLOW_HTTP=true`.
pub(crate) fn check_endpoint(endpoint: &str, env: &Env) -> Result<()> {
    let u = url::Url::parse(endpoint)
        .map_err(|e| StorageError::config(format!("endpoint '{endpoint}' is not a URL: {e}")))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback
                || env
                    .get("AWS_ALLOW_HTTP")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                Ok(())
            } else {
                Err(StorageError::config(format!(
                    "endpoint '{endpoint}' uses plain http to a non-loopback host; use https, or set AWS_ALLOW_HTTP=true if you accept unencrypted traffic"
                )))
            }
        }
        other => Err(StorageError::config(format!(
            "endpoint '{endpoint}': unsupported scheme '{other}'"
        ))),
    }
}

/// Full-jitter exponential backoff delay for retry `attempt` (0-based).
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    use rand::Rng;
    let cap = Duration::from_secs(10);
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(cap);
    let millis = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_or_rejected_with_a_hint() {
        let o = StorageOptions {
            env: Env::default(),
            ..StorageOptions::default()
        };
        for bad in [
            "relative/path",
            "ftp://x/y",
            "s3://",
            "s3://b/../x",
            "s3://user:pw@b/p",
            "s3://b/p?x=1",
        ] {
            let err = open(bad, &o).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
    }

    #[test]
    fn locations_parse_without_io() {
        let k = |s: &str| Some(ObjectKey::new(s).expect("valid"));
        assert_eq!(
            Location::parse("/var/backups").expect("path"),
            Location::Local("/var/backups".into())
        );
        assert_eq!(
            Location::parse("file:///var/b").expect("file"),
            Location::Local("/var/b".into())
        );
        assert_eq!(
            Location::parse("s3://bkt/a/b/").expect("s3"),
            Location::S3 {
                bucket: "bkt".into(),
                prefix: k("a/b")
            }
        );
        assert_eq!(
            Location::parse("az://ctr").expect("az"),
            Location::Azure {
                container: "ctr".into(),
                prefix: None
            }
        );
        assert_eq!(
            Location::parse("gs://bkt/p").expect("gs"),
            Location::Gcs {
                bucket: "bkt".into(),
                prefix: k("p")
            }
        );
        assert!(Location::parse("gs://bkt/./p").is_err());
    }

    #[test]
    fn http_only_to_loopback_unless_allowed() {
        let none = Env::default();
        assert!(check_endpoint("http://127.0.0.1:9000", &none).is_ok());
        assert!(check_endpoint("http://[::1]:9000", &none).is_ok());
        assert!(check_endpoint("https://s3.example.com", &none).is_ok());
        assert!(check_endpoint("http://s3.example.com", &none).is_err());
        let allow = Env::from_pairs([("AWS_ALLOW_HTTP", "true")]);
        assert!(check_endpoint("http://s3.example.com", &allow).is_ok());
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            assert!(backoff(Duration::from_millis(200), attempt) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn env_debug_shows_names_only() {
        let env = Env::from_pairs([("AWS_SECRET_ACCESS_KEY", "hunter2-secret")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("hunter2"));
    }
}
