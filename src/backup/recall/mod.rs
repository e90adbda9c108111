//! Recall-verified snapshots: at backup time, sample queries and the
//! neighbours the live index returned for them; after a restore, the same
//! queries against the restored collection, scored as recall@k.
//!
//! The two drivers take a store and a collection and know nothing of the
//! snapshot's format, so any kind of snapshot can use them: [`record`]
//! samples stored vectors uniformly over the collection and records the
//! live index's answers, [`check`] replays them. Storing the recorded
//! queries as one repository object per collection is `stored.rs`; the
//! scoring is the pure [`query_recall`] and [`summarize`].
//!
//! What the recorded neighbours mean under writes: they are the index's
//! answers at one moment, just after the collection's records were read. A
//! record written after the id listing may be among them although the
//! snapshot lacks it, and one deleted meanwhile may be in the snapshot but
//! missing from them; either lowers the recall a restore of that snapshot
//! reports, though the restore is faithful. `records` (the live count when
//! the queries ran) tells such a snapshot apart: it differs from the
//! snapshot's record count.

mod snapshot;
mod stored;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::source::{IdList, FETCH_BATCH};
use super::BackupError;

use crate::chroma::configuration::space_of;
use crate::chroma::{
    ChromaError, Collection, GetRequest, Include, ProductionChromaStore, QueryRequest,
};

pub use snapshot::{CollectionRecall, RecallOptions, RecallVerifyReport};
pub use stored::{QueriesRef, MAX_QUERIES_BYTES};

/// Version of the queries object's JSON layout.
pub const QUERIES_FORMAT: u32 = 1;
/// Default `backups verify --recall --min-recall`: see `docs/runbook.md`.
/// Below 1.0 on purpose: an HNSW index is approximate and its graph depends
/// on the order records were inserted in, which a restore does not
/// reproduce; on large collections a faithful restore answers a few of the
/// k neighbours differently. Lost records cost far more (a fifth of the
/// records lost: about 0.8).
pub const DEFAULT_MIN_RECALL: f64 = 0.95;
/// Query vectors per `query` request: few, so each request is short and a
/// write that reaches Chroma meanwhile waits less for it (25 in runs up to
/// L6; 5 since run C9 in docs/benchmarks.md).
const QUERY_BATCH: usize = 5;
/// Ids read from the listing at a time while picking the sample.
const LISTING_STEP: usize = 10_000;

/// One neighbour as the index returned it, nearest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    pub id: String,
    /// Distance in the collection's space; `None` where Chroma returned none.
    pub distance: Option<f32>,
}

/// One recorded query: a stored vector and the index's answer to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedQuery {
    /// The record whose stored vector is the query.
    pub id: String,
    /// The vector, as little-endian f32 in base64 (exact, and a third of
    /// the size of JSON numbers).
    #[serde(with = "vector_base64")]
    pub vector: Vec<f32>,
    /// The `k` nearest neighbours the live index returned, nearest first.
    pub neighbours: Vec<Neighbour>,
}

/// The recorded queries of one collection (the plaintext of a `queries`
/// object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedQueries {
    pub format: u32,
    /// Neighbours asked for per query (`backup.verify_k`, at most the
    /// collection's size).
    pub k: usize,
    /// The collection's distance space.
    pub space: String,
    /// Live records when the queries ran.
    pub records: u64,
    pub queries: Vec<RecordedQuery>,
}

/// How a collection answered its recorded queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecallReport {
    pub queries: u64,
    pub k: u64,
    /// Mean over the queries of |returned ∩ recorded| / k (a returned
    /// neighbour as near as the recorded k-th counts: a tie, not a miss).
    pub recall: f64,
    /// The query with the lowest recall (the first of equals), if any fell short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<WorstQuery>,
    /// Live records when the queries were recorded.
    pub records_when_recorded: u64,
}

/// The query that fared worst.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorstQuery {
    /// The record whose vector was the query.
    pub id: String,
    pub recall: f64,
    /// Recorded neighbours the collection no longer returned.
    pub missing: Vec<String>,
}

/// The recall check of one collection, as a restore or a verify reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecallCheck {
    /// The recorded queries ran.
    Checked(RecallReport),
    /// The snapshot recorded no queries for the collection (taken before
    /// chromaprod recorded them, with `backup.verify_queries = 0`, or the
    /// collection was empty): nothing to check.
    NotRecorded,
    /// The queries could not be run (after a restore that itself succeeded).
    Failed { why: String },
}

