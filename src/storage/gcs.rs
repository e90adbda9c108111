//! Google Cloud Storage over its JSON API, on our reqwest client.
//!
//! object_store's GCS client speaks the XML API, which no GCS emulator
//! implements, and the official SDK needs gRPC for listing and deleting; this
//! client needs neither and is tested against fake-gcs-server. Create-only
//! writes use `ifGenerationMatch=0`: small objects go in one multipart
//! request, large ones through a resumable session (checked with a metadata
//! lookup first as well, because fake-gcs-server honours the precondition on
//! multipart uploads only).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;

use super::error::{percent_encode_all, scrub};
use super::http::{client, is_interrupted};
use super::objstore::describe;
use super::{
    backoff, check_endpoint, Backend, ObjectKey, ObjectMeta, Result, StorageError, StorageOptions,
    Written,
};
use crate::secret::Secret;

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
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

// ---------------------------------------------------------------- credentials

/// Where bearer tokens come from, in the order [`TokenSource::from_env`] tries.
enum TokenSource {
    /// No `Authorization` header (emulators).
    Anonymous,
    /// `GOOGLE_OAUTH_ACCESS_TOKEN`: a token minted elsewhere.
    Static(Secret<String>),
    /// `CHROMAPROD_GCS_TOKEN_FILE`: a file another process keeps fresh; re-read every minute.
    File(PathBuf),
    /// A service-account key: a self-signed JWT exchanged at its token URI.
    ServiceAccount(Box<ServiceAccount>),
    /// An `authorized_user` file (`gcloud auth application-default login`).
    AuthorizedUser {
        client_id: String,
        client_secret: Secret<String>,
        refresh_token: Secret<String>,
        token_uri: String,
    },
    /// The GCE/GKE metadata server.
    Metadata { host: String },
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Static(_) => f.write_str("Static([redacted])"),
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::ServiceAccount(sa) => write!(f, "ServiceAccount({})", sa.client_email),
            Self::AuthorizedUser { client_id, .. } => write!(f, "AuthorizedUser({client_id})"),
            Self::Metadata { host } => write!(f, "Metadata({host})"),
        }
    }
}

struct ServiceAccount {
    client_email: String,
    key_id: Option<String>,
    token_uri: String,
    key: ring::signature::RsaKeyPair,
}

/// A credentials file as read; not `Debug`, and its secrets are moved into
/// [`Secret`]s at once.
#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

impl TokenSource {
    fn from_env(env: &super::Env, emulator: bool) -> Result<Self> {
        if let Some(t) = env.get("GOOGLE_OAUTH_ACCESS_TOKEN") {
            return Ok(Self::Static(Secret::new(t.trim().to_string())));
        }
        if let Some(p) = env.get("CHROMAPROD_GCS_TOKEN_FILE") {
            return Ok(Self::File(PathBuf::from(p)));
        }
        if let Some(p) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
            return Self::from_file(&PathBuf::from(p));
        }
        if emulator {
            return Ok(Self::Anonymous);
        }
        if let Some(home) = env.get("HOME") {
            let adc =
                PathBuf::from(home).join(".config/gcloud/application_default_credentials.json");
            if adc.is_file() {
                return Self::from_file(&adc);
            }
        }
        let host = env
            .get("GCE_METADATA_HOST")
            .unwrap_or("metadata.google.internal")
            .to_string();
        Ok(Self::Metadata { host })
    }

    fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = fs_err::read_to_string(path)
            .map_err(|e| StorageError::config(format!("GCS credentials: {e}")))?;
        let cfg: CredentialsFile = serde_json::from_str(&text).map_err(|e| {
            // serde_json's message names the position, not the content.
            StorageError::config(format!(
                "GCS credentials file {} is not valid JSON: {e}",
                path.display()
            ))
        })?;
        let missing = |what: &str| {
            StorageError::config(format!(
                "GCS credentials file {} has no '{what}'",
                path.display()
            ))
        };
        match cfg.kind.as_str() {
            "service_account" => {
                let pem = cfg.private_key.ok_or_else(|| missing("private_key"))?;
                let key = rsa_key_from_pem(&pem).map_err(|e| {
                    StorageError::config(format!("GCS credentials file {}: {e}", path.display()))
                })?;
                Ok(Self::ServiceAccount(Box::new(ServiceAccount {
                    client_email: cfg.client_email.ok_or_else(|| missing("client_email"))?,
                    key_id: cfg.private_key_id,
                    token_uri: cfg.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
                    key,
                })))
            }
            "authorized_user" => Ok(Self::AuthorizedUser {
                client_id: cfg.client_id.ok_or_else(|| missing("client_id"))?,
                client_secret: Secret::new(cfg.client_secret.ok_or_else(|| missing("client_secret"))?),
                refresh_token: Secret::new(cfg.refresh_token.ok_or_else(|| missing("refresh_token"))?),
                token_uri: cfg.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
            }),
            other => Err(StorageError::config(format!(
                "GCS credentials file {}: type '{other}' is not supported; use a service-account key or an authorized_user file",
                path.display()
            ))),
        }
    }
}

