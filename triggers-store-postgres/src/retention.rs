//! Retention: purging finished events and expired dedup entries, one small batch per call.

use async_trait::async_trait;
use triggers_core::store::{Retention, StoreResult};
use triggers_core::Timestamp;

use crate::error::map;
use crate::PgStore;

/// One transaction: the oldest finished events (served by the partial index
/// `events_finished`), their attempts and any deliveries still outstanding for them.
const PURGE_FINISHED_SQL: &str = r#"
WITH gone AS (
    DELETE FROM events WHERE id IN (
        SELECT id FROM events
        WHERE status <> 'pending' AND created_at < $1
        ORDER BY created_at
        LIMIT $2)
    RETURNING id
),
attempts_gone AS (
    DELETE FROM attempts WHERE event_id IN (SELECT id FROM gone)
),
deliveries_gone AS (
    DELETE FROM deliveries WHERE event_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone
"#;

const PURGE_DEDUP_SQL: &str = r#"
WITH gone AS (
    DELETE FROM dedup WHERE (organization_id, dedup_id) IN (
        SELECT organization_id, dedup_id FROM dedup
        WHERE created_at < $1
        ORDER BY created_at
        LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone
"#;

#[async_trait]
impl Retention for PgStore {
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(PURGE_FINISHED_SQL)
            .bind(before)
            .bind(i64::from(batch))
            .fetch_one(self.pool())
            .await
            .map_err(map)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(PURGE_DEDUP_SQL)
            .bind(before)
            .bind(i64::from(batch))
            .fetch_one(self.pool())
            .await
            .map_err(map)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
