//! The writer thread: the only connection that writes, with group commit.
//!
//! Every write is a request in a bounded queue. The thread takes a batch of the waiting
//! requests (up to `max_batch`), runs them all in one `BEGIN IMMEDIATE` transaction,
//! `COMMIT`s (one fsync for the whole batch) and only then replies to every waiter. Requests
//! that queue up while a batch commits form the next batch, so batches grow with load by
//! themselves.
//!
//! Every request of a batch waits for the whole batch, so the queue is fair between
//! organizations ([`Lanes`]): each organization's requests wait in a lane of their own
//! (requests of no organization — claims, completions, purges — in the store's lane), a batch
//! takes the lanes' requests round-robin and stays within a predicted cost
//! (`SqliteConfig::batch_budget`), and a request predicted to cost more (an insert of a
//! large batch fanning out to many endpoints) runs alone, taking turns with batches of
//! everyone else. Predictions come from the time each request took ([`Lanes::record`]), per
//! event for inserts. One organization's heavy inserts then delay another organization's
//! request by at most one of them, not by everything queued with it.
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
//! A full queue is refused at once with `StoreError::Overloaded`: the caller sees
//! backpressure instead of an unbounded queue. So is a request whose organization already
//! has half of the queue's places: one organization cannot fill it for everyone.
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::health::WriteHealth;
use batch::{exec, run_batch};
pub(crate) use job::Lane;
use job::{BatchFailure, FailureKind, Job, Task};
use sync::{not_durable, SyncWal};

use rusqlite::Connection;
use tokio::sync::oneshot;
use triggers_core::lanes::{Lanes, Limits, Refused};
use triggers_core::store::StoreResult;
use triggers_core::StoreError;

/// The handle through which the store sends write requests. Dropping the last one stops the
/// thread after it has finished the requests already queued.
pub(crate) struct Writer {
    intake: Arc<Intake>,
    thread: Option<JoinHandle<()>>,
    alive: Arc<AtomicBool>,
    health: Arc<WriteHealth>,
}

impl Writer {
    /// Starts the writer thread on `conn`. With `wal` (a `synchronous = FULL` connection in
    /// WAL mode), lease bookkeeping commits in transactions of its own without an fsync, and
    /// `wal` syncs the few lease results that must be durable (see [`sync`]). Without it,
    /// every request runs in the one batch transaction, as durable as the connection's
    /// `synchronous` makes it. At most `queue` requests wait; a batch holds at most
    /// `max_batch` of them and, unless it is one request, `budget` of predicted work.
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        max_batch: usize,
        budget: Duration,
        wal: Option<Box<dyn SyncWal>>,
    ) -> Result<Self, StoreError> {
        let intake = Arc::new(Intake {
            state: Mutex::new(Queued { lanes: Lanes::new(queue, budget), closed: false }),
            ready: Condvar::new(),
        });
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveGuard(alive.clone());
        let health = Arc::new(WriteHealth::default());
        let thread_health = health.clone();
        let limits = Limits { max_requests: max_batch.max(1), ..Limits::default() };
        let thread_intake = intake.clone();
        let thread = std::thread::Builder::new()
            .name("triggers-sqlite-writer".into())
            .spawn(move || {
                let _flag = flag;
                run(&conn, &thread_intake, &limits, &thread_health, wal);
                // Refresh the query planner's statistics where useful before the connection
                // closes.
                if let Err(e) = conn.execute_batch("PRAGMA optimize") {
                    tracing::debug!(error = %e, "PRAGMA optimize failed");
                }
                tracing::debug!("sqlite writer stopping");
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { intake, thread: Some(thread), alive, health })
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
    /// its last run's writes are committed. `lane`: whose request it is and how big (see the
    /// module docs on fairness).
    ///
    /// Errors: `Overloaded` at once if the queue is full, `Unavailable` if the writer stopped,
    /// `f`'s own error (its writes rolled back), or the batch's commit failure.
    pub(crate) async fn call<T, F>(&self, lane: Lane, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(Task::new(f, |_| true, false, lane)).await
    }

    /// Lease bookkeeping (in the store's lane): [`call`](Self::call), but with `wal` (see
    /// [`start`](Self::start)) the request runs ahead of the other requests of its batch, in a
    /// transaction committed without an fsync (its loss to a power failure only makes a
    /// delivery due again; a process crash loses nothing that committed). A successful result
    /// for which `durable` says `true` is answered only after `wal` synced it; if that sync
    /// fails, with `Unavailable`.
    pub(crate) async fn call_with<T, F>(&self, f: F, durable: fn(&T) -> bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(Task::new(f, durable, true, Lane::STORE)).await
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
        {
            let mut queued = self.intake.lock();
            if queued.closed {
                return Err(StoreError::Unavailable("the sqlite writer has stopped".into()));
            }
            match queued.lanes.push(Box::new(task)) {
                Ok(()) => {}
                Err((_, Refused::Full)) => {
                    return Err(StoreError::Overloaded("the sqlite write queue is full".into()))
                }
                Err((_, Refused::LaneFull)) => {
                    return Err(StoreError::Overloaded(
                        "the organization's share of the sqlite write queue (half of it) is full"
                            .into(),
                    ))
                }
            }
        }
        self.intake.ready.notify_one();
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable("the sqlite writer stopped before replying".into()))
        })
    }
}

/// The queue between the callers and the writer thread.
struct Intake {
    state: Mutex<Queued>,
    /// Signalled when a request is queued or the queue closes.
    ready: Condvar,
}

struct Queued {
    lanes: Lanes<Box<dyn Job>>,
    /// No more requests are taken; the thread ends once the queued ones are done.
    closed: bool,
}

