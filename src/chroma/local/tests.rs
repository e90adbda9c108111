//! The reader against databases laid out as Chroma 1.5.9 lays them out (the
//! suite's tests read a real Chroma's; these cover what one cannot easily
//! make a real Chroma write).

use rusqlite::Connection;

use super::rows::NEXT_PAGE;
use super::*;

use super::fixture::{database, COLLECTION, SEGMENT};

#[tokio::test]
async fn reads_the_position_and_pages_in_id_order() {
    let dir = tempfile::tempdir().expect("should succeed");
    database(dir.path(), &[("c", 3), ("a", 7), ("b", 5)], Some(7));
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let p = local.position(COLLECTION).await.expect("should succeed");
    assert_eq!(
        p,
        Position {
            file: local.file_identity().expect("should succeed"),
            segment: SEGMENT.into(),
            seq_id: 7,
            records: 3
        }
    );
    // The same file, however often asked; a copy of it is another file.
    assert_eq!(p.file, local.file_identity().expect("should succeed"));
    let copy = tempfile::tempdir().expect("should succeed");
    std::fs::copy(
        dir.path().join("chroma.sqlite3"),
        copy.path().join("chroma.sqlite3"),
    )
    .expect("should succeed");
    let copied = LocalChroma::open(copy.path())
        .await
        .expect("should succeed");
    assert_ne!(
        copied.file_identity().expect("should succeed"),
        p.file,
        "a copy has an identity of its own"
    );
    let written = |after: Option<&str>, since, limit| {
        let (local, after) = (local.clone(), after.map(String::from));
        async move {
            local
                .page_split(SEGMENT, after, since, limit, None)
                .await
                .expect("should succeed")
                .written
        }
    };
    assert_eq!(
        written(None, None, 2).await,
        vec![("a".to_string(), 7), ("b".to_string(), 5)]
    );
    assert_eq!(
        written(Some("b"), None, 2).await,
        vec![("c".to_string(), 3)]
    );
    assert_eq!(
        written(None, Some(4), 10).await,
        vec![("a".to_string(), 7), ("b".to_string(), 5)]
    );
}

#[tokio::test]
async fn rows_since_a_mark_read_every_page_even_those_with_nothing_written() {
    let dir = tempfile::tempdir().expect("should succeed");
    let n = 2 * PAGE + 500;
    let ids: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    // Only the last page's 100th row and the first page's first were
    // written after 10: the middle page reads out nothing.
    let rows: Vec<(&str, i64)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.as_str(),
                if i == 0 || i == 2 * PAGE + 99 { 11 } else { 1 },
            )
        })
        .collect();
    database(dir.path(), &rows, Some(11));
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let mut pages = Vec::new();
    let mut it = local.rows(SEGMENT, Some(10));
    while let Some(page) = it.next().await.expect("should succeed") {
        pages.push(page);
    }
    assert_eq!(
        pages,
        vec![
            vec![(ids[0].clone(), 11)],
            vec![],
            vec![(ids[2 * PAGE + 99].clone(), 11)]
        ]
    );
    let mut all = 0;
    let mut it = local.rows(SEGMENT, None);
    while let Some(page) = it.next().await.expect("should succeed") {
        all += page.len();
    }
    assert_eq!(all, n);
}

#[test]
fn a_page_after_the_first_reads_a_range_of_the_index_not_the_rows_before_it() {
    let dir = tempfile::tempdir().expect("should succeed");
    let conn = database(dir.path(), &[("a", 1)], Some(1));
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {NEXT_PAGE}"))
        .expect("should succeed")
        .query_map((SEGMENT, "a", 10), |r| r.get::<_, String>(3))
        .expect("should succeed")
        .collect::<Result<_, _>>()
        .expect("should succeed");
    assert!(
        plan.iter().any(|p| p.contains("embedding_id>?")),
        "{plan:?}"
    );
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
}

