//! A thin typed client of Chroma's HTTP API v2 against ONE endpoint. It
//! has no retries or pool logic (see `store`); every call is bounded by
//! the reqwest client's connect and request timeouts.
//!
//! JSON shapes were checked against `chroma run` 1.5.9.

use std::ops::Range;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use url::Url;

use super::error::{excerpt, ChromaError};

/// Chroma's request-body limit (a larger body gets 413 or a reset).
pub const MAX_REQUEST_BYTES: usize = 40 * 1024 * 1024;

/// The body size a split write aims for: about 1,500 records of 384
/// dimensions with documents. Chroma 1.5.9 indexed batches of 500 to
/// 5,000 such records equally fast (`docs/benchmarks.md`), and a request
/// this size keeps the client's buffers a few MiB whatever the batch.
pub const WRITE_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The kinds of record writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or replace whole records.
    Upsert,
    /// Insert; an id already stored keeps what it holds.
    Add,
    /// Replace the given fields of stored records; metadata keys merge,
    /// and a `null` value deletes the key.
    Update,
}

impl WriteOp {
    /// The operation's name in Chroma's API, metrics and errors.
    pub fn name(self) -> &'static str {
        match self {
            WriteOp::Upsert => "upsert",
            WriteOp::Add => "add",
            WriteOp::Update => "update",
        }
    }
}

/// Metadata of one record or collection: a JSON object, kept verbatim.
pub type Metadata = Map<String, Value>;

/// A collection as Chroma describes it; `configuration_json`, `schema`
/// and `metadata` are kept verbatim so they can be stored and recreated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub configuration_json: Value,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub dimension: Option<u64>,
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub database: String,
}

/// `/api/v2/pre-flight-checks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreFlight {
    pub max_batch_size: usize,
    #[serde(default)]
    pub supports_base64_encoding: bool,
}

/// What `check_ready` learned about the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    pub endpoint: String,
    /// The API version (`"1.0.0"`), not the server's release.
    pub api_version: String,
    pub max_batch_size: usize,
    pub supports_base64_encoding: bool,
}

/// Fields a `get` or `query` returns besides ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Include {
    Embeddings,
    Documents,
    Metadatas,
    Uris,
    Distances,
}

impl Include {
    /// Every record field (what a backup reads).
    pub const RECORD: [Include; 4] = [
        Include::Embeddings,
        Include::Documents,
        Include::Metadatas,
        Include::Uris,
    ];
}

/// A `get`: a page (`limit`/`offset`, insertion order) or given `ids`,
/// optionally filtered by `where`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GetRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    pub include: Vec<Include>,
}

impl GetRequest {
    pub fn page(offset: usize, limit: usize, include: &[Include]) -> Self {
        GetRequest {
            offset: Some(offset),
            limit: Some(limit),
            include: include.to_vec(),
            ..Self::default()
        }
    }

    pub fn ids(ids: Vec<String>, include: &[Include]) -> Self {
        GetRequest {
            ids: Some(ids),
            include: include.to_vec(),
            ..Self::default()
        }
    }
}

/// Records returned by `get`; each field is `None` unless included. A
/// vector Chroma cannot encode (NaN) comes back as `None`; a JSON `null`
/// inside a vector becomes `f32::NAN`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetResult {
    pub ids: Vec<String>,
    #[serde(default, deserialize_with = "de_embeddings")]
    pub embeddings: Option<Vec<Option<Vec<f32>>>>,
    #[serde(default)]
    pub documents: Option<Vec<Option<String>>>,
    #[serde(default)]
    pub metadatas: Option<Vec<Option<Metadata>>>,
    #[serde(default)]
    pub uris: Option<Vec<Option<String>>>,
}

impl GetResult {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Records to upsert: parallel arrays, each optional field either absent
/// or as long as `ids`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordBatch {
    pub ids: Vec<String>,
    pub embeddings: Option<Vec<Vec<f32>>>,
    pub documents: Option<Vec<Option<String>>>,
    pub metadatas: Option<Vec<Option<Metadata>>>,
    pub uris: Option<Vec<Option<String>>>,
}

