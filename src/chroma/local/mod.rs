//! Chroma's persist directory, read only: what a single-node Chroma on this
//! host wrote to a collection since a sequence number.
//!
//! Chroma keeps, in `chroma.sqlite3`, one row per record of a collection's
//! metadata segment (`embeddings(segment_id, embedding_id, seq_id)`), whose
//! `seq_id` is the sequence number of the record's last write: an add, an
//! upsert, a metadata-only and an embedding-only update each set it; a
//! delete removes the row. `max_seq_id` holds the segment's applied
//! position, written in the same transaction as the rows. That is the change
//! feed the HTTP API lacks (see DESIGN.md, "Chroma's own files").
//!
//! These files are Chroma's, so this module:
//! - opens the database `mode=ro` (SQLite cannot write through it) and sets
//!   only connection-level pragmas (`query_only`, a busy timeout), never one
//!   that persists, and never touches the journal mode;
//! - keeps each read transaction short (Chroma uses a rollback journal, so
//!   a reader briefly holds its writer back): one query per transaction,
//!   listings in keyset pages of [`PAGE`] rows (about a millisecond each),
//!   the file left alone between reads, while Chroma writes, four times as
//!   long as the last one held it ([`Pace`]);
//! - checks the schema (Chroma's migration levels and the columns read)
//!   before trusting it ([`schema`]);
//! - answers every surprise with [`Unusable`], which callers treat as a
//!   reason to fall back to reading over HTTP, never to guess.

mod physical;
mod rows;
mod sample;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub use physical::{
    copy_facts, migration_levels, CopyFacts, MigrationLevels, VectorSegment, VECTOR_SEGMENT,
};
pub use rows::{Rows, SplitPage};
pub use sample::{mix, Sample};
pub use schema::KNOWN_MIGRATIONS;

/// Rows per listing page: one read transaction each, under a millisecond,
/// so a writer that finds the file held is let through by the first sleep
/// of its busy handler (1 ms). Pages of 2,000 (1–2 ms) slowed Chroma's adds
/// more under a reader in a loop (docs/benchmarks.md, runs C6–C8).
pub const PAGE: usize = 1_000;
/// How long a read waits for Chroma's writer to let go before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Chroma's database file in its persist directory.
pub const DB_FILE: &str = "chroma.sqlite3";
/// Chroma's name for a collection's metadata segment.
const METADATA_SEGMENT: &str = "urn:chroma:segment/metadata/sqlite";

/// Why the persist directory cannot be trusted for this read. Each is a
/// reason to fall back to the HTTP way; [`Unusable::reason`] is its metric
/// label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("cannot read {path}: {why}")]
    Unreadable { path: String, why: String },
    #[error("Chroma's database schema is not the one chromaprod was tested with: {0}")]
    Schema(String),
    #[error("Chroma's database has a hot journal (a writer crashed mid-transaction); Chroma rolls it back when it next opens the file")]
    HotJournal,
    #[error("Chroma's writer held the database for over {}s", BUSY_TIMEOUT.as_secs())]
    Busy,
    #[error("collection {0} is not in the persist directory (is chroma.persist_directory the directory this server uses?)")]
    NoCollection(String),
    #[error("collection {collection}'s metadata segment changed from {was} to {now}")]
    SegmentChanged {
        collection: String,
        was: String,
        now: String,
    },
    #[error("collection {collection}'s sequence went backwards: {now} after {was}")]
    SequenceBackwards {
        collection: String,
        was: u64,
        now: u64,
    },
    #[error("record {id:?} has sequence number {seq} (at most {mark}) but is not in the parent snapshot")]
    UnknownRecord { id: String, seq: u64, mark: u64 },
    #[error("collection {collection} holds {local} records in the persist directory and {server} on the server (is chroma.persist_directory the directory this server uses?)")]
    CountMismatch {
        collection: String,
        local: u64,
        server: u64,
    },
    #[error("unexpected value in Chroma's database: {0}")]
    Value(String),
    #[error("Chroma's database file is not the one the snapshot's mark was read from (was {was}, now {now}): the persist directory was restored or copied since, so its sequence numbers may have been reused")]
    Replaced { was: String, now: String },
}

