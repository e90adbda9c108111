//! Progress of long-running work (backups, verifies, restores, migrations),
//! as typed events sent to whoever subscribes: the daemon's job table, the
//! CLI's renderer, the journal.
//!
//! A leaf: the engines send [`Event`]s through a [`Progress`] and know
//! nothing of their subscribers. An event serializes to the JSON object
//! the control socket sends as `{"type":"event","event":{…}}`
//! (docs/control-protocol.md), tagged by `phase`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

/// One step of progress; the `phase` field names the variant on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Event {
    /// A backup read and stored records of one collection.
    Backup {
        collection: String,
        records_done: u64,
        records_total: u64,
        bytes_written: u64,
    },
    /// A backup recorded its snapshot.
    Done {
        snapshot: String,
        bytes_written: u64,
    },
    /// A verify checked chunks of a snapshot.
    Verify { chunks_done: u64, chunks_total: u64 },
    /// A diff read and digested live records of one collection.
    Diff {
        collection: String,
        records_done: u64,
        records_total: u64,
    },
    /// A restore wrote records into its staging collection.
    Restore {
        collection: String,
        records_done: u64,
        records_total: u64,
    },
    /// A restore read records back and compared them with the snapshot.
    RestoreVerify {
        collection: String,
        records_done: u64,
        records_total: u64,
    },
    /// A delta restore read live records and compared them with the snapshot's.
    DeltaCompare {
        collection: String,
        records_done: u64,
        records_total: u64,
    },
    /// A delta restore wrote or deleted records that differ from the snapshot.
    DeltaWrite {
        collection: String,
        records_done: u64,
        records_total: u64,
    },
    /// A physical backup stored files of Chroma's persist directory.
    PhysicalBackup {
        files_done: u64,
        files_total: u64,
        bytes_written: u64,
    },
    /// A physical restore wrote files into the new persist directory.
    PhysicalRestore {
        files_done: u64,
        files_total: u64,
        bytes_written: u64,
    },
    /// A migration runner waits for the lock another runner holds.
    WaitingForLock { holder: String },
    /// A migration takes a restore point of these collections.
    RestorePoint { collections: Vec<String> },
    /// A migration's operation started or made progress.
    Migrate(MigrateStep),
    /// An operation of a migration being undone started.
    MigrateDown { version: u32, operation: String },
}

/// Where a migration is: its version and operation, and what the operation did so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateStep {
    pub version: u32,
    pub operation: String,
    #[serde(flatten)]
    pub detail: MigrateDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MigrateDetail {
    /// A step of a rebuild (`step` on the wire).
    Rebuild(RebuildStep),
    /// Operation `op_index` (from 0) of `ops` started.
    Started {
        name: String,
        op_index: usize,
        ops: usize,
    },
    /// Records of an operation done so far.
    Records {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        collection: Option<String>,
        records_done: u64,
        records_total: u64,
    },
}

/// The steps of a `rebuild` or `reembed` (`migrate::rebuild`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum RebuildStep {
    Copy {
        collection: String,
        records_done: u64,
        records_total: u64,
    },
    /// One catch-up pass: what it fixed, and its write requests to the
    /// copy and their time in all (beside busy writers, mostly their wait
    /// in Chroma's queue).
    CatchUp {
        collection: String,
        records_fixed: u64,
        #[serde(default)]
        write_requests: u32,
        #[serde(default)]
        write_ms: u64,
    },
    /// `overlap` is `null` when nothing was sampled.
    Verify {
        collection: String,
        overlap: Option<f64>,
    },
}

/// Units of work done out of a total, as a bar shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub done: u64,
    pub total: u64,
    /// `records` or `chunks`.
    pub unit: &'static str,
}

