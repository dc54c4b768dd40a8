//! The writer loop with pipelined commits: requests run while the previous commit is being
//! synced, and commit when that sync is done.
//!
//! The loop keeps one transaction open. Every request that arrives runs in it at once. The
//! transaction commits when the sync thread has answered every batch handed to it before
//! (so each sync covers one commit's worth of requests, as large as group commit makes it
//! without pipelining), when it holds `max_batch` requests, or when it holds lease
//! bookkeeping (answered at `COMMIT`, so it must not wait for a sync). Its durable requests
//! then go to the sync thread, and the next transaction begins with the next request. So
//! batch N+1's statements run during batch N's fsync, instead of after it.
//!
//! Failures are handled as in [`run_batch`](super::batch::run_batch): requests run without
//! savepoints until one fails; then the transaction is rolled back, every request so far runs
//! again in its own savepoint, and the rest of this transaction's requests run in savepoints
//! too. A failure that loses the transaction (disk full, I/O error) fails every request of it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_channel::{select, Receiver, TryRecvError};
use rusqlite::Connection;

use super::batch::{exec, rollback, run_isolated, run_one_isolated};
use super::job::{BatchFailure, Job};
use super::sync::Syncer;
use super::{abandon, settle};
use crate::health::WriteHealth;

/// The open transaction and the requests that ran in it.
struct Open {
    jobs: Vec<Box<dyn Job>>,
    /// Whether `BEGIN` ran.
    begun: bool,
    /// Whether requests run in savepoints (after one failed).
    isolated: bool,
    /// The transaction was lost: every request of it fails with this at commit time.
    failure: Option<BatchFailure>,
    /// Whether it holds lease bookkeeping.
    lease: bool,
}

impl Open {
    fn new(max_batch: usize) -> Self {
        Self {
            jobs: Vec::with_capacity(max_batch),
            begun: false,
            isolated: false,
            failure: None,
            lease: false,
        }
    }

    /// Runs `job` in the open transaction (beginning one if needed).
    fn run(&mut self, conn: &Connection, mut job: Box<dyn Job>) {
        self.lease |= job.is_lease();
        if self.failure.is_none() && !self.begun {
            match exec(conn, "BEGIN IMMEDIATE") {
                Ok(()) => self.begun = true,
                Err(e) => self.failure = Some(BatchFailure::from_sql("BEGIN", &e)),
            }
        }
        if self.failure.is_some() {
            self.jobs.push(job);
            return;
        }
        if self.isolated {
            if let Err(f) = run_one_isolated(conn, &mut job) {
                self.failure = Some(f);
            }
            self.jobs.push(job);
            return;
        }
        let ok = job.run(conn);
        self.jobs.push(job);
        if ok {
            return;
        }
        // A request failed: start over, each request so far in its own savepoint.
        rollback(conn);
        self.isolated = true;
        let rerun = exec(conn, "BEGIN IMMEDIATE")
            .map_err(|e| BatchFailure::from_sql("BEGIN", &e))
            .and_then(|()| run_isolated(conn, &mut self.jobs));
        if let Err(f) = rerun {
            self.failure = Some(f);
        }
    }

    /// Commits what ran and settles it; `true` if durable requests went to the sync thread.
    fn commit(&mut self, conn: &Connection, health: &WriteHealth, syncer: &Syncer) -> bool {
        let failure = self
            .failure
            .take()
            .or_else(|| exec(conn, "COMMIT").err().map(|e| BatchFailure::from_sql("COMMIT", &e)));
        if failure.is_some() {
            rollback(conn);
        }
        self.begun = false;
        self.isolated = false;
        self.lease = false;
        settle(&mut self.jobs, failure, health, Some(syncer))
    }
}

/// Serves requests until every sender is gone; then commits what is open and stops the sync
/// thread (which answers what it holds first).
pub(super) fn run(
    conn: &Connection,
    rx: &Receiver<Box<dyn Job>>,
    max_batch: usize,
    health: &WriteHealth,
    syncer: Syncer,
) {
    let mut open = Open::new(max_batch);
    // Hand-overs to the sync thread that it has not answered yet.
    let mut unsynced: usize = 0;
    let mut closed = false;
    loop {
        let step = catch_unwind(AssertUnwindSafe(|| {
            // Everything already waiting runs first, up to a full batch.
            while !closed && open.jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => open.run(conn, job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => closed = true,
                }
            }
            while let Ok(n) = syncer.synced().try_recv() {
                unsynced = unsynced.saturating_sub(n);
            }
            let due = unsynced == 0 || open.jobs.len() >= max_batch || open.lease || closed;
            if !open.jobs.is_empty() && due {
                if open.commit(conn, health, &syncer) {
                    unsynced += 1;
                }
                return;
            }
            if closed {
                return;
            }
            select! {
                recv(rx) -> job => match job {
                    Ok(job) => open.run(conn, job),
                    Err(_) => closed = true,
                },
                recv(syncer.synced()) -> n => {
                    if let Ok(n) = n {
                        unsynced = unsynced.saturating_sub(n);
                    }
                }
            }
        }));
        if step.is_err() {
            abandon(conn, &mut open.jobs);
            open = Open::new(max_batch);
        }
        if closed && open.jobs.is_empty() {
            break;
        }
    }
    drop(syncer);
}
