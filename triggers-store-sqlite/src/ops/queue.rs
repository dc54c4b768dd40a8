//! The delivery queue: claims with leases, fenced completions, releases and heartbeats. All run
//! on the writer connection.
//!
//! The `deliveries` table holds outstanding deliveries only. `due_at` is the next attempt's
//! time while a delivery is pending and its lease expiry while it is in flight, so "due" is
//! simply `due_at <= now` for both, served by one index. A finished delivery is deleted.

use std::collections::HashMap;

use rusqlite::{params, Connection};
use triggers_core::clock::add;
use triggers_core::store::{ClaimRequest, Completion, CompletionState, Delivery, StoreResult};
use triggers_core::{
    AttemptRecord, DeliveryId, EndpointId, EventId, OrganizationId, Secret, Timestamp, WorkerId,
};

use crate::codec::{self, micros, query_opt, query_vec};
use crate::error::{corrupt, SqlResultExt};
use crate::ops::lifecycle;

/// What a claim needs to know about an endpoint.
#[derive(Clone)]
struct Target {
    id: EndpointId,
    url: String,
    secrets: Vec<Secret>,
    failing_since: Option<Timestamp>,
    headers: Vec<(String, String)>,
    rate_limit: Option<u32>,
    concurrency: Option<u32>,
}

fn target(conn: &Connection, seq: i64, now: i64) -> StoreResult<Option<Target>> {
    let mut stmt = conn
        .prepare_cached(
            // Issue 14: headers, rate_limit and concurrency travel with each delivery.
            "SELECT id, url, secret, prev_secret, prev_valid_until, failing_since,
                    headers, rate_limit, concurrency
             FROM endpoints WHERE seq = ?1",
        )
        .store()?;
    query_opt(&mut stmt, [seq], |row| {
        let mut secrets = vec![Secret::parse(codec::text(row, 2)?).map_err(corrupt)?];
        if let (Some(prev), Some(until)) = (codec::opt_text(row, 3)?, codec::opt_int(row, 4)?) {
            if now < until {
                secrets.push(Secret::parse(prev).map_err(corrupt)?);
            }
        }
        Ok(Target {
            id: EndpointId(codec::uuid(row, 0)?),
            url: codec::text(row, 1)?,
            secrets,
            failing_since: codec::opt_ts(row, 5)?,
            headers: lifecycle::decode_headers(codec::opt_text(row, 6)?)?,
            rate_limit: codec::opt_int(row, 7)?.and_then(|v| u32::try_from(v).ok()),
            concurrency: codec::opt_int(row, 8)?.and_then(|v| u32::try_from(v).ok()),
        })
    })
}