impl RecordBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every optional array is as long as `ids`.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.ids.len();
        let check = |name: &str, len: Option<usize>| match len {
            Some(l) if l != n => Err(format!("{name} has {l} entries but ids has {n}")),
            _ => Ok(()),
        };
        check("embeddings", self.embeddings.as_ref().map(Vec::len))?;
        check("documents", self.documents.as_ref().map(Vec::len))?;
        check("metadatas", self.metadatas.as_ref().map(Vec::len))?;
        check("uris", self.uris.as_ref().map(Vec::len))
    }

    /// A cheap lower bound of the request body of `range`: enough to
    /// choose its buffer (see [`crate::mem::buffer_for`]).
    fn body_floor(&self, range: Range<usize>, base64: bool) -> usize {
        let per_float = if base64 { 4 } else { 8 };
        range
            .map(|i| {
                let vector = self
                    .embeddings
                    .as_ref()
                    .map_or(0, |e| e[i].len() * per_float);
                let document = self
                    .documents
                    .as_ref()
                    .and_then(|d| d[i].as_ref())
                    .map_or(0, String::len);
                self.ids[i].len() + vector + document + 16
            })
            .sum()
    }

    /// Estimated request-body bytes of record `i` (JSON with base64 embeddings).
    pub fn record_size(&self, i: usize, base64: bool) -> usize {
        let mut size = self.ids[i].len() + 8;
        if let Some(e) = &self.embeddings {
            let dim = e[i].len();
            size += if base64 {
                (dim * 4).div_ceil(3) * 4 + 4
            } else {
                dim * 16 + 2
            };
        }
        if let Some(Some(d)) = self.documents.as_ref().map(|d| &d[i]) {
            // JSON escaping can grow a string up to 6× (\uXXXX); be safe.
            size += d.len() * 2 + 4;
        }
        if let Some(Some(m)) = self.metadatas.as_ref().map(|m| &m[i]) {
            size += serde_json::to_string(m).map_or(1024, |s| s.len() * 2) + 2;
        }
        if let Some(Some(u)) = self.uris.as_ref().map(|u| &u[i]) {
            size += u.len() * 2 + 4;
        }
        size + 8
    }
}

/// Split `batch` into consecutive ranges of at most `max_records` records
/// and (estimated) `max_bytes` bytes each. A single record larger than
/// `max_bytes` still gets a range of its own (Chroma will answer 413).
pub fn plan_batches(
    batch: &RecordBatch,
    max_records: usize,
    max_bytes: usize,
    base64: bool,
) -> Vec<Range<usize>> {
    let max_records = max_records.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 256usize;
    for i in 0..batch.len() {
        let size = batch.record_size(i, base64);
        if i > start && (i - start >= max_records || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 256;
        }
        bytes += size;
    }
    if start < batch.len() {
        out.push(start..batch.len());
    }
    out
}

/// Nearest-neighbour query of one or more vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryRequest {
    pub query_embeddings: Vec<Vec<f32>>,
    pub n_results: usize,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<Value>,
    pub include: Vec<Include>,
}

/// Per query vector, results ranked nearest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub ids: Vec<Vec<String>>,
    #[serde(default)]
    pub distances: Option<Vec<Vec<Option<f32>>>>,
    #[serde(default)]
    pub documents: Option<Vec<Vec<Option<String>>>>,
    #[serde(default)]
    pub metadatas: Option<Vec<Vec<Option<Metadata>>>>,
    #[serde(default, deserialize_with = "de_query_embeddings")]
    pub embeddings: Option<Vec<Vec<Option<Vec<f32>>>>>,
}

/// Create a collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateCollection {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// As accepted by Chroma, e.g. `{"hnsw":{"space":"l2","ef_search":50}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Value>,
    /// Return the existing collection instead of 409 when the name is taken.
    pub get_or_create: bool,
}

/// In-place change of a collection (`PUT …/collections/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModifyCollection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_metadata: Option<Metadata>,
    /// E.g. `{"hnsw":{"ef_search":100}}`; the space cannot change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_configuration: Option<Value>,
}

fn null_to_nan(v: Vec<Option<f32>>) -> Vec<f32> {
    v.into_iter().map(|x| x.unwrap_or(f32::NAN)).collect()
}

type RawVectors = Vec<Option<Vec<Option<f32>>>>;

#[allow(clippy::type_complexity)]
fn de_embeddings<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Option<Vec<f32>>>>, D::Error> {
    let raw: Option<RawVectors> = Option::deserialize(d)?;
    Ok(raw.map(|vs| vs.into_iter().map(|v| v.map(null_to_nan)).collect()))
}