impl RecallCheck {
    /// The recall, when checked.
    pub fn recall(&self) -> Option<f64> {
        match self {
            RecallCheck::Checked(r) => Some(r.recall),
            RecallCheck::NotRecorded | RecallCheck::Failed { .. } => None,
        }
    }
}

/// `n` positions in `0..count`, one drawn from each of `n` equal strata
/// (so the sample covers the whole collection), in order, distinct, the same
/// for the same `seed`.
pub fn sample_positions(count: u64, n: usize, seed: u64) -> Vec<u64> {
    let n = (n as u64).min(count);
    let mut state = seed;
    (0..n)
        .map(|i| {
            let lo = (u128::from(i) * u128::from(count) / u128::from(n)) as u64;
            let hi = (u128::from(i + 1) * u128::from(count) / u128::from(n)) as u64;
            lo + splitmix64(&mut state) % (hi - lo).max(1)
        })
        .collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    let out = crate::chroma::local::mix(*state);
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    out
}

/// A sampling seed from a snapshot id and a collection name.
pub fn seed_for(snapshot: &str, collection: &str) -> u64 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{snapshot}\0{collection}").as_bytes(),
    );
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b)
}

/// Recall of one query: the share of the recorded neighbours (at most `k`)
/// among the first `k` returned. A returned neighbour that was not recorded
/// but is as near as the farthest recorded one (within float rounding)
/// counts too: equal distances may come back in either order, and the
/// server rounds stored cosine vectors. Without recorded neighbours: 1.0.
pub fn query_recall(recorded: &[Neighbour], returned: &[Neighbour], k: usize) -> f64 {
    let recorded = &recorded[..recorded.len().min(k)];
    if recorded.is_empty() {
        return 1.0;
    }
    let ids: HashSet<&str> = recorded.iter().map(|n| n.id.as_str()).collect();
    let radius = recorded
        .iter()
        .filter_map(|n| n.distance)
        .fold(None, |m: Option<f32>, d| Some(m.map_or(d, |m| m.max(d))));
    let tie = |n: &Neighbour| match (radius, n.distance) {
        (Some(r), Some(d)) => f64::from(d) <= f64::from(r) + f64::from(r.abs()) * 1e-5 + 1e-7,
        _ => false,
    };
    let mut seen = HashSet::new();
    let hits = returned
        .iter()
        .take(k)
        .filter(|n| seen.insert(n.id.as_str()) && (ids.contains(n.id.as_str()) || tie(n)))
        .count();
    hits.min(recorded.len()) as f64 / recorded.len() as f64
}

/// The report over all queries, from each query's recorded and returned
/// neighbours.
pub fn summarize(recorded: &RecordedQueries, returned: &[Vec<Neighbour>]) -> RecallReport {
    let mut total = 0.0;
    let mut worst: Option<(f64, usize)> = None;
    for (i, (q, got)) in recorded.queries.iter().zip(returned).enumerate() {
        let r = query_recall(&q.neighbours, got, recorded.k);
        total += r;
        if r < 1.0 && worst.is_none_or(|(w, _)| r < w) {
            worst = Some((r, i));
        }
    }
    let n = recorded.queries.len();
    let worst = worst.map(|(r, i)| {
        let q = &recorded.queries[i];
        let got: HashSet<&str> = returned[i].iter().map(|n| n.id.as_str()).collect();
        WorstQuery {
            id: q.id.clone(),
            recall: r,
            missing: q
                .neighbours
                .iter()
                .filter(|n| !got.contains(n.id.as_str()))
                .map(|n| n.id.clone())
                .collect(),
        }
    });
    RecallReport {
        queries: n as u64,
        k: recorded.k as u64,
        recall: if n == 0 { 1.0 } else { total / n as f64 },
        worst,
        records_when_recorded: recorded.records,
    }
}

/// Samples up to `sample` stored vectors of `collection`, uniformly over it
/// (positions from `seed` in one id listing, kept in a temporary file), and
/// records the `k` neighbours the live index returns for each. `None` when
/// there is nothing to record (`sample` or `k` is 0, or the collection is
/// empty). Vectors that are not finite, and records deleted between the
/// listing and the fetch, are left out.
///
/// Cost: one id listing (`listing`: over HTTP, or from a local Chroma's
/// files, which costs the server nothing), one `get` of the sampled records
/// by id (per 500), one `query` per 25 samples.
pub async fn record(
    store: &ProductionChromaStore,
    collection: &Collection,
    mut listing: IdList,
    sample: usize,
    k: usize,
    seed: u64,
) -> Result<Option<RecordedQueries>, BackupError> {
    if sample == 0 || k == 0 {
        return Ok(None);
    }
    let count = listing.len();
    if count == 0 {
        return Ok(None);
    }
    let mut wanted = sample_positions(count as u64, sample, seed)
        .into_iter()
        .peekable();
    let mut picked_ids = Vec::new();
    while wanted.peek().is_some() {
        let at = listing.taken() as u64;
        let ids = listing.next(LISTING_STEP)?;
        if ids.is_empty() {
            break;
        }
        let end = at + ids.len() as u64;
        while let Some(p) = wanted.next_if(|p| *p < end) {
            if let Some(id) = usize::try_from(p - at).ok().and_then(|i| ids.get(i)) {
                picked_ids.push(id.clone());
            }
        }
    }
    drop(listing);
    record_picked(store, collection, picked_ids, count as u64, k).await
}

