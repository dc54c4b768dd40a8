//! `DeliveryHistory`: one endpoint's attempts and deliveries.
//!
//! Every query walks an index that starts with the endpoint (migration
//! `20261202000006_history`), newest first, and stops at the page's limit. An event's
//! position is its id (UUID v7) as a number, so positions order like the `uuid` column.

use async_trait::async_trait;
use sqlx::types::Uuid;
use triggers_core::store::{
    AttemptEntry, AttemptPosition, AttemptQuery, DeliveryEntry, DeliveryHistory, DeliveryQuery,
    DeliveryState, DeliveryStatus, StoreResult,
};
use triggers_core::{clock, EndpointId, OrganizationId, Timestamp};

use crate::error::corrupt;
use crate::rows::{self, get};
use crate::PgStore;

/// `$1` endpoint, `$2` since, `$3`/`$4` the position to stay below, `$5` success filter
/// (NULL: both), `$6` limit.
const ATTEMPTS_SQL: &str = r#"
SELECT a.seq, a.endpoint_id, a.at, a.status_code, a.latency_ms, a.error, a.event_id,
       e.event_type
FROM attempts a JOIN events e ON e.id = a.event_id
WHERE a.endpoint_id = $1 AND a.at >= $2 AND (a.at, a.seq) < ($3, $4)
  AND ($5::boolean IS NULL OR (a.error IS NULL) = $5)
ORDER BY a.at DESC, a.seq DESC
LIMIT $6
"#;

/// `$1` endpoint, `$2` the event id to stay below, `$3` outstanding state filter (NULL:
/// both), `$4` limit, `$5`/`$6`/`$7` whether to read outstanding, failed, delivered ones.
/// Each source reads at most `$4` rows in index order; one statement, so one snapshot.
const DELIVERIES_SQL: &str = r#"
SELECT x.event_id, x.kind, x.attempt, x.at, x.reason, e.event_type, e.created_at
FROM (
    (SELECT d.event_id, d.state AS kind, d.attempt,
            CASE WHEN d.state = 'in_flight' THEN d.lease_expires_at ELSE d.next_attempt_at END
                AS at,
            NULL::text AS reason
     FROM deliveries d
     WHERE $5 AND d.endpoint_id = $1 AND d.event_id < $2
       AND ($3::text IS NULL OR d.state = $3)
     ORDER BY d.event_id DESC
     LIMIT $4)
    UNION ALL
    (SELECT f.event_id, 'failed', 0, f.failed_at, f.reason
     FROM failed_deliveries f
     WHERE $6 AND f.endpoint_id = $1 AND f.event_id < $2
       AND NOT EXISTS (SELECT 1 FROM deliveries d
                       WHERE d.endpoint_id = $1 AND d.event_id = f.event_id)
     ORDER BY f.event_id DESC
     LIMIT $4)
    UNION ALL
    (SELECT a.event_id, 'delivered', 0, max(a.at), NULL
     FROM attempts a
     WHERE $7 AND a.endpoint_id = $1 AND a.error IS NULL AND a.event_id < $2
       AND NOT EXISTS (SELECT 1 FROM deliveries d
                       WHERE d.endpoint_id = $1 AND d.event_id = a.event_id)
       AND NOT EXISTS (SELECT 1 FROM failed_deliveries f
                       WHERE f.endpoint_id = $1 AND f.event_id = a.event_id)
     GROUP BY a.event_id
     ORDER BY a.event_id DESC
     LIMIT $4)
) x
JOIN events e ON e.id = x.event_id
ORDER BY x.event_id DESC
LIMIT $4
"#;

/// Stands for "no lower bound" on attempt times: no attempt finishes before 1970.
const NO_SINCE: Timestamp = Timestamp::UNIX_EPOCH;

impl PgStore {
    /// Whether the endpoint exists and belongs to `org`.
    async fn owns_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM endpoints WHERE id = $1 AND organization_id = $2")
                .bind(id.0)
                .bind(org.0)
                .fetch_optional(self.pool())
                .await
                .map_err(|e| self.fail(e))?;
        Ok(found.is_some())
    }
}

#[async_trait]
impl DeliveryHistory for PgStore {
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>> {
        if !self.owns_endpoint(org, endpoint).await? {
            return Ok(None);
        }
        // No `before`: a position after every real one (year 9999).
        let (before_at, before_seq) = match query.before {
            Some(p) => (p.at, i64::try_from(p.seq).unwrap_or(i64::MAX)),
            None => (clock::from_micros(clock::YEAR_9999_END_MICROS), i64::MAX),
        };
        let found = sqlx::query(ATTEMPTS_SQL)
            .bind(endpoint.0)
            .bind(query.since.unwrap_or(NO_SINCE))
            .bind(before_at)
            .bind(before_seq)
            .bind(query.success)
            .bind(i64::from(query.limit))
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        let entries = found
            .iter()
            .map(|row| {
                let record = rows::attempt(row)?;
                let seq: i64 = get(row, "seq")?;
                Ok(AttemptEntry {
                    position: AttemptPosition {
                        at: record.at,
                        seq: u64::try_from(seq).map_err(|e| corrupt("attempt seq", e))?,
                    },
                    event_id: get::<Uuid>(row, "event_id")?.into(),
                    event_type: get(row, "event_type")?,
                    record,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(entries))
    }

    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
        if !self.owns_endpoint(org, endpoint).await? {
            return Ok(None);
        }
        let wants = |s: DeliveryStatus| query.status.map_or(true, |q| q == s);
        let state = match query.status {
            Some(DeliveryStatus::Pending) => Some("pending"),
            Some(DeliveryStatus::InFlight) => Some("in_flight"),
            _ => None,
        };
        let found = sqlx::query(DELIVERIES_SQL)
            .bind(endpoint.0)
            .bind(query.before.map_or(Uuid::max(), Uuid::from_u128))
            .bind(state)
            .bind(i64::from(query.limit))
            .bind(wants(DeliveryStatus::Pending) || wants(DeliveryStatus::InFlight))
            .bind(wants(DeliveryStatus::Failed))
            .bind(wants(DeliveryStatus::Delivered))
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        let entries = found
            .iter()
            .map(|row| {
                let event_id: Uuid = get(row, "event_id")?;
                let kind: String = get(row, "kind")?;
                let at: Timestamp = get(row, "at")?;
                let attempt: i32 = get(row, "attempt")?;
                let attempt = u32::try_from(attempt).map_err(|e| corrupt("attempt", e))?;
                let state = match kind.as_str() {
                    "pending" => DeliveryState::Pending { attempts: attempt, next_attempt_at: at },
                    "in_flight" => DeliveryState::InFlight { attempt, lease_expires_at: at },
                    "failed" => DeliveryState::Failed { at, reason: get(row, "reason")? },
                    "delivered" => DeliveryState::Delivered { at },
                    other => return Err(corrupt("delivery state", other)),
                };
                Ok(DeliveryEntry {
                    position: event_id.as_u128(),
                    event_id: event_id.into(),
                    event_type: get(row, "event_type")?,
                    event_created_at: get(row, "created_at")?,
                    endpoint_id: endpoint,
                    state,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(entries))
    }
}
