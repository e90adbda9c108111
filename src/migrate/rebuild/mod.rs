//! `rebuild`: a new collection with settings Chroma cannot change in place
//! (the distance metric, fixed index parameters), filled from the old one
//! while it stays in service, verified, and swapped in by name.
//!
//! 1. **Copy** every record by id into `NAME.rebuild-vVERSION`, in parts
//!    of [`write::PART`] (the next part is read while the current one is
//!    written). The checkpoint
//!    names the last id copied, so a crashed run continues from there.
//! 2. **Catch up**: compare the source with the copy record by record
//!    (within the server's rounding where either side is cosine), then read
//!    the source alone by the digests that pass took (`compare`); on a
//!    local Chroma, only the records written since the last pass (`feed`);
//!    copy what differs, delete what the source no longer has, and repeat until
//!    a pass finds nothing to do and the counts are equal — or, while
//!    writers go on, until a pass had at most `max_lag` records to fix or
//!    took at most `max_lag_ms` (the copy then trails the source by about
//!    that long; a steady writer's rate no longer decides whether it
//!    ends), or was as short as a pass can get beside writers that keep
//!    Chroma's write queue long (`passes`). A source that keeps changing
//!    for `max_passes` passes that made no headway is refused, not
//!    swapped.
//! 3. **Verify**: the top-`k` neighbours of `sample` stored vectors, queried
//!    in both collections; the mean overlap is reported and must reach
//!    `min_overlap`.
//! 4. **Swap**: the old collection becomes `NAME.pre-vVERSION` (kept for
//!    `down`), the copy becomes `NAME`. A `NAME.pre-vVERSION` left by an
//!    earlier run is deleted first, and only when this run's restore point
//!    covers it.
//! 5. **Settle**: writes that still reach the old collection after the swap
//!    (clients that hold its id, not its name) are copied over for
//!    `settle_ms`, and at least twice the last pass's longest write
//!    (`write`), using the feed or the digests of the last catch-up pass
//!    to tell them from what was already copied.

mod compare;
mod feed;
mod passes;
mod write;

use std::collections::HashMap;

use serde_json::{json, Value};

