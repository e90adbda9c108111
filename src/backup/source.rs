//! Reading a collection out of Chroma for a backup, and writing records back
//! for a restore.
//!
//! What a backup taken during writes contains: the ids are listed first, in
//! one request; then records are fetched by id in batches. So every record
//! that existed for the whole backup is in it, each in a state it really had
//! during the backup; records created after the listing are not; records
//! deleted meanwhile may be absent. (Paging with `offset` instead would shift
//! pages under concurrent deletes and silently skip survivors.)

use crate::chroma::{
    ChromaError, Collection, GetRequest, GetResult, Include, ProductionChromaStore, RecordBatch,
};

use super::records::Record;

/// Ids fetched per `get` by id: ~2–3 MiB of JSON at 384 dimensions.
pub const FETCH_BATCH: usize = 500;

/// Streams the records of one collection, by id, in listing order.
pub struct CollectionReader {
    store: ProductionChromaStore,
    pub collection: Collection,
    ids: Vec<String>,
    pos: usize,
    batch: usize,
    /// Records listed but gone by the time they were fetched.
    pub vanished: u64,
}

impl CollectionReader {
    /// Lists every id of `collection` in one request.
    pub async fn open(
        store: ProductionChromaStore,
        collection: Collection,
    ) -> Result<Self, ChromaError> {
        let ids = list_ids(&store, &collection.id).await?;
        Ok(CollectionReader {
            store,
            collection,
            ids,
            pos: 0,
            batch: FETCH_BATCH,
            vanished: 0,
        })
    }

    /// Number of ids listed at the start.
    pub fn listed(&self) -> usize {
        self.ids.len()
    }

    /// Ids fetched so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next batch of records, or `None` at the end.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Record>>, ChromaError> {
        if self.pos >= self.ids.len() {
            return Ok(None);
        }
        let end = (self.pos + self.batch).min(self.ids.len());
        let wanted = self.ids[self.pos..end].to_vec();
        self.pos = end;
        let result = self
            .store
            .get_records(
                &self.collection.id,
                &GetRequest::ids(wanted.clone(), &Include::RECORD),
            )
            .await?;
        let records = to_records(result);
        self.vanished += (wanted.len() - records.len()) as u64;
        Ok(Some(records))
    }
}

/// Every id of a collection, in insertion order, from one `get` without
/// `include` (so the listing is one consistent read).
pub async fn list_ids(
    store: &ProductionChromaStore,
    collection_id: &str,
) -> Result<Vec<String>, ChromaError> {
    let request = GetRequest {
        include: Vec::new(),
        ..GetRequest::default()
    };
    Ok(store.get_records(collection_id, &request).await?.ids)
}

/// Chroma's column-wise result as records.
pub fn to_records(r: GetResult) -> Vec<Record> {
    let n = r.ids.len();
    let mut embeddings = r.embeddings.map(|v| v.into_iter()).into_iter().flatten();
    let mut documents = r.documents.map(|v| v.into_iter()).into_iter().flatten();
    let mut metadatas = r.metadatas.map(|v| v.into_iter()).into_iter().flatten();
    let mut uris = r.uris.map(|v| v.into_iter()).into_iter().flatten();
    let mut out = Vec::with_capacity(n);
    for id in r.ids {
        out.push(Record {
            id,
            embedding: embeddings.next().flatten(),
            document: documents.next().flatten(),
            metadata: metadatas.next().flatten(),
            uri: uris.next().flatten(),
        });
    }
    out
}

/// Records as one upsert batch (the store splits it under Chroma's limits).
///
/// A record without an embedding cannot be written back as it was (Chroma
/// requires one when others have one): such records are returned separately.
pub fn to_batch(records: Vec<Record>) -> (RecordBatch, Vec<Record>) {
    let (with, without): (Vec<Record>, Vec<Record>) =
        records.into_iter().partition(|r| r.embedding.is_some());
    let mut batch = RecordBatch {
        ids: Vec::with_capacity(with.len()),
        embeddings: Some(Vec::with_capacity(with.len())),
        documents: Some(Vec::with_capacity(with.len())),
        metadatas: Some(Vec::with_capacity(with.len())),
        uris: Some(Vec::with_capacity(with.len())),
    };
    for r in with {
        batch.ids.push(r.id);
        if let (Some(e), Some(v)) = (batch.embeddings.as_mut(), r.embedding) {
            e.push(v);
        }
        if let Some(d) = batch.documents.as_mut() {
            d.push(r.document);
        }
        if let Some(m) = batch.metadatas.as_mut() {
            m.push(r.metadata);
        }
        if let Some(u) = batch.uris.as_mut() {
            u.push(r.uri);
        }
    }
    // Chroma rejects all-null optional columns on some versions; drop them.
    if batch
        .documents
        .as_ref()
        .is_some_and(|d| d.iter().all(Option::is_none))
    {
        batch.documents = None;
    }
    if batch
        .metadatas
        .as_ref()
        .is_some_and(|d| d.iter().all(Option::is_none))
    {
        batch.metadatas = None;
    }
    if batch
        .uris
        .as_ref()
        .is_some_and(|d| d.iter().all(Option::is_none))
    {
        batch.uris = None;
    }
    (batch, without)
}