#[allow(clippy::type_complexity)]
fn de_query_embeddings<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Vec<Option<Vec<f32>>>>>, D::Error> {
    let raw: Option<Vec<RawVectors>> = Option::deserialize(d)?;
    Ok(raw.map(|qs| {
        qs.into_iter()
            .map(|vs| vs.into_iter().map(|v| v.map(null_to_nan)).collect())
            .collect()
    }))
}

/// Little-endian f32 bytes in standard base64, as Chroma's upsert accepts.
pub fn encode_embedding(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Embeddings as a request sends them: JSON arrays of numbers, or base64
/// strings encoded one at a time as the body is written (a batch's
/// strings are never all held at once).
enum EmbeddingsOut<'a> {
    Floats(&'a [Vec<f32>]),
    Base64(&'a [Vec<f32>]),
}

impl Serialize for EmbeddingsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            EmbeddingsOut::Floats(es) => es.serialize(s),
            EmbeddingsOut::Base64(es) => {
                let mut seq = s.serialize_seq(Some(es.len()))?;
                for e in *es {
                    seq.serialize_element(&encode_embedding(e))?;
                }
                seq.end()
            }
        }
    }
}

/// The body of an upsert, add or update: a range of a batch, borrowed.
#[derive(Serialize)]
struct UpsertBody<'a> {
    ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<EmbeddingsOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    documents: Option<&'a [Option<String>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadatas: Option<&'a [Option<Metadata>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uris: Option<&'a [Option<String>]>,
}

impl<'a> UpsertBody<'a> {
    /// `batch[range]`; the caller has checked `range` against the batch.
    fn of(batch: &'a RecordBatch, range: Range<usize>, base64: bool) -> Self {
        let embeddings = batch.embeddings.as_deref().map(|es| {
            let es = &es[range.clone()];
            if base64 {
                EmbeddingsOut::Base64(es)
            } else {
                EmbeddingsOut::Floats(es)
            }
        });
        UpsertBody {
            ids: &batch.ids[range.clone()],
            embeddings,
            documents: batch.documents.as_deref().map(|d| &d[range.clone()]),
            metadatas: batch.metadatas.as_deref().map(|m| &m[range.clone()]),
            uris: batch.uris.as_deref().map(|u| &u[range]),
        }
    }
}

#[derive(Serialize)]
struct DeleteBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<&'a [String]>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    where_: Option<&'a Value>,
}

#[derive(Deserialize)]
struct DeleteAnswer {
    #[serde(default)]
    deleted: Option<u64>,
}

/// Typed v2 operations against one endpoint. Cheap to clone.
#[derive(Clone)]
pub struct ChromaClient {
    http: reqwest::Client,
    base: Url,
    /// `…/api/v2/tenants/{tenant}/databases/{database}/`
    db_base: Url,
    request_timeout: Duration,
}

impl std::fmt::Debug for ChromaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromaClient")
            .field("endpoint", &self.base.as_str())
            .field("db_base", &self.db_base.as_str())
            .finish_non_exhaustive()
    }
}

fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Parse `Retry-After` given in seconds (the HTTP-date form is ignored).
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

impl ChromaClient {
    /// A client of `endpoint` using `http` (which carries timeouts and auth).
    pub fn new(
        http: reqwest::Client,
        endpoint: &Url,
        tenant: &str,
        database: &str,
        request_timeout: Duration,
    ) -> Result<Self, ChromaError> {
        let mut base = endpoint.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let db_base = base
            .join(&format!(
                "api/v2/tenants/{}/databases/{}/",
                seg(tenant),
                seg(database)
            ))
            .map_err(|e| ChromaError::Config(format!("bad endpoint {endpoint}: {e}")))?;
        Ok(ChromaClient {
            http,
            base,
            db_base,
            request_timeout,
        })
    }

    /// The endpoint's base URL as configured (used in logs and status).
    pub fn endpoint(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, root: &Url, path: &str, op: &'static str) -> Result<Url, ChromaError> {
        root.join(path).map_err(|e| ChromaError::InvalidRequest {
            operation: op,
            detail: format!("bad path {path}: {e}"),
        })
    }

