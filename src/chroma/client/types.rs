//! The request and answer types of Chroma's v2 API, as chromaprod uses them.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

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
}