impl Event {
    /// The wire's `phase`.
    pub fn phase(&self) -> &'static str {
        match self {
            Event::Backup { .. } => "backup",
            Event::Done { .. } => "done",
            Event::Verify { .. } => "verify",
            Event::Diff { .. } => "diff",
            Event::Restore { .. } => "restore",
            Event::RestoreVerify { .. } => "restore_verify",
            Event::DeltaCompare { .. } => "delta_compare",
            Event::DeltaWrite { .. } => "delta_write",
            Event::PhysicalBackup { .. } => "physical_backup",
            Event::PhysicalRestore { .. } => "physical_restore",
            Event::WaitingForLock { .. } => "waiting_for_lock",
            Event::RestorePoint { .. } => "restore_point",
            Event::Migrate(_) => "migrate",
            Event::MigrateDown { .. } => "migrate_down",
        }
    }

    /// The collection the event is about, if one.
    pub fn collection(&self) -> Option<&str> {
        match self {
            Event::Backup { collection, .. }
            | Event::Diff { collection, .. }
            | Event::Restore { collection, .. }
            | Event::RestoreVerify { collection, .. }
            | Event::DeltaCompare { collection, .. }
            | Event::DeltaWrite { collection, .. } => Some(collection),
            Event::Migrate(m) => match &m.detail {
                MigrateDetail::Rebuild(
                    RebuildStep::Copy { collection, .. }
                    | RebuildStep::CatchUp { collection, .. }
                    | RebuildStep::Verify { collection, .. },
                ) => Some(collection),
                MigrateDetail::Records { collection, .. } => collection.as_deref(),
                MigrateDetail::Started { .. } => None,
            },
            _ => None,
        }
    }

    /// Work done out of a total, when the event counts.
    pub fn counts(&self) -> Option<Counts> {
        let records = |done: u64, total: u64| {
            Some(Counts {
                done,
                total,
                unit: "records",
            })
        };
        match self {
            Event::Backup {
                records_done,
                records_total,
                ..
            }
            | Event::Diff {
                records_done,
                records_total,
                ..
            }
            | Event::Restore {
                records_done,
                records_total,
                ..
            }
            | Event::RestoreVerify {
                records_done,
                records_total,
                ..
            }
            | Event::DeltaCompare {
                records_done,
                records_total,
                ..
            }
            | Event::DeltaWrite {
                records_done,
                records_total,
                ..
            } => records(*records_done, *records_total),
            Event::PhysicalBackup {
                files_done,
                files_total,
                ..
            }
            | Event::PhysicalRestore {
                files_done,
                files_total,
                ..
            } => Some(Counts {
                done: *files_done,
                total: *files_total,
                unit: "files",
            }),
            Event::Verify {
                chunks_done,
                chunks_total,
            } => Some(Counts {
                done: *chunks_done,
                total: *chunks_total,
                unit: "chunks",
            }),
            Event::Migrate(m) => match &m.detail {
                MigrateDetail::Records {
                    records_done,
                    records_total,
                    ..
                }
                | MigrateDetail::Rebuild(RebuildStep::Copy {
                    records_done,
                    records_total,
                    ..
                }) => records(*records_done, *records_total),
                _ => None,
            },
            _ => None,
        }
    }

    /// Bytes written to the repository so far, when the event says.
    pub fn bytes_written(&self) -> Option<u64> {
        match self {
            Event::Backup { bytes_written, .. }
            | Event::Done { bytes_written, .. }
            | Event::PhysicalBackup { bytes_written, .. } => Some(*bytes_written),
            _ => None,
        }
    }

    /// The event as the control socket sends it.
    pub fn to_json(&self) -> Value {
        // Serializing these plain fields cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A line for people: `backup docs: 1200/5000 records`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.phase().replace('_', " "))?;
        match self {
            Event::Migrate(m) => write!(f, " {} {}", m.version, m.operation)?,
            Event::MigrateDown { version, operation } => write!(f, " {version} {operation}")?,
            _ => {}
        }
        if let Event::Migrate(MigrateStep {
            detail: MigrateDetail::Rebuild(step),
            ..
        }) = self
        {
            f.write_str(match step {
                RebuildStep::Copy { .. } => " copy",
                RebuildStep::CatchUp { .. } => " catch-up",
                RebuildStep::Verify { .. } => " verify",
            })?;
        }
        if let Some(c) = self.collection() {
            write!(f, " {c}")?;
        }
        if let Some(c) = self.counts() {
            write!(f, ": {}/{} {}", c.done, c.total, c.unit)?;
        }
        match self {
            Event::Done { snapshot, .. } => write!(f, ": snapshot {snapshot}")?,
            Event::WaitingForLock { holder } => write!(f, ": held by {holder}")?,
            Event::RestorePoint { collections } => write!(f, ": {}", collections.join(", "))?,
            Event::Migrate(MigrateStep {
                detail:
                    MigrateDetail::Rebuild(RebuildStep::CatchUp {
                        records_fixed: n,
                        write_requests: w,
                        write_ms,
                        ..
                    }),
                ..
            }) => write!(
                f,
                ": {n} records fixed in {w} write requests ({:.1} s)",
                *write_ms as f64 / 1000.0
            )?,
            Event::Migrate(MigrateStep {
                detail:
                    MigrateDetail::Rebuild(RebuildStep::Verify {
                        overlap: Some(o), ..
                    }),
                ..
            }) => write!(f, ": overlap {o:.3}")?,
            _ => {}
        }
        Ok(())
    }
}

