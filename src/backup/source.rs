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

use std::fs::File;
use std::io::{BufReader, BufWriter, Read as _, Seek as _, Write as _};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::chroma::{
    ChromaError, Collection, GetRequest, GetResult, Include, ProductionChromaStore, RecordBatch,
};

use super::records::Record;
use super::BackupError;

/// Most ids fetched per `get` by id (~2–3 MiB of JSON at 384 dimensions).
pub const FETCH_BATCH: usize = 500;
/// Decoded bytes a fetch aims for: after the first batch, the number of ids
/// per `get` is set so a batch holds about this much (at most
/// [`FETCH_BATCH`] ids), so wide embeddings or long documents do not make
/// batches, and the batches read ahead, grow with the records.
pub const FETCH_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Ids in the first fetch, before the record size is known.
const FIRST_BATCH: usize = 32;

/// Streams the records of one collection, by id, in listing order.
pub struct CollectionReader {
    store: ProductionChromaStore,
    pub collection: Collection,
    ids: IdList,
    batch: usize,
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
            batch: FIRST_BATCH,
            vanished: 0,
        })
    }

    /// Reads the records of `ids` (a change-aware incremental's changed
    /// ids, `backup::changes`).
    pub fn from_ids(store: ProductionChromaStore, collection: Collection, ids: IdList) -> Self {
        CollectionReader {
            store,
            collection,
            ids,
            batch: FIRST_BATCH,
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
        let wanted = self.ids.next(self.batch)?;
        if wanted.is_empty() {
            return Ok(None);
        }
        let asked = wanted.len();
        let result = self
            .store
            .get_records(
                &self.collection.id,
                &GetRequest::ids(wanted, &Include::RECORD),
            )
            .await?;
        let records = to_records(result);
        self.vanished += (asked - records.len()) as u64;
        if !records.is_empty() {
            let bytes: usize = records.iter().map(Record::approx_bytes).sum();
            self.batch = next_batch_size(bytes / records.len());
        }
        Ok(Some(records))
    }
}

/// Ids per fetch for records of about `record_bytes` each.
pub fn next_batch_size(record_bytes: usize) -> usize {
    (FETCH_BATCH_BYTES / record_bytes.max(1)).clamp(1, FETCH_BATCH)
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

/// The ids of a collection as one listing returned them, kept in a
/// temporary file rather than in memory, and handed out in order.
///
/// The response is written to an unnamed temporary file as it arrives, then
/// parsed as a stream into a second one (each id as a little-endian `u32`
/// length and its bytes), so neither the response nor the ids are ever held
/// in memory whole: a backup's memory does not grow with the number of
/// records. Both files live in `$TMPDIR` (else `/tmp`) and disappear when
/// closed, also after a crash.
pub struct IdList {
    file: BufReader<File>,
    len: usize,
    taken: usize,
}

fn spool(e: std::io::Error) -> BackupError {
    BackupError::Spool(e)
}

impl IdList {
    /// Lists every id of `collection_id` in one `get` without `include`.
    pub async fn list(
        store: &ProductionChromaStore,
        collection_id: &str,
    ) -> Result<Self, BackupError> {
        let body = tempfile::tempfile().map_err(spool)?;
        let request = GetRequest {
            include: Vec::new(),
            ..GetRequest::default()
        };
        store
            .get_records_to_file(collection_id, &request, &body)
            .await?;
        tokio::task::spawn_blocking(move || Self::from_response(body))
            .await
            .map_err(|e| BackupError::Corrupt(format!("listing ids failed: {e}")))?
    }

    /// Parses a `get` response (`{"ids":[…],…}`) held in `body`.
    pub fn from_response(mut body: File) -> Result<Self, BackupError> {
        body.rewind().map_err(spool)?;
        let spill = tempfile::tempfile().map_err(spool)?;
        let mut out = BufWriter::new(&spill);
        let mut de =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, body));
        let decode = |e: serde_json::Error| {
            BackupError::Chroma(ChromaError::Decode {
                operation: "get",
                endpoint: String::new(),
                detail: format!("the id listing: {e}"),
            })
        };
        let mut written = Ok(());
        let len = Response {
            out: &mut out,
            written: &mut written,
        }
        .deserialize(&mut de)
        .map_err(decode)?;
        written.map_err(spool)?;
        de.end().map_err(decode)?;
        out.flush().map_err(spool)?;
        drop(out);
        let mut spill = spill;
        spill.rewind().map_err(spool)?;
        Ok(IdList {
            file: BufReader::with_capacity(64 * 1024, spill),
            len,
            taken: 0,
        })
    }

    /// Number of ids listed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ids handed out so far.
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// The next (at most) `n` ids; empty at the end.
    pub fn next(&mut self, n: usize) -> Result<Vec<String>, BackupError> {
        let n = n.min(self.len - self.taken);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut len = [0u8; 4];
            self.file.read_exact(&mut len).map_err(spool)?;
            let len = u32::from_le_bytes(len) as usize;
            let mut id = vec![0u8; len];
            self.file.read_exact(&mut id).map_err(spool)?;
            let id = String::from_utf8(id)
                .map_err(|e| spool(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            out.push(id);
        }
        self.taken += out.len();
        Ok(out)
    }
}