use self::compare::{catch_up, copy_changed};
use self::feed::Feed;
use self::passes::{settle_for, PassFacts, Passes};
use self::write::{write, Writes, PART};
use super::embed::Embedder;
use super::history::Outcome;
use super::operation::{previous_name, staging_name, Operation};
use super::overlap::overlap;
use super::tracker::{fetch, find, list_ids, resume_position, Tracker};
use super::MigrationError;
use crate::backup::compare::records_match;
use crate::backup::records::{Record, RecordDigest};
use crate::chroma::configuration::{creatable_configuration, merge_configuration, space_of};
use crate::chroma::local::Unusable;
use crate::chroma::swap::{self, SwapEntry};
use crate::chroma::{Collection, CreateCollection, ProductionChromaStore};
use crate::progress::{MigrateDetail, RebuildStep};

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
    max_lag_ms: u64,
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
            max_lag_ms,
            settle_ms,
        } => Spec {
            collection,
            configuration: configuration.clone(),
            sample: *sample,
            k: *k,
            min_overlap: *min_overlap,
            max_passes: *max_passes,
            max_lag: *max_lag,
            max_lag_ms: *max_lag_ms,
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
            max_lag_ms,
            settle_ms,
        } => Spec {
            collection,
            configuration: configuration.clone().unwrap_or_else(|| json!({})),
            sample: 0,
            k: 0,
            min_overlap: 0.0,
            max_passes: *max_passes,
            max_lag: *max_lag,
            max_lag_ms: *max_lag_ms,
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
    let (max_passes, max_lag, max_lag_ms) = (spec.max_passes, spec.max_lag, spec.max_lag_ms);
    // Where the source's change feed stands before the copy reads it: each
    // catch-up pass then reads only what was written after the last one. A
    // resumed copy may hold records changed before this mark, so its first
    // pass compares both collections whole.
    let mut feed = match &t.local {
        Some(local) => match Feed::start(local, store, source).await? {
            Ok(f) => {
                store.metrics().change_feed(None);
                Some(f)
            }
            Err(why) => {
                feed_fallback(store, collection, &why);
                None
            }
        },
        None => None,
    };
    let mut compare_next = resume.is_some();

    // 1. Copy.
    let ids = list_ids(store, &source.id, None).await?;
    let total = ids.len();
    let start = resume_position(&ids, resume.as_ref());
    let mut copied = start;
    let mut parts = ids[start..].chunks(PART);
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
        let mut writes = Writes::default();
        write(store, &target.id, spec.prepare(records).await?, &mut writes).await?;
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
    // equal), or while writers go on, until a pass had at most `max_lag`
    // records to fix (then the counts may differ by at most that) or took
    // at most `max_lag_ms` or was as short as a pass can get (then by at
    // most what it fixed: what the writers wrote in about as long; see
    // `passes`).
    let mut passes = Passes::new(max_passes);
    let mut caught_up = 0u64;
    let mut feed_passes = 0u32;
    // The source's digests as the last comparison pass read them: after one
    // two-sided pass, later passes read the source alone and copy what
    // moved since (half the reads; the settle step works the same way).
    let mut seen: Option<HashMap<String, RecordDigest>> = None;
    let (counts, last_writes) = loop {
        t.check_cancel()?;
        let began = std::time::Instant::now();
        let mut writes = Writes::default();
        let mut by_feed = None;
        if let Some(f) = feed.as_mut().filter(|_| !compare_next) {
            match f
                .pass(store, spec, source, target, false, &mut writes)
                .await?
            {
                Ok(p) => by_feed = Some(p.fixed),
                Err(why) => {
                    feed_fallback(store, collection, &why);
                    feed = None;
                }
            }
        }
        let fixed = match (by_feed, seen.as_mut()) {
            (Some(fixed), _) => {
                feed_passes += 1;
                // The settle step follows the feed too.
                seen = None;
                fixed
            }
            (None, Some(d)) => {
                let (copied, deleted) =
                    copy_changed(store, spec, source, target, d, &mut writes).await?;
                copied + deleted
            }
            (None, None) => {
                compare_next = false;
                let (fixed, d) = catch_up(t, spec, source, target, tolerant, &mut writes).await?;
                seen = Some(d);
                fixed
            }
        };
        t.report(
            "rebuild",
            MigrateDetail::Rebuild(RebuildStep::CatchUp {
                collection: collection.to_string(),
                records_fixed: fixed,
                write_requests: writes.requests,
                write_ms: writes.time.as_millis() as u64,
            }),
        );
        caught_up += fixed;
        let took = began.elapsed();
        let counts = (
            store.count(&source.id).await?,
            store.count(&target.id).await?,
        );
        let pass = PassFacts {
            fixed,
            apart: counts.0.abs_diff(counts.1),
            took,
            writes,
        };
        let out_of_passes = passes.after(fixed);
        if passes.converged(&pass, max_lag, max_lag_ms) {
            break (counts, writes);
        }
        if out_of_passes {
            return Err(MigrationError::SourceChanging {
                collection: collection.to_string(),
                passes: passes.done,
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

    // 5. Settle: copy writes that reached the old collection by id, through
    // the feed when the last pass used it, else by the last pass's digests.
    let mut after_swap = 0u64;
    let settle = settle_for(spec.settle_ms, &last_writes);
    let until = std::time::Instant::now() + settle;
    let mut last = false;
    let mut writes = Writes::default();
    loop {
        let n = match (feed.as_mut(), seen.as_mut()) {
            (_, Some(d)) => {
                copy_changed(store, spec, source, target, d, &mut writes)
                    .await?
                    .0
            }
            (Some(f), None) => match f
                .pass(store, spec, source, target, true, &mut writes)
                .await?
            {
                Ok(p) => p.fixed,
                Err(why) => {
                    feed_fallback(store, collection, &why);
                    tracing::warn!(collection, kept = %previous, "stopped copying writes that reach the old collection by id; it is kept with them");
                    break;
                }
            },
            (None, None) => break,
        };
        after_swap += n;
        if last {
            break;
        }
        let now = std::time::Instant::now();
        if now >= until {
            last = true;
            continue;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250).min(until - now)).await;
    }

    Ok(json!({
        "collection": collection,
        "records": count,
        "copied": copied,
        "catch_up_passes": passes.done,
        "catch_up_by_change_feed": feed_passes,
        "last_pass_writes": {
            "requests": last_writes.requests,
            "ms": last_writes.time.as_millis() as u64,
            "longest_ms": last_writes.longest.as_millis() as u64,
        },
        "settle_ms": settle.as_millis() as u64,
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

/// The change feed cannot be used for `collection`'s catch-up: logged and
/// counted; the passes compare both collections whole.
fn feed_fallback(store: &ProductionChromaStore, collection: &str, why: &Unusable) {
    why.report(
        store.metrics(),
        collection,
        "rebuild catch-up compares both collections whole",
    );
}
