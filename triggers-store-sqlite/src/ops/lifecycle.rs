//! Endpoint lifecycle: lookup, patching, failing the deliveries of a disabled endpoint, and
//! recovering failed deliveries. Writes run on the writer inside the batch transaction.

use rusqlite::{params, Connection, Row};
use triggers_core::store::{
    operational, EndpointPatch, EndpointUpdate, RecoverQuery, Recovered, StoreResult, BACKLOG_BATCH,
};
use triggers_core::{
    DeliveryOrdering, Endpoint, EndpointId, OrganizationId, Secret, Timestamp, TypeGlob,
    DISABLED_BY_REQUEST,
};

use crate::codec::{self, micros, query_opt, query_vec};
use crate::error::{corrupt, SqlResultExt};

/// The columns [`endpoint_row`] reads, in order.
pub(crate) const ENDPOINT_COLUMNS: &str = "id, org_id, url, type_filter, secret, enabled, \
     disabled_reason, created_at, description, headers, rate_limit, concurrency, ordering";

/// Decodes custom headers stored as a JSON array of `[name, value]` pairs (NULL = none).
pub(crate) fn decode_headers(json: Option<String>) -> StoreResult<Vec<(String, String)>> {
    match json {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(corrupt),
    }
}

/// Encodes custom headers for the `headers` column (NULL when there are none).
fn encode_headers(headers: &[(String, String)]) -> StoreResult<Option<String>> {
    if headers.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(headers)
        .map(Some)
        .map_err(|e| triggers_core::StoreError::InvalidInput(e.to_string()))
}

/// One endpoint from a row of [`ENDPOINT_COLUMNS`].
pub(crate) fn endpoint_row(row: &Row<'_>) -> StoreResult<Endpoint> {
    let filter = match codec::opt_text(row, 3)? {
        Some(g) => Some(TypeGlob::parse(&g).map_err(corrupt)?),
        None => None,
    };
    let limit = |idx| -> StoreResult<Option<u32>> {
        codec::opt_int(row, idx)?.map(|v| u32::try_from(v).map_err(corrupt)).transpose()
    };
    Ok(Endpoint {
        id: EndpointId(codec::uuid(row, 0)?),
        organization_id: OrganizationId(codec::uuid(row, 1)?),
        url: codec::text(row, 2)?,
        event_type_filter: filter,
        secret: Secret::parse(codec::text(row, 4)?).map_err(corrupt)?,
        enabled: codec::int(row, 5)? != 0,
        disabled_reason: codec::opt_text(row, 6)?,
        created_at: codec::ts(row, 7)?,
        description: codec::opt_text(row, 8)?,
        headers: decode_headers(codec::opt_text(row, 9)?)?,
        rate_limit: limit(10)?,
        concurrency: limit(11)?,
        ordering: match codec::int(row, 12)? {
            1 => DeliveryOrdering::Fifo,
            _ => DeliveryOrdering::Parallel,
        },
    })
}

/// `EndpointStore::endpoint`.
pub(crate) fn endpoint(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
) -> StoreResult<Option<Endpoint>> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = ?1 AND org_id = ?2");
    let mut stmt = conn.prepare_cached(&sql).store()?;
    query_opt(&mut stmt, params![id.0.as_bytes(), org.0.as_bytes()], endpoint_row)
}

/// The endpoint with this row number, if it exists.
pub(crate) fn endpoint_at(conn: &Connection, seq: i64) -> StoreResult<Option<Endpoint>> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE seq = ?1");
    let mut stmt = conn.prepare_cached(&sql).store()?;
    query_opt(&mut stmt, [seq], endpoint_row)
}

/// Inserts the operational event about `ep` as it is now
/// ([`triggers_core::store::operational`]), in the caller's write: the one that changed its
/// `enabled`.
pub(crate) fn announce(conn: &Connection, ep: &Endpoint, at: Timestamp) -> StoreResult<()> {
    let reason = ep.disabled_reason.as_deref();
    let event = operational::endpoint_changed(ep.id, &ep.url, ep.enabled, reason, at)?;
    let window = std::time::Duration::ZERO;
    crate::ops::events::insert(conn, ep.organization_id, std::slice::from_ref(&event), window, at)?;
    Ok(())
}

/// Remembers a failed delivery (replacing an older record of the same pair) and fails the
/// event if it is pending.
pub(crate) fn record_failed(
    conn: &Connection,
    endpoint_seq: i64,
    event_seq: i64,
    reason: &str,
    at: i64,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO failed_deliveries
             (endpoint_seq, event_seq, reason, failed_at, event_created_at)
         VALUES (?1, ?2, ?3, ?4, (SELECT created_at FROM events WHERE seq = ?2))",
    )
    .store()?
    .execute(params![endpoint_seq, event_seq, reason, at])
    .store()?;
    conn.prepare_cached("UPDATE events SET status = 2 WHERE seq = ?1 AND status = 0")
        .store()?
        .execute([event_seq])
        .store()?;
    Ok(())
}

