//! The store traits for `Arc<S>` and `Box<S>` (also `S = dyn EventStore`): every call is
//! forwarded unchanged, so the wrapped store's contract holds as is.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    AckOutcome, AttemptEntry, AttemptQuery, ClaimRequest, CompletedAndClaimed, Completion,
    Delivery, DeliveryEntry, DeliveryHistory, DeliveryQuery, DeliveryQueue, EndpointPatch,
    EndpointStore, EndpointUpdate, EventLog, InsertOutcome, ListQuery, NewEndpoint, OrgStore, Page,
    QueueStats, RecoverQuery, Recovered, Retention, SecretRewrite, StoreResult,
};
use crate::clock::Timestamp;
use crate::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};

macro_rules! forward {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: OrgStore + ?Sized> OrgStore for $ptr<T> {
            async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()> {
                (**self).create_organization(org, key).await
            }
            async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>> {
                (**self).organization_by_key(key).await
            }
            async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>> {
                (**self).organization(id).await
            }
            async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool> {
                (**self).replace_key(id, key).await
            }
            async fn ping(&self) -> StoreResult<()> {
                (**self).ping().await
            }
        }

        #[async_trait]
        impl<T: EndpointStore + ?Sized> EndpointStore for $ptr<T> {
            async fn create_endpoint(
                &self,
                org: OrganizationId,
                endpoint: &NewEndpoint,
            ) -> StoreResult<Endpoint> {
                (**self).create_endpoint(org, endpoint).await
            }
            async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>> {
                (**self).endpoints(org).await
            }
            async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>> {
                (**self).endpoint(org, id).await
            }
            async fn update_endpoint(
                &self,
                org: OrganizationId,
                id: EndpointId,
                patch: &EndpointPatch,
                now: Timestamp,
            ) -> StoreResult<Option<EndpointUpdate>> {
                (**self).update_endpoint(org, id, patch, now).await
            }
            async fn recover(
                &self,
                org: OrganizationId,
                id: EndpointId,
                query: RecoverQuery,
                now: Timestamp,
            ) -> StoreResult<Option<Recovered>> {
                (**self).recover(org, id, query, now).await
            }
            async fn finish_disabling(
                &self,
                org: OrganizationId,
                id: EndpointId,
                now: Timestamp,
            ) -> StoreResult<u64> {
                (**self).finish_disabling(org, id, now).await
            }
            async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>> {
                (**self).unfinished_disables().await
            }
            async fn announcement_backlog(
                &self,
            ) -> StoreResult<crate::store::operational::AnnouncementBacklog> {
                (**self).announcement_backlog().await
            }
            async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool> {
                (**self).delete_endpoint(org, id).await
            }
            async fn rotate_endpoint_secret(
                &self,
                org: OrganizationId,
                id: EndpointId,
                secret: &Secret,
                previous_valid_until: Timestamp,
            ) -> StoreResult<bool> {
                (**self).rotate_endpoint_secret(org, id, secret, previous_valid_until).await
            }
            async fn set_endpoint_ordering(
                &self,
                org: OrganizationId,
                id: EndpointId,
                ordering: DeliveryOrdering,
            ) -> StoreResult<bool> {
                (**self).set_endpoint_ordering(org, id, ordering).await
            }
            async fn rewrite_secrets(&self, rewrite: SecretRewrite) -> StoreResult<u64> {
                (**self).rewrite_secrets(rewrite).await
            }
        }

        #[async_trait]
        impl<T: EventLog + ?Sized> EventLog for $ptr<T> {
            async fn insert_events(
                &self,
                org: OrganizationId,
                events: Vec<EventRecord>,
                dedup_window: Duration,
                now: Timestamp,
            ) -> StoreResult<Vec<InsertOutcome>> {
                (**self).insert_events(org, events, dedup_window, now).await
            }
            async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>> {
                (**self).event(org, id).await
            }
            async fn list_events(
                &self,
                org: OrganizationId,
                query: &ListQuery,
            ) -> StoreResult<Page<Event>> {
                (**self).list_events(org, query).await
            }
            async fn ack(
                &self,
                org: OrganizationId,
                ids: &[EventId],
                now: Timestamp,
            ) -> StoreResult<AckOutcome> {
                (**self).ack(org, ids, now).await
            }
            async fn replay(
                &self,
                org: OrganizationId,
                id: EventId,
                now: Timestamp,
            ) -> StoreResult<Option<EventStatus>> {
                (**self).replay(org, id, now).await
            }
            async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats> {
                (**self).stats(org).await
            }
            async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
                (**self).pending_events(org).await
            }
        }

        #[async_trait]
        impl<T: DeliveryQueue + ?Sized> DeliveryQueue for $ptr<T> {
            async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>> {
                (**self).claim(req).await
            }
            async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>> {
                (**self).complete(completions).await
            }
            async fn complete_and_claim(
                &self,
                completions: &[Completion],
                req: ClaimRequest,
            ) -> StoreResult<CompletedAndClaimed> {
                (**self).complete_and_claim(completions, req).await
            }
            async fn release(
                &self,
                id: DeliveryId,
                owner: WorkerId,
                attempt: u32,
                due_at: Option<Timestamp>,
            ) -> StoreResult<bool> {
                (**self).release(id, owner, attempt, due_at).await
            }
            async fn extend_lease(
                &self,
                id: DeliveryId,
                owner: WorkerId,
                attempt: u32,
                until: Timestamp,
            ) -> StoreResult<bool> {
                (**self).extend_lease(id, owner, attempt, until).await
            }
            async fn queue_depth(&self) -> StoreResult<u64> {
                (**self).queue_depth().await
            }
            async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
                (**self).reclaim_leases(owner, now).await
            }
            fn node_id(&self) -> Option<WorkerId> {
                (**self).node_id()
            }
            fn wakeups(&self) -> Option<Arc<Notify>> {
                (**self).wakeups()
            }
        }

        #[async_trait]
        impl<T: Retention + ?Sized> Retention for $ptr<T> {
            async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
                (**self).purge_finished_batch(before, batch).await
            }
            async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64> {
                (**self).purge_dedup_batch(before, batch).await
            }
        }

        #[async_trait]
        impl<T: DeliveryHistory + ?Sized> DeliveryHistory for $ptr<T> {
            async fn endpoint_attempts(
                &self,
                org: OrganizationId,
                endpoint: EndpointId,
                query: &AttemptQuery,
            ) -> StoreResult<Option<Vec<AttemptEntry>>> {
                (**self).endpoint_attempts(org, endpoint, query).await
            }
            async fn endpoint_deliveries(
                &self,
                org: OrganizationId,
                endpoint: EndpointId,
                query: &DeliveryQuery,
            ) -> StoreResult<Option<Vec<DeliveryEntry>>> {
                (**self).endpoint_deliveries(org, endpoint, query).await
            }
        }
    )*};
}

forward!(Arc, Box);
