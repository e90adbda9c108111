//! The neighbour check of a rebuild: how well the new collection's nearest
//! neighbours reproduce the old one's, judged in the old metric.

use std::collections::HashSet;

use super::tracker::fetch;
use super::MigrationError;
use crate::chroma::configuration::space_of;
use crate::chroma::{Collection, Include, ProductionChromaStore, QueryRequest};

/// Distance as Chroma defines it for `space`: squared L2, or 1 − the
/// inner product, or 1 − the cosine similarity.
pub fn distance(space: &str, a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    match space {
        "ip" => 1.0 - dot,
        "cosine" => {
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            1.0 - dot / (na * nb).max(f64::MIN_POSITIVE)
        }
        _ => a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum(),
    }
}

/// How well `new` neighbours reproduce `old` neighbours for one query,
/// judged in the old collection's metric: a neighbour counts when it is in
/// the old top-k or at least as near as the old k-th neighbour (so ties
/// and duplicate vectors are not misses).
pub fn neighbour_overlap(
    space: &str,
    query: &[f32],
    old: &[(&str, &[f32])],
    new: &[(&str, &[f32])],
    k: usize,
) -> f64 {
    if k == 0 || old.is_empty() {
        return 1.0;
    }
    let old_ids: HashSet<&str> = old.iter().map(|(id, _)| *id).collect();
    let radius = old
        .iter()
        .map(|(_, v)| distance(space, query, v))
        .fold(f64::MIN, f64::max);
    let slack = radius.abs() * 1e-5 + 1e-9;
    let hits = new
        .iter()
        .filter(|(id, v)| old_ids.contains(id) || distance(space, query, v) <= radius + slack)
        .count();
    hits.min(k) as f64 / k.min(old.len()) as f64
}

/// Mean neighbour overlap (see [`neighbour_overlap`]) of `sample` stored
/// vectors, spread over the collection, between `a` and `b`.
pub async fn overlap(
    store: &ProductionChromaStore,
    a: &Collection,
    b: &Collection,
    ids: &[String],
    sample: usize,
    k: usize,
) -> Result<f64, MigrationError> {
    if ids.is_empty() {
        return Ok(1.0);
    }
    let old_space = space_of(&a.configuration_json);
    let step = (ids.len() / sample.max(1)).max(1);
    let picked: Vec<String> = ids.iter().step_by(step).take(sample).cloned().collect();
    let vectors: Vec<Vec<f32>> = fetch(store, &a.id, picked)
        .await?
        .into_iter()
        .filter_map(|r| r.embedding)
        .filter(|e| e.iter().all(|x| x.is_finite()))
        .collect();
    if vectors.is_empty() {
        return Ok(1.0);
    }
    let k = k.min(ids.len());
    let mut total = 0.0;
    for chunk in vectors.chunks(25) {
        let req = QueryRequest {
            query_embeddings: chunk.to_vec(),
            n_results: k,
            where_: None,
            include: vec![Include::Embeddings],
        };
        let (ra, rb) = tokio::try_join!(store.query(&a.id, &req), store.query(&b.id, &req))?;
        let (ea, eb) = (
            ra.embeddings.unwrap_or_default(),
            rb.embeddings.unwrap_or_default(),
        );
        for (qi, q) in chunk.iter().enumerate() {
            let pairs = |ids: &Vec<Vec<String>>,
                         es: &Vec<Vec<Option<Vec<f32>>>>|
             -> Vec<(String, Vec<f32>)> {
                ids.get(qi)
                    .into_iter()
                    .flatten()
                    .zip(es.get(qi).into_iter().flatten())
                    .filter_map(|(id, e)| e.clone().map(|e| (id.clone(), e)))
                    .collect()
            };
            let (old, new) = (pairs(&ra.ids, &ea), pairs(&rb.ids, &eb));
            let old: Vec<(&str, &[f32])> = old
                .iter()
                .map(|(i, e)| (i.as_str(), e.as_slice()))
                .collect();
            let new: Vec<(&str, &[f32])> = new
                .iter()
                .map(|(i, e)| (i.as_str(), e.as_slice()))
                .collect();
            total += neighbour_overlap(old_space, q, &old, &new, k);
        }
    }
    Ok(total / vectors.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_counts_ties_and_misses() {
        let q = [0.0f32, 0.0];
        let (a, b, c, d) = ([1.0f32, 0.0], [0.0f32, 1.0], [2.0f32, 0.0], [0.0f32, -1.0]);
        // Same neighbours: full overlap.
        let old = [("a", &a[..]), ("b", &b[..])];
        assert_eq!(neighbour_overlap("l2", &q, &old, &old, 2), 1.0);
        // `d` ties with `b` (same distance): not a miss.
        let tie = [("a", &a[..]), ("d", &d[..])];
        assert_eq!(neighbour_overlap("l2", &q, &old, &tie, 2), 1.0);
        // `c` is farther than the old k-th neighbour: a miss.
        let worse = [("a", &a[..]), ("c", &c[..])];
        assert_eq!(neighbour_overlap("l2", &q, &old, &worse, 2), 0.5);
        assert!((distance("cosine", &a, &c)).abs() < 1e-12);
        assert!((distance("ip", &a, &b) - 1.0).abs() < 1e-12);
        assert!((distance("l2", &a, &c) - 1.0).abs() < 1e-12);
    }
}
