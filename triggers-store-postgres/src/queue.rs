//! The delivery queue: `FOR UPDATE SKIP LOCKED` claims with leases, fenced completions,
//! releases and heartbeats.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::types::Uuid;
use sqlx::PgConnection;
use tokio::sync::Notify;
use triggers_core::store::{
    ClaimRequest, CompletedAndClaimed, Completion, Delivery, DeliveryQueue, StoreResult,
};
use triggers_core::{DeliveryId, Timestamp, WorkerId};

use crate::rows::{self, get};
use crate::PgStore;

/// Due = pending and `next_attempt_at <= now`, or in flight with `lease_expires_at <= now`;
/// both are `due_at <= now` (finished deliveries have no row). Parallel deliveries are found
/// per endpoint on the index `deliveries_endpoint_due` (endpoint, due time).
///
/// The claim commits without waiting for its WAL flush (`synchronous_commit = off` for this
/// transaction only, `commit_mode`): a lease is not worth an fsync. If the database crashes
/// within the WAL writer's delay (≈ 200 ms) after a claim, the claim may be forgotten: the
/// delivery is due again and is claimed anew with the same attempt number, while the first
/// worker's completion is fenced off as stale — a duplicate attempt (same `webhook-id`) at
/// worst, which at-least-once delivery allows, never a lost delivery. Completions commit the
/// same way (`complete`). The exception is a claim that hands out the head of a FIFO line:
/// it commits with the session's own `synchronous_commit` (the server's setting, `on` by
/// default), and that flush also makes every earlier commit durable — the predecessor's
/// completion included, on whichever node it ran — so a line never moves on past a
/// completion a crash could undo (the store contract's durability rule). The statement
/// always runs in a transaction of its own (autocommitted), so `current_setting` reads the
/// session's value, not one an earlier statement of the transaction set.
///
/// `siblings` counts the event's outstanding deliveries, this one included, as of the
/// statement's snapshot (finished ones are deleted), up to two: 1 means every other delivery
/// of the event has finished and committed, so nobody else can decide the event's status
/// (see `complete`). Counting stops at two, as only 1 matters (an event with 50 endpoints
/// cost 50 index entries per claimed delivery).
///
/// Fairness (the rules of `DeliveryQueue::claim`), reading the statement top down:
/// 1. `busy`: live leases per endpoint and organization, from the partial index
///    `deliveries_in_flight` (it holds in-flight rows only, so this costs what is in flight,
///    not the queue); `org_busy` sums them per organization.
/// 2. `outstanding`: every endpoint with outstanding parallel deliveries and its earliest
///    `due_at` — a loose scan of `deliveries_endpoint_due`, one index probe per endpoint.
///    The deliveries of an endpoint or organization at its cap are never walked, however
///    many wait (walking the due queue in time order, as before, visited each of them on
///    every claim, and a claim's `LIMIT` could fill with deliveries the caps then dropped).
/// 3. `open`: those that are due, enabled and under their caps — a failing endpoint's cap is
///    1 (the circuit breaker), a healthy one's its own `concurrency`, or twice its own
///    `rate_limit`, when lower than the claim's —, per organization only as many, earliest first, as the organization has
///    room for, then the `$2` earliest: no other endpoint can hold one of the `$2` earliest
///    claimable deliveries. `parallel`: for each, its earliest due deliveries, no more than
///    its room, its organization's room, and `$2 - k + 1` for the `k`-th of them (by first
///    due time): each of the `k - 1` before it puts a delivery due no later than this one's
///    first into the claim (its own first, or, if its organization's cap drops that, the
///    organization's earlier ones, at least as many as it has endpoints here), so the `k`-th
///    can place at most `$2 - k + 1` (ties in due time aside, which any order may break;
///    a first delivery another claimer holds is skipped, so with several claimers at once a
///    claim may take fewer than it could, and the next claim takes the rest).
///    With 16 endpoints open, a claim of 16 locks 136 rows instead of 256 (≈ 25 % less time
///    with 50 endpoints; BENCHMARKS.md, "Issue #17, eleventh sitting"). Locked `SKIP LOCKED`.
/// 4. `heads`: the first delivery of each FIFO endpoint's line (by `fifo_seq, event_id`), if
///    it is due, its endpoint has nothing in flight and its organization is under its cap.
///    The head is chosen from the statement's snapshot *without* skipping locked rows (a
///    locked head is still the head), then locked `SKIP LOCKED` with its due time checked
///    again on the newest row version: a head another claimer just took is passed over, and
///    the next delivery of the line is never considered while the head exists. So at most one
///    delivery of a line is in flight, across nodes.
/// 5. `ranked`/`due`: both kinds numbered per organization and endpoint in due order, so
///    that the claim itself takes no more than each cap leaves, then the first `$2`. Rows
///    locked but not taken are left as they are.
///
/// `benches/pgbench/claim_complete.sql` runs a copy of this statement: change both.
const CLAIM_SQL: &str = r#"
WITH RECURSIVE busy AS MATERIALIZED (
    SELECT b.endpoint_id, b.organization_id, count(*) AS n
    FROM deliveries b
    WHERE b.state = 'in_flight' AND b.due_at > $1
    GROUP BY b.endpoint_id, b.organization_id
),
org_busy AS MATERIALIZED (
    SELECT organization_id, sum(n) AS n FROM busy GROUP BY organization_id
),
outstanding AS (
    (SELECT endpoint_id, due_at FROM deliveries
     WHERE fifo_seq IS NULL ORDER BY endpoint_id, due_at LIMIT 1)
    UNION ALL
    SELECT n.endpoint_id, n.due_at FROM outstanding o CROSS JOIN LATERAL (
        SELECT l.endpoint_id, l.due_at FROM deliveries l
        WHERE l.fifo_seq IS NULL AND l.endpoint_id > o.endpoint_id
        ORDER BY l.endpoint_id, l.due_at LIMIT 1) n
),
capped AS (
    SELECT o.endpoint_id, o.due_at AS first_due, ep.organization_id,
           CASE WHEN ep.failing_since IS NULL
                THEN GREATEST(1, LEAST(ep.concurrency, 2 * ep.rate_limit, $6)) ELSE 1 END AS cap,
           coalesce(ob.n, 0) AS org_n, coalesce(b.n, 0) AS ep_n
    FROM outstanding o
    JOIN endpoints ep ON ep.id = o.endpoint_id AND ep.enabled
    LEFT JOIN org_busy ob ON ob.organization_id = ep.organization_id
    LEFT JOIN busy b ON b.endpoint_id = o.endpoint_id
    WHERE o.due_at <= $1
),
open AS (
    SELECT r.*, row_number() OVER (ORDER BY r.first_due, r.endpoint_id) AS claim_rank
    FROM (
        SELECT c.*, row_number() OVER (PARTITION BY c.organization_id
                                       ORDER BY c.first_due, c.endpoint_id) AS org_rank
        FROM capped c
        WHERE c.org_n < $5 AND c.ep_n < c.cap
    ) r
    WHERE r.org_rank <= $5 - r.org_n
    ORDER BY r.first_due, r.endpoint_id
    LIMIT $2
),
parallel AS (
    SELECT d.id, d.due_at, e.organization_id, e.endpoint_id, e.cap
    FROM open e CROSS JOIN LATERAL (
        SELECT l.id, l.due_at FROM deliveries l
        WHERE l.endpoint_id = e.endpoint_id AND l.fifo_seq IS NULL AND l.due_at <= $1
        ORDER BY l.due_at
        LIMIT LEAST(e.cap - e.ep_n, $5 - e.org_n, $2 - e.claim_rank + 1)
        FOR UPDATE SKIP LOCKED
    ) d
),
heads AS (
    SELECT h.id FROM endpoints ep
    CROSS JOIN LATERAL (
        SELECT l.id, l.due_at FROM deliveries l
        WHERE l.endpoint_id = ep.id AND l.fifo_seq IS NOT NULL
        ORDER BY l.fifo_seq, l.event_id
        LIMIT 1
    ) h
    WHERE ep.ordering = 'fifo' AND ep.enabled AND h.due_at <= $1
      AND NOT (ep.id IN (SELECT endpoint_id FROM busy))
      AND NOT (ep.organization_id IN (SELECT organization_id FROM org_busy WHERE n >= $5))
),
head_locked AS (
    SELECT d.id, d.due_at, d.organization_id, d.endpoint_id, 1::int8 AS cap
    FROM deliveries d
    -- By primary key (an array, not a join the planner may turn into a scan of the line).
    WHERE d.id = ANY (ARRAY(SELECT id FROM heads)) AND d.due_at <= $1 AND d.fifo_seq IS NOT NULL
    FOR UPDATE SKIP LOCKED
),
ranked AS (
    SELECT c.id, c.due_at, c.cap,
           coalesce(o.n, 0) + row_number() OVER (PARTITION BY c.organization_id
                                                 ORDER BY c.due_at, c.id) AS org_n,
           coalesce(b.n, 0) + row_number() OVER (PARTITION BY c.endpoint_id
                                                 ORDER BY c.due_at, c.id) AS ep_n
    FROM (SELECT * FROM parallel UNION ALL SELECT * FROM head_locked) c
    LEFT JOIN org_busy o ON o.organization_id = c.organization_id
    LEFT JOIN busy b ON b.endpoint_id = c.endpoint_id
),
due AS (
    SELECT id, due_at FROM ranked WHERE org_n <= $5 AND ep_n <= cap ORDER BY due_at LIMIT $2
),
commit_mode AS (
    SELECT set_config('synchronous_commit',
        CASE WHEN EXISTS (SELECT 1 FROM due JOIN head_locked h ON h.id = due.id)
             THEN current_setting('synchronous_commit') ELSE 'off' END, true) AS mode
),
claimed AS (
    UPDATE deliveries d
    SET state = 'in_flight', attempt = d.attempt + 1, lease_owner = $3,
        lease_expires_at = $4, due_at = $4
    -- By primary key, as an array: joined with `due`, the planner may walk the whole
    -- primary key index instead (it did once statistics said the table was nearly empty,
    -- visiting every dead row version the queue's churn leaves behind).
    WHERE d.id = ANY (ARRAY(SELECT id FROM due)) AND (SELECT mode FROM commit_mode) IS NOT NULL
    RETURNING d.id, d.attempt, d.event_id, d.endpoint_id
)
SELECT c.id, c.attempt, c.event_id, c.endpoint_id, e.organization_id, e.event_type, e.payload, e.created_at,
       ep.url, ep.secret, ep.previous_secret, ep.previous_valid_until, ep.failing_since,
       -- Issue 14: the endpoint's custom headers and limits travel with each delivery.
       ep.headers, ep.rate_limit, ep.concurrency,
       -- 1: the event's only outstanding delivery (more are not counted).
       (SELECT count(*) FROM (SELECT 1 FROM deliveries o WHERE o.event_id = c.event_id
                              LIMIT 2) o) AS siblings
FROM claimed c
JOIN due ON due.id = c.id
JOIN events e ON e.id = c.event_id
JOIN endpoints ep ON ep.id = c.endpoint_id
ORDER BY due.due_at, c.id
"#;

#[async_trait]
impl DeliveryQueue for PgStore {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.pool().acquire().await.map_err(|e| self.fail(e))?;
        let found = claim_rows(&mut conn, req).await.map_err(|e| self.fail(e))?;
        self.claimed(&found, req)
    }

    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        let keep = self.limits().max_attempts_kept;
        crate::complete::complete(self.pool(), self.singles(), completions, keep, self.outbox())
            .await
            .map_err(|e| self.explain(e))
    }

    /// Two commits on one connection: the completions (`complete`: one autocommitted
    /// statement on the fast path, a transaction of their own otherwise), then the claim
    /// statement, autocommitted, which sees their effects. Neither waits for a WAL flush
    /// (unless the claim hands out a FIFO line's next delivery), so the common case costs
    /// two round trips and no fsync — where one transaction cost five (`BEGIN`,
    /// completions, claim, `SET LOCAL synchronous_commit`, `COMMIT`) and a flush.
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        let keep = self.limits().max_attempts_kept;
        let mut conn = self.pool().acquire().await.map_err(|e| self.fail(e))?;
        let (applied, disabled) = crate::complete::complete_on(
            &mut conn,
            self.singles(),
            completions,
            keep,
            self.outbox(),
        )
        .await
        .map_err(|e| self.explain(e))?;
        let claimed = if req.limit == 0 {
            Ok(Vec::new())
        } else {
            match claim_rows(&mut conn, req).await {
                Ok(found) => self.claimed(&found, req),
                Err(e) => Err(self.fail(e)),
            }
        };
        Ok(CompletedAndClaimed { applied, disabled, claimed })
    }

    async fn release(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        let row = sqlx::query(
            "WITH released AS (
                 UPDATE deliveries
                 SET state = 'pending', attempt = attempt - 1,
                     next_attempt_at = coalesce($5, next_attempt_at),
                     due_at = coalesce($5, next_attempt_at),
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
        .bind(due_at)
        .fetch_one(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
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
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        let row = sqlx::query("SELECT count(*) AS depth FROM deliveries")
            .fetch_one(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        rows::count(&row, "depth")
    }

    async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE deliveries SET lease_expires_at = $2, due_at = $2
             WHERE state = 'in_flight' AND lease_owner = $1 AND lease_expires_at > $2",
        )
        .bind(owner.0)
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected())
    }

    fn wakeups(&self) -> Option<Arc<Notify>> {
        self.listener_wakeups()
    }
}

