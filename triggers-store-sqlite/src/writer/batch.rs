//! One batch in one transaction, with per-request savepoints when a request fails.

use rusqlite::Connection;

use super::job::{BatchFailure, FailureKind, Job};
use crate::error::DISK_FULL;
use crate::ops::pending;

pub(super) fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one batch in one transaction. `None` if it committed.
///
/// The changes of pending-event counts the batch's requests recorded (`ops::pending`:
/// inserts, completions, acks) are written just before the commit, and forgotten with
/// whatever is rolled back.
pub(super) fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Option<BatchFailure> {
    pending::discard();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        return Some(BatchFailure::from_sql("BEGIN", &e));
    }
    let all_ok = batch.iter_mut().all(|job| job.run(conn));
    if all_ok {
        if let Err(e) = pending::flush(conn) {
            rollback(conn);
            return Some(BatchFailure::from_sql("pending counts", &e));
        }
        return match exec(conn, "COMMIT") {
            Ok(()) => None,
            Err(e) => {
                rollback(conn);
                Some(BatchFailure::from_sql("COMMIT", &e))
            }
        };
    }
    pending::discard();
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
        .or_else(|| {
            pending::flush(conn).err().map(|e| BatchFailure::from_sql("pending counts", &e))
        })
        .or_else(|| exec(conn, "COMMIT").err().map(|e| BatchFailure::from_sql("COMMIT", &e)));
    if failure.is_some() {
        pending::discard();
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

/// Runs every request of `batch` in its own savepoint, in the open transaction.
fn run_isolated(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), BatchFailure> {
    batch.iter_mut().try_for_each(|job| run_one_isolated(conn, job))
}

/// Runs one request in a savepoint of the open transaction: if it fails, its writes alone are
/// rolled back. `Err` if the transaction itself is lost.
fn run_one_isolated(conn: &Connection, job: &mut Box<dyn Job>) -> Result<(), BatchFailure> {
    let sql = |stage: &'static str| move |e: rusqlite::Error| BatchFailure::from_sql(stage, &e);
    exec(conn, "SAVEPOINT request").map_err(sql("SAVEPOINT"))?;
    let recorded = pending::mark();
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
        pending::truncate(recorded);
        exec(conn, "ROLLBACK TO request").map_err(sql("ROLLBACK TO"))?;
        exec(conn, "RELEASE request").map_err(sql("RELEASE"))?;
    }
    Ok(())
}