impl Unusable {
    /// A short, fixed label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Unusable::Unreadable { .. } => "unreadable",
            Unusable::Schema(_) => "schema",
            Unusable::HotJournal => "hot_journal",
            Unusable::Busy => "busy",
            Unusable::NoCollection(_) => "no_collection",
            Unusable::SegmentChanged { .. } => "segment_changed",
            Unusable::SequenceBackwards { .. } => "sequence_backwards",
            Unusable::UnknownRecord { .. } => "unknown_record",
            Unusable::CountMismatch { .. } => "count_mismatch",
            Unusable::Value(_) => "value",
            Unusable::Replaced { .. } => "file_replaced",
        }
    }

    /// Logs that `collection` is read without the change feed (`instead`:
    /// how it is read) and counts it
    /// (`chromaprod_change_feed_reads_total{outcome="fallback"}`).
    pub fn report(
        &self,
        metrics: &crate::observe::MetricsCollector,
        collection: &str,
        instead: &str,
    ) {
        tracing::warn!(collection, reason = self.reason(), error = %self, "{instead}: the change feed cannot be used");
        metrics.change_feed(Some(self.reason()));
    }

    fn from_sqlite(path: &Path, e: &rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Unusable::Busy,
            // A read-only connection cannot roll back a hot journal.
            Some(ErrorCode::ReadOnly) => Unusable::HotJournal,
            _ => Unusable::Unreadable {
                path: path.display().to_string(),
                why: e.to_string(),
            },
        }
    }
}

/// Where a collection's metadata segment stands: the sequence number of the
/// last write applied to it and its record count, read in one transaction,
/// and which database file it was read from ([`LocalChroma::file_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    pub segment: String,
    pub seq_id: u64,
    pub records: u64,
}

/// A read-only connection to a local Chroma's database, shareable between
/// tasks (reads run on the blocking pool, one at a time, paced).
#[derive(Clone)]
pub struct LocalChroma {
    path: PathBuf,
    conn: Arc<Mutex<Reader>>,
}

struct Reader {
    conn: Connection,
    pace: Pace,
}

/// How reads share Chroma's file with its writer. Chroma keeps a rollback
/// journal, so its writer cannot commit while any read transaction is open:
/// it sleeps in SQLite's busy handler (1, 2, 5, 10 ms …) until the reader
/// lets go. Back to back, short reads still hold the file nearly all the
/// time and meet almost every commit. So while Chroma writes, each read is
/// followed by a pause [`LEFT_ALONE`] times as long as the read held the
/// file, and chromaprod holds it at most a fifth of the time: a listing of
/// 100,000 rows (100 pages of under a millisecond) then takes about a third
/// of a second longer. While Chroma does not write, nobody waits for the
/// file and reads follow each other without a pause.
///
/// Chroma writes while it has committed within the last [`WRITING`]:
/// `PRAGMA data_version`, read after each read, moves when another
/// connection has committed since this connection's previous look. The
/// first read, and a read after which the version could not be read, are
/// paused as if Chroma wrote.
#[derive(Debug, Default)]
struct Pace {
    /// When the previous read let go of the file.
    ended: Option<Instant>,
    /// How long the file is left alone after it.
    pause: Duration,
    /// `PRAGMA data_version` after the previous read.
    version: Option<i64>,
    /// When a read last found that Chroma had committed.
    wrote: Option<Instant>,
}

/// While Chroma writes, how many times as long as a read held the file it is
/// left alone after. (The whole listing in a loop slowed Chroma's adds
/// 1.34–1.50× left alone once as long, 1.13–1.26× twice: runs C6–C8 in
/// docs/benchmarks.md; four times, while Chroma writes: run C9.)
pub const LEFT_ALONE: u32 = 4;
/// The longest pause between two reads.
const MAX_LEFT_ALONE: Duration = Duration::from_millis(100);
/// How long after a commit was last seen Chroma counts as writing: longer
/// than the gaps between a steady writer's commits, so every read of a scan
/// under writes is paced, not only the first after each commit.
const WRITING: Duration = Duration::from_secs(1);

impl Pace {
    /// How long a read about to begin at `now` waits first.
    fn wait(&self, now: Instant) -> Duration {
        self.ended.map_or(Duration::ZERO, |ended| {
            (ended + self.pause).saturating_duration_since(now)
        })
    }

