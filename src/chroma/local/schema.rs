//! What chromaprod checks before it trusts Chroma's database: the migration
//! levels Chroma recorded and the columns it reads.

use rusqlite::Connection;

/// The migration level of each of Chroma's migration directories that
/// chromaprod was tested with (Chroma 1.5.9: `rust/sqlite/migrations`). A
/// database at any other level is read over HTTP instead.
pub const KNOWN_MIGRATIONS: &[(&str, i64)] =
    &[("embeddings_queue", 2), ("metadb", 6), ("sysdb", 10)];

/// The tables and columns read.
const COLUMNS: &[(&str, &[&str])] = &[
    ("embeddings", &["segment_id", "embedding_id", "seq_id"]),
    ("max_seq_id", &["segment_id", "seq_id"]),
    ("segments", &["id", "type", "scope", "collection"]),
];

#[derive(Debug)]
pub(super) enum Error {
    Sqlite(rusqlite::Error),
    Differs(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

/// Checks the migration levels and the columns; one short transaction per
/// query.
pub(super) fn check(conn: &Connection) -> Result<(), Error> {
    let mut levels: Vec<(String, i64)> = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT dir, MAX(version) FROM migrations GROUP BY dir ORDER BY dir")?;
        let mut rows = stmt.query(())?;
        while let Some(r) = rows.next()? {
            levels.push((r.get(0)?, r.get(1)?));
        }
    }
    let expected: Vec<(String, i64)> = KNOWN_MIGRATIONS
        .iter()
        .map(|(d, v)| ((*d).to_string(), *v))
        .collect();
    if levels != expected {
        return Err(Error::Differs(format!(
            "migrations at {}, tested at {}",
            describe(&levels),
            describe(&expected)
        )));
    }
    for (table, wanted) in COLUMNS {
        let mut have: Vec<String> = Vec::new();
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let mut rows = stmt.query([table])?;
        while let Some(r) = rows.next()? {
            have.push(r.get(0)?);
        }
        for column in *wanted {
            if !have.iter().any(|h| h == column) {
                return Err(Error::Differs(format!(
                    "table {table} has no column {column} (it has: {})",
                    if have.is_empty() {
                        "no such table".to_string()
                    } else {
                        have.join(", ")
                    }
                )));
            }
        }
    }
    Ok(())
}

fn describe(levels: &[(String, i64)]) -> String {
    if levels.is_empty() {
        return "none".into();
    }
    levels
        .iter()
        .map(|(d, v)| format!("{d} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
