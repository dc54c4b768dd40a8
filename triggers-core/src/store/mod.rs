//! The storage contract: six small traits, together [`EventStore`].
//!
//! A backend implements [`OrgStore`], [`EndpointStore`], [`EventLog`], [`DeliveryQueue`],
//! [`Retention`] and [`DeliveryHistory`];
//! [`EventStore`] is then implemented for it automatically. The docs below are the whole
//! contract: a new backend author needs only them and the conformance kit
//! (`triggers_core::conformance`, feature `conformance`), which checks every rule written here.
//!
//! General rules for every method:
//! - **Isolation**: every method that takes an `OrganizationId` sees only that organization's
//!   rows. A foreign id behaves exactly like an unknown id.
//! - **Durability**: a method that returns `Ok` has committed its writes (a process crash right
//!   after the return loses nothing). Writes may be batched with other callers' writes (group
//!   commit), but the reply comes only after the commit. What must also survive a power loss
//!   or OS crash before the reply: everything except lease bookkeeping ([`DeliveryQueue`]'s
//!   `claim`, `complete`, `complete_and_claim`, `release`, `extend_lease`), which a store may
//!   answer earlier because losing it only makes a delivery due again (a repeat, never a
//!   loss) — with two exceptions: the head of a FIFO line is handed out only once its
//!   predecessor's completion would survive a power loss, so the line never moves past a
//!   delivery that a power loss could make outstanding again; and a completion that
//!   disables an endpoint, which writes an event (its announcement), is answered only once
//!   it would survive a power loss, like every insert.
//! - **Atomicity**: a method either applies all its writes or none; on `Err` nothing changed.
//!   The exceptions are the calls that change an endpoint's whole backlog (disabling,
//!   deleting, switching to parallel): they work in bounded batches (see [`BACKLOG_BATCH`]),
//!   each atomic, and say what a call that stops half-way leaves.
//! - **Time**: stores never read the clock. `now` is always passed in.
//! - **Errors**: see [`StoreError`]; transient failures are `Unavailable` / `Overloaded`.
//! - **Limits**: every store is configured with [`StoreLimits`] (default
//!   [`StoreLimits::default`]) and enforces them itself, also across nodes: most endpoints per
//!   organization ([`EndpointStore::create_endpoint`]) and most attempt records kept per event
//!   and endpoint ([`DeliveryQueue::complete`]).

mod error;
pub mod operational;
mod types;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

pub use error::{StoreError, StoreResult};
pub use types::{
    page_item_size, AckOutcome, AttemptEntry, AttemptPosition, AttemptQuery, ClaimRequest,
    CompletedAndClaimed, Completion, CompletionState, Delivery, DeliveryEntry, DeliveryQuery,
    DeliveryState, DeliveryStatus, EndpointPatch, EndpointUpdate, InsertOutcome, ListQuery,
    NewEndpoint, Page, QueueStats, RecoverQuery, Recovered, StoreLimits, DEFAULT_MAX_PAGE_BYTES,
    PAGE_ITEM_OVERHEAD,
};

use crate::clock::Timestamp;
use crate::domain::event::{Event, EventDetail, EventRecord, EventStatus};
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};

/// Most deliveries of one endpoint that one write changes when the endpoint is disabled,
/// deleted or switched to parallel.
///
/// One endpoint's backlog is bounded only by its organization's rate limit times the retry
/// schedule, so changing all of it in one write could hold a store's writer (SQLite), an
/// endpoint lock and a completion batch shared with other organizations (PostgreSQL) or the
/// store's mutex (memory) for seconds. These calls therefore change the backlog in writes of
/// at most this many deliveries each, other organizations' writes running between them:
/// - **disabling** takes effect in one write — from then on no delivery of the endpoint is
///   claimed and inserts give it failed deliveries — and its outstanding deliveries are
///   failed in batches after it. [`EndpointStore::update_endpoint`] returns once none is
///   left; [`DeliveryQueue::complete`] fails at most one batch itself (its write is shared
///   with other organizations' completions) and leaves the rest, unclaimed, to
///   [`EndpointStore::finish_disabling`], which the worker pool calls right after. If a
///   disable stops half-way (an error, a crash), what is left is never claimed and is failed
///   by `finish_disabling` (the worker pool calls it at start-up for every endpoint
///   [`EndpointStore::unfinished_disables`] names), by the next disable of the endpoint, or
///   by enabling it (which fails it first, so nothing queued before the disable is
///   delivered after it);
/// - **deleting** ([`EndpointStore::delete_endpoint`]) first cancels the endpoint's pending
///   deliveries and forgets its failed ones in batches, then deletes it with what is left
///   (its in-flight deliveries and what arrived meanwhile) in one write. So its pending
///   deliveries may vanish a moment before the endpoint does; a delete that stops half-way
///   leaves the endpoint with the part of its backlog not yet cancelled (delete it again);
/// - **switching to parallel** ([`EndpointStore::set_endpoint_ordering`], or an `ordering`
///   in a patch) first turns the endpoint's ordered deliveries into parallel ones in batches,
///   oldest first, while the endpoint is still FIFO (ones turned parallel may run beside
///   the rest of the line, as after a switch to FIFO), then switches it with what is left in
///   one write. A switch that stops half-way leaves a FIFO endpoint whose line is shorter.
///
/// The batches of a delete or a switch stop once one finds fewer than this many; they catch
/// up with the endpoint's new deliveries as long as the organization's inserts add fewer than
/// a batch per write (its rate limit is far below that), and the last write takes the rest.
pub const BACKLOG_BATCH: usize = 1_000;

