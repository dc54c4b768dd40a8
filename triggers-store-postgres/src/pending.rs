//! Pending events counted per organization (`EventLog::pending_events`).
//!
//! Each statement that changes the count appends its change to `pending_deltas`, in its own
//! transaction: the insert statement itself (`insert.rs`), statement-level triggers on
//! `events` for every other change of a status and every deletion (migration
//! `…12_pending_counts`). No counter row is updated by writers, so one organization's
//! writers on many connections and nodes never queue on a
//! row lock. Each node's fold task ([`spawn`]) moves the deltas into `pending_counts` every
//! [`FOLD_EVERY`], one node at a time (an advisory lock; the others pass), and a read adds
//! the organization's counter to its deltas not yet folded (by index): exact at any moment,
//! and what the read walks is the organization's statements since the last fold (plus
//! folded rows autovacuum has not yet removed; the table is vacuumed eagerly).

use std::time::Duration;

use sqlx::PgPool;
use triggers_core::OrganizationId;

/// How often each node tries to fold the deltas.
pub(crate) const FOLD_EVERY: Duration = Duration::from_secs(1);

/// Most delta rows one fold statement moves (the next pass takes the rest).
const FOLD_ROWS: i64 = 50_000;

/// The advisory-lock key the fold runs under ("TRGSPEND").
const FOLD_LOCK: i64 = 0x5452_4753_5045_4e44;

/// The organization's pending events: its folded count plus its deltas not yet folded.
pub(crate) async fn read(pool: &PgPool, org: OrganizationId) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT ((SELECT coalesce(sum(n), 0) FROM pending_counts WHERE organization_id = $1)
               + (SELECT coalesce(sum(n), 0) FROM pending_deltas WHERE organization_id = $1)
                )::bigint",
    )
    .bind(org.0)
    .fetch_one(pool)
    .await?;
    // Never below zero in a consistent database; a negative sum would be a defect, read as
    // none pending rather than as a huge number.
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Moves up to [`FOLD_ROWS`] deltas into the counters, in one statement (so one
/// transaction: a read sees every delta either still there or already counted), unless
/// another node is folding. Returns how many rows it moved.
pub(crate) async fn fold(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let moved: i64 = sqlx::query_scalar(
        "WITH turn AS (SELECT pg_try_advisory_xact_lock($1) AS mine),
         gone AS (
             DELETE FROM pending_deltas
             WHERE (SELECT mine FROM turn)
               AND id = ANY(ARRAY(SELECT id FROM pending_deltas ORDER BY id LIMIT $2))
             RETURNING organization_id, n
         ),
         summed AS (
             INSERT INTO pending_counts (organization_id, n)
             SELECT organization_id, sum(n) FROM gone GROUP BY 1 ORDER BY 1
             ON CONFLICT (organization_id) DO UPDATE SET n = pending_counts.n + excluded.n
         )
         SELECT count(*) FROM gone",
    )
    .bind(FOLD_LOCK)
    .bind(FOLD_ROWS)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(moved).unwrap_or(0))
}

/// Starts the fold task, until aborted: a pass every [`FOLD_EVERY`], at once again while a
/// pass finds a full batch.
///
/// A failure is logged once as a warning (then at debug level until a pass succeeds):
/// while deltas are not folded, each read of an organization's count walks more of them.
///
/// It folds only once this node has reached and migrated the database (`ready`): the
/// migration that creates the counters counts in one snapshot, which a fold running beside
/// it would make fail.
pub(crate) fn spawn(
    pool: PgPool,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            if !ready.load(std::sync::atomic::Ordering::Acquire) {
                tokio::time::sleep(FOLD_EVERY).await;
                continue;
            }
            match fold(&pool).await {
                Ok(moved) => {
                    if failing {
                        tracing::info!("folding pending-event counts works again");
                        failing = false;
                    }
                    if moved >= FOLD_ROWS as u64 {
                        continue;
                    }
                }
                // Also while the database is unreachable: the store says so elsewhere too
                // (its health check, its calls). The deltas wait; the counts stay exact.
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "folding pending-event counts failed");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "folding pending-event counts failed"),
            }
            tokio::time::sleep(FOLD_EVERY).await;
        }
    })
}
