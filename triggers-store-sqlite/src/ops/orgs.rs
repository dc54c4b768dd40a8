//! Organizations and endpoints. Writes run on the writer; `endpoints` on a reader.

use rusqlite::{params, Connection};
use triggers_core::store::{NewEndpoint, StoreResult, BACKLOG_BATCH};
use triggers_core::{
    DeliveryOrdering, Endpoint, EndpointId, KeyHash, Organization, OrganizationId, Secret,
    StoreError, Timestamp, TypeGlob,
};

use crate::codec::{self, micros, query_opt, query_vec};
use crate::error::{corrupt, SqlResultExt};
use crate::ops::events::{remember_in_flight, Cancelling};
use crate::ops::lifecycle::{endpoint_row, ENDPOINT_COLUMNS};

/// `OrgStore::create_organization`. A taken id or key hash is a `Conflict`.
pub(crate) fn create_org(conn: &Connection, org: &Organization, key: &KeyHash) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO organizations (id, name, tier, key_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .store()?
    .execute(params![
        org.id.0.as_bytes(),
        org.name,
        org.tier.as_str(),
        &key.as_bytes()[..],
        micros(org.created_at)
    ])
    .store()?;
    Ok(())
}

/// Fails with `InvalidInput` unless the organization exists.
pub(crate) fn require_org(conn: &Connection, org: &OrganizationId) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM organizations WHERE id = ?1").store()?;
    match query_opt(&mut stmt, [org.0.as_bytes()], |_| Ok(()))? {
        Some(()) => Ok(()),
        None => Err(StoreError::InvalidInput(format!("no organization {org}"))),
    }
}

/// `OrgStore::replace_key`.
pub(crate) fn replace_key(
    conn: &Connection,
    id: OrganizationId,
    key: &KeyHash,
) -> StoreResult<bool> {
    let n = conn
        .prepare_cached("UPDATE organizations SET key_hash = ?2 WHERE id = ?1")
        .store()?
        .execute(params![id.0.as_bytes(), &key.as_bytes()[..]])
        .store()?;
    Ok(n > 0)
}

/// `EndpointStore::create_endpoint`.
pub(crate) fn create_endpoint(
    conn: &Connection,
    org: OrganizationId,
    new: &NewEndpoint,
    max_endpoints: u32,
) -> StoreResult<Endpoint> {
    require_org(conn, &org)?;
    // The writer runs one request at a time: the count and the insert cannot interleave
    // with another creation.
    let mut count =
        conn.prepare_cached("SELECT count(*) FROM endpoints WHERE org_id = ?1").store()?;
    let n = query_opt(&mut count, [org.0.as_bytes()], |r| codec::int(r, 0))?.unwrap_or(0);
    drop(count);
    if n >= i64::from(max_endpoints) {
        return Err(StoreError::LimitExceeded {
            limit: "webhook endpoints per organization",
            max: max_endpoints.into(),
        });
    }
    conn.prepare_cached(
        "INSERT INTO endpoints (id, org_id, url, type_filter, secret, enabled, created_at, ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7)",
    )
    .store()?
    .execute(params![
        new.id.0.as_bytes(),
        org.0.as_bytes(),
        new.url,
        new.event_type_filter.as_ref().map(TypeGlob::as_str),
        new.secret.expose(),
        micros(new.created_at),
        ordering_code(new.ordering)
    ])
    .store()?;
    Ok(Endpoint {
        id: new.id,
        organization_id: org,
        url: new.url.clone(),
        event_type_filter: new.event_type_filter.clone(),
        secret: new.secret.clone(),
        enabled: true,
        disabled_reason: None,
        created_at: new.created_at,
        description: None,
        headers: Vec::new(),
        rate_limit: None,
        concurrency: None,
        ordering: new.ordering,
    })
}

/// `EndpointStore::endpoints`, oldest first.
pub(crate) fn endpoints(conn: &Connection, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE org_id = ?1 ORDER BY created_at, seq"
    );
    let mut stmt = conn.prepare_cached(&sql).store()?;
    query_vec(&mut stmt, [org.0.as_bytes()], endpoint_row)
}