#[test]
fn while_chroma_writes_each_read_leaves_the_file_alone_longer_than_it_held_it() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut pace = Pace::default();
    assert_eq!(
        pace.wait(t0),
        Duration::ZERO,
        "the first read does not wait"
    );
    // The first read is paused as if Chroma wrote: a read of 3 ms, and the
    // next one waits four times that from its end.
    assert_eq!(LEFT_ALONE, 4);
    pace.held(t0, t0 + ms(3), Some(7));
    assert_eq!(pace.wait(t0 + ms(3)), ms(12));
    assert_eq!(pace.wait(t0 + ms(5)), ms(10));
    assert_eq!(pace.wait(t0 + ms(15)), Duration::ZERO);
    // Nothing committed since (the same data_version): no pause.
    pace.held(t0 + ms(15), t0 + ms(18), Some(7));
    assert_eq!(pace.wait(t0 + ms(18)), Duration::ZERO);
    // Chroma committed in between: paused...
    pace.held(t0 + ms(18), t0 + ms(20), Some(8));
    assert_eq!(pace.wait(t0 + ms(20)), ms(8));
    // ...and so is every read for a while after, commit or not: a steady
    // writer's next commit must not find reads back to back.
    pace.held(t0 + ms(28), t0 + ms(30), Some(8));
    assert_eq!(pace.wait(t0 + ms(30)), ms(8));
    let later = t0 + ms(20) + WRITING;
    pace.held(later - ms(3), later - ms(1), Some(8));
    assert_eq!(pace.wait(later - ms(1)), ms(8));
    // Once Chroma has not committed for that long, no pause.
    pace.held(later, later + ms(2), Some(8));
    assert_eq!(pace.wait(later + ms(2)), Duration::ZERO);
    // A data_version that could not be read counts as a write.
    pace.held(later + ms(2), later + ms(4), None);
    assert_eq!(pace.wait(later + ms(4)), ms(8));
    // A read that waited out Chroma's writer for a second does not keep
    // the next one waiting four more.
    pace.held(later, later + ms(1000), Some(9));
    assert_eq!(pace.wait(later + ms(1000)), MAX_LEFT_ALONE);
}

/// The pause follows the file: another connection's commit between two
/// reads moves `PRAGMA data_version`, and only for a while after one is the
/// file left alone.
#[tokio::test]
async fn reads_pause_only_after_another_connection_committed() {
    let dir = tempfile::tempdir().expect("should succeed");
    let writer = database(dir.path(), &[("a", 1), ("b", 2)], Some(2));
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let paused = |local: &LocalChroma| {
        local.conn.lock().expect("should succeed").pace.pause > Duration::ZERO
    };
    local.position(COLLECTION).await.expect("should succeed");
    local.position(COLLECTION).await.expect("should succeed");
    assert!(!paused(&local), "nothing was written between the reads");
    writer
        .execute(
            "INSERT INTO embeddings (segment_id, embedding_id, seq_id) VALUES (?1, 'c', 3)",
            [SEGMENT],
        )
        .expect("should succeed");
    local.position(COLLECTION).await.expect("should succeed");
    assert!(paused(&local), "a commit came between the reads");
    local.position(COLLECTION).await.expect("should succeed");
    assert!(paused(&local), "one did a moment ago");
    tokio::time::sleep(WRITING).await;
    local.position(COLLECTION).await.expect("should succeed");
    assert!(!paused(&local), "and none for a while");
}

#[tokio::test]
async fn a_split_page_reads_out_the_rows_written_since_and_counts_the_rest() {
    let dir = tempfile::tempdir().expect("should succeed");
    let conn = database(
        dir.path(),
        &[("c", 3), ("a", 7), ("b", 5), ("d", 9)],
        Some(9),
    );
    // A row an older Chroma wrote: a blob, its value (2) at the mark's side.
    conn.execute(
        "INSERT INTO embeddings (segment_id, embedding_id, seq_id) VALUES (?1, 'e', ?2)",
        (SEGMENT, 2u64.to_be_bytes().to_vec()),
    )
    .expect("should succeed");
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let first = local
        .page_split(SEGMENT, None, Some(4), 3, None)
        .await
        .expect("should succeed");
    assert_eq!(
        first,
        SplitPage {
            written: vec![("a".to_string(), 7), ("b".to_string(), 5)],
            at_or_before: 1,
            at_or_before_ids: id_hash("c"),
            next: Some("c".into()),
            sample: None,
        }
    );
    let rest = local
        .page_split(SEGMENT, first.next, Some(4), 3, None)
        .await
        .expect("should succeed");
    assert_eq!(
        rest,
        SplitPage {
            written: vec![("d".to_string(), 9)],
            at_or_before: 1,
            at_or_before_ids: id_hash("e"),
            next: None,
            sample: None,
        }
    );
    let all = local
        .page_split(SEGMENT, None, Some(9), 10, None)
        .await
        .expect("should succeed");
    assert_eq!(
        (all.written.len(), all.at_or_before, all.next),
        (0, 5, None)
    );
}

