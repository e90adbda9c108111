//! What a physical snapshot reads of a local Chroma's files: its vector
//! segments and their flushed positions, a consistent copy of
//! `chroma.sqlite3` through SQLite's online backup API, and the migration
//! levels of a database file.
//!
//! The source of the copy is this module's `mode=ro` connection: SQLite
//! cannot write Chroma's file through it. The backup runs in one step, so
//! it holds a read lock (which keeps Chroma's writer from committing) for
//! exactly the time it copies the pages, measured and returned.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{seq_value, uri_path, LocalChroma, Seq, Unusable};

/// Chroma's name for a collection's vector segment on a single node.
pub const VECTOR_SEGMENT: &str = "urn:chroma:segment/vector/hnsw-local-persisted";

/// A collection's vector segment: its files live in
/// `<persist_directory>/<segment>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSegment {
    pub segment: String,
    pub collection_id: String,
    pub collection: String,
}

/// A migration level of a database: Chroma's migration directory and the
/// highest version applied from it.
pub type MigrationLevels = Vec<(String, i64)>;

impl LocalChroma {
    /// Every collection's vector segment, in segment id order.
    pub async fn vector_segments(&self) -> Result<Vec<VectorSegment>, Unusable> {
        self.read(|conn| Ok(Ok(vector_segments(conn)?))).await
    }

    /// The position a vector segment was last flushed at (`max_seq_id`), or
    /// `None` before its first flush.
    pub async fn flushed_at(&self, segment: &str) -> Result<Option<u64>, Unusable> {
        let segment = segment.to_string();
        self.read(move |conn| {
            let v = flushed_at(conn, &segment)?;
            Ok(v)
        })
        .await
    }

    /// Copies the database to `dest` (a new file) with SQLite's online
    /// backup API, in one step: consistent, and Chroma's writer waits for
    /// at most the returned duration.
    pub async fn backup_to(&self, dest: &Path) -> Result<Duration, Unusable> {
        let dest = dest.to_path_buf();
        self.read(move |conn| {
            let mut out = Connection::open(&dest)?;
            let started = Instant::now();
            let backup = rusqlite::backup::Backup::new(conn, &mut out)?;
            // -1: every page in one step, under one read lock; stepping in
            // pieces restarts from scratch each time Chroma writes.
            let step = backup.step(-1)?;
            let held = started.elapsed();
            drop(backup);
            Ok(match step {
                rusqlite::backup::StepResult::Done => Ok(held),
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    Err(Unusable::Busy)
                }
                other => Err(Unusable::Value(format!(
                    "the database copy did not complete ({other:?})"
                ))),
            })
        })
        .await
    }
}

fn vector_segments(conn: &Connection) -> rusqlite::Result<Vec<VectorSegment>> {
    let mut stmt = conn.prepare(
        "SELECT s.id, s.collection, COALESCE(c.name, '') FROM segments s \
         LEFT JOIN collections c ON c.id = s.collection \
         WHERE s.type = ?1 ORDER BY s.id",
    )?;
    let rows = stmt.query_map([VECTOR_SEGMENT], |r| {
        Ok(VectorSegment {
            segment: r.get(0)?,
            collection_id: r.get(1)?,
            collection: r.get(2)?,
        })
    })?;
    rows.collect()
}

fn flushed_at(conn: &Connection, segment: &str) -> rusqlite::Result<Result<Option<u64>, Unusable>> {
    let v = conn
        .query_row(
            "SELECT seq_id FROM max_seq_id WHERE segment_id = ?1",
            [segment],
            |r| Ok(seq_value(r.get_ref(0)?)),
        )
        .optional()?;
    Ok(match v {
        None | Some(Seq::Null) => Ok(None),
        Some(s) => s.value().map(Some),
    })
}

/// A database file of our own (a copy), opened read-only: no locking
/// concerns, it is nobody else's.
fn open_copy(db: &Path) -> Result<Connection, Unusable> {
    let uri = format!("file:{}?mode=ro", uri_path(db));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(uri, flags).map_err(|e| Unusable::from_sqlite(db, &e))
}

/// What a copy of the database says: each vector segment's flushed
/// position and each collection's record count (metadata segment rows).
#[derive(Debug, Clone, Default)]
pub struct CopyFacts {
    /// `(segment, max_seq_id)` of every vector segment.
    pub flushed: Vec<(String, Option<u64>)>,
    /// `(collection id, records)`.
    pub records: Vec<(String, u64)>,
    pub segments: Vec<VectorSegment>,
    pub migrations: MigrationLevels,
}

/// Reads [`CopyFacts`] from a database copy (blocking).
pub fn copy_facts(db: &Path) -> Result<CopyFacts, Unusable> {
    let conn = open_copy(db)?;
    let sql = |e: rusqlite::Error| Unusable::from_sqlite(db, &e);
    let segments = vector_segments(&conn).map_err(sql)?;
    let mut flushed = Vec::new();
    for s in &segments {
        flushed.push((
            s.segment.clone(),
            flushed_at(&conn, &s.segment).map_err(sql)??,
        ));
    }
    let mut stmt = conn
        .prepare(
            "SELECT s.collection, COUNT(e.id) FROM segments s \
             LEFT JOIN embeddings e ON e.segment_id = s.id \
             WHERE s.scope = 'METADATA' GROUP BY s.collection ORDER BY s.collection",
        )
        .map_err(sql)?;
    let records = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })
        .and_then(Iterator::collect)
        .map_err(sql)?;
    let migrations = levels(&conn).map_err(sql)?;
    Ok(CopyFacts {
        flushed,
        records,
        segments,
        migrations,
    })
}

/// The migration levels recorded in the database file `db`, read through a
/// `mode=ro` connection in one short transaction (blocking).
pub fn migration_levels(db: &Path) -> Result<MigrationLevels, Unusable> {
    if let Err(e) = std::fs::metadata(db) {
        return Err(Unusable::Unreadable {
            path: db.display().to_string(),
            why: e.to_string(),
        });
    }
    let conn = open_copy(db)?;
    conn.busy_timeout(super::BUSY_TIMEOUT)
        .map_err(|e| Unusable::from_sqlite(db, &e))?;
    levels(&conn).map_err(|e| Unusable::from_sqlite(db, &e))
}

fn levels(conn: &Connection) -> rusqlite::Result<MigrationLevels> {
    let mut stmt =
        conn.prepare("SELECT dir, MAX(version) FROM migrations GROUP BY dir ORDER BY dir")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}
