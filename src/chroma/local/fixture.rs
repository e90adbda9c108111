//! A database laid out as Chroma 1.5.9 lays it out, for tests of what reads
//! it (what a real Chroma cannot easily be made to write).

use std::path::Path;

use rusqlite::Connection;

use super::{DB_FILE, KNOWN_MIGRATIONS, METADATA_SEGMENT};

pub(crate) const COLLECTION: &str = "6b4a1c1e-0000-4000-8000-000000000001";
pub(crate) const SEGMENT: &str = "5a3e0000-0000-4000-8000-00000000000a";

/// A database with Chroma's migration levels and the tables read, holding
/// `rows` as `(embedding_id, seq_id)` of one collection.
pub(crate) fn database(dir: &Path, rows: &[(&str, i64)], max_seq: Option<i64>) -> Connection {
    let conn = Connection::open(dir.join(DB_FILE)).expect("should succeed");
    conn.execute_batch(
        "CREATE TABLE migrations (dir TEXT NOT NULL, version INTEGER NOT NULL, filename TEXT NOT NULL, \
            sql TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (dir, version));
         CREATE TABLE segments (id TEXT PRIMARY KEY, type TEXT NOT NULL, scope TEXT NOT NULL, collection TEXT NOT NULL);
         CREATE TABLE embeddings (id INTEGER PRIMARY KEY, segment_id TEXT NOT NULL, embedding_id TEXT NOT NULL, \
            seq_id BLOB NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, UNIQUE (segment_id, embedding_id));
         CREATE TABLE max_seq_id (segment_id TEXT PRIMARY KEY, seq_id INTEGER);",
    )
    .expect("should succeed");
    for (dir, level) in KNOWN_MIGRATIONS {
        for v in 1..=*level {
            conn.execute(
                "INSERT INTO migrations VALUES (?1, ?2, 'f', 's', 'h')",
                (dir, v),
            )
            .expect("should succeed");
        }
    }
    conn.execute(
        "INSERT INTO segments VALUES (?1, ?2, 'METADATA', ?3), ('vec', 'urn:chroma:segment/vector/hnsw-local-persisted', 'VECTOR', ?3)",
        (SEGMENT, METADATA_SEGMENT, COLLECTION),
    )
    .expect("should succeed");
    conn.execute_batch("BEGIN").expect("should succeed");
    for (id, seq) in rows {
        conn.execute(
            "INSERT INTO embeddings (segment_id, embedding_id, seq_id) VALUES (?1, ?2, ?3)",
            (SEGMENT, id, seq),
        )
        .expect("should succeed");
    }
    conn.execute_batch("COMMIT").expect("should succeed");
    if let Some(m) = max_seq {
        conn.execute("INSERT INTO max_seq_id VALUES (?1, ?2)", (SEGMENT, m))
            .expect("should succeed");
    }
    conn
}
