//! The store conformance kit, unchanged, over SQLite: each case gets its own database file.

use std::time::Duration;

use async_trait::async_trait;
use tempfile::TempDir;
use triggers_core::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use triggers_core::store::{
    AckOutcome, AttemptEntry, AttemptQuery, ClaimRequest, CompletedAndClaimed, Completion,
    Delivery, DeliveryEntry, DeliveryHistory, DeliveryQuery, DeliveryQueue, EndpointPatch,
    EndpointStore, EndpointUpdate, EventLog, InsertOutcome, ListQuery, NewEndpoint, OrgStore, Page,
    QueueStats, RecoverQuery, Recovered, Retention, StoreResult,
};
use triggers_core::{
    DeliveryId, DeliveryOrdering, Endpoint, EndpointId, EventId, KeyHash, Organization,
    OrganizationId, Secret, Timestamp, WorkerId,
};
use triggers_store_sqlite::SqliteStore;

/// A store on a file in a temporary directory that lives as long as the store.
pub struct TempStore {
    store: SqliteStore,
    _dir: TempDir,
}

async fn fresh_store() -> TempStore {
    let (dir, store) = crate::fresh();
    TempStore { store, _dir: dir }
}

triggers_core::store_conformance_tests!(fresh_store);

#[async_trait]
impl OrgStore for TempStore {
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
        self.store.create_organization(org, key).await
    }
    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        self.store.organization_by_key(key).await
    }
    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        self.store.organization(id).await
    }
    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        self.store.replace_key(id, key).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.store.ping().await
    }
}

#[async_trait]
impl EndpointStore for TempStore {
    async fn create_endpoint(&self, org: OrganizationId, e: &NewEndpoint) -> StoreResult<Endpoint> {
        self.store.create_endpoint(org, e).await
    }
    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        self.store.endpoints(org).await
    }
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        self.store.delete_endpoint(org, id).await
    }
    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.store.finish_disabling(org, id, now).await
    }
    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
        self.store.unfinished_disables().await
    }
    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> StoreResult<bool> {
        self.store.set_endpoint_ordering(org, id, ordering).await
    }
    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool> {
        self.store.rotate_endpoint_secret(org, id, secret, previous_valid_until).await
    }
    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
        self.store.endpoint(org, id).await
    }
    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        self.store.update_endpoint(org, id, patch, now).await
    }
    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        self.store.recover(org, id, query, now).await
    }
    async fn rewrite_secrets(
        &self,
        rewrite: triggers_core::store::SecretRewrite,
    ) -> StoreResult<u64> {
        self.store.rewrite_secrets(rewrite).await
    }
}

#[async_trait]
impl EventLog for TempStore {
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        self.store.insert_events(org, events, dedup_window, now).await
    }
    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
        self.store.event(org, id).await
    }
    async fn list_events(&self, org: OrganizationId, q: &ListQuery) -> StoreResult<Page<Event>> {
        self.store.list_events(org, q).await
    }
    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        self.store.ack(org, ids, now).await
    }
    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>> {
        self.store.replay(org, id, now).await
    }
    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
        self.store.stats(org).await
    }
    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        self.store.pending_events(org).await
    }
}

#[async_trait]
impl DeliveryQueue for TempStore {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        self.store.claim(req).await
    }
    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        self.store.complete(completions).await
    }
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        self.store.complete_and_claim(completions, req).await
    }
    async fn release(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        self.store.release(id, owner, attempt, due_at).await
    }
    async fn extend_lease(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool> {
        self.store.extend_lease(id, owner, attempt, until).await
    }
    async fn queue_depth(&self) -> StoreResult<u64> {
        self.store.queue_depth().await
    }
    async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
        self.store.reclaim_leases(owner, now).await
    }
    fn node_id(&self) -> Option<WorkerId> {
        self.store.node_id()
    }
}

#[async_trait]
impl Retention for TempStore {
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        self.store.purge_finished_batch(before, batch).await
    }
    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        self.store.purge_dedup_batch(before, batch).await
    }
}

#[async_trait]
impl DeliveryHistory for TempStore {
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>> {
        self.store.endpoint_attempts(org, endpoint, query).await
    }
    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
        self.store.endpoint_deliveries(org, endpoint, query).await
    }
}
