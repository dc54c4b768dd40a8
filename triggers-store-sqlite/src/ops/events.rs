//! Event writes: insertion with dedup and fan-out, ack and replay. Each function runs on the
//! writer connection inside the batch transaction (and its own savepoint).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{params, Connection, Statement};
use triggers_core::domain::event::EventMeta;
use triggers_core::store::{AckOutcome, InsertOutcome, StoreResult};
use triggers_core::{
    DeliveryId, EndpointId, EventId, EventRecord, EventStatus, OrganizationId, Timestamp, TypeGlob,
    ENDPOINT_DISABLED,
};

use crate::codec::{self, duration_micros, micros, query_opt, query_vec};
use crate::error::{corrupt, SqlResultExt};
use crate::ops::orgs::require_org;
use crate::ops::{delivery_key, lifecycle};

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
    .execute(params![
        delivery_key::new_id(endpoint_seq, event_seq)?.0.as_bytes(),
        event_seq,
        endpoint_seq,
        now,
        fifo
    ])
    .store()?;
    Ok(())
}

/// Queues one delivery (attempt 0, due `now`) per enabled target (but `exclude`) whose
/// filter matches `event_type`; a matching disabled target gets a failed delivery (which fails
/// the event). Deliveries to FIFO endpoints are queued at once (each takes the next place in
/// its line); parallel ones are added to `parallel` as `(event seq, endpoint seq, id)`, for
/// [`queue_parallel`]. Returns how many deliveries were queued or added.
fn fan_out(
    conn: &Connection,
    targets: &Targets,
    event_seq: i64,
    event_type: &str,
    exclude: Option<EndpointId>,
    now: i64,
    parallel: &mut Vec<(i64, i64, DeliveryId)>,
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
        match fifo {
            true => queue_delivery(conn, event_seq, *endpoint_seq, now, true)?,
            false => parallel.push((
                event_seq,
                *endpoint_seq,
                delivery_key::new_id(*endpoint_seq, event_seq)?,
            )),
        }
        n += 1;
    }
    Ok(n)
}

/// Queues the parallel deliveries `rows` (`(event seq, endpoint seq, id)`, from [`fan_out`]):
/// pending, attempt 0, due `now`, several per statement.
fn queue_parallel(conn: &Connection, rows: &[(i64, i64, DeliveryId)], now: i64) -> StoreResult<()> {
    let sql = multi_row_sql();
    for (size, chunk) in chunks(rows) {
        insert_rows(conn, &sql.deliveries[size], now, chunk, DELIVERY_PARAMS, |stmt, p, row| {
            stmt.raw_bind_parameter(p, row.2 .0.as_bytes())?;
            stmt.raw_bind_parameter(p + 1, row.0)?;
            stmt.raw_bind_parameter(p + 2, row.1)
        })?;
    }
    Ok(())
}

/// Rows per multi-row `INSERT`, largest first: `n` rows are written by `n / 32` statements of
/// 32 rows, then statements of 8, 4 and single rows (a batch of 100 events: four statements
/// per table). One statement execution has a fixed cost (cursors opened on the table and each
/// index, parameters, reset) that a batch would otherwise pay per row; each size is one cached
/// statement per table.
const ROWS_PER_INSERT: [usize; 4] = [32, 8, 4, 1];

/// `rows` cut into chunks of the [`ROWS_PER_INSERT`] sizes, largest first, each with the
/// index of its size.
fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = ROWS_PER_INSERT
            .iter()
            .position(|&k| k <= rows.len())
            .unwrap_or(ROWS_PER_INSERT.len() - 1);
        let (chunk, rest) = rows.split_at(ROWS_PER_INSERT[size]);
        rows = rest;
        Some((size, chunk))
    })
}

