//! A rate limiter shared by every node through PostgreSQL: one exact global limit per
//! organization.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use triggers_core::store::StoreResult;
use triggers_core::{OrganizationId, RateDecision, SharedRateLimiter, Timestamp};

use crate::error::map;
use crate::rows::get;

const MINUTE_NANOS: i64 = 60_000_000_000;

/// One statement: charge if the allowance permits (the row lock of `ON CONFLICT DO UPDATE`
/// makes the read-modify-write atomic across nodes), and report the stored state otherwise.
const CHECK_SQL: &str = r#"
WITH charged AS (
    INSERT INTO rate_limits AS r (organization_id, tat_ns)
    SELECT $1, $2 + $3 WHERE $3 <= 60000000000
    ON CONFLICT (organization_id) DO UPDATE
        SET tat_ns = greatest(r.tat_ns, $2) + $3
        WHERE greatest(r.tat_ns, $2) + $3 - $2 <= 60000000000
    RETURNING tat_ns
)
SELECT (SELECT tat_ns FROM charged) AS charged,
       (SELECT tat_ns FROM rate_limits WHERE organization_id = $1) AS stored
"#;

/// GCRA limiter whose state lives in the `rate_limits` table, so every node sharing the
/// database enforces one exact limit per organization.
///
/// Same semantics as [`triggers_core::RateLimiter::check`]: burst = the per-minute limit,
/// even refill, a batch of `n` costs `n`, a refusal charges nothing, and the decision
/// carries `remaining`, `reset` and `retry_after` for the headers.
///
/// **Cost**: one round trip and one row update per check (the ingest's own group commit is
/// not involved). The table is `UNLOGGED`: no WAL and no fsync per check; after a database
/// crash every organization starts with a full allowance. Checks of one organization are
/// serialised by its row lock, so a single very busy organization is bounded by how fast
/// PostgreSQL updates one row (thousands per second), while different organizations do
/// not contend. Where an allowance per node is good enough, the in-process
/// [`triggers_core::RateLimiter`] costs nothing.
#[derive(Debug, Clone)]
pub struct PgRateLimiter {
    pool: PgPool,
}

impl PgRateLimiter {
    /// A limiter on `pool` (the database must be migrated, as [`PgStore`](crate::PgStore)
    /// does on connect).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Deletes the state of organizations whose allowance is full again (they behave
    /// exactly like organizations never seen). Returns how many rows were removed.
    pub async fn sweep(&self, now: Timestamp) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM rate_limits WHERE tat_ns <= $1")
            .bind(nanos(now))
            .execute(&self.pool)
            .await
            .map_err(map)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SharedRateLimiter for PgRateLimiter {
    async fn check(
        &self,
        org: OrganizationId,
        limit_per_minute: u32,
        cost: u32,
        now: Timestamp,
    ) -> StoreResult<RateDecision> {
        let now = nanos(now);
        let limit = limit_per_minute.max(1);
        let interval = MINUTE_NANOS / i64::from(limit);
        let increment = interval.saturating_mul(i64::from(cost));
        // Anything above a minute can never pass; keep the SQL arithmetic in range.
        let sql_increment = increment.min(MINUTE_NANOS + 1);
        let row = sqlx::query(CHECK_SQL)
            .bind(org.0)
            .bind(now)
            .bind(sql_increment)
            .fetch_one(&self.pool)
            .await
            .map_err(map)?;
        let charged: Option<i64> = get(&row, "charged")?;
        Ok(match charged {
            Some(tat) => summary(true, limit, interval, tat, now, None),
            None => {
                let stored: Option<i64> = get(&row, "stored")?;
                let current = stored.unwrap_or(now);
                let wanted = current.max(now).saturating_add(increment);
                let wait = wanted.saturating_sub(now).saturating_sub(MINUTE_NANOS);
                summary(false, limit, interval, current, now, Some(wait))
            }
        })
    }

    async fn sweep(&self, now: Timestamp) -> StoreResult<u64> {
        // The inherent method (inherent methods win over trait methods).
        PgRateLimiter::sweep(self, now).await
    }
}

fn nanos(t: Timestamp) -> i64 {
    t.timestamp_micros().saturating_mul(1000)
}

/// The same header arithmetic as the in-process limiter.
fn summary(
    allowed: bool,
    limit: u32,
    interval: i64,
    tat: i64,
    now: i64,
    wait: Option<i64>,
) -> RateDecision {
    let used = (tat - now).max(0);
    let free = (MINUTE_NANOS - used).max(0) / interval;
    let to_duration = |n: i64| Duration::from_nanos(u64::try_from(n.max(0)).unwrap_or(0));
    RateDecision {
        allowed,
        limit,
        remaining: u32::try_from(free).unwrap_or(u32::MAX).min(limit),
        reset: to_duration(used),
        retry_after: wait.map(to_duration),
    }
}
