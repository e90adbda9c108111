//! `query`: the nearest neighbours of a stored record or of an embedding.

use serde::Serialize;

use super::{CommandError, Context};
use crate::chroma::{DenseRetriever, RankedResult};

/// The `k` nearest records in `collection` to record `id` or to `vector`
/// (exactly one of the two).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub collection: String,
    pub id: Option<String>,
    pub vector: Option<Vec<f32>>,
    pub k: usize,
    /// Whether the caller may read document text; without it, documents
    /// are left out and the outcome says so.
    pub with_documents: bool,
}

impl Query {
    pub(super) async fn run(self, ctx: &Context) -> Result<QueryOutcome, CommandError> {
        let retriever = DenseRetriever::new(ctx.store.clone(), self.collection.clone());
        let hits = match (&self.id, &self.vector) {
            (Some(id), None) => retriever.nearest_to_id(id, self.k).await,
            (None, Some(v)) => retriever.nearest(v, self.k, None).await,
            _ => {
                return Err(CommandError::BadRequest(
                    "give exactly one of id or vector".into(),
                ))
            }
        };
        let mut results = hits?;
        if !self.with_documents {
            for hit in &mut results {
                hit.document = None;
            }
        }
        Ok(QueryOutcome {
            collection: self.collection,
            results,
            documents_withheld: !self.with_documents,
        })
    }
}

/// `{"collection", "results"}`, with `"documents_withheld": true` when the
/// caller may not read document text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryOutcome {
    pub collection: String,
    pub results: Vec<RankedResult>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub documents_withheld: bool,
}
