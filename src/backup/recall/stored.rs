//! The recorded queries of one collection as a repository object
//! (`queries/<id[..2]>/<id>`, kind `queries`), encrypted and checksummed
//! like chunks, and referenced from the collection in the manifest.

use serde::{Deserialize, Serialize};

use super::RecordedQueries;
use crate::backup::format::{self, Codec, ObjectKind};
use crate::backup::repository::{queries_key, Repository};
use crate::backup::BackupError;

/// Largest queries object, decompressed ([`ObjectKind::Queries`]'s limit).
pub const MAX_QUERIES_BYTES: usize = format::MAX_QUERIES;

/// A collection's recorded queries as a snapshot references them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueriesRef {
    /// Content address of the object (`queries/<id[..2]>/<id>`).
    pub id: String,
    /// Hex SHA-256 of the stored bytes.
    pub checksum: String,
    pub stored_size: u64,
    /// Queries recorded.
    pub queries: u64,
    /// Neighbours recorded per query.
    pub k: u64,
}

impl QueriesRef {
    /// Encodes `recorded` (off the async threads) and stores it unless an
    /// equal object is there. Returns the reference and the bytes written.
    pub async fn store(
        repo: &Repository,
        mut recorded: RecordedQueries,
    ) -> Result<(QueriesRef, u64), BackupError> {
        let codec = repo.codec.clone();
        let (r, encoded) = tokio::task::spawn_blocking(move || {
            let mut json = serde_json::to_vec(&recorded).map_err(|e| malformed(&e))?;
            if json.len() > MAX_QUERIES_BYTES {
                let keep = recorded.queries.len() * MAX_QUERIES_BYTES / json.len() * 9 / 10;
                tracing::warn!(
                    recorded = recorded.queries.len(),
                    kept = keep,
                    "the recorded queries exceed the queries object's size limit; keeping the first ones (lower backup.verify_queries or backup.verify_k)"
                );
                recorded.queries.truncate(keep);
                json = serde_json::to_vec(&recorded).map_err(|e| malformed(&e))?;
            }
            let encoded = format::encode(ObjectKind::Queries, &json, &codec)?;
            let r = QueriesRef {
                id: encoded.id.clone(),
                checksum: encoded.checksum.clone(),
                stored_size: encoded.bytes.len() as u64,
                queries: recorded.queries.len() as u64,
                k: recorded.k as u64,
            };
            Ok::<_, BackupError>((r, encoded))
        })
        .await
        .map_err(|e| BackupError::Corrupt(e.to_string()))??;
        let key = queries_key(&r.id)?;
        let written = repo.put(&key, encoded).await?;
        if written > 0 {
            return Ok((r, written));
        }
        // An equal object was there (an earlier snapshot recorded the same
        // answers): its stored bytes, not this encoding, are what the
        // manifest must describe.
        let bytes = repo.get(&key, ObjectKind::Queries.max_stored()).await?;
        format::verify_self(&bytes).map_err(|e| BackupError::BadObject {
            object: key.as_str().to_string(),
            why: format!(
                "{e} (an existing object is damaged; delete it so the next backup rewrites it)"
            ),
        })?;
        let stored = QueriesRef {
            checksum: format::checksum(&bytes),
            stored_size: bytes.len() as u64,
            ..r
        };
        Ok((stored, 0))
    }

    /// Reads and checks the object (size, checksum, content address) and
    /// decodes the queries.
    pub async fn load(&self, repo: &Repository) -> Result<RecordedQueries, BackupError> {
        let key = queries_key(&self.id)?;
        let bytes = repo.get(&key, self.stored_size).await?;
        let codec = repo.codec.clone();
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.decode(&bytes, &codec))
            .await
            .map_err(|e| BackupError::Corrupt(e.to_string()))?
            .map_err(|why| BackupError::BadObject {
                object: key.as_str().to_string(),
                why,
            })
    }

    /// The queries in `stored`, checked against this reference.
    pub fn decode(&self, stored: &[u8], codec: &Codec) -> Result<RecordedQueries, String> {
        if stored.len() as u64 != self.stored_size {
            return Err(format!(
                "{} bytes stored, {} expected (truncated or replaced)",
                stored.len(),
                self.stored_size
            ));
        }
        format::verify_stored(stored, &self.checksum).map_err(|e| e.to_string())?;
        let q: RecordedQueries =
            format::decode_json(stored, ObjectKind::Queries, codec, Some(&self.id))
                .map_err(|e| e.to_string())?;
        if q.format != super::QUERIES_FORMAT {
            return Err(format!(
                "queries format {} is not supported (this chromaprod reads {}); upgrade chromaprod",
                q.format,
                super::QUERIES_FORMAT
            ));
        }
        if q.queries.len() as u64 != self.queries || q.k as u64 != self.k {
            return Err(format!(
                "it holds {} queries with k = {}, the manifest says {} with k = {}",
                q.queries.len(),
                q.k,
                self.queries,
                self.k
            ));
        }
        Ok(q)
    }
}

fn malformed(e: &serde_json::Error) -> BackupError {
    BackupError::Format(format::FormatError::Malformed {
        what: "queries object".into(),
        why: e.to_string(),
    })
}
