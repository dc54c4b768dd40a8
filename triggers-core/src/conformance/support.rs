//! Helpers shared by the conformance cases: fixed times, fixtures and short store calls.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::clock::{self, Timestamp};
use crate::domain::event::{AttemptRecord, EventDetail, EventRecord, EventStatus};
use crate::domain::key::ApiKey;
use crate::domain::org::{Organization, Tier};
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret, TypeGlob};
use crate::domain::{EndpointId, EventId, OrganizationId, WorkerId};
use crate::store::{
    ClaimRequest, Completion, CompletionState, Delivery, EventStore, InsertOutcome, ListQuery,
    NewEndpoint,
};

/// The dedup window every case uses.
pub(crate) const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The lease every claim takes.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

/// 2026-01-01T00:00:00.123456Z: a fixed origin with a non-zero microsecond part, so a store
/// that drops sub-second precision fails.
const ORIGIN_MICROS: i64 = 1_767_225_600_123_456;

/// The fixed origin plus `secs` seconds.
pub(crate) fn t(secs: i64) -> Timestamp {
    clock::from_micros(ORIGIN_MICROS + secs * 1_000_000)
}

/// One microsecond before `at`.
pub(crate) fn just_before(at: Timestamp) -> Timestamp {
    clock::from_micros(at.timestamp_micros() - 1)
}

/// `at + d`.
pub(crate) fn plus(at: Timestamp, d: Duration) -> Timestamp {
    clock::add(at, d)
}

/// A fresh organization (created at `t(0)`) and its key.
pub(crate) async fn org_with_key<S: EventStore>(store: &S) -> (Organization, ApiKey) {
    let org = Organization::new("conformance", Tier::Professional, t(0));
    let key = ApiKey::generate();
    store.create_organization(&org, &key.hash()).await.unwrap();
    (org, key)
}

/// A fresh organization's id.
pub(crate) async fn new_org<S: EventStore>(store: &S) -> OrganizationId {
    org_with_key(store).await.0.id
}

