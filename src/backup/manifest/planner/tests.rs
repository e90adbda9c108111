use std::collections::{HashMap, HashSet};

use super::*;
use crate::backup::format::Codec;
use crate::backup::manifest::tests::{manifest, sid, write_chunks};
use crate::backup::manifest::{ChunkRef, DEFAULT_COMPACT_THRESHOLD};
use crate::backup::records::tests::synthetic;
use crate::backup::records::{record_digest, Record};
use proptest::prelude::*;

// The planner before it streamed: ids in maps, every current (id,
// digest) pair at once. Kept as the reference the streaming planner is
// checked against.
/// What an incremental backup of one collection must do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncrementalPlan {
    /// Parent chunks to reference again, with merged exclusions.
    pub keep: Vec<KeptChunk>,
    /// Ids whose current records go into new chunks, in the order they
    /// were seen: changed, new, and those moved out of compacted chunks.
    pub write_ids: Vec<String>,
    /// Ids present in the parent with a different digest.
    pub changed_ids: Vec<String>,
    /// Ids absent from the parent.
    pub new_ids: Vec<String>,
    /// Parent ids absent now.
    pub deleted_ids: Vec<String>,
    /// Parent chunks dropped (fully superseded, or compacted), by id.
    pub dropped_chunks: Vec<String>,
    /// Unchanged ids rewritten because their chunk was compacted.
    pub compacted_ids: Vec<String>,
}

/// Plans an incremental backup of one collection.
///
/// `parent` is the parent snapshot's chunk references for the collection
/// with their indexes; `current` yields every (id, digest) the collection
/// holds now, in the order the engine read it. Unchanged records stay
/// where they are; a changed or deleted record is masked in its old chunk
/// (`excluded_ids`); changed and new records are written to new chunks.
/// A kept chunk whose excluded fraction would exceed `compact_threshold`
/// is dropped and its remaining live records rewritten, so old chunks do
/// not linger mostly dead. Pure and deterministic.
pub fn plan_incremental(
    parent: &[(ChunkRef, ChunkIndex)],
    current: impl IntoIterator<Item = (String, RecordDigest)>,
    compact_threshold: f64,
) -> IncrementalPlan {
    // Live parent records: id -> (chunk position, digest).
    let mut live: HashMap<&str, (usize, RecordDigest)> = HashMap::new();
    let mut new_exclusions: Vec<Vec<String>> = vec![Vec::new(); parent.len()];
    for (pos, (chunk, index)) in parent.iter().enumerate() {
        let excluded: HashSet<&str> = chunk.excluded_ids.iter().map(String::as_str).collect();
        for (id, digest) in &index.entries {
            if excluded.contains(id.as_str()) {
                continue;
            }
            if let Some((old_pos, _)) = live.insert(id.as_str(), (pos, *digest)) {
                // Live twice (not produced by this code): keep the later one.
                new_exclusions[old_pos].push(id.clone());
            }
        }
    }

    let mut plan = IncrementalPlan::default();
    let mut seen: HashSet<String> = HashSet::new();
    // (id, unchanged-and-kept-in-chunk) in current order, for compaction.
    let mut order: Vec<(String, Option<usize>)> = Vec::new();
    for (id, digest) in current {
        if !seen.insert(id.clone()) {
            continue; // a duplicate id in the listing: the first one counts
        }
        match live.get(id.as_str()) {
            Some((pos, old)) if *old == digest => order.push((id, Some(*pos))),
            Some((pos, _)) => {
                new_exclusions[*pos].push(id.clone());
                plan.changed_ids.push(id.clone());
                order.push((id, None));
            }
            None => {
                plan.new_ids.push(id.clone());
                order.push((id, None));
            }
        }
    }
    for (pos, (_, index)) in parent.iter().enumerate() {
        for (id, _) in &index.entries {
            if let Some((p, _)) = live.get(id.as_str()) {
                if *p == pos && !seen.contains(id) {
                    new_exclusions[pos].push(id.clone());
                    plan.deleted_ids.push(id.clone());
                }
            }
        }
    }

    let mut compacted = vec![false; parent.len()];
    for (pos, (chunk, _)) in parent.iter().enumerate() {
        let mut excluded: Vec<String> = chunk.excluded_ids.clone();
        excluded.extend(new_exclusions[pos].iter().cloned());
        excluded.sort();
        excluded.dedup();
        let total = chunk.records.max(1) as f64;
        if excluded.len() as u64 >= chunk.records {
            plan.dropped_chunks.push(chunk.id.clone());
        } else if excluded.len() as f64 / total > compact_threshold {
            compacted[pos] = true;
            plan.dropped_chunks.push(chunk.id.clone());
        } else {
            plan.keep.push(KeptChunk {
                newly_excluded: new_exclusions[pos].len(),
                chunk: ChunkRef {
                    excluded_ids: excluded,
                    ..chunk.clone()
                },
            });
        }
    }

    for (id, kept_in) in order {
        match kept_in {
            None => plan.write_ids.push(id),
            Some(pos) if compacted[pos] => {
                plan.compacted_ids.push(id.clone());
                plan.write_ids.push(id);
            }
            Some(_) => {}
        }
    }
    plan
}

