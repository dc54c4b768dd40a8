//! A queued write request and how a failed batch is reported to it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;
use triggers_core::lanes::Laned;
use triggers_core::store::StoreResult;
use triggers_core::{OrganizationId, StoreError};

use crate::error::{is_write_fault, DISK_FULL, IO_ERROR};

/// One queued write request.
pub(crate) trait Job: Send {
    /// Runs the request inside the batch transaction; `true` if it succeeded. May be called
    /// again after a rollback; each run replaces the previous result.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Replies to the waiter: the request's own result, or the batch's failure.
    fn finish(self: Box<Self>, failure: Option<&BatchFailure>);
    /// Whether the last run succeeded.
    fn succeeded(&self) -> bool;
    /// Whether the last run failed because the disk is full or failed.
    fn write_fault(&self) -> bool;
    /// Whether the reply must wait until the batch is on the disk (decided from the result).
    fn needs_sync(&self) -> bool;
    /// Whether this is lease bookkeeping (see `Writer::call_with`).
    fn is_lease(&self) -> bool;
    /// Whose request this is and how big (see `Writer::call_for`).
    fn lane(&self) -> &Lane;
    /// How long the last run took.
    fn elapsed(&self) -> Duration;
}

/// The lane a request waits in: its organization's (`None`: the store's own lane, for
/// requests of no organization or of all of them) and its size in units of cost (events
/// for an insert, else 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lane {
    pub(crate) org: Option<OrganizationId>,
    pub(crate) units: usize,
}

impl Lane {
    /// The store's own lane.
    pub(crate) const STORE: Lane = Lane { org: None, units: 1 };
}

impl Laned for Box<dyn Job> {
    type Key = Option<OrganizationId>;

    fn lane(&self) -> Self::Key {
        Job::lane(&**self).org
    }

    fn units(&self) -> usize {
        Job::lane(&**self).units
    }
}

/// Why a whole batch failed: nothing of it was committed, or (`NotDurable`) it was committed
/// but its sync failed.
#[derive(Debug, Clone)]
pub(crate) struct BatchFailure {
    pub(super) kind: FailureKind,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    Corrupt,
    /// The disk is full or failed ([`DISK_FULL`] or [`IO_ERROR`]): a write fault.
    Fault(&'static str),
    /// Committed, but the write-ahead log could not be synced.
    NotDurable,
    Other,
}

impl BatchFailure {
    /// The batch committed, but `message` says why it is not known to be on the disk.
    pub(crate) fn not_durable(message: String) -> Self {
        Self { kind: FailureKind::NotDurable, message }
    }

    pub(super) fn from_sql(stage: &str, e: &rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let kind = match e.sqlite_error_code() {
            Some(C::DatabaseCorrupt | C::NotADatabase) => FailureKind::Corrupt,
            Some(C::DiskFull) => FailureKind::Fault(DISK_FULL),
            Some(C::SystemIoFailure) => FailureKind::Fault(IO_ERROR),
            _ => FailureKind::Other,
        };
        Self { kind, message: format!("{stage} failed: {e}") }
    }

    fn to_error(&self) -> StoreError {
        match self.kind {
            FailureKind::Corrupt => StoreError::Corrupt(self.message.clone()),
            FailureKind::Fault(what) => {
                StoreError::Unavailable(format!("{what}: nothing was written ({})", self.message))
            }
            FailureKind::NotDurable => StoreError::Unavailable(format!(
                "{}; the write may or may not have been kept (retrying it with its dedup id is safe)",
                self.message
            )),
            FailureKind::Other => {
                StoreError::Unavailable(format!("nothing was written: {}", self.message))
            }
        }
    }
}

pub(super) struct Task<T, F> {
    f: F,
    out: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    /// Whether a successful result must be on the disk before it is sent.
    durable: fn(&T) -> bool,
    lease: bool,
    lane: Lane,
    elapsed: Duration,
}

impl<T, F> Task<T, F> {
    /// A request that runs `f`, and the receiver of its result (sent after the sync if
    /// `durable` says so for a successful result). `lease`: lease bookkeeping.
    pub(super) fn new(
        f: F,
        durable: fn(&T) -> bool,
        lease: bool,
        lane: Lane,
    ) -> (Self, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        (Self { f, out: None, reply, durable, lease, lane, elapsed: Duration::ZERO }, rx)
    }
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = &mut self.f;
        let started = Instant::now();
        let out = catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
            tracing::error!("a sqlite write request panicked; it was rolled back");
            Err(StoreError::Unavailable("the write request failed unexpectedly".into()))
        });
        self.elapsed = started.elapsed();
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<&BatchFailure>) {
        let result = match (self.out, failure) {
            // A request that failed on its own keeps its own error (it was rolled back).
            (Some(Err(e)), _) => Err(e),
            (_, Some(f)) => Err(f.to_error()),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Unavailable("the write request was not run".into())),
        };
        // The caller may have gone away (its future was dropped); the write stands.
        let _ = self.reply.send(result);
    }

    fn succeeded(&self) -> bool {
        matches!(self.out, Some(Ok(_)))
    }

    fn write_fault(&self) -> bool {
        matches!(&self.out, Some(Err(e)) if is_write_fault(e))
    }

    fn needs_sync(&self) -> bool {
        matches!(&self.out, Some(Ok(v)) if (self.durable)(v))
    }

    fn is_lease(&self) -> bool {
        self.lease
    }

    fn lane(&self) -> &Lane {
        &self.lane
    }

    fn elapsed(&self) -> Duration {
        self.elapsed
    }
}
