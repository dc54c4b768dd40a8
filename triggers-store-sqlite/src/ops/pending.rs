//! Changes of the pending-event counts on the hot paths, summed per writer transaction
//! (migration 0011).
//!
//! Rare changes of an event's status are counted by triggers, row by row. The hot ones are
//! not: inserts (every event goes in pending) and an event becoming `delivered` (a
//! completion, an ack) record their change here ([`add`]), on the writer's thread, and the
//! writer writes the sums — one change of `pending_counts` per organization and
//! transaction, not per event — just before it commits ([`flush`]). A request whose writes
//! are rolled back (its savepoint, or the whole transaction) takes its sums back with them
//! ([`mark`], [`truncate`], [`discard`]).

use std::cell::RefCell;

use rusqlite::{params, Connection};

thread_local! {
    /// (organization id, change) since the writer's transaction began.
    static ADDED: RefCell<Vec<([u8; 16], i64)>> = const { RefCell::new(Vec::new()) };
}

/// Records that the organization `org_id` has `n` more pending events (fewer if negative).
pub(crate) fn add(org_id: &[u8; 16], n: i64) {
    ADDED.with(|added| added.borrow_mut().push((*org_id, n)));
}

/// Where the records stand now, for [`truncate`].
pub(crate) fn mark() -> usize {
    ADDED.with(|added| added.borrow().len())
}

/// Forgets the records made since `mark` (their request's writes were rolled back).
pub(crate) fn truncate(mark: usize) {
    ADDED.with(|added| added.borrow_mut().truncate(mark));
}

/// Forgets every record (the transaction was rolled back, or a new one begins).
pub(crate) fn discard() {
    ADDED.with(|added| added.borrow_mut().clear());
}

/// Writes the recorded sums into `pending_counts`, one statement per organization, and
/// forgets them. Call inside the transaction, just before it commits.
pub(crate) fn flush(conn: &Connection) -> rusqlite::Result<()> {
    let mut added = ADDED.with(|added| std::mem::take(&mut *added.borrow_mut()));
    if added.is_empty() {
        return Ok(());
    }
    added.sort_unstable_by_key(|(org, _)| *org);
    let mut stmt = conn.prepare_cached(
        "INSERT INTO pending_counts (org_id, n) VALUES (?1, ?2)
         ON CONFLICT (org_id) DO UPDATE SET n = n + excluded.n",
    )?;
    for same in added.chunk_by(|a, b| a.0 == b.0) {
        let n = same.iter().fold(0i64, |sum, (_, n)| sum.saturating_add(*n));
        stmt.execute(params![same[0].0, n])?;
    }
    Ok(())
}
