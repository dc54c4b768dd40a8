//! Values passed to and returned from stores.

use std::time::Duration;

use serde_json::value::RawValue;

use crate::clock::Timestamp;
use crate::domain::event::{EventMeta, EventStatus};
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret, TypeGlob};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};

/// The outcome of inserting one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The event was stored; `deliveries` deliveries were created for it (fan-out).
    Inserted {
        /// The new event.
        meta: EventMeta,
        /// How many deliveries (one per matching enabled endpoint) were queued.
        deliveries: u32,
    },
    /// An event with the same `(organization, dedup_id)` exists inside the dedup window;
    /// nothing was stored. `meta` describes the original event.
    Duplicate(EventMeta),
}

impl InsertOutcome {
    /// The event described: the new one, or the original of a duplicate.
    pub fn meta(&self) -> &EventMeta {
        match self {
            Self::Inserted { meta, .. } | Self::Duplicate(meta) => meta,
        }
    }
}

/// What [`EventLog::list_events`](super::EventLog::list_events) returns: filters and a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only events with this status.
    pub status: EventStatus,
    /// Only events whose type matches.
    pub type_glob: Option<TypeGlob>,
    /// At most this many events (1–1000).
    pub limit: u32,
    /// Only events with an id greater than this (keyset pagination).
    pub after: Option<EventId>,
    /// Byte budget of the page: it ends before the first event that would take the sum of
    /// [`page_item_size`]s above this, but always holds at least one event.
    pub max_bytes: u64,
}

/// Default byte budget of one list page (4 MiB): [`ListQuery::max_bytes`].
pub const DEFAULT_MAX_PAGE_BYTES: u64 = 4 * 1024 * 1024;

/// What one listed event counts against [`ListQuery::max_bytes`], on top of its payload,
/// type and dedup id: room for the id, status, timestamps and field names of a listing.
pub const PAGE_ITEM_OVERHEAD: u64 = 256;

/// The size an event counts against a page's byte budget: the bytes of its payload's JSON
/// text, its type and its dedup id, plus [`PAGE_ITEM_OVERHEAD`]. SQL backends compute the same
/// sum from the stored columns (`octet_length`), so they can stop before loading a payload.
pub fn page_item_size(event_type: &str, payload: &str, dedup_id: Option<&str>) -> u64 {
    let text = payload.len() + event_type.len() + dedup_id.map_or(0, str::len);
    text as u64 + PAGE_ITEM_OVERHEAD
}

/// One page of events, in ascending id (= creation) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The id to pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<EventId>,
}

/// The outcome of acknowledging several events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Ids now `delivered` (including those that already were), in request order.
    pub acknowledged: Vec<EventId>,
    /// Ids that do not exist or belong to another organization, in request order.
    pub not_found: Vec<EventId>,
}

/// Counts for one organization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Events with status `pending`.
    pub pending: u64,
    /// Deliveries in the in-flight state: leased by a worker, also when the lease has
    /// expired and nobody has claimed them again yet.
    pub in_flight: u64,
    /// Events with status `delivered`.
    pub delivered: u64,
    /// Events with status `failed`.
    pub failed: u64,
}

/// A new endpoint to store.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Its id.
    pub id: EndpointId,
    /// Where deliveries go.
    pub url: String,
    /// Which event types it receives; `None` means all.
    pub event_type_filter: Option<TypeGlob>,
    /// The signing secret.
    pub secret: Secret,
    /// When it was created.
    pub created_at: Timestamp,
    /// Parallel (default) or FIFO delivery.
    pub ordering: DeliveryOrdering,
}