/// Writes ids one by one into a new [`IdList`] (the same temporary-file
/// form a listing takes).
pub struct IdSpool {
    out: BufWriter<File>,
    len: usize,
}

impl IdSpool {
    pub fn new() -> Result<Self, BackupError> {
        Ok(IdSpool {
            out: BufWriter::with_capacity(64 * 1024, tempfile::tempfile().map_err(spool)?),
            len: 0,
        })
    }

    pub fn push(&mut self, id: &str) -> Result<(), BackupError> {
        let len = u32::try_from(id.len()).map_err(|_| {
            spool(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a record id longer than 4 GiB",
            ))
        })?;
        self.out.write_all(&len.to_le_bytes()).map_err(spool)?;
        self.out.write_all(id.as_bytes()).map_err(spool)?;
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Result<IdList, BackupError> {
        let mut file = self.out.into_inner().map_err(|e| spool(e.into_error()))?;
        file.rewind().map_err(spool)?;
        Ok(IdList {
            file: BufReader::with_capacity(64 * 1024, file),
            len: self.len,
            taken: 0,
        })
    }
}

/// The top-level object of a `get` response: its `ids` go to `out`, every
/// other member is skipped. Yields the number of ids.
struct Response<'a, W> {
    out: &'a mut W,
    written: &'a mut std::io::Result<()>,
}

impl<'de, W: std::io::Write> DeserializeSeed<'de> for Response<'_, W> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, W: std::io::Write> Visitor<'de> for Response<'_, W> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a get response object with ids")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut count = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "ids" && count.is_none() {
                count = Some(map.next_value_seed(Ids {
                    out: &mut *self.out,
                    written: &mut *self.written,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        count.ok_or_else(|| serde::de::Error::missing_field("ids"))
    }
}

struct Ids<'a, W> {
    out: &'a mut W,
    written: &'a mut std::io::Result<()>,
}

impl<'de, W: std::io::Write> DeserializeSeed<'de> for Ids<'_, W> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, W: std::io::Write> Visitor<'de> for Ids<'_, W> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of record ids")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0usize;
        while let Some(id) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
            let len = u32::try_from(id.len())
                .map_err(|_| serde::de::Error::custom("a record id longer than 4 GiB"))?;
            if self.written.is_ok() {
                *self.written = self
                    .out
                    .write_all(&len.to_le_bytes())
                    .and_then(|()| self.out.write_all(id.as_bytes()));
            }
            n += 1;
        }
        Ok(n)
    }
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
        assert_eq!(next_batch_size(2_300), FETCH_BATCH);
        // 3,072 dimensions (12 KiB a vector): fewer, about 2 MiB a batch.
        let n = next_batch_size(12_500);
        assert!(n < FETCH_BATCH && n * 12_500 <= FETCH_BATCH_BYTES, "{n}");
        // A record larger than the target still comes, alone.
        assert_eq!(next_batch_size(50 * 1024 * 1024), 1);
        assert_eq!(next_batch_size(0), FETCH_BATCH);
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
