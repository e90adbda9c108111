//! Swapping which collection answers to a name (restore `--mode replace`,
//! migration `rebuild`), journaled so a crash between the renames is
//! finished or undone at the next start.
//!
//! Chroma has no aliases and no transactions: a swap is two renames
//! (`PUT /collections/{id}`), the old collection `NAME` → `previous`, then
//! the new one `staging` → `NAME`, and between them `NAME` does not exist.
//! So before the first rename the swap is written to the journal (a record
//! in the collection [`JOURNAL_COLLECTION`] of the same database), naming
//! both collections by id and the three names; the record is removed when
//! the swap is done. At every point after a crash the journal names where
//! the data is, and [`recover`] (run by the daemon before `READY=1` and by
//! the offline CLI before a command that touches Chroma) looks up which id
//! holds which name and finishes the swap — or undoes it when it cannot
//! be finished. The steps are a pure function of the entry and the names
//! ([`next_step`]), so recovering twice does nothing the second time.
//!
//! The journal lives in Chroma rather than in a local state directory
//! because whoever next touches that Chroma must see it: the daemon on the
//! Chroma host, the offline CLI on another host or as another user, or a
//! `restore --target URL` against another server; and a journal record
//! acknowledged by Chroma is committed before the rename that follows it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ProductionChromaStore;
use super::{ChromaError, CreateCollection, GetRequest, Include, ModifyCollection, RecordBatch};

/// The collection that holds the swap journal (one record per swap in
/// progress). Left out of full backups and refused as a restore target.
pub const JOURNAL_COLLECTION: &str = "chromaprod-swaps";

/// At most this many steps per swap (a swap needs at most four).
const MAX_STEPS: usize = 8;

/// One swap in progress, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapEntry {
    /// What swaps: `restore` or `rebuild`.
    pub operation: String,
    /// The name being swapped (`NAME`).
    pub target: String,
    /// Where the old collection goes.
    pub previous: String,
    /// Where the new collection is before the swap.
    pub staging: String,
    /// The collection that held `target` before the swap.
    pub old_id: String,
    /// The collection that holds `target` after it.
    pub new_id: String,
    /// Whether the old collection is deleted once the new one holds `target`.
    pub drop_previous: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Who swaps: `user@host (pid N)`, and how to tell whether it still runs.
    pub runner: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    /// The runner's process start (`boot id`/`start ticks`), so a reused
    /// pid is not taken for the runner.
    #[serde(default)]
    pub process: String,
}

impl SwapEntry {
    /// A swap of `target` from `old_id` to `new_id` (now named `staging`),
    /// the old one going to `previous`, run by this process.
    pub fn new(
        operation: &str,
        target: &str,
        previous: &str,
        staging: &str,
        old_id: &str,
        new_id: &str,
        drop_previous: bool,
    ) -> Self {
        let host = hostname();
        let pid = std::process::id();
        let user = std::env::var("USER").unwrap_or_else(|_| "chromaprod".into());
        SwapEntry {
            operation: operation.to_string(),
            target: target.to_string(),
            previous: previous.to_string(),
            staging: staging.to_string(),
            old_id: old_id.to_string(),
            new_id: new_id.to_string(),
            drop_previous,
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            runner: format!("{user}@{host} (pid {pid})"),
            host,
            pid,
            process: process_identity(pid).unwrap_or_default(),
        }
    }

    fn record_id(&self) -> String {
        format!("swap-{}", self.new_id)
    }
}

/// Which way a swap is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards the new collection holding `target`.
    Forward,
    /// Towards the old collection holding `target` again.
    Back,
}

/// The next thing to do for a swap, given which id holds which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Rename {
        id: String,
        to: String,
    },
    /// Delete the old collection (named `previous`) after a finished swap.
    DropPrevious {
        name: String,
    },
    /// Nothing left to do.
    Done,
    /// Cannot go on without a person: why.
    Stuck(String),
}

