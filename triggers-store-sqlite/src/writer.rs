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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

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
}

/// Why a whole batch failed (nothing of it was committed).
#[derive(Debug, Clone)]
struct BatchFailure {
    corrupt: bool,
    message: String,
}

impl BatchFailure {
    fn from_sql(stage: &str, e: &rusqlite::Error) -> Self {
        let corrupt = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        );
        Self { corrupt, message: format!("{stage} failed: {e}") }
    }

    fn to_error(&self) -> StoreError {
        if self.corrupt {
            StoreError::Corrupt(self.message.clone())
        } else {
            StoreError::Unavailable(format!("nothing was written: {}", self.message))
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
}

/// The handle through which the store sends write requests. Dropping the last one stops the
/// thread after it has finished the requests already queued.
pub(crate) struct Writer {
    tx: Option<SyncSender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
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
        let thread = std::thread::Builder::new()
            .name("triggers-sqlite-writer".into())
            .spawn(move || {
                let _flag = flag;
                run(&conn, &rx, max_batch.max(1));
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { tx: Some(tx), thread: Some(thread), alive })
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

fn run(conn: &Connection, rx: &Receiver<Box<dyn Job>>, max_batch: usize) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let failure = run_batch(conn, &mut batch);
        if let Some(f) = &failure {
            tracing::warn!(error = %f.message, requests = batch.len(), "sqlite write batch failed");
        }
        for job in batch.drain(..) {
            job.finish(failure.as_ref());
        }
    }
    // Refresh the query planner's statistics where useful before the connection closes.
    if let Err(e) = conn.execute_batch("PRAGMA optimize") {
        tracing::debug!(error = %e, "PRAGMA optimize failed");
    }
    tracing::debug!("sqlite writer stopping");
}

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
                corrupt: false,
                message: "a failed request aborted the transaction".into(),
            });
        } else {
            exec(conn, "ROLLBACK TO request").map_err(sql("ROLLBACK TO"))?;
            exec(conn, "RELEASE request").map_err(sql("RELEASE"))?;
        }
    }
    Ok(())
}
