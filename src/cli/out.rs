//! Standard output and error that a reader going away does not turn into a
//! panic. `chromaprod backups list | head -3`: once `head` exits, writes fail
//! with EPIPE; from then on output is dropped quietly and the command runs to
//! its end, its exit code unchanged (0 on success), as if fully read.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Writes `text` to standard output.
pub fn stdout(text: &str) {
    write(&mut io::stdout().lock(), &STDOUT_GONE, text);
}

/// Writes `text` to standard error.
pub fn stderr(text: &str) {
    write(&mut io::stderr().lock(), &STDERR_GONE, text);
}

fn write(w: &mut impl Write, gone: &AtomicBool, text: &str) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = w.write_all(text.as_bytes()).and_then(|()| w.flush()) {
        gone.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe && !std::ptr::eq(gone, &STDERR_GONE) {
            stderr(&format!(
                "chromaprod: cannot write to standard output: {e}\n"
            ));
        }
    }
}

/// `println!` through [`stdout`].
macro_rules! outln {
    () => { $crate::cli::out::stdout("\n") };
    ($($arg:tt)*) => { $crate::cli::out::stdout(&format!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` through [`stderr`].
macro_rules! errln {
    () => { $crate::cli::out::stderr("\n") };
    ($($arg:tt)*) => { $crate::cli::out::stderr(&format!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken(io::ErrorKind);
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_silences_later_output() {
        let gone = AtomicBool::new(false);
        write(&mut Broken(io::ErrorKind::BrokenPipe), &gone, "a\n");
        assert!(gone.load(Ordering::Relaxed));
        // Not even tried again.
        write(&mut Broken(io::ErrorKind::Other), &gone, "b\n");
    }
}
