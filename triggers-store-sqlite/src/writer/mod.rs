//! The writer thread: the only connection that writes, with group commit.
//!
//! Every write is a request on a bounded channel. The thread takes the first waiting request,
//! drains up to `max_batch - 1` more that are already queued, runs them all in one
//! `BEGIN IMMEDIATE` transaction, `COMMIT`s (one fsync for the whole batch) and only then
//! replies to every waiter. Requests that queue up while a batch commits form the next batch,
//! so batches grow with load by themselves.
//!
//! A request that fails must not take the others down with it. Failures are rare, so a batch
//! first runs optimistically without savepoints (a savepoint makes SQLite copy every page a
//! request touches into a sub-journal). If a request fails, the transaction is rolled back and
//! the batch runs again with one `SAVEPOINT` per request: the failing request is rolled back
//! alone and gets its own error while the others commit. Requests are therefore closures that
//! can run more than once; only the last run's writes are ever committed.
//!
//! Lease bookkeeping (claims, completions, heartbeats, releases; [`Writer::call_with`]) does
//! not need to survive a power loss: losing it only makes a delivery due again. When the store
//! runs with [`Synchronous::Full`](crate::Synchronous::Full), the lease requests of a batch
//! therefore run first, in a transaction of their own that commits with `synchronous =
//! NORMAL` (no fsync), and are answered at once; the other requests follow in the usual
//! durable transaction. A worker refilling an endpoint's slots then waits neither for the
//! disk nor for a batch of inserts. The one lease result that must survive a power loss (a
//! claim that hands out the head of a FIFO line) is synced before it is answered; see
//! [`sync`].
//!
//! A full channel is refused at once with `StoreError::Overloaded`: the caller sees
//! backpressure instead of an unbounded queue.
//!
//! Faults (disk full, I/O errors) end no more than the batch they hit: its requests fail
//! with `Unavailable`, the fault is recorded in [`WriteHealth`] (which the health check
//! reads), and the next batch is tried as usual, so writes work again by themselves once
//! space is freed. The thread also survives a panic outside the requests (for example a
//! logging subscriber that panics because its output failed): the batch's waiters get
//! `Unavailable` and the thread goes on. A dead writer would make the store unavailable
//! until the process restarts.

mod batch;
mod job;
pub(crate) mod sync;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::health::WriteHealth;
use batch::{exec, run_batch};
use job::{BatchFailure, FailureKind, Job, Task};
use sync::{not_durable, SyncWal};

use rusqlite::Connection;
use tokio::sync::oneshot;
use triggers_core::store::StoreResult;
use triggers_core::StoreError;

/// The handle through which the store sends write requests. Dropping the last one stops the
/// thread after it has finished the requests already queued.
pub(crate) struct Writer {
    tx: Option<SyncSender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
    health: Arc<WriteHealth>,
}

impl Writer {
    /// Starts the writer thread on `conn`. With `wal` (a `synchronous = FULL` connection in
    /// WAL mode), lease bookkeeping commits in transactions of its own without an fsync, and
    /// `wal` syncs the few lease results that must be durable (see [`sync`]). Without it,
    /// every request runs in the one batch transaction, as durable as the connection's
    /// `synchronous` makes it.
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        max_batch: usize,
        wal: Option<Box<dyn SyncWal>>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = sync_channel::<Box<dyn Job>>(queue.max(1));
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveGuard(alive.clone());
        let health = Arc::new(WriteHealth::default());
        let thread_health = health.clone();
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("triggers-sqlite-writer".into())
            .spawn(move || {
                let _flag = flag;
                run(&conn, &rx, max_batch, &thread_health, wal);
                // Refresh the query planner's statistics where useful before the connection
                // closes.
                if let Err(e) = conn.execute_batch("PRAGMA optimize") {
                    tracing::debug!(error = %e, "PRAGMA optimize failed");
                }
                tracing::debug!("sqlite writer stopping");
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { tx: Some(tx), thread: Some(thread), alive, health })
    }

    /// Whether writes currently fail (disk full, I/O errors); see [`WriteHealth`].
    pub(crate) fn health(&self) -> &WriteHealth {
        &self.health
    }

    /// Whether the writer thread is still running.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Runs `f` on the writer connection inside a group-committed transaction and returns its
    /// result once the transaction has committed (with the connection's `synchronous`
    /// level). `f` may run more than once (after a rollback caused by another request); only
    /// its last run's writes are committed.
    ///
    /// Errors: `Overloaded` at once if the queue is full, `Unavailable` if the writer stopped,
    /// `f`'s own error (its writes rolled back), or the batch's commit failure.
    pub(crate) async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(Task::new(f, |_| true, false)).await
    }

    /// Lease bookkeeping: [`call`](Self::call), but with `wal` (see [`start`](Self::start))
    /// the request runs ahead of the other requests waiting with it, in a transaction
    /// committed without an fsync (its loss to a power failure only makes a delivery due
    /// again; a process crash loses nothing that committed). A successful result for which
    /// `durable` says `true` is answered only after `wal` synced it; if that sync fails, with
    /// `Unavailable`.
    pub(crate) async fn call_with<T, F>(&self, f: F, durable: fn(&T) -> bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(Task::new(f, durable, true)).await
    }

    async fn submit<T, F>(
        &self,
        task: (Task<T, F>, oneshot::Receiver<StoreResult<T>>),
    ) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (task, rx) = task;
        let Some(tx) = &self.tx else {
            return Err(StoreError::Unavailable("the sqlite writer has stopped".into()));
        };
        match tx.try_send(Box::new(task)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(StoreError::Overloaded("the sqlite write queue is full".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable("the sqlite writer has stopped".into()))
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable("the sqlite writer stopped before replying".into()))
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish the queued requests and exit.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the sqlite writer thread panicked");
            }
        }
    }
}