/// What one batch write of an endpoint-wide change did (see [`BACKLOG_BATCH`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// How many deliveries it changed.
    pub changed: u64,
    /// Whether it found a whole batch to change, so more may be left. A store whose pick
    /// can lose rows to concurrent writers (PostgreSQL) says what it *found*: counting what
    /// it changed would end the loop early whenever a row was completed or claimed between
    /// the pick and the change.
    pub more: bool,
}

impl Batch {
    /// A batch of a store whose pick and change are one (SQLite's writer, the memory store's
    /// mutex): more may be left when it changed a whole batch.
    pub fn of(changed: u64) -> Self {
        Self { changed, more: changed >= BACKLOG_BATCH as u64 }
    }
}

/// Runs `batch` — one write that changes at most [`BACKLOG_BATCH`] deliveries of one
/// endpoint — until one finds no more; returns how many were changed in all. What every
/// store's [`EndpointStore::finish_disabling`], and the batches before a delete or a switch
/// to parallel, are made of.
///
/// For a disable it ends: a disabled endpoint gets no new outstanding deliveries (inserts and
/// replays give it failed ones, claims and recovers pass it over), so every full batch
/// shrinks a finite set. For the others, see [`BACKLOG_BATCH`].
pub async fn in_batches<B, F>(mut batch: B) -> StoreResult<u64>
where
    B: FnMut() -> F,
    F: std::future::Future<Output = StoreResult<Batch>>,
{
    let mut total = 0;
    loop {
        let done = batch().await?;
        total += done.changed;
        if !done.more {
            return Ok(total);
        }
    }
}

/// [`EndpointStore::update_endpoint`] in batches, for a store whose `update` write applies the
/// patch and fails at most [`BACKLOG_BATCH`] outstanding deliveries when the endpoint is (or
/// becomes) disabled, or is enabled over what a disable left behind, and whose `batch` write
/// is one step of [`EndpointStore::finish_disabling`]: an enable (`enabled: Some(true)`)
/// first fails what is left in batches, then runs `update`; a disable runs `update`, then
/// the batches until none is left.
pub async fn update_in_batches<U, FU, B, FB>(
    enabled: Option<bool>,
    update: U,
    mut batch: B,
) -> StoreResult<Option<EndpointUpdate>>
where
    U: FnOnce() -> FU,
    FU: std::future::Future<Output = StoreResult<Option<EndpointUpdate>>>,
    B: FnMut() -> FB,
    FB: std::future::Future<Output = StoreResult<Batch>>,
{
    let before = if enabled == Some(true) { in_batches(&mut batch).await? } else { 0 };
    let Some(mut update) = update().await? else { return Ok(None) };
    if enabled == Some(false) && !update.endpoint.enabled {
        // Always at least one more batch: what `update` failed says nothing certain about
        // what is left when its pick can lose rows to concurrent writers.
        update.failed += in_batches(batch).await?;
    }
    update.failed += before;
    Ok(Some(update))
}

/// Organizations and their API key hashes, plus the store's health check.
#[async_trait]
pub trait OrgStore: Send + Sync + 'static {
    /// Stores a new organization with the hash of its first API key.
    ///
    /// Errors: `Conflict` if the id or the key hash is already stored; then nothing changed.
    /// Of several concurrent calls with the same id (also on other nodes) exactly one
    /// succeeds and every other one gets `Conflict`: the Ingestor's get-or-create
    /// ([`Ingestor::organization_or_create`](crate::Ingestor::organization_or_create)) relies
    /// on it.
    async fn create_organization(&self, org: &Organization, key: &KeyHash) -> StoreResult<()>;

    /// The organization whose *current* key has this hash. A key replaced by
    /// [`replace_key`](Self::replace_key) finds nothing.
    async fn organization_by_key(&self, key: &KeyHash) -> StoreResult<Option<Organization>>;

    /// The organization with this id.
    async fn organization(&self, id: OrganizationId) -> StoreResult<Option<Organization>>;

    /// Replaces the organization's key hash: from the return on, the old key finds nothing and
    /// the new one finds the organization. `false` if the organization does not exist.
    async fn replace_key(&self, id: OrganizationId, key: &KeyHash) -> StoreResult<bool>;

    /// One cheap round trip to the backend: `Ok` if it can serve requests now — reads *and*
    /// writes. Bounded in time (a backend that cannot be reached fails within its connect
    /// or acquire timeout, never hangs). Fails with `Unavailable` whose message names the
    /// cause in words an operator understands and without secrets ("connection refused",
    /// "the disk is full", "database \"x\" does not exist") while the backend is unreachable
    /// or writes fail; a backend that tracks write failures may probe with a cheap write, at
    /// a bounded rate, to notice that writes work again. Once the fault is gone, `ping`
    /// succeeds again without a restart.
    async fn ping(&self) -> StoreResult<()>;
}