/// Something told about every event (the job table, a channel, the journal).
pub trait Subscriber: Send + Sync {
    fn event(&self, event: &Event);
}

/// Typed events to a channel (a renderer); lagging receivers lose events.
impl Subscriber for broadcast::Sender<Event> {
    fn event(&self, event: &Event) {
        let _ = self.send(event.clone());
    }
}

/// Events as the control socket's JSON, to a channel.
impl Subscriber for broadcast::Sender<Value> {
    fn event(&self, event: &Event) {
        let _ = self.send(event.to_json());
    }
}

/// Handed to long-running work to report progress; cheap to clone. Its
/// subscribers live as long as a clone does: dropping every clone closes
/// the channels of [`Progress::channel`] and [`Progress::detached`].
#[derive(Clone, Default)]
pub struct Progress {
    subscribers: Arc<Vec<Arc<dyn Subscriber>>>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Progress({} subscribers)", self.subscribers.len())
    }
}

impl Progress {
    /// Progress that nobody follows.
    pub fn none() -> Self {
        Progress::default()
    }

    /// Progress told to `subscribers`.
    pub fn to(subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Progress {
            subscribers: Arc::new(subscribers),
        }
    }

    /// This progress told to one more subscriber too.
    #[must_use]
    pub fn with(&self, subscriber: Arc<dyn Subscriber>) -> Self {
        let mut all = self.subscribers.as_ref().clone();
        all.push(subscriber);
        Progress::to(all)
    }

    /// Tells every subscriber.
    pub fn send(&self, event: Event) {
        for s in self.subscribers.iter() {
            s.event(&event);
        }
    }

    /// Progress to a channel of typed events (a renderer); the channel
    /// closes when every clone of the progress is dropped.
    pub fn channel() -> (Progress, broadcast::Receiver<Event>) {
        let (tx, rx) = broadcast::channel(64);
        (Progress::to(vec![Arc::new(tx)]), rx)
    }

    /// Progress to a channel of the control socket's JSON events (offline
    /// CLI runs, inline commands, tests); closes like [`Progress::channel`].
    pub fn detached() -> (Progress, broadcast::Receiver<Value>) {
        let (tx, rx) = broadcast::channel(64);
        (Progress::to(vec![Arc::new(tx)]), rx)
    }
}

/// Progress in the journal: a line with structured fields (`job`, `phase`,
/// `collection`, `done`, `total`, `unit`) when the phase changes, and at
/// most every `every` within one phase, so a long backup leaves a trace
/// without a line per batch.
pub struct Journal {
    job: u64,
    kind: String,
    every: Duration,
    last: Mutex<Option<(&'static str, Instant)>>,
}

impl Journal {
    pub fn new(job: u64, kind: &str, every: Duration) -> Self {
        Journal {
            job,
            kind: kind.to_string(),
            every,
            last: Mutex::new(None),
        }
    }
}

impl Subscriber for Journal {
    fn event(&self, event: &Event) {
        let phase = event.phase();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|(p, at)| p != phase || at.elapsed() >= self.every);
            if !due {
                return;
            }
            *last = Some((phase, Instant::now()));
        }
        let collection = event.collection().unwrap_or("");
        match event.counts() {
            Some(c) => tracing::info!(
                job = self.job,
                kind = %self.kind,
                phase,
                collection,
                done = c.done,
                total = c.total,
                unit = c.unit,
                bytes_written = event.bytes_written(),
                "progress: {event}"
            ),
            None => tracing::info!(
                job = self.job,
                kind = %self.kind,
                phase,
                collection,
                "progress: {event}"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