/// Parses a PKCS#8 PEM RSA private key (the `private_key` of a service-account file).
fn rsa_key_from_pem(pem: &str) -> std::result::Result<ring::signature::RsaKeyPair, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("private_key is not a PKCS#8 PEM block ('-----BEGIN PRIVATE KEY-----')".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "private_key is not valid base64 PEM".to_string())?;
    ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| format!("private_key is not a usable RSA key: {e}"))
}

/// Signs the RS256 JWT a service account presents at its token URI.
fn service_account_assertion(sa: &ServiceAccount, now: u64) -> std::result::Result<String, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &sa.key_id {
        header["kid"] = serde_json::Value::String(kid.clone());
    }
    let claims = serde_json::json!({
        "iss": sa.client_email,
        "scope": SCOPE,
        "aud": sa.token_uri,
        "iat": now,
        "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut sig = vec![0u8; sa.key.public().modulus_len()];
    sa.key
        .sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut sig,
        )
        .map_err(|_| "signing the service-account assertion failed".to_string())?;
    Ok(format!("{signing_input}.{}", b64.encode(sig)))
}

struct Auth {
    source: TokenSource,
    /// The current token and when to stop using it.
    cache: tokio::sync::Mutex<Option<(Secret<String>, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Auth {
    /// A bearer token, or `None` for anonymous access. Tokens are refreshed
    /// a minute before they expire.
    async fn token(&self, http: &reqwest::Client, backend: &str) -> Result<Option<Secret<String>>> {
        let mut cache = self.cache.lock().await;
        if let Some((tok, until)) = cache.as_ref() {
            if Instant::now() < *until {
                return Ok(Some(tok.clone()));
            }
        }
        let denied = |detail: String| StorageError::PermissionDenied {
            backend: backend.to_string(),
            detail,
        };
        let (token, lifetime) = match &self.source {
            TokenSource::Anonymous => return Ok(None),
            TokenSource::Static(t) => return Ok(Some(t.clone())),
            TokenSource::File(p) => {
                let t = fs_err::read_to_string(p)
                    .map_err(|e| denied(format!("cannot read CHROMAPROD_GCS_TOKEN_FILE: {e}")))?;
                (Secret::new(t.trim().to_string()), Duration::from_secs(60))
            }
            TokenSource::ServiceAccount(sa) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let assertion = service_account_assertion(sa, now).map_err(denied)?;
                let form = [
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ];
                fetch_token(http.post(&sa.token_uri).form(&form), backend).await?
            }
            TokenSource::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose().as_str()),
                    ("refresh_token", refresh_token.expose().as_str()),
                ];
                fetch_token(http.post(token_uri).form(&form), backend).await?
            }
            TokenSource::Metadata { host } => {
                let url = format!(
                    "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                );
                fetch_token(http.get(url).header("Metadata-Flavor", "Google"), backend).await?
            }
        };
        let until = Instant::now()
            + lifetime
                .saturating_sub(Duration::from_secs(60))
                .max(Duration::from_secs(10));
        *cache = Some((token.clone(), until));
        Ok(Some(token))
    }

    async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }
}