/// Delivery targets (webhook endpoints) of an organization.
///
/// **Failed deliveries.** A delivery that ends `failed` — its retries ran out, its endpoint
/// was disabled while it was outstanding, or its event matched an endpoint that was already
/// disabled — is remembered per (event, endpoint) with a reason (the last attempt's error,
/// the disabled reason, or [`ENDPOINT_DISABLED`](crate::domain::webhook::ENDPOINT_DISABLED)),
/// until [`recover`](EndpointStore::recover) queues it again, a replay of its event or the
/// deletion of its endpoint forgets it. It is not outstanding work: it is not in the queue
/// depth, the in-flight count or any claim.
#[async_trait]
pub trait EndpointStore: Send + Sync + 'static {
    /// Stores a new, enabled endpoint and returns it (with `endpoint.ordering`; no description, no custom headers, no
    /// rate or concurrency limit of its own).
    ///
    /// Errors: `LimitExceeded` (nothing stored) when the organization already has
    /// [`StoreLimits::max_endpoints`] endpoints. The check and the insert are atomic: racing
    /// creations, also on other nodes, never take an organization past the limit.
    async fn create_endpoint(
        &self,
        org: OrganizationId,
        endpoint: &NewEndpoint,
    ) -> StoreResult<Endpoint>;

    /// The organization's endpoints, oldest first.
    async fn endpoints(&self, org: OrganizationId) -> StoreResult<Vec<Endpoint>>;

    /// One endpoint of the organization; `None` for an unknown or foreign id.
    async fn endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<Option<Endpoint>>;

    /// Applies `patch` (already validated) to one endpoint and returns it as it is now, with
    /// whether it was enabled before; `None` for an unknown or foreign id (nothing changed).
    ///
    /// - A change of `enabled` (enabled until now and disabled, or the reverse) inserts the
    ///   operational event [`operational::endpoint_changed`] about the endpoint as it is
    ///   after the patch (`now`; into the organization's inbox and to its other matching
    ///   endpoints, as [`EventLog::insert_events`] would) **in the write that makes the
    ///   change**: a change is announced once, and never without the other. A patch that
    ///   changes nothing of `enabled` inserts none. (A store whose insert would take locks
    ///   the change's write must not wait for may instead record the event in an outbox in
    ///   that write and insert it from there once it commits — before the call returns,
    ///   and, if that fails, soon after by itself: exactly once either way. The PostgreSQL
    ///   store does.)
    /// - `enabled: Some(true)` enables it, clears `disabled_reason` and its failing-since
    ///   time; deliveries failed while it was disabled stay failed (see `recover`). Outstanding
    ///   deliveries a disable left behind (see [`BACKLOG_BATCH`]) are failed first, with the
    ///   disabled reason, and counted in `failed`.
    /// - `enabled: Some(false)` on an enabled endpoint disables it with reason
    ///   [`DISABLED_BY_REQUEST`](crate::domain::webhook::DISABLED_BY_REQUEST) and fails every
    ///   outstanding delivery of it (pending or in flight, whose worker then finds its
    ///   completion stale) with that reason: no attempt is recorded, a `pending` event
    ///   becomes `failed`. `failed` counts them. Disabling a disabled endpoint keeps its
    ///   reason and fails only what a disable left behind, with that reason.
    /// - The endpoint's own change (and the disable) is one write; failing its outstanding
    ///   deliveries takes writes of at most [`BACKLOG_BATCH`] each (for an enable, before the
    ///   write that enables it), so other organizations' writes are not held up by one
    ///   endpoint's backlog.
    /// - A new filter applies to events inserted from then on.
    /// - A new `ordering` applies as [`set_endpoint_ordering`](Self::set_endpoint_ordering)
    ///   describes.
    async fn update_endpoint(
        &self,
        org: OrganizationId,
        id: EndpointId,
        patch: &EndpointPatch,
        now: Timestamp,
    ) -> StoreResult<Option<EndpointUpdate>>;

    /// Queues again, oldest event first (by creation time, then event order), up to
    /// `query.limit` failed deliveries of the endpoint whose event was created in
    /// `[since, until)`, **finding them without walking the endpoint's failed deliveries
    /// outside the window** (a call is charged one unit however many it finds, so a window
    /// that holds nothing must cost little): each becomes a new pending
    /// delivery (attempt 0, due `now`) and is no longer failed — for a FIFO endpoint an
    /// ordered delivery joining the end of its line, so the recovered ones go one at a time,
    /// in event order, after what was already waiting (like a fresh insert); a `failed` event becomes
    /// `pending` again (a `delivered` one stays delivered, as after an ack) and is not
    /// `delivered` before the recovered delivery succeeds, also when another delivery of it
    /// was in flight during the recover and succeeds first. `more` tells
    /// whether failed deliveries of the window remain. `None` for an unknown or foreign id;
    /// a disabled endpoint recovers nothing (`queued: 0`; its failed deliveries stay).
    async fn recover(
        &self,
        org: OrganizationId,
        id: EndpointId,
        query: RecoverQuery,
        now: Timestamp,
    ) -> StoreResult<Option<Recovered>>;

    /// Fails the outstanding deliveries a *disabled* endpoint still has — those a
    /// [`complete`](DeliveryQueue::complete) that disabled it left, or a disable that stopped
    /// half-way — with its disabled reason, in writes of at most [`BACKLOG_BATCH`] each, as
    /// disabling through `update_endpoint` would have; returns how many. An enabled, unknown
    /// or foreign endpoint: nothing changes, `0`.
    ///
    /// The worker pool calls it for every endpoint its completions disabled, and at start-up
    /// for every endpoint [`unfinished_disables`](Self::unfinished_disables) names.
    async fn finish_disabling(
        &self,
        org: OrganizationId,
        id: EndpointId,
        now: Timestamp,
    ) -> StoreResult<u64>;

    /// The disabled endpoints, of every organization, that still have outstanding deliveries
    /// (left by a completion that disabled them, or by a disable that stopped half-way, for
    /// instance in a crash), for [`finish_disabling`](Self::finish_disabling). Work in the
    /// number of disabled endpoints, not in their deliveries.
    async fn unfinished_disables(&self) -> StoreResult<Vec<(OrganizationId, EndpointId)>>;

    /// The announcements ([`operational`]) recorded with their change but not yet inserted
    /// into their organization's stream, across all organizations: for an operator's alarm
    /// (`triggers_announcements_waiting`). A call that makes a change and finds nothing of
    /// the organization held by others leaves none behind; a store that inserts them in the
    /// change's own write has none ever — the default.
    async fn announcement_backlog(&self) -> StoreResult<operational::AnnouncementBacklog> {
        Ok(operational::AnnouncementBacklog::default())
    }

    /// Deletes an endpoint and cancels its outstanding (pending or in-flight) deliveries (a
    /// large backlog in batches first, see [`BACKLOG_BATCH`]); a
    /// worker still holding a lease on one finds its completion stale, but its attempt is
    /// still recorded in the event's history, as for a delivery a
    /// [`replay`](EventLog::replay) supersedes (the same memory, fenced the same way, dropped
    /// when the completion arrives or by the first replay after the lease expired). Attempts
    /// already recorded stay. Its failed deliveries are forgotten. Events keep their status.
    /// `false` if no such endpoint belongs to `org`.
    async fn delete_endpoint(&self, org: OrganizationId, id: EndpointId) -> StoreResult<bool>;

    /// Sets how the endpoint's deliveries are scheduled (see
    /// [`DeliveryOrdering`]): deliveries queued
    /// from the return on follow the new ordering. Switching to `Parallel` also turns every
    /// outstanding ordered delivery of the endpoint into a parallel one (a long line in
    /// batches first, see [`BACKLOG_BATCH`]); switching to `Fifo`
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

    /// Rewrites stored signing secrets in place (used to encrypt them at rest, see
    /// [`SecretCipher`](crate::domain::sealed::SecretCipher)): calls `rewrite` with the id
    /// and each stored secret (the current one, and a rotated-out previous one) of every
    /// endpoint of every organization, and stores what it returns instead (`None` keeps the
    /// secret). Secrets are opaque text to the store: whatever is stored, plaintext or
    /// sealed, is returned unchanged by `create_endpoint`, `endpoints` and `claim`.
    ///
    /// Works in batches of endpoints, each its own write; a secret that changed since it
    /// was read (a concurrent rotation) is not overwritten. A store that keeps data in files
    /// must not leave the replaced text readable in them (SQLite: `secure_delete` while
    /// rewriting). Returns how many secrets were rewritten.
    async fn rewrite_secrets(&self, rewrite: SecretRewrite) -> StoreResult<u64>;
}