/// Runs the multi-row statement `sql` (of `chunk.len()` rows, `per_row` parameters each) for
/// `chunk`: `?1` is `shared`, and `bind` binds a row from its first parameter number. Returns
/// how many rows went in.
fn insert_rows<T>(
    conn: &Connection,
    sql: &str,
    shared: impl ToSql,
    chunk: &[T],
    per_row: usize,
    bind: impl Fn(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> StoreResult<usize> {
    let mut stmt = conn.prepare_cached(sql).store()?;
    stmt.raw_bind_parameter(1, shared).store()?;
    for (r, row) in chunk.iter().enumerate() {
        bind(&mut stmt, 2 + r * per_row, row).store()?;
    }
    stmt.raw_execute().store()
}

/// The multi-row statements, one per [`ROWS_PER_INSERT`] size.
///
/// They are `INSERT OR FAIL`: a row that breaks a constraint ends the statement with the
/// error and leaves the rows before it in place, where the default (`ABORT`) undoes the
/// statement. That undo is what the writer already does for the whole request — every error
/// of a request rolls back its transaction, or its savepoint when it shares one
/// (`writer::batch`) — and it is not free: for a multi-row statement that may abort, SQLite
/// copies every page the statement touches into a statement journal first (≈ 8 % of the
/// writer's time in batch ingest; BENCHMARKS.md, "Issue #17, seventh sitting"). The test
/// `a_batch_failing_inside_a_multi_row_insert_stores_nothing` holds the two together.
struct MultiRowSql {
    /// `?1` the organization; per row: id, type, payload, dedup id, created.
    events: [String; ROWS_PER_INSERT.len()],
    /// `?1` the organization; per row: dedup id, event id, type, created. A dedup id already
    /// recorded (or repeated within the statement) is skipped, not an error.
    dedup: [String; ROWS_PER_INSERT.len()],
    /// `?1` the due time; per row: delivery id, event seq, endpoint seq. Parallel deliveries
    /// only (a FIFO one takes its place in its line, one by one).
    deliveries: [String; ROWS_PER_INSERT.len()],
}

/// Per-row parameters of the [`MultiRowSql`] statements.
const EVENT_PARAMS: usize = 5;
const DEDUP_PARAMS: usize = 4;
const DELIVERY_PARAMS: usize = 3;

/// `k` value tuples, the `r`th made by `row` from its first parameter number (`?1` is shared,
/// so row `r` starts at `2 + r * per_row`).
fn values(k: usize, per_row: usize, row: impl Fn(usize) -> String) -> String {
    (0..k).map(|r| row(2 + r * per_row)).collect::<Vec<_>>().join(", ")
}

fn multi_row_sql() -> &'static MultiRowSql {
    static SQL: OnceLock<MultiRowSql> = OnceLock::new();
    SQL.get_or_init(|| MultiRowSql {
        events: ROWS_PER_INSERT.map(|k| {
            let rows = values(k, EVENT_PARAMS, |p| {
                format!("(?{p}, ?1, ?{}, ?{}, ?{}, 0, ?{})", p + 1, p + 2, p + 3, p + 4)
            });
            format!(
                "INSERT OR FAIL INTO events (id, org_id, event_type, payload, dedup_id, status, created_at)
                 VALUES {rows}"
            )
        }),
        dedup: ROWS_PER_INSERT.map(|k| {
            let rows = values(k, DEDUP_PARAMS, |p| {
                format!("(?1, ?{p}, ?{}, ?{}, ?{})", p + 1, p + 2, p + 3)
            });
            format!(
                "INSERT OR FAIL INTO dedup (org_id, dedup_id, event_id, event_type, created_at)
                 VALUES {rows} ON CONFLICT (org_id, dedup_id) DO NOTHING"
            )
        }),
        deliveries: ROWS_PER_INSERT.map(|k| {
            let rows = values(k, DELIVERY_PARAMS, |p| {
                format!("(?{p}, ?{}, ?{}, 0, 0, ?1, NULL)", p + 1, p + 2)
            });
            format!(
                "INSERT OR FAIL INTO deliveries (id, event_seq, endpoint_seq, state, attempt, due_at, line)
                 VALUES {rows}"
            )
        }),
    })
}

/// `EventLog::insert_events`.
///
/// Passes over the batch with multi-row statements: first the dedup entries of the events
/// that carry a dedup id, then the events that are not duplicates, then their parallel
/// deliveries ([`fan_out`] queues those to FIFO endpoints one by one). The outcome is the one
/// of inserting the events one by one in order: a chunk whose dedup entries all went in has
/// no duplicate; otherwise its events are decided one by one ([`settle_dedup`]), in order,
/// so an earlier event of the batch is seen by a later one.
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
    let sql = multi_row_sql();

    // 1. Dedup entries: `duplicates[i]` is the original of a duplicate.
    let mut duplicates: Vec<Option<EventMeta>> = vec![None; events.len()];
    let with_dedup: Vec<usize> =
        (0..events.len()).filter(|&i| events[i].dedup_id.is_some()).collect();
    for (size, chunk) in chunks(&with_dedup) {
        let inserted =
            insert_rows(conn, &sql.dedup[size], org_id, chunk, DEDUP_PARAMS, |stmt, p, &i| {
                let e = &events[i];
                stmt.raw_bind_parameter(p, e.dedup_id.as_deref())?;
                stmt.raw_bind_parameter(p + 1, e.id.0.as_bytes())?;
                stmt.raw_bind_parameter(p + 2, e.event_type.as_str())?;
                stmt.raw_bind_parameter(p + 3, micros(e.created_at))
            })?;
        if inserted < chunk.len() {
            for &i in chunk {
                duplicates[i] = settle_dedup(conn, org_id, &events[i], cutoff)?;
            }
        }
    }

    // 2. The events that are not duplicates, then their deliveries.
    let fresh: Vec<usize> = (0..events.len()).filter(|&i| duplicates[i].is_none()).collect();
    let mut deliveries = vec![0u32; events.len()];
    let mut parallel = Vec::new();
    for (size, chunk) in chunks(&fresh) {
        insert_rows(conn, &sql.events[size], org_id, chunk, EVENT_PARAMS, |stmt, p, &i| {
            let e = &events[i];
            stmt.raw_bind_parameter(p, e.id.0.as_bytes())?;
            stmt.raw_bind_parameter(p + 1, e.event_type.as_str())?;
            stmt.raw_bind_parameter(p + 2, e.payload.get())?;
            stmt.raw_bind_parameter(p + 3, e.dedup_id.as_deref())?;
            stmt.raw_bind_parameter(p + 4, micros(e.created_at))
        })?;
        if targets.is_empty() {
            continue;
        }
        let first = first_seq(conn, &events[chunk[0]], chunk.len())?;
        for (&i, seq) in chunk.iter().zip(first..) {
            let e = &events[i];
            deliveries[i] = fan_out(
                conn,
                &targets,
                seq,
                &e.event_type,
                e.exclude_endpoint,
                now_us,
                &mut parallel,
            )?;
        }
    }
    queue_parallel(conn, &parallel, now_us)?;
    // Every event goes in pending (one failed at once by a disabled endpoint is counted out
    // again by the status trigger); the writer adds the sum before it commits.
    if !fresh.is_empty() {
        crate::ops::pending::add(org_id, i64::try_from(fresh.len()).map_err(corrupt)?);
    }

    let outcomes =
        events.iter().zip(duplicates).zip(deliveries).map(|((e, duplicate), n)| match duplicate {
            Some(original) => InsertOutcome::Duplicate(original),
            None => InsertOutcome::Inserted {
                meta: EventMeta {
                    id: e.id,
                    event_type: e.event_type.clone(),
                    created_at: e.created_at,
                },
                deliveries: n,
            },
        });
    Ok(outcomes.collect())
}

