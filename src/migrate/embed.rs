//! A client of an OpenAI-compatible `/v1/embeddings` endpoint, for
//! `reembed`. The API key comes from an environment variable and is kept in
//! a [`Secret`]: it never appears in logs, errors or `Debug` output.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::MigrationError;
use crate::secret::Secret;

/// Attempts per request (429, 5xx and connection errors are retried).
const ATTEMPTS: u32 = 5;

pub struct Embedder {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<Secret<String>>,
    dimensions: Option<usize>,
    batch: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
    #[serde(default)]
    index: usize,
}

impl Embedder {
    /// Reads the key from `api_key_env` (if given) now, so a missing key
    /// fails before anything is copied.
    pub fn new(
        url: &str,
        model: &str,
        api_key_env: Option<&str>,
        dimensions: Option<usize>,
        batch: usize,
    ) -> Result<Self, MigrationError> {
        let key = match api_key_env {
            None => None,
            Some(var) => Some(Secret::new(std::env::var(var).map_err(|_| {
                MigrationError::Embedding {
                    url: url.to_string(),
                    why: format!("api_key_env names {var}, which is not set in the daemon's environment (set it with Environment= or an EnvironmentFile=)"),
                }
            })?)),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| MigrationError::Embedding {
                url: url.to_string(),
                why: e.to_string(),
            })?;
        Ok(Embedder {
            http,
            url: url.to_string(),
            model: model.to_string(),
            key,
            dimensions,
            batch: batch.max(1),
        })
    }

    fn fail(&self, why: String) -> MigrationError {
        MigrationError::Embedding {
            url: self.url.clone(),
            why,
        }
    }

    /// One vector per text, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MigrationError> {
        let mut out = Vec::with_capacity(texts.len());
        for part in texts.chunks(self.batch) {
            out.extend(self.embed_one(part).await?);
        }
        Ok(out)
    }

    async fn embed_one(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, MigrationError> {
        let mut body = json!({"model": self.model, "input": texts, "encoding_format": "float"});
        if let Some(d) = self.dimensions {
            body["dimensions"] = json!(d);
        }
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let mut req = self.http.post(&self.url).json(&body);
            if let Some(k) = &self.key {
                req = req.bearer_auth(k.expose());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        let mut a: Answer = serde_json::from_slice(&bytes)
                            .map_err(|e| self.fail(format!("unexpected answer: {e}")))?;
                        if a.data.len() != texts.len() {
                            return Err(self.fail(format!(
                                "{} embeddings for {} inputs",
                                a.data.len(),
                                texts.len()
                            )));
                        }
                        a.data.sort_by_key(|i| i.index);
                        return Ok(a.data.into_iter().map(|i| i.embedding).collect());
                    }
                    let excerpt: String =
                        String::from_utf8_lossy(&bytes).chars().take(200).collect();
                    last = format!("HTTP {status}: {excerpt}");
                    let transient = status.as_u16() == 429 || status.is_server_error();
                    if !transient {
                        let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                            "; check the key in api_key_env"
                        } else {
                            ""
                        };
                        return Err(self.fail(format!("{last}{hint}")));
                    }
                }
                Err(e) => last = format!("request failed: {e}"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(self.fail(format!("gave up after {ATTEMPTS} attempts; last: {last}")))
    }
}
