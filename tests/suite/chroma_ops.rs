//! Every typed Chroma operation round-trips against a real server.

use crate::common;

use std::sync::Arc;

use chromaprod::chroma::{
    plan_batches, ChromaError, CreateCollection, DenseRetriever, GetRequest, Include,
    ModifyCollection, ProductionChromaStore, RecordBatch, WRITE_REQUEST_BYTES,
};
use chromaprod::config::Config;
use chromaprod::observe::MetricsCollector;
use common::chroma::ChromaServer;
use serde_json::json;

fn store(server: &ChromaServer) -> ProductionChromaStore {
    let mut c = Config::default();
    c.chroma.endpoints = vec![server.url()];
    ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new())).expect("store")
}

/// Deterministic awkward floats: negatives, tiny, large, many digits.
fn vector(i: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| {
            let x = ((i * 31 + j * 17) % 97) as f32 / 7.0 - 6.5;
            x * 1.000_001_f32.powi((i + j) as i32) + 1e-7 * j as f32
        })
        .collect()
}

#[tokio::test]
async fn typed_operations_round_trip() {
    let server = ChromaServer::start();
    let s = store(&server);

    let info = s.check_ready().await.expect("ready");
    assert_eq!(info.api_version, "1.0.0");
    assert!(info.max_batch_size > 0);
    assert!(info.supports_base64_encoding);
    s.healthcheck().await.expect("healthy");
    assert_eq!(s.version().await.expect("version"), "1.0.0");

    // Create with configuration and metadata.
    let created = s
        .create_collection(&CreateCollection {
            name: "ops-l2".into(),
            metadata: Some(
                json!({"owner": "tests", "n": 1})
                    .as_object()
                    .cloned()
                    .expect("should succeed"),
            ),
            configuration: Some(json!({"hnsw": {"space": "l2", "ef_search": 50}})),
            get_or_create: false,
        })
        .await
        .expect("create");
    assert_eq!(created.name, "ops-l2");
    let dup = s
        .create_collection(&CreateCollection {
            name: "ops-l2".into(),
            ..CreateCollection::default()
        })
        .await
        .expect_err("duplicate");
    assert_eq!(dup.status(), Some(409));

    // List keeps configuration_json, schema and metadata verbatim.
    let list = s.list_collections().await.expect("list");
    let c = list.iter().find(|c| c.name == "ops-l2").expect("listed");
    assert_eq!(c.configuration_json["hnsw"]["space"], "l2");
    assert_eq!(c.configuration_json["hnsw"]["ef_search"], 50);
    let schema = c.schema.as_ref().expect("schema");
    assert_eq!(
        schema["keys"]["#embedding"]["float_list"]["vector_index"]["config"]["space"],
        "l2"
    );
    assert_eq!(
        c.metadata.as_ref().expect("should succeed")["owner"],
        "tests"
    );

    // Upsert with base64 embeddings; read back bit-exact (l2 collection).
    let n = 50;
    let dim = 16;
    let batch = RecordBatch {
        ids: (0..n).map(|i| format!("r{i:03}")).collect(),
        embeddings: Some((0..n).map(|i| vector(i, dim)).collect()),
        documents: Some(
            (0..n)
                .map(|i| (i % 3 != 0).then(|| format!("doc é {i}")))
                .collect(),
        ),
        metadatas: Some(
            (0..n)
                .map(|i| {
                    (i % 4 != 0).then(|| {
                        json!({"i": i, "s": "ü"})
                            .as_object()
                            .cloned()
                            .expect("should succeed")
                    })
                })
                .collect(),
        ),
        uris: Some(
            (0..n)
                .map(|i| (i % 5 == 0).then(|| format!("s3://b/{i}")))
                .collect(),
        ),
    };
    s.upsert(&created.id, &batch).await.expect("upsert");
    assert_eq!(s.count(&created.id).await.expect("count"), n as u64);

    // A page by limit/offset, in insertion order.
    let page = s
        .get_records(&created.id, &GetRequest::page(10, 5, &Include::RECORD))
        .await
        .expect("page");
    assert_eq!(page.ids, batch.ids[10..15].to_vec());
    let embs = page.embeddings.as_ref().expect("embeddings");
    for (k, i) in (10..15).enumerate() {
        let want: Vec<u32> = vector(i, dim).iter().map(|x| x.to_bits()).collect();
        let got: Vec<u32> = embs[k]
            .as_ref()
            .expect("vector")
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(got, want, "record {i} bit-exact");
    }
    // r012 has no document (None kept as null), r011 has one.
    assert_eq!(page.documents.as_ref().expect("should succeed")[2], None);
    assert_eq!(
        page.documents.as_ref().expect("should succeed")[1],
        Some("doc é 11".to_string())
    );
    assert_eq!(
        page.uris.as_ref().expect("should succeed")[0],
        Some("s3://b/10".to_string())
    );
    assert_eq!(
        page.metadatas.as_ref().expect("should succeed")[1]
            .as_ref()
            .expect("should succeed")["i"],
        11
    );

    // By ids (missing ids are simply absent).
    let by_id = s
        .get_records(
            &created.id,
            &GetRequest::ids(vec!["r007".into(), "nope".into()], &[Include::Documents]),
        )
        .await
        .expect("by ids");
    assert_eq!(by_id.ids, vec!["r007"]);
    assert!(by_id.embeddings.is_none());

    // Query through DenseRetriever: ranked nearest first.
    let retriever = DenseRetriever::new(s.clone(), "ops-l2");
    let ranked = retriever
        .nearest(&vector(20, dim), 5, None)
        .await
        .expect("query");
    assert_eq!(ranked.len(), 5);
    assert_eq!(ranked[0].id, "r020");
    assert_eq!(ranked[0].distance, Some(0.0));
    assert!(ranked.windows(2).all(|w| w[0].distance <= w[1].distance));
    assert_eq!(ranked[0].document.as_deref(), Some("doc é 20"));
    let by_record = retriever.nearest_to_id("r030", 3).await.expect("by id");
    assert_eq!(by_record[0].id, "r030");

    // Delete by ids and by where.
    let gone = s
        .delete(
            &created.id,
            Some(&["r000".to_string(), "r001".to_string()]),
            None,
        )
        .await
        .expect("delete ids");
    assert_eq!(gone, 2);
    let gone = s
        .delete(&created.id, None, Some(&json!({"i": 2})))
        .await
        .expect("delete where");
    assert_eq!(gone, 1);
    assert_eq!(s.count(&created.id).await.expect("count"), n as u64 - 3);

    // Modify ef_search in place, then rename with new metadata.
    s.modify_collection(
        &created.id,
        &ModifyCollection {
            new_configuration: Some(json!({"hnsw": {"ef_search": 77}})),
            ..ModifyCollection::default()
        },
    )
    .await
    .expect("modify ef_search");
    let c = s.get_collection("ops-l2").await.expect("get");
    assert_eq!(c.configuration_json["hnsw"]["ef_search"], 77);
    let err = s
        .modify_collection(
            &created.id,
            &ModifyCollection {
                new_configuration: Some(json!({"hnsw": {"space": "cosine"}})),
                ..ModifyCollection::default()
            },
        )
        .await
        .expect_err("space cannot change");
    assert!(!err.is_transient());
    s.modify_collection(
        &created.id,
        &ModifyCollection {
            new_name: Some("ops-renamed".into()),
            new_metadata: Some(
                json!({"owner": "renamed"})
                    .as_object()
                    .cloned()
                    .expect("should succeed"),
            ),
            ..ModifyCollection::default()
        },
    )
    .await
    .expect("rename");
    let err = s.get_collection("ops-l2").await.expect_err("old name gone");
    assert!(matches!(err, ChromaError::NotFound { .. }), "{err}");
    let renamed = s.get_collection("ops-renamed").await.expect("new name");
    assert_eq!(renamed.id, created.id);
    assert_eq!(
        renamed.metadata.expect("should succeed")["owner"],
        "renamed"
    );

    // Delete the collection.
    s.delete_collection("ops-renamed")
        .await
        .expect("delete collection");
    let err = s
        .delete_collection("ops-renamed")
        .await
        .expect_err("already gone");
    assert_eq!(err.status(), Some(404));
    assert!(s.list_collections().await.expect("list").is_empty());
}