/// Records the `k` neighbours the live index returns for each of
/// `picked_ids` (a sample of a collection of `count` records), fetching
/// their stored vectors. `None` when `count` or `k` is 0. Records deleted
/// since they were picked, and vectors that are not finite, are left out.
pub async fn record_picked(
    store: &ProductionChromaStore,
    collection: &Collection,
    picked_ids: Vec<String>,
    count: u64,
    k: usize,
) -> Result<Option<RecordedQueries>, BackupError> {
    if count == 0 || k == 0 {
        return Ok(None);
    }
    let mut picked: Vec<(String, Vec<f32>)> = Vec::with_capacity(picked_ids.len());
    for ids in picked_ids.chunks(FETCH_BATCH) {
        let got = store
            .get_records(
                &collection.id,
                &GetRequest::ids(ids.to_vec(), &[Include::Embeddings]),
            )
            .await?;
        let mut by_id: HashMap<String, Vec<f32>> = got
            .ids
            .into_iter()
            .zip(got.embeddings.unwrap_or_default())
            .filter_map(|(id, e)| e.map(|e| (id, e)))
            .collect();
        // In sample order (Chroma may answer in another).
        picked.extend(
            ids.iter()
                .filter_map(|id| by_id.remove(id).map(|v| (id.clone(), v))),
        );
    }
    picked.retain(|(_, v)| !v.is_empty() && v.iter().all(|x| x.is_finite()));
    let k = k.min(usize::try_from(count).unwrap_or(usize::MAX));
    let vectors: Vec<Vec<f32>> = picked.iter().map(|(_, v)| v.clone()).collect();
    let answers = run_queries(store, &collection.id, &vectors, k).await?;
    let queries = picked
        .into_iter()
        .zip(answers)
        .map(|((id, vector), neighbours)| RecordedQuery {
            id,
            vector,
            neighbours,
        })
        .collect();
    Ok(Some(RecordedQueries {
        format: QUERIES_FORMAT,
        k,
        space: space_of(&collection.configuration_json).to_string(),
        records: count,
        queries,
    }))
}

/// Runs `recorded` against the collection `collection_id` and scores the
/// answers.
pub async fn check(
    store: &ProductionChromaStore,
    collection_id: &str,
    recorded: &RecordedQueries,
) -> Result<RecallReport, ChromaError> {
    let count = store.count(collection_id).await?;
    let k = recorded.k.min(usize::try_from(count).unwrap_or(usize::MAX));
    let vectors: Vec<Vec<f32>> = recorded.queries.iter().map(|q| q.vector.clone()).collect();
    let answers = if k == 0 {
        vec![Vec::new(); vectors.len()]
    } else {
        run_queries(store, collection_id, &vectors, k).await?
    };
    Ok(summarize(recorded, &answers))
}

/// The `k` nearest neighbours of each vector, in order.
async fn run_queries(
    store: &ProductionChromaStore,
    collection_id: &str,
    vectors: &[Vec<f32>],
    k: usize,
) -> Result<Vec<Vec<Neighbour>>, ChromaError> {
    let mut out = Vec::with_capacity(vectors.len());
    for batch in vectors.chunks(QUERY_BATCH) {
        let req = QueryRequest {
            query_embeddings: batch.to_vec(),
            n_results: k,
            where_: None,
            include: vec![Include::Distances],
        };
        let r = store.query(collection_id, &req).await?;
        let mut distances = r.distances.unwrap_or_default().into_iter();
        let mut ids = r.ids.into_iter();
        for _ in batch {
            let ids = ids.next().unwrap_or_default();
            let mut d = distances.next().unwrap_or_default().into_iter();
            out.push(
                ids.into_iter()
                    .map(|id| Neighbour {
                        id,
                        distance: d.next().flatten(),
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// A vector as base64 of its little-endian f32 values.
mod vector_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::custom(
                "a vector's length is not a multiple of 4 bytes",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