/// The streaming planner run the way the engine runs it, as an
/// `IncrementalPlan` (without the changed/new/deleted split, which it
/// does not keep): unchanged records skipped, the rest written in the
/// order read, then the live records of compacted chunks.
fn streamed(
    parent: &[(ChunkRef, ChunkIndex)],
    current: &[Record],
    threshold: f64,
) -> (IncrementalPlan, usize) {
    let live: u64 = parent.iter().map(|(c, _)| c.live_records()).sum();
    let mut p = IncrementalPlanner::new(live, threshold);
    for (c, i) in parent {
        p.add_parent(c, i);
    }
    let mut plan = IncrementalPlan::default();
    for r in current {
        if !p.unchanged(&record_digest(r)) {
            plan.write_ids.push(r.id.clone());
        }
    }
    let memory = p.memory_bytes();
    for (c, i) in parent {
        match p.decide(c, i) {
            ChunkDecision::Keep(k) => plan.keep.push(k),
            ChunkDecision::Drop { chunk_id } => plan.dropped_chunks.push(chunk_id),
            ChunkDecision::Compact { chunk_id, rewrite } => {
                plan.dropped_chunks.push(chunk_id);
                for (id, d) in &i.entries {
                    if rewrite.contains(d) {
                        plan.compacted_ids.push(id.clone());
                        plan.write_ids.push(id.clone());
                    }
                }
            }
        }
    }
    (plan, memory)
}

/// The streaming planner decides what the reference planner decides:
/// the same chunks kept with the same exclusions, the same chunks
/// dropped, the same records written.
fn assert_same_plan(parent: &[(ChunkRef, ChunkIndex)], current: &[Record], threshold: f64) {
    let reference = plan_incremental(
        parent,
        current.iter().map(|r| (r.id.clone(), record_digest(r))),
        threshold,
    );
    let (got, _) = streamed(parent, current, threshold);
    assert_eq!(got.keep, reference.keep);
    assert_eq!(got.dropped_chunks, reference.dropped_chunks);
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<String>>();
    assert_eq!(set(&got.write_ids), set(&reference.write_ids));
    assert_eq!(got.write_ids.len(), reference.write_ids.len());
    assert_eq!(set(&got.compacted_ids), set(&reference.compacted_ids));
}

fn current(records: &[Record]) -> Vec<(String, RecordDigest)> {
    records
        .iter()
        .map(|r| (r.id.clone(), record_digest(r)))
        .collect()
}

