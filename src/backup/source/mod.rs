//! Reading a collection out of Chroma for a backup, and writing records back
//! for a restore.
//!
//! What a backup taken during writes contains: the ids are listed first, in
//! one request; then records are fetched by id in batches. So every record
//! that existed for the whole backup is in it, each in a state it really had
//! during the backup; records created after the listing are not; records
//! deleted meanwhile may be absent. (Paging with `offset` instead would shift
//! pages under concurrent deletes and silently skip survivors.)
//!
//! Memory does not grow with the collection: the listing goes to a
//! temporary file ([`IdList`]), and fetches are sized by bytes
//! ([`FETCH_BATCH_BYTES`]).

mod ids;

pub use ids::{IdList, IdSpool};

use crate::chroma::courtesy::Courtesy;
use crate::chroma::{
    ChromaError, Collection, GetRequest, GetResult, Include, ProductionChromaStore, RecordBatch,
};

use super::records::Record;
use super::BackupError;

/// Most ids fetched per `get` by id (~2–3 MiB of JSON at 384 dimensions).
pub const FETCH_BATCH: usize = 500;
/// Fetches a backup keeps in flight: 2–4 concurrent reads measured
/// 1.2–1.6× one stream against Chroma on 2 cores (DESIGN.md).
pub const FETCH_CONCURRENCY: usize = 3;
/// Decoded bytes a fetch aims for: after the first batch, the number of ids
/// per `get` is set so a batch holds about this much (at most
/// [`FETCH_BATCH`] ids), so wide embeddings or long documents do not make
/// batches, and the batches read ahead, grow with the records.
pub const FETCH_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Decoded bytes a fetch aims for while Chroma writes and the store is
/// courteous (`chroma::courtesy`): a write that arrives during a fetch
/// waits for it, so each is short: 56 records of 384 dimensions with a
/// document, against 500 (whose `get` takes Chroma some 80 ms).
pub const COURTEOUS_FETCH_BYTES: usize = 128 * 1024;
/// Ids in the first fetch, before the record size is known.
const FIRST_BATCH: usize = 32;

/// One batch being fetched: its records and how many ids it asked for.
type Fetch = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Vec<Record>, usize), BackupError>> + Send>,
>;

/// Streams the records of one collection, by id, in listing order.
pub struct CollectionReader {
    store: ProductionChromaStore,
    pub collection: Collection,
    ids: IdList,
    /// The records' mean size so far (`None` before the first batch),
    /// which sizes each fetch.
    record_bytes: Option<usize>,
    /// Records listed but gone by the time they were fetched.
    pub vanished: u64,
}

impl CollectionReader {
    /// Lists every id of `collection` in one request (into a temporary
    /// file, see [`IdList`]).
    pub async fn open(
        store: ProductionChromaStore,
        collection: Collection,
    ) -> Result<Self, BackupError> {
        let ids = IdList::list(&store, &collection.id).await?;
        Ok(CollectionReader {
            store,
            collection,
            ids,
            record_bytes: None,
            vanished: 0,
        })
    }

    /// Reads the records of `ids` listed elsewhere (from the persist
    /// directory: every id, or an incremental's changed ones,
    /// `backup::changes`).
    pub fn from_ids(store: ProductionChromaStore, collection: Collection, ids: IdList) -> Self {
        CollectionReader {
            store,
            collection,
            ids,
            record_bytes: None,
            vanished: 0,
        }
    }

    /// Number of ids listed at the start.
    pub fn listed(&self) -> usize {
        self.ids.len()
    }

    /// Ids fetched so far.
    pub fn position(&self) -> usize {
        self.ids.taken()
    }

