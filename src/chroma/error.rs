//! Errors of the Chroma layer. Each message says what failed and what to do;
//! [`ChromaError::is_transient`] says whether trying again later may help.
//! No variant ever holds the auth token.

use std::time::Duration;

use crate::config::RetryableError;

/// Longest response-body excerpt kept in an error.
pub const BODY_EXCERPT_LEN: usize = 512;

/// No pool slot (or no usable endpoint) became free within `connection_timeout`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no Chroma connection available for {operation} after waiting {waited_ms} ms: {in_use} of {max} \
     slots in use, {waiting} callers waiting; endpoints: {endpoints}. Raise pool.max_connections \
     or pool.connection_timeout, or find what holds connections (slow Chroma calls, see \
     `chromaprod status`)"
)]
pub struct ConnectionPoolError {
    pub operation: &'static str,
    pub waited_ms: u64,
    pub in_use: usize,
    pub max: usize,
    pub waiting: usize,
    /// `url (healthy|unhealthy, breaker closed|open|half-open)` for each endpoint.
    pub endpoints: String,
}

/// A call failed on every attempt the retry policy allowed.
#[derive(Debug, thiserror::Error)]
#[error(
    "Chroma {operation} failed after {attempts} attempt(s) and {total_delay_ms} ms of back-off \
     ({reason}); last error: {last}"
)]
pub struct RetryExhaustedError {
    pub operation: &'static str,
    pub attempts: u32,
    pub total_delay_ms: u64,
    /// Why retrying stopped: retries used up, deadline, budget.
    pub reason: String,
    pub last: Box<ChromaError>,
}

impl RetryExhaustedError {
    pub fn total_delay(&self) -> Duration {
        Duration::from_millis(self.total_delay_ms)
    }
}

/// Everything that can go wrong talking to Chroma.
#[derive(Debug, thiserror::Error)]
pub enum ChromaError {
    #[error(transparent)]
    ConnectionPool(#[from] ConnectionPoolError),
    #[error(transparent)]
    RetryExhausted(#[from] RetryExhaustedError),
    #[error(
        "Chroma {operation} on {endpoint} answered HTTP {status}: {body_excerpt}{}",
        http_advice(*status)
    )]
    Http {
        status: u16,
        operation: &'static str,
        endpoint: String,
        body_excerpt: String,
        /// `Retry-After` in seconds, when the server sent one.
        retry_after: Option<Duration>,
    },
    #[error("Chroma {operation} on {endpoint}: {what} does not exist; check the name (and chroma.tenant / chroma.database)")]
    NotFound {
        operation: &'static str,
        endpoint: String,
        what: String,
    },
    #[error("Chroma {operation} on {endpoint} timed out after {} ms; check that Chroma is up and not overloaded, or raise pool.request_timeout", after.as_millis())]
    Timeout {
        operation: &'static str,
        endpoint: String,
        after: Duration,
    },
    #[error("cannot connect to Chroma at {endpoint} for {operation}: {detail}; check that the server runs and chroma.endpoints is right")]
    Connect {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("connection to Chroma at {endpoint} was reset during {operation}: {detail}")]
    Reset {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("HTTP transport error talking to Chroma at {endpoint} during {operation}: {detail}")]
    Transport {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("cannot decode Chroma's answer to {operation} from {endpoint}: {detail}; the server may be a Chroma version chromaprod does not support (it needs the v2 API, Chroma >= 1.0)")]
    Decode {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("circuit breaker for {endpoint} is open after repeated failures; calls resume with a probe in {} ms. See `chromaprod status`", retry_in.as_millis())]
    CircuitOpen {
        endpoint: String,
        retry_in: Duration,
    },
    #[error("Chroma client configuration is unusable: {0}")]
    Config(String),
    #[error("invalid request to Chroma {operation}: {detail}")]
    InvalidRequest {
        operation: &'static str,
        detail: String,
    },
    #[error("Chroma server at {endpoint} is unhealthy: {detail}")]
    Unhealthy { endpoint: String, detail: String },
}

fn http_advice(status: u16) -> &'static str {
    match status {
        401 | 403 => " (check chroma.auth_token_file and chroma.auth_header)",
        409 => " (it already exists)",
        413 => " (request too large: send a smaller batch)",
        429 => " (Chroma is rate limiting: slow down)",
        400 | 422 => " (Chroma rejected the request as invalid)",
        500..=599 => " (Chroma server error: see its log)",
        _ => "",
    }
}

