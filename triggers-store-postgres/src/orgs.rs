//! Organizations, API key hashes and webhook endpoints.

use async_trait::async_trait;
use sqlx::types::Uuid;
use triggers_core::store::operational::AnnouncementBacklog;
use triggers_core::store::{
    Batch, EndpointPatch, EndpointStore, EndpointUpdate, NewEndpoint, OrgStore, RecoverQuery,
    Recovered, SecretRewrite, StoreResult, BACKLOG_BATCH,
};
use triggers_core::{
    DeliveryOrdering, Endpoint, EndpointId, KeyHash, Organization, OrganizationId, Secret,
    StoreError, Timestamp,
};

use crate::rows::{self, ENDPOINT_COLUMNS, ORG_COLUMNS};
use crate::PgStore;

#[async_trait]
impl OrgStore for PgStore {
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO organizations (id, name, tier, key_hash, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org.id.0)
        .bind(&org.name)
        .bind(org.tier.as_str())
        .bind(&key.as_bytes()[..])
        .bind(org.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE key_hash = $1");
        let row = sqlx::query(&sql)
            .bind(&key.as_bytes()[..])
            .fetch_optional(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        row.as_ref().map(rows::organization).transpose()
    }

    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.0)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        row.as_ref().map(rows::organization).transpose()
    }

    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE organizations SET key_hash = $2 WHERE id = $1")
            .bind(id.0)
            .bind(&key.as_bytes()[..])
            .execute(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// `SELECT 1`, bounded by the acquire timeout. When no connection can be had, one
    /// direct connection attempt (at most one a second) finds the cause for the error.
    async fn ping(&self) -> StoreResult<()> {
        if !self.is_prepared() {
            let cause = self.connect_cause().await.unwrap_or_else(|| "migrations pending".into());
            return Err(StoreError::Unavailable(format!(
                "the database has not been ready since the start: {cause}"
            )));
        }
        if let Err(e) = sqlx::query("SELECT 1").execute(self.pool()).await {
            if matches!(e, sqlx::Error::PoolTimedOut) {
                self.connect_cause().await;
            }
            return Err(self.fail(e));
        }
        Ok(())
    }
}

