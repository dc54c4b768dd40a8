//! The delivery queue after a claim (`ops::claim`): fenced completions, releases and
//! heartbeats. All run on the writer connection.
//!
//! The `deliveries` table holds outstanding deliveries only. `due_at` is the next attempt's
//! time while a delivery is pending and its lease expiry while it is in flight, so "due" is
//! simply `due_at <= now` for both (a claim finds pending ones through
//! `deliveries_pending_due` and leased ones through `deliveries_leased`). A finished delivery
//! is deleted.

use rusqlite::{params, Connection};
use triggers_core::store::{Completion, CompletionState, StoreResult};
use triggers_core::{AttemptRecord, DeliveryId, EndpointId, Timestamp, WorkerId};

use crate::codec::{self, micros, query_opt};
use crate::error::SqlResultExt;
use crate::ops::{delivery_key, lifecycle};

/// `DeliveryQueue::complete`: one flag per completion, and the endpoints they disabled (each
/// once; `CompletedAndClaimed::disabled`).
/// `keep` is [`StoreLimits::max_attempts_kept`](triggers_core::store::StoreLimits).
pub(crate) fn complete(
    conn: &Connection,
    completions: &[Completion],
    keep: u32,
) -> StoreResult<(Vec<bool>, Vec<EndpointId>)> {
    let mut applied = Vec::with_capacity(completions.len());
    let mut disabled = Vec::new();
    for c in completions {
        let (done, disabled_now) = complete_one(conn, c, keep)?;
        applied.push(done);
        if disabled_now {
            disabled.push(c.record.endpoint_id);
        }
    }
    Ok((applied, disabled))
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
    // The newest record beyond `keep`, then it and everything older: two plain statements
    // (a `DELETE … WHERE seq IN (SELECT …)` builds a temporary table each time), and the
    // usual case, nothing beyond `keep`, is one index probe.
    let endpoint = r.endpoint_id.0.as_bytes();
    let mut beyond = conn
        .prepare_cached(
            "SELECT seq FROM attempts WHERE event_seq = ?1 AND endpoint_id = ?2
             ORDER BY seq DESC LIMIT 1 OFFSET ?3",
        )
        .store()?;
    let first_dropped =
        query_opt(&mut beyond, params![event_seq, endpoint, keep.max(1)], |r| codec::int(r, 0))?;
    if let Some(seq) = first_dropped {
        conn.prepare_cached(
            "DELETE FROM attempts WHERE event_seq = ?1 AND endpoint_id = ?2 AND seq <= ?3",
        )
        .store()?
        .execute(params![event_seq, endpoint, seq])
        .store()?;
    }
    Ok(())
}

/// The attempt of a delivery a replay cancelled while it was in flight: recorded, nothing
/// else changes.
fn record_superseded(conn: &Connection, c: &Completion, keep: u32) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT event_seq FROM superseded_deliveries
             WHERE id = ?1 AND lease_owner = ?2 AND attempt = ?3",
        )
        .store()?;
    let fence = params![c.delivery_id.0.as_bytes(), c.lease_owner.0.as_bytes(), c.attempt];
    let found = query_opt(&mut stmt, fence, |r| codec::int(r, 0))?;
    drop(stmt);
    if let Some(event_seq) = found {
        conn.prepare_cached("DELETE FROM superseded_deliveries WHERE id = ?1")
            .store()?
            .execute([c.delivery_id.0.as_bytes()])
            .store()?;
        let mut exists = conn.prepare_cached("SELECT 1 FROM events WHERE seq = ?1").store()?;
        if query_opt(&mut exists, [event_seq], |_| Ok(()))?.is_some() {
            record_attempt(conn, event_seq, &c.record, keep)?;
        }
    }
    Ok(())
}

