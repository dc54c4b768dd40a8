//! A MemoryStore that can be told to fail, to test 503 and 500 answers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use triggers_core::store::operational::AnnouncementBacklog;
use triggers_core::store::{
    AckOutcome, AttemptEntry, AttemptQuery, ClaimRequest, CompletedAndClaimed, Completion,
    Delivery, DeliveryEntry, DeliveryHistory, DeliveryQuery, DeliveryQueue, EndpointPatch,
    EndpointStore, EndpointUpdate, EventLog, InsertOutcome, ListQuery, NewEndpoint, OrgStore, Page,
    QueueStats, RecoverQuery, Recovered, Retention, StoreResult,
};
use triggers_core::{
    DeliveryId, Endpoint, EndpointId, Event, EventDetail, EventId, EventRecord, EventStatus,
    KeyHash, MemoryStore, Organization, OrganizationId, Secret, StoreError, Timestamp, WorkerId,
};

/// How the store behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Healthy = 0,
    Unavailable = 1,
    Overloaded = 2,
    Broken = 3,
    Panic = 4,
}

#[derive(Clone, Default)]
pub struct FlakyStore {
    inner: Arc<MemoryStore>,
    mode: Arc<AtomicU8>,
    backlog: Arc<std::sync::Mutex<AnnouncementBacklog>>,
}

impl FlakyStore {
    /// What `announcement_backlog` reports from now on (a store with an outbox).
    pub fn set_backlog(&self, backlog: AnnouncementBacklog) {
        *self.backlog.lock().unwrap() = backlog;
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Fails the way the mode says (reads and writes alike; key lookups keep working).
    fn check(&self) -> StoreResult<()> {
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(()),
            1 => Err(StoreError::Unavailable("connection refused to db.internal:5432".into())),
            2 => Err(StoreError::Overloaded("writer queue full".into())),
            4 => panic!("the store has a bug"),
            _ => Err(StoreError::Corrupt("table events_secret_internal is damaged".into())),
        }
    }
}

#[async_trait]
impl OrgStore for FlakyStore {
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
        self.check()?;
        self.inner.create_organization(org, key).await
    }
    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        self.inner.organization_by_key(key).await
    }
    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        self.inner.organization(id).await
    }
    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        self.check()?;
        self.inner.replace_key(id, key).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.ping().await
    }
}

#[async_trait]
impl EndpointStore for FlakyStore {
    async fn create_endpoint(&self, org: OrganizationId, e: &NewEndpoint) -> StoreResult<Endpoint> {
        self.check()?;
        self.inner.create_endpoint(org, e).await
    }
    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        self.check()?;
        self.inner.endpoints(org).await
    }
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        self.check()?;
        self.inner.delete_endpoint(org, id).await
    }
    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.check()?;
        self.inner.finish_disabling(org, id, now).await
    }
    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
        self.check()?;
        self.inner.unfinished_disables().await
    }
    async fn announcement_backlog(&self) -> StoreResult<AnnouncementBacklog> {
        self.check()?;
        Ok(*self.backlog.lock().unwrap())
    }
    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: triggers_core::DeliveryOrdering,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.set_endpoint_ordering(org, id, ordering).await
    }
    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.rotate_endpoint_secret(org, id, secret, previous_valid_until).await
    }
    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
        self.check()?;
        self.inner.endpoint(org, id).await
    }
    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        self.check()?;
        self.inner.update_endpoint(org, id, patch, now).await
    }
    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        self.check()?;
        self.inner.recover(org, id, query, now).await
    }
    async fn rewrite_secrets(
        &self,
        rewrite: triggers_core::store::SecretRewrite,
    ) -> StoreResult<u64> {
        self.inner.rewrite_secrets(rewrite).await
    }
}

#[async_trait]
impl EventLog for FlakyStore {
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        self.check()?;
        self.inner.insert_events(org, events, dedup_window, now).await
    }
    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
        self.check()?;
        self.inner.event(org, id).await
    }
    async fn list_events(
        &self,
        org: OrganizationId,
        query: &ListQuery,
    ) -> StoreResult<Page<Event>> {
        self.check()?;
        self.inner.list_events(org, query).await
    }
    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        self.check()?;
        self.inner.ack(org, ids, now).await
    }
    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>> {
        self.check()?;
        self.inner.replay(org, id, now).await
    }
    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
        self.check()?;
        self.inner.stats(org).await
    }
    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        self.check()?;
        self.inner.pending_events(org).await
    }
}

#[async_trait]
impl DeliveryQueue for FlakyStore {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        self.inner.claim(req).await
    }
    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        self.inner.complete(completions).await
    }
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        self.inner.complete_and_claim(completions, req).await
    }
    async fn release(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        self.inner.release(id, owner, attempt, due_at).await
    }
    async fn extend_lease(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool> {
        self.inner.extend_lease(id, owner, attempt, until).await
    }
    async fn queue_depth(&self) -> StoreResult<u64> {
        self.check()?;
        self.inner.queue_depth().await
    }
}

#[async_trait]
impl Retention for FlakyStore {
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        self.check()?;
        self.inner.purge_finished_batch(before, batch).await
    }
    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        self.check()?;
        self.inner.purge_dedup_batch(before, batch).await
    }
}

#[async_trait]
impl DeliveryHistory for FlakyStore {
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>> {
        self.check()?;
        self.inner.endpoint_attempts(org, endpoint, query).await
    }
    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
        self.check()?;
        self.inner.endpoint_deliveries(org, endpoint, query).await
    }
}
