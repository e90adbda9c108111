//! A consistent copy of a running Chroma's persist directory into a
//! staging directory, without stopping Chroma.
//!
//! Chroma flushes a vector segment (writes its HNSW files, then records the
//! position in `max_seq_id`) every `sync_threshold` records, and replays its
//! write-ahead log (`embeddings_queue`) above that position when it starts.
//! So a copy is consistent when each segment's files are the ones flushed at
//! the `max_seq_id` the database copy holds. The protocol:
//!
//! 1. per vector segment: read its `max_seq_id`, then copy its files,
//!    recording size, mtime and SHA-256 of what was copied;
//! 2. copy `chroma.sqlite3` with SQLite's online backup API (one step);
//! 3. per segment: its `max_seq_id` in the database copy and in the live
//!    database must equal the one read in 1, and its live files must still
//!    have the recorded size, mtime and hash ([`Moved`]). Segments that
//!    moved are copied again and the database with them (2–3), at most
//!    [`ATTEMPTS`] rounds; a segment that never settles is an error naming it.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::backup::crypto::to_hex;
use crate::backup::BackupError;
use crate::chroma::local::{copy_facts, CopyFacts, LocalChroma, VectorSegment, DB_FILE};

/// Copy rounds before a segment that keeps moving is an error.
pub const ATTEMPTS: u32 = 5;
/// Pause between rounds, so a flush under way can finish.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(200);

/// One copied file: what it was when copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub size: u64,
    pub mtime: Option<SystemTime>,
    pub sha256: String,
}

/// A segment's files as copied, by file name, and its position then.
#[derive(Debug, Clone)]
struct SegmentCopy {
    segment: VectorSegment,
    flushed: Option<u64>,
    files: BTreeMap<String, FileState>,
}

/// The staged copy: a directory laid out as Chroma's persist directory.
#[derive(Debug)]
pub struct Staged {
    pub dir: tempfile::TempDir,
    /// Relative paths and states of every staged file, `chroma.sqlite3` first.
    pub files: Vec<(String, FileState)>,
    pub facts: CopyFacts,
    /// The longest time one database copy held Chroma's writer back.
    pub writer_blocked: Duration,
    pub attempts: u32,
}

/// Whether a segment moved between its copy and the database copy: its
/// position differs (in the copy or live now) or its live files differ.
/// Pure: states in, a verdict out.
pub fn moved(
    copied_at: Option<u64>,
    in_db_copy: Option<u64>,
    live_now: Option<u64>,
    copied: &BTreeMap<String, FileState>,
    live: &BTreeMap<String, FileState>,
) -> bool {
    copied_at != in_db_copy || copied_at != live_now || copied != live
}

