//! Whether writes currently work: the writer's fault state (disk full, I/O errors).
//!
//! A full disk is not a reason to stop: SQLite rolls the failed transaction back, the file
//! stays intact, and the next write may succeed as soon as space is freed. So the writer
//! keeps serving every request (each fails with `Unavailable` while space is missing) and
//! only records here that writes fail. [`OrgStore::ping`](triggers_core::store::OrgStore::ping)
//! reads this state: while writes fail it answers `Unavailable` with the cause, and at most
//! once per [`PROBE_INTERVAL`] it sends a cheap write through the writer to find out whether
//! writes work again. Any write that commits clears the fault.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Least time between two probe writes made for a health check.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The fault state, shared by the writer thread and the store's handles.
#[derive(Default)]
pub(crate) struct WriteHealth {
    fault: Mutex<Option<Fault>>,
}

struct Fault {
    cause: String,
    since: Instant,
    last_probe: Instant,
}

impl WriteHealth {
    fn with<T>(&self, f: impl FnOnce(&mut Option<Fault>) -> T) -> T {
        f(&mut self.fault.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A write failed for lack of space or an I/O error (`cause` says which).
    pub(crate) fn failed(&self, cause: &str) {
        let now = Instant::now();
        let first = self.with(|fault| match fault {
            Some(f) => {
                f.cause = cause.to_owned();
                false
            }
            None => {
                *fault = Some(Fault { cause: cause.to_owned(), since: now, last_probe: now });
                true
            }
        });
        if first {
            tracing::error!(
                cause,
                "sqlite writes fail; the store reports itself unavailable \
                until a write succeeds again"
            );
        }
    }

    /// A write committed: writes work.
    pub(crate) fn succeeded(&self) {
        if let Some(fault) = self.with(Option::take) {
            tracing::info!(
                after_secs = fault.since.elapsed().as_secs(),
                "sqlite writes work again"
            );
        }
    }

    /// The cause while writes fail, and whether the caller may probe now (at most once per
    /// [`PROBE_INTERVAL`]; taking the slot starts the next interval).
    pub(crate) fn fault(&self) -> Option<(String, bool)> {
        self.with(|fault| {
            fault.as_mut().map(|f| {
                let probe = f.last_probe.elapsed() >= PROBE_INTERVAL;
                if probe {
                    f.last_probe = Instant::now();
                }
                (f.cause.clone(), probe)
            })
        })
    }
}