/// Runs the claim statement on `conn`, autocommitted: its commit mode follows the session's
/// setting (see `CLAIM_SQL`), which an earlier statement of an open transaction may have
/// changed.
async fn claim_rows(conn: &mut PgConnection, req: ClaimRequest) -> Result<Vec<PgRow>, sqlx::Error> {
    let until = triggers_core::clock::add(req.now, req.lease);
    // A prepared statement: after its fifth run PostgreSQL keeps a generic plan, and planning
    // this statement anew cost more than running it (≈ 1.4 against 0.75 ms, which held
    // end-to-end delivery at ≈ 1 300 a second). The statement's shape leaves the generic plan
    // no choice that depends on the queue's size — every probe of `deliveries` is a loose scan
    // or a `LIMIT`ed index scan per endpoint, or reads the in-flight rows only — which
    // `the_claims_generic_plan_walks_no_queue` checks on a large queue without statistics.
    sqlx::query(CLAIM_SQL)
        .bind(req.now)
        .bind(i64::from(req.limit))
        .bind(req.owner.0)
        .bind(until)
        .bind(i64::from(req.org_concurrency))
        .bind(i64::from(req.endpoint_concurrency))
        .fetch_all(conn)
        .await
}

impl PgStore {
    /// The deliveries of claimed rows; remembers which of them are their event's only
    /// outstanding delivery: completing those needs no event lock (see `complete`).
    fn claimed(&self, found: &[PgRow], req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        let until = triggers_core::clock::add(req.now, req.lease);
        let claimed = found
            .iter()
            .map(|row| delivery(row, req.owner, until, req.now))
            .collect::<StoreResult<Vec<_>>>()?;
        let mut singles = Vec::new();
        for (row, d) in found.iter().zip(&claimed) {
            if rows::count(row, "siblings")? == 1 {
                singles.push(d.id);
            }
        }
        self.singles().remember(&singles);
        Ok(claimed)
    }
}

