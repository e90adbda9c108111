//! `rebuild`: a new collection with settings Chroma cannot change in place
//! (the distance metric, fixed index parameters), filled from the old one
//! while it stays in service, verified, and swapped in by name.
//!
//! 1. **Copy** every record by id into `NAME.rebuild-vVERSION` (the next
//!    batch is read while the current one is written). The checkpoint
//!    names the last id copied, so a crashed run continues from there.
//! 2. **Catch up**: compare the source with the copy record by record
//!    (within the server's rounding where either side is cosine); copy what
//!    differs, delete what the source no longer has, and repeat until a
//!    pass finds nothing to do and the counts are equal — or, while writers
//!    go on, until a pass had at most `max_lag` records to fix. A source
//!    that keeps changing for `max_passes` passes is refused, not swapped.
//! 3. **Verify**: the top-`k` neighbours of `sample` stored vectors, queried
//!    in both collections; the mean overlap is reported and must reach
//!    `min_overlap`.
//! 4. **Swap**: the old collection becomes `NAME.pre-vVERSION` (kept for
//!    `down`), the copy becomes `NAME`. A `NAME.pre-vVERSION` left by an
//!    earlier run is deleted first, and only when this run's restore point
//!    covers it.
//! 5. **Settle**: writes that still reach the old collection after the swap
//!    (clients that hold its id, not its name) are copied over for
//!    `settle_ms`, using the digests of the last catch-up pass to tell them
//!    from what was already copied.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::embed::Embedder;
use super::history::Outcome;
use super::operation::{previous_name, staging_name, Operation};
use super::overlap::overlap;
use super::tracker::{fetch, find, list_ids, resume_position, Tracker};
use super::MigrationError;
use crate::backup::compare::records_match;
use crate::backup::records::{record_digest, Record, RecordDigest};
use crate::backup::source::{to_batch, FETCH_BATCH};
use crate::chroma::configuration::{creatable_configuration, merge_configuration, space_of};
use crate::chroma::swap::{self, SwapEntry};
use crate::chroma::{Collection, CreateCollection, ProductionChromaStore};
use crate::progress::{MigrateDetail, RebuildStep};

async fn write(
    store: &ProductionChromaStore,
    collection_id: &str,
    records: Vec<Record>,
) -> Result<usize, MigrationError> {
    let (batch, without) = to_batch(records);
    if let Some(r) = without.first() {
        return Err(MigrationError::Verify {
            collection: collection_id.to_string(),
            why: format!(
                "record {:?} has no embedding and cannot be copied (Chroma returned none)",
                r.id
            ),
        });
    }
    let n = batch.len();
    if n > 0 {
        store.upsert(collection_id, &batch).await?;
    }
    Ok(n)
}

/// What a rebuild does, from a `rebuild` or a `reembed` operation.
struct Spec<'a> {
    collection: &'a str,
    /// Changes to the copy's configuration.
    configuration: Value,
    sample: usize,
    k: usize,
    min_overlap: f64,
    max_passes: u32,
    max_lag: u64,
    settle_ms: u64,
    /// For `reembed`: new vectors from the documents.
    embedder: Option<Embedder>,
}

impl Spec<'_> {
    /// The records as they go into the copy.
    async fn prepare(&self, mut records: Vec<Record>) -> Result<Vec<Record>, MigrationError> {
        let Some(e) = &self.embedder else {
            return Ok(records);
        };
        let mut texts = Vec::with_capacity(records.len());
        for r in &records {
            match &r.document {
                Some(d) => texts.push(d.clone()),
                None => {
                    return Err(MigrationError::Verify {
                        collection: self.collection.to_string(),
                        why: format!("record {:?} has no document to embed", r.id),
                    })
                }
            }
        }
        let vectors = e.embed(&texts).await?;
        for (r, v) in records.iter_mut().zip(vectors) {
            r.embedding = Some(v);
        }
        Ok(records)
    }

    /// The copy holds `want` as it should: the same record, or for
    /// `reembed` the same document, metadata and URI (the vector is new).
    fn same(&self, want: &Record, got: &Record, tolerant: bool) -> bool {
        if self.embedder.is_some() {
            records_match(
                &Record {
                    embedding: None,
                    ..want.clone()
                },
                &Record {
                    embedding: None,
                    ..got.clone()
                },
                tolerant,
            )
        } else {
            records_match(want, got, tolerant)
        }
    }
}