async fn fetch_token(
    req: reqwest::RequestBuilder,
    backend: &str,
) -> Result<(Secret<String>, Duration)> {
    let transient = |detail: String| StorageError::Transient {
        backend: backend.to_string(),
        detail,
    };
    let resp = req
        .send()
        .await
        .map_err(|e| transient(format!("token endpoint unreachable: {}", e.without_url())))?;
    let status = resp.status();
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(transient(format!("token endpoint answered {status}")));
    }
    if !status.is_success() {
        // The body of an OAuth error names the error, never the credential.
        let body = resp.text().await.unwrap_or_default();
        return Err(StorageError::PermissionDenied {
            backend: backend.to_string(),
            detail: format!(
                "token endpoint answered {status}: {}; check the GCS credentials",
                excerpt(&body)
            ),
        });
    }
    let t: TokenResponse = resp.json().await.map_err(|e| {
        transient(format!(
            "token endpoint answer unreadable: {}",
            e.without_url()
        ))
    })?;
    Ok((
        Secret::new(t.access_token),
        Duration::from_secs(t.expires_in.unwrap_or(3600)),
    ))
}

fn excerpt(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).take(300).collect();
    s
}

// ---------------------------------------------------------------- requests

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
struct ListPage {
    #[serde(default)]
    items: Vec<ListItem>,
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ListItem {
    name: String,
    /// The JSON API sends sizes as decimal strings.
    size: Option<serde_json::Value>,
}

fn size_of(v: Option<&serde_json::Value>) -> u64 {
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

    fn object_url(&self, key: &ObjectKey) -> String {
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
    async fn send(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
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
    async fn status_error(&self, key: Option<&ObjectKey>, resp: reqwest::Response) -> StorageError {
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

    async fn multipart_create(&self, key: &ObjectKey, data: Bytes) -> Result<Written> {
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

    async fn resumable_create(&self, key: &ObjectKey, data: Bytes) -> Result<Written> {
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

    async fn head_inner(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
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

    async fn download(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<Bytes> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_body_reports_exact_size() {
        use http_body::Body as _;
        let p = Parts::new(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]);
        assert_eq!(p.size_hint().exact(), Some(5));
    }

    #[test]
    fn token_sources_follow_the_documented_order() {
        let env =
            super::super::Env::from_pairs([("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.secret-token")]);
        let src = TokenSource::from_env(&env, true).expect("static token");
        assert!(matches!(src, TokenSource::Static(_)));
        assert!(!format!("{src:?}").contains("ya29"));
        let src = TokenSource::from_env(&super::super::Env::default(), true).expect("anonymous");
        assert!(matches!(src, TokenSource::Anonymous));
    }

    #[test]
    fn bad_credentials_files_are_config_errors_without_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sa.json");
        std::fs::write(&p, r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nNOT-A-KEY-SECRET\n-----END PRIVATE KEY-----\n"}"#).expect("write");
        let err = TokenSource::from_file(&p).expect_err("bad key");
        assert_eq!(err.kind(), super::super::ErrorKind::Config);
        assert!(!format!("{err:?}").contains("NOT-A-KEY-SECRET"));
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn service_account_assertion_is_a_verifiable_rs256_jwt() {
        let src = TokenSource::from_file(&fixture("gcs-test-service-account.json"))
            .expect("fixture parses");
        let TokenSource::ServiceAccount(sa) = src else {
            panic!("expected a service account, got {src:?}")
        };
        let jwt = service_account_assertion(&sa, 1_800_000_000).expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "test-key-id-1");
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(
            claims["iss"],
            "backup-writer@chromaprod-test.iam.gserviceaccount.com"
        );
        assert_eq!(claims["aud"], "http://127.0.0.1:1/token");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(
            claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
            3600
        );
        let public = std::fs::read_to_string(fixture("gcs-test-service-account.pub.der.b64"))
            .expect("public key");
        let public = base64::engine::general_purpose::STANDARD
            .decode(public.trim())
            .expect("b64");
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            public,
        )
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).expect("b64"),
        )
        .expect("signature verifies with the fixture's public key");
    }
}