    /// A read held the file from `began` to `ended`, after which the
    /// connection's `PRAGMA data_version` was `version` (`None`: not known).
    /// (The read's time includes any wait for Chroma's writer, up to the
    /// busy timeout: the pause is capped at [`MAX_LEFT_ALONE`].)
    fn held(&mut self, began: Instant, ended: Instant, version: Option<i64>) {
        let writing = self.looked(ended, version);
        self.ended = Some(ended);
        self.pause = if writing {
            (ended.saturating_duration_since(began) * LEFT_ALONE).min(MAX_LEFT_ALONE)
        } else {
            Duration::ZERO
        };
    }

    /// The connection's `PRAGMA data_version` was `version` at `at`
    /// (`None`: not known): whether Chroma writes, that is, has committed
    /// within [`WRITING`]. Unknown (a first look, or one that failed)
    /// counts as writing.
    fn looked(&mut self, at: Instant, version: Option<i64>) -> bool {
        let first = self.version.is_none();
        if !first && version.is_some() && version != self.version {
            self.wrote = Some(at);
        }
        self.version = version;
        first
            || version.is_none()
            || self
                .wrote
                .is_some_and(|w| at.saturating_duration_since(w) < WRITING)
    }
}

impl std::fmt::Debug for LocalChroma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalChroma")
            .field("path", &self.path)
            .finish()
    }
}

impl LocalChroma {
    /// Opens `<persist_directory>/chroma.sqlite3` read-only and checks its
    /// schema.
    pub async fn open(persist_directory: &Path) -> Result<Self, Unusable> {
        let path = persist_directory.join(DB_FILE);
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|e| Unusable::Value(format!("reader task failed: {e}")))?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, Unusable> {
        // A missing file would otherwise be created by SQLite... not with
        // READ_ONLY, but say plainly what is missing.
        if let Err(e) = std::fs::metadata(&path) {
            return Err(Unusable::Unreadable {
                path: path.display().to_string(),
                why: e.to_string(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let uri = format!("file:{}?mode=ro", uri_path(&path));
        let conn = Connection::open_with_flags(&uri, flags)
            .map_err(|e| Unusable::from_sqlite(&path, &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| Unusable::from_sqlite(&path, &e))?;
        // Connection-level only: nothing of this persists in Chroma's file.
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| Unusable::from_sqlite(&path, &e))?;
        schema::check(&conn).map_err(|e| match e {
            schema::Error::Sqlite(e) => Unusable::from_sqlite(&path, &e),
            schema::Error::Differs(what) => Unusable::Schema(what),
        })?;
        Ok(LocalChroma {
            path,
            conn: Arc::new(Mutex::new(Reader {
                conn,
                pace: Pace::default(),
            })),
        })
    }

    /// The configured local Chroma (`chroma.persist_directory`), if set
    /// and readable; a directory that cannot be used is logged and counted
    /// (`chromaprod_change_feed_reads_total{outcome="fallback"}`), and the
    /// caller reads over HTTP.
    pub async fn configured(
        config: &crate::config::Config,
        metrics: &crate::observe::MetricsCollector,
    ) -> Option<LocalChroma> {
        let dir = config.chroma.persist_directory.as_ref()?;
        match LocalChroma::open(dir).await {
            Ok(local) => Some(local),
            Err(why) => {
                tracing::warn!(reason = why.reason(), error = %why, "not reading chroma.persist_directory: reading every record over HTTP");
                metrics.change_feed(Some(why.reason()));
                None
            }
        }
    }

    /// The database file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one read (one transaction) on the blocking pool, after leaving
    /// the file alone after the previous read ([`Pace`]).
    async fn read<T, F>(&self, f: F) -> Result<T, Unusable>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<Result<T, Unusable>> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            std::thread::sleep(conn.pace.wait(Instant::now()));
            let began = Instant::now();
            let out = f(&conn.conn);
            let ended = Instant::now();
            let version = data_version(&conn.conn);
            conn.pace.held(began, ended, version);
            out.map_err(|e| Unusable::from_sqlite(&path, &e))?
        })
        .await
        .map_err(|e| Unusable::Value(format!("reader task failed: {e}")))?
    }

    /// Whether Chroma writes now: it has committed within [`WRITING`] (or
    /// that cannot be told). One look at `PRAGMA data_version`, which
    /// reads no table: for work beside the file's reads, such as requests
    /// to the server ([`crate::chroma::courtesy`]), to leave Chroma alone
    /// while it writes.
    pub async fn writing(&self) -> bool {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let version = data_version(&conn.conn);
            conn.pace.looked(Instant::now(), version)
        })
        .await
        .unwrap_or(true)
    }

    /// Which database file this is: its device, inode and creation time.
    /// Chroma writes `chroma.sqlite3` in place for its whole life (rollback
    /// journal, `VACUUM` included), so another identity means the persist
    /// directory was put back from a copy: its sequence may have been rewound
    /// and numbers below a mark reused. Without a creation time (file systems
    /// that keep none), device and inode alone.
    pub fn file_identity(&self) -> Result<String, Unusable> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.path).map_err(|e| Unusable::Unreadable {
            path: self.path.display().to_string(),
            why: e.to_string(),
        })?;
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(String::new, |d| format!(":{}", d.as_nanos()));
        Ok(format!("{}:{}{born}", meta.dev(), meta.ino()))
    }

    /// Where `collection_id`'s metadata segment stands now.
    pub async fn position(&self, collection_id: &str) -> Result<Position, Unusable> {
        let id = collection_id.to_string();
        let file = self.file_identity()?;
        // One statement: one read transaction, consistent.
        self.read(move |conn| position_in(conn, &id, file)).await
    }
}

