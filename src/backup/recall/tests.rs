//! The pure parts of the recall check: sampling, scoring, and the queries
//! object (encrypted, checked against its reference).

use super::*;
use crate::backup::crypto::DataKey;
use crate::backup::format::Codec;

fn n(id: &str, d: f32) -> Neighbour {
    Neighbour {
        id: id.into(),
        distance: Some(d),
    }
}

fn recorded(k: usize) -> Vec<Neighbour> {
    (0..k)
        .map(|i| n(&format!("r{i}"), i as f32 * 0.1))
        .collect()
}

#[test]
fn samples_cover_the_collection_once_per_stratum() {
    let p = sample_positions(100_000, 100, 7);
    assert_eq!(p.len(), 100);
    for (i, pos) in p.iter().enumerate() {
        let i = i as u64;
        assert!((i * 1000..(i + 1) * 1000).contains(pos), "{i}: {pos}");
    }
    assert_eq!(p, sample_positions(100_000, 100, 7), "deterministic");
    assert_ne!(p, sample_positions(100_000, 100, 8), "seeded");
    // A collection smaller than the sample: every record once.
    assert_eq!(sample_positions(5, 100, 1), vec![0, 1, 2, 3, 4]);
    assert!(sample_positions(0, 100, 1).is_empty());
    assert!(sample_positions(10, 0, 1).is_empty());
    assert_ne!(
        seed_for("0123456789abcdef", "a"),
        seed_for("0123456789abcdef", "b")
    );
}

#[test]
fn recall_is_the_share_of_recorded_neighbours_returned() {
    let rec = recorded(10);
    assert_eq!(query_recall(&rec, &rec, 10), 1.0);
    // Order does not matter.
    let mut rev = rec.clone();
    rev.reverse();
    assert_eq!(query_recall(&rec, &rev, 10), 1.0);
    // Two recorded neighbours gone, replaced by farther ones: 0.8.
    let mut lost = rec[..8].to_vec();
    lost.push(n("x1", 5.0));
    lost.push(n("x2", 6.0));
    assert!((query_recall(&rec, &lost, 10) - 0.8).abs() < 1e-12);
    // A returned id repeated counts once.
    let dup = vec![rec[0].clone(), rec[0].clone()];
    assert!((query_recall(&rec[..2], &dup, 2) - 0.5).abs() < 1e-12);
    // Fewer recorded than k (a small collection): scored against those.
    assert_eq!(query_recall(&rec[..3], &rec[..3], 10), 1.0);
    // Nothing returned: 0.
    assert_eq!(query_recall(&rec, &[], 10), 0.0);
    assert_eq!(query_recall(&[], &[], 10), 1.0);
}

#[test]
fn a_tie_with_the_kth_neighbour_is_not_a_miss() {
    let rec = recorded(3); // distances 0.0, 0.1, 0.2
                           // `t` is exactly as near as the recorded 3rd: either may come back.
    let tie = vec![rec[0].clone(), rec[1].clone(), n("t", 0.2)];
    assert_eq!(query_recall(&rec, &tie, 3), 1.0);
    // Within float rounding of it (the server rounds cosine vectors).
    let close = vec![rec[0].clone(), rec[1].clone(), n("t", 0.2 + 1e-7)];
    assert_eq!(query_recall(&rec, &close, 3), 1.0);
    // Clearly farther: a miss.
    let far = vec![rec[0].clone(), rec[1].clone(), n("t", 0.21)];
    assert!((query_recall(&rec, &far, 3) - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn the_summary_names_the_worst_query_and_what_it_missed() {
    let rec = recorded(4);
    let q = |id: &str| RecordedQuery {
        id: id.into(),
        vector: vec![1.0, 2.0],
        neighbours: rec.clone(),
    };
    let all = RecordedQueries {
        format: QUERIES_FORMAT,
        k: 4,
        space: "l2".into(),
        records: 40,
        queries: vec![q("a"), q("b"), q("c")],
    };
    let returned = vec![
        rec.clone(),
        vec![rec[0].clone(), rec[1].clone(), n("x", 9.0), n("y", 9.5)],
        vec![rec[0].clone(), rec[1].clone(), rec[2].clone(), n("z", 9.0)],
    ];
    let r = summarize(&all, &returned);
    assert_eq!((r.queries, r.k, r.records_when_recorded), (3, 4, 40));
    assert!((r.recall - (1.0 + 0.5 + 0.75) / 3.0).abs() < 1e-12);
    let w = r.worst.expect("a query fell short");
    assert_eq!(w.id, "b");
    assert!((w.recall - 0.5).abs() < 1e-12);
    assert_eq!(w.missing, vec!["r2".to_string(), "r3".to_string()]);
    let perfect = summarize(&all, &[rec.clone(), rec.clone(), rec.clone()]);
    assert_eq!(perfect.recall, 1.0);
    assert!(perfect.worst.is_none());
}

fn sample_queries() -> RecordedQueries {
    RecordedQueries {
        format: QUERIES_FORMAT,
        k: 2,
        space: "cosine".into(),
        records: 2,
        queries: vec![RecordedQuery {
            id: "secret-record-id-17".into(),
            vector: vec![0.1, -3.5e-20, f32::MIN_POSITIVE, 1.0e30],
            neighbours: vec![
                n("secret-record-id-17", 0.0),
                n("secret-neighbour-42", 0.25),
            ],
        }],
    }
}

#[test]
fn vectors_round_trip_bit_exact_as_base64() {
    let q = sample_queries();
    let json = serde_json::to_string(&q).expect("json");
    let back: RecordedQueries = serde_json::from_str(&json).expect("back");
    assert_eq!(back, q);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back.queries[0].vector), bits(&q.queries[0].vector));
}

#[test]
fn the_queries_object_is_encrypted_and_checked_against_its_reference() {
    let codec = Codec::Encrypted(DataKey::generate().expect("rng"));
    let q = sample_queries();
    let json = serde_json::to_vec(&q).expect("json");
    let e = crate::backup::format::encode(ObjectKind::Queries, &json, &codec).expect("encode");
    for id in ["secret-record-id-17", "secret-neighbour-42"] {
        assert!(
            !e.bytes.windows(id.len()).any(|w| w == id.as_bytes()),
            "{id} is readable in the stored bytes"
        );
    }
    let r = QueriesRef {
        id: e.id.clone(),
        checksum: e.checksum.clone(),
        stored_size: e.bytes.len() as u64,
        queries: 1,
        k: 2,
    };
    assert_eq!(r.decode(&e.bytes, &codec).expect("decodes"), q);
    // Damaged, truncated, or not what the manifest says: refused.
    let mut bad = e.bytes.clone();
    let last = bad.len() - 20;
    bad[last] ^= 1;
    assert!(r.decode(&bad, &codec).is_err());
    assert!(r.decode(&e.bytes[..e.bytes.len() - 1], &codec).is_err());
    let wrong = QueriesRef {
        queries: 2,
        ..r.clone()
    };
    let why = wrong.decode(&e.bytes, &codec).expect_err("count differs");
    assert!(why.contains("manifest says 2"), "{why}");
    // Without the key it cannot be read.
    assert!(r.decode(&e.bytes, &Codec::Plain).is_err());
}

use crate::backup::format::ObjectKind;