pub async fn rebuild(op: &Operation, t: &Tracker<'_>) -> Result<Value, MigrationError> {
    let spec = match op {
        Operation::Rebuild {
            collection,
            configuration,
            sample,
            k,
            min_overlap,
            max_passes,
            max_lag,
            settle_ms,
        } => Spec {
            collection,
            configuration: configuration.clone(),
            sample: *sample,
            k: *k,
            min_overlap: *min_overlap,
            max_passes: *max_passes,
            max_lag: *max_lag,
            settle_ms: *settle_ms,
            embedder: None,
        },
        Operation::Reembed {
            collection,
            url,
            model,
            api_key_env,
            dimensions,
            configuration,
            batch,
            max_passes,
            max_lag,
            settle_ms,
        } => Spec {
            collection,
            configuration: configuration.clone().unwrap_or_else(|| json!({})),
            sample: 0,
            k: 0,
            min_overlap: 0.0,
            max_passes: *max_passes,
            max_lag: *max_lag,
            settle_ms: *settle_ms,
            embedder: Some(Embedder::new(
                url,
                model,
                api_key_env.as_deref(),
                *dimensions,
                *batch,
            )?),
        },
        _ => return Err(MigrationError::Conflict("not a rebuild".into())),
    };
    let collection = spec.collection;
    let store = t.store;
    let staging = staging_name(collection, t.version);
    let previous = previous_name(collection, t.version);
    let checkpoint = t.resumed().await;
    let phase = checkpoint
        .as_ref()
        .and_then(|c| c.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();

    if phase == "swapped" {
        // Interrupted after the swap: only the settle step is left, and its
        // digests are gone; the old collection stays as `previous`.
        return Ok(json!({"collection": collection, "previous": previous, "resumed": true}));
    }
    if phase == "swap" {
        // Interrupted during the swap: finish it from the recorded ids.
        let cp = checkpoint.clone().unwrap_or_default();
        let source_id = cp["source_id"].as_str().unwrap_or_default();
        let staging_id = cp["staging_id"].as_str().unwrap_or_default();
        finish_swap(
            store, collection, &previous, &staging, source_id, staging_id,
        )
        .await?;
        t.save(json!({"phase": "swapped"})).await?;
        return Ok(json!({"collection": collection, "previous": previous, "resumed": true}));
    }

    let source = find(store, collection)
        .await?
        .ok_or_else(|| MigrationError::NoCollection(collection.to_string()))?;
    let target_cfg = merge_configuration(
        &creatable_configuration(&source.configuration_json),
        &spec.configuration,
    );
    let tolerant =
        space_of(&source.configuration_json) == "cosine" || space_of(&target_cfg) == "cosine";

    // The staging collection: continue into it when resuming a copy.
    let existing = find(store, &staging).await?;
    let resume_copy = phase == "copy" && existing.is_some();
    let target = match existing {
        Some(c) if resume_copy => c,
        other => {
            if other.is_some() {
                store.delete_collection(&staging).await?;
            }
            store
                .create_collection(&CreateCollection {
                    name: staging.clone(),
                    metadata: source.metadata.clone(),
                    configuration: Some(target_cfg.clone()),
                    get_or_create: false,
                })
                .await?
        }
    };
    let result = fill_verify_swap(
        t,
        &spec,
        &source,
        &target,
        &previous,
        tolerant,
        if resume_copy { checkpoint } else { None },
    )
    .await;
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            // Not swapped: the source is untouched; drop the copy unless the
            // run was only interrupted (then it resumes into it).
            if !matches!(
                e,
                MigrationError::Cancelled | MigrationError::LockLost { .. }
            ) {
                let _ = store.delete_collection(&staging).await;
            }
            Err(e)
        }
    }
}

