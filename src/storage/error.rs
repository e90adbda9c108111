//! Errors of the storage layer: a kind, whether a retry may help, and what to do.

use std::fmt;

/// What a storage operation failed with.
///
/// Messages name the backend and the key (never a credential, a signed URL
/// or a token) and say what to do. Sources are kept as text already scrubbed
/// of the configured secrets, so `Debug` is as safe as `Display`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("{backend}: object '{key}' not found")]
    NotFound { backend: String, key: String },

    /// A create-only write found the key present; the stored object is unchanged.
    #[error(
        "{backend}: object '{key}' already exists (create-only write; the stored object was kept)"
    )]
    AlreadyExists { backend: String, key: String },

    /// Credentials are missing, wrong or lack permission.
    #[error("{backend}: access denied ({detail}); check the credentials in the environment and the bucket/container permissions")]
    PermissionDenied { backend: String, detail: String },

    /// Network failure, timeout, throttling or a 5xx: retrying later may succeed.
    #[error("{backend}: transient failure ({detail}); retries were exhausted, try again later or check connectivity to the storage endpoint")]
    Transient { backend: String, detail: String },

    /// The key breaks the naming rules; nothing was sent anywhere.
    #[error("invalid object key '{key}': {reason}")]
    InvalidKey { key: String, reason: String },

    /// The storage URL or the environment it needs is wrong or incomplete.
    #[error("storage configuration: {0}")]
    Config(String),

    /// Anything else (an unexpected response, a local I/O error, …).
    #[error("{backend}: {detail}")]
    Other { backend: String, detail: String },
}

/// The coarse kind of a [`StorageError`], for matching and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Transient,
    InvalidKey,
    Config,
    Other,
}

impl StorageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Self::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Self::Transient { .. } => ErrorKind::Transient,
            Self::InvalidKey { .. } => ErrorKind::InvalidKey,
            Self::Config(_) => ErrorKind::Config,
            Self::Other { .. } => ErrorKind::Other,
        }
    }

    /// The object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// True if the same call may succeed later (network, timeout, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    pub(crate) fn config(msg: impl fmt::Display) -> Self {
        Self::Config(msg.to_string())
    }
}

/// Removes every occurrence of each secret (and common encodings of it) from
/// `text`. Applied to every error text that comes from a transport or SDK.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        for form in [s.clone(), percent_encode_all(s)] {
            if out.contains(&form) {
                out = out.replace(&form, "[redacted]");
            }
        }
    }
    out
}

/// One line, whitespace runs collapsed, at most 600 characters: transport
/// errors can carry whole XML bodies.
pub(crate) fn condense(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 600 {
        let mut cut: String = one_line.chars().take(600).collect();
        cut.push('…');
        cut
    } else {
        one_line
    }
}

/// The HTTP status in an object_store error text ("… status code: 403 …").
pub(crate) fn http_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode_all(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_plain_and_encoded_secrets() {
        let secrets = vec!["s3cr/et+key".to_string()];
        let t = "failed: key=s3cr/et+key url=?sig=s3cr%2Fet%2Bkey";
        let s = scrub(t, &secrets);
        assert!(!s.contains("s3cr"), "{s}");
    }

    #[test]
    fn status_and_condense() {
        assert_eq!(
            http_status("Server returned non-2xx status code: 403 Forbidden: <x>"),
            Some(403)
        );
        assert_eq!(http_status("no status"), None);
        assert_eq!(condense("a\n  b\t<c>\n"), "a b <c>");
        assert!(condense(&"x ".repeat(1000)).chars().count() <= 601);
    }

    #[test]
    fn only_transient_is_transient() {
        let t = StorageError::Transient {
            backend: "s3".into(),
            detail: "503".into(),
        };
        assert!(t.is_transient());
        assert!(!StorageError::Config("x".into()).is_transient());
    }
}