/// The function [`EndpointStore::rewrite_secrets`] applies to each stored secret.
pub type SecretRewrite = Arc<dyn Fn(EndpointId, &Secret) -> Option<Secret> + Send + Sync>;

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
    /// Each *disabled* endpoint whose filter matches gets a failed delivery instead (reason
    /// [`ENDPOINT_DISABLED`](crate::domain::webhook::ENDPOINT_DISABLED), no attempt), which
    /// `recover` can queue once the endpoint is enabled again; `InsertOutcome::deliveries`
    /// counts only the queued ones.
    /// An event's [`exclude_endpoint`](EventRecord::exclude_endpoint) gets neither.
    /// Concurrent endpoint changes: every matching endpoint that exists when the insert
    /// commits gets exactly one of the two, by the state the insert saw it in, whatever
    /// `update_endpoint` or `delete_endpoint` runs at the same time (a store that locks must
    /// read an endpoint it waited for as that change left it); `replay` likewise.
    ///
    /// Inserted events have status `pending`, or `failed` when a matching endpoint is
    /// disabled (a failed delivery fails its event, as always). Errors: `Overloaded` when the intake is full;
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
    /// outstanding deliveries (an in-flight worker's completion becomes stale), forgets its
    /// failed deliveries, drops the oldest attempts of endpoints that no longer exist beyond
    /// [`StoreLimits::max_attempts_kept`] (they count together), and fans out afresh like an
    /// insert: one fresh delivery (attempt 0,
    /// due `now`) per enabled endpoint matching its type, a failed one per matching disabled
    /// endpoint (then the event is `failed` again); a FIFO endpoint's fresh delivery joins
    /// the end of its line. Returns the new status (`pending`, or
    /// `failed` in that case), or `None` for an unknown or foreign id.
    ///
    /// **Superseded attempts are still recorded**: a cancelled delivery that was in flight
    /// is remembered with its lease (owner, attempt, expiry). When its worker completes it,
    /// the completion is stale (`false`, no status or endpoint change), but its attempt
    /// record is appended to the event's history: an attempt that was really made is never
    /// lost. The memory is dropped when the completion arrives, or once the lease has expired (every
    /// replay first forgets the superseded leases that expired before its `now`), so it is
    /// bounded by the deliveries in flight.
    async fn replay(
        &self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> StoreResult<Option<EventStatus>>;

    /// Event counts by status, and in-flight deliveries, for `org`. `in_flight` counts every
    /// delivery in the in-flight state, including one whose lease has expired but which no
    /// worker has claimed again yet (the store does not read the clock; a claim or
    /// [`DeliveryQueue::reclaim_leases`] moves it on).
    async fn stats(&self, org: OrganizationId) -> StoreResult<QueueStats>;

    /// How many of `org`'s events are `pending`: the `pending` of [`stats`](Self::stats),
    /// read **without walking the events** (a counter the store keeps in the writes that
    /// change an event's status), so it costs the same for an organization with ten pending
    /// events and one with ten million. The [`Ingestor`](crate::Ingestor) reads it to bound
    /// what an organization keeps stored
    /// ([`IngestorConfig::max_pending`](crate::IngestorConfig::max_pending)).
    ///
    /// Every write that inserts, finishes, acknowledges, fails, replays, recovers or purges
    /// events changes the count in the same transaction, so once the write has returned the
    /// count includes it. A store that spreads the counter over rows folded in the background
    /// (PostgreSQL) still answers the exact sum.
    ///
    /// The default reads `stats` (walking the events); every store of this workspace keeps a
    /// counter instead.
    async fn pending_events(&self, org: OrganizationId) -> StoreResult<u64> {
        Ok(self.stats(org).await?.pending)
    }
}