/// Attempt numbers are `integer` in the database; no real delivery gets near 2³¹ attempts.
pub(crate) fn attempt_i32(attempt: u32) -> i32 {
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
        headers: crate::lifecycle::decode_headers(get(row, "headers")?)?,
        endpoint_rate_limit: crate::lifecycle::decode_limit(get(row, "rate_limit")?)?,
        endpoint_concurrency: crate::lifecycle::decode_limit(get(row, "concurrency")?)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::types::chrono::Utc;
    use sqlx::types::Uuid;
    use sqlx::{Connection, PgConnection};
    use triggers_core::store::ClaimRequest;
    use triggers_core::WorkerId;

    use super::claim_rows;
    use crate::testing::{self, TestDatabase};
    use crate::{PgConfig, PgStore};

    /// A fresh database with the store's schema (the store is returned to keep it open).
    async fn database() -> Option<(TestDatabase, PgStore, PgConnection)> {
        let (db, store) = testing::fresh_store(PgConfig::default()).await?;
        let conn = PgConnection::connect_with(&db.options).await.unwrap();
        Some((db, store, conn))
    }

    /// A new endpoint (`ordering` 'parallel' or 'fifo') of a new organization with `n` due
    /// deliveries, one per event.
    async fn queue(conn: &mut PgConnection, ordering: &str, n: i32) {
        sqlx::query(
            "WITH ep AS (
                 INSERT INTO endpoints (id, organization_id, url, secret, created_at, ordering)
                 VALUES (gen_random_uuid(), gen_random_uuid(), 'http://127.0.0.1:9/',
                         'whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=', now(), $1)
                 RETURNING id, organization_id
             ),
             ev AS (
                 INSERT INTO events (id, organization_id, event_type, payload, status, created_at)
                 SELECT gen_random_uuid(), ep.organization_id, 't', '{}', 'pending', now()
                 FROM ep, generate_series(1, $2)
                 RETURNING id
             )
             INSERT INTO deliveries (id, event_id, organization_id, endpoint_id, state,
                                     next_attempt_at, due_at, fifo_seq)
             SELECT gen_random_uuid(), ev.id, ep.organization_id, ep.id, 'pending',
                    now() - interval '1 minute', now() - interval '1 minute',
                    CASE WHEN $1 = 'fifo' THEN nextval('deliveries_fifo_seq') END
             FROM ev, ep",
        )
        .bind(ordering)
        .bind(n)
        .execute(conn)
        .await
        .unwrap();
    }

    async fn mode(conn: &mut PgConnection) -> String {
        sqlx::query_scalar("SHOW synchronous_commit").fetch_one(conn).await.unwrap()
    }

    fn request(limit: u32) -> ClaimRequest {
        ClaimRequest::new(WorkerId::new(), limit, Duration::from_secs(30), Utc::now())
            .with_caps(64, 16)
    }

    /// The claim is a prepared statement, run with a generic plan after its fifth call: that
    /// plan must not walk the queue, however large it is and whatever the statistics say
    /// (a fresh database has none).
    #[tokio::test]
    async fn the_claims_generic_plan_walks_no_queue() {
        let Some((db, store, mut conn)) = database().await else { return };
        queue(&mut conn, "parallel", 20_000).await;
        queue(&mut conn, "fifo", 20_000).await;
        let now = format!("'{}'", Utc::now().to_rfc3339());
        let args = [
            now.clone(),
            "8".into(),
            format!("'{}'", Uuid::new_v4()),
            now,
            "64".into(),
            "16".into(),
        ];
        let plan = testing::generic_plan(&mut conn, "", super::CLAIM_SQL, &args).await;
        assert!(!plan.contains("Seq Scan on deliveries"), "{plan}");
        assert!(plan.contains("deliveries_endpoint_due"), "{plan}");
        assert!(plan.contains("deliveries_line"), "{plan}");
        drop((conn, store));
        db.drop_database().await.unwrap();
    }

    /// Leases commit without a WAL flush, except a claim that hands out a FIFO line's next
    /// delivery: it keeps the session's `synchronous_commit`, so its commit also flushes the
    /// predecessor's (asynchronous) completion.
    #[tokio::test]
    async fn only_a_claim_of_a_fifo_head_waits_for_the_flush() {
        let Some((db, store, mut conn)) = database().await else { return };
        assert_eq!(mode(&mut conn).await, "on");
        queue(&mut conn, "parallel", 3).await;
        let mut tx = conn.begin().await.unwrap();
        assert_eq!(claim_rows(&mut tx, request(8)).await.unwrap().len(), 3);
        assert_eq!(mode(&mut tx).await, "off", "a parallel claim");
        tx.rollback().await.unwrap();

        queue(&mut conn, "fifo", 3).await;
        let mut tx = conn.begin().await.unwrap();
        assert_eq!(claim_rows(&mut tx, request(8)).await.unwrap().len(), 4, "3 + one head");
        assert_eq!(mode(&mut tx).await, "on", "a claim with a FIFO head");
        tx.rollback().await.unwrap();
        drop((conn, store));
        db.drop_database().await.unwrap();
    }
}
