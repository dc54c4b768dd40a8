//! A store that counts its delivery-queue round trips (`claim`, `complete`,
//! `complete_and_claim`: each call one), the `stats` reads running per organization and the
//! API-key lookups running (both of which it can hold), and can refuse `finish_disabling`,
//! forwarding everything to a [`MemoryStore`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use triggers_core::domain::event::EventRecord;
use triggers_core::domain::WorkerId;
use triggers_core::store::{
    AckOutcome, AttemptEntry, AttemptQuery, ClaimRequest, CompletedAndClaimed, Completion,
    Delivery, DeliveryEntry, DeliveryHistory, DeliveryQuery, DeliveryQueue, EndpointPatch,
    EndpointStore, EndpointUpdate, EventLog, InsertOutcome, ListQuery, NewEndpoint, OrgStore, Page,
    QueueStats, RecoverQuery, Recovered, Retention, SecretRewrite, StoreError, StoreResult,
};
use triggers_core::{
    async_trait, DeliveryOrdering, Endpoint, EndpointId, Event, EventDetail, EventId, EventStatus,
    KeyHash, MemoryStore, Organization, OrganizationId, Secret, Timestamp,
};

#[derive(Clone, Default)]
pub(crate) struct Counting {
    inner: MemoryStore,
    queue_calls: Arc<AtomicU64>,
    reads: Arc<Reads>,
    refuse_finishing: Arc<std::sync::atomic::AtomicBool>,
    fail_after_commit: Arc<std::sync::atomic::AtomicU32>,
    finishing: Arc<Held>,
    finish_calls: Arc<AtomicU64>,
    key_lookups: Arc<KeyLookups>,
    /// `pending_events` calls made, and their hold.
    pending_reads: Arc<(AtomicU64, Held)>,
    /// How many of the next `pending_events` calls fail.
    failing_pending_reads: Arc<std::sync::atomic::AtomicU32>,
    /// The hold of `insert_events` calls.
    inserts: Arc<Held>,
}

/// `organization_by_key` calls running now and the most at once, and their hold.
#[derive(Default)]
struct KeyLookups {
    running: Mutex<(u32, u32)>,
    gate: Held,
}

/// Calls that, once held, wait for a permit each.
struct Held {
    held: std::sync::atomic::AtomicBool,
    permits: tokio::sync::Semaphore,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            held: std::sync::atomic::AtomicBool::new(false),
            permits: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Held {
    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Returns at once unless held; then once a permit is given.
    async fn pass(&self) {
        if self.held.load(Ordering::SeqCst) {
            if let Ok(permit) = self.permits.acquire().await {
                permit.forget();
            }
        }
    }
}

/// `stats` calls per organization: running now, and the most ever running at once; and
/// their hold.
#[derive(Default)]
struct Reads {
    running: Mutex<HashMap<OrganizationId, (u32, u32)>>,
    gate: Held,
}

impl Counting {
    /// Makes `stats` calls wait (once counted as running) for a permit:
    /// [`release_reads`](Self::release_reads) gives one.
    pub(crate) fn hold_reads(&self) {
        self.reads.gate.hold();
    }

    /// Lets `n` held `stats` calls finish.
    pub(crate) fn release_reads(&self, n: usize) {
        self.reads.gate.release(n);
    }

    /// Makes `finish_disabling` fail (`Unavailable`, nothing changed) while `refuse` holds,
    /// as if the process stopped before finishing a disable.
    pub(crate) fn refuse_finishing(&self, refuse: bool) {
        self.refuse_finishing.store(refuse, Ordering::SeqCst);
    }

    /// Makes the next `n` `complete_and_claim` calls fail (`Unavailable`) after they were
    /// applied, as a store whose connection breaks after its commit.
    pub(crate) fn fail_after_commit(&self, n: u32) {
        self.fail_after_commit.store(n, Ordering::SeqCst);
    }

    /// Makes `organization_by_key` calls wait (once counted as running) for a permit:
    /// [`release_key_lookups`](Self::release_key_lookups) gives one.
    pub(crate) fn hold_key_lookups(&self) {
        self.key_lookups.gate.hold();
    }

    /// Lets `n` held key lookups finish.
    pub(crate) fn release_key_lookups(&self, n: usize) {
        self.key_lookups.gate.release(n);
    }

    /// `(running now, most at once)` of the `organization_by_key` calls.
    pub(crate) fn key_lookups(&self) -> (u32, u32) {
        *self.key_lookups.running.lock().unwrap()
    }

    /// A store over the same data with counters and holds of its own.
    pub(crate) fn sharing_data(&self) -> Self {
        Self { inner: self.inner.clone(), ..Self::default() }
    }

    /// Makes `finish_disabling` calls wait for a permit (never given: they wait until
    /// dropped), as a backlog that takes long to fail would.
    pub(crate) fn hold_finishing(&self) {
        self.finishing.hold();
    }

    /// `finish_disabling` calls so far.
    pub(crate) fn finish_calls(&self) -> u64 {
        self.finish_calls.load(Ordering::SeqCst)
    }

    /// `(running now, most at once)` of `org`'s `stats` calls.
    pub(crate) fn reads_of(&self, org: OrganizationId) -> (u32, u32) {
        self.reads.running.lock().unwrap().get(&org).copied().unwrap_or_default()
    }

    /// `claim`, `complete` and `complete_and_claim` calls so far.
    /// Makes `pending_events` calls wait until released.
    pub(crate) fn hold_pending_reads(&self) {
        self.pending_reads.1.hold();
    }