impl ChromaError {
    /// Whether the same call may succeed later without any change.
    pub fn is_transient(&self) -> bool {
        match self {
            ChromaError::ConnectionPool(_)
            | ChromaError::Timeout { .. }
            | ChromaError::Connect { .. }
            | ChromaError::Reset { .. }
            | ChromaError::CircuitOpen { .. }
            | ChromaError::Unhealthy { .. } => true,
            ChromaError::Http { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            ChromaError::RetryExhausted(e) => e.last.is_transient(),
            ChromaError::NotFound { .. }
            | ChromaError::Transport { .. }
            | ChromaError::Decode { .. }
            | ChromaError::Config(_)
            | ChromaError::InvalidRequest { .. } => false,
        }
    }

    /// The retry class of this failure, if it has one (see [`crate::chroma::RetryManager`]).
    pub fn retry_class(&self) -> Option<RetryableError> {
        match self {
            ChromaError::Connect { .. } | ChromaError::CircuitOpen { .. } => {
                Some(RetryableError::Connect)
            }
            ChromaError::Timeout { .. } => Some(RetryableError::Timeout),
            ChromaError::Reset { .. } => Some(RetryableError::Reset),
            ChromaError::Http { status, .. } => match status {
                429 => Some(RetryableError::TooManyRequests),
                500 => Some(RetryableError::InternalError),
                502 => Some(RetryableError::BadGateway),
                503 => Some(RetryableError::Unavailable),
                504 => Some(RetryableError::GatewayTimeout),
                _ => None,
            },
            _ => None,
        }
    }

    /// `Retry-After` sent with a 429/503, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ChromaError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ChromaError::Http { status, .. } => Some(*status),
            ChromaError::NotFound { .. } => Some(404),
            ChromaError::RetryExhausted(e) => e.last.status(),
            _ => None,
        }
    }

    /// The endpoint failed in a way that says it is down (not that the request was bad).
    pub fn endpoint_is_down(&self) -> bool {
        matches!(
            self,
            ChromaError::Connect { .. }
                | ChromaError::Timeout { .. }
                | ChromaError::Reset { .. }
                | ChromaError::Unhealthy { .. }
        ) || matches!(self, ChromaError::Http { status, .. } if matches!(status, 502..=504))
    }

    /// Map a reqwest failure to a variant, telling connect, timeout and reset apart.
    pub(crate) fn from_reqwest(
        e: &reqwest::Error,
        operation: &'static str,
        endpoint: &str,
        timeout: Duration,
    ) -> Self {
        let endpoint = endpoint.to_string();
        let detail = error_chain(e);
        // A connect timeout is a connect failure: the request was never sent.
        if e.is_connect() {
            return ChromaError::Connect {
                operation,
                endpoint,
                detail,
            };
        }
        if e.is_timeout() {
            return ChromaError::Timeout {
                operation,
                endpoint,
                after: timeout,
            };
        }
        if e.is_decode() {
            return ChromaError::Decode {
                operation,
                endpoint,
                detail,
            };
        }
        if e.is_builder() {
            return ChromaError::InvalidRequest { operation, detail };
        }
        let lower = detail.to_ascii_lowercase();
        let is_reset = [
            "reset",
            "broken pipe",
            "connection closed",
            "incomplete",
            "connection aborted",
            "unexpected eof",
            "unexpected end of file",
            "channel closed",
            "early eof",
        ]
        .iter()
        .any(|n| lower.contains(n));
        if is_reset {
            ChromaError::Reset {
                operation,
                endpoint,
                detail,
            }
        } else {
            ChromaError::Transport {
                operation,
                endpoint,
                detail,
            }
        }
    }
}

/// The messages of an error and all its sources, joined by `: `. reqwest's
/// messages carry the URL (never headers), so no token can leak here.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// At most [`BODY_EXCERPT_LEN`] bytes of a body, cut on a char boundary.
pub(crate) fn excerpt(body: &str) -> String {
    if body.len() <= BODY_EXCERPT_LEN {
        return body.trim().to_string();
    }
    let mut end = BODY_EXCERPT_LEN;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", body[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_classes() {
        let http = |status| ChromaError::Http {
            status,
            operation: "get",
            endpoint: "http://x/".into(),
            body_excerpt: String::new(),
            retry_after: None,
        };
        assert!(http(503).is_transient());
        assert!(http(429).is_transient());
        assert!(!http(400).is_transient());
        assert!(!http(413).is_transient());
        assert_eq!(http(413).retry_class(), None);
        assert_eq!(http(401).retry_class(), None);
        assert_eq!(http(502).retry_class(), Some(RetryableError::BadGateway));
        assert!(http(401).to_string().contains("auth_token_file"));
    }

    #[test]
    fn excerpt_cuts_on_char_boundary() {
        let s = "é".repeat(600);
        let e = excerpt(&s);
        assert!(e.len() <= BODY_EXCERPT_LEN + '…'.len_utf8());
    }
}
