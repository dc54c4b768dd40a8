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
//! When the store runs with [`Synchronous::Full`](crate::Synchronous::Full), commits are
//! pipelined ([`pipeline`]): `COMMIT` does not wait for the disk, the batch's waiters go to
//! the sync thread ([`sync`]), which replies after the write-ahead log is synced, and this
//! thread already runs the next requests meanwhile. Lease bookkeeping (claims, completions,
//! heartbeats, releases) is answered at `COMMIT` instead ([`Writer::call_with`]): losing it to
//! a power loss only makes a delivery due again.
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
mod pipeline;
pub(crate) mod sync;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::health::WriteHealth;
use batch::{exec, run_batch};
use job::{BatchFailure, FailureKind, Job, Task};
use sync::{SyncWal, Syncer};

use rusqlite::Connection;
use tokio::sync::oneshot;
use triggers_core::store::StoreResult;
use triggers_core::StoreError;

/// The handle through which the store sends write requests. Dropping the last one stops the
/// thread after it has finished the requests already queued.
pub(crate) struct Writer {
    tx: Option<Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
    health: Arc<WriteHealth>,
}

impl Writer {
    /// Starts the writer thread on `conn`. With `wal`, commits are pipelined: the connection
    /// switches to `synchronous = NORMAL` and a sync thread answers durable requests after
    /// `wal` has synced their batch (see [`sync`]). Without it, every reply is sent at
    /// `COMMIT` (which is then as durable as the connection's `synchronous` makes it).
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        max_batch: usize,
        wal: Option<Box<dyn SyncWal>>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = bounded::<Box<dyn Job>>(queue.max(1));
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveGuard(alive.clone());
        let health = Arc::new(WriteHealth::default());
        let syncer = match wal {
            Some(wal) => {
                conn.execute_batch("PRAGMA synchronous = NORMAL").map_err(|e| {
                    StoreError::Unavailable(format!("cannot set up pipelined commits: {e}"))
                })?;
                Some(Syncer::start(wal, health.clone())?)
            }
            None => None,
        };
        let thread_health = health.clone();
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("triggers-sqlite-writer".into())
            .spawn(move || {
                let _flag = flag;
                match syncer {
                    Some(syncer) => pipeline::run(&conn, &rx, max_batch, &thread_health, syncer),
                    None => run(&conn, &rx, max_batch, &thread_health),
                }
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
    /// result once the transaction has committed and is on the disk. `f` may run more than
    /// once (after a rollback caused by another request); only its last run's writes are
    /// committed.
    ///
    /// Errors: `Overloaded` at once if the queue is full, `Unavailable` if the writer stopped,
    /// `f`'s own error (its writes rolled back), the batch's commit failure, or (committed but
    /// not synced) the sync's failure.
    pub(crate) async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(Task::new(f, |_| true, false)).await
    }

    /// Lease bookkeeping: [`call`](Self::call), but a successful result for which `durable`
    /// says `false` is sent at `COMMIT`, before the batch is synced (its loss to a power
    /// failure only makes a delivery due again; a process crash loses neither kind once
    /// committed). With pipelined commits, a lease request also commits its transaction at
    /// once instead of waiting for the sync in progress (see [`pipeline`]): a worker waiting
    /// to refill an endpoint's slots does not wait for the disk.
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

/// The loop without pipelining: each batch commits (with whatever sync the connection's
/// `synchronous` does) and is answered at once.
fn run(conn: &Connection, rx: &Receiver<Box<dyn Job>>, max_batch: usize, health: &WriteHealth) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let served = catch_unwind(AssertUnwindSafe(|| {
            let failure = run_batch(conn, &mut batch);
            settle(&mut batch, failure, health, None);
        }));
        if served.is_err() {
            abandon(conn, &mut batch);
        }
    }
}

/// After a panic outside the requests: rolls back what is open and drops the batch. Not
/// logged: logging may be what panicked. The waiters get `Unavailable` (their reply channels
/// close); a batch that committed before the panic stays committed (the waiters may retry:
/// dedup ids make that safe).
fn abandon(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    if !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    batch.clear();
}

/// Records whether writes work after a batch ended (`failure`: nothing of it committed, else
/// it committed), and replies to every waiter — or, with a sync thread, hands the durable
/// successes to it. Returns whether it handed any over.
fn settle(
    batch: &mut Vec<Box<dyn Job>>,
    failure: Option<BatchFailure>,
    health: &WriteHealth,
    syncer: Option<&Syncer>,
) -> bool {
    match &failure {
        Some(f) => {
            tracing::warn!(error = %f.message, requests = batch.len(), "sqlite write batch failed");
            if let FailureKind::Fault(what) = f.kind {
                health.failed(&format!("{what} ({})", f.message));
            }
        }
        // With a sync thread, writes work once a sync succeeded; it records that.
        None if batch.iter().any(|job| job.succeeded()) => {
            if syncer.is_none() {
                health.succeeded();
            }
        }
        None => {
            if batch.iter().any(|job| job.write_fault()) {
                health.failed(DISK_FULL_OR_IO);
            }
        }
    }
    let Some(syncer) = syncer.filter(|_| failure.is_none()) else {
        for job in batch.drain(..) {
            job.finish(failure.as_ref());
        }
        return false;
    };
    let mut durable = Vec::new();
    for job in batch.drain(..) {
        if job.needs_sync() {
            durable.push(job);
        } else {
            // Failed alone (rolled back) or lease bookkeeping: nothing to wait for.
            job.finish(None);
        }
    }
    if durable.is_empty() {
        return false;
    }
    syncer.after_commit(durable)
}

/// The fault recorded when a request (not the commit) failed for lack of space or an I/O
/// error; the request's own error has the details.
const DISK_FULL_OR_IO: &str = "a write failed: the disk is full or failed";