/// The delivery queue: leases, fenced completions and releases.
///
/// A delivery is **due** when it is pending and `next_attempt_at <= now`, or in flight with an
/// expired lease (`lease_expires_at <= now`: its worker is presumed dead).
#[async_trait]
pub trait DeliveryQueue: Send + Sync + 'static {
    /// Claims up to `req.limit` due deliveries of enabled endpoints, earliest due first, and
    /// leases them to `req.owner` until `req.now + req.lease`, incrementing each one's
    /// attempt number. Each [`Delivery`] carries the endpoint's signing secrets valid at
    /// `req.now`: the current secret first, then the rotated-out one while `req.now <
    /// previous_valid_until` (see [`EndpointStore::rotate_endpoint_secret`]). Concurrent claimers (also on other nodes) never receive the same
    /// delivery while its lease is live. Deliveries of disabled endpoints are not claimed.
    ///
    /// **Fairness.** A due delivery is passed over (it stays due, and later deliveries of
    /// others are claimed instead — a claim never stops at the first one held back, and
    /// held-back deliveries never count against `req.limit`, however many come first) when
    /// taking it would break one of these rules. A store should find claimable deliveries
    /// without visiting every held-back one (this project's three stores look per
    /// endpoint): one endpoint's backlog at its cap must not make every claim slower. They
    /// count *live* leases (`lease_expires_at > now`) of every claimer sharing the store,
    /// including the deliveries this claim takes; an expired lease counts for nothing, its
    /// delivery being due again:
    /// - **organization share**: an organization holds at most `req.org_concurrency` live
    ///   leases, so one tenant's slow endpoints cannot take every worker while another tenant
    ///   has due deliveries;
    /// - **endpoint concurrency**: a parallel endpoint holds at most
    ///   `req.endpoint_concurrency` live leases, or its own limit
    ///   ([`Endpoint::concurrency`], set through `update_endpoint`) when that is lower — an
    ///   endpoint's own limit can lower the claim's cap, never raise it (a stored 0 counts as
    ///   1). The same rule as the webhook deliverer's per-node check, so the two agree. An
    ///   endpoint with a delivery rate of its own ([`Endpoint::rate_limit`], per second)
    ///   holds at most twice its rate (at least 1) when that is lower still: what its rate
    ///   does not let it send, the deliverer would only put back, and a low rate over a large
    ///   backlog would keep the workers claiming and releasing it;
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
    /// leases (the PostgreSQL store commits claims and completions asynchronously). Such a
    /// delivery is due again and claimed anew with the same attempt number; the first
    /// holder's completion is then stale. A duplicate attempt at worst, never a lost
    /// delivery.
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Delivery>>;

    /// Records finished attempts. Each completion applies only if the delivery is still in
    /// flight with the same `lease_owner` and `attempt` (fencing); a stale one changes nothing
    /// and yields `false` (except that the attempt of a delivery superseded by
    /// [`EventLog::replay`] is still appended to the history, see there). Applying one:
    /// - appends `record` to the event's attempts, then drops the oldest attempts of that
    ///   event and endpoint beyond [`StoreLimits::max_attempts_kept`] (this also applies to a
    ///   superseded attempt);
    /// - `Delivered`: the delivery is done; the endpoint is no longer failing; when every
    ///   delivery of a `pending` event is done, the event becomes `delivered` (`delivered_at =
    ///   record.at`);
    /// - `Retry { at }`: pending again, due at `at`, lease cleared;
    /// - `Failed`: the delivery is failed (remembered with the attempt's error as reason),
    ///   and a `pending` event becomes `failed`;
    /// - `Retry`/`Failed` set the endpoint's failing-since time to `record.at` (the attempt's
    ///   own time, not the time of the call) if it was not failing already; a later failure
    ///   keeps the earlier time;
    /// - `disable_endpoint: Some(reason)` disables the endpoint with that reason (one already
    ///   disabled — by request, or by an earlier completion — keeps its reason) and then
    ///   fails its outstanding deliveries with that reason (also this one after a `Retry`),
    ///   like disabling through `update_endpoint` — but at most [`BACKLOG_BATCH`] of them per
    ///   endpoint and call, however many of its completions disable it: the rest stay
    ///   outstanding, are never claimed, and are failed by [`EndpointStore::finish_disabling`].
    ///   Which call disabled the endpoint (it was enabled until then) is reported by
    ///   [`complete_and_claim`](Self::complete_and_claim) ([`CompletedAndClaimed::disabled`]).
    ///   The completion that disables it (only that one: the endpoint was enabled until
    ///   then) also inserts, in the same write, the operational event
    ///   [`operational::endpoint_changed`] (`triggers.endpoint.disabled`, its reason, created
    ///   at `record.at`; into the organization's inbox and to its other matching endpoints,
    ///   as [`EventLog::insert_events`] would; or through an outbox, as `update_endpoint`
    ///   allows). So each disable is announced exactly once: an error or a crash after the
    ///   write cannot lose the announcement, and a retry finds the completion stale. A call
    ///   with such a completion is answered only once its write would survive a power loss
    ///   (see "Durability" above).
    ///
    /// Returns one flag per completion, in order.
    async fn complete(&self, completions: &[Completion]) -> StoreResult<Vec<bool>>;

    /// Records `completions` exactly as [`complete`](Self::complete) does, then claims
    /// exactly as [`claim`](Self::claim) does with `req`, and the claim sees what the
    /// completions did: a lease they ended no longer counts against its organization's share
    /// or its endpoint's cap, an endpoint they made failing is held to one lease, a FIFO line
    /// whose head they finished offers its next delivery. A stale completion ends nothing and
    /// frees nothing.
    ///
    /// The worker pool calls it with every batch of finished attempts, so a slot freed under
    /// a cap is taken again in the same round trip that frees it. A store should make it
    /// cheaper than the two calls — one transaction and one commit (the SQLite store), or
    /// one connection and two commits that wait for no flush (the PostgreSQL store): that is
    /// the point of the method. The rules of `claim` hold unchanged, also between nodes —
    /// the claim counts the leases live after the completions, which is what a separate
    /// `claim` right after `complete` would count.
    ///
    /// Errors: `Err` means nothing was recorded and nothing claimed (retry the completions).
    /// A claim that fails after the completions were recorded is reported in
    /// [`CompletedAndClaimed::claimed`]; the flags in `applied` are then still valid.
    /// Durability: the completions are committed on return (see the module's durability rule
    /// for power loss), the claim is as durable as `claim`'s (or more).
    ///
    /// With `req.limit == 0` it claims nothing (and makes no claim round trip): the worker
    /// pool records completions this way when it has no free worker, to learn which
    /// endpoints they disabled ([`CompletedAndClaimed::disabled`]).
    ///
    /// The default calls `complete`, then `claim` (two round trips, the same result), and
    /// reports as disabled every endpoint an applied completion asked to disable.
    async fn complete_and_claim(
        &self,
        completions: &[Completion],
        req: ClaimRequest,
    ) -> StoreResult<CompletedAndClaimed> {
        let applied = self.complete(completions).await?;
        let mut disabled: Vec<EndpointId> = Vec::new();
        for (c, _) in completions.iter().zip(&applied).filter(|(_, applied)| **applied) {
            let endpoint = c.record.endpoint_id;
            if c.disable_endpoint.is_some() && !disabled.contains(&endpoint) {
                disabled.push(endpoint);
            }
        }
        let claimed = if req.limit == 0 { Ok(Vec::new()) } else { self.claim(req).await };
        Ok(CompletedAndClaimed { applied, disabled, claimed })
    }

    /// Gives a claimed delivery back unattempted: pending, lease cleared, attempt number
    /// restored (the next claim gets the same number again), nothing recorded. It is due
    /// again at `due_at` (a deferral, e.g. while its endpoint is at its concurrency cap), or,
    /// with `None`, at exactly the time it was due when it was claimed — so it is due at once
    /// and keeps its place in the queue ahead of later work (graceful shutdown). Fenced like
    /// `complete`; `false` if stale.
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

    /// Ends every live lease held by `owner`: its in-flight deliveries are due at once, as if
    /// their leases had expired at `now` (the next claim takes them with the next attempt
    /// number, and a late completion or release by the old holder is stale). Deliveries
    /// leased to other owners, and leases already expired, are untouched. Returns how many
    /// leases ended.
    ///
    /// The workers call it at start-up for their own (stable) lease owner id: whatever that
    /// id still holds belongs to a previous run of the same node that crashed or was never
    /// shut down, so its deliveries go out at once instead of after the lease.
    ///
    /// The default ends nothing (leases then run out after their length), so wrappers and
    /// older backends keep compiling; the conformance kit
    /// (`reclaimed_leases_are_due_at_once`) requires a real implementation.
    async fn reclaim_leases(&self, owner: WorkerId, now: Timestamp) -> StoreResult<u64> {
        let _ = (owner, now);
        Ok(0)
    }

    /// A lease-owner id that persists with the store's data across restarts, for a store that
    /// one process uses at a time (the SQLite file keeps one). The workers then lease under
    /// this id and [`reclaim`](Self::reclaim_leases) its leases at start-up. `None` (the
    /// default): a fresh id per run, unless `WorkerConfig::node_id` names one; leases of a
    /// crashed run then expire after the lease length.
    fn node_id(&self) -> Option<WorkerId> {
        None
    }

    /// A signal the store fires when new deliveries may be due (for example a Postgres
    /// `LISTEN` on other nodes' inserts). `None`: workers rely on in-process wake-ups and
    /// polling.
    fn wakeups(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// Retention: purging finished events and expired dedup entries, one small batch per call.
///
/// Each call is one short write (its own transaction), so a caller that loops over batches,
/// yielding in between, never blocks ingestion for long. The
/// [`Ingestor`](crate::Ingestor) does so on a timer when
/// [`IngestorConfig::retention`](crate::IngestorConfig::retention) is set.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Deletes up to `batch` events of any organization whose status is `delivered` or
    /// `failed` and whose `created_at < before`, oldest first, with their attempt records and
    /// any deliveries still outstanding for them (a worker still holding one finds its
    /// completion stale). `pending` events are never purged. Returns how many events were
    /// deleted; fewer than `batch` means no such event is left.
    async fn purge_finished_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64>;

    /// Forgets up to `batch` dedup entries created before `before` (their window is over);
    /// an event with such a dedup id is then stored as new. Returns how many were forgotten;
    /// fewer than `batch` tells the caller to stop until its next round (a store may examine
    /// entries in insertion order and leave one stuck behind a newer entry for later). Dedup entries are forgotten independently of
    /// their events, so purging events never shortens a dedup window.
    async fn purge_dedup_batch(&self, before: Timestamp, batch: u32) -> StoreResult<u64>;
}

