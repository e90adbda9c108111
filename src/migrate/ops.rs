//! Carrying out operations against Chroma. Each streams in batches, saves
//! a checkpoint as it goes (through [`Tracker`]) and, started again with
//! that checkpoint after a crash, continues where it was.

use serde_json::{json, Map, Value};

use super::operation::{dropped_name, Operation};
use super::tracker::{find, list_ids, need, rename, resume_position, Tracker};
use super::MigrationError;
use crate::backup::source::FETCH_BATCH;
use crate::chroma::{
    ChromaError, CreateCollection, GetRequest, Include, ModifyCollection, RecordBatch,
};
use crate::progress::MigrateDetail;

/// Carries out one operation; returns what it did.
pub async fn apply(op: &Operation, t: &Tracker<'_>) -> Result<Value, MigrationError> {
    t.check_cancel()?;
    let store = t.store;
    let resuming = t.resumed().await.is_some();
    match op {
        Operation::CreateCollection {
            name,
            metadata,
            configuration,
        } => {
            if let Some(existing) = find(store, name).await? {
                if resuming {
                    return Ok(json!({"created": name, "id": existing.id, "resumed": true}));
                }
                return Err(MigrationError::Conflict(format!(
                    "collection {name:?} already exists"
                )));
            }
            t.save(json!({"started": true})).await?;
            let c = store
                .create_collection(&CreateCollection {
                    name: name.clone(),
                    metadata: metadata.clone(),
                    configuration: configuration.clone(),
                    get_or_create: false,
                })
                .await?;
            Ok(json!({"created": name, "id": c.id}))
        }
        Operation::RenameCollection { from, to } => rename_collection(t, from, to, resuming).await,
        Operation::DropCollection { name, keep, .. } => {
            if *keep {
                let aside = dropped_name(name, t.version);
                if !resuming && find(store, &aside).await?.is_some() {
                    return Err(MigrationError::Conflict(format!(
                        "cannot drop {name:?}: {aside:?}, kept by an earlier drop, is in the way and may hold data from an earlier run; keep it with `chromaprod backup --collection {aside} --wait`, then delete or rename it in Chroma, and run again"
                    )));
                }
                rename_collection(t, name, &aside, resuming).await?;
                Ok(json!({"dropped": name, "kept_as": aside}))
            } else {
                match store.delete_collection(name).await {
                    Ok(()) => Ok(json!({"dropped": name, "deleted": true})),
                    Err(ChromaError::NotFound { .. }) if resuming => {
                        Ok(json!({"dropped": name, "deleted": true, "resumed": true}))
                    }
                    Err(ChromaError::NotFound { .. }) => {
                        Err(MigrationError::NoCollection(name.clone()))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
        Operation::SwapCollections { a, b } => swap(t, a, b).await,
        Operation::UpdateCollectionMetadata {
            collection,
            set,
            unset,
        } => {
            let c = need(store, collection).await?;
            let mut meta = c.metadata.clone().unwrap_or_default();
            for k in unset {
                meta.remove(k);
            }
            meta.extend(set.clone());
            store
                .modify_collection(
                    &c.id,
                    &ModifyCollection {
                        new_metadata: Some(meta.clone()),
                        ..ModifyCollection::default()
                    },
                )
                .await?;
            Ok(json!({"collection": collection, "metadata": meta}))
        }
        Operation::UpdateIndex {
            collection,
            hnsw,
            spann,
        } => {
            let c = need(store, collection).await?;
            let mut cfg = Map::new();
            if let Some(h) = hnsw {
                cfg.insert("hnsw".into(), Value::Object(h.clone()));
            }
            if let Some(s) = spann {
                cfg.insert("spann".into(), Value::Object(s.clone()));
            }
            store
                .modify_collection(
                    &c.id,
                    &ModifyCollection {
                        new_configuration: Some(Value::Object(cfg.clone())),
                        ..ModifyCollection::default()
                    },
                )
                .await?;
            Ok(json!({"collection": collection, "configuration": cfg}))
        }
        Operation::RenameMetadataKey {
            collection,
            from,
            to,
            where_,
        } => {
            let n = update_metadata(t, op.name(), collection, where_.as_ref(), |m| {
                let v = m.get(from)?.clone();
                let mut delta = Map::new();
                delta.insert(from.clone(), Value::Null);
                delta.insert(to.clone(), v);
                Some(delta)
            })
            .await?;
            Ok(json!({"collection": collection, "records_changed": n}))
        }
        Operation::SetMetadata {
            collection,
            key,
            value,
            where_,
            only_missing,
        } => {
            let n = update_metadata(t, op.name(), collection, where_.as_ref(), |m| {
                if (*only_missing && m.contains_key(key)) || m.get(key) == Some(value) {
                    return None;
                }
                let mut delta = Map::new();
                delta.insert(key.clone(), value.clone());
                Some(delta)
            })
            .await?;
            Ok(json!({"collection": collection, "records_changed": n}))
        }
        Operation::DeleteMetadataKey {
            collection,
            key,
            where_,
        } => {
            let n = update_metadata(t, op.name(), collection, where_.as_ref(), |m| {
                m.contains_key(key).then(|| {
                    let mut delta = Map::new();
                    delta.insert(key.clone(), Value::Null);
                    delta
                })
            })
            .await?;
            Ok(json!({"collection": collection, "records_changed": n}))
        }
        Operation::DeleteRecords { collection, where_ } => {
            let c = need(store, collection).await?;
            let ids = list_ids(store, &c.id, Some(where_)).await?;
            let total = ids.len();
            let mut done = 0;
            for part in ids.chunks(FETCH_BATCH) {
                t.check_cancel()?;
                store.delete(&c.id, Some(part), None).await?;
                done += part.len();
                // Marks the operation as partly done (a re-run lists what is left).
                t.progress_save(json!({"records_done": done})).await?;
                t.report(
                    op.name(),
                    MigrateDetail::Records {
                        collection: None,
                        records_done: done as u64,
                        records_total: total as u64,
                    },
                );
            }
            Ok(json!({"collection": collection, "records_deleted": done}))
        }
        Operation::Rebuild { .. } | Operation::Reembed { .. } => {
            super::rebuild::rebuild(op, t).await
        }
    }
}

async fn rename_collection(
    t: &Tracker<'_>,
    from: &str,
    to: &str,
    resuming: bool,
) -> Result<Value, MigrationError> {
    let store = t.store;
    let src = find(store, from).await?;
    let dst = find(store, to).await?;
    match (src, dst) {
        (None, Some(d)) if resuming => {
            Ok(json!({"renamed": from, "to": to, "id": d.id, "resumed": true}))
        }
        (None, _) => Err(MigrationError::NoCollection(from.to_string())),
        (Some(_), Some(_)) => Err(MigrationError::Conflict(format!(
            "cannot rename {from:?} to {to:?}: a collection of that name exists"
        ))),
        (Some(s), None) => {
            t.save(json!({"started": true})).await?;
            rename(store, &s.id, to).await?;
            Ok(json!({"renamed": from, "to": to, "id": s.id}))
        }
    }
}

/// Swaps two names through a temporary one; the checkpoint holds both ids,
/// so a run interrupted between renames finishes the swap.
async fn swap(t: &Tracker<'_>, a: &str, b: &str) -> Result<Value, MigrationError> {
    let store = t.store;
    let (a_id, b_id) = match t.resumed().await {
        Some(cp) if cp.get("a_id").is_some() => (
            cp["a_id"].as_str().unwrap_or_default().to_string(),
            cp["b_id"].as_str().unwrap_or_default().to_string(),
        ),
        _ => {
            let ca = need(store, a).await?;
            let cb = need(store, b).await?;
            t.save(json!({"a_id": ca.id, "b_id": cb.id})).await?;
            (ca.id, cb.id)
        }
    };
    // a → a.swap-tmp, b → a, a's collection → b, journaled (the swap
    // journal finishes it after a crash); steps already done are skipped.
    crate::chroma::swap::exchange(store, "swap_collections", (a, &a_id), (b, &b_id)).await?;
    Ok(json!({"swapped": [a, b]}))
}

/// Applies `change` to the metadata of every record (matching `where_`):
/// it returns the keys to set (a `null` deletes a key) or `None` to leave
/// the record. Records go by id in batches; the checkpoint names the last
/// id done. Every change is idempotent, so a resumed run may safely look
/// at some records twice.
async fn update_metadata(
    t: &Tracker<'_>,
    op: &str,
    collection: &str,
    where_: Option<&Value>,
    change: impl Fn(&Map<String, Value>) -> Option<Map<String, Value>>,
) -> Result<u64, MigrationError> {
    let store = t.store;
    let c = need(store, collection).await?;
    let ids = list_ids(store, &c.id, where_).await?;
    let start = resume_position(&ids, t.resumed().await.as_ref());
    let total = ids.len();
    let mut changed = 0u64;
    let mut done = start;
    for part in ids[start..].chunks(FETCH_BATCH) {
        t.check_cancel()?;
        let got = store
            .get_records(
                &c.id,
                &GetRequest::ids(part.to_vec(), &[Include::Metadatas]),
            )
            .await?;
        let metas = got.metadatas.unwrap_or_default();
        let mut batch = RecordBatch {
            metadatas: Some(Vec::new()),
            ..RecordBatch::default()
        };
        for (id, m) in got.ids.iter().zip(metas) {
            let m = m.unwrap_or_default();
            if let Some(delta) = change(&m) {
                batch.ids.push(id.clone());
                if let Some(ms) = batch.metadatas.as_mut() {
                    ms.push(Some(delta));
                }
            }
        }
        if !batch.is_empty() {
            store.update(&c.id, &batch).await?;
            changed += batch.len() as u64;
        }
        done += part.len();
        if let Some(last) = part.last() {
            t.progress_save(json!({"last_id": last, "records_done": done}))
                .await?;
        }
        t.report(
            op,
            MigrateDetail::Records {
                collection: Some(collection.to_string()),
                records_done: done as u64,
                records_total: total as u64,
            },
        );
    }
    Ok(changed)
}