/// Clears the liveness flag when the thread ends, also by panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Serves requests until every sender is gone.
fn run(
    conn: &Connection,
    rx: &Receiver<Box<dyn Job>>,
    max_batch: usize,
    health: &WriteHealth,
    mut wal: Option<Box<dyn SyncWal>>,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    let mut leases: Vec<Box<dyn Job>> = Vec::new();
    let mut others: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    // Whether a lease transaction left the connection at `synchronous = NORMAL`.
    let mut lowered = false;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Some(wal) = wal.as_deref_mut() {
            if batch.iter().any(|job| job.is_lease()) {
                for job in batch.drain(..) {
                    match job.is_lease() {
                        true => leases.push(job),
                        false => others.push(job),
                    }
                }
                std::mem::swap(&mut batch, &mut others);
                // If lowering fails, the transaction simply commits with an fsync.
                lowered |= set_synchronous(conn, SYNC_NORMAL).is_ok();
                guarded(conn, &mut leases, |jobs| serve_leases(conn, jobs, health, wal));
            }
        }
        if !batch.is_empty() {
            guarded(conn, &mut batch, |jobs| serve(conn, jobs, health, &mut lowered));
        }
    }
}

/// Runs `serve` on `batch`, surviving a panic outside the requests: what is open is rolled
/// back and the batch dropped. Not logged: logging may be what panicked. The waiters get
/// `Unavailable` (their reply channels close); a batch that committed before the panic stays
/// committed (the waiters may retry: dedup ids make that safe).
fn guarded(
    conn: &Connection,
    batch: &mut Vec<Box<dyn Job>>,
    serve: impl FnOnce(&mut Vec<Box<dyn Job>>),
) {
    if catch_unwind(AssertUnwindSafe(|| serve(batch))).is_err() {
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        batch.clear();
    }
}

/// Runs one batch in one transaction and answers it. If a lease transaction `lowered` the
/// connection's `synchronous` level, it is raised back to `FULL` first; if that fails,
/// nothing runs (a durable batch never commits without its fsync).
fn serve(
    conn: &Connection,
    batch: &mut Vec<Box<dyn Job>>,
    health: &WriteHealth,
    lowered: &mut bool,
) {
    let raised = match *lowered {
        true => set_synchronous(conn, SYNC_FULL).map(|()| *lowered = false),
        false => Ok(()),
    };
    let failure = raised.err().or_else(|| run_batch(conn, batch));
    record(batch, failure.as_ref(), health);
    for job in batch.drain(..) {
        job.finish(failure.as_ref());
    }
}

/// Runs lease bookkeeping in a transaction of its own (the caller lowered the connection to
/// `synchronous = NORMAL`, so it commits without an fsync) and answers it; a result that must
/// be durable (see [`Job::needs_sync`]) is answered after `wal` synced it.
fn serve_leases(
    conn: &Connection,
    batch: &mut Vec<Box<dyn Job>>,
    health: &WriteHealth,
    wal: &mut dyn SyncWal,
) {
    let failure = run_batch(conn, batch);
    record(batch, failure.as_ref(), health);
    let mut unsynced = None;
    if failure.is_none() && batch.iter().any(|job| job.needs_sync()) {
        if let Err(e) = wal.sync() {
            let f = not_durable(&format!("syncing the write-ahead log failed: {e}"));
            tracing::error!(error = %e, "sqlite WAL sync failed");
            health.failed(&f.message);
            unsynced = Some(f);
        }
    }
    for job in batch.drain(..) {
        match (&failure, &unsynced) {
            (Some(f), _) => job.finish(Some(f)),
            (None, Some(f)) if job.needs_sync() => job.finish(Some(f)),
            (None, _) => job.finish(None),
        }
    }
}

const SYNC_FULL: &str = "PRAGMA synchronous = FULL";
const SYNC_NORMAL: &str = "PRAGMA synchronous = NORMAL";

fn set_synchronous(conn: &Connection, pragma: &str) -> Result<(), BatchFailure> {
    exec(conn, pragma).map_err(|e| BatchFailure::from_sql("PRAGMA synchronous", &e))
}

/// Records whether writes work after a batch ended (`failure`: nothing of it committed, else
/// it committed).
fn record(batch: &[Box<dyn Job>], failure: Option<&BatchFailure>, health: &WriteHealth) {
    match failure {
        Some(f) => {
            tracing::warn!(error = %f.message, requests = batch.len(), "sqlite write batch failed");
            if let FailureKind::Fault(what) = f.kind {
                health.failed(&format!("{what} ({})", f.message));
            }
        }
        None if batch.iter().any(|job| job.succeeded()) => health.succeeded(),
        None => {
            if batch.iter().any(|job| job.write_fault()) {
                health.failed(DISK_FULL_OR_IO);
            }
        }
    }
}

/// The fault recorded when a request (not the commit) failed for lack of space or an I/O
/// error; the request's own error has the details.
const DISK_FULL_OR_IO: &str = "a write failed: the disk is full or failed";