/// An endpoint's delivery history, for operators debugging a receiver: its recorded attempts
/// and the status of each of its deliveries. Reads only.
///
/// Both lists are scoped to one endpoint of one organization, answer `None` for an unknown
/// or foreign endpoint, and page newest first with a keyset (`before`). A backend reads them
/// through an index that starts with the endpoint, so a page never walks another endpoint's
/// or organization's rows. Without filters a page costs what it returns; a filter (a status,
/// an outcome, `since` on an index ordered otherwise) may skip rows of the same endpoint that
/// do not match, which bounds the cost by that endpoint's own history.
#[async_trait]
pub trait DeliveryHistory: Send + Sync + 'static {
    /// Up to `query.limit` attempt records of the endpoint, newest
    /// [`position`](AttemptEntry::position) first (by finishing time, then by the store's
    /// sequence number), strictly before `query.before`, finished at or after `query.since`,
    /// and only successful (`error` is `None`) or failed ones when `query.success` says so.
    ///
    /// The records are the ones [`EventLog::event`] shows for the endpoint (superseded
    /// attempts included); those dropped by [`StoreLimits::max_attempts_kept`] or purged with
    /// their event are gone. Positions are unique: paging with the last entry's position as
    /// `before` visits every record that existed when paging began exactly once.
    async fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> StoreResult<Option<Vec<AttemptEntry>>>;

    /// Up to `query.limit` deliveries of the endpoint, one per event, newest event (largest
    /// [`position`](DeliveryEntry::position)) first, of events positioned below
    /// `query.before`, of `query.status` if given.
    /// A delivery of an event to this endpoint is:
    /// - `Pending` / `InFlight` while it is outstanding (in flight while leased, also with
    ///   an expired lease nobody claimed again), with its attempt count, due time or lease;
    /// - else `Failed` while a failed delivery is remembered for it (see
    ///   [`EndpointStore::recover`]), with its time and reason;
    /// - else `Delivered` when a successful attempt of the event to the endpoint is recorded,
    ///   with the newest such attempt's time;
    /// - else it is not listed (the event never matched the endpoint, or its records were
    ///   dropped or purged).
    ///
    /// Paging with the last entry's position as `before` visits every listed delivery once
    /// (a delivery that changes status between pages is seen in the status it had when its
    /// page was read).
    async fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> StoreResult<Option<Vec<DeliveryEntry>>>;
}

