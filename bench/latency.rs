//! Latency of `ProductionChromaStore` against a bare reqwest client, side by
//! side, on a real Chroma server (`chroma run`, found like the tests find it).
//!
//! `cargo bench --bench latency` (N per case: `LATENCY_N`, default 500).
//! Prints a markdown table of p50/p99 and the store/bare ratio.

#[path = "../tests/common/chroma.rs"]
#[allow(dead_code)]
mod chroma_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chromaprod::chroma::{
    CreateCollection, GetRequest, Include, ProductionChromaStore, QueryRequest, RecordBatch,
};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Alternate `a` and `b` (so drift and noise hit both alike); p50 and p99 of each.
async fn measure_pair<A, FA, B, FB>(n: usize, mut a: A, mut b: B) -> [(Duration, Duration); 2]
where
    A: FnMut() -> FA,
    FA: std::future::Future<Output = ()>,
    B: FnMut() -> FB,
    FB: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        a().await; // warm-up
        b().await;
    }
    let (mut sa, mut sb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        a().await;
        sa.push(t.elapsed());
        let t = Instant::now();
        b().await;
        sb.push(t.elapsed());
    }
    sa.sort();
    sb.sort();
    [
        (percentile(&sa, 0.5), percentile(&sa, 0.99)),
        (percentile(&sb, 0.5), percentile(&sb, 0.99)),
    ]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: usize = std::env::var("LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let server = chroma_server::ChromaServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut c = Config::default();
        c.chroma.endpoints = vec![server.url()];
        let store = ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new()))
            .expect("store");
        store.check_ready().await.expect("ready");
        let coll = store
            .create_collection(&CreateCollection {
                name: "bench".into(),
                configuration: Some(json!({"hnsw": {"space": "l2"}})),
                ..CreateCollection::default()
            })
            .await
            .expect("create");
        let dim = 384;
        let records = 2000;
        let vec_of = |i: usize| -> Vec<f32> {
            (0..dim).map(|j| ((i * 7 + j * 13) % 101) as f32 / 101.0).collect()
        };
        store
            .upsert(
                &coll.id,
                &RecordBatch {
                    ids: (0..records).map(|i| format!("id{i}")).collect(),
                    embeddings: Some((0..records).map(vec_of).collect()),
                    documents: Some((0..records).map(|i| Some(format!("document {i}"))).collect()),
                    ..RecordBatch::default()
                },
            )
            .await
            .expect("seed");

        let get = GetRequest::ids(
            (0..10).map(|i| format!("id{}", i * 100)).collect(),
            &[Include::Documents, Include::Metadatas],
        );
        let query = QueryRequest {
            query_embeddings: vec![vec_of(42)],
            n_results: 10,
            where_: None,
            include: vec![Include::Distances, Include::Documents],
        };
        let bare = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let base = server
            .url()
            .join(&format!(
                "api/v2/tenants/default_tenant/databases/default_database/collections/{}/",
                coll.id
            ))
            .expect("url");
        let get_body = serde_json::to_vec(&get).expect("json");
        let query_body = serde_json::to_vec(&query).expect("json");

        let mut rows = Vec::new();
        for (name, path, body) in [("get 10 by id", "get", &get_body), ("query k=10", "query", &query_body)] {
            let url = base.join(path).expect("url");
            let [(sp50, sp99), (bp50, bp99)] = measure_pair(
                n,
                || async {
                    if path == "get" {
                        store.get_records(&coll.id, &get).await.expect("get");
                    } else {
                        store.query(&coll.id, &query).await.expect("query");
                    }
                },
                || async {
                    let r = bare
                        .post(url.clone())
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("send");
                    assert!(r.status().is_success());
                    let _: serde_json::Value = r.json().await.expect("json");
                },
            )
            .await;
            rows.push((name, sp50, sp99, bp50, bp99));
        }
        println!("\n{n} sequential requests per case (store and bare alternating), Chroma 1.5 on 127.0.0.1, {records} x {dim} l2 collection\n");
        println!("| request | store p50 ms | store p99 ms | bare p50 ms | bare p99 ms | p50 ratio | p99 ratio |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (name, sp50, sp99, bp50, bp99) in rows {
            println!(
                "| {name} | {} | {} | {} | {} | {:.2} | {:.2} |",
                ms(sp50),
                ms(sp99),
                ms(bp50),
                ms(bp99),
                sp50.as_secs_f64() / bp50.as_secs_f64(),
                sp99.as_secs_f64() / bp99.as_secs_f64()
            );
        }
        drop(server);
    });
}
