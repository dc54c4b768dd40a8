//! Log output that cannot break the server: a line that cannot be written is dropped and
//! counted, never a panic.
//!
//! `tracing_subscriber::fmt()` reports a failed write of a log line with `eprintln!`, and
//! `eprintln!` panics when stderr fails too — as it does when the disk holding the server's
//! log is full. That panic happens wherever the line was logged: in a request task (the
//! connection is dropped without an answer) or in the SQLite writer thread. [`init`]
//! installs the same subscriber writing through [`LossyStdout`], which swallows write errors,
//! counts the lost lines ([`lost_lines`], also in `/metrics`) and, once writing works again,
//! first writes one line saying how many were lost.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// Lines lost since the process started.
static LOST: AtomicU64 = AtomicU64::new(0);
/// Lines lost that no line in the log mentions yet.
static UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written since the process started.
pub fn lost_lines() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Writes log lines to stdout; a failed write drops the line (counted) instead of failing.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStdout;

/// The writer of one log line; see [`LossyStdout`].
#[derive(Debug)]
pub struct LossyWriter(io::Stdout);

impl<'a> MakeWriter<'a> for LossyStdout {
    type Writer = LossyWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LossyWriter(io::stdout())
    }
}

impl Write for LossyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.0.lock();
        let unreported = UNREPORTED.load(Ordering::Relaxed);
        if unreported > 0 {
            let note =
                format!("[triggers] {unreported} log lines were lost: writing them failed\n");
            if out.write_all(note.as_bytes()).is_ok() {
                UNREPORTED.fetch_sub(unreported, Ordering::Relaxed);
            }
        }
        if out.write_all(buf).and_then(|()| out.flush()).is_err() {
            LOST.fetch_add(1, Ordering::Relaxed);
            UNREPORTED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.lock().flush();
        Ok(())
    }
}

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogInitError {
    /// The filter (`RUST_LOG` syntax) is invalid.
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A global subscriber is already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadySet,
}

/// Installs the global tracing subscriber of a server: human-readable lines on stdout,
/// filtered by `filter` (`RUST_LOG` syntax, e.g. `info` or `triggers_http=debug`), written
/// through [`LossyStdout`].
pub fn init(filter: &str) -> Result<(), LogInitError> {
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| LogInitError::Filter { filter: filter.to_owned(), reason: e.to_string() })?;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(LossyStdout)
        .log_internal_errors(false)
        .try_init()
        .map_err(|_| LogInitError::AlreadySet)
}