impl Intake {
    /// The queue, also after a panic while it was locked (its state stays consistent: every
    /// change under the lock is a single step of [`Lanes`]).
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the next batch; `None` once the queue is closed and empty.
    fn next(&self, limits: &Limits) -> Option<Vec<Box<dyn Job>>> {
        let mut queued = self.lock();
        loop {
            if !queued.lanes.is_empty() {
                // Never empty: with heavy requests allowed, the front lane always gives one.
                let batch = queued.lanes.next(limits);
                if !batch.is_empty() {
                    return Some(batch);
                }
            } else if queued.closed {
                return None;
            }
            queued = self.ready.wait(queued).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Records how long each request of a batch that ran took (see [`Lanes::record`]).
    fn record(&self, batch: &[Box<dyn Job>]) {
        let mut queued = self.lock();
        for job in batch {
            let lane = job.lane();
            queued.lanes.record(&lane.org, lane.units, job.elapsed());
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish the queued requests and exit.
        self.intake.lock().closed = true;
        self.intake.ready.notify_all();
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

/// Serves requests until the queue is closed and empty.
fn run(
    conn: &Connection,
    intake: &Intake,
    limits: &Limits,
    health: &WriteHealth,
    mut wal: Option<Box<dyn SyncWal>>,
) {
    let mut leases: Vec<Box<dyn Job>> = Vec::new();
    let mut others: Vec<Box<dyn Job>> = Vec::with_capacity(limits.max_requests.min(1024));
    // Whether a lease transaction left the connection at `synchronous = NORMAL`.
    let mut lowered = false;
    while let Some(mut batch) = intake.next(limits) {
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
                guarded(conn, &mut leases, |jobs| serve_leases(conn, jobs, intake, health, wal));
            }
        }
        if !batch.is_empty() {
            guarded(conn, &mut batch, |jobs| serve(conn, jobs, intake, health, &mut lowered));
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
    intake: &Intake,
    health: &WriteHealth,
    lowered: &mut bool,
) {
    let raised = match *lowered {
        true => set_synchronous(conn, SYNC_FULL).map(|()| *lowered = false),
        false => Ok(()),
    };
    let failure = raised.err().or_else(|| run_batch(conn, batch));
    record(batch, failure.as_ref(), health);
    intake.record(batch);
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
    intake: &Intake,
    health: &WriteHealth,
    wal: &mut dyn SyncWal,
) {
    let failure = run_batch(conn, batch);
    record(batch, failure.as_ref(), health);
    intake.record(batch);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use triggers_core::{OrganizationId, StoreError};

    use super::{Lane, Writer};

    /// The names of the requests that ran, in order.
    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A writer whose thread is held by a first request until the returned sender is
    /// dropped, and an empty log.
    fn held_writer() -> (Arc<Writer>, mpsc::Sender<()>, Log) {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let writer =
            Arc::new(Writer::start(conn, 16, 256, Duration::from_millis(20), None).unwrap());
        let (hold, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let (started, on_start) = mpsc::channel::<()>();
        let w = writer.clone();
        tokio::spawn(async move {
            w.call(Lane::STORE, move |_| {
                let _ = started.send(());
                let _ = held.lock().unwrap().recv();
                Ok(())
            })
            .await
        });
        on_start.recv_timeout(Duration::from_secs(30)).unwrap();
        (writer, hold, Arc::new(Mutex::new(Vec::new())))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_organizations_request_runs_between_one_organizations_heavy_ones() {
        let (writer, hold, log) = held_writer();
        let (big, small) = (OrganizationId::named("big"), OrganizationId::named("small"));
        {
            // `big`'s requests took 1 ms per event, `small`'s 1 µs.
            let mut queued = writer.intake.lock();
            queued.lanes.record(&Some(big), 1, Duration::from_millis(1));
            queued.lanes.record(&Some(small), 1, Duration::from_micros(1));
        }
        let mut calls = Vec::new();
        for (name, org, events) in [("big 1", big, 1000), ("big 2", big, 1000), ("small", small, 1)]
        {
            let (w, log) = (writer.clone(), log.clone());
            let lane = Lane { org: Some(org), units: events };
            calls.push(tokio::spawn(async move {
                w.call(lane, move |_| {
                    log.lock().unwrap().push(name);
                    Ok(())
                })
                .await
            }));
            while writer.intake.lock().lanes.len() < calls.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(hold);
        for call in calls {
            call.await.unwrap().unwrap();
        }
        // In arrival order, `small` would wait for both heavy requests in one transaction.
        assert_eq!(*log.lock().unwrap(), ["big 1", "small", "big 2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_organization_fills_half_the_queue_and_a_full_queue_is_refused_at_once() {
        let (writer, hold, _) = held_writer();
        let lane = |name| Lane { org: Some(OrganizationId::named(name)), units: 1 };
        let mut calls = Vec::new();
        for org in ["a", "b"] {
            for _ in 0..8 {
                let w = writer.clone();
                calls.push(tokio::spawn(async move { w.call(lane(org), |_| Ok(())).await }));
            }
            while writer.intake.lock().lanes.len() < calls.len() {
                tokio::task::yield_now().await;
            }
            if org == "a" {
                // `a` holds half of the 16 places: its share.
                let refused = writer.call(lane("a"), |_| Ok(())).await;
                assert!(matches!(refused, Err(StoreError::Overloaded(m)) if m.contains("share")));
            }
        }
        let refused = writer.call(lane("c"), |_| Ok(())).await;
        assert!(matches!(refused, Err(StoreError::Overloaded(m)) if m.contains("queue is full")));
        drop(hold);
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }
}
