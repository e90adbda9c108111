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
//!
//! Checking a log's chain is in `verify.rs`.

#[cfg(test)]
mod tests;
mod verify;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use verify::{verify, verify_against};

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
