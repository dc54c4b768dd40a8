//! Endpoint lifecycle: lookup, patching, failing the outstanding deliveries of a disabled
//! endpoint, and recovering failed deliveries.
//!
//! Disabling locks the endpoint row `FOR UPDATE` before failing its deliveries: that waits
//! for insert batches that are fanning out to it (they hold `FOR KEY SHARE`), and the sweep
//! then runs with a snapshot that sees their deliveries. Batches that reach the endpoint
//! after the lock read it once it is released, disabled, and give their events a failed
//! delivery for it instead (`insert.rs`).

use sqlx::types::Uuid;
use sqlx::{PgConnection, Row};
use triggers_core::store::{
    operational, Batch, EndpointPatch, EndpointUpdate, RecoverQuery, Recovered, StoreResult,
    BACKLOG_BATCH,
};
use triggers_core::{
    DeliveryOrdering, EndpointId, OrganizationId, Timestamp, TypeGlob, DISABLED_BY_REQUEST,
};

use crate::error::{corrupt, is_retryable_conflict, map, TxError};
use crate::rows::{self, ENDPOINT_COLUMNS};
use crate::PgStore;

/// Fails at most `$4` outstanding deliveries of each of the given endpoints: `$1` endpoint
/// ids, `$2` reasons, `$3` times. Each endpoint's pick is a range of
/// `deliveries_by_endpoint`.
const FAIL_OUTSTANDING_SQL: &str = r#"
WITH x AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS x(endpoint_id, reason, at)
),
picked AS (
    SELECT p.id, x.reason, x.at FROM x
    CROSS JOIN LATERAL (
        SELECT d.id FROM deliveries d WHERE d.endpoint_id = x.endpoint_id LIMIT $4
    ) p
),
gone AS (
    DELETE FROM deliveries d USING picked
    WHERE d.id = picked.id
    RETURNING d.event_id, d.endpoint_id, d.organization_id, picked.reason, picked.at
),
remembered AS (
    INSERT INTO failed_deliveries
        (endpoint_id, event_id, organization_id, reason, failed_at, event_created_at)
    SELECT g.endpoint_id, g.event_id, g.organization_id, g.reason, g.at, e.created_at
    FROM gone g JOIN events e ON e.id = g.event_id
    ON CONFLICT (endpoint_id, event_id)
        DO UPDATE SET reason = excluded.reason, failed_at = excluded.failed_at
),
failed AS (
    UPDATE events SET status = 'failed'
    WHERE id IN (SELECT event_id FROM gone) AND status = 'pending'
)
SELECT (SELECT count(*) FROM gone) AS n, (SELECT count(*) FROM picked) AS found
"#;

/// Remembers failed deliveries (`$1` endpoint ids, `$2` event ids, `$3` reasons, `$4` times).
pub(crate) const RECORD_FAILED_SQL: &str = r#"
INSERT INTO failed_deliveries
    (endpoint_id, event_id, organization_id, reason, failed_at, event_created_at)
SELECT x.endpoint_id, x.event_id, e.organization_id, x.reason, x.at, e.created_at
FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])
    AS x(endpoint_id, event_id, reason, at)
JOIN events e ON e.id = x.event_id
ON CONFLICT (endpoint_id, event_id)
    DO UPDATE SET reason = excluded.reason, failed_at = excluded.failed_at
"#;

const UPDATE_SQL: &str = r#"
UPDATE endpoints SET
    url = coalesce($2, url),
    type_filter = CASE WHEN $3 THEN $4 ELSE type_filter END,
    filter_like = CASE WHEN $3 THEN $5 ELSE filter_like END,
    description = CASE WHEN $6 THEN $7 ELSE description END,
    headers = CASE WHEN $8 THEN $9 ELSE headers END,
    rate_limit = CASE WHEN $10 THEN $11 ELSE rate_limit END,
    concurrency = CASE WHEN $12 THEN $13 ELSE concurrency END
WHERE id = $1
"#;