    /// The next batch of records, or `None` at the end.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Record>>, BackupError> {
        let Some(fetch) = self.next_fetch()? else {
            return Ok(None);
        };
        let (records, asked) = fetch.await?;
        self.observe(&records, asked);
        Ok(Some(records))
    }

    /// The fetch of the next batch of ids, to await apart from the reader
    /// (several may be in flight), or `None` at the end.
    fn next_fetch(&mut self) -> Result<Option<Fetch>, BackupError> {
        let aim = if self.store.courtesy().is_some_and(Courtesy::writing) {
            COURTEOUS_FETCH_BYTES
        } else {
            FETCH_BATCH_BYTES
        };
        let n = self
            .record_bytes
            .map_or(FIRST_BATCH, |b| next_batch_size(b, aim));
        let wanted = self.ids.next(n)?;
        if wanted.is_empty() {
            return Ok(None);
        }
        let (store, id) = (self.store.clone(), self.collection.id.clone());
        Ok(Some(Box::pin(async move {
            let asked = wanted.len();
            let result = store
                .get_records(&id, &GetRequest::ids(wanted, &Include::RECORD))
                .await?;
            Ok((to_records(result), asked))
        })))
    }

    /// Accounts a fetched batch: records gone since the listing, and the
    /// batch size for records of this size.
    fn observe(&mut self, records: &[Record], asked: usize) {
        self.vanished += (asked - records.len()) as u64;
        if !records.is_empty() {
            let bytes: usize = records.iter().map(Record::approx_bytes).sum();
            self.record_bytes = Some(bytes / records.len());
        }
    }

    /// Sends every batch, in listing order, to `tx`, with up to
    /// `concurrency` fetches in flight (one until the first batch has set
    /// the batch size); stops at the first error (sent) or when `tx` is
    /// closed. Holds at most `concurrency` batches beyond what `tx` holds.
    pub async fn send_all(
        mut self,
        concurrency: usize,
        tx: tokio::sync::mpsc::Sender<Result<Vec<Record>, BackupError>>,
    ) {
        use futures_util::stream::{FuturesOrdered, StreamExt as _};
        let mut inflight = FuturesOrdered::new();
        let mut sized = false;
        loop {
            let limit = if sized { concurrency.max(1) } else { 1 };
            while inflight.len() < limit {
                match self.next_fetch() {
                    Ok(Some(f)) => inflight.push_back(f),
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let Some(done) = inflight.next().await else {
                return;
            };
            let batch = done.map(|(records, asked)| {
                self.observe(&records, asked);
                sized = true;
                records
            });
            let failed = batch.is_err();
            if tx.send(batch).await.is_err() || failed {
                return;
            }
        }
    }
}

/// Ids per fetch of about `aim` bytes for records of about
/// `record_bytes` each.
pub fn next_batch_size(record_bytes: usize, aim: usize) -> usize {
    (aim / record_bytes.max(1)).clamp(1, FETCH_BATCH)
}

/// Every id of a collection, in insertion order, from one `get` without
/// `include` (so the listing is one consistent read). Held in memory: the
/// backup itself uses [`IdList`].
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// An upsert batch back as records (the inverse of [`to_batch`] for records
    /// with embeddings), moving the values rather than copying them.
    fn from_batch(batch: RecordBatch) -> Vec<Record> {
        let n = batch.ids.len();
        fn column<T>(c: Option<Vec<Option<T>>>) -> impl Iterator<Item = Option<T>> {
            c.into_iter()
                .flatten()
                .chain(std::iter::repeat_with(|| None))
        }
        let mut embeddings = batch.embeddings.into_iter().flatten();
        let mut documents = column(batch.documents);
        let mut metadatas = column(batch.metadatas);
        let mut uris = column(batch.uris);
        let mut out = Vec::with_capacity(n);
        for id in batch.ids {
            out.push(Record {
                id,
                embedding: embeddings.next(),
                document: documents.next().flatten(),
                metadata: metadatas.next().flatten(),
                uri: uris.next().flatten(),
            });
        }
        out
    }

    fn listing(json: &str) -> Result<IdList, BackupError> {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(json.as_bytes()).expect("write");
        IdList::from_response(f)
    }

    #[test]
    fn id_listing_is_parsed_from_the_file_in_order() {
        let mut ids = listing(
            r#"{"embeddings":null,"ids":["a","b\"q","ü-é","tab\tx","\ud83d\ude00","c"],"documents":null,"include":[],"metadatas":[{"x":[1,2]}]}"#,
        )
        .expect("parse");
        assert_eq!(ids.len(), 6);
        assert_eq!(ids.next(4).expect("next"), ["a", "b\"q", "ü-é", "tab\tx"]);
        assert_eq!(ids.taken(), 4);
        assert_eq!(ids.next(4).expect("next"), ["😀", "c"]);
        assert!(ids.next(4).expect("next").is_empty());
        assert_eq!(ids.taken(), 6);
    }

    #[test]
    fn a_listing_without_ids_or_cut_short_is_an_error() {
        assert!(listing(r#"{"documents":null}"#).is_err());
        assert!(listing(r#"{"ids":["a","b"#).is_err());
        assert!(listing(r#"{"ids":["a"]} trailing"#).is_err());
        let empty = listing(r#"{"ids":[]}"#).expect("empty");
        assert!(empty.is_empty());
    }

    #[test]
    fn many_ids_round_trip_through_the_file() {
        let n = 50_000;
        let json = format!(
            "{{\"ids\":[{}]}}",
            (0..n)
                .map(|i| format!("\"rec-{i:07}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut ids = listing(&json).expect("parse");
        let mut seen = 0;
        loop {
            let part = ids.next(FETCH_BATCH).expect("next");
            if part.is_empty() {
                break;
            }
            for id in part {
                assert_eq!(id, format!("rec-{seen:07}"));
                seen += 1;
            }
        }
        assert_eq!(seen, n);
    }

    #[test]
    fn batches_are_sized_by_bytes() {
        // 384 dimensions with a document and metadata: the full count.
        assert_eq!(next_batch_size(2_300, FETCH_BATCH_BYTES), FETCH_BATCH);
        // 3,072 dimensions (12 KiB a vector): fewer, about 2 MiB a batch.
        let n = next_batch_size(12_500, FETCH_BATCH_BYTES);
        assert!(n < FETCH_BATCH && n * 12_500 <= FETCH_BATCH_BYTES, "{n}");
        // A record larger than the target still comes, alone.
        assert_eq!(next_batch_size(50 * 1024 * 1024, FETCH_BATCH_BYTES), 1);
        assert_eq!(next_batch_size(0, FETCH_BATCH_BYTES), FETCH_BATCH);
        // While Chroma writes, a sixteenth as much.
        assert_eq!(next_batch_size(2_300, COURTEOUS_FETCH_BYTES), 56);
    }

    #[test]
    fn batch_and_records_convert_both_ways() {
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                id: format!("r{i}"),
                embedding: Some(vec![i as f32, -0.0]),
                document: (i % 2 == 0).then(|| format!("doc {i}")),
                metadata: (i % 3 == 0)
                    .then(|| serde_json::json!({"k": i}).as_object().cloned())
                    .flatten(),
                uri: None,
            })
            .collect();
        let (batch, without) = to_batch(records.clone());
        assert!(without.is_empty());
        let back = from_batch(batch);
        assert_eq!(back.len(), records.len());
        for (a, b) in records.iter().zip(&back) {
            assert!(a.bit_eq(b), "{a:?} != {b:?}");
        }
    }
}