/// The connection's `PRAGMA data_version`: it moves when another
/// connection has committed since this one's previous look (`None`: it
/// could not be read).
fn data_version(conn: &Connection) -> Option<i64> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
        .ok()
}

/// A 64-bit hash of a record id (SipHash, fixed keys), cheap enough for
/// every row of a page: XORed over a set of ids, it tells two sets apart
/// (unless they differ by a collision, about 2^-64).
pub fn id_hash(id: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// [`LocalChroma::position`]'s query: the metadata segment of
/// `collection_id`, its applied `seq_id` and its record count, in one
/// statement.
fn position_in(
    conn: &Connection,
    collection_id: &str,
    file: String,
) -> rusqlite::Result<Result<Position, Unusable>> {
    let row = conn
        .query_row(
            "SELECT s.id, m.seq_id, \
                (SELECT COUNT(*) FROM embeddings e WHERE e.segment_id = s.id) \
             FROM segments s LEFT JOIN max_seq_id m ON m.segment_id = s.id \
             WHERE s.collection = ?1 AND s.scope = 'METADATA' AND s.type = ?2",
            (collection_id, METADATA_SEGMENT),
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    seq_value(r.get_ref(1)?),
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(match row {
        None => Err(Unusable::NoCollection(collection_id.to_string())),
        Some((segment, seq, records)) => {
            // A segment nothing was written to yet has no position.
            let seq_id = match seq {
                Seq::Null => Ok(0),
                s => s.value(),
            };
            seq_id.map(|seq_id| Position {
                file,
                segment,
                seq_id,
                records: u64::try_from(records).unwrap_or(0),
            })
        }
    })
}

/// A `seq_id` as stored: an integer (Chroma 1.x) or, in rows an older Chroma
/// wrote, an 8-byte big-endian blob.
enum Seq {
    Null,
    Int(i64),
    Other(String),
}

impl Seq {
    fn value(self) -> Result<u64, Unusable> {
        match self {
            Seq::Int(i) => u64::try_from(i).map_err(|_| Unusable::Value(format!("seq_id {i}"))),
            Seq::Null => Err(Unusable::Value("seq_id is NULL".into())),
            Seq::Other(what) => Err(Unusable::Value(format!("seq_id is {what}"))),
        }
    }
}

fn seq_value(v: ValueRef<'_>) -> Seq {
    match v {
        ValueRef::Null => Seq::Null,
        ValueRef::Integer(i) => Seq::Int(i),
        ValueRef::Blob(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            i64::try_from(u64::from_be_bytes(a))
                .map(Seq::Int)
                .unwrap_or_else(|_| Seq::Other("a blob out of range".into()))
        }
        ValueRef::Blob(b) => Seq::Other(format!("a {}-byte blob", b.len())),
        ValueRef::Real(_) => Seq::Other("a real".into()),
        ValueRef::Text(_) => Seq::Other("text".into()),
    }
}

/// A path as a `file:` URI path: `?`, `#` and `%` escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
