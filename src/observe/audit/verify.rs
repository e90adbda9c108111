//! Checking the chain of an audit log, line by line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::{check_line, hex_sha256, AuditError, Head, ZERO_HASH};

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