/// Fails at most [`BACKLOG_BATCH`] outstanding deliveries of a disabled endpoint; returns
/// how many. A range of the deliveries' key, which starts with `endpoint_seq` (migration
/// 0009).
pub(crate) fn fail_outstanding(
    conn: &Connection,
    endpoint_seq: i64,
    reason: &str,
    at: i64,
) -> StoreResult<u64> {
    let mut stmt = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE endpoint_seq = ?1 AND event_seq IN
                 (SELECT event_seq FROM deliveries WHERE endpoint_seq = ?1 LIMIT ?2)
             RETURNING event_seq",
        )
        .store()?;
    let batch = i64::try_from(BACKLOG_BATCH).unwrap_or(i64::MAX);
    let events = query_vec(&mut stmt, [endpoint_seq, batch], |row| codec::int(row, 0))?;
    for event_seq in &events {
        record_failed(conn, endpoint_seq, *event_seq, reason, at)?;
    }
    Ok(events.len() as u64)
}

/// `EndpointStore::update_endpoint`.
pub(crate) fn update_endpoint(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
    patch: &EndpointPatch,
    now: Timestamp,
) -> StoreResult<Option<EndpointUpdate>> {
    let mut find = conn
        .prepare_cached("SELECT seq, enabled FROM endpoints WHERE id = ?1 AND org_id = ?2")
        .store()?;
    let found = query_opt(&mut find, params![id.0.as_bytes(), org.0.as_bytes()], |row| {
        Ok((codec::int(row, 0)?, codec::int(row, 1)? != 0))
    })?;
    drop(find);
    let Some((seq, was_enabled)) = found else { return Ok(None) };
    // Each optional column: a flag "set it" and the new value.
    let headers = patch.headers.as_deref().map(encode_headers).transpose()?;
    let filter = patch.event_type_filter.as_ref().map(|f| f.as_ref().map(TypeGlob::as_str));
    conn.prepare_cached(
        "UPDATE endpoints SET
             url = coalesce(?2, url),
             type_filter = CASE WHEN ?3 THEN ?4 ELSE type_filter END,
             description = CASE WHEN ?5 THEN ?6 ELSE description END,
             headers = CASE WHEN ?7 THEN ?8 ELSE headers END,
             rate_limit = CASE WHEN ?9 THEN ?10 ELSE rate_limit END,
             concurrency = CASE WHEN ?11 THEN ?12 ELSE concurrency END
         WHERE seq = ?1",
    )
    .store()?
    .execute(params![
        seq,
        patch.url,
        filter.is_some(),
        filter.flatten(),
        patch.description.is_some(),
        patch.description.clone().flatten(),
        headers.is_some(),
        headers.flatten(),
        patch.rate_limit.is_some(),
        patch.rate_limit.flatten(),
        patch.concurrency.is_some(),
        patch.concurrency.flatten(),
    ])
    .store()?;
    if let Some(ordering) = patch.ordering {
        crate::ops::orgs::set_ordering(conn, org, id, ordering)?;
    }
    if patch.enabled == Some(false) && was_enabled {
        conn.prepare_cached(
            "UPDATE endpoints SET enabled = 0, disabled_reason = ?2 WHERE seq = ?1",
        )
        .store()?
        .execute(params![seq, DISABLED_BY_REQUEST])
        .store()?;
    }
    // Disabling, or enabling over what a disable left behind: at most one batch here, the
    // rest in writes of their own (`triggers_core::store::update_in_batches`).
    let failed = if patch.enabled.is_some() { fail_left_behind(conn, org, id, now)? } else { 0 };
    if patch.enabled == Some(true) && !was_enabled {
        conn.prepare_cached(
            "UPDATE endpoints SET enabled = 1, disabled_reason = NULL, failing_since = NULL
             WHERE seq = ?1",
        )
        .store()?
        .execute([seq])
        .store()?;
    }
    let endpoint = endpoint(conn, org, id)?
        .ok_or_else(|| triggers_core::StoreError::Corrupt("updated endpoint vanished".into()))?;
    if endpoint.enabled != was_enabled {
        announce(conn, &endpoint, now)?;
    }
    Ok(Some(EndpointUpdate { endpoint, was_enabled, failed }))
}

