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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{is_write_fault, DISK_FULL, IO_ERROR};
use crate::health::WriteHealth;

use rusqlite::Connection;
use tokio::sync::oneshot;
use triggers_core::store::StoreResult;
use triggers_core::StoreError;

/// One queued write request.
trait Job: Send {
    /// Runs the request inside the batch transaction; `true` if it succeeded. May be called
    /// again after a rollback; each run replaces the previous result.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Replies to the waiter: the request's own result, or the batch's failure.
    fn finish(self: Box<Self>, failure: Option<&BatchFailure>);
    /// Whether the last run succeeded.
    fn succeeded(&self) -> bool;
    /// Whether the last run failed because the disk is full or failed.
    fn write_fault(&self) -> bool;
}

/// Why a whole batch failed (nothing of it was committed).
#[derive(Debug, Clone)]
struct BatchFailure {
    kind: FailureKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Corrupt,
    /// The disk is full or failed ([`DISK_FULL`] or [`IO_ERROR`]): a write fault.
    Fault(&'static str),
    Other,
}

impl BatchFailure {
    fn from_sql(stage: &str, e: &rusqlite::Error) -> Self {
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
            FailureKind::Other => {
                StoreError::Unavailable(format!("nothing was written: {}", self.message))
            }
        }
    }
}

struct Task<T, F> {
    f: F,
    out: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Task<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = &mut self.f;
        let out = catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
            tracing::error!("a sqlite write request panicked; it was rolled back");
            Err(StoreError::Unavailable("the write request failed unexpectedly".into()))
        });
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
}

/// The handle through which the store sends write requests. Dropping the last one stops the
/// thread after it has finished the requests already queued.
pub(crate) struct Writer {
    tx: Option<SyncSender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
    health: Arc<WriteHealth>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        max_batch: usize,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = sync_channel::<Box<dyn Job>>(queue.max(1));
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveGuard(alive.clone());
        let health = Arc::new(WriteHealth::default());
        let thread_health = health.clone();
        let thread = std::thread::Builder::new()
            .name("triggers-sqlite-writer".into())
            .spawn(move || {
                let _flag = flag;
                run(&conn, &rx, max_batch.max(1), &thread_health);
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
    /// result once the transaction has committed. `f` may run more than once (after a
    /// rollback caused by another request); only its last run's writes are committed.
    ///
    /// Errors: `Overloaded` at once if the queue is full, `Unavailable` if the writer stopped,
    /// `f`'s own error (its writes rolled back), or the batch's commit failure.
    pub(crate) async fn call<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let Some(tx) = &self.tx else {
            return Err(StoreError::Unavailable("the sqlite writer has stopped".into()));
        };
        let (reply, rx) = oneshot::channel();
        match tx.try_send(Box::new(Task { f, out: None, reply })) {
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
        let served = catch_unwind(AssertUnwindSafe(|| serve(conn, &mut batch, health)));
        if served.is_err() {
            // Not logged: logging may be what panicked. Waiters still in `batch` get
            // `Unavailable` when it is cleared (their reply channels close); a batch that
            // committed before the panic stays committed (the waiters may retry: dedup ids
            // make that safe).
            if !conn.is_autocommit() {
                let _ = exec(conn, "ROLLBACK");
            }
            batch.clear();
        }
    }
    // Refresh the query planner's statistics where useful before the connection closes.
    if let Err(e) = conn.execute_batch("PRAGMA optimize") {
        tracing::debug!(error = %e, "PRAGMA optimize failed");
    }
    tracing::debug!("sqlite writer stopping");
}

/// Runs one batch, records whether writes work, and replies to every waiter.
fn serve(conn: &Connection, batch: &mut Vec<Box<dyn Job>>, health: &WriteHealth) {
    let failure = run_batch(conn, batch);
    match &failure {
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
    for job in batch.drain(..) {
        job.finish(failure.as_ref());
    }
}

/// The fault recorded when a request (not the commit) failed for lack of space or an I/O
/// error; the request's own error has the details.
const DISK_FULL_OR_IO: &str = "a write failed: the disk is full or failed";

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one batch in one transaction. `None` if it committed.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Option<BatchFailure> {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return Some(BatchFailure::from_sql("BEGIN", &e));
    }
    let all_ok = batch.iter_mut().all(|job| job.run(conn));
    if all_ok {
        return match exec(conn, "COMMIT") {
            Ok(()) => None,
            Err(e) => {
                rollback(conn);
                Some(BatchFailure::from_sql("COMMIT", &e))
            }
        };
    }
    if batch.len() == 1 {
        // A lone failed request keeps its own error: roll back its writes, nothing else.
        rollback(conn);
        return None;
    }
    // Some request failed: start over, isolating each request in a savepoint.
    rollback(conn);
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return Some(BatchFailure::from_sql("BEGIN", &e));
    }
    let failure = run_isolated(conn, batch)
        .err()
        .or_else(|| exec(conn, "COMMIT").err().map(|e| BatchFailure::from_sql("COMMIT", &e)));
    if failure.is_some() {
        rollback(conn);
    }
    failure
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = exec(conn, "ROLLBACK") {
            tracing::error!(error = %e, "sqlite ROLLBACK failed");
        }
    }
}

fn run_isolated(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), BatchFailure> {
    let sql = |stage: &'static str| move |e: rusqlite::Error| BatchFailure::from_sql(stage, &e);
    for job in batch.iter_mut() {
        exec(conn, "SAVEPOINT request").map_err(sql("SAVEPOINT"))?;
        if job.run(conn) {
            exec(conn, "RELEASE request").map_err(sql("RELEASE"))?;
        } else if conn.is_autocommit() {
            // The failure made SQLite roll back the whole transaction (I/O error, disk full):
            // every request of the batch so far is lost, so every one must fail.
            return Err(BatchFailure {
                kind: if job.write_fault() {
                    FailureKind::Fault(DISK_FULL)
                } else {
                    FailureKind::Other
                },
                message: "a failed request aborted the transaction".into(),
            });
        } else {
            exec(conn, "ROLLBACK TO request").map_err(sql("ROLLBACK TO"))?;
            exec(conn, "RELEASE request").map_err(sql("RELEASE"))?;
        }
    }
    Ok(())
}
