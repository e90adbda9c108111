use super::*;
use crate::backup::crypto::to_hex;
use proptest::prelude::*;

pub(crate) fn synthetic(i: usize, dim: usize) -> Record {
    let mut m = Map::new();
    m.insert("n".into(), Value::from(i as i64));
    m.insert("score".into(), Value::from(i as f64 / 7.0));
    m.insert("tag".into(), Value::from(format!("t{}", i % 13)));
    Record {
        id: format!("doc-{i:06}"),
        embedding: Some((0..dim).map(|j| ((i * 31 + j) as f32).sin()).collect()),
        document: Some(format!("document number {i} about things")),
        metadata: Some(m),
        uri: None,
    }
}

fn f32_any() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<u32>().prop_map(f32::from_bits), // includes NaN payloads, subnormals
        Just(-0.0f32),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MIN_POSITIVE / 2.0),
        any::<f32>(),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(i64::MIN)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(u64::MAX)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(Value::from(-0.0f64)),
        Just(Value::from(f64::MIN_POSITIVE / 3.0)),
        ".*".prop_map(Value::from),
    ]
}

fn record_any() -> impl Strategy<Value = Record> {
    (
        ".*",
        proptest::option::of(proptest::collection::vec(f32_any(), 0..16)),
        proptest::option::of(".*"),
        proptest::option::of(proptest::collection::btree_map(".*", json_leaf(), 0..6)),
        proptest::option::of(".*"),
    )
        .prop_map(|(id, embedding, document, metadata, uri)| Record {
            id,
            embedding,
            document,
            metadata: metadata.map(|m| m.into_iter().collect()),
            uri,
        })
}

fn unique(records: Vec<Record>) -> Vec<Record> {
    let mut seen = HashSet::new();
    records
        .into_iter()
        .filter(|r| seen.insert(r.id.clone()))
        .collect()
}

#[test]
fn special_floats_round_trip_bit_exactly() {
    let nan_payload = f32::from_bits(0x7fc0_1234);
    let r = Record {
        id: "x".into(),
        embedding: Some(vec![
            nan_payload,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(1),
            f32::MAX,
        ]),
        document: Some(String::new()),
        metadata: Some(Map::new()),
        uri: Some("s3://b/k".into()),
    };
    let back = decode_chunk(&encode_chunk(std::slice::from_ref(&r)).expect("enc")).expect("dec");
    assert!(back[0].bit_eq(&r));
    let e = back[0].embedding.as_ref().expect("emb");
    assert_eq!(e[0].to_bits(), 0x7fc0_1234);
    assert_eq!(e[1].to_bits(), (-0.0f32).to_bits());
}

#[test]
fn none_and_empty_are_distinct() {
    let a = Record {
        id: "a".into(),
        ..Record::default()
    };
    let b = Record {
        id: "a".into(),
        embedding: Some(vec![]),
        document: Some(String::new()),
        metadata: Some(Map::new()),
        uri: Some(String::new()),
    };
    let back = decode_chunk(&encode_chunk(std::slice::from_ref(&a)).expect("enc")).expect("dec");
    assert_eq!(back[0], a);
    let back = decode_chunk(&encode_chunk(std::slice::from_ref(&b)).expect("enc")).expect("dec");
    assert_eq!(back[0], b);
    assert_ne!(record_digest(&a), record_digest(&b));
}

