//! Requests to the GCS JSON API: retries, errors, create-only uploads
//! (multipart or resumable), downloads.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::storage::error::{percent_encode_all, scrub};
use crate::storage::http::is_interrupted;
use crate::storage::{backoff, ObjectKey, ObjectMeta, Result, StorageError, Written};

use super::auth::{excerpt, TokenSource};
use super::GcsBackend;

/// A request body made of a few shared buffers, sent without copying them.
struct Parts {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl Parts {
    fn new(parts: Vec<Bytes>) -> Self {
        let remaining = parts.iter().map(|b| b.len() as u64).sum();
        Self {
            parts: parts.into(),
            remaining,
        }
    }
}

impl http_body::Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = self.parts.pop_front();
        if let Some(b) = &next {
            self.remaining -= b.len() as u64;
        }
        Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[derive(Deserialize)]
pub(super) struct ListPage {
    #[serde(default)]
    pub(super) items: Vec<ListItem>,
    #[serde(rename = "nextPageToken")]
    pub(super) next_page_token: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ListItem {
    pub(super) name: String,
    /// The JSON API sends sizes as decimal strings.
    pub(super) size: Option<serde_json::Value>,
}

pub(super) fn size_of(v: Option<&serde_json::Value>) -> u64 {
    match v {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

impl GcsBackend {
    fn name(&self, key: &ObjectKey) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{key}"),
            None => key.to_string(),
        }
    }

    pub(super) fn object_url(&self, key: &ObjectKey) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            percent_encode_all(&self.bucket),
            percent_encode_all(&self.name(key))
        )
    }