#[test]
fn one_percent_changed_writes_only_those_records() {
    let codec = Codec::Plain;
    let n = 10_000;
    let mut records: Vec<Record> = (0..n).map(|i| synthetic(i, 32)).collect();
    let (parent, full_plain) = write_chunks(&records, &codec, 64 * 1024);
    assert!(parent.len() > 20);

    // Update 1% of records spread over the collection, delete 5, add 5.
    for i in (0..n).step_by(100) {
        records[i].document = Some(format!("updated document {i}"));
    }
    let deleted: Vec<String> = records.drain(50..55).map(|r| r.id).collect();
    records.extend((n..n + 5).map(|i| synthetic(i, 32)));

    let plan = plan_incremental(&parent, current(&records), DEFAULT_COMPACT_THRESHOLD);
    assert_same_plan(&parent, &records, DEFAULT_COMPACT_THRESHOLD);
    assert_eq!(plan.changed_ids.len(), 100);
    assert_eq!(plan.new_ids.len(), 5);
    assert_eq!(plan.deleted_ids, deleted);
    assert!(plan.dropped_chunks.is_empty(), "no chunk is mostly dead");
    assert!(plan.compacted_ids.is_empty());
    assert_eq!(plan.keep.len(), parent.len());
    assert_eq!(plan.write_ids.len(), 105);

    let by_id: HashMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let to_write: Vec<Record> = plan
        .write_ids
        .iter()
        .map(|id| (*by_id[id.as_str()]).clone())
        .collect();
    let (new_chunks, new_plain) = write_chunks(&to_write, &codec, 64 * 1024);
    assert!(
        new_plain * 100 <= full_plain * 3,
        "wrote {new_plain} of {full_plain} plaintext bytes"
    );

    // The new snapshot is consistent and holds exactly the current records.
    let mut refs: Vec<ChunkRef> = plan.keep.iter().map(|k| k.chunk.clone()).collect();
    refs.extend(new_chunks.iter().map(|(r, _)| r.clone()));
    let m = manifest(refs, Some(sid("00000000000000aa")));
    m.validate().expect("valid incremental");
    assert_eq!(m.collections[0].record_count, records.len() as u64);
    let mut live: HashMap<String, RecordDigest> = HashMap::new();
    let all_indexes: HashMap<&str, &ChunkIndex> = parent
        .iter()
        .chain(&new_chunks)
        .map(|(r, i)| (r.id.as_str(), i))
        .collect();
    for r in &m.collections[0].chunks {
        let idx = all_indexes[r.id.as_str()];
        r.check_index(idx).expect("consistent");
        for (id, d) in &idx.entries {
            if !r.excluded_ids.contains(id) {
                assert!(live.insert(id.clone(), *d).is_none(), "{id} live twice");
            }
        }
    }
    let expected: HashMap<String, RecordDigest> = current(&records).into_iter().collect();
    assert_eq!(live, expected);

    // Unchanged collection: nothing to write, nothing newly excluded.
    let again = plan_incremental(
        &parent,
        current(&(0..n).map(|i| synthetic(i, 32)).collect::<Vec<_>>()),
        DEFAULT_COMPACT_THRESHOLD,
    );
    assert!(again.write_ids.is_empty());
    assert!(again.keep.iter().all(|k| k.newly_excluded == 0));
}

#[test]
fn mostly_dead_chunks_are_compacted() {
    let records: Vec<Record> = (0..40).map(|i| synthetic(i, 4)).collect();
    let (parent, _) = write_chunks(&records, &Codec::Plain, 1 << 30); // one chunk
    assert_eq!(parent.len(), 1);
    let mut now = records.clone();
    // Change 45%: kept with exclusions.
    for r in now.iter_mut().take(18) {
        r.document = Some("changed".into());
    }
    let plan = plan_incremental(&parent, current(&now), 0.5);
    assert_same_plan(&parent, &now, 0.5);
    assert_eq!(plan.keep.len(), 1);
    assert_eq!(plan.keep[0].chunk.excluded_ids.len(), 18);
    assert_eq!(plan.write_ids.len(), 18);
    // Change 55%: the chunk is dropped and every record rewritten.
    for r in now.iter_mut().take(22) {
        r.document = Some("changed".into());
    }
    let plan = plan_incremental(&parent, current(&now), 0.5);
    assert_same_plan(&parent, &now, 0.5);
    assert!(plan.keep.is_empty());
    assert_eq!(plan.dropped_chunks, vec![parent[0].0.id.clone()]);
    assert_eq!(plan.compacted_ids.len(), 18);
    assert_eq!(plan.write_ids.len(), 40);
    let ids: Vec<&str> = plan.write_ids.iter().map(String::as_str).collect();
    let expected: Vec<&str> = now.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, expected, "written in the order read");
    // Everything deleted: the chunk is dropped, nothing to write.
    let plan = plan_incremental(&parent, Vec::new(), 0.5);
    assert_same_plan(&parent, &[], 0.5);
    assert!(plan.keep.is_empty() && plan.write_ids.is_empty());
    assert_eq!(plan.deleted_ids.len(), 40);
}