/// A claimed delivery: everything a [`Deliverer`](crate::Deliverer) needs, with the lease that
/// makes this worker its only owner until `lease_expires_at`.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The delivery's id.
    pub id: DeliveryId,
    /// The attempt number this claim is for, starting at 1. Fences the completion.
    pub attempt: u32,
    /// The worker holding the lease.
    pub lease_owner: WorkerId,
    /// When the lease runs out and another worker may claim the delivery.
    pub lease_expires_at: Timestamp,
    /// The event's id (also the `webhook-id`).
    pub event_id: EventId,
    /// The owning organization.
    pub organization_id: OrganizationId,
    /// The event type.
    pub event_type: String,
    /// The payload as raw JSON.
    pub payload: Box<RawValue>,
    /// When the event was accepted.
    pub created_at: Timestamp,
    /// The target endpoint.
    pub endpoint_id: EndpointId,
    /// The target URL.
    pub url: String,
    /// Signing secrets valid at the claim's `now`: the current one first, then a rotated-out
    /// one still inside its grace period.
    pub secrets: Vec<Secret>,
    /// Since when the endpoint has failed without a success in between, if it is failing:
    /// the `record.at` of the first failed attempt (see `DeliveryQueue::complete`).
    pub endpoint_failing_since: Option<Timestamp>,
    /// The endpoint's custom headers ([`Endpoint::headers`](crate::Endpoint::headers)).
    pub headers: Vec<(String, String)>,
    /// The endpoint's rate limit in deliveries per second, if it has one.
    pub endpoint_rate_limit: Option<u32>,
    /// The endpoint's concurrency limit, if it has one.
    pub endpoint_concurrency: Option<u32>,
}

/// What became of one delivery attempt, as the worker records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionState {
    /// The target accepted the event; the delivery is done.
    Delivered,
    /// Try again at `at` (the worker has already applied the retry schedule).
    Retry {
        /// When the next attempt is due.
        at: Timestamp,
    },
    /// No more attempts: the delivery (and so its event) is `failed`.
    Failed,
}

/// The record of one finished attempt, fenced by `(lease_owner, attempt)`.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// The worker that claimed it.
    pub lease_owner: WorkerId,
    /// The attempt number of the claim.
    pub attempt: u32,
    /// What happens next.
    pub state: CompletionState,
    /// The attempt, for the event's history.
    pub record: crate::domain::event::AttemptRecord,
    /// Disable the endpoint with this reason (410 Gone, or failing for too long).
    pub disable_endpoint: Option<String>,
}

/// What [`DeliveryQueue::complete_and_claim`](super::DeliveryQueue::complete_and_claim)
/// returns: the completions' flags, and the claim made after them.
#[derive(Debug)]
pub struct CompletedAndClaimed {
    /// One flag per completion, in order, exactly as
    /// [`complete`](super::DeliveryQueue::complete) returns them.
    pub applied: Vec<bool>,
    /// The endpoints these completions disabled: enabled until one of this call's applied
    /// completions (`disable_endpoint`) turned it off, each once, in the order of their
    /// first such completion. An endpoint already disabled — by request, or by an earlier
    /// call's completion, also on another node — is not in it: at most one call reports each
    /// disable, and the worker pool logs it once. (The announcement in the organization's
    /// stream does not depend on it: [`complete`](super::DeliveryQueue::complete) writes it
    /// with the disable.) The default
    /// [`complete_and_claim`](super::DeliveryQueue::complete_and_claim) cannot tell and
    /// reports every endpoint an applied completion asked to disable.
    pub disabled: Vec<EndpointId>,
    /// The deliveries claimed once the completions were applied, or why that claim failed
    /// (the completions are recorded either way).
    pub claimed: super::StoreResult<Vec<Delivery>>,
}

/// Options for claiming.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    /// The claiming worker.
    pub owner: WorkerId,
    /// At most this many deliveries.
    pub limit: u32,
    /// Lease length: the delivery is this worker's until `now + lease`.
    pub lease: Duration,
    /// The current time.
    pub now: Timestamp,
    /// Most live leases one organization may hold after the claim, counted over every
    /// claimer sharing the store (see [`DeliveryQueue::claim`](super::DeliveryQueue::claim)).
    pub org_concurrency: u32,
    /// Most live leases one healthy parallel endpoint may hold after the claim (less if the
    /// endpoint's own `concurrency` is lower); a failing endpoint gets one, a FIFO endpoint
    /// always one.
    pub endpoint_concurrency: u32,
}

impl ClaimRequest {
    /// A claim with no organization or endpoint cap (`u32::MAX` each); FIFO endpoints and
    /// failing endpoints still get at most one lease.
    pub fn new(owner: WorkerId, limit: u32, lease: Duration, now: Timestamp) -> Self {
        Self { owner, limit, lease, now, org_concurrency: u32::MAX, endpoint_concurrency: u32::MAX }
    }