const RECOVER_SQL: &str = r#"
-- A range of `failed_deliveries_by_age`: the window, oldest first, and nothing else.
WITH picked AS (
    SELECT f.event_id, f.event_created_at FROM failed_deliveries f
    WHERE f.endpoint_id = $1 AND f.event_created_at >= $2
      AND ($3::timestamptz IS NULL OR f.event_created_at < $3)
    ORDER BY f.event_created_at, f.event_id
    LIMIT $4 + 1
),
taken AS (SELECT event_id FROM picked ORDER BY event_created_at, event_id LIMIT $4),
gone AS (
    DELETE FROM failed_deliveries f USING taken
    WHERE f.endpoint_id = $1 AND f.event_id = taken.event_id
    RETURNING f.event_id, f.organization_id
),
queued AS (
    INSERT INTO deliveries
        (id, event_id, organization_id, endpoint_id, state, attempt, next_attempt_at, due_at,
         fifo_seq)
    SELECT triggers_delivery_id(event_id), event_id, organization_id, $1, 'pending', 0, $5, $5,
           -- A FIFO endpoint's recovered deliveries join the end of its line: one sequence
           -- value for the statement, so they follow each other in event id order.
           CASE WHEN $7 THEN (SELECT nextval('deliveries_fifo_seq')) END
    FROM gone
),
revived AS (
    UPDATE events SET status = 'pending'
    WHERE id IN (SELECT event_id FROM gone) AND status = 'failed'
),
-- The events' other outstanding deliveries are no longer their only one: their completions
-- must not take the fast path (`complete.rs`). Locking them waits for a fast completion
-- already under way, which then decided before this recover, as if it had come first.
shared AS (
    UPDATE deliveries d SET shared = true
    WHERE d.event_id IN (SELECT event_id FROM gone) AND NOT d.shared
),
wake AS (SELECT pg_notify($6, '') FROM (SELECT 1 FROM gone LIMIT 1) one)
SELECT (SELECT count(*) FROM gone) AS queued, (SELECT count(*) FROM picked) AS picked,
       (SELECT count(*) FROM wake) AS woke
"#;

/// Fails at most [`BACKLOG_BATCH`] outstanding deliveries of each of `endpoints` (being
/// disabled in this transaction, or disabled) with their reasons: how many it failed, and
/// (for one endpoint) whether it found a whole batch.
pub(crate) async fn fail_outstanding(
    tx: &mut PgConnection,
    endpoints: &[(Uuid, String)],
    at: Timestamp,
) -> Result<Batch, sqlx::Error> {
    if endpoints.is_empty() {
        return Ok(Batch { changed: 0, more: false });
    }
    let mut ids: Vec<Uuid> = endpoints.iter().map(|e| e.0).collect();
    ids.sort_unstable();
    sqlx::query("SELECT 1 FROM endpoints WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(FAIL_OUTSTANDING_SQL)
        .bind(endpoints.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.1.as_str()).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|_| at).collect::<Vec<_>>())
        .bind(i64::try_from(BACKLOG_BATCH).unwrap_or(i64::MAX))
        .fetch_one(&mut *tx)
        .await?;
    let (n, found): (i64, i64) = (row.try_get("n")?, row.try_get("found")?);
    let changed = u64::try_from(n).unwrap_or(0);
    Ok(Batch { changed, more: u64::try_from(found).unwrap_or(0) >= BACKLOG_BATCH as u64 })
}

/// One step of `EndpointStore::finish_disabling`, inside `tx`: locks the endpoint if it is
/// disabled and fails at most [`BACKLOG_BATCH`] of its outstanding deliveries with its
/// reason; 0 for an enabled, unknown or foreign one.
pub(crate) async fn fail_left_behind(
    tx: &mut PgConnection,
    org: OrganizationId,
    id: EndpointId,
    at: Timestamp,
) -> Result<Batch, sqlx::Error> {
    let found = sqlx::query(
        // Locked and read again after any wait: an enable that committed meanwhile (having
        // failed what was left first) leaves nothing to do.
        "SELECT coalesce(disabled_reason, $3) AS reason FROM endpoints
         WHERE id = $1 AND organization_id = $2 AND NOT enabled FOR UPDATE",
    )
    .bind(id.0)
    .bind(org.0)
    .bind(DISABLED_BY_REQUEST)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(found) = found else { return Ok(Batch { changed: 0, more: false }) };
    let reason: String = found.try_get("reason")?;
    fail_outstanding(tx, &[(id.0, reason)], at).await
}

