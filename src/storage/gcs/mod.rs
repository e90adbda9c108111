//! Google Cloud Storage over its JSON API, on our reqwest client.
//!
//! object_store's GCS client speaks the XML API, which no GCS emulator
//! implements, and the official SDK needs gRPC for listing and deleting; this
//! client needs neither and is tested against fake-gcs-server. Create-only
//! writes use `ifGenerationMatch=0`: small objects go in one multipart
//! request, large ones through a resumable session (checked with a metadata
//! lookup first as well, because fake-gcs-server honours the precondition on
//! multipart uploads only).
//!
//! Tokens come from [`auth`]; the requests themselves are in [`client`].

mod auth;
mod client;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::StatusCode;

use super::error::percent_encode_all;
use super::http::client;
use super::objstore::describe;
use super::{
    check_endpoint, Backend, ObjectKey, ObjectMeta, Result, StorageError, StorageOptions, Written,
};
use auth::{Auth, TokenSource};
use client::{size_of, ListPage};

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// Resumable chunks must be multiples of this (GCS rule).
const CHUNK_QUANTUM: usize = 256 * 1024;

pub(crate) fn open(
    bucket: &str,
    prefix: Option<ObjectKey>,
    options: &StorageOptions,
) -> Result<Arc<dyn Backend>> {
    let env = &options.env;
    let emulator = env.get("STORAGE_EMULATOR_HOST").map(|h| {
        if h.contains("://") {
            h.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", h.trim_end_matches('/'))
        }
    });
    let endpoint = emulator
        .clone()
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    check_endpoint(&endpoint, env)?;
    let tokens = TokenSource::from_env(env, emulator.is_some())?;
    let mut secrets = env.secret_values();
    if let TokenSource::Static(t) = &tokens {
        secrets.push(t.expose().clone());
    }
    Ok(Arc::new(GcsBackend {
        http: client(options)?,
        endpoint,
        bucket: bucket.to_string(),
        description: describe("gs", bucket, prefix.as_ref()),
        prefix,
        auth: Auth {
            source: tokens,
            cache: tokio::sync::Mutex::new(None),
        },
        secrets,
        max_retries: options.max_retries,
        retry_base_delay: options.retry_base_delay,
        resumable_threshold: options.gcs_resumable_threshold,
        chunk_size: (options.gcs_chunk_size / CHUNK_QUANTUM).max(1) * CHUNK_QUANTUM,
    }))
}

struct GcsBackend {
    http: reqwest::Client,
    /// Scheme, host and port, no trailing slash.
    endpoint: String,
    bucket: String,
    prefix: Option<ObjectKey>,
    description: String,
    auth: Auth,
    secrets: Vec<String>,
    max_retries: u32,
    retry_base_delay: Duration,
    resumable_threshold: usize,
    chunk_size: usize,
}

impl fmt::Debug for GcsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsBackend")
            .field("location", &self.description)
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth.source)
            .finish_non_exhaustive()
    }
}

impl Backend for GcsBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn list<'a>(&'a self, prefix: Option<&'a ObjectKey>) -> BoxFuture<'a, Result<Vec<ObjectMeta>>> {
        Box::pin(async move {
            let wire_prefix = match (&self.prefix, prefix) {
                (Some(root), Some(p)) => format!("{root}/{p}/"),
                (Some(root), None) => format!("{root}/"),
                (None, Some(p)) => format!("{p}/"),
                (None, None) => String::new(),
            };
            let strip = self.prefix.as_ref().map(|p| format!("{p}/"));
            let url = format!(
                "{}/storage/v1/b/{}/o",
                self.endpoint,
                percent_encode_all(&self.bucket)
            );
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let resp = self
                    .send(|| {
                        let mut q = vec![("maxResults", "1000".to_string())];
                        if !wire_prefix.is_empty() {
                            q.push(("prefix", wire_prefix.clone()));
                        }
                        if let Some(t) = &token {
                            q.push(("pageToken", t.clone()));
                        }
                        self.http.get(&url).query(&q)
                    })
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.status_error(None, resp).await);
                }
                let page: ListPage = resp.json().await.map_err(|e| StorageError::Other {
                    backend: self.description.clone(),
                    detail: format!("unreadable listing: {}", e.without_url()),
                })?;
                for item in page.items {
                    let rel = match &strip {
                        Some(s) => match item.name.strip_prefix(s.as_str()) {
                            Some(r) => r.to_string(),
                            None => continue,
                        },
                        None => item.name.clone(),
                    };
                    match ObjectKey::new(rel) {
                        Ok(key) => out.push(ObjectMeta {
                            key,
                            size: size_of(item.size.as_ref()),
                        }),
                        Err(e) => {
                            tracing::warn!(backend = %self.description, error = %e, "skipping an object whose name is not a repository key")
                        }
                    }
                }
                match page.next_page_token {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => return Ok(out),
                }
            }
        })
    }

    fn read<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(self.download(key, None))
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
            self.download(key, Some(range)).await
        })
    }

    fn write_if_absent<'a>(
        &'a self,
        key: &'a ObjectKey,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Written>> {
        Box::pin(async move {
            if data.len() > self.resumable_threshold {
                self.resumable_create(key, data).await
            } else {
                self.multipart_create(key, data).await
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let url = self.object_url(key);
            let resp = self.send(|| self.http.delete(&url)).await?;
            match resp.status() {
                s if s.is_success() => Ok(()),
                StatusCode::NOT_FOUND => Ok(()),
                _ => Err(self.status_error(Some(key), resp).await),
            }
        })
    }

    fn head<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Option<ObjectMeta>>> {
        Box::pin(self.head_inner(key))
    }
}