/// An event record of `event_type` with a small payload, created at `now`.
pub(crate) fn record(event_type: &str, now: Timestamp) -> EventRecord {
    record_with(event_type, r#"{"n":1}"#, None, now)
}

/// An event record with the given payload text and dedup id.
pub(crate) fn record_with(
    event_type: &str,
    payload: &str,
    dedup_id: Option<&str>,
    now: Timestamp,
) -> EventRecord {
    EventRecord {
        id: EventId::new(),
        event_type: event_type.to_owned(),
        payload: RawValue::from_string(payload.to_owned()).unwrap(),
        dedup_id: dedup_id.map(str::to_owned),
        created_at: now,
        exclude_endpoint: None,
    }
}

/// An event record with a dedup id.
pub(crate) fn dedup_record(event_type: &str, dedup_id: &str, now: Timestamp) -> EventRecord {
    record_with(event_type, r#"{"n":1}"#, Some(dedup_id), now)
}

/// Inserts `records` created at `now` with the standard window.
pub(crate) async fn insert<S: EventStore>(
    store: &S,
    org: OrganizationId,
    records: Vec<EventRecord>,
    now: Timestamp,
) -> Vec<InsertOutcome> {
    let n = records.len();
    let outcomes = store.insert_events(org, records, WINDOW, now).await.unwrap();
    assert_eq!(outcomes.len(), n, "one outcome per event");
    outcomes
}

/// The id of an `Inserted` outcome (panics on a duplicate).
pub(crate) fn inserted(outcome: &InsertOutcome) -> EventId {
    match outcome {
        InsertOutcome::Inserted { meta, .. } => meta.id,
        InsertOutcome::Duplicate(meta) => {
            panic!("expected Inserted, got a duplicate of {}", meta.id)
        }
    }
}

/// Inserts one event of `event_type` at `now`; returns its id.
pub(crate) async fn insert_one<S: EventStore>(
    store: &S,
    org: OrganizationId,
    event_type: &str,
    now: Timestamp,
) -> EventId {
    inserted(&insert(store, org, vec![record(event_type, now)], now).await[0])
}

/// Creates a parallel endpoint with a fresh secret.
pub(crate) async fn endpoint<S: EventStore>(
    store: &S,
    org: OrganizationId,
    filter: Option<&str>,
    created_at: Timestamp,
) -> Endpoint {
    endpoint_with(store, org, filter, DeliveryOrdering::Parallel, created_at).await
}

/// Creates an endpoint with `ordering` and a fresh secret.
pub(crate) async fn endpoint_with<S: EventStore>(
    store: &S,
    org: OrganizationId,
    filter: Option<&str>,
    ordering: DeliveryOrdering,
    created_at: Timestamp,
) -> Endpoint {
    let id = EndpointId::new();
    let new = NewEndpoint {
        id,
        url: format!("https://hooks.example.test/{id}"),
        event_type_filter: filter.map(glob),
        secret: Secret::generate(),
        created_at,
        ordering,
    };
    store.create_endpoint(org, &new).await.unwrap()
}

/// Parses a glob.
pub(crate) fn glob(s: &str) -> TypeGlob {
    TypeGlob::parse(s).unwrap()
}

/// Claims up to `limit` deliveries for `owner` at `now` with the standard lease.
pub(crate) async fn claim<S: EventStore>(
    store: &S,
    owner: WorkerId,
    limit: u32,
    now: Timestamp,
) -> Vec<Delivery> {
    store.claim(ClaimRequest::new(owner, limit, LEASE, now)).await.unwrap()
}

/// Claims like [`claim`] with an organization and an endpoint cap.
pub(crate) async fn claim_capped<S: EventStore>(
    store: &S,
    owner: WorkerId,
    limit: u32,
    now: Timestamp,
    (org_cap, endpoint_cap): (u32, u32),
) -> Vec<Delivery> {
    let req = ClaimRequest::new(owner, limit, LEASE, now).with_caps(org_cap, endpoint_cap);
    store.claim(req).await.unwrap()
}

/// Claims exactly one delivery at `now`.
pub(crate) async fn claim_one<S: EventStore>(
    store: &S,
    owner: WorkerId,
    now: Timestamp,
) -> Delivery {
    let mut got = claim(store, owner, 1, now).await;
    assert_eq!(got.len(), 1, "expected one due delivery at {now}");
    got.remove(0)
}

/// The completion of `d` (with its own lease fence) reaching `state`, finished at `at`.
pub(crate) fn completion(d: &Delivery, state: CompletionState, at: Timestamp) -> Completion {
    let (status_code, error) = match state {
        CompletionState::Delivered => (Some(200), None),
        CompletionState::Retry { .. } => (Some(503), Some("HTTP 503".to_owned())),
        CompletionState::Failed => (None, Some("connection refused".to_owned())),
    };
    Completion {
        delivery_id: d.id,
        lease_owner: d.lease_owner,
        attempt: d.attempt,
        state,
        record: AttemptRecord { endpoint_id: d.endpoint_id, at, status_code, latency_ms: 7, error },
        disable_endpoint: None,
    }
}

/// Records one completion; returns whether it applied.
pub(crate) async fn complete<S: EventStore>(store: &S, c: Completion) -> bool {
    let flags = store.complete(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(flags.len(), 1, "one flag per completion");
    flags[0]
}

/// The event with its attempts (panics if it is not found).
pub(crate) async fn detail<S: EventStore>(
    store: &S,
    org: OrganizationId,
    id: EventId,
) -> EventDetail {
    store.event(org, id).await.unwrap().unwrap_or_else(|| panic!("event {id} not found"))
}

/// The event's status.
pub(crate) async fn status<S: EventStore>(
    store: &S,
    org: OrganizationId,
    id: EventId,
) -> EventStatus {
    detail(store, org, id).await.event.status
}

/// Every event id matching the filters, paging with `limit`, in the order returned.
pub(crate) async fn list_all<S: EventStore>(
    store: &S,
    org: OrganizationId,
    status: EventStatus,
    type_glob: Option<&str>,
) -> Vec<EventId> {
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let query = ListQuery {
            status,
            type_glob: type_glob.map(glob),
            limit: 1000,
            after,
            max_bytes: u64::MAX,
        };
        let page = store.list_events(org, &query).await.unwrap();
        ids.extend(page.items.iter().map(|e| e.id));
        match page.next_after {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
}

/// `ids` sorted ascending (the order listing must use).
pub(crate) fn sorted(mut ids: Vec<EventId>) -> Vec<EventId> {
    ids.sort();
    ids
}

/// Asserts that `items` holds no value twice.
pub(crate) fn assert_unique<T: std::hash::Hash + Eq + std::fmt::Debug>(items: &[T]) {
    let mut seen = HashSet::new();
    for item in items {
        assert!(seen.insert(item), "{item:?} appears twice");
    }
}
