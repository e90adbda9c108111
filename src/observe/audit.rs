//! The audit log: an append-only, hash-chained JSON Lines file of every
//! change made to or by the daemon (`<state_dir>/audit.jsonl`, mode 0600).
//!
//! Each line is one record, its fields always in this order:
//!
//! ```text
//! {"seq":1,"time":"2026-11-25T20:01:46.123Z","actor":{"uid":0,"gid":0,"pid":42},"action":"reload","details":{},"prev":"000…0","hash":"9f2c…"}
//! ```
//!
//! - `seq` counts from 1 without gaps.
//! - `actor` is a control-socket peer (`{"uid","gid","pid"}`) or the daemon
//!   itself (`{"system":"scheduler"}`).
//! - `prev` is the hex SHA-256 of the previous line's bytes (without its
//!   `\n`), or 64 zeros on the first line.
//! - `hash` is the hex SHA-256 of the record's content: the exact bytes of
//!   the line up to (not including) `,"hash":`, followed by `}`. Hashing the
//!   bytes as written, not a re-serialization, keeps the check independent
//!   of JSON map ordering.
//!
//! [`verify`] names the first line that was edited, removed, reordered or
//! cut short. Removing whole lines from the end cannot be seen from the file
//! alone; record [`AuditLog::head`] elsewhere (e.g. in the journal at each
//! start) and check with [`verify_against`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// File name of the audit log inside the state directory.
pub const FILE_NAME: &str = "audit.jsonl";

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_FIELD: &[u8] = b",\"hash\":\"";

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Actor {
    /// A control-socket client, from its kernel-reported credentials.
    Peer {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    /// The daemon itself: `"scheduler"`, `"startup"`, `"config-watch"`, …
    System { system: String },
}

impl Actor {
    pub fn system(component: impl Into<String>) -> Self {
        Actor::System {
            system: component.into(),
        }
    }

    /// This process's own user, group and pid: the actor of a CLI command
    /// that changes something without going through the daemon.
    pub fn this_process() -> Self {
        Actor::Peer {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            pid: i32::try_from(std::process::id()).ok(),
        }
    }
}

/// The position of the newest record: its `seq` and the SHA-256 of its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub line_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log {path} is broken at line {line}: {reason}", path = .path.display())]
    Broken {
        path: PathBuf,
        /// 1-based line number of the first bad line.
        line: usize,
        reason: String,
    },
    #[error("audit log {path}: cannot encode the record: {source}", path = .path.display())]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl AuditError {
    /// The 1-based line at which the chain breaks, if that is the problem.
    pub fn broken_line(&self) -> Option<usize> {
        match self {
            AuditError::Broken { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// The record's content, serialized in this field order; `hash` is appended.
#[derive(Serialize)]
struct Content<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a Actor,
    action: &'a str,
    details: &'a Value,
    prev: &'a str,
}

#[derive(Deserialize)]
struct Parsed {
    seq: u64,
    prev: String,
}

struct Tail {
    file: File,
    len: u64,
    seq: u64,
    prev: String,
}

/// An open audit log. `append` is safe to call from many tasks, and from
/// several processes at once (the daemon, and offline CLI commands such as
/// `key add`): each append holds an exclusive `flock` on the file and first
/// catches up with records other writers added. It blocks on a write and an
/// `fsync`, so async code calls it via `spawn_blocking`.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
    /// Set when `open` found a torn final line (a crash in the middle of a
    /// write): the bytes were moved to this file and the log cut back to its
    /// last whole record.
    pub torn_tail: Option<(PathBuf, u64)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Split a line (without `\n`) into its content bytes (ending in `}`) and
/// its stated hash.
fn split_line(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    // `,"hash":"` + 64 hex + `"}`
    let tail_len = HASH_FIELD.len() + 64 + 2;
    let cut = line.len().checked_sub(tail_len)?;
    let (content, tail) = line.split_at(cut);
    if !tail.starts_with(HASH_FIELD) || !tail.ends_with(b"\"}") {
        return None;
    }
    let hash = std::str::from_utf8(&tail[HASH_FIELD.len()..HASH_FIELD.len() + 64]).ok()?;
    if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut content = content.to_vec();
    content.push(b'}');
    Some((content, hash))
}

/// Check one line on its own: well-formed and its hash matches its content.
fn check_line(line: &[u8]) -> Result<Parsed, String> {
    let (content, hash) =
        split_line(line).ok_or("not an audit record (no trailing `hash` field)")?;
    if hex_sha256(&content) != hash {
        return Err("the record was edited: its content does not match its hash".into());
    }
    serde_json::from_slice(&content).map_err(|e| format!("not an audit record: {e}"))
}

impl AuditLog {
    /// Open (or create) `<dir>/audit.jsonl`, continuing the chain from its
    /// last line. Only the last line is checked here; [`verify`] checks all.
    /// A log this process creates as root in another user's directory is
    /// given to that user, so the daemon can still open it.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        let path = dir.join(FILE_NAME);
        let io_err = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let adopt = crate::owner::Adopt::for_dir(&path);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
        if let Some(adopt) = &adopt {
            adopt.claim(&path).map_err(io_err)?;
        }
        let mut len = file.seek(SeekFrom::End(0)).map_err(io_err)?;
        let torn_tail = cut_torn_tail(&path, &mut file, len).map_err(io_err)?;
        if let Some((_, bytes)) = &torn_tail {
            len -= bytes;
        }
        let (seq, prev) = match last_line(&mut file, len).map_err(io_err)? {
            None => (0, ZERO_HASH.to_string()),
            Some((number, line)) => {
                let parsed = check_line(&line).map_err(|reason| AuditError::Broken {
                    path: path.clone(),
                    line: number,
                    reason: format!(
                        "{reason}; run `chromaprod audit verify` and move the damaged log aside"
                    ),
                })?;
                (parsed.seq, hex_sha256(&line))
            }
        };
        Ok(AuditLog {
            tail: Mutex::new(Tail {
                file,
                len,
                seq,
                prev,
            }),
            path,
            torn_tail,
        })
    }

    /// [`AuditLog::open`] for a command run outside the daemon: creates the
    /// state directory if needed (handed to the owner of the directory above
    /// it when run as root).
    pub fn open_creating(dir: &Path) -> Result<AuditLog, AuditError> {
        let io_err = |source| AuditError::Io {
            path: dir.join(FILE_NAME),
            source,
        };
        let adopt = crate::owner::Adopt::for_dir(dir);
        std::fs::create_dir_all(dir).map_err(io_err)?;
        if let Some(adopt) = &adopt {
            adopt.claim(dir).map_err(io_err)?;
        }
        Self::open(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest record's position; `seq` 0 for an empty log.
    pub fn head(&self) -> Head {
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Head {
            seq: tail.seq,
            line_sha256: tail.prev.clone(),
        }
    }

    /// Append one record and `fsync` it. On failure the file is cut back to
    /// its previous length, so a failed append never leaves half a line.
    pub fn append(&self, actor: &Actor, action: &str, details: Value) -> Result<(), AuditError> {
        let mut tail = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let io_err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        // Other processes append to the same file: hold the file lock (on a
        // duplicate of our descriptor; released when `_locked` drops) and
        // continue the chain from whatever line is last now.
        let _locked = nix::fcntl::Flock::lock(
            tail.file.try_clone().map_err(io_err)?,
            nix::fcntl::FlockArg::LockExclusive,
        )
        .map_err(|(_, errno)| io_err(io::Error::from(errno)))?;
        self.catch_up(&mut tail)?;
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let seq = tail.seq + 1;
        let content = Content {
            seq,
            time: &time,
            actor,
            action,
            details: &details,
            prev: &tail.prev,
        };
        let mut line = serde_json::to_vec(&content).map_err(|source| AuditError::Encode {
            path: self.path.clone(),
            source,
        })?;
        let hash = hex_sha256(&line);
        line.pop(); // the closing `}`
        line.extend_from_slice(HASH_FIELD);
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(b"\"}");
        let line_hash = hex_sha256(&line);
        line.push(b'\n');

        let written = tail
            .file
            .write_all(&line)
            .and_then(|()| tail.file.sync_data());
        if let Err(source) = written {
            let _ = tail.file.set_len(tail.len);
            return Err(AuditError::Io {
                path: self.path.clone(),
                source,
            });
        }
        tail.len += line.len() as u64;
        tail.seq = seq;
        tail.prev = line_hash;
        Ok(())
    }
}

impl AuditLog {
    /// Re-reads the last record if the file grew (or shrank) since this
    /// handle last wrote: another process appended to it.
    fn catch_up(&self, tail: &mut Tail) -> Result<(), AuditError> {
        let io_err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let len = tail.file.metadata().map_err(io_err)?.len();
        if len == tail.len {
            return Ok(());
        }
        let (seq, prev) = match last_line(&mut tail.file, len).map_err(io_err)? {
            None => (0, ZERO_HASH.to_string()),
            Some((number, line)) => {
                let parsed = check_line(&line).map_err(|reason| AuditError::Broken {
                    path: self.path.clone(),
                    line: number,
                    reason: format!(
                        "{reason} (written by another process); run `chromaprod audit verify`"
                    ),
                })?;
                (parsed.seq, hex_sha256(&line))
            }
        };
        tail.len = len;
        tail.seq = seq;
        tail.prev = prev;
        Ok(())
    }
}

/// The last line of the file (without `\n`) and its 1-based number. A file
/// whose last byte is not `\n` is reported as a torn final line.
/// A final line without its `\n` can only come from a write cut short (the
/// daemon cuts a failed append back itself): move those bytes to
/// `audit.jsonl.torn-<unix seconds>`, fsync it, and cut the log back to its
/// last whole record. Returns where the bytes went and how many there were.
fn cut_torn_tail(path: &Path, file: &mut File, len: u64) -> io::Result<Option<(PathBuf, u64)>> {
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        file.seek(SeekFrom::End(0))?;
        return Ok(None);
    }
    // Find the start of the torn line: just after the last `\n`, or 0.
    file.seek(SeekFrom::Start(0))?;
    let mut all = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut all)?;
    let start = all.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = &all[start..];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = path.with_extension(format!("jsonl.torn-{secs}"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&aside)?;
        f.write_all(torn)?;
        f.sync_all()?;
    }
    file.set_len(start as u64)?;
    file.sync_all()?;
    file.seek(SeekFrom::End(0))?;
    Ok(Some((aside, torn.len() as u64)))
}

fn last_line(file: &mut File, len: u64) -> io::Result<Option<(usize, Vec<u8>)>> {
    if len == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0))?;
    // Counting lines needs one pass; audit logs are small enough for that at start-up.
    let mut reader = BufReader::new(&mut *file);
    let mut number = 0;
    let mut last = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        std::mem::swap(&mut last, &mut buf);
    }
    if last.last() == Some(&b'\n') {
        last.pop();
    } else {
        // Torn: make sure check_line fails with a clear reason.
        last.clear();
        last.extend_from_slice(b"(incomplete)");
    }
    file.seek(SeekFrom::End(0))?;
    Ok(Some((number, last)))
}