    fn upload_url(&self) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o",
            self.endpoint,
            percent_encode_all(&self.bucket)
        )
    }

    fn transient(&self, detail: String) -> StorageError {
        StorageError::Transient {
            backend: self.description.clone(),
            detail: scrub(&detail, &self.secrets),
        }
    }

    /// Sends the request `build` makes, retrying transport failures and
    /// 408/429/5xx with backoff (bounded by `max_retries`) and a 401 once
    /// with a fresh token. Any other status is returned for the caller to
    /// interpret.
    pub(super) async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut attempt = 0u32;
        let mut refreshed = false;
        let mut retry_after: Option<Duration> = None;
        loop {
            let mut req = build();
            if let Some(tok) = self.auth.token(&self.http, &self.description).await? {
                req = req.bearer_auth(tok.expose());
            }
            let outcome = req.send().await;
            let retry_detail = match outcome {
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && !refreshed
                        && !matches!(
                            self.auth.source,
                            TokenSource::Anonymous | TokenSource::Static(_)
                        ) =>
                {
                    refreshed = true;
                    self.auth.invalidate().await;
                    continue;
                }
                Ok(resp) if is_transient_status(resp.status()) => {
                    // Honour Retry-After (seconds), capped so a call stays bounded.
                    retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|secs| Duration::from_secs(secs.min(30)));
                    format!("HTTP {}", resp.status())
                }
                Ok(resp) => return Ok(resp),
                Err(e)
                    if e.is_timeout() || e.is_connect() || e.is_request() || is_interrupted(&e) =>
                {
                    format!("{}", e.without_url())
                }
                Err(e) => {
                    return Err(StorageError::Other {
                        backend: self.description.clone(),
                        detail: scrub(&e.without_url().to_string(), &self.secrets),
                    })
                }
            };
            if attempt >= self.max_retries {
                return Err(
                    self.transient(format!("{retry_detail} after {} attempts", attempt + 1))
                );
            }
            tracing::debug!(backend = %self.description, attempt, detail = %retry_detail, "retrying a GCS request");
            let delay = backoff(self.retry_base_delay, attempt);
            tokio::time::sleep(retry_after.take().map_or(delay, |ra| ra.max(delay))).await;
            attempt += 1;
        }
    }

    /// Maps a non-success status to an error for `key`.
    pub(super) async fn status_error(
        &self,
        key: Option<&ObjectKey>,
        resp: reqwest::Response,
    ) -> StorageError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let backend = self.description.clone();
        let key_s = key.map_or_else(String::new, ObjectKey::to_string);
        let detail = scrub(&format!("HTTP {status}: {}", excerpt(&body)), &self.secrets);
        let bucket_missing = body.contains("bucket does not exist");
        match status {
            StatusCode::NOT_FOUND if key.is_some() && !bucket_missing => StorageError::NotFound {
                backend,
                key: key_s,
            },
            StatusCode::NOT_FOUND => self.bucket_missing(&detail),
            StatusCode::PRECONDITION_FAILED => StorageError::AlreadyExists {
                backend,
                key: key_s,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                StorageError::PermissionDenied { backend, detail }
            }
            s if is_transient_status(s) => StorageError::Transient { backend, detail },
            _ => StorageError::Other { backend, detail },
        }
    }

    fn bucket_missing(&self, detail: &str) -> StorageError {
        StorageError::Other {
            backend: self.description.clone(),
            detail: format!(
                "bucket '{}' does not exist; create it or fix backup.storage_path ({detail})",
                self.bucket
            ),
        }
    }

    pub(super) async fn multipart_create(&self, key: &ObjectKey, data: Bytes) -> Result<Written> {
        let boundary = format!("chromaprod-{:032x}", rand::random::<u128>());
        let meta = serde_json::json!({"name": self.name(key)}).to_string();
        let head = Bytes::from(format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let url = self.upload_url();
        let resp = self
            .send(|| {
                self.http
                    .post(&url)
                    .query(&[("uploadType", "multipart"), ("ifGenerationMatch", "0")])
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/related; boundary={boundary}"),
                    )
                    .body(reqwest::Body::wrap(Parts::new(vec![
                        head.clone(),
                        data.clone(),
                        tail.clone(),
                    ])))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Written::Created),
            StatusCode::PRECONDITION_FAILED => Ok(Written::AlreadyExists),
            // An upload creates the object, so 404 can only mean the bucket.
            StatusCode::NOT_FOUND => Err(self.bucket_missing("HTTP 404 on upload")),
            _ => Err(self.status_error(Some(key), resp).await),
        }
    }

    pub(super) async fn resumable_create(&self, key: &ObjectKey, data: Bytes) -> Result<Written> {
        if self.head_inner(key).await?.is_some() {
            return Ok(Written::AlreadyExists);
        }
        let total = data.len();
        let url = self.upload_url();
        let meta = serde_json::json!({"name": self.name(key)}).to_string();
        let resp = self
            .send(|| {
                self.http
                    .post(&url)
                    .query(&[("uploadType", "resumable"), ("ifGenerationMatch", "0")])
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/json; charset=UTF-8",
                    )
                    .header("X-Upload-Content-Type", "application/octet-stream")
                    .header("X-Upload-Content-Length", total.to_string())
                    .body(meta.clone())
            })
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::PRECONDITION_FAILED => return Ok(Written::AlreadyExists),
            StatusCode::NOT_FOUND => return Err(self.bucket_missing("HTTP 404 on upload")),
            _ => return Err(self.status_error(Some(key), resp).await),
        }
        let session = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StorageError::Other {
                backend: self.description.clone(),
                detail: "resumable upload started without a session Location".into(),
            })?;

        // The session URI authenticates the requests that follow by itself.
        let mut offset = 0usize;
        let mut failures = 0u32;
        let mut stalls = 0u32;
        loop {
            let end = (offset + self.chunk_size).min(total);
            let request = self.http.put(&session);
            let request = if offset < total {
                request
                    .header(
                        reqwest::header::CONTENT_RANGE,
                        format!("bytes {offset}-{}/{total}", end - 1),
                    )
                    .body(data.slice(offset..end))
            } else {
                // Everything is stored but not finalised: an empty closing request.
                request.header(reqwest::header::CONTENT_RANGE, format!("bytes */{total}"))
            };
            let resp = match request.send().await {
                Ok(r) if !is_transient_status(r.status()) => r,
                other => {
                    // Lost or refused: ask the session what it has, then resume.
                    failures += 1;
                    if failures > self.max_retries {
                        let detail = match other {
                            Ok(r) => format!("resumable upload: HTTP {}", r.status()),
                            Err(e) => format!("resumable upload: {}", e.without_url()),
                        };
                        return Err(self.transient(detail));
                    }
                    tokio::time::sleep(backoff(self.retry_base_delay, failures - 1)).await;
                    let status = self
                        .http
                        .put(&session)
                        .header(reqwest::header::CONTENT_RANGE, format!("bytes */{total}"))
                        .send()
                        .await;
                    match status {
                        Ok(r) if !is_transient_status(r.status()) => r,
                        _ => continue,
                    }
                }
            };
            match resp.status().as_u16() {
                200 | 201 => return Ok(Written::Created),
                412 => return Ok(Written::AlreadyExists),
                308 => {
                    // "Range: bytes=0-N" is what the server has; absent means nothing.
                    let stored = resp
                        .headers()
                        .get(reqwest::header::RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit('-').next())
                        .and_then(|n| n.parse::<usize>().ok())
                        .map_or(0, |n| (n + 1).min(total));
                    if stored > offset {
                        stalls = 0;
                    } else {
                        stalls += 1;
                        if stalls > self.max_retries {
                            return Err(self.transient(format!(
                                "resumable upload of '{key}' makes no progress at byte {stored}"
                            )));
                        }
                    }
                    offset = stored;
                }
                _ => return Err(self.status_error(Some(key), resp).await),
            }
        }
    }

    pub(super) async fn head_inner(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        let url = self.object_url(key);
        let resp = self.send(|| self.http.get(&url)).await?;
        match resp.status() {
            s if s.is_success() => {
                let item: ListItem = resp.json().await.map_err(|e| StorageError::Other {
                    backend: self.description.clone(),
                    detail: format!("unreadable object metadata: {}", e.without_url()),
                })?;
                Ok(Some(ObjectMeta {
                    key: key.clone(),
                    size: size_of(item.size.as_ref()),
                }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(Some(key), resp).await),
        }
    }

    pub(super) async fn download(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<Bytes> {
        self.download_once(key, range, false).await
    }

    /// Collects a response body into one buffer sized from Content-Length,
    /// so a read holds the object once plus one network chunk.
    async fn read_body(&self, mut resp: reqwest::Response) -> reqwest::Result<Bytes> {
        let hint = resp.content_length().unwrap_or(0).min(1 << 30);
        let mut buf = bytes::BytesMut::with_capacity(usize::try_from(hint).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    async fn download_once(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
        retried: bool,
    ) -> Result<Bytes> {
        let url = self.object_url(key);
        let resp = self
            .send(|| {
                let req = self.http.get(&url).query(&[("alt", "media")]);
                match &range {
                    Some(r) => req.header(
                        reqwest::header::RANGE,
                        format!("bytes={}-{}", r.start, r.end - 1),
                    ),
                    None => req,
                }
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(StorageError::Other {
                backend: self.description.clone(),
                detail: format!("range of '{key}' starts at or past the end of the object"),
            });
        }
        if !status.is_success() {
            return Err(self.status_error(Some(key), resp).await);
        }
        let body = match self.read_body(resp).await {
            Ok(b) => b,
            // The body broke off mid-way: a read is safe to repeat, once.
            Err(_) if !retried => return Box::pin(self.download_once(key, range, true)).await,
            Err(e) => return Err(self.transient(format!("reading '{key}': {}", e.without_url()))),
        };
        // A server that ignores Range sends the whole object (200): cut it here.
        match range {
            Some(r) if status == StatusCode::OK => {
                let len = body.len() as u64;
                if r.start >= len && len > 0 {
                    return Err(StorageError::Other {
                        backend: self.description.clone(),
                        detail: format!("range of '{key}' starts at or past the end of the object"),
                    });
                }
                let start = usize::try_from(r.start.min(len)).unwrap_or(usize::MAX);
                let end = usize::try_from(r.end.min(len)).unwrap_or(usize::MAX);
                Ok(body.slice(start..end))
            }
            _ => Ok(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_body_reports_exact_size() {
        use http_body::Body as _;
        let p = Parts::new(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]);
        assert_eq!(p.size_hint().exact(), Some(5));
    }
}