/// `EndpointStore::delete_endpoint`: the endpoint and its outstanding deliveries go.
pub(crate) fn delete_endpoint(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
) -> StoreResult<bool> {
    let Some(seq) = endpoint_seq(conn, org, id)? else { return Ok(false) };
    // Cancelled = deleted (the key starts with `endpoint_seq`, migration 0009): a worker
    // holding one finds its completion stale. An in-flight one is remembered, so that its
    // attempt is still recorded when it ends (as after a replay).
    remember_in_flight(conn, Cancelling::ToEndpoint(seq))?;
    conn.prepare_cached("DELETE FROM deliveries WHERE endpoint_seq = ?1")
        .store()?
        .execute([seq])
        .store()?;
    conn.prepare_cached("DELETE FROM failed_deliveries WHERE endpoint_seq = ?1")
        .store()?
        .execute([seq])
        .store()?;
    conn.prepare_cached("DELETE FROM endpoints WHERE seq = ?1").store()?.execute([seq]).store()?;
    Ok(true)
}

/// The endpoint's row number, if it belongs to `org`.
pub(crate) fn endpoint_seq(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
) -> StoreResult<Option<i64>> {
    let mut find =
        conn.prepare_cached("SELECT seq FROM endpoints WHERE id = ?1 AND org_id = ?2").store()?;
    query_opt(&mut find, params![id.0.as_bytes(), org.0.as_bytes()], |row| codec::int(row, 0))
}

/// [`BACKLOG_BATCH`] as a statement parameter.
fn backlog_batch() -> i64 {
    i64::try_from(BACKLOG_BATCH).unwrap_or(i64::MAX)
}

/// One write before [`delete_endpoint`] on a large backlog: cancels at most
/// [`BACKLOG_BATCH`] pending deliveries of the endpoint and forgets at most as many failed
/// ones (ranges of both tables' keys, which start with `endpoint_seq`); returns the larger
/// count, 0 for an unknown or foreign endpoint. In-flight deliveries are left to the delete,
/// which remembers them.
pub(crate) fn cancel_backlog(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
) -> StoreResult<u64> {
    let Some(seq) = endpoint_seq(conn, org, id)? else { return Ok(0) };
    let cancelled = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE endpoint_seq = ?1 AND event_seq IN
                 (SELECT event_seq FROM deliveries WHERE endpoint_seq = ?1 AND state = 0 LIMIT ?2)",
        )
        .store()?
        .execute([seq, backlog_batch()])
        .store()?;
    let forgotten = conn
        .prepare_cached(
            "DELETE FROM failed_deliveries WHERE endpoint_seq = ?1 AND event_seq IN
                 (SELECT event_seq FROM failed_deliveries WHERE endpoint_seq = ?1 LIMIT ?2)",
        )
        .store()?
        .execute([seq, backlog_batch()])
        .store()?;
    Ok(cancelled.max(forgotten) as u64)
}

/// One write before a switch to parallel on a long line: turns at most [`BACKLOG_BATCH`] of
/// the endpoint's ordered deliveries, oldest first, into parallel ones (a range of
/// `deliveries_line`); returns how many, 0 for an unknown or foreign endpoint.
pub(crate) fn shorten_line(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
) -> StoreResult<u64> {
    let Some(seq) = endpoint_seq(conn, org, id)? else { return Ok(0) };
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET line = NULL WHERE endpoint_seq = ?1 AND event_seq IN
                 (SELECT event_seq FROM deliveries WHERE endpoint_seq = ?1 AND line IS NOT NULL
                  ORDER BY line LIMIT ?2)",
        )
        .store()?
        .execute([seq, backlog_batch()])
        .store()?;
    Ok(n as u64)
}

/// The stored code of an ordering: 0 parallel, 1 fifo.
fn ordering_code(ordering: DeliveryOrdering) -> i64 {
    match ordering {
        DeliveryOrdering::Parallel => 0,
        DeliveryOrdering::Fifo => 1,
    }
}

