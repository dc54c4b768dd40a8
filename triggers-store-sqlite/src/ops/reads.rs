//! Queries run on the reader connections.

use rusqlite::{params, Connection, Row};
use triggers_core::domain::event::{AttemptRecord, Event, EventDetail};
use triggers_core::store::{page_item_size, ListQuery, Page, QueueStats, StoreResult};
use triggers_core::{
    EndpointId, EventId, EventStatus, KeyHash, Organization, OrganizationId, StoreError, Tier,
};

use crate::codec::{self, query_opt, query_vec, status_code};
use crate::error::{corrupt, SqlResultExt};

/// Columns of an [`Event`], in the order [`event_row`] reads them.
const EVENT_COLUMNS: &str =
    "id, org_id, event_type, payload, dedup_id, status, created_at, delivered_at";

fn event_row(row: &Row<'_>, at: usize) -> StoreResult<Event> {
    Ok(Event {
        id: EventId(codec::uuid(row, at)?),
        organization_id: OrganizationId(codec::uuid(row, at + 1)?),
        event_type: codec::text(row, at + 2)?,
        payload: codec::payload(row, at + 3)?,
        dedup_id: codec::opt_text(row, at + 4)?,
        status: codec::status(row, at + 5)?,
        created_at: codec::ts(row, at + 6)?,
        delivered_at: codec::opt_ts(row, at + 7)?,
    })
}

/// Runs `f` inside one read transaction, so that its queries see one snapshot.
pub(crate) fn snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    conn.prepare_cached("BEGIN").store()?.execute([]).store()?;
    let out = f(conn);
    if let Err(e) = conn.prepare_cached("COMMIT").and_then(|mut s| s.execute([])) {
        tracing::warn!(error = %e, "ending a sqlite read transaction failed");
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    out
}

/// `EventLog::event`.
pub(crate) fn event(
    conn: &Connection,
    org: OrganizationId,
    id: EventId,
) -> StoreResult<Option<EventDetail>> {
    snapshot(conn, |conn| {
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT seq, {EVENT_COLUMNS} FROM events WHERE id = ?1 AND org_id = ?2"
            ))
            .store()?;
        let found = query_opt(&mut stmt, params![id.0.as_bytes(), org.0.as_bytes()], |row| {
            Ok((codec::int(row, 0)?, event_row(row, 1)?))
        })?;
        let Some((seq, event)) = found else { return Ok(None) };
        let mut stmt = conn
            .prepare_cached(
                "SELECT endpoint_id, at, status_code, latency_ms, error FROM attempts
                 WHERE event_seq = ?1 ORDER BY seq",
            )
            .store()?;
        let attempts = query_vec(&mut stmt, [seq], |row| {
            let status_code = match codec::opt_int(row, 2)? {
                Some(code) => Some(u16::try_from(code).map_err(corrupt)?),
                None => None,
            };
            Ok(AttemptRecord {
                endpoint_id: EndpointId(codec::uuid(row, 0)?),
                at: codec::ts(row, 1)?,
                status_code,
                latency_ms: codec::unsigned(row, 3)?,
                error: codec::opt_text(row, 4)?,
            })
        })?;
        Ok(Some(EventDetail { event, attempts }))
    })
}

/// `EventLog::list_events`.
pub(crate) fn list(
    conn: &Connection,
    org: OrganizationId,
    query: &ListQuery,
) -> StoreResult<Page<Event>> {
    let limit = query.limit.clamp(1, 1000) as usize;
    let after: &[u8] = match &query.after {
        Some(id) => id.0.as_bytes(),
        None => &[],
    };
    let base =
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE org_id = ?1 AND status = ?2 AND id > ?3");
    let status = status_code(query.status);
    let fetch = limit as i64 + 1;
    // Rows are stepped one by one, and a row's size is read from the borrowed column text
    // before it is decoded, so an over-budget payload is never copied.
    let mut page = PageFill::new(limit, query.max_bytes);
    match &query.type_glob {
        // Type globs use only `*` and the type alphabet, which has no other GLOB
        // metacharacter, so the glob text is itself a case-sensitive SQLite GLOB pattern.
        Some(glob) => {
            let sql = format!("{base} AND event_type GLOB ?5 ORDER BY id LIMIT ?4");
            let mut stmt = conn.prepare_cached(&sql).store()?;
            let p = params![org.0.as_bytes(), status, after, fetch, glob.as_str()];
            page.fill(stmt.query(p).store()?)?;
        }
        None => {
            let mut stmt = conn.prepare_cached(&format!("{base} ORDER BY id LIMIT ?4")).store()?;
            page.fill(stmt.query(params![org.0.as_bytes(), status, after, fetch]).store()?)?;
        }
    }
    let next_after = if page.more { page.items.last().map(|e| e.id) } else { None };
    Ok(Page { items: page.items, next_after })
}

