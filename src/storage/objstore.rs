//! Local disk, S3 and Azure through `object_store`, adapted to [`Backend`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use super::http::{client, ReqwestConnector};
use super::{
    check_endpoint, Backend, ObjectKey, ObjectMeta, Result, StorageError, StorageOptions, Written,
};

/// An `object_store` store plus our prefix, naming and error mapping.
pub(crate) struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectKey>,
    description: String,
    /// Configured secret values, scrubbed from every error text.
    secrets: Vec<String>,
    /// Local disk only, when running as root in another user's directory:
    /// what is created is handed to that user (see [`crate::owner`]).
    adopt: Option<(std::path::PathBuf, crate::owner::Adopt)>,
}

impl fmt::Debug for ObjectStoreBackend {
    // Only the description: the inner store's Debug includes its client config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBackend")
            .field("location", &self.description)
            .finish_non_exhaustive()
    }
}

pub(crate) fn open_local(
    path: &std::path::Path,
    _options: &StorageOptions,
) -> Result<Arc<dyn Backend>> {
    if !path.is_absolute() {
        return Err(StorageError::config(format!(
            "local repository path '{}' must be absolute",
            path.display()
        )));
    }
    // Root (an offline command) in the service user's directory: whatever it
    // creates goes to that user, or the service could not prune it later.
    let adopt = crate::owner::Adopt::for_dir(path);
    fs_err::create_dir_all(path).map_err(|e| {
        StorageError::config(format!("cannot create the local repository directory: {e}"))
    })?;
    if let Some(a) = &adopt {
        a.claim(path).map_err(|e| {
            StorageError::config(format!(
                "cannot give the new repository directory {} to its owner (uid {}): {e}",
                path.display(),
                a.uid()
            ))
        })?;
    }
    let store = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| StorageError::config(format!("local repository '{}': {e}", path.display())))?
        // Durable before `Created` is returned; empty directories are left
        // behind rather than racing concurrent writers into them.
        .with_fsync(true);
    Ok(Arc::new(ObjectStoreBackend {
        store: Arc::new(store),
        prefix: None,
        description: format!("file://{}", path.display()),
        secrets: Vec::new(),
        adopt: adopt.map(|a| (path.to_path_buf(), a)),
    }))
}

fn retry_config(options: &StorageOptions) -> RetryConfig {
    RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: options.retry_base_delay,
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: options.max_retries as usize,
        retry_timeout: Duration::from_secs(120),
    }
}

pub(crate) fn open_s3(
    bucket: &str,
    prefix: Option<ObjectKey>,
    options: &StorageOptions,
) -> Result<Arc<dyn Backend>> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut builder = AmazonS3Builder::new();
    // Same mapping as AmazonS3Builder::from_env, but from our Env snapshot.
    for (name, value) in options.env.with_prefix("AWS_") {
        if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    let endpoint = options
        .env
        .get("AWS_ENDPOINT_URL_S3")
        .or(options.env.get("AWS_ENDPOINT_URL"));
    if let Some(ep) = endpoint {
        check_endpoint(ep, &options.env)?;
        builder = builder.with_endpoint(ep).with_allow_http(true);
    }
    if options.env.get("AWS_REGION").is_none() && options.env.get("AWS_DEFAULT_REGION").is_some() {
        builder = builder.with_region(options.env.get("AWS_DEFAULT_REGION").unwrap_or("us-east-1"));
    }
    let store = builder
        .with_bucket_name(bucket)
        .with_http_connector(ReqwestConnector(client(options)?))
        .with_retry(retry_config(options))
        .build()
        .map_err(|e| {
            StorageError::config(format!("S3 bucket '{bucket}': {}", scrub_os(&e, options)))
        })?;
    Ok(Arc::new(ObjectStoreBackend {
        store: Arc::new(store),
        description: describe("s3", bucket, prefix.as_ref()),
        prefix,
        secrets: options.env.secret_values(),
        adopt: None,
    }))
}

pub(crate) fn open_azure(
    container: &str,
    prefix: Option<ObjectKey>,
    options: &StorageOptions,
) -> Result<Arc<dyn Backend>> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let mut builder = MicrosoftAzureBuilder::new();
    for (name, value) in options.env.with_prefix("AZURE_") {
        if let Ok(key) = name.to_ascii_lowercase().parse::<AzureConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    if let Some(ep) = options.env.get("AZURE_STORAGE_ENDPOINT") {
        check_endpoint(ep, &options.env)?;
        builder = builder.with_allow_http(true);
    }
    let store = builder
        .with_container_name(container)
        .with_http_connector(ReqwestConnector(client(options)?))
        .with_retry(retry_config(options))
        .build()
        .map_err(|e| {
            StorageError::config(format!(
                "Azure container '{container}': {}; set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or another Azure credential) in the environment",
                scrub_os(&e, options)
            ))
        })?;
    Ok(Arc::new(ObjectStoreBackend {
        store: Arc::new(store),
        description: describe("az", container, prefix.as_ref()),
        prefix,
        secrets: options.env.secret_values(),
        adopt: None,
    }))
}

fn scrub_os(e: &object_store::Error, options: &StorageOptions) -> String {
    super::error::scrub(&e.to_string(), &options.env.secret_values())
}

pub(crate) fn describe(scheme: &str, bucket: &str, prefix: Option<&ObjectKey>) -> String {
    match prefix {
        Some(p) => format!("{scheme}://{bucket}/{p}"),
        None => format!("{scheme}://{bucket}"),
    }
}