/// Check the whole chain of the log at `path`; returns the number of good
/// records, or the first line that was edited, removed, reordered or cut.
pub fn verify(path: &Path) -> Result<usize, AuditError> {
    verify_inner(path, None)
}

/// [`verify`], and also check that the log still reaches `head` (recorded
/// earlier, e.g. from [`AuditLog::head`] at start-up): this catches whole
/// records cut from the end, which the chain alone cannot show.
pub fn verify_against(path: &Path, head: &Head) -> Result<usize, AuditError> {
    verify_inner(path, Some(head))
}

fn verify_inner(path: &Path, head: Option<&Head>) -> Result<usize, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let broken = |line, reason: String| AuditError::Broken {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut lines = Lines {
        reader: BufReader::new(file),
    };
    let mut next = lines.next_line().map_err(io_err)?;
    let mut number = 0usize;
    let mut prev = ZERO_HASH.to_string();
    while let Some(current) = next.take() {
        number += 1;
        next = lines.next_line().map_err(io_err)?;
        let Some(line) = current.strip_suffix(b"\n") else {
            return Err(broken(
                number,
                "the line is incomplete: the file was truncated (or a write was torn)".into(),
            ));
        };
        let parsed = check_line(line).map_err(|reason| broken(number, reason))?;
        let expected = number as u64;
        if parsed.seq != expected {
            let next_seq = next
                .as_deref()
                .and_then(|n| n.strip_suffix(b"\n"))
                .and_then(|n| check_line(n).ok())
                .map(|p| p.seq);
            let reason = if parsed.seq > expected && next_seq == Some(expected) {
                format!(
                    "records are out of order: seq {} comes before seq {expected} (lines {number} and {} were swapped)",
                    parsed.seq,
                    number + 1
                )
            } else if parsed.seq > expected {
                format!(
                    "record(s) removed before this line: found seq {}, expected {expected}",
                    parsed.seq
                )
            } else {
                format!(
                    "records are out of order or duplicated: found seq {} after seq {}",
                    parsed.seq,
                    expected - 1
                )
            };
            return Err(broken(number, reason));
        }
        if parsed.prev != prev {
            return Err(broken(
                number,
                if number == 1 {
                    "the first record does not start the chain (earlier records were removed)"
                        .into()
                } else {
                    format!(
                        "the chain is broken: `prev` does not match line {} (that line was rewritten, or a line was inserted)",
                        number - 1
                    )
                },
            ));
        }
        prev = hex_sha256(line);
        if let Some(head) = head.filter(|h| h.seq == expected) {
            if head.line_sha256 != prev {
                return Err(broken(
                    number,
                    format!("record seq {expected} differs from the recorded head"),
                ));
            }
        }
    }
    if let Some(head) = head.filter(|h| h.seq > number as u64) {
        return Err(broken(
            number + 1,
            format!(
                "records {} to {} were removed from the end (the file was truncated)",
                number + 1,
                head.seq
            ),
        ));
    }
    Ok(number)
}

