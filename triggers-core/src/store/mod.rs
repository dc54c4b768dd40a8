//! The storage contract: four small traits, together [`EventStore`].
//!
//! A backend implements [`OrgStore`], [`EndpointStore`], [`EventLog`] and [`DeliveryQueue`];
//! [`EventStore`] is then implemented for it automatically. The docs below are the whole
//! contract: a new backend author needs only them and the conformance kit
//! (`triggers_core::conformance`, feature `conformance`), which checks every rule written here.
//!
//! General rules for every method:
//! - **Isolation**: every method that takes an `OrganizationId` sees only that organization's
//!   rows. A foreign id behaves exactly like an unknown id.
//! - **Durability**: a method that returns `Ok` has committed its writes (a process crash right
//!   after the return loses nothing). Writes may be batched with other callers' writes (group
//!   commit), but the reply comes only after the commit.
//! - **Atomicity**: a method either applies all its writes or none; on `Err` nothing changed.
//! - **Time**: stores never read the clock. `now` is always passed in.
//! - **Errors**: see [`StoreError`]; transient failures are `Unavailable` / `Overloaded`.

mod error;
mod types;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

pub use error::{StoreError, StoreResult};
pub use types::{
    AckOutcome, ClaimRequest, Completion, CompletionState, Delivery, InsertOutcome, ListQuery,
    NewEndpoint, Page, QueueStats,
};

use crate::clock::Timestamp;
use crate::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};

/// Organizations and their API key hashes, plus the store's health check.
#[async_trait]
pub trait OrgStore: Send + Sync + 'static {
    /// Stores a new organization with the hash of its first API key.
    ///
    /// Errors: `Conflict` if the id or the key hash is already stored.
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()>;

    /// The organization whose *current* key has this hash. A key replaced by
    /// [`replace_key`](Self::replace_key) finds nothing.
    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>>;

    /// The organization with this id.
    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>>;

    /// Replaces the organization's key hash: from the return on, the old key finds nothing and
    /// the new one finds the organization. `false` if the organization does not exist.
    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool>;

    /// One cheap round trip to the backend: `Ok` if it can serve requests now.
    async fn ping(&self) -> StoreResult<()>;
}

/// Delivery targets (webhook endpoints) of an organization.
#[async_trait]
pub trait EndpointStore: Send + Sync + 'static {
    /// Stores a new, enabled endpoint (with `endpoint.ordering`) and returns it.
    async fn create_endpoint(
        &self,
        org: OrganizationId,
        endpoint: &NewEndpoint,
    ) -> StoreResult<Endpoint>;

    /// The organization's endpoints, oldest first.
    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>>;

    /// Deletes an endpoint and cancels its outstanding (pending or in-flight) deliveries; a
    /// worker still holding a lease on one finds its completion stale. Events keep their
    /// status. `false` if no such endpoint belongs to `org`.
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool>;

    /// Sets how the endpoint's deliveries are scheduled (see
    /// [`DeliveryOrdering`](crate::domain::webhook::DeliveryOrdering)): deliveries queued
    /// from the return on follow the new ordering. Switching to `Parallel` also turns every
    /// outstanding ordered delivery of the endpoint into a parallel one; switching to `Fifo`
    /// orders only deliveries queued afterwards (ones already queued stay parallel and may run
    /// beside the line). `false` if no such endpoint belongs to `org`.
    async fn set_endpoint_ordering(
        &self,
        org: OrganizationId,
        id: EndpointId,
        ordering: DeliveryOrdering,
    ) -> StoreResult<bool>;

    /// Makes `secret` the endpoint's signing secret. The previous secret stays valid for
    /// signing (it is returned second in [`Delivery::secrets`]) while `now <
    /// previous_valid_until`; an older previous secret is forgotten. `false` if no such
    /// endpoint belongs to `org`.
    async fn rotate_endpoint_secret(
        &self,
        org: OrganizationId,
        id: EndpointId,
        secret: &Secret,
        previous_valid_until: Timestamp,
    ) -> StoreResult<bool>;
}

