//! The event log: insertion (through the group-commit writers), lookup, the inbox, ack,
//! replay and counts.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::types::Uuid;
use tokio::sync::oneshot;
use triggers_core::store::{
    AckOutcome, EventLog, InsertOutcome, ListQuery, Page, QueueStats, StoreError, StoreResult,
    PAGE_ITEM_OVERHEAD,
};
use triggers_core::{
    Event, EventDetail, EventId, EventRecord, EventStatus, OrganizationId, Timestamp,
};

use crate::insert::InsertJob;
use crate::rows::{self, get, EVENT_COLUMNS};
use crate::PgStore;

/// Runs after the event's failed deliveries were forgotten (same transaction). A matching
/// disabled endpoint gets a failed delivery again, and the event is then `failed`. The
/// organization's endpoints are locked first and read as they are once locked (as in the
/// insert batch, `insert.rs`): an endpoint disabled while the replay waited for its lock
/// gets a failed delivery, not nothing.
const REPLAY_SQL: &str = r#"
WITH eps AS MATERIALIZED (
    SELECT ep.id, ep.enabled, ep.filter_like, ep.ordering FROM endpoints ep
    WHERE ep.organization_id = $1
    ORDER BY ep.id
    FOR KEY SHARE
),
ev AS (
    UPDATE events e SET delivered_at = NULL,
        status = CASE WHEN EXISTS (
            SELECT 1 FROM eps ep
            WHERE NOT ep.enabled
              AND (ep.filter_like IS NULL OR e.event_type LIKE ep.filter_like ESCAPE '\')
        ) THEN 'failed' ELSE 'pending' END
    WHERE organization_id = $1 AND id = $2
    RETURNING id, organization_id, event_type, status, created_at
),
dead AS (
    INSERT INTO failed_deliveries
        (endpoint_id, event_id, organization_id, reason, failed_at, event_created_at)
    SELECT ep.id, ev.id, ev.organization_id, 'endpoint_disabled', $3, ev.created_at
    FROM ev JOIN eps ep
        ON NOT ep.enabled
       AND (ep.filter_like IS NULL OR ev.event_type LIKE ep.filter_like ESCAPE '\')
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
),
-- Cancelling a delivery deletes it (an in-flight worker's completion then finds no row);
-- an in-flight one is remembered so that its attempt is still recorded when it ends.
-- Remembered leases that have expired are forgotten.
pruned AS (
    DELETE FROM superseded_deliveries WHERE lease_expires_at <= $3
),
cancelled AS (
    DELETE FROM deliveries WHERE event_id IN (SELECT id FROM ev)
    RETURNING id, event_id, state, lease_owner, attempt, lease_expires_at
),
kept AS (
    INSERT INTO superseded_deliveries (id, event_id, lease_owner, attempt, lease_expires_at)
    SELECT id, event_id, lease_owner, attempt, lease_expires_at FROM cancelled
    WHERE state = 'in_flight' AND lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL
    ON CONFLICT (id) DO NOTHING
),
fanout AS (
    INSERT INTO deliveries
        (id, event_id, organization_id, endpoint_id, state, attempt, next_attempt_at, due_at,
         fifo_seq)
    SELECT triggers_delivery_id(ev.id), ev.id, ev.organization_id, ep.id, 'pending', 0, $3, $3,
           -- A FIFO endpoint's fresh delivery joins the end of its line.
           CASE WHEN ep.ordering = 'fifo' THEN (SELECT nextval('deliveries_fifo_seq')) END
    FROM ev JOIN eps ep
        ON ep.enabled
       AND (ep.filter_like IS NULL OR ev.event_type LIKE ep.filter_like ESCAPE '\')
    RETURNING 1
),
wake AS (SELECT pg_notify($4, '') FROM (SELECT 1 FROM fanout LIMIT 1) one)
SELECT (SELECT count(*) FROM ev) AS found, (SELECT count(*) FROM wake) AS woke,
       (SELECT status FROM ev) AS status
"#;

/// `list_events`: $5 limit, $6 byte budget, $7 per-item overhead (see `page_item_size`).
const LIST_SQL: &str = r#"
SELECT id, organization_id, event_type, dedup_id, status, created_at, delivered_at,
       CASE WHEN kept THEN payload END AS payload, CASE WHEN kept THEN 1::int8 END AS kept
FROM (
    SELECT c.*, rn <= $5 AND (run <= $6 OR rn = 1) AS kept
    FROM (
        SELECT c.*, row_number() OVER w AS rn, sum(c.size) OVER w AS run
        FROM (
            SELECT id, organization_id, event_type, payload, dedup_id, status, created_at,
                   delivered_at,
                   octet_length(payload)::int8 + octet_length(event_type)
                       + coalesce(octet_length(dedup_id), 0) + $7::int8 AS size
            FROM events
            WHERE organization_id = $1 AND status = $2
              AND ($3::uuid IS NULL OR id > $3)
              AND ($4::text IS NULL OR event_type LIKE $4 ESCAPE '\')
            ORDER BY id LIMIT $5 + 1
        ) c
        WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING)
    ) c
    -- Kept rows and the first row after them (its predecessor is kept: the first row always is).
    WHERE run - size <= $6 OR rn <= 2
) p
ORDER BY id
"#;

const ACK_SQL: &str = r#"
WITH target AS (
    SELECT id, status FROM events
    WHERE organization_id = $1 AND id = ANY($2::uuid[])
    ORDER BY id
    FOR NO KEY UPDATE
),
acked AS (
    UPDATE events e SET status = 'delivered', delivered_at = $3
    FROM target WHERE e.id = target.id AND target.status <> 'delivered'
)
SELECT id FROM target
"#;

#[async_trait]
impl EventLog for PgStore {
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.acquire_timeout();
        let job = InsertJob { org, events, window: dedup_window, now, deadline, reply };
        self.intake().push(job)?;
        answer.await.map_err(|_| StoreError::Unavailable("the insert writer stopped".into()))?
    }

    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE organization_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(org.0)
            .bind(id.0)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        let Some(row) = row else { return Ok(None) };
        let event = rows::event(&row)?;
        let found = sqlx::query(
            "SELECT endpoint_id, at, status_code, latency_ms, error FROM attempts
             WHERE event_id = $1 ORDER BY seq",
        )
        .bind(id.0)
        .fetch_all(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
        let attempts = found.iter().map(rows::attempt).collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(EventDetail { event, attempts }))
    }

    /// One statement applies the count limit and the byte budget: a window sum over the
    /// sizes (`octet_length` reads a TOASTed value's length without fetching it) keeps the
    /// page's prefix within budget; the first row beyond it comes back without its payload,
    /// as the marker that more events follow.
    async fn list_events(
        &self,
        org: OrganizationId,
        query: &ListQuery,
    ) -> StoreResult<Page<Event>> {
        let limit = query.limit.clamp(1, 1000);
        let budget = i64::try_from(query.max_bytes).unwrap_or(i64::MAX);
        let found = sqlx::query(LIST_SQL)
            .bind(org.0)
            .bind(query.status.as_str())
            .bind(query.after.map(|a| a.0))
            .bind(query.type_glob.as_ref().map(|g| g.to_sql_like()))
            .bind(i64::from(limit))
            .bind(budget)
            .bind(i64::try_from(PAGE_ITEM_OVERHEAD).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        let mut items = Vec::with_capacity(found.len());
        let mut more = false;
        // Rows are dropped as they are decoded: the page is held once, not twice.
        for row in found {
            if get::<Option<i64>>(&row, "kept")?.is_none() {
                more = true;
                break;
            }
            items.push(rows::event(&row)?);
        }
        let next_after = if more { items.last().map(|e| e.id) } else { None };
        Ok(Page { items, next_after })
    }

    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        let mut seen = HashSet::new();
        let unique: Vec<EventId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        if unique.is_empty() {
            return Ok(AckOutcome::default());
        }
        let found = sqlx::query(ACK_SQL)
            .bind(org.0)
            .bind(unique.iter().map(|i| i.0).collect::<Vec<_>>())
            .bind(now)
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        let found: HashSet<Uuid> =
            found.iter().map(|r| get::<Uuid>(r, "id")).collect::<StoreResult<_>>()?;
        let (acknowledged, not_found) = unique.into_iter().partition(|id| found.contains(&id.0));
        Ok(AckOutcome { acknowledged, not_found })
    }

    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>> {
        // One transaction; a deadlock with a completion of the same event rolls it back,
        // and it simply runs again.
        let mut retries = 0;
        let row = loop {
            match self.replay_once(org, id, now).await {
                Err(e) if crate::error::is_retryable_conflict(&e) && retries < 3 => retries += 1,
                other => break other.map_err(|e| self.fail(e))?,
            }
        };
        if rows::count(&row, "found")? == 0 {
            return Ok(None);
        }
        if rows::count(&row, "woke")? > 0 {
            self.fire_local();
        }
        let status: Option<String> = get(&row, "status")?;
        let status = status.as_deref().unwrap_or("pending");
        Ok(Some(status.parse().map_err(|e| crate::error::corrupt("event status", e))?))
    }

    /// Events are counted through `events_inbox`; in-flight deliveries by scanning the
    /// outstanding queue (finished deliveries have no row), which has no per-organization
    /// index because every index on `deliveries` is written by each claim.
    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                    count(*) FILTER (WHERE status = 'delivered') AS delivered,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    (SELECT count(*) FROM deliveries
                     WHERE organization_id = $1 AND state = 'in_flight') AS in_flight
             FROM events WHERE organization_id = $1",
        )
        .bind(org.0)
        .fetch_one(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
        Ok(QueueStats {
            pending: rows::count(&row, "pending")?,
            in_flight: rows::count(&row, "in_flight")?,
            delivered: rows::count(&row, "delivered")?,
            failed: rows::count(&row, "failed")?,
        })
    }

    /// The folded counter plus the deltas not yet folded (`pending.rs`).
    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        crate::pending::read(self.pool(), org).await.map_err(|e| self.fail(e))
    }
}

impl PgStore {
    /// Forgets the event's failed deliveries, then [`REPLAY_SQL`], in one transaction.
    async fn replay_once(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM failed_deliveries WHERE event_id = $1 AND organization_id = $2")
            .bind(id.0)
            .bind(org.0)
            .execute(&mut *tx)
            .await?;
        // The attempts of deleted endpoints count together
        // (`StoreLimits::max_attempts_kept`): the oldest beyond it go.
        let keep = i64::from(self.limits().max_attempts_kept.max(1));
        sqlx::query(
            "DELETE FROM attempts WHERE event_id = $1 AND seq IN (
                 SELECT a.seq FROM attempts a
                 WHERE a.event_id = $1
                   AND EXISTS (SELECT 1 FROM events e WHERE e.id = $1 AND e.organization_id = $2)
                   AND NOT EXISTS (SELECT 1 FROM endpoints ep WHERE ep.id = a.endpoint_id)
                 ORDER BY a.seq DESC OFFSET $3)",
        )
        .bind(id.0)
        .bind(org.0)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(REPLAY_SQL)
            .bind(org.0)
            .bind(id.0)
            .bind(now)
            .bind(self.channel())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }
}
