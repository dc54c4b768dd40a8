//! [`MemoryStore`]: a complete [`EventStore`](crate::EventStore) in memory, for tests,
//! examples and embedding applications that do not need durability.

mod events;
mod history;
mod orgs;
mod queue;
mod retention;
mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};
use crate::store::{
    AckOutcome, AttemptEntry, AttemptQuery, Batch, ClaimRequest, CompletedAndClaimed, Completion,
    Delivery, DeliveryEntry, DeliveryHistory, DeliveryQuery, DeliveryQueue, EndpointPatch,
    EndpointStore, EndpointUpdate, EventLog, InsertOutcome, ListQuery, NewEndpoint, OrgStore, Page,
    QueueStats, RecoverQuery, Recovered, Retention, SecretRewrite, StoreError, StoreLimits,
    StoreResult,
};

/// An [`EventStore`](crate::EventStore) that keeps everything in memory.
///
/// It follows the whole store contract (and passes the conformance kit) except durability:
/// everything is lost when the last clone is dropped. Clones share the same data. Every call
/// takes one mutex and never waits while holding it. Inserts, claims (which look per endpoint,
/// never at a capped endpoint's backlog), completions, inbox pages (which read the ids of
/// the status they list), attempt history pages (which read the endpoint's own attempts)
/// and retention purges (which take the oldest finished events and dedup entries from
/// indexes kept in step with every change, so a batch costs what it deletes) hold it for
/// microseconds. Three reads walk past what they skip, under the mutex: an inbox page
/// filtered by type (the listed status's events of other types), a delivery history page
/// (the organization's events newest first, until the page is full: few for an endpoint
/// that receives most events, many for one that receives few) and either history page with
/// a filter that matches rarely. Fine for tests and embedded uses; the SQL stores read all
/// of these through indexes.
///
/// Where the contract is silent it behaves like a database with foreign keys: inserting
/// events or creating endpoints for an organization that was never created fails with
/// [`StoreError::InvalidInput`], and reusing an event or endpoint id is a
/// [`StoreError::Conflict`]. Dedup entries are kept until
/// [`Retention::purge_dedup_batch`] forgets them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use triggers_core::store::OrgStore;
/// use triggers_core::{ApiKey, MemoryStore, Organization, Tier, Timestamp};
/// let store = MemoryStore::new();
/// let org = Organization::new("acme", Tier::Free, Timestamp::UNIX_EPOCH);
/// let key = ApiKey::generate();
/// store.create_organization(&org, &key.hash()).await.unwrap();
/// assert_eq!(store.organization_by_key(&key.hash()).await.unwrap(), Some(org));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<state::State>>,
}

impl MemoryStore {
    /// An empty store with the default [`StoreLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps `limits`.
    pub fn with_limits(limits: StoreLimits) -> Self {
        let state = state::State { limits, ..state::State::default() };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, state::State>> {
        // A panic while holding the lock may have left the tables half-updated: refuse to
        // serve from them rather than return wrong answers.
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store poisoned by a panic".into()))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[async_trait]
impl OrgStore for MemoryStore {
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
        self.lock()?.create_organization(org, key)
    }

    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
        Ok(self.lock()?.organization_by_key(key))
    }

    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
        Ok(self.lock()?.organization(id))
    }

    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
        self.lock()?.replace_key(id, key)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.lock().map(drop)
    }
}

#[async_trait]
impl EndpointStore for MemoryStore {
    async fn create_endpoint(
        &self,
        org: OrganizationId,
        endpoint: &NewEndpoint,
    ) -> StoreResult<Endpoint> {
        self.lock()?.create_endpoint(org, endpoint)
    }

    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
        Ok(self.lock()?.endpoints(org))
    }

    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
        Ok(self.lock()?.endpoint(org, id))
    }

    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>> {
        // The mutex is let go between batches: one endpoint's backlog does not stop every
        // organization's calls for as long as failing all of it takes.
        if patch.ordering == Some(DeliveryOrdering::Parallel) {
            crate::store::in_batches(|| async {
                Ok(Batch::of(self.lock()?.shorten_line(org, id)))
            })
            .await?;
        }
        let update = || async { Ok(self.lock()?.update_endpoint(org, id, patch, now)) };
        let batch = || async { Ok(Batch::of(self.lock()?.fail_left_behind(org, id, now))) };
        crate::store::update_in_batches(patch.enabled, update, batch).await
    }

    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64> {
        crate::store::in_batches(|| async {
            Ok(Batch::of(self.lock()?.fail_left_behind(org, id, now)))
        })
        .await
    }

    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
        Ok(self.lock()?.unfinished_disables())
    }

    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>> {
        Ok(self.lock()?.recover(org, id, query, now))
    }

    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
        crate::store::in_batches(|| async { Ok(Batch::of(self.lock()?.cancel_backlog(org, id))) })
            .await?;
        Ok(self.lock()?.delete_endpoint(org, id))
    }

    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> StoreResult<bool> {
        if ordering == DeliveryOrdering::Parallel {
            crate::store::in_batches(|| async {
                Ok(Batch::of(self.lock()?.shorten_line(org, id)))
            })
            .await?;
        }
        Ok(self.lock()?.set_endpoint_ordering(org, id, ordering))
    }

    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool> {
        Ok(self.lock()?.rotate_endpoint_secret(org, id, secret, previous_valid_until))
    }

    async fn rewrite_secrets(&self, rewrite: SecretRewrite) -> StoreResult<u64> {
        Ok(self.lock()?.rewrite_secrets(&*rewrite))
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        self.lock()?.insert_events(org, events, dedup_window, now)
    }

    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
        Ok(self.lock()?.event(org, id))
    }

    async fn list_events(
        &self,
        org: OrganizationId,
        query: &ListQuery,
    ) -> StoreResult<Page<Event>> {
        Ok(self.lock()?.list_events(org, query))
    }

    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        Ok(self.lock()?.ack(org, ids, now))
    }

    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>> {
        Ok(self.lock()?.replay(org, id, now))
    }

    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
        Ok(self.lock()?.stats(org))
    }

    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        Ok(self.lock()?.pending_events(org))
    }
}

#[async_trait]
impl DeliveryQueue for MemoryStore {
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
        Ok(self.lock()?.claim(req))
    }

    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
        Ok(self.lock()?.complete(completions).0)
    }

    /// Both under one lock: no other call sees the completions without the claim.
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        let mut state = self.lock()?;
        let (applied, disabled) = state.complete(completions);
        let claimed = if req.limit == 0 { Vec::new() } else { state.claim(req) };
        Ok(CompletedAndClaimed { applied, disabled, claimed: Ok(claimed) })
    }

    async fn release(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        Ok(self.lock()?.release(id, owner, attempt, due_at))
    }

    async fn extend_lease(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool> {
        Ok(self.lock()?.extend_lease(id, owner, attempt, until))
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        Ok(self.lock()?.queue_depth())
    }

    async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
        Ok(self.lock()?.reclaim_leases(owner, now))
    }
}

#[async_trait]
impl DeliveryHistory for MemoryStore {
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>> {
        Ok(self.lock()?.endpoint_attempts(org, endpoint, query))
    }

    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
        Ok(self.lock()?.endpoint_deliveries(org, endpoint, query))
    }
}

#[async_trait]
impl Retention for MemoryStore {
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        Ok(self.lock()?.purge_finished(before, batch))
    }

    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
        Ok(self.lock()?.purge_dedup(before, batch))
    }
}
