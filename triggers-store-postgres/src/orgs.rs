//! Organizations, API key hashes and webhook endpoints.

use async_trait::async_trait;
use triggers_core::store::{EndpointStore, NewEndpoint, OrgStore, StoreResult};
use triggers_core::{
    DeliveryOrdering, Endpoint, EndpointId, KeyHash, Organization, OrganizationId, Secret,
    Timestamp,
};

use crate::error::map;
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
        .map_err(map)?;
        Ok(())
    }

    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE key_hash = $1");
        let row = sqlx::query(&sql)
            .bind(&key.as_bytes()[..])
            .fetch_optional(self.pool())
            .await
            .map_err(map)?;
        row.as_ref().map(rows::organization).transpose()
    }

    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        let sql = format!("SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.0).fetch_optional(self.pool()).await.map_err(map)?;
        row.as_ref().map(rows::organization).transpose()
    }

    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE organizations SET key_hash = $2 WHERE id = $1")
            .bind(id.0)
            .bind(&key.as_bytes()[..])
            .execute(self.pool())
            .await
            .map_err(map)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await.map_err(map)?;
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
        let row = sqlx::query(&sql)
            .bind(endpoint.id.0)
            .bind(org.0)
            .bind(&endpoint.url)
            .bind(filter.map(|f| f.as_str()))
            .bind(filter.map(|f| f.to_sql_like()))
            .bind(endpoint.secret.expose())
            .bind(endpoint.created_at)
            .bind(endpoint.ordering.as_str())
            .fetch_one(self.pool())
            .await
            .map_err(map)?;
        rows::endpoint(&row)
    }

    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints
             WHERE organization_id = $1 ORDER BY created_at, seq"
        );
        let found = sqlx::query(&sql).bind(org.0).fetch_all(self.pool()).await.map_err(map)?;
        found.iter().map(rows::endpoint).collect()
    }

    /// Two statements in one transaction: the `DELETE` first, so that it waits for any insert
    /// batch that is fanning out to this endpoint (those lock it `FOR KEY SHARE`); the
    /// cancellation then runs with a fresh snapshot and also sees their deliveries.
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await.map_err(map)?;
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1 AND organization_id = $2")
            .bind(id.0)
            .bind(org.0)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        // Cancelled = deleted: a worker holding a lease finds no row to complete.
        sqlx::query("DELETE FROM deliveries WHERE endpoint_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        tx.commit().await.map_err(map)?;
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
        let mut tx = self.pool().begin().await.map_err(map)?;
        let found = sqlx::query(
            "SELECT 1 AS found FROM endpoints WHERE id = $1 AND organization_id = $2 FOR UPDATE",
        )
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
        if found.is_none() {
            return Ok(false);
        }
        sqlx::query("UPDATE endpoints SET ordering = $2 WHERE id = $1")
            .bind(id.0)
            .bind(ordering.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        if ordering == DeliveryOrdering::Parallel {
            sqlx::query(
                "UPDATE deliveries SET fifo_seq = NULL WHERE endpoint_id = $1 AND fifo_seq IS NOT NULL",
            )
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        }
        tx.commit().await.map_err(map)?;
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
        .map_err(map)?;
        Ok(done.rows_affected() > 0)
    }
}
