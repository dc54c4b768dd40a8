//! `DeliveryHistory`: one endpoint's attempts and deliveries, read on a reader connection.
//!
//! Every query walks an index that starts with the endpoint (migration 0006), newest first,
//! and stops at the page's limit. An event's position is its `seq` (insertion order).

use rusqlite::{params, Connection, Row};
use triggers_core::domain::event::AttemptRecord;
use triggers_core::store::{
    AttemptEntry, AttemptPosition, AttemptQuery, DeliveryEntry, DeliveryQuery, DeliveryState,
    DeliveryStatus, StoreResult,
};
use triggers_core::{EndpointId, EventId, OrganizationId};

use crate::codec::{self, query_vec};
use crate::error::{corrupt, SqlResultExt};
use crate::ops::orgs::endpoint_seq;
use crate::ops::reads::snapshot;

/// A position or row number from the API side, clamped into SQLite's integer range.
fn clamp(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn status_code(row: &Row<'_>, at: usize) -> StoreResult<Option<u16>> {
    match codec::opt_int(row, at)? {
        Some(code) => Ok(Some(u16::try_from(code).map_err(corrupt)?)),
        None => Ok(None),
    }
}

/// `DeliveryHistory::endpoint_attempts`.
pub(crate) fn endpoint_attempts(
    conn: &Connection,
    org: OrganizationId,
    endpoint: EndpointId,
    query: &AttemptQuery,
) -> StoreResult<Option<Vec<AttemptEntry>>> {
    snapshot(conn, |conn| {
        if endpoint_seq(conn, org, endpoint)?.is_none() {
            return Ok(None);
        }
        let since = query.since.map_or(i64::MIN, codec::micros);
        let (before_at, before_seq) =
            query.before.map_or((i64::MAX, i64::MAX), |p| (codec::micros(p.at), clamp(p.seq)));
        let success: Option<bool> = query.success;
        let mut stmt = conn
            .prepare_cached(
                "SELECT a.seq, a.at, a.status_code, a.latency_ms, a.error, e.id, e.event_type
                 FROM attempts a JOIN events e ON e.seq = a.event_seq
                 WHERE a.endpoint_id = ?1 AND a.at >= ?2 AND (a.at, a.seq) < (?3, ?4)
                   AND (?5 IS NULL OR (a.error IS NULL) = ?5)
                 ORDER BY a.at DESC, a.seq DESC
                 LIMIT ?6",
            )
            .store()?;
        let args = params![
            endpoint.0.as_bytes(),
            since,
            before_at,
            before_seq,
            success,
            i64::from(query.limit)
        ];
        let entries = query_vec(&mut stmt, args, |row| {
            let at = codec::ts(row, 1)?;
            Ok(AttemptEntry {
                position: AttemptPosition { at, seq: codec::unsigned(row, 0)? },
                event_id: EventId(codec::uuid(row, 5)?),
                event_type: codec::text(row, 6)?,
                record: AttemptRecord {
                    endpoint_id: endpoint,
                    at,
                    status_code: status_code(row, 2)?,
                    latency_ms: codec::unsigned(row, 3)?,
                    error: codec::opt_text(row, 4)?,
                },
            })
        })?;
        Ok(Some(entries))
    })
}

/// `DeliveryHistory::endpoint_deliveries`: up to `limit` rows from each source that the
/// status allows (outstanding, failed, delivered), merged newest event first.
pub(crate) fn endpoint_deliveries(
    conn: &Connection,
    org: OrganizationId,
    endpoint: EndpointId,
    query: &DeliveryQuery,
) -> StoreResult<Option<Vec<DeliveryEntry>>> {
    snapshot(conn, |conn| {
        let Some(ep) = endpoint_seq(conn, org, endpoint)? else { return Ok(None) };
        let before = query.before.map_or(i64::MAX, clamp);
        let limit = i64::from(query.limit);
        let wants = |s: DeliveryStatus| query.status.map_or(true, |q| q == s);
        let mut found: Vec<(i64, DeliveryEntry)> = Vec::new();
        let head =
            |row: &Row<'_>| -> StoreResult<(i64, EventId, String, triggers_core::Timestamp)> {
                Ok((
                    codec::int(row, 0)?,
                    EventId(codec::uuid(row, 1)?),
                    codec::text(row, 2)?,
                    codec::ts(row, 3)?,
                ))
            };
        let entry = |(seq, event_id, event_type, created), state| {
            let position = u128::try_from(seq).map_err(corrupt)?;
            let e = DeliveryEntry {
                position,
                event_id,
                event_type,
                event_created_at: created,
                endpoint_id: endpoint,
                state,
            };
            Ok::<_, triggers_core::StoreError>((seq, e))
        };
        if wants(DeliveryStatus::Pending) || wants(DeliveryStatus::InFlight) {
            // 0 pending, 1 in flight; -1: both.
            let state = match query.status {
                Some(DeliveryStatus::Pending) => 0,
                Some(DeliveryStatus::InFlight) => 1,
                _ => -1,
            };
            let mut stmt = conn
                .prepare_cached(
                    "SELECT d.event_seq, e.id, e.event_type, e.created_at,
                            d.state, d.attempt, d.due_at
                     FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     WHERE d.endpoint_seq = ?1 AND d.event_seq < ?2
                       AND (?3 < 0 OR d.state = ?3)
                     ORDER BY d.event_seq DESC
                     LIMIT ?4",
                )
                .store()?;
            let rows = query_vec(&mut stmt, params![ep, before, state, limit], |row| {
                let attempts: u32 = codec::unsigned(row, 5)?;
                let due = codec::ts(row, 6)?;
                let state = match codec::int(row, 4)? {
                    1 => DeliveryState::InFlight { attempt: attempts, lease_expires_at: due },
                    _ => DeliveryState::Pending { attempts, next_attempt_at: due },
                };
                entry(head(row)?, state)
            })?;
            found.extend(rows);
        }
        if wants(DeliveryStatus::Failed) {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT f.event_seq, e.id, e.event_type, e.created_at, f.failed_at, f.reason
                     FROM failed_deliveries f JOIN events e ON e.seq = f.event_seq
                     WHERE f.endpoint_seq = ?1 AND f.event_seq < ?2
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.endpoint_seq = ?1 AND d.event_seq = f.event_seq)
                     ORDER BY f.event_seq DESC
                     LIMIT ?3",
                )
                .store()?;
            let rows = query_vec(&mut stmt, params![ep, before, limit], |row| {
                let state =
                    DeliveryState::Failed { at: codec::ts(row, 4)?, reason: codec::text(row, 5)? };
                entry(head(row)?, state)
            })?;
            found.extend(rows);
        }
        if wants(DeliveryStatus::Delivered) {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT a.event_seq, e.id, e.event_type, e.created_at, max(a.at)
                     FROM attempts a JOIN events e ON e.seq = a.event_seq
                     WHERE a.endpoint_id = ?1 AND a.error IS NULL AND a.event_seq < ?2
                       AND NOT EXISTS (SELECT 1 FROM deliveries d
                                       WHERE d.endpoint_seq = ?3 AND d.event_seq = a.event_seq)
                       AND NOT EXISTS (SELECT 1 FROM failed_deliveries f
                                       WHERE f.endpoint_seq = ?3 AND f.event_seq = a.event_seq)
                     GROUP BY a.event_seq
                     ORDER BY a.event_seq DESC
                     LIMIT ?4",
                )
                .store()?;
            let args = params![endpoint.0.as_bytes(), before, ep, limit];
            let rows = query_vec(&mut stmt, args, |row| {
                entry(head(row)?, DeliveryState::Delivered { at: codec::ts(row, 4)? })
            })?;
            found.extend(rows);
        }
        found.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        found.truncate(query.limit as usize);
        Ok(Some(found.into_iter().map(|(_, e)| e).collect()))
    })
}
