//! The pure comparison and the chunk plan, without servers.

use std::collections::BTreeMap;

use super::tally::{compare, plan_chunks, DiffIds, Tally};
use super::{CollectionDiff, CollectionStatus, DiffOutcome};
use crate::backup::manifest::ChunkRef;
use crate::backup::records::RecordDigest;

fn d(n: u8) -> RecordDigest {
    RecordDigest([n; 16])
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn added_changed_and_removed_are_told_apart_by_id_and_digest() {
    let a = [("a", d(1)), ("b", d(2)), ("c", d(3)), ("d", d(4))];
    // b unchanged, c changed, a and d removed, e and f added (given unsorted).
    let b = [("f", d(6)), ("c", d(9)), ("b", d(2)), ("e", d(5))];
    let t = compare(a, b, true);
    assert_eq!(
        t,
        Tally {
            added: 2,
            changed: 1,
            removed: 2,
            ids: Some(DiffIds {
                added: ids(&["e", "f"]),
                changed: ids(&["c"]),
                removed: ids(&["a", "d"]),
            }),
        }
    );
    // Without ids: the same counts, no lists.
    let t = compare(a, b, false);
    assert_eq!((t.added, t.changed, t.removed, t.ids), (2, 1, 2, None));
}

#[test]
fn equal_and_empty_sides() {
    let a = [("x", d(1)), ("y", d(2))];
    assert_eq!(compare(a, a, false), Tally::default());
    let t = compare([], a, true);
    assert_eq!((t.added, t.removed), (2, 0));
    let t = compare(a, [], true);
    assert_eq!((t.added, t.removed), (0, 2));
    assert_eq!(t.ids.map(|i| i.removed), Some(ids(&["x", "y"])));
}

#[test]
fn a_same_digest_under_another_id_is_a_removal_and_an_addition() {
    // Digests cover the id, but the comparison keys on the id all the same.
    let t = compare([("old", d(1))], [("new", d(1))], false);
    assert_eq!((t.added, t.changed, t.removed), (1, 0, 1));
}

#[test]
fn duplicate_ids_count_once() {
    let t = compare(
        [("a", d(1)), ("a", d(2))],
        [("a", d(1)), ("a", d(1))],
        false,
    );
    assert_eq!((t.added, t.changed, t.removed), (0, 0, 0));
}

fn chunk(id: &str, excluded: &[&str]) -> ChunkRef {
    ChunkRef {
        id: id.into(),
        checksum: String::new(),
        stored_size: 0,
        records: 0,
        index_id: format!("i{id}"),
        index_checksum: String::new(),
        index_stored_size: 0,
        excluded_ids: ids(excluded),
    }
}

/// The records of each chunk, as its index lists them.
fn indexes() -> BTreeMap<&'static str, Vec<(&'static str, RecordDigest)>> {
    BTreeMap::from([
        ("k1", vec![("a", d(1)), ("b", d(2)), ("c", d(3))]),
        ("k2", vec![("d", d(4)), ("e", d(5))]),
        ("k3", vec![("f", d(6)), ("g", d(7))]),
        // An incremental's new chunk: c changed, h new.
        ("k4", vec![("c", d(33)), ("h", d(8))]),
    ])
}

/// The live (id, digest) pairs of a side, all read.
fn live(side: &[ChunkRef]) -> Pairs {
    let idx = indexes();
    side.iter()
        .flat_map(|c| {
            idx[c.id.as_str()]
                .iter()
                .filter(|(id, _)| !c.excluded_ids.iter().any(|x| x == id))
                .copied()
                .collect::<Vec<_>>()
        })
        .collect()
}

type Pairs = Vec<(&'static str, RecordDigest)>;

/// The pairs the plan has each side read, and the chunks it skips.
fn planned(a: &[ChunkRef], b: &[ChunkRef]) -> (Pairs, Pairs, usize) {
    let idx = indexes();
    let plan = plan_chunks(a, b);
    let take = |reads: &[super::tally::IndexRead<'_>]| {
        reads
            .iter()
            .flat_map(|r| {
                idx[r.chunk.id.as_str()]
                    .iter()
                    .filter(|(id, _)| r.keeps(id))
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    (take(&plan.a), take(&plan.b), plan.skipped)
}

#[test]
fn shared_chunks_are_skipped_and_the_result_is_the_full_comparison() {
    // A: k1, k2, k3. B (an incremental of A): k1 with c (changed) and a
    // (deleted) masked, k2 untouched, k3 dropped, k4 new.
    let a = vec![chunk("k1", &[]), chunk("k2", &[]), chunk("k3", &[])];
    let b = vec![chunk("k1", &["a", "c"]), chunk("k2", &[]), chunk("k4", &[])];
    let (pa, pb, skipped) = planned(&a, &b);
    assert_eq!(skipped, 1, "k2 is the same on both sides: not read");
    // Only what differs is read: a and c from k1 (live in A only), f and g
    // from k3, and k4's records.
    let mut read_a: Vec<&str> = pa.iter().map(|(id, _)| *id).collect();
    read_a.sort_unstable();
    assert_eq!(read_a, ["a", "c", "f", "g"]);
    let read_b: Vec<&str> = pb.iter().map(|(id, _)| *id).collect();
    assert_eq!(read_b, ["c", "h"]);
    let fast = compare(pa, pb, true);
    let full = compare(live(&a), live(&b), true);
    assert_eq!(fast, full);
    assert_eq!((fast.added, fast.changed, fast.removed), (1, 1, 3));
    // The other way round: the same categories, swapped.
    let (pa, pb, _) = planned(&b, &a);
    let back = compare(pa, pb, false);
    assert_eq!((back.added, back.changed, back.removed), (3, 1, 1));
}

#[test]
fn a_record_masked_on_the_older_side_and_live_on_the_newer_is_compared() {
    // A masks b in k1; B has it live in k1 again (a diff of newer to older).
    let a = vec![chunk("k1", &["b"])];
    let b = vec![chunk("k1", &[])];
    let (pa, pb, skipped) = planned(&a, &b);
    assert_eq!((pa.len(), pb.len(), skipped), (0, 1, 0));
    let t = compare(pa, pb, true);
    assert_eq!(t.ids.map(|i| i.added), Some(ids(&["b"])));
}

#[test]
fn the_outcome_has_the_documented_shape() {
    let outcome = DiffOutcome {
        from: "0123456789abcdef".into(),
        to: "live".into(),
        collections: vec![
            CollectionDiff {
                collection: "docs".into(),
                status: CollectionStatus::InBoth,
                added: 1,
                changed: 2,
                removed: 3,
                ids: None,
            },
            CollectionDiff {
                collection: "new".into(),
                status: CollectionStatus::Added,
                added: 4,
                changed: 0,
                removed: 0,
                ids: Some(DiffIds {
                    added: ids(&["x"]),
                    ..DiffIds::default()
                }),
            },
        ],
    };
    assert_eq!(
        serde_json::to_value(&outcome).expect("json"),
        serde_json::json!({"from": "0123456789abcdef", "to": "live", "collections": [
            {"collection": "docs", "status": "in_both", "added": 1, "changed": 2, "removed": 3},
            {"collection": "new", "status": "added", "added": 4, "changed": 0, "removed": 0,
             "ids": {"added": ["x"], "changed": [], "removed": []}},
        ]})
    );
}
