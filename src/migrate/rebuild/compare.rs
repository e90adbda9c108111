//! Catch-up by comparison (any Chroma): a first pass reads both collections
//! whole and compares them record by record; later passes, and the settle
//! step's copy of writes that reach the old collection by id, read the
//! source alone and tell its changes apart by the digests taken before.

use std::collections::{HashMap, HashSet};

use super::write::{delete, write_over, Writes};
use super::{MigrationError, Spec};
use crate::backup::records::{record_digest, Record, RecordDigest};
use crate::backup::source::FETCH_BATCH;
use crate::chroma::{Collection, ProductionChromaStore};
use crate::migrate::tracker::{fetch, list_ids, Tracker};

/// One catch-up pass: returns how many records it fixed and the digests
/// of the source as read in this pass.
pub(super) async fn catch_up(
    t: &Tracker<'_>,
    spec: &Spec<'_>,
    source: &Collection,
    target: &Collection,
    tolerant: bool,
    writes: &mut Writes,
) -> Result<(u64, HashMap<String, RecordDigest>), MigrationError> {
    let store = t.store;
    let src_ids = list_ids(store, &source.id, None).await?;
    let mut fixed = 0u64;
    let mut digests = HashMap::with_capacity(src_ids.len());
    for part in src_ids.chunks(FETCH_BATCH) {
        t.check_cancel()?;
        let (want, got) = tokio::try_join!(
            fetch(store, &source.id, part.to_vec()),
            fetch(store, &target.id, part.to_vec())
        )?;
        let got: HashMap<&str, &Record> = got.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut stale = Vec::new();
        for r in &want {
            digests.insert(r.id.clone(), record_digest(r));
            if !got
                .get(r.id.as_str())
                .is_some_and(|g| spec.same(r, g, tolerant))
            {
                stale.push(r.clone());
            }
        }
        let stale = spec.prepare(stale).await?;
        fixed += write_over(store, &target.id, stale, writes).await? as u64;
    }
    // What the source holds is what this pass fetched: a record listed but
    // deleted before its batch was read is gone from it too (and is not in
    // `digests`, so no later pass would delete it).
    let src: HashSet<&String> = digests.keys().collect();
    let gone: Vec<String> = list_ids(store, &target.id, None)
        .await?
        .into_iter()
        .filter(|id| !src.contains(id))
        .collect();
    for part in gone.chunks(FETCH_BATCH) {
        delete(store, &target.id, part, writes).await?;
    }
    fixed += gone.len() as u64;
    Ok((fixed, digests))
}

/// Copies records of `source` whose digest differs from `seen` (written
/// after that pass) and deletes in `target` those gone from `source`;
/// `seen` is updated, so each write is copied once and a later write to
/// the same record in `target` is not overwritten by an older one.
pub(super) async fn copy_changed(
    store: &ProductionChromaStore,
    spec: &Spec<'_>,
    source: &Collection,
    target: &Collection,
    seen: &mut HashMap<String, RecordDigest>,
    writes: &mut Writes,
) -> Result<(u64, u64), MigrationError> {
    let ids = list_ids(store, &source.id, None).await?;
    let mut copied = 0u64;
    for part in ids.chunks(FETCH_BATCH) {
        let records = fetch(store, &source.id, part.to_vec()).await?;
        let mut changed: Vec<Record> = Vec::new();
        for r in records {
            let d = record_digest(&r);
            if seen.get(&r.id) != Some(&d) {
                seen.insert(r.id.clone(), d);
                changed.push(r);
            }
        }
        let changed = spec.prepare(changed).await?;
        copied += write_over(store, &target.id, changed, writes).await? as u64;
    }
    let now: HashSet<&String> = ids.iter().collect();
    let gone: Vec<String> = seen
        .keys()
        .filter(|id| !now.contains(id))
        .cloned()
        .collect();
    let mut deleted = 0u64;
    for part in gone.chunks(FETCH_BATCH) {
        deleted += delete(store, &target.id, part, writes).await?;
    }
    for id in &gone {
        seen.remove(id);
    }
    Ok((copied, deleted))
}