#[tokio::test]
async fn missing_database_is_reported_at_readiness() {
    let server = ChromaServer::start();
    let mut c = Config::default();
    c.chroma.endpoints = vec![server.url()];
    c.chroma.database = "no_such_db".into();
    let s = ProductionChromaStore::new(&c, Arc::new(MetricsCollector::new())).expect("store");
    let err = s.check_ready().await.expect_err("database missing");
    assert!(matches!(err, ChromaError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("chroma.database"), "{err}");
}

#[tokio::test]
async fn large_upserts_are_split_into_batches() {
    let server = ChromaServer::start();
    let s = store(&server);
    let pf = s.pre_flight_checks().await.expect("pre-flight");
    let coll = s
        .create_collection(&CreateCollection {
            name: "ops-batches".into(),
            ..CreateCollection::default()
        })
        .await
        .expect("create");
    // More records than max_batch_size: at least two requests.
    let n = pf.max_batch_size + 100;
    let batch = RecordBatch {
        ids: (0..n).map(|i| format!("id{i}")).collect(),
        embeddings: Some((0..n).map(|i| vec![i as f32, 1.0]).collect()),
        ..RecordBatch::default()
    };
    let sent = s.upsert(&coll.id, &batch).await.expect("upsert");
    assert_eq!(sent, 2);
    assert_eq!(s.count(&coll.id).await.expect("count"), n as u64);

    // Documents of ~8 MiB each: the 40 MiB body limit forces splitting.
    let big = "x".repeat(8 * 1024 * 1024);
    let batch = RecordBatch {
        ids: (0..6).map(|i| format!("big{i}")).collect(),
        embeddings: Some((0..6).map(|i| vec![i as f32, 2.0]).collect()),
        documents: Some(vec![Some(big); 6]),
        ..RecordBatch::default()
    };
    let sent = s.upsert(&coll.id, &batch).await.expect("upsert big");
    assert!(sent >= 2, "split under 40 MiB: {sent}");
    assert_eq!(s.count(&coll.id).await.expect("count"), n as u64 + 6);

    // 3,000 vectors of 384 dimensions (about 6 MiB of base64), far fewer
    // than max_batch_size: split by bytes, at about WRITE_REQUEST_BYTES.
    let wide = s
        .create_collection(&CreateCollection {
            name: "ops-wide".into(),
            ..CreateCollection::default()
        })
        .await
        .expect("create");
    let batch = RecordBatch {
        ids: (0..3000).map(|i| format!("wide{i}")).collect(),
        embeddings: Some((0..3000).map(|i| vec![i as f32; 384]).collect()),
        ..RecordBatch::default()
    };
    let planned = plan_batches(
        &batch,
        pf.max_batch_size,
        WRITE_REQUEST_BYTES,
        pf.supports_base64_encoding,
    );
    assert!(planned.len() >= 2, "{planned:?}");
    let sent = s.add_all(&wide.id, &batch).await.expect("add wide");
    assert_eq!(sent, planned.len());
    assert_eq!(s.count(&wide.id).await.expect("count"), 3000);
    let back = s
        .get_records(
            &wide.id,
            &GetRequest::ids(vec!["wide2999".into()], &[Include::Embeddings]),
        )
        .await
        .expect("get");
    let e = back.embeddings.expect("embeddings");
    assert_eq!(e[0].as_deref(), Some(&[2999.0f32; 384][..]));
}

/// Chroma 1.5 turns a cosine vector with huge values into NaN and returns
/// it as `[null, null, …]`: the decoder keeps it (as NaN) instead of failing.
#[tokio::test]
async fn nan_vectors_from_the_server_decode() {
    let server = ChromaServer::start();
    let s = store(&server);
    let coll = s
        .create_collection(&CreateCollection {
            name: "ops-cosine".into(),
            configuration: Some(json!({"hnsw": {"space": "cosine"}})),
            ..CreateCollection::default()
        })
        .await
        .expect("create");
    s.upsert(
        &coll.id,
        &RecordBatch {
            ids: vec!["huge".into(), "fine".into()],
            embeddings: Some(vec![vec![3e38, 3e38, 1.0], vec![1.0, 0.0, 0.0]]),
            ..RecordBatch::default()
        },
    )
    .await
    .expect("upsert");
    let got = s
        .get_records(&coll.id, &GetRequest::page(0, 10, &[Include::Embeddings]))
        .await
        .expect("get decodes null vectors");
    let e = got.embeddings.expect("embeddings");
    let huge = e[0].as_ref().expect("vector of nulls is kept");
    assert_eq!(huge.len(), 3);
    assert!(huge.iter().all(|x| x.is_nan()), "{huge:?}");
    assert_eq!(e[1], Some(vec![1.0, 0.0, 0.0]));
}