/// The next step of `entry` driven in `dir`, from the current names
/// (collection id → name). Forward falls back to back when the new
/// collection is gone; back gives the name to the new collection when the
/// old one is gone. Never renames onto a name another collection holds.
pub fn next_step(entry: &SwapEntry, names: &HashMap<String, String>, dir: Direction) -> Step {
    let old = names.get(&entry.old_id).map(String::as_str);
    let new = names.get(&entry.new_id).map(String::as_str);
    let holder = |name: &str| {
        names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.clone())
    };
    let rename_to = |id: &str, to: &str| match holder(to) {
        None => Step::Rename {
            id: id.to_string(),
            to: to.to_string(),
        },
        Some(other) => Step::Stuck(format!(
            "cannot rename collection {id} to {to:?}: collection {other} holds that name"
        )),
    };
    let target = entry.target.as_str();
    match dir {
        Direction::Forward => match new {
            None => next_step(entry, names, Direction::Back),
            Some(n) if n == target => {
                if entry.drop_previous && old == Some(entry.previous.as_str()) {
                    Step::DropPrevious {
                        name: entry.previous.clone(),
                    }
                } else {
                    Step::Done
                }
            }
            Some(_) if old == Some(target) => rename_to(&entry.old_id, &entry.previous),
            Some(_) => rename_to(&entry.new_id, target),
        },
        Direction::Back => match (old, new) {
            (Some(o), _) if o == target => Step::Done,
            // Neither collection exists any more: nothing to put back.
            (None, None) => Step::Done,
            (None, Some(n)) if n == target => Step::Done,
            // The old collection is gone: the new one is all there is.
            (None, Some(_)) => rename_to(&entry.new_id, target),
            (Some(_), Some(n)) if n == target => rename_to(&entry.new_id, &entry.staging),
            (Some(_), _) => rename_to(&entry.old_id, target),
        },
    }
}

/// What a swap or a recovery did, for logs, the audit trail and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The new collection holds the name.
    Finished,
    /// The old collection holds the name again.
    Undone,
    /// Neither collection exists any more; the entry was removed.
    Stale,
    /// The runner that wrote the entry still runs: left alone.
    InProgress,
    /// Needs a person; the entry is kept.
    Stuck { why: String },
}

/// One journal entry looked at by [`recover`].
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub entry: SwapEntry,
    pub resolution: Resolution,
    /// The renames and deletes done, in order.
    pub actions: Vec<String>,
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.entry;
        let what = match &self.resolution {
            Resolution::Finished => "finished".to_string(),
            Resolution::Undone => "undone".to_string(),
            Resolution::Stale => "already resolved (both collections gone)".to_string(),
            Resolution::InProgress => format!("left alone: {} still runs", e.runner),
            Resolution::Stuck { why } => format!(
                "NOT resolved: {why}; the old data is collection {} ({:?} or {:?}), the new is {} ({:?}); see the runbook, \"A swap interrupted by a crash\"",
                e.old_id, e.target, e.previous, e.new_id, e.staging
            ),
        };
        write!(
            f,
            "interrupted {} swap of {:?} (started {} by {}) {what}",
            e.operation, e.target, e.started_at, e.runner
        )?;
        if !self.actions.is_empty() {
            write!(f, ": {}", self.actions.join(", "))?;
        }
        Ok(())
    }
}

/// Why a swap failed.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("swapping {target:?} stopped: {why}. The swap journal (collection {JOURNAL_COLLECTION}) keeps the entry; the old data is collection {old_id}, the new is {new_id}; see the runbook, \"A swap interrupted by a crash\"")]
    Stuck {
        target: String,
        old_id: String,
        new_id: String,
        why: String,
    },
    #[error("swapping {target:?} was undone: {why}; {target:?} holds its previous data")]
    Undone { target: String, why: String },
    #[error("swapping {target:?} failed: {source}; {state}")]
    Failed {
        target: String,
        #[source]
        source: Box<ChromaError>,
        state: String,
    },
    #[error(transparent)]
    Chroma(#[from] ChromaError),
}

