//! `DenseRetriever`: nearest neighbours by embedding through the store
//! (used by `chromaprod query` and by restore verification).

use serde::Serialize;
use serde_json::Value;

use super::client::{Include, Metadata, QueryRequest};
use super::error::ChromaError;
use super::store::ProductionChromaStore;
use super::GetRequest;

/// One neighbour, nearest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedResult {
    pub id: String,
    /// Distance in the collection's space (`None` if Chroma returned NaN).
    pub distance: Option<f32>,
    pub document: Option<String>,
    pub metadata: Option<Metadata>,
}

/// Query by embedding in one named collection.
#[derive(Debug, Clone)]
pub struct DenseRetriever {
    store: ProductionChromaStore,
    collection: String,
}

impl DenseRetriever {
    pub fn new(store: ProductionChromaStore, collection: impl Into<String>) -> Self {
        DenseRetriever {
            store,
            collection: collection.into(),
        }
    }

    /// The `n` nearest records to `vector`, optionally filtered by `where`.
    pub async fn nearest(
        &self,
        vector: &[f32],
        n: usize,
        where_: Option<Value>,
    ) -> Result<Vec<RankedResult>, ChromaError> {
        let coll = self.store.get_collection(&self.collection).await?;
        let req = QueryRequest {
            query_embeddings: vec![vector.to_vec()],
            n_results: n,
            where_,
            include: vec![Include::Distances, Include::Documents, Include::Metadatas],
        };
        let r = self.store.query(&coll.id, &req).await?;
        let ids = r.ids.into_iter().next().unwrap_or_default();
        let mut distances = r
            .distances
            .and_then(|d| d.into_iter().next())
            .unwrap_or_default()
            .into_iter();
        let mut documents = r
            .documents
            .and_then(|d| d.into_iter().next())
            .unwrap_or_default()
            .into_iter();
        let mut metadatas = r
            .metadatas
            .and_then(|d| d.into_iter().next())
            .unwrap_or_default()
            .into_iter();
        Ok(ids
            .into_iter()
            .map(|id| RankedResult {
                id,
                distance: distances.next().flatten(),
                document: documents.next().flatten(),
                metadata: metadatas.next().flatten(),
            })
            .collect())
    }

    /// The `n` nearest records to the stored embedding of record `id`
    /// (the record itself is usually first, at distance 0).
    pub async fn nearest_to_id(
        &self,
        id: &str,
        n: usize,
    ) -> Result<Vec<RankedResult>, ChromaError> {
        let coll = self.store.get_collection(&self.collection).await?;
        let got = self
            .store
            .get_records(
                &coll.id,
                &GetRequest::ids(vec![id.to_string()], &[Include::Embeddings]),
            )
            .await?;
        let vector = got
            .embeddings
            .and_then(|e| e.into_iter().next())
            .flatten()
            .ok_or_else(|| ChromaError::NotFound {
                operation: "query",
                endpoint: String::new(),
                what: format!(
                    "record {id:?} (or its embedding) in collection {:?}",
                    self.collection
                ),
            })?;
        self.nearest(&vector, n, None).await
    }
}