    /// The same claim with these caps (each at least 1).
    pub fn with_caps(mut self, org_concurrency: u32, endpoint_concurrency: u32) -> Self {
        self.org_concurrency = org_concurrency.max(1);
        self.endpoint_concurrency = endpoint_concurrency.max(1);
        self
    }
}

/// Changes to an endpoint: `None` leaves a field as it is; for the optional fields,
/// `Some(None)` clears it. Built and validated by the Ingestor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPatch {
    /// A new URL.
    pub url: Option<String>,
    /// A new type filter (`Some(None)`: every type).
    pub event_type_filter: Option<Option<TypeGlob>>,
    /// Enable (clearing `disabled_reason` and the failing-since time) or disable (reason
    /// [`DISABLED_BY_REQUEST`](crate::domain::webhook::DISABLED_BY_REQUEST)).
    pub enabled: Option<bool>,
    /// A new description.
    pub description: Option<Option<String>>,
    /// New custom headers (replacing all of them).
    pub headers: Option<Vec<(String, String)>>,
    /// A new per-endpoint rate limit (deliveries per second).
    pub rate_limit: Option<Option<u32>>,
    /// A new per-endpoint concurrency limit: claims hold the endpoint to it when it is
    /// lower than their endpoint cap (see `DeliveryQueue::claim`).
    pub concurrency: Option<Option<u32>>,
    /// A new delivery ordering, with the effect of
    /// [`set_endpoint_ordering`](super::EndpointStore::set_endpoint_ordering) (switching to
    /// parallel releases the line at once; switching to FIFO orders what is queued from then
    /// on), in the same atomic change as the other fields.
    pub ordering: Option<DeliveryOrdering>,
}

/// The result of [`EndpointStore::update_endpoint`](super::EndpointStore::update_endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUpdate {
    /// The endpoint after the change.
    pub endpoint: Endpoint,
    /// Whether it was enabled before the change.
    pub was_enabled: bool,
    /// How many outstanding deliveries were failed because the change disabled it.
    pub failed: u64,
}

/// What [`EndpointStore::recover`](super::EndpointStore::recover) re-queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverQuery {
    /// Only deliveries of events created at or after this time.
    pub since: Timestamp,
    /// Only deliveries of events created before this time (`None`: no upper bound).
    pub until: Option<Timestamp>,
    /// At most this many deliveries.
    pub limit: u32,
}

/// The answer of a recover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// How many failed deliveries were queued again.
    pub queued: u32,
    /// Whether more failed deliveries of the window remain (call again).
    pub more: bool,
}

/// Bounds a store keeps for every organization, whatever its callers do (SPEC §6). Each store
/// takes them in its configuration; `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most webhook endpoints one organization may have (default 50): one more is refused
    /// with [`StoreError::LimitExceeded`](super::StoreError::LimitExceeded). Bounds the
    /// fan-out of one event.
    pub max_endpoints: u32,
    /// Most attempt records kept per event and endpoint (default 100, at least 1): when a
    /// completion records one more, the oldest of that event and endpoint are dropped. Bounds
    /// an event's history across any number of replays and retries. The attempts of
    /// endpoints that no longer exist count together, as one endpoint's: a replay (the only
    /// way an old event reaches endpoints created after it) drops the oldest of them beyond
    /// this number. So deleting and recreating endpoints between replays cannot grow one
    /// event's history without bound: it holds at most this number per live endpoint, once
    /// more for the deleted ones, and what endpoints deleted since its last replay left.
    pub max_attempts_kept: u32,
}

impl StoreLimits {
    /// Default of [`max_endpoints`](Self::max_endpoints).
    pub const DEFAULT_MAX_ENDPOINTS: u32 = 50;
    /// Default of [`max_attempts_kept`](Self::max_attempts_kept).
    pub const DEFAULT_MAX_ATTEMPTS_KEPT: u32 = 100;
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_endpoints: Self::DEFAULT_MAX_ENDPOINTS,
            max_attempts_kept: Self::DEFAULT_MAX_ATTEMPTS_KEPT,
        }
    }
}

/// Where one recorded attempt sits in an endpoint's history: ordered by `at`, then by `seq`
/// (a number the store assigns when it records the attempt, unique per store). History pages
/// run newest first, that is in descending position order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptPosition {
    /// When the attempt finished ([`AttemptRecord::at`](crate::domain::event::AttemptRecord::at)).
    pub at: Timestamp,
    /// The store's sequence number of the record: breaks ties between equal times.
    pub seq: u64,
}