/// `DeliveryQueue::claim` in one statement. Reading it top down:
///
/// 1. `busy`: live leases per endpoint (in flight, lease not expired), found through the
///    partial index of leased rows, so it costs what is in flight, not the queue; `org_busy`
///    sums them per organization.
/// 2. `outstanding`: every endpoint with outstanding parallel deliveries and its earliest
///    `due_at` — a loose scan of `deliveries_endpoint_due` (endpoint, due time), one index
///    probe per endpoint. The claim never walks the deliveries of an endpoint or organization
///    at its cap: a backlog of any size behind a capped endpoint costs it nothing (walking
///    the due queue in time order, as before, cost a visit per waiting delivery each claim).
/// 3. `open`: those that are due, enabled and under their caps (an endpoint's cap: 1 while
///    failing — the circuit breaker —, else its own `concurrency` when lower than the
///    claim's); per organization only as many, earliest first, as the organization has room
///    for; then the `limit` earliest. No other endpoint can hold one of the `limit` earliest
///    claimable deliveries: each endpoint kept has a claimable delivery no later than its
///    first one (its own, or an earlier one of its organization).
/// 4. `parallel`: the earliest due deliveries of each open endpoint, from the same index.
///    `heads`: the first delivery of each FIFO endpoint's line, if due and that endpoint has
///    nothing in flight.
/// 5. `ranked`: both together, numbered per organization and per endpoint in due order, so
///    this claim itself takes no more than each cap leaves; `due` keeps the first `limit`.
/// 6. The `UPDATE` leases them.
const CLAIM_SQL: &str = r#"
WITH RECURSIVE busy AS (
    SELECT l.endpoint_seq, count(*) AS n
    FROM deliveries l INDEXED BY deliveries_leased
    WHERE l.state = 1 AND l.due_at > ?3
    GROUP BY l.endpoint_seq
),
org_busy AS (
    SELECT p.org_id, sum(b.n) AS n FROM busy b JOIN endpoints p ON p.seq = b.endpoint_seq
    GROUP BY p.org_id
),
outstanding(seq, first_due) AS (
    SELECT * FROM (
        SELECT endpoint_seq, due_at FROM deliveries INDEXED BY deliveries_endpoint_due
        WHERE line IS NULL ORDER BY endpoint_seq, due_at LIMIT 1)
    UNION ALL
    SELECT n.endpoint_seq, n.due_at FROM outstanding o
    JOIN deliveries n ON n.id = (
        SELECT h.id FROM deliveries h INDEXED BY deliveries_endpoint_due
        WHERE h.line IS NULL AND h.endpoint_seq > o.seq
        ORDER BY h.endpoint_seq, h.due_at LIMIT 1)
),
capped AS (
    SELECT o.seq, o.first_due, p.org_id,
           CASE WHEN p.failing_since IS NULL
                THEN max(1, min(coalesce(p.concurrency, ?6), ?6)) ELSE 1 END AS cap,
           coalesce((SELECT n FROM org_busy x WHERE x.org_id = p.org_id), 0) AS org_n
    FROM outstanding o CROSS JOIN endpoints p ON p.seq = o.seq
    WHERE o.first_due <= ?3 AND p.enabled = 1
),
open AS (
    SELECT seq, first_due, org_id, cap FROM (
        SELECT c.*,
               row_number() OVER (PARTITION BY c.org_id ORDER BY c.first_due, c.seq) AS org_rank
        FROM capped c
        WHERE c.org_n < ?5
          AND coalesce((SELECT n FROM busy b WHERE b.endpoint_seq = c.seq), 0) < c.cap)
    WHERE org_rank <= ?5 - org_n
    ORDER BY first_due, seq
    LIMIT ?4
),
parallel AS (
    SELECT d.id, d.due_at, e.org_id, d.endpoint_seq, e.cap
    FROM open e CROSS JOIN deliveries d ON d.id IN (
        SELECT h.id FROM deliveries h INDEXED BY deliveries_endpoint_due
        WHERE h.endpoint_seq = e.seq AND h.line IS NULL AND h.due_at <= ?3
        ORDER BY h.due_at LIMIT min(?4, ?6))
),
heads AS (
    SELECT d.id, d.due_at, p.org_id, d.endpoint_seq, 1 AS cap
    FROM endpoints p INDEXED BY endpoints_fifo
    JOIN deliveries d ON d.id = (
        SELECT h.id FROM deliveries h INDEXED BY deliveries_line
        WHERE h.endpoint_seq = p.seq AND h.line IS NOT NULL
        ORDER BY h.line LIMIT 1)
    WHERE p.ordering = 1 AND p.enabled = 1 AND d.due_at <= ?3
      AND coalesce((SELECT n FROM org_busy o WHERE o.org_id = p.org_id), 0) < ?5
      AND NOT EXISTS (SELECT 1 FROM busy b WHERE b.endpoint_seq = p.seq)
),
ranked AS (
    SELECT c.id, c.due_at, c.cap,
           coalesce((SELECT n FROM org_busy o WHERE o.org_id = c.org_id), 0)
               + row_number() OVER (PARTITION BY c.org_id ORDER BY c.due_at, c.id) AS org_n,
           coalesce((SELECT n FROM busy b WHERE b.endpoint_seq = c.endpoint_seq), 0)
               + row_number() OVER (PARTITION BY c.endpoint_seq ORDER BY c.due_at, c.id) AS ep_n
    FROM (SELECT * FROM parallel UNION ALL SELECT * FROM heads) c
),
due AS (
    SELECT id FROM ranked WHERE org_n <= ?5 AND ep_n <= cap ORDER BY due_at, id LIMIT ?4
)
UPDATE deliveries
SET state = 1, attempt = attempt + 1, lease_owner = ?1, claimed_due = due_at, due_at = ?2
WHERE id IN (SELECT id FROM due)
RETURNING id, attempt, event_seq, endpoint_seq, claimed_due, line IS NOT NULL
"#;

/// What a claim took.
#[derive(Default)]
pub(crate) struct Claimed {
    /// The leased deliveries, earliest due first.
    pub(crate) deliveries: Vec<Delivery>,
    /// Whether one of them is the head of a FIFO endpoint's line. Such a claim is answered
    /// only once it is on the disk: its predecessor's completion committed before it, so
    /// after a power loss the line can never have moved on while its predecessor is still
    /// outstanding. Other claims are answered at `COMMIT` (a lost lease is only a repeat).
    pub(crate) hands_out_a_line_head: bool,
}