/// `EndpointStore::set_endpoint_ordering`. Switching to parallel dissolves the line: every
/// ordered delivery of the endpoint becomes a parallel one.
pub(crate) fn set_ordering(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
    ordering: DeliveryOrdering,
) -> StoreResult<bool> {
    let Some(seq) = endpoint_seq(conn, org, id)? else { return Ok(false) };
    conn.prepare_cached("UPDATE endpoints SET ordering = ?2 WHERE seq = ?1")
        .store()?
        .execute(params![seq, ordering_code(ordering)])
        .store()?;
    if ordering == DeliveryOrdering::Parallel {
        conn.prepare_cached(
            "UPDATE deliveries SET line = NULL WHERE endpoint_seq = ?1 AND line IS NOT NULL",
        )
        .store()?
        .execute([seq])
        .store()?;
    }
    Ok(true)
}

/// `EndpointStore::rotate_endpoint_secret`.
pub(crate) fn rotate_secret(
    conn: &Connection,
    org: OrganizationId,
    id: EndpointId,
    secret: &Secret,
    previous_valid_until: Timestamp,
) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE endpoints SET prev_secret = secret, prev_valid_until = ?4, secret = ?3
             WHERE id = ?1 AND org_id = ?2",
        )
        .store()?
        .execute(params![
            id.0.as_bytes(),
            org.0.as_bytes(),
            secret.expose(),
            micros(previous_valid_until)
        ])
        .store()?;
    Ok(n > 0)
}

/// Endpoints per `rewrite_secrets` batch.
const REWRITE_BATCH: i64 = 200;

/// `EndpointStore::rewrite_secrets`, for the endpoints after `after_seq`: one batch. Returns
/// `(rewritten, last seq seen)`; the last seq is `None` when no endpoint was left. Runs with
/// `secure_delete` on, so the replaced text is overwritten in the file.
pub(crate) fn rewrite_secrets_batch(
    conn: &Connection,
    after_seq: i64,
    rewrite: &(dyn Fn(EndpointId, &Secret) -> Option<Secret> + Send + Sync),
) -> StoreResult<(u64, Option<i64>)> {
    let secure: i64 = conn.query_row("PRAGMA secure_delete", [], |r| r.get(0)).store()?;
    conn.execute_batch("PRAGMA secure_delete = ON").store()?;
    let result = rewrite_secrets_inner(conn, after_seq, rewrite);
    conn.execute_batch(&format!("PRAGMA secure_delete = {secure}")).store()?;
    result
}

fn rewrite_secrets_inner(
    conn: &Connection,
    after_seq: i64,
    rewrite: &(dyn Fn(EndpointId, &Secret) -> Option<Secret> + Send + Sync),
) -> StoreResult<(u64, Option<i64>)> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, id, secret, prev_secret FROM endpoints WHERE seq > ?1
             ORDER BY seq LIMIT ?2",
        )
        .store()?;
    let rows = query_vec(&mut stmt, params![after_seq, REWRITE_BATCH], |row| {
        Ok((
            codec::int(row, 0)?,
            EndpointId(codec::uuid(row, 1)?),
            codec::text(row, 2)?,
            codec::opt_text(row, 3)?,
        ))
    })?;
    drop(stmt);
    let last = rows.last().map(|r| r.0);
    let mut n = 0;
    for (seq, id, secret, previous) in rows {
        let current = Secret::parse(secret.as_str()).map_err(corrupt)?;
        if let Some(new) = rewrite(id, &current) {
            n += conn
                .prepare_cached("UPDATE endpoints SET secret = ?2 WHERE seq = ?1 AND secret = ?3")
                .store()?
                .execute(params![seq, new.expose(), secret])
                .store()? as u64;
        }
        if let Some(previous) = previous {
            let old = Secret::parse(previous.as_str()).map_err(corrupt)?;
            if let Some(new) = rewrite(id, &old) {
                n += conn
                    .prepare_cached(
                        "UPDATE endpoints SET prev_secret = ?2 WHERE seq = ?1 AND prev_secret = ?3",
                    )
                    .store()?
                    .execute(params![seq, new.expose(), previous])
                    .store()? as u64;
            }
        }
    }
    Ok((n, last))
}