#[test]
fn earlier_exclusions_carry_over() {
    let records: Vec<Record> = (0..20).map(|i| synthetic(i, 4)).collect();
    let (mut parent, _) = write_chunks(&records, &Codec::Plain, 1 << 30);
    parent[0].0.excluded_ids = vec!["doc-000003".into()];
    // doc-000003 was superseded by a later chunk (not part of this parent
    // slice): it is current and must be written, not resurrected.
    let plan = plan_incremental(&parent, current(&records), 0.5);
    assert_same_plan(&parent, &records, 0.5);
    assert_eq!(
        plan.keep[0].chunk.excluded_ids,
        vec!["doc-000003".to_string()]
    );
    assert_eq!(plan.new_ids, vec!["doc-000003".to_string()]);
}

#[test]
fn planner_memory_is_sixteen_bytes_a_record_whatever_the_ids() {
    // Ids of 200 bytes: the planner holds none of them.
    let long = |i: usize| Record {
        id: format!("{}-{i:08}", "x".repeat(190)),
        ..synthetic(i, 4)
    };
    let records: Vec<Record> = (0..5_000).map(long).collect();
    let (parent, _) = write_chunks(&records, &Codec::Plain, 64 * 1024);
    let mut now = records.clone();
    for r in now.iter_mut().step_by(100) {
        r.document = Some("changed".into());
    }
    let (plan, memory) = streamed(&parent, &now, DEFAULT_COMPACT_THRESHOLD);
    assert_eq!(plan.write_ids.len(), 50);
    let n = records.len();
    assert!(
        memory <= n * 16 + n.div_ceil(64) * 8 + 64,
        "{memory} bytes for {n} records"
    );
    assert_same_plan(&parent, &now, DEFAULT_COMPACT_THRESHOLD);
}

#[test]
fn a_record_live_in_two_parent_chunks_stays_live_once() {
    let records: Vec<Record> = (0..10).map(|i| synthetic(i, 4)).collect();
    let (mut a, _) = write_chunks(&records[..5], &Codec::Plain, 1 << 30);
    let (b, _) = write_chunks(&records[4..], &Codec::Plain, 1 << 30);
    a.extend(b); // doc-000004 is live in both
    let (plan, _) = streamed(&a, &records, 0.5);
    assert!(plan.write_ids.is_empty());
    let excluded: Vec<&String> = plan
        .keep
        .iter()
        .flat_map(|k| &k.chunk.excluded_ids)
        .collect();
    assert_eq!(excluded, vec!["doc-000004"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plan_is_exact_for_random_edits(
        n in 1usize..120,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..40),
    ) {
        let mut records: Vec<Record> = (0..n).map(|i| synthetic(i, 2)).collect();
        let (parent, _) = write_chunks(&records, &Codec::Plain, 1024);
        for (next, (at, op)) in (n..).zip(edits) {
            if records.is_empty() { break; }
            let i = at.index(records.len());
            match op {
                0 => records[i].document = Some(format!("edit {next}")),
                1 => { records.remove(i); }
                _ => records.push(synthetic(next + 1000, 2)),
            }
        }
        let plan = plan_incremental(&parent, current(&records), 0.5);
        assert_same_plan(&parent, &records, 0.5);
        let idx: HashMap<&str, &ChunkIndex> = parent.iter().map(|(r, i)| (r.id.as_str(), i)).collect();
        let mut live: HashSet<String> = HashSet::new();
        for k in &plan.keep {
            for (id, _) in &idx[k.chunk.id.as_str()].entries {
                if !k.chunk.excluded_ids.contains(id) {
                    prop_assert!(live.insert(id.clone()));
                }
            }
            prop_assert!(k.chunk.excluded_ids.len() as f64 / k.chunk.records as f64 <= 0.5);
        }
        for id in &plan.write_ids {
            prop_assert!(live.insert(id.clone()), "{} both kept and written", id);
        }
        let expected: HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
        prop_assert_eq!(live, expected);
    }
}