/// Lines with their `\n` kept, so a missing final newline is visible.
struct Lines<R> {
    reader: BufReader<R>,
}

impl<R: Read> Lines<R> {
    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        Ok((self.reader.read_until(b'\n', &mut buf)? > 0).then_some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path()).expect("open");
        for i in 0..n {
            let actor = if i % 2 == 0 {
                Actor::Peer {
                    uid: 1000,
                    gid: 1000,
                    pid: Some(42),
                }
            } else {
                Actor::system("scheduler")
            };
            log.append(
                &actor,
                "backup.create",
                json!({"i": i, "note": "a,\"hash\":\"x"}),
            )
            .expect("append");
        }
        let path = log.path().to_path_buf();
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_fresh_log_verifies_and_continues_after_reopen() {
        let (dir, path) = log_with(3);
        assert_eq!(verify(&path).expect("verify"), 3);
        let log = AuditLog::open(dir.path()).expect("reopen");
        assert_eq!(log.head().seq, 3);
        log.append(&Actor::system("startup"), "daemon.start", json!({}))
            .expect("append");
        assert_eq!(verify(&path).expect("verify"), 4);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first: Value = serde_json::from_str(&lines(&path)[0]).expect("json");
        assert_eq!(first["prev"], ZERO_HASH);
        assert_eq!(first["seq"], 1);
        assert_eq!(first["actor"], json!({"uid":1000,"gid":1000,"pid":42}));
        assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let second: Value = serde_json::from_str(&lines(&path)[1]).expect("json");
        assert_eq!(second["actor"], json!({"system":"scheduler"}));
    }