/// A list page being filled up to its count limit and byte budget.
struct PageFill {
    items: Vec<Event>,
    limit: usize,
    budget: u64,
    bytes: u64,
    /// A matching row followed the page.
    more: bool,
}

impl PageFill {
    fn new(limit: usize, budget: u64) -> Self {
        Self { items: Vec::new(), limit, budget, bytes: 0, more: false }
    }

    fn fill(&mut self, mut rows: rusqlite::Rows<'_>) -> StoreResult<()> {
        while let Some(row) = rows.next().store()? {
            let text = |i: usize| row.get_ref(i).ok().and_then(|v| v.as_str().ok());
            let size = page_item_size(text(2).unwrap_or(""), text(3).unwrap_or(""), text(4));
            let over = self.bytes.saturating_add(size) > self.budget;
            if self.items.len() == self.limit || (over && !self.items.is_empty()) {
                self.more = true;
                return Ok(());
            }
            self.bytes = self.bytes.saturating_add(size);
            self.items.push(event_row(row, 0)?);
        }
        Ok(())
    }
}

/// `EventLog::stats`.
pub(crate) fn stats(conn: &Connection, org: OrganizationId) -> StoreResult<QueueStats> {
    snapshot(conn, |conn| {
        let mut stmt = conn
            .prepare_cached("SELECT status, count(*) FROM events WHERE org_id = ?1 GROUP BY status")
            .store()?;
        let counts = query_vec(&mut stmt, [org.0.as_bytes()], |row| {
            Ok((codec::status(row, 0)?, codec::unsigned::<u64>(row, 1)?))
        })?;
        let mut stats = QueueStats::default();
        for (status, n) in counts {
            match status {
                EventStatus::Pending => stats.pending = n,
                EventStatus::Delivered => stats.delivered = n,
                EventStatus::Failed => stats.failed = n,
            }
        }
        let mut stmt = conn
            .prepare_cached(
                // CROSS JOIN fixes the order: walk the (few) leased deliveries, not every
                // event of the organization.
                "SELECT count(*) FROM deliveries d CROSS JOIN events e ON e.seq = d.event_seq
                 WHERE d.state = 1 AND e.org_id = ?1",
            )
            .store()?;
        stats.in_flight =
            query_opt(&mut stmt, [org.0.as_bytes()], |r| codec::unsigned(r, 0))?.unwrap_or(0);
        Ok(stats)
    })
}

/// `EventLog::pending_events`: the organization's row of `pending_counts`, which triggers
/// keep (migration 0011).
pub(crate) fn pending_events(conn: &Connection, org: OrganizationId) -> StoreResult<u64> {
    let mut stmt = conn.prepare_cached("SELECT n FROM pending_counts WHERE org_id = ?1").store()?;
    Ok(query_opt(&mut stmt, [org.0.as_bytes()], |r| codec::unsigned(r, 0))?.unwrap_or(0))
}

/// `DeliveryQueue::queue_depth`.
pub(crate) fn queue_depth(conn: &Connection) -> StoreResult<u64> {
    let mut stmt = conn.prepare_cached("SELECT count(*) FROM deliveries").store()?;
    Ok(query_opt(&mut stmt, [], |r| codec::unsigned(r, 0))?.unwrap_or(0))
}

fn org_row(row: &Row<'_>) -> StoreResult<Organization> {
    Ok(Organization {
        id: OrganizationId(codec::uuid(row, 0)?),
        name: codec::text(row, 1)?,
        tier: codec::str_ref(row, 2)?.parse::<Tier>().map_err(corrupt)?,
        created_at: codec::ts(row, 3)?,
    })
}

/// `OrgStore::organization_by_key`.
pub(crate) fn org_by_key(conn: &Connection, key: &KeyHash) -> StoreResult<Option<Organization>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, tier, created_at FROM organizations WHERE key_hash = ?1")
        .store()?;
    query_opt(&mut stmt, [&key.as_bytes()[..]], org_row)
}

/// `OrgStore::organization`.
pub(crate) fn org(conn: &Connection, id: OrganizationId) -> StoreResult<Option<Organization>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, tier, created_at FROM organizations WHERE id = ?1")
        .store()?;
    query_opt(&mut stmt, [id.0.as_bytes()], org_row)
}

/// `OrgStore::ping`: one trivial query.
pub(crate) fn ping(conn: &Connection) -> StoreResult<()> {
    let one: i64 = conn.prepare_cached("SELECT 1").store()?.query_row([], |r| r.get(0)).store()?;
    if one == 1 {
        Ok(())
    } else {
        Err(StoreError::Unavailable("sqlite answered nonsense".into()))
    }
}