/// Events: insertion with dedup and fan-out, lookup, the inbox, ack, replay and counts.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Inserts a batch of validated events for `org`, all with `created_at == now`, and returns
    /// one outcome per event, in order.
    ///
    /// **Dedup**: an event whose `dedup_id` matches an event of the same organization inserted
    /// less than `dedup_window` ago (its `created_at + dedup_window > now`) is not stored; its
    /// outcome is `Duplicate` with the original's id, type and time. This holds inside one
    /// batch (the second of two equal dedup ids is a duplicate of the first), across
    /// concurrent calls (exactly one of several racing inserts wins, every other call gets the
    /// winner's id), across restarts and across nodes sharing the backend. A dedup entry older
    /// than the window is taken over by the next insert with that id.
    ///
    /// **Fan-out**: for each inserted event, one delivery is queued per *enabled* endpoint of
    /// `org` whose filter matches the type (no filter matches all), due at `now`, attempt 0;
    /// for a FIFO endpoint it is an ordered delivery at the end of the endpoint's line.
    ///
    /// Inserted events have status `pending`. Errors: `Overloaded` when the intake is full;
    /// then nothing was stored.
    async fn insert_events(
        &self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: std::time::Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>>;

    /// One event with its delivery attempts (oldest first).
    async fn event(&self, org: OrganizationId, id: EventId) -> StoreResult<Option<EventDetail>>;

    /// A page of the organization's events matching `query`, in ascending id order (UUID v7,
    /// so creation order). Keyset pagination: pass the previous page's `next_after` as
    /// `query.after`. Paging this way visits every matching event that existed when paging
    /// began exactly once, also while new events arrive. `next_after` is `None` when no
    /// matching event follows the page.
    async fn list_events(&self, org: OrganizationId, query: &ListQuery)
        -> StoreResult<Page<Event>>;

    /// Marks events `delivered` (with `delivered_at = now` unless already delivered).
    /// Idempotent; `failed` events become `delivered`. Outstanding webhook deliveries of an
    /// acknowledged event are not cancelled, and no later delivery outcome changes its status.
    /// Unknown and foreign ids go to `not_found`. Duplicated ids are reported once.
    async fn ack(
        &self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> StoreResult<AckOutcome>;

    /// Delivers an event again: sets it `pending` (clearing `delivered_at`), cancels its
    /// outstanding deliveries (an in-flight worker's completion becomes stale), and queues one
    /// fresh delivery (attempt 0, due `now`) per enabled endpoint matching its type. (A FIFO
    /// endpoint's fresh delivery joins the end of its line.) Returns
    /// the new status (`pending`), or `None` for an unknown or foreign id.
    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>>;

    /// Event counts by status, and in-flight deliveries, for `org`.
    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats>;
}

/// The delivery queue: leases, fenced completions and releases.
///
/// A delivery is **due** when it is pending and `next_attempt_at <= now`, or in flight with an
/// expired lease (`lease_expires_at <= now`: its worker is presumed dead).
#[async_trait]
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Claims up to `req.limit` due deliveries of enabled endpoints, earliest due first, and
    /// leases them to `req.owner` until `req.now + req.lease`, incrementing each one's
    /// attempt number. Concurrent claimers (also on other nodes) never receive the same
    /// delivery while its lease is live. Deliveries of disabled endpoints are not claimed.
    ///
    /// **Fairness.** A due delivery is passed over (it stays due, and later deliveries of
    /// others are claimed instead — a claim never stops at the first one held back) when
    /// taking it would break one of these rules. They count *live* leases (`lease_expires_at
    /// > now`) of every claimer sharing the store, including the deliveries this claim takes;
    /// an expired lease counts for nothing, its delivery being due again:
    /// - **organization share**: an organization holds at most `req.org_concurrency` live
    ///   leases, so one tenant's slow endpoints cannot take every worker while another tenant
    ///   has due deliveries;
    /// - **endpoint concurrency**: a parallel endpoint holds at most
    ///   `req.endpoint_concurrency` live leases;
    /// - **circuit breaker**: a *failing* endpoint (its failing-since time is set: its latest
    ///   finished attempt failed — timeout, connection error, non-2xx — and none succeeded
    ///   since) holds at most one live lease. Its deliveries are tried one at a time, each a
    ///   probe; the first success clears failing-since (see [`complete`](Self::complete)) and
    ///   the endpoint gets its full concurrency back;
    /// - **FIFO**: an *ordered* delivery (queued while its endpoint's ordering was
    ///   [`Fifo`](crate::domain::webhook::DeliveryOrdering::Fifo)) is claimable only when no
    ///   other outstanding ordered delivery of the same endpoint was queued before it. So at
    ///   most one is in flight per endpoint; a delivery waiting for its retry holds the line;
    ///   an expired lease makes the same delivery (the head of the line) due again, first.
    ///   Deliveries queued by one insert are ordered in the insert's order; an insert that
    ///   starts after another returned queues after it.
    ///
    /// FIFO holds strictly between concurrent claimers on every node. The two caps are exact
    /// for claims that do not overlap in time; two claims running at the same moment on
    /// different connections may each count without the other's new leases, so a cap may be
    /// exceeded by what overlapping claims take (never more than one claim batch each).
    ///
    /// A claim need not be durable: if the store itself crashes, a store may forget recent
    /// leases (the PostgreSQL store commits claims asynchronously). Such a delivery is due
    /// again and claimed anew with the same attempt number; the first holder's completion is
    /// then stale. A duplicate attempt at worst, never a lost delivery.
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>>;

    /// Records finished attempts. Each completion applies only if the delivery is still in
    /// flight with the same `lease_owner` and `attempt` (fencing); a stale one changes nothing
    /// and yields `false`. Applying one:
    /// - appends `record` to the event's attempts;
    /// - `Delivered`: the delivery is done; the endpoint is no longer failing; when every
    ///   delivery of a `pending` event is done, the event becomes `delivered` (`delivered_at =
    ///   record.at`);
    /// - `Retry { at }`: pending again, due at `at`, lease cleared;
    /// - `Failed`: the delivery is failed, and a `pending` event becomes `failed`;
    /// - `Retry`/`Failed` set the endpoint's failing-since time if it was not failing;
    /// - `disable_endpoint: Some(reason)` disables the endpoint with that reason.
    ///
    /// Returns one flag per completion, in order.
    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>>;

    /// Gives a claimed delivery back unattempted: pending, lease cleared, attempt number
    /// restored, nothing recorded. It is due again at `due_at` (a deferral, e.g. while its
    /// endpoint is at its concurrency cap), or with `None` when it was due before the claim
    /// (graceful shutdown: it keeps its place in the queue). Fenced like `complete`; `false`
    /// if stale.
    async fn release(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> StoreResult<bool>;

    /// Extends a live lease to `until` (heartbeat for long deliveries). Fenced like `complete`.
    async fn extend_lease(
        &self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> StoreResult<bool>;

    /// Outstanding (pending or in-flight) deliveries across all organizations: the queue depth.
    async fn queue_depth(&self) -> StoreResult<u64>;

    /// A signal the store fires when new deliveries may be due (for example a Postgres
    /// `LISTEN` on other nodes' inserts). `None`: workers rely on in-process wake-ups and
    /// polling.
    fn wakeups(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// Everything persistent. Implemented for every type that implements the four parts.
pub trait EventStore: OrgStore + EndpointStore + EventLog + DeliveryQueue {}

impl<T: OrgStore + EndpointStore + EventLog + DeliveryQueue> EventStore for T {}