#[test]
fn metadata_types_are_kept() {
    let json = r#"{"i":1,"f":1.0,"b":true,"s":"1","big":9007199254740993,"neg":-9223372036854775808,"tiny":5e-324}"#;
    let m: Map<String, Value> = serde_json::from_str(json).expect("json");
    let r = Record {
        id: "m".into(),
        metadata: Some(m.clone()),
        ..Record::default()
    };
    let back = decode_chunk(&encode_chunk(&[r]).expect("enc")).expect("dec");
    let bm = back[0].metadata.as_ref().expect("meta");
    assert!(bm["i"].is_i64());
    assert!(bm["f"].is_f64());
    assert!(bm["b"].is_boolean());
    assert!(bm["s"].is_string());
    assert_eq!(bm["big"].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(bm["neg"].as_i64(), Some(i64::MIN));
    assert_eq!(bm["tiny"].as_f64().map(f64::to_bits), Some(1));
    // 1 and 1.0 digest differently.
    let with = |v: Value| Record {
        id: "m".into(),
        metadata: Some([("k".to_string(), v)].into_iter().collect()),
        ..Record::default()
    };
    assert_ne!(
        record_digest(&with(Value::from(1))),
        record_digest(&with(Value::from(1.0)))
    );
}

#[test]
fn digest_is_pinned() {
    // These values are part of the format: a change here means every
    // incremental after an upgrade rewrites everything. Bump the record
    // digest version instead of editing them.
    let empty = record_digest(&Record {
        id: "a".into(),
        ..Record::default()
    });
    assert_eq!(to_hex(&empty.0), "b57e56b70f77277776e6acf95e1a2e09");
    let full = Record {
        id: "doc-1".into(),
        embedding: Some(vec![1.5, -0.0, f32::from_bits(0x7fc0_0001)]),
        document: Some("héllo".into()),
        metadata: Some(
            serde_json::from_str(r#"{"z":1,"a":2.5,"b":true,"s":"x","n":null,"l":[1,"2"]}"#)
                .expect("json"),
        ),
        uri: Some("file:///x".into()),
    };
    assert_eq!(to_hex(&record_digest(&full).0), PINNED_FULL_DIGEST);
}

const PINNED_FULL_DIGEST: &str = "9e0bcbeacbe7a8b1ba7f42c66a862329";

#[test]
fn digest_ignores_metadata_key_order_and_sees_every_field() {
    let mut a = synthetic(5, 8);
    let mut rev = Map::new();
    let meta = a.metadata.clone().expect("meta");
    for (k, v) in meta.iter().rev() {
        rev.insert(k.clone(), v.clone());
    }
    let mut b = a.clone();
    b.metadata = Some(rev);
    assert_eq!(record_digest(&a), record_digest(&b));
    let base = record_digest(&a);
    a.document = Some("changed".into());
    assert_ne!(record_digest(&a), base);
    let mut c = synthetic(5, 8);
    if let Some(e) = c.embedding.as_mut() {
        e[3] = f32::from_bits(e[3].to_bits() ^ 1); // one ulp
    }
    assert_ne!(record_digest(&c), base);
    let mut z = synthetic(5, 8);
    z.uri = Some(String::new());
    assert_ne!(record_digest(&z), base);
}

#[test]
fn planner_is_deterministic_and_matches_encode_chunk() {
    let records: Vec<Record> = (0..2000).map(|i| synthetic(i, 16)).collect();
    let plan = |rs: &[Record]| {
        let mut p = ChunkPlanner::new(32 * 1024, 10_000);
        let mut out = Vec::new();
        for r in rs {
            out.extend(p.push(r).expect("push"));
        }
        out.extend(p.finish());
        out
    };
    let a = plan(&records);
    let b = plan(&records);
    assert_eq!(a, b);
    assert!(a.len() > 5);
    let mut start = 0;
    for c in &a {
        let n = c.records();
        assert_eq!(
            c.plaintext,
            encode_chunk(&records[start..start + n]).expect("enc")
        );
        assert!(c.plaintext.len() <= 4 * 32 * 1024 + 2048);
        assert_eq!(
            c.index,
            ChunkIndex::from_records(&records[start..start + n])
        );
        start += n;
    }
    assert_eq!(start, records.len());
    // Deleting one early record: most later chunks are unchanged.
    let mut fewer = records.clone();
    fewer.remove(10);
    let c = plan(&fewer);
    let before: HashSet<&Vec<u8>> = a.iter().map(|c| &c.plaintext).collect();
    let shared = c.iter().filter(|c| before.contains(&c.plaintext)).count();
    assert!(
        shared + 3 >= a.len(),
        "{shared} of {} chunks shared",
        a.len()
    );
}

#[test]
fn planner_caps_record_count_and_takes_huge_records_alone() {
    let mut p = ChunkPlanner::new(1 << 30, 3);
    let rs: Vec<Record> = (0..7).map(|i| synthetic(i, 2)).collect();
    let mut sizes = Vec::new();
    for r in &rs {
        if let Some(c) = p.push(r).expect("push") {
            sizes.push(c.records());
        }
    }
    sizes.extend(p.finish().map(|c| c.records()));
    assert_eq!(sizes, vec![3, 3, 1]);
    let mut p = ChunkPlanner::new(100, 1000);
    let c = p.push(&synthetic(0, 512)).expect("push").expect("closes");
    assert_eq!(c.records(), 1);
    assert!(p.finish().is_none());
}

#[test]
fn planner_buffer_never_outgrows_the_chunk_ceiling() {
    // Records of ~1.6 KiB into 64 KiB chunks: the ceiling is 256 KiB.
    let target = 64 * 1024;
    let mut p = ChunkPlanner::new(target, 1_000_000);
    let mut largest = 0;
    for i in 0..3_000 {
        let mut r = synthetic(i, 384);
        r.id = format!("x{i}"); // ids unlikely to close early don't matter: the cap does
        largest = largest.max(p.buf.capacity());
        if let Some(c) = p.push(&r).expect("push") {
            assert!(c.plaintext.len() <= 4 * target + 4096);
        }
        largest = largest.max(p.buf.capacity());
    }
    assert!(largest <= 4 * target + 4096, "buffer grew to {largest}");
}

#[test]
fn index_round_trip() {
    let rs: Vec<Record> = (0..10).map(|i| synthetic(i, 3)).collect();
    let idx = ChunkIndex::from_records(&rs);
    assert_eq!(
        ChunkIndex::decode(&idx.encode().expect("enc")).expect("dec"),
        idx
    );
    assert!(ChunkIndex::decode(br#"{"format":2,"entries":[]}"#).is_err());
    assert!(ChunkIndex::decode(br#"{"format":1,"entries":[["a","00"]]}"#).is_err());
}

#[test]
fn chunk_rejects_duplicates_and_unknown_versions() {
    let r = synthetic(1, 2);
    let dup = encode_chunk(&[r.clone(), r]).expect("enc");
    assert!(decode_chunk(&dup).is_err());
    assert!(matches!(
        decode_chunk(br#"{"format":9,"records":[]}"#),
        Err(FormatError::UnsupportedContentVersion { found: 9, .. })
    ));
    assert!(decode_chunk(br#"{"format":1,"records":[{"id":"a","embedding":"AAA="}]}"#).is_err());
    for bad in [r#""!!!!""#, "[1.0]", "7"] {
        let chunk = format!(r#"{{"format":1,"records":[{{"id":"a","embedding":{bad}}}]}}"#);
        let err = decode_chunk(chunk.as_bytes()).expect_err(bad);
        assert!(matches!(err, FormatError::Malformed { .. }), "{bad}: {err}");
    }
    let none = decode_chunk(br#"{"format":1,"records":[{"id":"a","embedding":null},{"id":"b"}]}"#)
        .expect("a null or absent embedding is none");
    assert!(none.iter().all(|r| r.embedding.is_none()));
    let one = decode_chunk(br#"{"format":1,"records":[{"id":"a","embedding":"AACAPw=="}]}"#)
        .expect("one float");
    assert_eq!(one[0].embedding.as_deref(), Some(&[1.0f32][..]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn chunk_round_trip_is_bit_exact(records in proptest::collection::vec(record_any(), 0..8)) {
        let records = unique(records);
        let bytes = encode_chunk(&records).expect("enc");
        let back = decode_chunk(&bytes).expect("dec");
        prop_assert_eq!(back.len(), records.len());
        for (a, b) in records.iter().zip(&back) {
            prop_assert!(a.bit_eq(b), "{:?} != {:?}", a, b);
            prop_assert_eq!(record_digest(a), record_digest(b));
        }
        // Deterministic.
        prop_assert_eq!(encode_chunk(&back).expect("enc"), bytes);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_chunk(&bytes);
        let _ = ChunkIndex::decode(&bytes);
    }

    #[test]
    fn corrupted_chunks_never_panic(records in proptest::collection::vec(record_any(), 1..4), pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let records = unique(records);
        let mut bytes = encode_chunk(&records).expect("enc");
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_chunk(&bytes);
        let n = cut.index(bytes.len());
        prop_assert!(decode_chunk(&bytes[..n]).is_err());
        let idx = ChunkIndex::from_records(&records).encode().expect("enc");
        let n = cut.index(idx.len());
        prop_assert!(ChunkIndex::decode(&idx[..n]).is_err());
    }
}