impl ObjectStoreBackend {
    fn path(&self, key: &ObjectKey) -> Path {
        match &self.prefix {
            Some(p) => Path::from(format!("{p}/{key}")),
            None => Path::from(key.as_str()),
        }
    }

    /// Maps an object_store error (for `key`, if the call had one); the
    /// text is scrubbed of configured secrets and condensed to one line.
    fn error(&self, key: Option<&ObjectKey>, e: object_store::Error) -> StorageError {
        use object_store::Error as E;
        let backend = self.description.clone();
        let detail = super::error::condense(&super::error::scrub(&e.to_string(), &self.secrets));
        let status = super::error::http_status(&detail);
        let bucket_missing = [
            "NoSuchBucket",
            "ContainerNotFound",
            "bucket does not exist",
            "container does not exist",
        ]
        .iter()
        .any(|m| detail.contains(m));
        match (&e, key) {
            _ if bucket_missing => StorageError::Other {
                backend,
                detail: format!("the bucket/container does not exist; create it or fix backup.storage_path ({detail})"),
            },
            (E::NotFound { .. }, Some(k)) => StorageError::NotFound { backend, key: k.to_string() },
            (E::AlreadyExists { .. } | E::Precondition { .. }, Some(k)) => {
                StorageError::AlreadyExists { backend, key: k.to_string() }
            }
            (E::PermissionDenied { .. } | E::Unauthenticated { .. }, _) => StorageError::PermissionDenied { backend, detail },
            _ if matches!(status, Some(401 | 403)) => StorageError::PermissionDenied { backend, detail },
            _ if matches!(status, Some(408 | 429 | 500..=599)) => StorageError::Transient { backend, detail },
            (E::Generic { source, .. }, _) if is_transient(source.as_ref()) => StorageError::Transient { backend, detail },
            _ => StorageError::Other { backend, detail },
        }
    }
}

/// object_store reports exhausted retries, timeouts and 5xx as `Generic`
/// with a retry error or an I/O error inside; look through the chain.
fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(http) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return matches!(
                http.kind(),
                K::Connect | K::Request | K::Timeout | K::Interrupted
            );
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::TimedOut
                    | K::ConnectionReset
                    | K::ConnectionRefused
                    | K::ConnectionAborted
                    | K::Interrupted
            );
        }
        cur = err.source();
    }
    false
}

impl Backend for ObjectStoreBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn list<'a>(&'a self, prefix: Option<&'a ObjectKey>) -> BoxFuture<'a, Result<Vec<ObjectMeta>>> {
        Box::pin(async move {
            let full = match (&self.prefix, prefix) {
                (Some(root), Some(p)) => Some(Path::from(format!("{root}/{p}"))),
                (Some(root), None) => Some(Path::from(root.as_str())),
                (None, Some(p)) => Some(Path::from(p.as_str())),
                (None, None) => None,
            };
            let strip = self.prefix.as_ref().map(|p| format!("{p}/"));
            let metas: Vec<object_store::ObjectMeta> = self
                .store
                .list(full.as_ref())
                .try_collect()
                .await
                .map_err(|e| self.error(None, e))?;
            let mut out = Vec::with_capacity(metas.len());
            for m in metas {
                let name = m.location.as_ref();
                let rel = match &strip {
                    Some(s) => match name.strip_prefix(s.as_str()) {
                        Some(r) => r,
                        None => continue,
                    },
                    None => name,
                };
                match ObjectKey::new(rel) {
                    Ok(key) => out.push(ObjectMeta { key, size: m.size }),
                    Err(e) => {
                        tracing::warn!(backend = %self.description, error = %e, "skipping an object whose name is not a repository key")
                    }
                }
            }
            Ok(out)
        })
    }

    fn read<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let got = self
                .store
                .get(&self.path(key))
                .await
                .map_err(|e| self.error(Some(key), e))?;
            got.bytes().await.map_err(|e| self.error(Some(key), e))
        })
    }

    fn read_range<'a>(
        &'a self,
        key: &'a ObjectKey,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            if range.start >= range.end {
                return Ok(Bytes::new());
            }
            self.store
                .get_range(&self.path(key), range)
                .await
                .map_err(|e| self.error(Some(key), e))
        })
    }

    fn write_if_absent<'a>(
        &'a self,
        key: &'a ObjectKey,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            // One PUT with If-None-Match / create-only semantics: S3 and Azure
            // take single uploads up to 5 GB / ~4.75 TB, and a multipart
            // upload cannot be made create-only through object_store.
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&self.path(key), PutPayload::from(data), opts)
                .await
            {
                Ok(_) => {
                    if let Some((root, adopt)) = &self.adopt {
                        // The file and the directories object_store made for it.
                        adopt.claim(&root.join(key.as_str())).map_err(|e| {
                            StorageError::Other {
                                backend: self.description.clone(),
                                detail: format!(
                                    "{key} was written but cannot be given to the repository's owner (uid {}): {e}; run `chown -R {}: {}`",
                                    adopt.uid(),
                                    adopt.uid(),
                                    adopt.base().display()
                                ),
                            }
                        })?;
                    }
                    Ok(Written::Created)
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(Written::AlreadyExists),
                Err(e) => Err(self.error(Some(key), e)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match self.store.delete(&self.path(key)).await {
                // Azure (and the local store) report a missing key; S3 does not.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error(Some(key), e)),
            }
        })
    }

    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(async move {
            match self.store.head(&self.path(key)).await {
                Ok(m) => Ok(Some(ObjectMeta {
                    key: key.clone(),
                    size: m.size,
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error(Some(key), e)),
            }
        })
    }
}