/// Whether `c` applied, and whether it disabled its endpoint (which was enabled until then).
fn complete_one(conn: &Connection, c: &Completion, keep: u32) -> StoreResult<(bool, bool)> {
    // One write by primary key (the id carries it: `delivery_key`) that also checks the
    // fence; it changes no row when the lease is no longer this completion's.
    let (endpoint_seq, event_seq) = delivery_key::key(c.delivery_id);
    let id = c.delivery_id.0.as_bytes();
    let owner = c.lease_owner.0.as_bytes();
    let changed = match &c.state {
        CompletionState::Delivered | CompletionState::Failed => conn
            .prepare_cached(
                "DELETE FROM deliveries
                 WHERE endpoint_seq = ?1 AND event_seq = ?2
                   AND id = ?3 AND state = 1 AND lease_owner = ?4 AND attempt = ?5",
            )
            .store()?
            .execute(params![endpoint_seq, event_seq, id, owner, c.attempt]),
        CompletionState::Retry { at } => conn
            .prepare_cached(
                "UPDATE deliveries SET state = 0, due_at = ?6, lease_owner = NULL
                 WHERE endpoint_seq = ?1 AND event_seq = ?2
                   AND id = ?3 AND state = 1 AND lease_owner = ?4 AND attempt = ?5",
            )
            .store()?
            .execute(params![endpoint_seq, event_seq, id, owner, c.attempt, micros(*at)]),
    }
    .store()?;
    if changed == 0 {
        record_superseded(conn, c, keep)?;
        return Ok((false, false));
    }

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
            // The event is delivered once no delivery of it is outstanding; no longer
            // pending, counted here (not by the trigger: migration 0011).
            // (A point read of the organization after a change costs less than `RETURNING`,
            // whose result table every execution would set up.)
            let delivered = conn
                .prepare_cached(
                    "UPDATE events SET status = 1, delivered_at = ?2
                     WHERE seq = ?1 AND status = 0
                     AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",
                )
                .store()?
                .execute([event_seq, at])
                .store()?;
            if delivered > 0 {
                let mut org =
                    conn.prepare_cached("SELECT org_id FROM events WHERE seq = ?1").store()?;
                if let Some(org) = query_opt(&mut org, [event_seq], |row| codec::uuid(row, 0))? {
                    crate::ops::pending::add(org.as_bytes(), -1);
                }
            }
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
    let mut disabled_now = false;
    if let Some(reason) = &c.disable_endpoint {
        // An endpoint already disabled keeps its reason.
        disabled_now = conn
            .prepare_cached(
                "UPDATE endpoints SET enabled = 0, disabled_reason = ?2
                 WHERE seq = ?1 AND enabled = 1",
            )
            .store()?
            .execute(params![endpoint_seq, reason])
            .store()?
            == 1;
        // One batch, by the completion that disabled it: the batch of completions is shared
        // with other organizations, and the workers fail the rest right after
        // (`EndpointStore::finish_disabling`). The announcement goes with the disable.
        if disabled_now {
            lifecycle::fail_outstanding(conn, endpoint_seq, reason, at)?;
            let endpoint = lifecycle::endpoint_at(conn, endpoint_seq)?.ok_or_else(|| {
                triggers_core::StoreError::Corrupt("a disabled endpoint vanished".into())
            })?;
            lifecycle::announce(conn, &endpoint, r.at)?;
        }
    }
    Ok((true, disabled_now))
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
    let (endpoint_seq, event_seq) = delivery_key::key(id);
    let n = conn
        .prepare_cached(
            "UPDATE deliveries
             SET state = 0, attempt = attempt - 1, lease_owner = NULL,
                 due_at = coalesce(?4, claimed_due, due_at)
             WHERE endpoint_seq = ?5 AND event_seq = ?6
               AND id = ?1 AND state = 1 AND lease_owner = ?2 AND attempt = ?3",
        )
        .store()?
        .execute(params![
            id.0.as_bytes(),
            owner.0.as_bytes(),
            attempt,
            due_at.map(micros),
            endpoint_seq,
            event_seq
        ])
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
    let (endpoint_seq, event_seq) = delivery_key::key(id);
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET due_at = ?4
             WHERE endpoint_seq = ?5 AND event_seq = ?6
               AND id = ?1 AND state = 1 AND lease_owner = ?2 AND attempt = ?3",
        )
        .store()?
        .execute(params![
            id.0.as_bytes(),
            owner.0.as_bytes(),
            attempt,
            micros(until),
            endpoint_seq,
            event_seq
        ])
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