async fn fill_verify_swap(
    t: &Tracker<'_>,
    spec: &Spec<'_>,
    source: &Collection,
    target: &Collection,
    previous: &str,
    tolerant: bool,
    resume: Option<Value>,
) -> Result<Value, MigrationError> {
    let store = t.store;
    let collection = spec.collection;
    let (max_passes, max_lag, settle_ms) = (spec.max_passes, spec.max_lag, spec.settle_ms);
    // 1. Copy.
    let ids = list_ids(store, &source.id, None).await?;
    let total = ids.len();
    let start = resume_position(&ids, resume.as_ref());
    let mut copied = start;
    let mut parts = ids[start..].chunks(FETCH_BATCH);
    let mut next = parts.next().map(|p| {
        let (s, id, p) = (store.clone(), source.id.clone(), p.to_vec());
        tokio::spawn(async move { fetch(&s, &id, p).await })
    });
    while let Some(handle) = next.take() {
        t.check_cancel()?;
        let records = handle
            .await
            .map_err(|e| MigrationError::Conflict(format!("copy task failed: {e}")))??;
        next = parts.next().map(|p| {
            let (s, id, p) = (store.clone(), source.id.clone(), p.to_vec());
            tokio::spawn(async move { fetch(&s, &id, p).await })
        });
        let last = records.last().map(|r| r.id.clone());
        copied += records.len();
        write(store, &target.id, spec.prepare(records).await?).await?;
        if let Some(last) = last {
            t.progress_save(json!({"phase": "copy", "last_id": last}))
                .await?;
        }
        t.report(
            "rebuild",
            MigrateDetail::Rebuild(RebuildStep::Copy {
                collection: collection.to_string(),
                records_done: copied as u64,
                records_total: total as u64,
            }),
        );
    }

    // 2. Catch up until a pass finds nothing (then the counts must be
    // equal) or at most `max_lag` records to fix while writers go on (then
    // the counts may differ by at most that).
    let mut passes = 0;
    let mut caught_up = 0u64;
    let (mut digests, counts) = loop {
        t.check_cancel()?;
        passes += 1;
        let (fixed, digests) = catch_up(t, spec, source, target, tolerant).await?;
        caught_up += fixed;
        let counts = (
            store.count(&source.id).await?,
            store.count(&target.id).await?,
        );
        if (fixed == 0 && counts.0 == counts.1)
            || (fixed <= max_lag && counts.0.abs_diff(counts.1) <= max_lag)
        {
            break (digests, counts);
        }
        if passes >= max_passes {
            return Err(MigrationError::SourceChanging {
                collection: collection.to_string(),
                passes,
                last: fixed,
            });
        }
    };

    // 3. Verify neighbours (a new embedding model has other neighbours:
    // `reembed` relies on the record-by-record catch-up and the counts).
    let (sample, k, min_overlap) = (spec.sample, spec.k, spec.min_overlap);
    let overlap = if spec.embedder.is_some() {
        None
    } else {
        Some(overlap(store, source, target, &ids, sample, k).await?)
    };
    t.report(
        "rebuild",
        MigrateDetail::Rebuild(RebuildStep::Verify {
            collection: collection.to_string(),
            overlap,
        }),
    );
    if let Some(o) = overlap.filter(|o| *o < min_overlap) {
        return Err(MigrationError::Verify {
            collection: collection.to_string(),
            why: format!(
                "mean top-{k} overlap of {sample} sampled vectors is {o:.3}, below min_overlap = {min_overlap}"
            ),
        });
    }
    let count = store.count(&target.id).await?;

    // 4. Swap.
    t.save(json!({"phase": "swap", "source_id": source.id, "staging_id": target.id}))
        .await?;
    let deleted_kept = match find(store, previous).await? {
        // Kept by an earlier run (after `down`, or a run that was undone,
        // the rebuilt collection with the writes made to it since): only
        // deleted when the restore point of this run covers it.
        Some(old) => {
            // Only an `up` run (outcome running) took its restore point
            // before it started; `down` takes none.
            let covered = {
                let e = t.entry.lock().await;
                e.restore_point
                    .clone()
                    .filter(|_| e.outcome == Outcome::Running)
            };
            let Some(snapshot) = covered else {
                return Err(MigrationError::KeptCollection {
                    version: t.version,
                    collection: collection.to_string(),
                    kept: old.name,
                });
            };
            store.delete_collection(&old.name).await?;
            tracing::warn!(kept = %old.name, restore_point = %snapshot, "deleted a collection kept by an earlier run; it is in the restore point");
            json!({"collection": old.name, "restore_point": snapshot})
        }
        None => Value::Null,
    };
    finish_swap(
        store,
        collection,
        previous,
        &target.name,
        &source.id,
        &target.id,
    )
    .await?;
    t.save(json!({"phase": "swapped"})).await?;

    // 5. Settle: copy writes that reached the old collection by id.
    let mut after_swap = 0u64;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(settle_ms);
    loop {
        let (n, _) = copy_changed(store, spec, source, target, &mut digests).await?;
        after_swap += n;
        if std::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(
            std::time::Duration::from_millis(250).min(until - std::time::Instant::now()),
        )
        .await;
    }
    let (n, _) = copy_changed(store, spec, source, target, &mut digests).await?;
    after_swap += n;

    Ok(json!({
        "collection": collection,
        "records": count,
        "copied": copied,
        "catch_up_passes": passes,
        "caught_up_records": caught_up,
        "counts_at_verify": {"source": counts.0, "copy": counts.1},
        "overlap": overlap,
        "copied_after_swap": after_swap,
        "previous": previous,
        "deleted_kept": deleted_kept,
    }))
}