/// One write of `EndpointStore::finish_disabling`: fails at most [`BACKLOG_BATCH`]
/// outstanding deliveries of a disabled endpoint with its reason; 0 for an enabled, unknown
/// or foreign one.
pub(crate) fn fail_left_behind(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
    now: Timestamp,
) -> StoreResult<u64> {
    let mut find = conn
        .prepare_cached(
            "SELECT seq, disabled_reason FROM endpoints
             WHERE id = ?1 AND org_id = ?2 AND enabled = 0",
        )
        .store()?;
    let found = query_opt(&mut find, params![id.0.as_bytes(), org.0.as_bytes()], |row| {
        Ok((codec::int(row, 0)?, codec::opt_text(row, 1)?))
    })?;
    drop(find);
    let Some((seq, reason)) = found else { return Ok(0) };
    fail_outstanding(conn, seq, reason.as_deref().unwrap_or(DISABLED_BY_REQUEST), micros(now))
}

/// `EndpointStore::unfinished_disables`: each disabled endpoint is one probe of the
/// deliveries' key.
pub(crate) fn unfinished_disables(
    conn: &Connection,
) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT org_id, id FROM endpoints e
             WHERE enabled = 0 AND EXISTS (SELECT 1 FROM deliveries WHERE endpoint_seq = e.seq)",
        )
        .store()?;
    query_vec(&mut stmt, [], |row| {
        Ok((OrganizationId(codec::uuid(row, 0)?), EndpointId(codec::uuid(row, 1)?)))
    })
}

/// The failed deliveries of endpoint `?1` whose event was created in `[?2, ?3)`, oldest first,
/// at most `?4`: a range of `failed_deliveries_by_age`, never a walk of the endpoint's other
/// failed deliveries (a recover that finds nothing costs one rate-limit unit, so it must
/// cost little on the writer).
pub(crate) const RECOVER_PICK_SQL: &str = "SELECT event_seq FROM failed_deliveries
     WHERE endpoint_seq = ?1 AND event_created_at >= ?2 AND event_created_at < ?3
     ORDER BY event_created_at, event_seq LIMIT ?4";

/// `EndpointStore::recover`.
pub(crate) fn recover(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
    query: RecoverQuery,
    now: Timestamp,
) -> StoreResult<Option<Recovered>> {
    let mut find = conn
        .prepare_cached(
            "SELECT seq, enabled, ordering FROM endpoints WHERE id = ?1 AND org_id = ?2",
        )
        .store()?;
    let found = query_opt(&mut find, params![id.0.as_bytes(), org.0.as_bytes()], |row| {
        Ok((codec::int(row, 0)?, codec::int(row, 1)? != 0, codec::int(row, 2)? == 1))
    })?;
    drop(find);
    let Some((seq, enabled, fifo)) = found else { return Ok(None) };
    if !enabled {
        return Ok(Some(Recovered::default()));
    }
    // A seek on `failed_deliveries_by_age` (migration 0010): the window, oldest first.
    let mut pick = conn.prepare_cached(RECOVER_PICK_SQL).store()?;
    let until = query.until.map_or(i64::MAX, micros);
    let p = params![seq, micros(query.since), until, i64::from(query.limit) + 1];
    let mut events = query_vec(&mut pick, p, |row| codec::int(row, 0))?;
    drop(pick);
    let more = events.len() > query.limit as usize;
    events.truncate(query.limit as usize);
    let now = micros(now);
    for event_seq in &events {
        conn.prepare_cached(
            "DELETE FROM failed_deliveries WHERE endpoint_seq = ?1 AND event_seq = ?2",
        )
        .store()?
        .execute([seq, *event_seq])
        .store()?;
        // Oldest first, so a FIFO endpoint's line gets them in event order, at its end.
        crate::ops::events::queue_delivery(conn, *event_seq, seq, now, fifo)?;
        conn.prepare_cached("UPDATE events SET status = 0 WHERE seq = ?1 AND status = 2")
            .store()?
            .execute([event_seq])
            .store()?;
    }
    let queued = u32::try_from(events.len()).unwrap_or(u32::MAX);
    Ok(Some(Recovered { queued, more }))
}

#[cfg(test)]
mod tests {
    use super::RECOVER_PICK_SQL;
    use crate::config::SqliteConfig;

    /// A recover reads its window through `failed_deliveries_by_age`: SQLite's plan is a
    /// search of that index, not a scan of the endpoint's failed deliveries nor a sort.
    #[test]
    fn recover_seeks_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            crate::schema::open_writer(&dir.path().join("t.db"), &SqliteConfig::default()).unwrap();
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {RECOVER_PICK_SQL}")).unwrap();
        let steps: Vec<String> = plan
            .query_map([1, 0, 10, 5], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(steps[0].starts_with("SEARCH failed_deliveries USING"), "{steps:?}");
        assert!(steps[0].contains("INDEX failed_deliveries_by_age"), "{steps:?}");
        assert!(steps[0].contains("event_created_at>? AND event_created_at<?"), "{steps:?}");
    }
}