#[async_trait]
impl EndpointStore for PgStore {
    async fn create_endpoint(
        &self,
        org: OrganizationId,
        endpoint: &NewEndpoint,
    ) -> StoreResult<Endpoint> {
        let sql = format!(
            "INSERT INTO endpoints
                 (id, organization_id, url, type_filter, filter_like, secret, created_at, ordering)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let filter = endpoint.event_type_filter.as_ref();
        // The organization's row lock serialises creations (also across nodes), so the
        // count, taken by the next statement with a fresh snapshot, cannot go stale.
        let mut tx = self.pool().begin().await.map_err(|e| self.fail(e))?;
        sqlx::query("SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE")
            .bind(org.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM endpoints WHERE organization_id = $1")
                .bind(org.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.fail(e))?;
        let max = self.limits().max_endpoints;
        if count >= i64::from(max) {
            return Err(StoreError::LimitExceeded {
                limit: "webhook endpoints per organization",
                max: max.into(),
            });
        }
        let row = sqlx::query(&sql)
            .bind(endpoint.id.0)
            .bind(org.0)
            .bind(&endpoint.url)
            .bind(filter.map(|f| f.as_str()))
            .bind(filter.map(|f| f.to_sql_like()))
            .bind(endpoint.secret.expose())
            .bind(endpoint.created_at)
            .bind(endpoint.ordering.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        rows::endpoint(&row)
    }

    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints
             WHERE organization_id = $1 ORDER BY created_at, seq"
        );
        let found =
            sqlx::query(&sql).bind(org.0).fetch_all(self.pool()).await.map_err(|e| self.fail(e))?;
        found.iter().map(rows::endpoint).collect()
    }

    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
        self.find_endpoint(org, id).await
    }

    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        // The endpoint's change is one transaction, failing its backlog more transactions of
        // at most `BACKLOG_BATCH` deliveries each, so the endpoint's lock is never held for
        // the whole backlog.
        if patch.ordering == Some(DeliveryOrdering::Parallel) {
            self.shorten_line(org, id).await?;
        }
        let update = || self.patch_endpoint(org, id, patch, now);
        let batch = || self.fail_left_behind(org, id, now);
        triggers_core::store::update_in_batches(patch.enabled, update, batch).await
    }

    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        triggers_core::store::in_batches(|| self.fail_left_behind(org, id, now)).await
    }

    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
        let found = sqlx::query(crate::lifecycle::UNFINISHED_DISABLES_SQL)
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        found
            .iter()
            .map(|row| {
                let org: sqlx::types::Uuid = crate::rows::get(row, "organization_id")?;
                let id: sqlx::types::Uuid = crate::rows::get(row, "id")?;
                Ok((OrganizationId(org), EndpointId(id)))
            })
            .collect()
    }

    /// One aggregate over the outbox (`announce.rs`), whose rows are normally gone within a
    /// call.
    async fn announcement_backlog(&self) -> StoreResult<AnnouncementBacklog> {
        // The age by the database's clock, which recorded the rows.
        let (waiting, micros): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), (extract(epoch FROM clock_timestamp() - min(recorded_at))
                               * 1000000)::bigint FROM announcements",
        )
        .fetch_one(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
        let age = |us: i64| std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(AnnouncementBacklog {
            waiting: u64::try_from(waiting).unwrap_or(0),
            oldest_waited: micros.map(age),
        })
    }

    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        self.recover_failed(org, id, query, now).await
    }

    /// Two statements in one transaction: the `DELETE` first, so that it waits for any insert
    /// batch that is fanning out to this endpoint (those lock it `FOR KEY SHARE`); the
    /// cancellation then runs with a fresh snapshot and also sees their deliveries.
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        // A large backlog first, in transactions of `BACKLOG_BATCH` each.
        triggers_core::store::in_batches(|| self.backlog_batch(CANCEL_BACKLOG_SQL, org, id))
            .await?;
        let mut tx = self.pool().begin().await.map_err(|e| self.fail(e))?;
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1 AND organization_id = $2")
            .bind(id.0)
            .bind(org.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        // Cancelled = deleted: a worker holding a lease finds no row to complete. An
        // in-flight one is remembered, so that its attempt is still recorded when it ends
        // (as after a replay).
        sqlx::query(
            "WITH cancelled AS (
                 DELETE FROM deliveries WHERE endpoint_id = $1
                 RETURNING id, event_id, state, lease_owner, attempt, lease_expires_at
             )
             INSERT INTO superseded_deliveries
                 (id, event_id, lease_owner, attempt, lease_expires_at)
             SELECT id, event_id, lease_owner, attempt, lease_expires_at FROM cancelled
             WHERE state = 'in_flight' AND lease_owner IS NOT NULL
               AND lease_expires_at IS NOT NULL
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.fail(e))?;
        sqlx::query("DELETE FROM failed_deliveries WHERE endpoint_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.fail(e))?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(true)
    }

    /// Locks the endpoint `FOR UPDATE` first: that waits for insert batches fanning out to it
    /// (they hold `FOR KEY SHARE`) and holds new ones off until the commit, so no delivery is
    /// queued under the old ordering after the switch. Switching to parallel then turns the
    /// line's deliveries into parallel ones (with a fresh snapshot that sees those batches).
    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> StoreResult<bool> {
        if ordering == DeliveryOrdering::Parallel {
            self.shorten_line(org, id).await?;
        }
        let mut tx = self.pool().begin().await.map_err(|e| self.fail(e))?;
        let found = sqlx::query(
            "SELECT 1 AS found FROM endpoints WHERE id = $1 AND organization_id = $2 FOR UPDATE",
        )
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.fail(e))?;
        if found.is_none() {
            return Ok(false);
        }
        set_ordering(&mut tx, id, ordering).await.map_err(|e| self.fail(e))?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        self.fire_local();
        Ok(true)
    }

    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE endpoints
             SET previous_secret = secret, previous_valid_until = $3, secret = $4
             WHERE id = $1 AND organization_id = $2",
        )
        .bind(id.0)
        .bind(org.0)
        .bind(previous_valid_until)
        .bind(secret.expose())
        .execute(self.pool())
        .await
        .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn rewrite_secrets(&self, rewrite: SecretRewrite) -> StoreResult<u64> {
        const BATCH: i64 = 200;
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let rows: Vec<(i64, Uuid, String, Option<String>)> = sqlx::query_as(
                "SELECT seq, id, secret, previous_secret FROM endpoints
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(BATCH)
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
            let Some(last) = rows.last().map(|r| r.0) else { return Ok(total) };
            after = last;
            let mut tx = self.pool().begin().await.map_err(|e| self.fail(e))?;
            for (seq, id, secret, previous) in rows {
                let id = EndpointId(id);
                let current = Secret::parse(secret.as_str()).map_err(StoreError::Corrupt)?;
                if let Some(new) = rewrite(id, &current) {
                    let done = sqlx::query(
                        "UPDATE endpoints SET secret = $2 WHERE seq = $1 AND secret = $3",
                    )
                    .bind(seq)
                    .bind(new.expose())
                    .bind(&secret)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.fail(e))?;
                    total += done.rows_affected();
                }
                if let Some(previous) = previous {
                    let old = Secret::parse(previous.as_str()).map_err(StoreError::Corrupt)?;
                    if let Some(new) = rewrite(id, &old) {
                        let done = sqlx::query(
                            "UPDATE endpoints SET previous_secret = $2
                             WHERE seq = $1 AND previous_secret = $3",
                        )
                        .bind(seq)
                        .bind(new.expose())
                        .bind(&previous)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.fail(e))?;
                        total += done.rows_affected();
                    }
                }
            }
            tx.commit().await.map_err(|e| self.fail(e))?;
        }
    }
}

