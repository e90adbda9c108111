//! The one HTTP client of the storage layer (reqwest 0.12 with rustls/ring),
//! shared by our GCS client and, through [`ReqwestConnector`], by
//! `object_store`'s S3 and Azure clients — so object_store does not bring its
//! own reqwest 0.13 and aws-lc-rs.

use std::error::Error as _;

use http_body_util::BodyExt;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

use super::{Result, StorageError, StorageOptions};

/// A reqwest client with the configured timeouts. No total-request timeout:
/// a 64 MiB upload may take long; a stalled connection is caught by the read
/// timeout.
pub(crate) fn client(options: &StorageOptions) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("chromaprod/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StorageError::config(format!("cannot build the HTTP client: {e}")))
}

/// Hands object_store our reqwest client.
#[derive(Debug, Clone)]
pub(crate) struct ReqwestConnector(pub(crate) reqwest::Client);

impl HttpConnector for ReqwestConnector {
    fn connect(&self, _options: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(ReqwestService(self.0.clone())))
    }
}

#[derive(Debug)]
struct ReqwestService(reqwest::Client);

#[async_trait::async_trait]
impl HttpService for ReqwestService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = parts.headers;
        // A single-buffer payload (all of ours) goes through without a copy.
        *request.body_mut() = Some(match body.as_bytes() {
            Some(b) => reqwest::Body::from(b.clone()),
            None => reqwest::Body::wrap(body),
        });
        let response = self.0.execute(request).await.map_err(classify)?;
        let response: http::Response<reqwest::Body> = response.into();
        let (parts, body) = response.into_parts();
        let body = HttpResponseBody::new(body.map_err(classify));
        Ok(HttpResponse::from_parts(parts, body))
    }
}

/// Maps a reqwest error to object_store's kinds, which decide its retries.
fn classify(e: reqwest::Error) -> HttpError {
    let kind = if e.is_timeout() {
        HttpErrorKind::Timeout
    } else if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_decode() {
        HttpErrorKind::Decode
    } else if is_interrupted(&e) {
        HttpErrorKind::Interrupted
    } else if e.is_request() || e.is_body() {
        HttpErrorKind::Request
    } else {
        HttpErrorKind::Unknown
    };
    HttpError::new(kind, e.without_url())
}

/// A connection reset, broken pipe or early EOF somewhere in the chain.
pub(crate) fn is_interrupted(e: &reqwest::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::TimedOut
            ) {
                return true;
            }
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_closed() || h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        source = s.source();
    }
    false
}
