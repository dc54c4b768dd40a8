//! The delivery queue: `FOR UPDATE SKIP LOCKED` claims with leases, fenced completions,
//! releases and heartbeats.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::types::Uuid;
use tokio::sync::Notify;
use triggers_core::store::{
    ClaimRequest, Completion, CompletionState, Delivery, DeliveryQueue, StoreResult,
};
use triggers_core::{DeliveryId, Timestamp, WorkerId};

use crate::error::map;
use crate::rows::{self, get};
use crate::PgStore;

/// Due = pending and `next_attempt_at <= now`, or in flight with `lease_expires_at <= now`;
/// both are `due_at <= now` on the partial index `deliveries_due`.
const CLAIM_SQL: &str = r#"
WITH due AS (
    SELECT d.id, d.due_at FROM deliveries d
    JOIN endpoints ep ON ep.id = d.endpoint_id AND ep.enabled
    WHERE d.state IN ('pending', 'in_flight') AND d.due_at <= $1
    ORDER BY d.due_at
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
),
claimed AS (
    UPDATE deliveries d
    SET state = 'in_flight', attempt = d.attempt + 1, lease_owner = $3,
        lease_expires_at = $4, due_at = $4
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.attempt, d.event_id, d.endpoint_id, due.due_at AS was_due
)
SELECT c.id, c.attempt, c.event_id, c.endpoint_id, e.organization_id, e.event_type, e.payload, e.created_at,
       ep.url, ep.secret, ep.previous_secret, ep.previous_valid_until, ep.failing_since
FROM claimed c
JOIN events e ON e.id = c.event_id
JOIN endpoints ep ON ep.id = c.endpoint_id
ORDER BY c.was_due, c.id
"#;

/// Ends the fenced leases. First (a one-time filter, evaluated before any row is touched)
/// it locks the batch's events in id order (no deadlocks between batches), so that "was this
/// the event's last outstanding delivery?" ([`RECORD_SQL`], run next with a fresh snapshot)
/// is decided by one transaction at a time.
const FINISH_SQL: &str = r#"
WITH locked AS (
    SELECT id FROM events
    WHERE id IN (SELECT event_id FROM deliveries WHERE id = ANY($1::uuid[]))
    ORDER BY id
    FOR NO KEY UPDATE
)
UPDATE deliveries d
SET state = c.state,
    next_attempt_at = coalesce(c.retry_at, d.next_attempt_at),
    due_at = c.retry_at,
    lease_owner = NULL,
    lease_expires_at = NULL
FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::timestamptz[])
    AS c(id, owner, attempt, state, retry_at)
WHERE d.id = c.id AND d.state = 'in_flight' AND d.lease_owner = c.owner
  AND d.attempt = c.attempt
  AND (SELECT count(*) FROM locked) >= 0
RETURNING d.id, d.event_id
"#;

/// Attempts, endpoint health and event status for the applied completions.
/// Endpoint `mode`: 1 = clear failing_since, 2 = set it, 3 = set it unless already failing.
const RECORD_SQL: &str = r#"
WITH attempts_in AS (
    INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms, error)
    SELECT event_id, endpoint_id, at, status_code, latency_ms, error
    FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int4[], $5::int8[], $6::text[])
        WITH ORDINALITY AS a(event_id, endpoint_id, at, status_code, latency_ms, error, ord)
    ORDER BY ord
),
endpoints_up AS (
    UPDATE endpoints e
    SET failing_since = CASE x.mode WHEN 1 THEN NULL WHEN 2 THEN x.at
                                    ELSE coalesce(e.failing_since, x.at) END,
        enabled = e.enabled AND x.disable IS NULL,
        disabled_reason = coalesce(x.disable, e.disabled_reason)
    FROM UNNEST($7::uuid[], $8::int2[], $9::timestamptz[], $10::text[])
        AS x(id, mode, at, disable)
    -- Only rows that change: a healthy endpoint's row is not locked by every success.
    WHERE e.id = x.id
      AND (x.disable IS NOT NULL
           OR (x.mode = 1 AND e.failing_since IS NOT NULL)
           OR (x.mode = 2 AND e.failing_since IS DISTINCT FROM x.at)
           OR (x.mode = 3 AND e.failing_since IS NULL))
),
failed AS (
    UPDATE events SET status = 'failed'
    WHERE id = ANY($11::uuid[]) AND status = 'pending'
)
UPDATE events e SET status = 'delivered', delivered_at = x.at
FROM UNNEST($12::uuid[], $13::timestamptz[]) AS x(id, at)
WHERE e.id = x.id AND e.status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.event_id = e.id AND d.state IN ('pending', 'in_flight'))
"#;