/// `EndpointStore::unfinished_disables`: each disabled endpoint is one probe of
/// `deliveries_by_endpoint`.
pub(crate) const UNFINISHED_DISABLES_SQL: &str = "
SELECT e.organization_id, e.id FROM endpoints e
WHERE NOT e.enabled AND EXISTS (SELECT 1 FROM deliveries d WHERE d.endpoint_id = e.id)";

fn encode_headers(headers: &[(String, String)]) -> StoreResult<Option<String>> {
    if headers.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(headers)
        .map(Some)
        .map_err(|e| triggers_core::StoreError::InvalidInput(e.to_string()))
}

/// Decodes the `headers` column.
pub(crate) fn decode_headers(json: Option<String>) -> StoreResult<Vec<(String, String)>> {
    match json {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("endpoint headers", e)),
    }
}

/// A limit column back into a `u32`.
pub(crate) fn decode_limit(v: Option<i32>) -> StoreResult<Option<u32>> {
    v.map(|v| u32::try_from(v).map_err(|e| corrupt("endpoint limit", e))).transpose()
}

fn limit_i32(v: Option<u32>) -> Option<i32> {
    v.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

impl PgStore {
    /// `EndpointStore::endpoint`.
    pub(crate) async fn find_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
    ) -> StoreResult<Option<triggers_core::Endpoint>> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1 AND organization_id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(org.0)
            .fetch_optional(self.pool())
            .await
            .map_err(map)?;
        row.as_ref().map(rows::endpoint).transpose()
    }

    /// `EndpointStore::update_endpoint`: one transaction that locks the endpoint first, run
    /// again (at most three times) when the database broke a deadlock by rolling it back — a
    /// disable fails the endpoint's in-flight deliveries while holding it, and a disabling
    /// completion that holds one of them may be waiting for the endpoint. A change of
    /// `enabled` records its announcement in the outbox in that transaction and publishes it
    /// once committed (`crate::announce`).
    pub(crate) async fn patch_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        let mut attempt = 0;
        let update = loop {
            match self.patch_once(org, id, patch, now).await {
                Err(TxError::Sql(e)) if attempt < 3 && is_retryable_conflict(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, "endpoint patch rolled back; running it again");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                }
                other => break other.map_err(TxError::into_store)?,
            }
        };
        if let Some(update) = &update {
            if update.endpoint.enabled != update.was_enabled {
                crate::announce::publish_on(self.pool(), org, &[id], self.outbox()).await;
            }
        }
        if patch.ordering.is_some() {
            // A dissolved line's deliveries may be claimable now.
            self.fire_local();
        }
        Ok(update)
    }

    /// One run of [`patch_endpoint`](Self::patch_endpoint)'s transaction.
    async fn patch_once(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> Result<Option<EndpointUpdate>, TxError> {
        let headers = patch.headers.as_deref().map(encode_headers).transpose()?;
        let mut tx = self.pool().begin().await?;
        let found = sqlx::query(
            "SELECT enabled FROM endpoints WHERE id = $1 AND organization_id = $2 FOR UPDATE",
        )
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(found) = found else { return Ok(None) };
        let was_enabled: bool = rows::get(&found, "enabled")?;
        let filter = patch.event_type_filter.as_ref();
        sqlx::query(UPDATE_SQL)
            .bind(id.0)
            .bind(patch.url.as_deref())
            .bind(filter.is_some())
            .bind(filter.and_then(|f| f.as_ref().map(TypeGlob::as_str)))
            .bind(filter.and_then(|f| f.as_ref().map(TypeGlob::to_sql_like)))
            .bind(patch.description.is_some())
            .bind(patch.description.clone().flatten())
            .bind(headers.is_some())
            .bind(headers.flatten())
            .bind(patch.rate_limit.is_some())
            .bind(limit_i32(patch.rate_limit.flatten()))
            .bind(patch.concurrency.is_some())
            .bind(limit_i32(patch.concurrency.flatten()))
            .execute(&mut *tx)
            .await?;
        if let Some(ordering) = patch.ordering {
            crate::orgs::set_ordering(&mut tx, id, ordering).await?;
        }
        if patch.enabled == Some(false) && was_enabled {
            sqlx::query("UPDATE endpoints SET enabled = false, disabled_reason = $2 WHERE id = $1")
                .bind(id.0)
                .bind(DISABLED_BY_REQUEST)
                .execute(&mut *tx)
                .await?;
        }
        // Disabling, or enabling over what a disable left behind: at most one batch here,
        // the rest in transactions of their own (`triggers_core::store::update_in_batches`).
        let failed = match patch.enabled {
            Some(_) => fail_left_behind(&mut tx, org, id, now).await?.changed,
            None => 0,
        };
        if patch.enabled == Some(true) && !was_enabled {
            sqlx::query(
                "UPDATE endpoints SET enabled = true, disabled_reason = NULL, failing_since = NULL
                 WHERE id = $1",
            )
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        }
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.0).fetch_one(&mut *tx).await?;
        let endpoint = rows::endpoint(&row)?;
        if endpoint.enabled != was_enabled {
            let reason = endpoint.disabled_reason.as_deref();
            let event =
                operational::endpoint_changed(id, &endpoint.url, endpoint.enabled, reason, now)?;
            crate::announce::record(&mut tx, &[(org, event)]).await?;
        }
        tx.commit().await?;
        Ok(Some(EndpointUpdate { endpoint, was_enabled, failed }))
    }

    /// One step of `EndpointStore::finish_disabling`: a transaction of its own, run again (at
    /// most three times) when the database broke a deadlock by rolling it back — it holds the
    /// endpoint while it fails the deliveries, and a disabling completion holding one of them
    /// may be waiting for the endpoint (as for [`patch_endpoint`](Self::patch_endpoint)).
    pub(crate) async fn fail_left_behind(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<Batch> {
        let once = || async {
            let mut tx = self.pool().begin().await?;
            let failed = fail_left_behind(&mut tx, org, id, now).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(failed)
        };
        let mut attempt = 0;
        loop {
            match once().await {
                Err(e) if attempt < 3 && is_retryable_conflict(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, "failing a disabled endpoint's deliveries rolled \
                        back; running it again");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                }
                other => return other.map_err(|e| self.fail(e)),
            }
        }
    }

    /// `EndpointStore::recover`: one transaction; the endpoint's row lock serializes it with
    /// disabling and with other recovers of the same endpoint.
    pub(crate) async fn recover_failed(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        let mut tx = self.pool().begin().await.map_err(map)?;
        // The row lock also keeps the ordering read here until the commit.
        let found = sqlx::query(
            "SELECT enabled, ordering FROM endpoints
             WHERE id = $1 AND organization_id = $2 FOR UPDATE",
        )
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
        let Some(found) = found else { return Ok(None) };
        if !rows::get::<bool>(&found, "enabled")? {
            return Ok(Some(Recovered::default()));
        }
        let fifo = rows::get::<String>(&found, "ordering")? == DeliveryOrdering::Fifo.as_str();
        let row = sqlx::query(RECOVER_SQL)
            .bind(id.0)
            .bind(query.since)
            .bind(query.until)
            .bind(i64::from(query.limit))
            .bind(now)
            .bind(self.channel())
            .bind(fifo)
            .fetch_one(&mut *tx)
            .await
            .map_err(map)?;
        tx.commit().await.map_err(map)?;
        let queued = rows::count(&row, "queued")?;
        let picked = rows::count(&row, "picked")?;
        if rows::count(&row, "woke")? > 0 {
            self.fire_local();
        }
        Ok(Some(Recovered {
            queued: u32::try_from(queued).unwrap_or(u32::MAX),
            more: picked > u64::from(query.limit),
        }))
    }
}
