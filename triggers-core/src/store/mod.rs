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
    page_item_size, AckOutcome, ClaimRequest, Completion, CompletionState, Delivery, InsertOutcome,
    ListQuery, NewEndpoint, Page, QueueStats, DEFAULT_MAX_PAGE_BYTES, PAGE_ITEM_OVERHEAD,
};

use crate::clock::Timestamp;
use crate::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{Endpoint, Secret};
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
    /// Stores a new, enabled endpoint and returns it.
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
    /// `org` whose filter matches the type (no filter matches all), due at `now`, attempt 0.
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
    ///
    /// **Byte budget**: the page holds at most `query.limit` events and ends early, before the
    /// first event whose [`page_item_size`] would take the page's sum above `query.max_bytes`;
    /// the first matching event is always included, however large. When the page ended early
    /// and more matching events follow, `next_after` is the last included event's id, so
    /// paging still visits every event exactly once. A backend should not load the payloads of
    /// events it leaves out (the budget bounds the memory a request can make it hold).
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
    /// fresh delivery (attempt 0, due `now`) per enabled endpoint matching its type. Returns
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