/// Everything persistent. Implemented for every type that implements the six parts.
///
/// Also implemented for `Arc<S>` and `Box<S>` of any store, `dyn EventStore` included, so a
/// backend can be picked at run time ([`DynStore`]) and a store can be shared between an
/// [`Ingestor`](crate::Ingestor) and other code.
///
/// ```
/// use std::sync::Arc;
/// use triggers_core::{DynStore, Ingestor, IngestorConfig, MemoryStore, NoDeliverer};
/// let store: DynStore = Arc::new(MemoryStore::new()); // or a SQLite/PostgreSQL store
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let ingestor = Ingestor::start(store, NoDeliverer, IngestorConfig::default());
/// # ingestor.shutdown().await; });
/// ```
pub trait EventStore:
    OrgStore + EndpointStore + EventLog + DeliveryQueue + Retention + DeliveryHistory
{
}

impl<T> EventStore for T where
    T: OrgStore + EndpointStore + EventLog + DeliveryQueue + Retention + DeliveryHistory
{
}

/// A store chosen at run time: any backend behind one type.
pub type DynStore = Arc<dyn EventStore>;

mod forward;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod batch_tests {
    use super::*;

    /// The loop goes on while a batch *found* a whole batch, also when it changed fewer (rows
    /// a concurrent writer took between its pick and its change), and adds up what changed.
    #[tokio::test]
    async fn batches_go_on_while_one_found_a_whole_batch() {
        let mut script = vec![
            Batch { changed: 998, more: true },
            Batch { changed: 1000, more: true },
            Batch { changed: 7, more: false },
            Batch { changed: 1000, more: true },
        ]
        .into_iter();
        let mut calls = 0;
        let total = in_batches(|| {
            calls += 1;
            let next = script.next().unwrap();
            async move { Ok(next) }
        })
        .await
        .unwrap();
        assert_eq!((total, calls), (2005, 3));
        assert_eq!(Batch::of(999), Batch { changed: 999, more: false });
        assert_eq!(Batch::of(1000), Batch { changed: 1000, more: true });
    }
}
