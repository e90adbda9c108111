//! Bearer tokens for the GCS JSON API: where they come from (the
//! environment, a credentials file, the metadata server), how a service
//! account signs for one, and a cache that refreshes them before they expire.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::secret::Secret;
use crate::storage::{Result, StorageError};

const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// Where bearer tokens come from, in the order [`TokenSource::from_env`] tries.
pub(super) enum TokenSource {
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

pub(super) struct ServiceAccount {
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
    pub(super) fn from_env(env: &crate::storage::Env, emulator: bool) -> Result<Self> {
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

pub(super) struct Auth {
    pub(super) source: TokenSource,
    /// The current token and when to stop using it.
    pub(super) cache: tokio::sync::Mutex<Option<(Secret<String>, Instant)>>,
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
    pub(super) async fn token(
        &self,
        http: &reqwest::Client,
        backend: &str,
    ) -> Result<Option<Secret<String>>> {
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

    pub(super) async fn invalidate(&self) {
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

pub(super) fn excerpt(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).take(300).collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sources_follow_the_documented_order() {
        let env =
            crate::storage::Env::from_pairs([("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.secret-token")]);
        let src = TokenSource::from_env(&env, true).expect("static token");
        assert!(matches!(src, TokenSource::Static(_)));
        assert!(!format!("{src:?}").contains("ya29"));
        let src = TokenSource::from_env(&crate::storage::Env::default(), true).expect("anonymous");
        assert!(matches!(src, TokenSource::Anonymous));
    }

    #[test]
    fn bad_credentials_files_are_config_errors_without_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sa.json");
        std::fs::write(&p, r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nNOT-A-KEY-SECRET\n-----END PRIVATE KEY-----\n"}"#).expect("write");
        let err = TokenSource::from_file(&p).expect_err("bad key");
        assert_eq!(err.kind(), crate::storage::ErrorKind::Config);
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
