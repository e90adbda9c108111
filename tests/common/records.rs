//! Seeding collections, and reading a whole collection back for comparing
//! restores with sources.

use std::sync::Arc;

use chromaprod::backup::records::Record;
use chromaprod::chroma::{
    Collection, CreateCollection, GetRequest, Include, ProductionChromaStore, RecordBatch,
};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use serde_json::json;

/// The collection and all its records with every field, sorted by id.
pub async fn collection_records(
    store: &ProductionChromaStore,
    name: &str,
) -> (Collection, Vec<Record>) {
    let col = store.get_collection(name).await.expect("collection");
    let r = store
        .get_records(
            &col.id,
            &GetRequest {
                include: Include::RECORD.to_vec(),
                ..GetRequest::default()
            },
        )
        .await
        .expect("get");
    let mut v = chromaprod::backup::source::to_records(r);
    v.sort_by(|a, b| a.id.cmp(&b.id));
    (col, v)
}

/// A store on `url` with default settings, for seeding and checking.
pub fn store_for(url: &str) -> ProductionChromaStore {
    let mut c = Config::default();
    c.chroma.endpoints = vec![url::Url::parse(url).expect("url")];
    ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new())).expect("store")
}

/// `n` records of `dim` unit-length pseudo-random dimensions in a new l2
/// collection (ids `r000000`…, documents `record i`, metadata `i` and
/// `author`); returns the collection's id.
pub async fn seed(store: &ProductionChromaStore, name: &str, n: usize, dim: usize) -> String {
    seed_with(store, name, n, dim, json!({"hnsw": {"space": "l2"}})).await
}

/// [`seed`] into a collection created with `configuration`.
pub async fn seed_with(
    store: &ProductionChromaStore,
    name: &str,
    n: usize,
    dim: usize,
    configuration: serde_json::Value,
) -> String {
    let col = store
        .create_collection(&CreateCollection {
            name: name.into(),
            metadata: None,
            configuration: Some(configuration),
            get_or_create: false,
        })
        .await
        .expect("create");
    for start in (0..n).step_by(2000) {
        let ids: Vec<usize> = (start..(start + 2000).min(n)).collect();
        let batch = RecordBatch {
            ids: ids.iter().map(|i| format!("r{i:06}")).collect(),
            embeddings: Some(
                ids.iter()
                    .map(|i| {
                        let v: Vec<f32> = (0..dim).map(|j| noise(*i, j)).collect();
                        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                        v.into_iter().map(|x| x / n).collect()
                    })
                    .collect(),
            ),
            documents: Some(ids.iter().map(|i| Some(format!("record {i}"))).collect()),
            metadatas: Some(
                ids.iter()
                    .map(|i| {
                        Some(
                            json!({"i": i, "author": format!("a{}", i % 5)})
                                .as_object()
                                .cloned()
                                .expect("map"),
                        )
                    })
                    .collect(),
            ),
            uris: None,
        };
        store.upsert(&col.id, &batch).await.expect("seed");
    }
    col.id
}

/// A pseudo-random value in [-0.5, 0.5) for (i, j): distinct vectors, no ties.
fn noise(i: usize, j: usize) -> f32 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ ((j as u64) + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 10_000) as f32 / 10_000.0 - 0.5
}
