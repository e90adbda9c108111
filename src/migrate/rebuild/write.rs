//! The rebuild's writes to its copy, and what they cost.
//!
//! Chroma applies writes one at a time, so beside busy writers each write
//! request of the rebuild waits its turn. A catch-up pass therefore counts
//! its write requests and their time ([`Writes`]): a pass whose fixes went
//! as one request cannot be made shorter by another pass (`passes`), and
//! the longest of them says how long a write sent to the old collection
//! just before the swap may still take to land (the settle step waits at
//! least that long, twice over).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::MigrationError;
use crate::backup::compare::overwrite;
use crate::backup::records::Record;
use crate::backup::source::{to_batch, to_records};
use crate::chroma::{GetRequest, Include, ProductionChromaStore, WRITE_REQUEST_BYTES};

/// Records the copy and the change feed's passes fetch and write at a
/// time: what one write request ([`WRITE_REQUEST_BYTES`]) holds of
/// 384-dimensional records with short documents (about 2,200 bytes each in
/// base64). Beside busy writers each write request waits its turn at
/// Chroma, so the copy's and a pass's time follow their requests more than
/// their records (docs/benchmarks.md, run M8: parts of 500 left each pass
/// 0.8 of the one before, parts of 1,500 0.43).
pub(super) const PART: usize = 1_500;
const _: () = assert!(WRITE_REQUEST_BYTES >= PART * 2_200);

/// A pass's write requests to the copy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Writes {
    pub requests: u32,
    /// Their time in all.
    pub time: Duration,
    /// The longest one (a split write's time over its requests).
    pub longest: Duration,
}

impl Writes {
    fn add(&mut self, requests: usize, took: Duration) {
        if requests == 0 {
            return;
        }
        self.requests += requests as u32;
        self.time += took;
        self.longest = self.longest.max(took / requests as u32);
    }
}

/// Upserts `records` into `collection_id` as given.
pub(super) async fn write(
    store: &ProductionChromaStore,
    collection_id: &str,
    records: Vec<Record>,
    writes: &mut Writes,
) -> Result<usize, MigrationError> {
    let (batch, without) = to_batch(records);
    if let Some(r) = without.first() {
        return Err(MigrationError::Verify {
            collection: collection_id.to_string(),
            why: format!(
                "record {:?} has no embedding and cannot be copied (Chroma returned none)",
                r.id
            ),
        });
    }
    let n = batch.len();
    if n > 0 {
        let began = Instant::now();
        let requests = store.upsert(collection_id, &batch).await?;
        writes.add(requests, began.elapsed());
    }
    Ok(n)
}

/// Deletes `ids` from `collection_id`; returns how many Chroma deleted.
pub(super) async fn delete(
    store: &ProductionChromaStore,
    collection_id: &str,
    ids: &[String],
    writes: &mut Writes,
) -> Result<u64, MigrationError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let began = Instant::now();
    let n = store.delete(collection_id, Some(ids), None).await?;
    writes.add(1, began.elapsed());
    Ok(n)
}

/// Upserts `records` (prepared for the copy) over `collection_id`'s stored
/// versions of them, so each ends up exactly as given
/// ([`overwrite`]: metadata keys the source no longer has are removed, and a
/// record whose stored document or uri the source dropped is deleted first).
/// The stored versions are read without their vectors, which [`overwrite`]
/// does not look at.
pub(super) async fn write_over(
    store: &ProductionChromaStore,
    collection_id: &str,
    mut records: Vec<Record>,
    writes: &mut Writes,
) -> Result<usize, MigrationError> {
    if records.is_empty() {
        return Ok(0);
    }
    let ids = records.iter().map(|r| r.id.clone()).collect();
    let without_vectors = [Include::Documents, Include::Metadatas, Include::Uris];
    let stored: HashMap<String, Record> = to_records(
        store
            .get_records(collection_id, &GetRequest::ids(ids, &without_vectors))
            .await?,
    )
    .into_iter()
    .map(|r| (r.id.clone(), r))
    .collect();
    let mut clear = Vec::new();
    for r in &mut records {
        if stored.get(&r.id).is_some_and(|have| overwrite(r, have)) {
            clear.push(r.id.clone());
        }
    }
    delete(store, collection_id, &clear, writes).await?;
    write(store, collection_id, records, writes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_count_requests_and_keep_the_longest() {
        let mut w = Writes::default();
        w.add(0, Duration::from_secs(9));
        assert_eq!(w, Writes::default(), "no request, nothing counted");
        w.add(1, Duration::from_millis(700));
        w.add(2, Duration::from_millis(1_000));
        assert_eq!(w.requests, 3);
        assert_eq!(w.time, Duration::from_millis(1_700));
        assert_eq!(
            w.longest,
            Duration::from_millis(700),
            "a split write: 500 ms each"
        );
        w.add(1, Duration::from_millis(900));
        assert_eq!(w.longest, Duration::from_millis(900));
    }
}