/// The journal collection, if it exists (reads never create it).
async fn journal(
    store: &ProductionChromaStore,
    create: bool,
) -> Result<Option<String>, ChromaError> {
    if create {
        let c = store
            .create_collection(&CreateCollection {
                name: JOURNAL_COLLECTION.to_string(),
                metadata: json!({"chromaprod": "swap journal: swaps in progress; do not edit"})
                    .as_object()
                    .cloned(),
                configuration: Some(json!({"hnsw": {"space": "l2"}})),
                get_or_create: true,
            })
            .await?;
        return Ok(Some(c.id));
    }
    match store.get_collection(JOURNAL_COLLECTION).await {
        Ok(c) => Ok(Some(c.id)),
        Err(ChromaError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn write_entry(store: &ProductionChromaStore, entry: &SwapEntry) -> Result<(), ChromaError> {
    let Some(journal) = journal(store, true).await? else {
        return Ok(());
    };
    let mut meta = serde_json::Map::new();
    meta.insert("kind".into(), json!("swap"));
    meta.insert("target".into(), json!(entry.target));
    let batch = RecordBatch {
        ids: vec![entry.record_id()],
        embeddings: Some(vec![vec![0.0]]),
        documents: Some(vec![Some(serde_json::to_string(entry).unwrap_or_default())]),
        metadatas: Some(vec![Some(meta)]),
        uris: None,
    };
    store.upsert_one(&journal, &batch).await
}

async fn remove_entry(store: &ProductionChromaStore, entry: &SwapEntry) -> Result<(), ChromaError> {
    if let Some(journal) = journal(store, false).await? {
        store
            .delete(&journal, Some(&[entry.record_id()]), None)
            .await?;
    }
    Ok(())
}

/// Every entry of the journal (none if it does not exist).
pub async fn entries(store: &ProductionChromaStore) -> Result<Vec<SwapEntry>, ChromaError> {
    let Some(journal) = journal(store, false).await? else {
        return Ok(Vec::new());
    };
    let got = store
        .get_records(
            &journal,
            &GetRequest {
                include: vec![Include::Documents],
                ..GetRequest::default()
            },
        )
        .await?;
    let mut out = Vec::new();
    for (id, doc) in got.ids.iter().zip(got.documents.unwrap_or_default()) {
        match serde_json::from_str(doc.as_deref().unwrap_or_default()) {
            Ok(e) => out.push(e),
            Err(e) => {
                return Err(ChromaError::Decode {
                    operation: "swap_journal",
                    endpoint: JOURNAL_COLLECTION.to_string(),
                    detail: format!("record {id}: {e}"),
                })
            }
        }
    }
    Ok(out)
}

async fn names(store: &ProductionChromaStore) -> Result<HashMap<String, String>, ChromaError> {
    Ok(store
        .list_collections()
        .await?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect())
}

/// Takes steps in `dir` until done; returns the actions taken, or the step
/// that needs a person.
async fn drive(
    store: &ProductionChromaStore,
    entry: &SwapEntry,
    dir: Direction,
    actions: &mut Vec<String>,
) -> Result<Result<(), String>, ChromaError> {
    for _ in 0..MAX_STEPS {
        let now = names(store).await?;
        match next_step(entry, &now, dir) {
            Step::Done => return Ok(Ok(())),
            Step::Stuck(why) => return Ok(Err(why)),
            Step::Rename { id, to } => {
                let from = now.get(&id).cloned().unwrap_or_default();
                store
                    .modify_collection(
                        &id,
                        &ModifyCollection {
                            new_name: Some(to.clone()),
                            ..ModifyCollection::default()
                        },
                    )
                    .await?;
                actions.push(format!("renamed {from:?} to {to:?} (collection {id})"));
            }
            Step::DropPrevious { name } => {
                match store.delete_collection(&name).await {
                    Ok(()) | Err(ChromaError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                actions.push(format!("deleted {name:?} (collection {})", entry.old_id));
            }
        }
    }
    Ok(Err(format!("no settled state after {MAX_STEPS} steps")))
}

/// Swaps `entry.target` to the new collection: journals the swap, renames,
/// then removes the journal entry. If a step fails before the new
/// collection holds the name, the swap is undone (and the entry removed
/// once it is); a swap that can neither finish nor be undone keeps its
/// entry for [`recover`].
pub async fn swap(store: &ProductionChromaStore, entry: &SwapEntry) -> Result<(), SwapError> {
    let _running = InFlight::enter(entry);
    write_entry(store, entry).await?;
    let mut actions = Vec::new();
    let stuck = |why: String| SwapError::Stuck {
        target: entry.target.clone(),
        old_id: entry.old_id.clone(),
        new_id: entry.new_id.clone(),
        why,
    };
    match drive(store, entry, Direction::Forward, &mut actions).await {
        Ok(Ok(())) => {
            let now = names(store).await?;
            if now.get(&entry.new_id) != Some(&entry.target) {
                remove_entry(store, entry).await?;
                return Err(SwapError::Undone {
                    target: entry.target.clone(),
                    why: format!(
                        "the new collection {} is gone (after: {})",
                        entry.new_id,
                        actions.join(", ")
                    ),
                });
            }
            remove_entry(store, entry).await?;
            tracing::info!(collection = %entry.target, operation = %entry.operation, actions = %actions.join(", "), "swapped");
            Ok(())
        }
        Ok(Err(why)) => Err(stuck(why)),
        Err(e) => {
            // Undo unless the new collection already holds the name (then
            // only dropping the old one is left, and recovery does that).
            let undone = async {
                let now = names(store).await?;
                if now.get(&entry.new_id) == Some(&entry.target) {
                    return Ok::<_, ChromaError>(false);
                }
                let mut back = Vec::new();
                let settled = drive(store, entry, Direction::Back, &mut back).await?;
                if settled.is_ok() {
                    remove_entry(store, entry).await?;
                }
                Ok(settled.is_ok())
            }
            .await;
            let state = match undone {
                Ok(true) => format!("{:?} was left as it was", entry.target),
                _ => format!(
                    "the swap journal (collection {JOURNAL_COLLECTION}) keeps the entry and the next start of the daemon or of an offline command finishes it"
                ),
            };
            Err(SwapError::Failed {
                target: entry.target.clone(),
                source: Box::new(e),
                state,
            })
        }
    }
}

/// Exchanges the names of two collections (`a` with id `a_id`, `b` with
/// `b_id`) through `a.swap-tmp`, as two journaled swaps: `a` goes to the
/// temporary name and `b` takes `a`; then `a`'s collection takes `b`. The
/// second entry is written before the first swap starts, so at every point
/// after a crash the journal names where both collections are.
pub async fn exchange(
    store: &ProductionChromaStore,
    operation: &str,
    (a, a_id): (&str, &str),
    (b, b_id): (&str, &str),
) -> Result<(), SwapError> {
    let tmp = format!("{a}.swap-tmp");
    let first = SwapEntry::new(operation, a, &tmp, b, a_id, b_id, false);
    let second = SwapEntry::new(operation, b, a, &tmp, b_id, a_id, false);
    let _second_running = InFlight::enter(&second);
    write_entry(store, &second).await?;
    swap(store, &first).await?;
    swap(store, &second).await
}

/// Finishes (or, when that cannot be, undoes) every swap in the journal
/// whose runner no longer runs; returns what it did, one per entry.
/// Entries that need a person are kept and reported as `Stuck`.
pub async fn recover(store: &ProductionChromaStore) -> Result<Vec<Recovered>, ChromaError> {
    // The second entry of an `exchange` can only go on once the first has
    // finished: an entry stuck in one pass is tried again after another
    // entry moved.
    let mut out = recover_pass(store).await?;
    if out
        .iter()
        .any(|r| matches!(r.resolution, Resolution::Stuck { .. }))
        && out.iter().any(|r| !r.actions.is_empty())
    {
        let again = recover_pass(store).await?;
        out.retain(|r| !matches!(r.resolution, Resolution::Stuck { .. }));
        out.extend(
            again.into_iter().filter(|r| {
                !matches!(r.resolution, Resolution::InProgress) || r.actions.is_empty()
            }),
        );
    }
    Ok(out)
}

async fn recover_pass(store: &ProductionChromaStore) -> Result<Vec<Recovered>, ChromaError> {
    let mut out = Vec::new();
    for entry in entries(store).await? {
        if runner_alive(&entry) {
            out.push(Recovered {
                entry,
                resolution: Resolution::InProgress,
                actions: Vec::new(),
            });
            continue;
        }
        let mut actions = Vec::new();
        let resolution = match drive(store, &entry, Direction::Forward, &mut actions).await? {
            Err(why) => Resolution::Stuck { why },
            Ok(()) => {
                let now = names(store).await?;
                remove_entry(store, &entry).await?;
                if now.get(&entry.new_id) == Some(&entry.target) {
                    Resolution::Finished
                } else if now.get(&entry.old_id) == Some(&entry.target) {
                    Resolution::Undone
                } else {
                    Resolution::Stale
                }
            }
        };
        out.push(Recovered {
            entry,
            resolution,
            actions,
        });
    }
    Ok(out)
}

mod runner;

use runner::{hostname, process_identity, runner_alive, InFlight};

#[cfg(test)]
mod tests;