    #[test]
    fn an_edited_line_is_named() {
        let (_dir, path) = log_with(5);
        let mut l = lines(&path);
        l[2] = l[2].replace("backup.create", "backup.delete");
        write_lines(&path, &l);
        let err = verify(&path).expect_err("edited");
        assert_eq!(err.broken_line(), Some(3), "{err}");
        assert!(err.to_string().contains("edited"), "{err}");
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_line() {
        let (_dir, path) = log_with(5);
        let mut l = lines(&path);
        let (content, _) = split_line(l[1].as_bytes()).expect("split");
        let content = String::from_utf8(content)
            .expect("utf8")
            .replace("backup.create", "backup.delete");
        let mut forged = content.clone();
        forged.pop();
        l[1] = format!("{forged},\"hash\":\"{}\"}}", hex_sha256(content.as_bytes()));
        write_lines(&path, &l);
        let err = verify(&path).expect_err("forged");
        assert_eq!(err.broken_line(), Some(3), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn a_deleted_line_is_named() {
        let (_dir, path) = log_with(5);
        let mut l = lines(&path);
        l.remove(3);
        write_lines(&path, &l);
        let err = verify(&path).expect_err("deleted");
        assert_eq!(err.broken_line(), Some(4), "{err}");
        assert!(err.to_string().contains("removed"), "{err}");

        let mut l = lines(&path);
        l.remove(0);
        write_lines(&path, &l);
        assert_eq!(verify(&path).expect_err("first").broken_line(), Some(1));
    }

    #[test]
    fn swapped_lines_are_named() {
        let (_dir, path) = log_with(5);
        let mut l = lines(&path);
        l.swap(1, 2);
        write_lines(&path, &l);
        let err = verify(&path).expect_err("swapped");
        assert_eq!(err.broken_line(), Some(2), "{err}");
        assert!(err.to_string().contains("swapped"), "{err}");
    }

    #[test]
    fn a_torn_final_line_is_named_then_set_aside_on_open() {
        let (dir, path) = log_with(5);
        let len = std::fs::metadata(&path).expect("stat").len();
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - 20).expect("truncate");
        let err = verify(&path).expect_err("truncated");
        assert_eq!(err.broken_line(), Some(5), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        // Opening sets the torn bytes aside and continues from record 4.
        let log = AuditLog::open(dir.path()).expect("open repairs a torn tail");
        let (aside, bytes) = log.torn_tail.clone().expect("torn tail reported");
        assert!(bytes > 0, "{bytes}");
        assert_eq!(std::fs::metadata(&aside).expect("aside").len(), bytes);
        assert_eq!(log.head().seq, 4);
        assert_eq!(verify(&path).expect("whole again"), 4);
        log.append(&Actor::system("test"), "after_repair", json!({}))
            .expect("append");
        assert_eq!(verify(&path).expect("chain continues"), 5);
        // An intact log is left alone.
        assert!(AuditLog::open(dir.path())
            .expect("open")
            .torn_tail
            .is_none());
    }

    #[test]
    fn whole_lines_cut_from_the_end_are_named_given_the_head() {
        let (dir, path) = log_with(5);
        let head = AuditLog::open(dir.path()).expect("open").head();
        assert_eq!(head.seq, 5);
        assert_eq!(verify_against(&path, &head).expect("intact"), 5);
        let mut l = lines(&path);
        l.truncate(3);
        write_lines(&path, &l);
        // The chain alone still holds…
        assert_eq!(verify(&path).expect("prefix verifies"), 3);
        // …but not against the recorded head.
        let err = verify_against(&path, &head).expect_err("cut");
        assert_eq!(err.broken_line(), Some(4), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn two_writers_of_one_log_keep_the_chain() {
        // The daemon and an offline CLI command (`key add`) each hold the log open.
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = AuditLog::open(dir.path()).expect("open");
        daemon
            .append(&Actor::system("daemon"), "daemon_start", json!({}))
            .expect("append");
        let cli = AuditLog::open(dir.path()).expect("open again");
        cli.append(&Actor::system("cli"), "key_add", json!({"key_id": "x"}))
            .expect("append");
        daemon
            .append(&Actor::system("daemon"), "daemon_stop", json!({}))
            .expect("append");
        cli.append(&Actor::system("cli"), "key_remove", json!({}))
            .expect("append");
        assert_eq!(verify(daemon.path()).expect("one chain"), 4);
        assert_eq!(daemon.head().seq, 3);
        assert_eq!(cli.head().seq, 4);
    }

    #[test]
    fn appends_from_many_threads_keep_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::sync::Arc::new(AuditLog::open(dir.path()).expect("open"));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        log.append(&Actor::system("test"), "tick", json!({"t": t, "i": i}))
                            .expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("join");
        }
        assert_eq!(verify(log.path()).expect("verify"), 40);
    }
}