    /// Sends a request whose JSON body is about `body_bytes` long (a hint
    /// for its buffer; 0 when small or unknown); a successful response is
    /// returned unread, any other status becomes the matching error.
    async fn respond<B: Serialize + ?Sized>(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<&B>,
        body_bytes: usize,
    ) -> Result<reqwest::Response, ChromaError> {
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            let mut bytes = crate::mem::buffer_for(body_bytes.max(128));
            serde_json::to_writer(&mut bytes, b).map_err(|e| ChromaError::InvalidRequest {
                operation: op,
                detail: e.to_string(),
            })?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let endpoint = self.endpoint();
        let resp = req
            .send()
            .await
            .map_err(|e| ChromaError::from_reqwest(&e, op, endpoint, self.request_timeout))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = parse_retry_after(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ChromaError::from_reqwest(&e, op, endpoint, self.request_timeout))?;
        let text = String::from_utf8_lossy(&bytes);
        if status == StatusCode::NOT_FOUND {
            let what = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| excerpt(&text));
            return Err(ChromaError::NotFound {
                operation: op,
                endpoint: endpoint.to_string(),
                what,
            });
        }
        Err(ChromaError::Http {
            status: status.as_u16(),
            operation: op,
            endpoint: endpoint.to_string(),
            body_excerpt: excerpt(&text),
            retry_after,
        })
    }

    /// [`Self::respond`], then the response body read whole. A large body
    /// (a page of records) goes into a buffer reserved for its stated
    /// length (see [`crate::mem`]), not one grown piece by piece.
    async fn send<B: Serialize + ?Sized>(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<&B>,
        body_bytes: usize,
    ) -> Result<Vec<u8>, ChromaError> {
        let mut resp = self.respond(op, method, url, body, body_bytes).await?;
        // Trust a stated length only so far: the buffer grows past it if
        // the body is longer.
        let stated = resp
            .content_length()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
            .min(MAX_REQUEST_BYTES);
        let mut out = crate::mem::buffer_for(stated);
        while let Some(piece) = resp
            .chunk()
            .await
            .map_err(|e| ChromaError::from_reqwest(&e, op, self.endpoint(), self.request_timeout))?
        {
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<T, ChromaError> {
        let b = self.send(op, method, url, body, 0).await?;
        serde_json::from_slice(&b).map_err(|e| ChromaError::Decode {
            operation: op,
            endpoint: self.endpoint().to_string(),
            detail: e.to_string(),
        })
    }

    /// `GET /api/v2/healthcheck`; 503 (unhealthy) is an error.
    pub async fn healthcheck(&self) -> Result<(), ChromaError> {
        let url = self.url(&self.base, "api/v2/healthcheck", "healthcheck")?;
        match self
            .send::<()>("healthcheck", Method::GET, url, None, 0)
            .await
        {
            Ok(_) => Ok(()),
            Err(ChromaError::Http {
                status: 503,
                body_excerpt,
                endpoint,
                ..
            }) => Err(ChromaError::Unhealthy {
                endpoint,
                detail: format!("healthcheck answered 503: {body_excerpt}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// The API version (`"1.0.0"`), not the server's release.
    pub async fn version(&self) -> Result<String, ChromaError> {
        let url = self.url(&self.base, "api/v2/version", "version")?;
        self.call::<(), String>("version", Method::GET, url, None)
            .await
    }

    pub async fn pre_flight_checks(&self) -> Result<PreFlight, ChromaError> {
        let url = self.url(&self.base, "api/v2/pre-flight-checks", "pre_flight_checks")?;
        self.call::<(), _>("pre_flight_checks", Method::GET, url, None)
            .await
    }

    /// Fails with `NotFound` when the configured tenant/database does not
    /// exist (listing would silently return nothing).
    pub async fn check_database(&self) -> Result<(), ChromaError> {
        let path = self.db_base.path().trim_end_matches('/').to_string();
        let mut url = self.base.clone();
        url.set_path(&path);
        self.send::<()>("check_database", Method::GET, url, None, 0)
            .await
            .map(|_| ())
    }

    /// All collections of the database (paged by `limit`/`offset`).
    pub async fn list_collections(
        &self,
        limit: Option<usize>,
        offset: Option<usize>,
    ) -> Result<Vec<Collection>, ChromaError> {
        let mut url = self.url(&self.db_base, "collections", "list_collections")?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(l) = limit {
                q.append_pair("limit", &l.to_string());
            }
            if let Some(o) = offset {
                q.append_pair("offset", &o.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call::<(), _>("list_collections", Method::GET, url, None)
            .await
    }

    pub async fn get_collection(&self, name: &str) -> Result<Collection, ChromaError> {
        let url = self.url(
            &self.db_base,
            &format!("collections/{}", seg(name)),
            "get_collection",
        )?;
        self.call::<(), _>("get_collection", Method::GET, url, None)
            .await
    }

    pub async fn create_collection(
        &self,
        req: &CreateCollection,
    ) -> Result<Collection, ChromaError> {
        let url = self.url(&self.db_base, "collections", "create_collection")?;
        self.call("create_collection", Method::POST, url, Some(req))
            .await
    }

    /// Rename, replace metadata and/or change mutable configuration.
    pub async fn modify_collection(
        &self,
        collection_id: &str,
        req: &ModifyCollection,
    ) -> Result<(), ChromaError> {
        let url = self.url(
            &self.db_base,
            &format!("collections/{}", seg(collection_id)),
            "modify_collection",
        )?;
        self.send("modify_collection", Method::PUT, url, Some(req), 0)
            .await
            .map(|_| ())
    }

    pub async fn delete_collection(&self, name: &str) -> Result<(), ChromaError> {
        let url = self.url(
            &self.db_base,
            &format!("collections/{}", seg(name)),
            "delete_collection",
        )?;
        self.send::<()>("delete_collection", Method::DELETE, url, None, 0)
            .await
            .map(|_| ())
    }

    pub async fn count(&self, collection_id: &str) -> Result<u64, ChromaError> {
        let url = self.url(
            &self.db_base,
            &format!("collections/{}/count", seg(collection_id)),
            "count",
        )?;
        self.call::<(), _>("count", Method::GET, url, None).await
    }

    pub async fn get_records(
        &self,
        collection_id: &str,
        req: &GetRequest,
    ) -> Result<GetResult, ChromaError> {
        let url = self.url(
            &self.db_base,
            &format!("collections/{}/get", seg(collection_id)),
            "get",
        )?;
        self.call("get", Method::POST, url, Some(req)).await
    }

    /// `get`, with the response body written to `out` (from its start,
    /// truncated first) as it arrives instead of held in memory: for a
    /// listing of every id of a large collection. Returns the body's length.
    /// Writes are plain blocking writes: `out` is meant to be a local
    /// temporary file.
    pub async fn get_records_to_file(
        &self,
        collection_id: &str,
        req: &GetRequest,
        out: &std::fs::File,
    ) -> Result<u64, ChromaError> {
        use std::io::{Seek as _, Write as _};
        let url = self.url(
            &self.db_base,
            &format!("collections/{}/get", seg(collection_id)),
            "get",
        )?;
        let mut resp = self.respond("get", Method::POST, url, Some(req), 0).await?;
        let io_err = |e: std::io::Error| ChromaError::Decode {
            operation: "get",
            endpoint: self.endpoint().to_string(),
            detail: format!("cannot write the response to a temporary file: {e}"),
        };
        let mut file = out;
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        let mut len = 0u64;
        while let Some(piece) = resp.chunk().await.map_err(|e| {
            ChromaError::from_reqwest(&e, "get", self.endpoint(), self.request_timeout)
        })? {
            file.write_all(&piece).map_err(io_err)?;
            len += piece.len() as u64;
        }
        file.flush().map_err(io_err)?;
        Ok(len)
    }

    /// One `op` request carrying the records of `batch` in `range`;
    /// embeddings go base64 when `base64`.
    pub async fn write(
        &self,
        op: WriteOp,
        collection_id: &str,
        batch: &RecordBatch,
        range: Range<usize>,
        base64: bool,
    ) -> Result<(), ChromaError> {
        let name = op.name();
        let invalid = |detail| ChromaError::InvalidRequest {
            operation: name,
            detail,
        };
        batch.validate().map_err(invalid)?;
        if range.start > range.end || range.end > batch.len() {
            return Err(invalid(format!(
                "records {range:?} of a batch of {}",
                batch.len()
            )));
        }
        let url = self.url(
            &self.db_base,
            &format!("collections/{}/{name}", seg(collection_id)),
            name,
        )?;
        let floor = batch.body_floor(range.clone(), base64);
        let body = UpsertBody::of(batch, range, base64);
        self.send(name, Method::POST, url, Some(&body), floor)
            .await
            .map(|_| ())
    }

    /// Delete records by ids and/or a `where` filter; returns how many went.
    pub async fn delete(
        &self,
        collection_id: &str,
        ids: Option<&[String]>,
        where_: Option<&Value>,
    ) -> Result<u64, ChromaError> {
        if ids.is_none() && where_.is_none() {
            return Err(ChromaError::InvalidRequest {
                operation: "delete",
                detail: "give ids or a where filter (refusing to delete everything)".into(),
            });
        }
        let url = self.url(
            &self.db_base,
            &format!("collections/{}/delete", seg(collection_id)),
            "delete",
        )?;
        let a: DeleteAnswer = self
            .call(
                "delete",
                Method::POST,
                url,
                Some(&DeleteBody { ids, where_ }),
            )
            .await?;
        Ok(a.deleted.unwrap_or(0))
    }

    pub async fn query(
        &self,
        collection_id: &str,
        req: &QueryRequest,
    ) -> Result<QueryResult, ChromaError> {
        let url = self.url(
            &self.db_base,
            &format!("collections/{}/query", seg(collection_id)),
            "query",
        )?;
        self.call("query", Method::POST, url, Some(req)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_vectors_decode_as_none() {
        let r: GetResult = serde_json::from_str(
            r#"{"ids":["a","b","c"],"embeddings":[[1.0,2.5],null,[null,1.0]],"documents":["x",null,null],"metadatas":[{"k":1},null,{}],"uris":null,"include":[]}"#,
        )
        .expect("should succeed");
        let e = r.embeddings.expect("should succeed");
        assert_eq!(e[0], Some(vec![1.0, 2.5]));
        assert_eq!(e[1], None);
        assert!(e[2].as_ref().expect("should succeed")[0].is_nan());
        assert_eq!(r.uris, None);
        assert_eq!(r.documents.expect("should succeed")[1], None);
    }

    #[test]
    fn embeddings_encode_as_little_endian_f32_base64() {
        // Python: base64.b64encode(struct.pack("<3f", 1.0, 2.5, -3.25))
        assert_eq!(encode_embedding(&[1.0, 2.5, -3.25]), "AACAPwAAIEAAAFDA");
        // In a request body, one string per embedding, or arrays of numbers.
        let es = vec![vec![1.0, 2.5, -3.25], vec![0.5]];
        assert_eq!(
            serde_json::to_string(&EmbeddingsOut::Base64(&es)).expect("json"),
            r#"["AACAPwAAIEAAAFDA","AAAAPw=="]"#
        );
        assert_eq!(
            serde_json::to_string(&EmbeddingsOut::Floats(&es)).expect("json"),
            "[[1.0,2.5,-3.25],[0.5]]"
        );
    }

    #[test]
    fn batches_respect_record_and_byte_limits() {
        let n = 10;
        let batch = RecordBatch {
            ids: (0..n).map(|i| format!("id{i}")).collect(),
            embeddings: Some(vec![vec![0.0; 96]; n]),
            documents: Some(vec![Some("x".repeat(1000)); n]),
            ..RecordBatch::default()
        };
        let plan = plan_batches(&batch, 4, usize::MAX, true);
        assert_eq!(plan, vec![0..4, 4..8, 8..10]);
        let one = batch.record_size(0, true);
        let plan = plan_batches(&batch, 100, 256 + one * 3, true);
        assert_eq!(plan, vec![0..3, 3..6, 6..9, 9..10]);
        // Each planned batch's real JSON body fits the byte limit.
        let limit = 256 + one * 3;
        for r in plan {
            let body =
                serde_json::to_vec(&UpsertBody::of(&batch, r, true)).expect("should succeed");
            assert!(body.len() <= limit, "{} > {limit}", body.len());
        }
        // A single oversized record still gets its own batch.
        assert_eq!(plan_batches(&batch, 100, 10, true).len(), n);
        assert!(plan_batches(&RecordBatch::default(), 10, 10, true).is_empty());
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, reqwest::header::HeaderValue::from_static("2"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn validate_catches_ragged_batches() {
        let b = RecordBatch {
            ids: vec!["a".into(), "b".into()],
            documents: Some(vec![None]),
            ..RecordBatch::default()
        };
        assert!(b.validate().expect_err("should fail").contains("documents"));
    }
}