/// One transaction before a delete on a large backlog: cancels at most `$3` pending
/// deliveries of endpoint `$1` of organization `$2` and forgets at most as many failed ones.
/// In-flight deliveries are left to the delete, which remembers them (the outer `state`
/// test is read again on a row a claim changed meanwhile).
const CANCEL_BACKLOG_SQL: &str = "
WITH ep AS (SELECT id FROM endpoints WHERE id = $1 AND organization_id = $2),
pending AS (
    SELECT d.id FROM deliveries d JOIN ep ON d.endpoint_id = ep.id
    WHERE d.state = 'pending' LIMIT $3
),
failed AS (
    SELECT x.event_id FROM failed_deliveries x JOIN ep ON x.endpoint_id = ep.id LIMIT $3
),
cancelled AS (
    DELETE FROM deliveries WHERE id IN (SELECT id FROM pending) AND state = 'pending'
    RETURNING 1
),
forgotten AS (
    DELETE FROM failed_deliveries f USING failed
    WHERE f.endpoint_id = $1 AND f.event_id = failed.event_id
    RETURNING 1
)
SELECT greatest((SELECT count(*) FROM cancelled), (SELECT count(*) FROM forgotten)) AS n,
       greatest((SELECT count(*) FROM pending), (SELECT count(*) FROM failed)) AS found";

/// One transaction before a switch to parallel on a long line, holding the endpoint's row
/// lock like the switch: turns at most `$3` ordered deliveries of endpoint `$1` of
/// organization `$2`, oldest first, into parallel ones (a range of `deliveries_line`).
const SHORTEN_LINE_SQL: &str = "
WITH ep AS (SELECT id FROM endpoints WHERE id = $1 AND organization_id = $2 FOR UPDATE),
picked AS (
    SELECT d.id FROM deliveries d JOIN ep ON d.endpoint_id = ep.id
    WHERE d.fifo_seq IS NOT NULL ORDER BY d.fifo_seq, d.event_id LIMIT $3
),
made AS (
    UPDATE deliveries SET fifo_seq = NULL WHERE id IN (SELECT id FROM picked)
    RETURNING 1
)
SELECT (SELECT count(*) FROM made) AS n, (SELECT count(*) FROM picked) AS found";

impl PgStore {
    /// Runs one of the backlog batches above for endpoint `id` of `org`: how many it changed,
    /// and whether it found a whole batch (rows a concurrent completion or claim took between
    /// the pick and the change do not end the loop early).
    async fn backlog_batch(
        &self,
        sql: &'static str,
        org: OrganizationId,
        id: EndpointId,
    ) -> StoreResult<Batch> {
        let row = sqlx::query(sql)
            .bind(id.0)
            .bind(org.0)
            .bind(i64::try_from(BACKLOG_BATCH).unwrap_or(i64::MAX))
            .fetch_one(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        let (n, found): (i64, i64) = (rows::get(&row, "n")?, rows::get(&row, "found")?);
        let changed = u64::try_from(n).unwrap_or(0);
        Ok(Batch { changed, more: u64::try_from(found).unwrap_or(0) >= BACKLOG_BATCH as u64 })
    }

    /// Before a switch to parallel: the endpoint's line made parallel in transactions of
    /// `BACKLOG_BATCH` each, oldest first, while it is still FIFO.
    pub(crate) async fn shorten_line(
        &self,
        org: OrganizationId,
        id: EndpointId,
    ) -> StoreResult<u64> {
        triggers_core::store::in_batches(|| self.backlog_batch(SHORTEN_LINE_SQL, org, id)).await
    }
}

/// Sets an endpoint's ordering inside a transaction that holds its row lock. Switching to
/// parallel dissolves the line: every ordered delivery of the endpoint becomes a parallel one.
pub(crate) async fn set_ordering(
    tx: &mut sqlx::PgConnection,
    id: EndpointId,
    ordering: DeliveryOrdering,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE endpoints SET ordering = $2 WHERE id = $1")
        .bind(id.0)
        .bind(ordering.as_str())
        .execute(&mut *tx)
        .await?;
    if ordering == DeliveryOrdering::Parallel {
        sqlx::query(
            "UPDATE deliveries SET fifo_seq = NULL WHERE endpoint_id = $1 AND fifo_seq IS NOT NULL",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