/// Decides whether `e`, whose dedup entry did not go in with its chunk's (or did, next to a
/// repeated id), is a duplicate: its own entry is there (inserted by the chunk), an entry of
/// another event inside the window makes it a duplicate of that event, and one outside the
/// window is taken over (with a new, larger seq; see the `dedup` table).
fn settle_dedup(
    conn: &Connection,
    org_id: &[u8; 16],
    e: &EventRecord,
    cutoff: i64,
) -> StoreResult<Option<EventMeta>> {
    let dedup_id = e.dedup_id.as_deref();
    let mut find = conn
        .prepare_cached(
            "SELECT event_id, event_type, created_at FROM dedup WHERE org_id = ?1 AND dedup_id = ?2",
        )
        .store()?;
    let entry = query_opt(&mut find, params![org_id, dedup_id], |row| {
        Ok((codec::uuid(row, 0)?, codec::text(row, 1)?, codec::int(row, 2)?))
    })?;
    match entry {
        Some((id, _, _)) if id == e.id.0 => return Ok(None),
        Some((id, event_type, at)) if at > cutoff => {
            let meta = EventMeta { id: EventId(id), event_type, created_at: codec::ts_from(at)? };
            return Ok(Some(meta));
        }
        _ => {}
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO dedup (org_id, dedup_id, event_id, event_type, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .store()?
    .execute(params![org_id, dedup_id, e.id.0.as_bytes(), e.event_type, micros(e.created_at)])
    .store()?;
    Ok(None)
}

/// The seq of the first of the `k` events an `INSERT` just wrote, `first` among them.
/// SQLite gives each new row the table's largest rowid + 1, so the `k` seqs are consecutive
/// and end at `last_insert_rowid()` (the one exception, a table whose largest rowid is
/// `i64::MAX`, cannot arise from seqs counted up from 1). For more than one row this is
/// checked against `first`'s id all the same: a wrong seq would queue deliveries for another
/// event.
fn first_seq(conn: &Connection, first: &EventRecord, k: usize) -> StoreResult<i64> {
    let last = conn.last_insert_rowid();
    if k == 1 {
        return Ok(last);
    }
    let seq = last - (i64::try_from(k).map_err(corrupt)? - 1);
    let mut stmt = conn.prepare_cached("SELECT id FROM events WHERE seq = ?1").store()?;
    match query_opt(&mut stmt, [seq], |row| codec::uuid(row, 0))? {
        Some(id) if id == first.id.0 => Ok(seq),
        _ => Err(corrupt(format!("the events just inserted do not start at seq {seq}"))),
    }
}

/// `EventLog::ack`.
pub(crate) fn ack(
    conn: &Connection,
    org: OrganizationId,
    ids: &[EventId],
    now: Timestamp,
) -> StoreResult<AckOutcome> {
    // The status before, for the pending count (a pending event becoming delivered is
    // counted here, not by the trigger: migration 0011).
    let mut find =
        conn.prepare_cached("SELECT status FROM events WHERE id = ?1 AND org_id = ?2").store()?;
    let mut stmt = conn
        .prepare_cached(
            "UPDATE events
             SET delivered_at = CASE WHEN status = 1 THEN delivered_at ELSE ?3 END, status = 1
             WHERE id = ?1 AND org_id = ?2",
        )
        .store()?;
    let now = micros(now);
    let org_id = org.0.as_bytes();
    let mut seen = HashSet::with_capacity(ids.len());
    let mut out = AckOutcome::default();
    let mut was_pending = 0i64;
    for &id in ids {
        if !seen.insert(id) {
            continue;
        }
        let status = query_opt(&mut find, params![id.0.as_bytes(), org_id], |r| codec::int(r, 0))?;
        if status.is_none() {
            out.not_found.push(id);
            continue;
        }
        stmt.execute(params![id.0.as_bytes(), org_id, now]).store()?;
        was_pending += i64::from(status == Some(0));
        out.acknowledged.push(id);
    }
    if was_pending > 0 {
        crate::ops::pending::add(org_id, -was_pending);
    }
    Ok(out)
}

/// `EventLog::replay`.
pub(crate) fn replay(
    conn: &Connection,
    org: OrganizationId,
    id: EventId,
    now: Timestamp,
    keep: u32,
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
    remember_in_flight(conn, Cancelling::OfEvent(seq))?;
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
    // The attempts of deleted endpoints count together (`StoreLimits::max_attempts_kept`):
    // the oldest beyond `keep` go.
    conn.prepare_cached(
        "DELETE FROM attempts WHERE seq IN (
             SELECT a.seq FROM attempts a
             WHERE a.event_seq = ?1
               AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.id = a.endpoint_id)
             ORDER BY a.seq DESC LIMIT -1 OFFSET ?2)",
    )
    .store()?
    .execute([seq, i64::from(keep.max(1))])
    .store()?;
    let targets = targets(conn, &org)?;
    let mut parallel = Vec::new();
    fan_out(conn, &targets, seq, &event_type, None, now_us, &mut parallel)?;
    queue_parallel(conn, &parallel, now_us)?;
    let mut status = conn.prepare_cached("SELECT status FROM events WHERE seq = ?1").store()?;
    query_opt(&mut status, [seq], |row| codec::status(row, 0))
}