#[tokio::test]
async fn a_segment_never_written_stands_at_zero() {
    let dir = tempfile::tempdir().expect("should succeed");
    database(dir.path(), &[], None);
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let p = local.position(COLLECTION).await.expect("should succeed");
    assert_eq!((p.seq_id, p.records), (0, 0));
}

#[tokio::test]
async fn an_old_big_endian_blob_sequence_number_is_read() {
    let dir = tempfile::tempdir().expect("should succeed");
    let conn = database(dir.path(), &[], Some(9));
    conn.execute(
        "INSERT INTO embeddings (segment_id, embedding_id, seq_id) VALUES (?1, 'old', ?2)",
        (SEGMENT, 9u64.to_be_bytes().to_vec()),
    )
    .expect("should succeed");
    conn.execute(
        "INSERT INTO embeddings (segment_id, embedding_id, seq_id) VALUES (?1, 'odd', 'text')",
        [SEGMENT],
    )
    .expect("should succeed");
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let page = local
        .page_split(SEGMENT, Some("odd".into()), None, 10, None)
        .await
        .expect("should succeed");
    assert_eq!(page.written, vec![("old".to_string(), 9)]);
    let e = local
        .page_split(SEGMENT, None, None, 10, None)
        .await
        .expect_err("should fail");
    assert_eq!(e.reason(), "value", "{e}");
}

#[tokio::test]
async fn surprises_are_reasons_not_guesses() {
    let dir = tempfile::tempdir().expect("should succeed");
    let e = LocalChroma::open(dir.path())
        .await
        .expect_err("should fail");
    assert_eq!(e.reason(), "unreadable", "{e}");

    let conn = database(dir.path(), &[("a", 1)], Some(1));
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    let e = local
        .position("not-a-collection")
        .await
        .expect_err("should fail");
    assert_eq!(e.reason(), "no_collection", "{e}");
    drop(local);

    conn.execute_batch("ALTER TABLE embeddings RENAME COLUMN seq_id TO seq")
        .expect("should succeed");
    let e = LocalChroma::open(dir.path())
        .await
        .expect_err("should fail");
    assert_eq!(e.reason(), "schema", "{e}");
    assert!(e.to_string().contains("no column seq_id"), "{e}");

    conn.execute_batch(
        "ALTER TABLE embeddings RENAME COLUMN seq TO seq_id;
         INSERT INTO migrations VALUES ('metadb', 7, 'f', 's', 'h');",
    )
    .expect("should succeed");
    let e = LocalChroma::open(dir.path())
        .await
        .expect_err("should fail");
    assert_eq!(e.reason(), "schema", "{e}");
    assert!(e.to_string().contains("metadb 7"), "{e}");
}

#[tokio::test]
async fn reading_changes_nothing_in_the_file() {
    let dir = tempfile::tempdir().expect("should succeed");
    let conn = database(dir.path(), &[("a", 1)], Some(1));
    let mode: String = conn
        .query_row("PRAGMA journal_mode", (), |r| r.get(0))
        .expect("should succeed");
    drop(conn);
    let file = dir.path().join(DB_FILE);
    let before = std::fs::read(&file).expect("should succeed");
    let local = LocalChroma::open(dir.path()).await.expect("should succeed");
    local.position(COLLECTION).await.expect("should succeed");
    local
        .page_split(SEGMENT, None, Some(0), 10, None)
        .await
        .expect("should succeed");
    local
        .page_split(SEGMENT, None, None, 10, None)
        .await
        .expect("should succeed");
    drop(local);
    assert_eq!(std::fs::read(&file).expect("should succeed"), before);
    let conn = Connection::open(&file).expect("should succeed");
    let after: String = conn
        .query_row("PRAGMA journal_mode", (), |r| r.get(0))
        .expect("should succeed");
    assert_eq!(after, mode);
    assert!(
        !dir.path().join(format!("{DB_FILE}-wal")).exists(),
        "no WAL file appeared"
    );
}

#[test]
fn uri_paths_escape_what_a_uri_would_read() {
    assert_eq!(uri_path(Path::new("/var/lib/chroma")), "/var/lib/chroma");
    assert_eq!(uri_path(Path::new("/a?b#c%d")), "/a%3fb%23c%25d");
}