/// Renames `source_id` to `previous` and `staging_id` to `collection`
/// through the swap journal (`chroma::swap`), skipping what is already
/// done; puts the source back if the second rename fails. The old
/// collection is kept (for `down`).
async fn finish_swap(
    store: &ProductionChromaStore,
    collection: &str,
    previous: &str,
    staging: &str,
    source_id: &str,
    staging_id: &str,
) -> Result<(), MigrationError> {
    let entry = SwapEntry::new(
        "rebuild", collection, previous, staging, source_id, staging_id, false,
    );
    swap::swap(store, &entry).await?;
    Ok(())
}

/// One catch-up pass: returns how many records it fixed and the digests
/// of the source as read in this pass.
async fn catch_up(
    t: &Tracker<'_>,
    spec: &Spec<'_>,
    source: &Collection,
    target: &Collection,
    tolerant: bool,
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
        fixed += write(store, &target.id, spec.prepare(stale).await?).await? as u64;
    }
    let src: HashSet<&String> = src_ids.iter().collect();
    let gone: Vec<String> = list_ids(store, &target.id, None)
        .await?
        .into_iter()
        .filter(|id| !src.contains(id))
        .collect();
    for part in gone.chunks(FETCH_BATCH) {
        store.delete(&target.id, Some(part), None).await?;
    }
    fixed += gone.len() as u64;
    t.report(
        "rebuild",
        MigrateDetail::Rebuild(RebuildStep::CatchUp {
            collection: spec.collection.to_string(),
            records_fixed: fixed,
        }),
    );
    Ok((fixed, digests))
}

/// Copies records of `source` whose digest differs from `seen` (written
/// after that pass) and deletes in `target` those gone from `source`;
/// `seen` is updated, so each write is copied once and a later write to
/// the same record in `target` is not overwritten by an older one.
async fn copy_changed(
    store: &ProductionChromaStore,
    spec: &Spec<'_>,
    source: &Collection,
    target: &Collection,
    seen: &mut HashMap<String, RecordDigest>,
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
        copied += write(store, &target.id, spec.prepare(changed).await?).await? as u64;
    }
    let now: HashSet<&String> = ids.iter().collect();
    let gone: Vec<String> = seen
        .keys()
        .filter(|id| !now.contains(id))
        .cloned()
        .collect();
    let mut deleted = 0u64;
    for part in gone.chunks(FETCH_BATCH) {
        deleted += store.delete(&target.id, Some(part), None).await?;
    }
    for id in &gone {
        seen.remove(id);
    }
    Ok((copied, deleted))
}