/// Whose outstanding deliveries are about to be cancelled.
pub(crate) enum Cancelling {
    /// Every delivery of the event with this `seq` (a replay).
    OfEvent(i64),
    /// Every delivery to the endpoint with this `seq` (its deletion).
    ToEndpoint(i64),
}

/// Remembers the in-flight deliveries among those about to be cancelled
/// (`superseded_deliveries`), so that their attempts are still recorded when they end.
pub(crate) fn remember_in_flight(conn: &Connection, cancelling: Cancelling) -> StoreResult<()> {
    macro_rules! remember_where {
        ($column:literal) => {
            concat!(
                "INSERT OR REPLACE INTO superseded_deliveries
                     (id, event_seq, lease_owner, attempt, lease_until)
                 SELECT id, event_seq, lease_owner, attempt, due_at FROM deliveries
                 WHERE ",
                $column,
                " = ?1 AND state = 1 AND lease_owner IS NOT NULL"
            )
        };
    }
    let (sql, seq) = match cancelling {
        Cancelling::OfEvent(seq) => (remember_where!("event_seq"), seq),
        Cancelling::ToEndpoint(seq) => (remember_where!("endpoint_seq"), seq),
    };
    conn.prepare_cached(sql).store()?.execute([seq]).store()?;
    Ok(())
}