#[async_trait]
impl DeliveryQueue for PgStore {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let until = triggers_core::clock::add(req.now, req.lease);
        // Planned for each call (not a cached generic plan): the plan must follow the queue's
        // size, or a plan made while it was small (bitmap scan + sort of every due row)
        // would stay in use once it is large.
        let found = sqlx::query(CLAIM_SQL)
            .persistent(false)
            .bind(req.now)
            .bind(i64::from(req.limit))
            .bind(req.owner.0)
            .bind(until)
            .fetch_all(self.pool())
            .await
            .map_err(map)?;
        found.iter().map(|row| delivery(row, req.owner, until, req.now)).collect()
    }

    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        // A delivery named twice: only its first completion can apply (the first one ends
        // the lease, so the second would be stale).
        let mut seen = HashSet::new();
        let firsts: Vec<&Completion> =
            completions.iter().filter(|c| seen.insert(c.delivery_id)).collect();
        let ids: Vec<Uuid> = firsts.iter().map(|c| c.delivery_id.0).collect();

        let mut tx = self.pool().begin().await.map_err(map)?;
        let applied = sqlx::query(FINISH_SQL)
            .bind(&ids)
            .bind(firsts.iter().map(|c| c.lease_owner.0).collect::<Vec<_>>())
            .bind(firsts.iter().map(|c| attempt_i32(c.attempt)).collect::<Vec<_>>())
            .bind(firsts.iter().map(|c| state_name(&c.state)).collect::<Vec<_>>())
            .bind(firsts.iter().map(|c| retry_at(&c.state)).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(map)?;
        let mut event_of: HashMap<Uuid, Uuid> = HashMap::with_capacity(applied.len());
        for row in &applied {
            event_of.insert(get(row, "id")?, get(row, "event_id")?);
        }
        let done: Vec<(&Completion, Uuid)> = firsts
            .iter()
            .filter_map(|c| event_of.get(&c.delivery_id.0).map(|e| (*c, *e)))
            .collect();
        if !done.is_empty() {
            record(&mut tx, &done).await?;
        }
        tx.commit().await.map_err(map)?;

        let mut applied_once: HashSet<Uuid> = event_of.keys().copied().collect();
        Ok(completions.iter().map(|c| applied_once.remove(&c.delivery_id.0)).collect())
    }

    async fn release(&self, id: DeliveryId, owner: WorkerId, attempt: u32) -> StoreResult<bool> {
        let row = sqlx::query(
            "WITH released AS (
                 UPDATE deliveries
                 SET state = 'pending', attempt = attempt - 1, due_at = next_attempt_at,
                     lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = $1 AND state = 'in_flight' AND lease_owner = $2 AND attempt = $3
                 RETURNING 1
             )
             SELECT count(*) AS released FROM released, LATERAL pg_notify($4, '')",
        )
        .bind(id.0)
        .bind(owner.0)
        .bind(attempt_i32(attempt))
        .bind(self.channel())
        .fetch_one(self.pool())
        .await
        .map_err(map)?;
        let released = rows::count(&row, "released")? > 0;
        if released {
            self.fire_local();
        }
        Ok(released)
    }

    async fn extend_lease(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE deliveries SET lease_expires_at = $4, due_at = $4
             WHERE id = $1 AND state = 'in_flight' AND lease_owner = $2 AND attempt = $3",
        )
        .bind(id.0)
        .bind(owner.0)
        .bind(attempt_i32(attempt))
        .bind(until)
        .execute(self.pool())
        .await
        .map_err(map)?;
        Ok(done.rows_affected() > 0)
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        let row = sqlx::query(
            "SELECT count(*) AS depth FROM deliveries WHERE state IN ('pending', 'in_flight')",
        )
        .fetch_one(self.pool())
        .await
        .map_err(map)?;
        rows::count(&row, "depth")
    }

    fn wakeups(&self) -> Option<Arc<Notify>> {
        self.listener_wakeups()
    }
}