fn io(action: &'static str, path: &Path, e: &std::io::Error) -> BackupError {
    BackupError::LocalIo {
        action,
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// Copies `from` to `to` (when given) and returns the state of what was
/// read. Blocking.
fn copy_file(from: &Path, to: Option<&Path>) -> Result<FileState, BackupError> {
    let mut src = std::fs::File::open(from).map_err(|e| io("read", from, &e))?;
    let meta = src.metadata().map_err(|e| io("read", from, &e))?;
    let mut out = match to {
        Some(to) => Some(std::fs::File::create(to).map_err(|e| io("write", to, &e))?),
        None => None,
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read", from, &e)),
        };
        ctx.update(&buf[..n]);
        if let (Some(out), Some(to)) = (out.as_mut(), to) {
            out.write_all(&buf[..n]).map_err(|e| io("write", to, &e))?;
        }
        size += n as u64;
    }
    Ok(FileState {
        size,
        mtime: meta.modified().ok(),
        sha256: to_hex(ctx.finish().as_ref()),
    })
}

/// The regular files of a segment directory (none if it does not exist
/// yet: Chroma creates it at the first flush). With `to`, copied there.
fn segment_files(
    dir: &Path,
    to: Option<&Path>,
) -> Result<BTreeMap<String, FileState>, BackupError> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("list", dir, &e)),
    };
    if let Some(to) = to {
        std::fs::create_dir_all(to).map_err(|e| io("create", to, &e))?;
    }
    for entry in entries {
        let entry = entry.map_err(|e| io("list", dir, &e))?;
        let ft = entry.file_type().map_err(|e| io("list", dir, &e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !ft.is_file() {
            continue;
        }
        let from = entry.path();
        let dest = to.map(|t| t.join(&name));
        // The size and mtime are taken before reading: a write during the
        // read changes them, and the check after compares with now.
        let before = std::fs::metadata(&from).map_err(|e| io("read", &from, &e))?;
        let mut state = copy_file(&from, dest.as_deref())?;
        if before.len() != state.size {
            // Written while read: a torn copy, never equal to a later read.
            state.sha256 = format!("torn:{}", state.sha256);
        }
        state.mtime = before.modified().ok();
        out.insert(name, state);
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Corrupt(format!("copy task failed: {e}")))?
}

async fn copy_segment(
    local: &LocalChroma,
    persist: &Path,
    staging: &Path,
    segment: VectorSegment,
) -> Result<SegmentCopy, BackupError> {
    let flushed = local
        .flushed_at(&segment.segment)
        .await
        .map_err(BackupError::LocalFiles)?;
    let (from, to) = (
        persist.join(&segment.segment),
        staging.join(&segment.segment),
    );
    // A copy from an earlier round goes first.
    let _ = std::fs::remove_dir_all(&to);
    let files = blocking(move || segment_files(&from, Some(&to))).await?;
    Ok(SegmentCopy {
        segment,
        flushed,
        files,
    })
}

/// Takes the consistent copy of `persist` (Chroma's persist directory, read
/// through `local`) into a new temporary directory.
pub async fn take(local: &LocalChroma, persist: &Path) -> Result<Staged, BackupError> {
    let dir = tempfile::Builder::new()
        .prefix("chromaprod-physical-")
        .tempdir()
        .map_err(BackupError::Spool)?;
    let staging = dir.path().to_path_buf();
    let mut copies: BTreeMap<String, SegmentCopy> = BTreeMap::new();
    let mut to_copy = local
        .vector_segments()
        .await
        .map_err(BackupError::LocalFiles)?;
    let mut writer_blocked = Duration::ZERO;
    let db = staging.join(DB_FILE);
    for attempt in 1..=ATTEMPTS {
        for s in std::mem::take(&mut to_copy) {
            let c = copy_segment(local, persist, &staging, s).await?;
            copies.insert(c.segment.segment.clone(), c);
        }
        let _ = std::fs::remove_file(&db);
        let held = local
            .backup_to(&db)
            .await
            .map_err(BackupError::LocalFiles)?;
        writer_blocked = writer_blocked.max(held);
        let db2 = db.clone();
        let facts = blocking(move || copy_facts(&db2).map_err(BackupError::LocalFiles)).await?;
        // Collections created meanwhile are copied next round; those
        // dropped meanwhile leave the copy.
        let in_copy: BTreeMap<&str, Option<u64>> = facts
            .flushed
            .iter()
            .map(|(s, f)| (s.as_str(), *f))
            .collect();
        copies.retain(|id, _| {
            let keep = in_copy.contains_key(id.as_str());
            if !keep {
                let _ = std::fs::remove_dir_all(staging.join(id));
            }
            keep
        });
        for s in &facts.segments {
            if !copies.contains_key(&s.segment) {
                to_copy.push(s.clone());
            }
        }
        for c in copies.values() {
            let live_now = local
                .flushed_at(&c.segment.segment)
                .await
                .map_err(BackupError::LocalFiles)?;
            let from = persist.join(&c.segment.segment);
            let live = blocking(move || segment_files(&from, None)).await?;
            let snap = in_copy.get(c.segment.segment.as_str()).copied().flatten();
            if moved(c.flushed, snap, live_now, &c.files, &live) {
                tracing::info!(segment = %c.segment.segment, collection = %c.segment.collection, attempt, "vector segment moved during the physical copy; copying it again");
                to_copy.push(c.segment.clone());
            }
        }
        if to_copy.is_empty() {
            let db2 = db.clone();
            let db_state = blocking(move || copy_file(&db2, None)).await?;
            let mut files = vec![(DB_FILE.to_string(), db_state)];
            for c in copies.values() {
                for (name, state) in &c.files {
                    files.push((format!("{}/{name}", c.segment.segment), state.clone()));
                }
            }
            return Ok(Staged {
                dir,
                files,
                facts,
                writer_blocked,
                attempts: attempt,
            });
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(BETWEEN_ROUNDS).await;
        }
    }
    let s = to_copy.first().cloned().unwrap_or(VectorSegment {
        segment: String::new(),
        collection_id: String::new(),
        collection: String::new(),
    });
    Err(BackupError::Unsettled {
        segment: s.segment,
        collection: s.collection,
        attempts: ATTEMPTS,
    })
}

/// The staged file at `rel` (a path from [`Staged::files`]).
pub fn staged_path(staged: &Staged, rel: &str) -> PathBuf {
    staged.dir.path().join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(size: u64, hash: &str) -> FileState {
        FileState {
            size,
            mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(size)),
            sha256: hash.into(),
        }
    }

    #[test]
    fn a_segment_moved_when_its_position_or_any_file_changed() {
        let files: BTreeMap<String, FileState> = [
            ("data_level0.bin".to_string(), state(10, "aa")),
            ("header.bin".to_string(), state(2, "bb")),
        ]
        .into();
        assert!(!moved(Some(7), Some(7), Some(7), &files, &files.clone()));
        assert!(!moved(None, None, None, &BTreeMap::new(), &BTreeMap::new()));
        // Flushed before the database copy, or after it.
        assert!(moved(Some(7), Some(9), Some(9), &files, &files));
        assert!(moved(Some(7), Some(7), Some(9), &files, &files));
        // The first flush.
        assert!(moved(None, Some(3), Some(3), &BTreeMap::new(), &files));
        // Same size and position, other bytes or mtime.
        let mut other = files.clone();
        other.insert("header.bin".into(), state(2, "cc"));
        assert!(moved(Some(7), Some(7), Some(7), &files, &other));
        let mut touched = files.clone();
        if let Some(f) = touched.get_mut("header.bin") {
            f.mtime = Some(SystemTime::UNIX_EPOCH);
        }
        assert!(moved(Some(7), Some(7), Some(7), &files, &touched));
        // A file appeared.
        let mut more = files.clone();
        more.insert("link_lists.bin".into(), state(1, "dd"));
        assert!(moved(Some(7), Some(7), Some(7), &files, &more));
    }
}