/// `DeliveryQueue::claim`.
pub(crate) fn claim(conn: &Connection, req: ClaimRequest) -> StoreResult<Claimed> {
    let now = micros(req.now);
    let lease_until = add(req.now, req.lease);
    let mut stmt = conn.prepare_cached(CLAIM_SQL).store()?;
    let p = params![
        req.owner.0.as_bytes(),
        micros(lease_until),
        now,
        req.limit,
        req.org_concurrency,
        req.endpoint_concurrency
    ];
    let mut claimed = query_vec(&mut stmt, p, |row| {
        Ok((
            codec::uuid(row, 0)?,
            codec::unsigned::<u32>(row, 1)?,
            codec::int(row, 2)?,
            codec::int(row, 3)?,
            codec::int(row, 4)?,
            codec::int(row, 5)? != 0,
        ))
    })?;
    let hands_out_a_line_head = claimed.iter().any(|c| c.5);
    // RETURNING has no defined order: earliest due first, as the contract asks.
    claimed.sort_by_key(|c| (c.4, c.0));

    let mut event = conn
        .prepare_cached(
            "SELECT id, org_id, event_type, payload, created_at FROM events WHERE seq = ?1",
        )
        .store()?;
    let mut targets: HashMap<i64, Option<Target>> = HashMap::new();
    let mut out = Vec::with_capacity(claimed.len());
    for (id, attempt, event_seq, endpoint_seq, _, _) in claimed {
        let ev = query_opt(&mut event, [event_seq], |row| {
            Ok((
                EventId(codec::uuid(row, 0)?),
                OrganizationId(codec::uuid(row, 1)?),
                codec::text(row, 2)?,
                codec::payload(row, 3)?,
                codec::ts(row, 4)?,
            ))
        })?;
        let t = match targets.get(&endpoint_seq) {
            Some(t) => t.clone(),
            None => {
                let t = target(conn, endpoint_seq, now)?;
                targets.insert(endpoint_seq, t.clone());
                t
            }
        };
        let (Some((event_id, organization_id, event_type, payload, created_at)), Some(t)) = (ev, t)
        else {
            // Cannot happen through this store's own writes; drop the orphan so it cannot
            // block the queue.
            tracing::warn!(delivery = %id, "dropping a delivery whose event or endpoint is gone");
            conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1")
                .store()?
                .execute([id.as_bytes()])
                .store()?;
            continue;
        };
        out.push(Delivery {
            id: DeliveryId(id),
            attempt,
            lease_owner: req.owner,
            lease_expires_at: lease_until,
            event_id,
            organization_id,
            event_type,
            payload,
            created_at,
            endpoint_id: t.id,
            url: t.url,
            secrets: t.secrets,
            endpoint_failing_since: t.failing_since,
            headers: t.headers,
            endpoint_rate_limit: t.rate_limit,
            endpoint_concurrency: t.concurrency,
        });
    }
    Ok(Claimed { deliveries: out, hands_out_a_line_head })
}

/// `DeliveryQueue::complete`.
/// `keep` is [`StoreLimits::max_attempts_kept`](triggers_core::store::StoreLimits).
pub(crate) fn complete(
    conn: &Connection,
    completions: &[Completion],
    keep: u32,
) -> StoreResult<Vec<bool>> {
    let mut out = Vec::with_capacity(completions.len());
    for c in completions {
        out.push(complete_one(conn, c, keep)?);
    }
    Ok(out)
}

/// Appends an attempt record, then drops the oldest of its event and endpoint beyond `keep`.
fn record_attempt(
    conn: &Connection,
    event_seq: i64,
    r: &AttemptRecord,
    keep: u32,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO attempts (event_seq, endpoint_id, at, status_code, latency_ms, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .store()?
    .execute(params![
        event_seq,
        r.endpoint_id.0.as_bytes(),
        micros(r.at),
        r.status_code,
        i64::try_from(r.latency_ms).unwrap_or(i64::MAX),
        r.error
    ])
    .store()?;
    conn.prepare_cached(
        "DELETE FROM attempts WHERE seq IN (
             SELECT seq FROM attempts WHERE event_seq = ?1 AND endpoint_id = ?2
             ORDER BY seq DESC LIMIT -1 OFFSET ?3)",
    )
    .store()?
    .execute(params![event_seq, r.endpoint_id.0.as_bytes(), keep.max(1)])
    .store()?;
    Ok(())
}

/// The attempt of a delivery a replay cancelled while it was in flight: recorded, nothing
/// else changes.
fn record_superseded(conn: &Connection, c: &Completion, keep: u32) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "DELETE FROM superseded_deliveries WHERE id = ?1 AND lease_owner = ?2 AND attempt = ?3
             RETURNING event_seq",
        )
        .store()?;
    let fence = params![c.delivery_id.0.as_bytes(), c.lease_owner.0.as_bytes(), c.attempt];
    let found = query_opt(&mut stmt, fence, |r| codec::int(r, 0))?;
    drop(stmt);
    if let Some(event_seq) = found {
        let mut exists = conn.prepare_cached("SELECT 1 FROM events WHERE seq = ?1").store()?;
        if query_opt(&mut exists, [event_seq], |_| Ok(()))?.is_some() {
            record_attempt(conn, event_seq, &c.record, keep)?;
        }
    }
    Ok(())
}