    pub(crate) fn release_pending_reads(&self, n: usize) {
        self.pending_reads.1.release(n);
    }

    /// Makes the next `n` `pending_events` calls fail (once past their hold).
    pub(crate) fn fail_pending_reads(&self, n: u32) {
        self.failing_pending_reads.store(n, Ordering::SeqCst);
    }

    /// Makes `insert_events` calls wait until released.
    pub(crate) fn hold_inserts(&self) {
        self.inserts.hold();
    }

    pub(crate) fn release_inserts(&self, n: usize) {
        self.inserts.release(n);
    }

    /// `pending_events` calls begun.
    pub(crate) fn pending_reads(&self) -> u64 {
        self.pending_reads.0.load(Ordering::SeqCst)
    }

    pub(crate) fn queue_calls(&self) -> u64 {
        self.queue_calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.queue_calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl OrgStore for Counting {
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
        self.inner.create_organization(org, key).await
    }
    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        let change = |d: i32| {
            let mut running = self.key_lookups.running.lock().unwrap();
            running.0 = running.0.saturating_add_signed(d);
            running.1 = running.1.max(running.0);
        };
        change(1);
        self.key_lookups.gate.pass().await;
        let found = self.inner.organization_by_key(key).await;
        change(-1);
        found
    }
    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        self.inner.organization(id).await
    }
    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        self.inner.replace_key(id, key).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl EndpointStore for Counting {
    async fn create_endpoint(
        &self,
        org: OrganizationId,
        endpoint: &NewEndpoint,
    ) -> StoreResult<Endpoint> {
        self.inner.create_endpoint(org, endpoint).await
    }
    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        self.inner.endpoints(org).await
    }
    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
        self.inner.endpoint(org, id).await
    }
    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        self.inner.update_endpoint(org, id, patch, now).await
    }
    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        self.inner.recover(org, id, query, now).await
    }
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        self.inner.delete_endpoint(org, id).await
    }
    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.finish_calls.fetch_add(1, Ordering::SeqCst);
        self.finishing.pass().await;
        if self.refuse_finishing.load(Ordering::SeqCst) {
            return Err(triggers_core::StoreError::Unavailable("refused by the test".into()));
        }
        self.inner.finish_disabling(org, id, now).await
    }
    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
        self.inner.unfinished_disables().await
    }
    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> StoreResult<bool> {
        self.inner.set_endpoint_ordering(org, id, ordering).await
    }
    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool> {
        self.inner.rotate_endpoint_secret(org, id, secret, previous_valid_until).await
    }
    async fn rewrite_secrets(&self, rewrite: SecretRewrite) -> StoreResult<u64> {
        self.inner.rewrite_secrets(rewrite).await
    }
}

#[async_trait]
impl EventLog for Counting {
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        // As a real store's would, the insert lets other tasks run before it is done.
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.inserts.pass().await;
        self.inner.insert_events(org, events, dedup_window, now).await
    }
    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
        self.inner.event(org, id).await
    }
    async fn list_events(
        &self,
        org: OrganizationId,
        query: &ListQuery,
    ) -> StoreResult<Page<Event>> {
        self.inner.list_events(org, query).await
    }
    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        self.inner.ack(org, ids, now).await
    }
    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>> {
        self.inner.replay(org, id, now).await
    }
    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
        let change = |d: i32| {
            let mut running = self.reads.running.lock().unwrap();
            let (now, most) = running.entry(org).or_default();
            *now = now.saturating_add_signed(d);
            *most = (*most).max(*now);
        };
        change(1);
        self.reads.gate.pass().await;
        let stats = self.inner.stats(org).await;
        change(-1);
        stats
    }
    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        self.pending_reads.0.fetch_add(1, Ordering::SeqCst);
        self.pending_reads.1.pass().await;
        let failing = &self.failing_pending_reads;
        if failing.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unavailable("the test fails this read".into()));
        }
        self.inner.pending_events(org).await
    }
}

#[async_trait]
impl DeliveryQueue for Counting {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        self.count();
        self.inner.claim(req).await
    }
    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        self.count();
        self.inner.complete(completions).await
    }
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        self.count();
        let done = self.inner.complete_and_claim(completions, req).await?;
        let failing = |n: u32| n.checked_sub(1);
        if self.fail_after_commit.fetch_update(Ordering::SeqCst, Ordering::SeqCst, failing).is_ok()
        {
            return Err(StoreError::Unavailable("connection lost after the commit".into()));
        }
        Ok(done)
    }
    async fn release(
        &self,
        id: triggers_core::DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        self.inner.release(id, owner, attempt, due_at).await
    }
    async fn extend_lease(
        &self,
        id: triggers_core::DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool> {
        self.inner.extend_lease(id, owner, attempt, until).await
    }
    async fn queue_depth(&self) -> StoreResult<u64> {
        self.inner.queue_depth().await
    }
    async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
        self.inner.reclaim_leases(owner, now).await
    }
}

#[async_trait]
impl Retention for Counting {
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        self.inner.purge_finished_batch(before, batch).await
    }
    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        self.inner.purge_dedup_batch(before, batch).await
    }
}

#[async_trait]
impl DeliveryHistory for Counting {
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>> {
        self.inner.endpoint_attempts(org, endpoint, query).await
    }
    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
        self.inner.endpoint_deliveries(org, endpoint, query).await
    }
}