/// Which attempts [`DeliveryHistory::endpoint_attempts`](super::DeliveryHistory::endpoint_attempts)
/// lists: the filters and the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptQuery {
    /// `Some(true)`: only successful attempts (no error recorded); `Some(false)`: only failed
    /// ones; `None`: both.
    pub success: Option<bool>,
    /// Only attempts that finished at or after this time.
    pub since: Option<Timestamp>,
    /// Only attempts strictly older than this position (keyset pagination: the last entry of
    /// the previous page).
    pub before: Option<AttemptPosition>,
    /// At most this many attempts.
    pub limit: u32,
}

/// One attempt of an endpoint's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEntry {
    /// Its place in the history (pass the last one as the next page's `before`).
    pub position: AttemptPosition,
    /// The event the attempt delivered.
    pub event_id: EventId,
    /// That event's type.
    pub event_type: String,
    /// The attempt: time, status code, latency, error.
    pub record: crate::domain::event::AttemptRecord,
}

/// The status of one (event, endpoint) delivery, as listed by
/// [`DeliveryHistory::endpoint_deliveries`](super::DeliveryHistory::endpoint_deliveries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Outstanding and waiting for its next attempt.
    Pending,
    /// Leased by a worker (also when the lease has expired and nobody claimed it again yet).
    InFlight,
    /// Ended with a successful attempt.
    Delivered,
    /// Ended as failed (retries exhausted, the endpoint disabled, or it was disabled when the
    /// event arrived); [`recover`](super::EndpointStore::recover) can queue it again.
    Failed,
}

impl DeliveryStatus {
    /// The snake-case name used in the API: `pending`, `in_flight`, `delivered`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InFlight => "in_flight",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "in_flight" => Ok(Self::InFlight),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => Err(format!(
                "unknown status {other:?}: expected pending, in_flight, delivered or failed"
            )),
        }
    }
}

/// Where one delivery is, with the facts that go with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting: `attempts` made so far, the next one due at `next_attempt_at`.
    Pending {
        /// Attempts made so far (claims taken).
        attempts: u32,
        /// When the next attempt is due.
        next_attempt_at: Timestamp,
    },
    /// Leased for attempt number `attempt` until `lease_expires_at`.
    InFlight {
        /// The attempt being made (1 for the first).
        attempt: u32,
        /// When the lease runs out.
        lease_expires_at: Timestamp,
    },
    /// Delivered: the newest successful attempt finished at `at`.
    Delivered {
        /// When the successful attempt finished.
        at: Timestamp,
    },
    /// Failed at `at` for `reason`.
    Failed {
        /// When it failed.
        at: Timestamp,
        /// Why: the last attempt's error, or the reason the endpoint was disabled.
        reason: String,
    },
}

impl DeliveryState {
    /// The status this state belongs to.
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Self::Pending { .. } => DeliveryStatus::Pending,
            Self::InFlight { .. } => DeliveryStatus::InFlight,
            Self::Delivered { .. } => DeliveryStatus::Delivered,
            Self::Failed { .. } => DeliveryStatus::Failed,
        }
    }
}

/// One delivery of an event to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEntry {
    /// The event's place in the store's event order (pass the last one as the next page's
    /// `before`): a number that grows with insertion, the same for every endpoint of the
    /// store (SQLite: the event's row number; stores keyed by UUID v7: the event id as a
    /// number). Meaningful only to the store that returned it.
    pub position: u128,
    /// The event.
    pub event_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// When the event was accepted.
    pub event_created_at: Timestamp,
    /// The endpoint.
    pub endpoint_id: EndpointId,
    /// Where the delivery is.
    pub state: DeliveryState,
}

/// Which deliveries [`DeliveryHistory::endpoint_deliveries`](super::DeliveryHistory::endpoint_deliveries)
/// lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only deliveries with this status (`None`: every status).
    pub status: Option<DeliveryStatus>,
    /// Only deliveries of events with a smaller [`position`](DeliveryEntry::position) than
    /// this (keyset pagination, newest event first: the last entry's position of the
    /// previous page).
    pub before: Option<u128>,
    /// At most this many deliveries.
    pub limit: u32,
}
