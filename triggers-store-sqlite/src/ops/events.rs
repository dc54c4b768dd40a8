//! Event writes: insertion with dedup and fan-out, ack and replay. Each function runs on the
//! writer connection inside the batch transaction (and its own savepoint).

use std::collections::HashSet;
use std::time::Duration;

use rusqlite::{params, Connection};
use triggers_core::domain::event::EventMeta;
use triggers_core::store::{AckOutcome, InsertOutcome, StoreResult};
use triggers_core::{
    DeliveryId, EndpointId, EventId, EventRecord, EventStatus, OrganizationId, Timestamp, TypeGlob,
    ENDPOINT_DISABLED,
};

use crate::codec::{self, duration_micros, micros, query_opt, query_vec};
use crate::error::{corrupt, SqlResultExt};
use crate::ops::lifecycle;
use crate::ops::orgs::require_org;

/// The endpoints of an organization: `(seq, filter, enabled, id, fifo)`.
type Targets = Vec<(i64, Option<TypeGlob>, bool, uuid::Uuid, bool)>;

/// Loads the organization's endpoints in creation order, for fan-out.
fn targets(conn: &Connection, org: &OrganizationId) -> StoreResult<Targets> {
    // Sorted here: an `ORDER BY seq` would open a sorter for every insert request.
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, type_filter, enabled, id, ordering FROM endpoints WHERE org_id = ?1",
        )
        .store()?;
    let mut targets = query_vec(&mut stmt, [org.0.as_bytes()], |row| {
        let filter = match codec::opt_text(row, 1)? {
            Some(g) => Some(TypeGlob::parse(&g).map_err(corrupt)?),
            None => None,
        };
        Ok((
            codec::int(row, 0)?,
            filter,
            codec::int(row, 2)? != 0,
            codec::uuid(row, 3)?,
            codec::int(row, 4)? == 1,
        ))
    })?;
    targets.sort_unstable_by_key(|t| t.0);
    Ok(targets)
}

/// Queues one delivery of an event to an endpoint: pending, attempt 0, due `now`. With
/// `fifo` (the endpoint's ordering is FIFO) it is an ordered delivery at the end of the
/// endpoint's line; the writer is the only one, so "last place + 1" cannot race.
pub(crate) fn queue_delivery(
    conn: &Connection,
    event_seq: i64,
    endpoint_seq: i64,
    now: i64,
    fifo: bool,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO deliveries (id, event_seq, endpoint_seq, state, attempt, due_at, line)
         VALUES (?1, ?2, ?3, 0, 0, ?4, CASE WHEN ?5 THEN
             (SELECT coalesce(max(line), 0) + 1 FROM deliveries
              WHERE endpoint_seq = ?3 AND line IS NOT NULL) END)",
    )
    .store()?
    .execute(params![DeliveryId::new().0.as_bytes(), event_seq, endpoint_seq, now, fifo])
    .store()?;
    Ok(())
}

/// Queues one delivery (attempt 0, due `now`) per enabled target (but `exclude`) whose
/// filter matches `event_type`; a matching disabled target gets a failed delivery (which fails the event).
/// Returns how many deliveries were queued.
fn fan_out(
    conn: &Connection,
    targets: &Targets,
    event_seq: i64,
    event_type: &str,
    exclude: Option<EndpointId>,
    now: i64,
) -> StoreResult<u32> {
    let mut n = 0;
    for (endpoint_seq, filter, enabled, id, fifo) in targets {
        if exclude.is_some_and(|e| e.0 == *id) {
            continue;
        }
        if filter.as_ref().is_some_and(|g| !g.matches(event_type)) {
            continue;
        }
        if !enabled {
            lifecycle::record_failed(conn, *endpoint_seq, event_seq, ENDPOINT_DISABLED, now)?;
            continue;
        }
        queue_delivery(conn, event_seq, *endpoint_seq, now, *fifo)?;
        n += 1;
    }
    Ok(n)
}