fn complete_one(conn: &Connection, c: &Completion, keep: u32) -> StoreResult<bool> {
    let fence = params![c.delivery_id.0.as_bytes(), c.lease_owner.0.as_bytes(), c.attempt];
    let mut stmt = match &c.state {
        CompletionState::Delivered | CompletionState::Failed => conn.prepare_cached(
            "DELETE FROM deliveries WHERE id = ?1 AND state = 1 AND lease_owner = ?2
             AND attempt = ?3 RETURNING event_seq, endpoint_seq",
        ),
        CompletionState::Retry { .. } => conn.prepare_cached(
            "UPDATE deliveries SET state = 0, due_at = ?4, lease_owner = NULL
             WHERE id = ?1 AND state = 1 AND lease_owner = ?2 AND attempt = ?3
             RETURNING event_seq, endpoint_seq",
        ),
    }
    .store()?;
    let applied = match &c.state {
        CompletionState::Retry { at } => {
            let p = params![fence[0], fence[1], fence[2], micros(*at)];
            query_opt(&mut stmt, p, |r| Ok((codec::int(r, 0)?, codec::int(r, 1)?)))?
        }
        _ => query_opt(&mut stmt, fence, |r| Ok((codec::int(r, 0)?, codec::int(r, 1)?)))?,
    };
    drop(stmt);
    let Some((event_seq, endpoint_seq)) = applied else {
        record_superseded(conn, c, keep)?;
        return Ok(false);
    };

    let r = &c.record;
    record_attempt(conn, event_seq, r, keep)?;

    let at = micros(r.at);
    match c.state {
        CompletionState::Delivered => {
            conn.prepare_cached(
                "UPDATE endpoints SET failing_since = NULL
                 WHERE seq = ?1 AND failing_since IS NOT NULL",
            )
            .store()?
            .execute([endpoint_seq])
            .store()?;
            // The event is delivered once no delivery of it is outstanding.
            conn.prepare_cached(
                "UPDATE events SET status = 1, delivered_at = ?2
                 WHERE seq = ?1 AND status = 0
                 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",
            )
            .store()?
            .execute([event_seq, at])
            .store()?;
        }
        CompletionState::Retry { .. } | CompletionState::Failed => {
            if c.state == CompletionState::Failed {
                let reason = r.error.as_deref().unwrap_or("failed");
                lifecycle::record_failed(conn, endpoint_seq, event_seq, reason, at)?;
            }
            conn.prepare_cached(
                "UPDATE endpoints SET failing_since = ?2
                 WHERE seq = ?1 AND failing_since IS NULL",
            )
            .store()?
            .execute([endpoint_seq, at])
            .store()?;
        }
    }
    if let Some(reason) = &c.disable_endpoint {
        conn.prepare_cached(
            "UPDATE endpoints SET enabled = 0, disabled_reason = ?2 WHERE seq = ?1",
        )
        .store()?
        .execute(params![endpoint_seq, reason])
        .store()?;
        lifecycle::fail_outstanding(conn, endpoint_seq, reason, at)?;
    }
    Ok(true)
}

/// `DeliveryQueue::release`: pending again, due when it was due before the claim (so at
/// once), with the attempt number restored.
pub(crate) fn release(
    conn: &Connection,
    id: DeliveryId,
    owner: WorkerId,
    attempt: u32,
    due_at: Option<Timestamp>,
) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE deliveries
             SET state = 0, attempt = attempt - 1, lease_owner = NULL,
                 due_at = coalesce(?4, claimed_due, due_at)
             WHERE id = ?1 AND state = 1 AND lease_owner = ?2 AND attempt = ?3",
        )
        .store()?
        .execute(params![id.0.as_bytes(), owner.0.as_bytes(), attempt, due_at.map(micros)])
        .store()?;
    Ok(n > 0)
}

/// `DeliveryQueue::extend_lease`.
pub(crate) fn extend_lease(
    conn: &Connection,
    id: DeliveryId,
    owner: WorkerId,
    attempt: u32,
    until: Timestamp,
) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET due_at = ?4
             WHERE id = ?1 AND state = 1 AND lease_owner = ?2 AND attempt = ?3",
        )
        .store()?
        .execute(params![id.0.as_bytes(), owner.0.as_bytes(), attempt, micros(until)])
        .store()?;
    Ok(n > 0)
}

/// `DeliveryQueue::reclaim_leases`: the lease expiry is `due_at` while in flight.
pub(crate) fn reclaim_leases(
    conn: &Connection,
    owner: WorkerId,
    now: Timestamp,
) -> StoreResult<u64> {
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET due_at = ?2
             WHERE state = 1 AND lease_owner = ?1 AND due_at > ?2",
        )
        .store()?
        .execute(params![owner.0.as_bytes(), micros(now)])
        .store()?;
    Ok(n as u64)
}