/// Writes attempts, endpoint health and event status for the applied completions, in
/// completion order (so "the last word" per endpoint and per event is the later one).
async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    done: &[(&Completion, Uuid)],
) -> StoreResult<()> {
    // Per endpoint: the combined effect of its completions in order.
    let mut endpoints: Vec<(Uuid, i16, Timestamp, Option<String>)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut failed: Vec<Uuid> = Vec::new();
    let mut delivered: Vec<(Uuid, Timestamp)> = Vec::new();
    for (c, event) in done {
        let ep = c.record.endpoint_id.0;
        let slot = *index.entry(ep).or_insert_with(|| {
            endpoints.push((ep, 0, c.record.at, None));
            endpoints.len() - 1
        });
        let entry = &mut endpoints[slot];
        match c.state {
            CompletionState::Delivered => entry.1 = 1,
            CompletionState::Retry { .. } | CompletionState::Failed => {
                // Not failing before → failing since now; already failing → unchanged.
                match entry.1 {
                    0 => (entry.1, entry.2) = (3, c.record.at),
                    1 => (entry.1, entry.2) = (2, c.record.at),
                    _ => {}
                }
            }
        }
        if let Some(reason) = &c.disable_endpoint {
            entry.3 = Some(reason.clone());
        }
        match c.state {
            CompletionState::Failed => failed.push(*event),
            CompletionState::Delivered => delivered.push((*event, c.record.at)),
            CompletionState::Retry { .. } => {}
        }
    }
    // A failure in this batch wins over a success of the same event; the last success of
    // an event gives its delivered_at.
    let failed_set: HashSet<Uuid> = failed.iter().copied().collect();
    let mut last_success: HashMap<Uuid, Timestamp> = HashMap::new();
    for (event, at) in delivered.into_iter().filter(|(e, _)| !failed_set.contains(e)) {
        last_success.insert(event, at);
    }
    let endpoints: Vec<_> = endpoints.into_iter().filter(|e| e.1 != 0 || e.3.is_some()).collect();

    sqlx::query(RECORD_SQL)
        .bind(done.iter().map(|(_, e)| *e).collect::<Vec<_>>())
        .bind(done.iter().map(|(c, _)| c.record.endpoint_id.0).collect::<Vec<_>>())
        .bind(done.iter().map(|(c, _)| c.record.at).collect::<Vec<_>>())
        .bind(done.iter().map(|(c, _)| c.record.status_code.map(i32::from)).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|(c, _)| i64::try_from(c.record.latency_ms).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(done.iter().map(|(c, _)| c.record.error.as_deref()).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.1).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.2).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.3.as_deref()).collect::<Vec<_>>())
        .bind(failed)
        .bind(last_success.keys().copied().collect::<Vec<_>>())
        .bind(last_success.values().copied().collect::<Vec<_>>())
        .execute(&mut **tx)
        .await
        .map_err(map)?;
    Ok(())
}

fn state_name(s: &CompletionState) -> &'static str {
    match s {
        CompletionState::Delivered => "done",
        CompletionState::Retry { .. } => "pending",
        CompletionState::Failed => "failed",
    }
}

fn retry_at(s: &CompletionState) -> Option<Timestamp> {
    match s {
        CompletionState::Retry { at } => Some(*at),
        _ => None,
    }
}

/// Attempt numbers are `integer` in the database; no real delivery gets near 2³¹ attempts.
fn attempt_i32(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

fn delivery(
    row: &PgRow,
    owner: WorkerId,
    until: Timestamp,
    now: Timestamp,
) -> StoreResult<Delivery> {
    let attempt: i32 = get(row, "attempt")?;
    let mut secrets = vec![rows::secret(get(row, "secret")?)?];
    let previous: Option<String> = get(row, "previous_secret")?;
    let valid_until: Option<Timestamp> = get(row, "previous_valid_until")?;
    if let (Some(previous), Some(valid_until)) = (previous, valid_until) {
        if now < valid_until {
            secrets.push(rows::secret(previous)?);
        }
    }
    Ok(Delivery {
        id: get::<Uuid>(row, "id")?.into(),
        attempt: u32::try_from(attempt).map_err(|e| crate::error::corrupt("attempt", e))?,
        lease_owner: owner,
        lease_expires_at: until,
        event_id: get::<Uuid>(row, "event_id")?.into(),
        organization_id: get::<Uuid>(row, "organization_id")?.into(),
        event_type: get(row, "event_type")?,
        payload: rows::raw_json(get(row, "payload")?)?,
        created_at: get(row, "created_at")?,
        endpoint_id: get::<Uuid>(row, "endpoint_id")?.into(),
        url: get(row, "url")?,
        secrets,
        endpoint_failing_since: get(row, "failing_since")?,
    })
}