/// `EventLog::insert_events`.
pub(crate) fn insert(
    conn: &Connection,
    org: OrganizationId,
    events: &[EventRecord],
    dedup_window: Duration,
    now: Timestamp,
) -> StoreResult<Vec<InsertOutcome>> {
    let org_id = org.0.as_bytes();
    let now_us = micros(now);
    // A dedup entry is live while `created_at + window > now`, i.e. `created_at > cutoff`.
    let cutoff = now_us.saturating_sub(duration_micros(dedup_window));
    require_org(conn, &org)?;
    let targets = targets(conn, &org)?;
    let mut put_event = conn
        .prepare_cached(
            "INSERT INTO events (id, org_id, event_type, payload, dedup_id, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
        )
        .store()?;
    let mut put_dedup = conn
        .prepare_cached(
            "INSERT INTO dedup (org_id, dedup_id, event_id, event_type, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (org_id, dedup_id) DO NOTHING",
        )
        .store()?;
    let mut find_dedup = conn
        .prepare_cached(
            "SELECT event_id, event_type, created_at FROM dedup WHERE org_id = ?1 AND dedup_id = ?2",
        )
        .store()?;
    let mut take_over_dedup = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO dedup (org_id, dedup_id, event_id, event_type, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .store()?;

    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let created = micros(e.created_at);
        if let Some(dedup_id) = &e.dedup_id {
            // The usual case, a new dedup id, is one statement; an id already recorded is
            // looked up only then.
            let new_id = put_dedup
                .execute(params![org_id, dedup_id, e.id.0.as_bytes(), e.event_type, created])
                .store()?
                > 0;
            if !new_id {
                let original = query_opt(&mut find_dedup, params![org_id, dedup_id], |row| {
                    Ok((codec::uuid(row, 0)?, codec::text(row, 1)?, codec::int(row, 2)?))
                })?;
                if let Some((id, event_type, at)) = original {
                    if at > cutoff {
                        let meta = EventMeta {
                            id: EventId(id),
                            event_type,
                            created_at: codec::ts_from(at)?,
                        };
                        out.push(InsertOutcome::Duplicate(meta));
                        continue;
                    }
                }
                // The old entry is outside the window: this event takes the id over (with a
                // new, larger seq; see the `dedup` table).
                take_over_dedup
                    .execute(params![org_id, dedup_id, e.id.0.as_bytes(), e.event_type, created])
                    .store()?;
            }
        }
        put_event
            .execute(params![
                e.id.0.as_bytes(),
                org_id,
                e.event_type,
                e.payload.get(),
                e.dedup_id,
                created
            ])
            .store()?;
        let seq = conn.last_insert_rowid();
        let deliveries = fan_out(conn, &targets, seq, &e.event_type, e.exclude_endpoint, now_us)?;
        let meta =
            EventMeta { id: e.id, event_type: e.event_type.clone(), created_at: e.created_at };
        out.push(InsertOutcome::Inserted { meta, deliveries });
    }
    Ok(out)
}

/// `EventLog::ack`.
pub(crate) fn ack(
    conn: &Connection,
    org: OrganizationId,
    ids: &[EventId],
    now: Timestamp,
) -> StoreResult<AckOutcome> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE events
             SET delivered_at = CASE WHEN status = 1 THEN delivered_at ELSE ?3 END, status = 1
             WHERE id = ?1 AND org_id = ?2",
        )
        .store()?;
    let now = micros(now);
    let mut seen = HashSet::with_capacity(ids.len());
    let mut out = AckOutcome::default();
    for &id in ids {
        if !seen.insert(id) {
            continue;
        }
        if stmt.execute(params![id.0.as_bytes(), org.0.as_bytes(), now]).store()? > 0 {
            out.acknowledged.push(id);
        } else {
            out.not_found.push(id);
        }
    }
    Ok(out)
}

/// `EventLog::replay`.
pub(crate) fn replay(
    conn: &Connection,
    org: OrganizationId,
    id: EventId,
    now: Timestamp,
) -> StoreResult<Option<EventStatus>> {
    let mut find = conn
        .prepare_cached("SELECT seq, event_type FROM events WHERE id = ?1 AND org_id = ?2")
        .store()?;
    let found = query_opt(&mut find, params![id.0.as_bytes(), org.0.as_bytes()], |row| {
        Ok((codec::int(row, 0)?, codec::text(row, 1)?))
    })?;
    let Some((seq, event_type)) = found else { return Ok(None) };
    // Cancel the outstanding deliveries (the table holds no finished ones): a worker holding
    // one finds its completion stale, and only the fresh deliveries decide the new status.
    // In-flight ones are remembered, so that their attempt is still recorded when it ends;
    // remembered leases that have expired are forgotten first.
    let now_us = micros(now);
    conn.prepare_cached("DELETE FROM superseded_deliveries WHERE lease_until <= ?1")
        .store()?
        .execute([now_us])
        .store()?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO superseded_deliveries (id, event_seq, lease_owner, attempt, lease_until)
         SELECT id, event_seq, lease_owner, attempt, due_at FROM deliveries
         WHERE event_seq = ?1 AND state = 1 AND lease_owner IS NOT NULL",
    )
    .store()?
    .execute([seq])
    .store()?;
    conn.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")
        .store()?
        .execute([seq])
        .store()?;
    conn.prepare_cached("DELETE FROM failed_deliveries WHERE event_seq = ?1")
        .store()?
        .execute([seq])
        .store()?;
    conn.prepare_cached("UPDATE events SET status = 0, delivered_at = NULL WHERE seq = ?1")
        .store()?
        .execute([seq])
        .store()?;
    let targets = targets(conn, &org)?;
    fan_out(conn, &targets, seq, &event_type, None, now_us)?;
    let mut status = conn.prepare_cached("SELECT status FROM events WHERE seq = ?1").store()?;
    query_opt(&mut status, [seq], |row| codec::status(row, 0))
}
