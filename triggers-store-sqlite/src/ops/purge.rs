//! Retention: deleting old delivered events and old dedup entries, one small batch per call.

use rusqlite::{params, Connection};
use triggers_core::store::StoreResult;

use crate::codec::{self, query_vec};
use crate::error::SqlResultExt;

/// Deletes up to `batch` delivered events created before `cutoff` (unix µs), oldest first,
/// with their attempt records and any deliveries still outstanding for them. Returns how many
/// events were deleted.
pub(crate) fn delivered_batch(conn: &Connection, cutoff: i64, batch: u32) -> StoreResult<u64> {
    // `status <> 0` lets SQLite use the partial index `events_finished`.
    events_batch(
        conn,
        "DELETE FROM events WHERE seq IN (
             SELECT seq FROM events WHERE status <> 0 AND status = 1 AND created_at < ?1
             ORDER BY created_at LIMIT ?2)
         RETURNING seq",
        cutoff,
        batch,
    )
}

/// Like [`delivered_batch`] for delivered and failed events (`Retention::purge_finished_batch`).
pub(crate) fn finished_batch(conn: &Connection, cutoff: i64, batch: u32) -> StoreResult<u64> {
    events_batch(
        conn,
        "DELETE FROM events WHERE seq IN (
             SELECT seq FROM events WHERE status <> 0 AND created_at < ?1
             ORDER BY created_at LIMIT ?2)
         RETURNING seq",
        cutoff,
        batch,
    )
}

fn events_batch(conn: &Connection, sql: &str, cutoff: i64, batch: u32) -> StoreResult<u64> {
    let mut stmt = conn.prepare_cached(sql).store()?;
    let seqs = query_vec(&mut stmt, params![cutoff, batch], |row| codec::int(row, 0))?;
    let mut attempts = conn.prepare_cached("DELETE FROM attempts WHERE event_seq = ?1").store()?;
    let mut deliveries =
        conn.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1").store()?;
    let mut failed =
        conn.prepare_cached("DELETE FROM failed_deliveries WHERE event_seq = ?1").store()?;
    for seq in &seqs {
        attempts.execute([seq]).store()?;
        deliveries.execute([seq]).store()?;
        failed.execute([seq]).store()?;
    }
    Ok(seqs.len() as u64)
}

/// Forgets dedup entries recorded before `cutoff` (unix µs) among the `batch` oldest entries.
/// Returns `(deleted, more)`: `more` is false once the oldest entries are inside the window.
///
/// Entries are examined in insertion order, which is creation order up to clock jitter between
/// concurrent requests; an entry stuck behind a newer one is forgotten by a later purge.
pub(crate) fn dedup_batch(conn: &Connection, cutoff: i64, batch: u32) -> StoreResult<(u64, bool)> {
    let n = conn
        .prepare_cached(
            "DELETE FROM dedup WHERE seq IN (SELECT seq FROM dedup ORDER BY seq LIMIT ?2)
             AND created_at < ?1",
        )
        .store()?
        .execute(params![cutoff, batch])
        .store()?;
    Ok((n as u64, n as u64 == u64::from(batch) && batch > 0))
}
