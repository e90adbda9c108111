//! A thin typed client of Chroma's HTTP API v2 against ONE endpoint. It
//! has no retries or pool logic (see `store`); every call is bounded by
//! the reqwest client's connect and request timeouts.
//!
//! JSON shapes were checked against `chroma run` 1.5.9.
//!
//! The request and answer types are in [`types`], record batches and how
//! they are cut into requests in [`batch`].

mod batch;
mod types;

use std::ops::Range;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::error::{excerpt, ChromaError};

use batch::UpsertBody;
pub use batch::{
    encode_embedding, plan_batches, RecordBatch, MAX_REQUEST_BYTES, WRITE_REQUEST_BYTES,
};
pub use types::{
    Collection, CreateCollection, GetRequest, GetResult, Include, Metadata, ModifyCollection,
    PreFlight, QueryRequest, QueryResult, ServerInfo, WriteOp,
};

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
}
