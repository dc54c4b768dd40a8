//! The in-memory tables, and bookkeeping shared by the operations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::domain::event::{AttemptRecord, Event, EventMeta, EventStatus};
use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{DeliveryId, EndpointId, EventId, OrganizationId, WorkerId};
use crate::store::{AttemptPosition, StoreLimits};

/// Everything a [`MemoryStore`](super::MemoryStore) holds, behind one mutex.
#[derive(Default)]
pub(super) struct State {
    /// Organizations with their events, dedup entries and counters.
    pub(super) orgs: HashMap<OrganizationId, Tenant>,
    /// The current key hash of every organization.
    pub(super) keys: HashMap<[u8; 32], OrganizationId>,
    /// Every endpoint of every organization.
    pub(super) endpoints: HashMap<EndpointId, EndpointRow>,
    /// The delivery queue.
    pub(super) queue: Queue,
    /// The bounds this store keeps.
    pub(super) limits: StoreLimits,
    /// Failed deliveries, until recovered, replayed or deleted.
    pub(super) failed: FailedDeliveries,
    /// The sequence number the next recorded attempt gets (its history position's `seq`).
    pub(super) next_attempt_seq: u64,
    /// Finished events of every organization, oldest first, for retention.
    pub(super) finished: Finished,
    /// Dedup entries of every organization, oldest first, for retention.
    pub(super) dedup_expiry: DedupExpiry,
    /// Every kept attempt record by endpoint, for the attempt history.
    pub(super) attempts: AttemptIndex,
    /// How many queued deliveries claims have looked at, for the tests that hold claims to
    /// what they can take.
    #[cfg(test)]
    pub(super) visited: std::cell::Cell<u64>,
}

/// A failed delivery, remembered so that `recover` can queue it again. The reason and time
/// are kept for inspection (the other stores keep them too).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub(super) struct FailedRow {
    pub(super) org: OrganizationId,
    /// Why it failed.
    pub(super) reason: String,
    /// When it failed.
    pub(super) at: Timestamp,
    /// When its event was created: its place in [`FailedDeliveries`]' window index.
    pub(super) event_created_at: Timestamp,
}

/// The failed deliveries by (endpoint, event), and by (endpoint, event creation time) so
/// that `recover` seeks its window instead of walking the endpoint's failed deliveries.
#[derive(Default)]
pub(super) struct FailedDeliveries {
    rows: BTreeMap<(EndpointId, EventId), FailedRow>,
    by_age: BTreeSet<(EndpointId, Timestamp, EventId)>,
}

impl FailedDeliveries {
    /// Remembers (or replaces) the failed delivery of `event` to `endpoint`.
    pub(super) fn insert(&mut self, endpoint: EndpointId, event: EventId, row: FailedRow) {
        let key = (endpoint, row.event_created_at, event);
        if let Some(old) = self.rows.insert((endpoint, event), row) {
            self.by_age.remove(&(endpoint, old.event_created_at, event));
        }
        self.by_age.insert(key);
    }

    /// Forgets the failed delivery of `event` to `endpoint`, if there is one.
    pub(super) fn remove(&mut self, endpoint: EndpointId, event: EventId) -> Option<FailedRow> {
        let row = self.rows.remove(&(endpoint, event))?;
        self.by_age.remove(&(endpoint, row.event_created_at, event));
        Some(row)
    }

    /// The failed delivery of `event` to `endpoint`.
    pub(super) fn get(&self, endpoint: EndpointId, event: EventId) -> Option<&FailedRow> {
        self.rows.get(&(endpoint, event))
    }

    /// Every failed delivery to `endpoint`, by event id.
    pub(super) fn of_endpoint(
        &self,
        endpoint: EndpointId,
    ) -> impl Iterator<Item = (EventId, &FailedRow)> + '_ {
        let all = (endpoint, EventId(uuid::Uuid::nil()))..=(endpoint, EventId(uuid::Uuid::max()));
        self.rows.range(all).map(|((_, event), row)| (*event, row))
    }

    /// Forgets every failed delivery to `endpoint`.
    pub(super) fn remove_endpoint(&mut self, endpoint: EndpointId) {
        let events: Vec<EventId> = self.of_endpoint(endpoint).map(|(event, _)| event).collect();
        for event in events {
            self.remove(endpoint, event);
        }
    }

    /// The events of the failed deliveries to `endpoint` whose event was created in
    /// `[since, until)`, oldest first (by creation time, then id): a seek, not a walk.
    pub(super) fn window(
        &self,
        endpoint: EndpointId,
        since: Timestamp,
        until: Option<Timestamp>,
    ) -> impl Iterator<Item = EventId> + '_ {
        let from = (endpoint, since, EventId(uuid::Uuid::nil()));
        self.by_age
            .range(from..)
            .take_while(move |(ep, at, _)| *ep == endpoint && until.map_or(true, |u| *at < u))
            .map(|(_, _, event)| *event)
    }

    /// Panics unless the window index holds exactly the remembered rows (for the tests).
    #[cfg(test)]
    pub(super) fn check_index(&self) {
        let indexed: BTreeSet<_> =
            self.rows.iter().map(|((ep, ev), row)| (*ep, row.event_created_at, *ev)).collect();
        assert_eq!(indexed, self.by_age, "the failed deliveries' window index");
    }

    /// Every remembered (endpoint, event).
    #[cfg(test)]
    pub(super) fn keys(&self) -> impl Iterator<Item = &(EndpointId, EventId)> {
        self.rows.keys()
    }
}

/// The outstanding deliveries.
#[derive(Default)]
pub(super) struct Queue {
    /// Outstanding (pending or in-flight) deliveries only: finished and cancelled ones are
    /// removed, so a completion for them finds nothing and is stale.
    pub(super) deliveries: HashMap<DeliveryId, DeliveryRow>,
    /// The same deliveries per endpoint, indexed for claims: kept in step with `deliveries`
    /// by [`Queues::insert`] and [`Queues::remove`] around every change of a row.
    pub(super) by_endpoint: Queues,
    /// The next queue sequence number of an ordered delivery.
    pub(super) next_seq: u64,
    /// In-flight deliveries cancelled by a replay, until their worker completes them (the
    /// attempt is then still recorded) or their lease expires.
    pub(super) superseded: HashMap<DeliveryId, Superseded>,
}

/// The outstanding deliveries of every endpoint that has any.
///
/// A claim looks per endpoint (as the SQL stores do): it counts an endpoint's live leases
/// and takes only as many of its due deliveries as its cap leaves room for, so the backlog
/// of an endpoint at its cap is never visited (`DeliveryQueue::claim`'s fairness rules).
#[derive(Default)]
pub(super) struct Queues(HashMap<EndpointId, EndpointQueue>);

/// One endpoint's outstanding deliveries.
pub(super) struct EndpointQueue {
    /// The organization that owns the endpoint.
    pub(super) org: OrganizationId,
    /// Its parallel deliveries by [`DeliveryRow::due_key`]: the due ones come first.
    pub(super) parallel: BTreeSet<(Timestamp, DeliveryId)>,
    /// Its ordered deliveries (its FIFO line) by queue sequence: the first is the head, the
    /// only one that may be claimed.
    pub(super) line: BTreeSet<(u64, DeliveryId)>,
    /// Its in-flight deliveries, parallel and ordered, by lease expiry: the live leases are
    /// the last ones.
    pub(super) leased: BTreeSet<(Timestamp, DeliveryId)>,
}

impl EndpointQueue {
    /// How many of its leases are live at `now` (`expires_at > now`).
    pub(super) fn live_leases(&self, now: Timestamp) -> u32 {
        let live = self.leased.iter().rev().take_while(|(at, _)| *at > now).count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }

    /// Every outstanding delivery of the endpoint.
    pub(super) fn ids(&self) -> impl Iterator<Item = DeliveryId> + '_ {
        self.parallel.iter().map(|k| k.1).chain(self.line.iter().map(|k| k.1))
    }
}

impl Queues {
    /// Indexes the delivery `id` as `row` has it now.
    pub(super) fn insert(&mut self, id: DeliveryId, row: &DeliveryRow) {
        let q = self.0.entry(row.endpoint_id).or_insert_with(|| EndpointQueue {
            org: row.org,
            parallel: BTreeSet::new(),
            line: BTreeSet::new(),
            leased: BTreeSet::new(),
        });
        match row.seq {
            Some(seq) => q.line.insert((seq, id)),
            None => q.parallel.insert(row.due_key(id)),
        };
        if let Some(lease) = row.lease {
            q.leased.insert((lease.expires_at, id));
        }
    }

    /// Forgets the delivery `id` as `row` has it now (before the row changes or goes).
    pub(super) fn remove(&mut self, id: DeliveryId, row: &DeliveryRow) {
        let Some(q) = self.0.get_mut(&row.endpoint_id) else { return };
        match row.seq {
            Some(seq) => q.line.remove(&(seq, id)),
            None => q.parallel.remove(&row.due_key(id)),
        };
        if let Some(lease) = row.lease {
            q.leased.remove(&(lease.expires_at, id));
        }
        if q.parallel.is_empty() && q.line.is_empty() && q.leased.is_empty() {
            self.0.remove(&row.endpoint_id);
        }
    }

    /// The outstanding deliveries of `endpoint`, if it has any.
    pub(super) fn get(&self, endpoint: &EndpointId) -> Option<&EndpointQueue> {
        self.0.get(endpoint)
    }

    /// Every endpoint with outstanding deliveries.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&EndpointId, &EndpointQueue)> {
        self.0.iter()
    }
}

/// A cancelled delivery whose worker may still report an attempt.
pub(super) struct Superseded {
    pub(super) org: OrganizationId,
    pub(super) event_id: EventId,
    pub(super) attempt: u32,
    pub(super) lease: Lease,
}

/// One organization and everything it owns apart from endpoints.
pub(super) struct Tenant {
    pub(super) org: Organization,
    pub(super) key: KeyHash,
    /// Its endpoints in creation order.
    pub(super) endpoints: Vec<EndpointId>,
    /// Its events by id: UUID v7, so in creation order, which keyset paging relies on.
    pub(super) events: BTreeMap<EventId, EventRow>,
    /// The latest event per dedup id (an entry may be older than the window: then it is
    /// taken over by the next insert with that id). Each entry is also in
    /// [`State::dedup_expiry`], which shares its key.
    pub(super) dedup: HashMap<Arc<str>, EventMeta>,
    /// Its event ids per status, kept up to date on every change.
    pub(super) by_status: ByStatus,
    /// Its deliveries in the in-flight state.
    pub(super) in_flight: u64,
}

/// An organization's event ids per status: an inbox page reads the ids of the status it
/// lists (never walking past the other statuses' events), and the counts are their lengths.
#[derive(Default)]
pub(super) struct ByStatus {
    pending: BTreeSet<EventId>,
    delivered: BTreeSet<EventId>,
    failed: BTreeSet<EventId>,
}

impl ByStatus {
    /// The ids of the events with `status`, in creation order.
    pub(super) fn ids(&self, status: EventStatus) -> &BTreeSet<EventId> {
        match status {
            EventStatus::Pending => &self.pending,
            EventStatus::Delivered => &self.delivered,
            EventStatus::Failed => &self.failed,
        }
    }

    /// The ids of the events with `status`, to change.
    pub(super) fn ids_mut(&mut self, status: EventStatus) -> &mut BTreeSet<EventId> {
        match status {
            EventStatus::Pending => &mut self.pending,
            EventStatus::Delivered => &mut self.delivered,
            EventStatus::Failed => &mut self.failed,
        }
    }
}

impl Tenant {
    pub(super) fn new(org: Organization, key: KeyHash) -> Self {
        Self {
            org,
            key,
            endpoints: Vec::new(),
            events: BTreeMap::new(),
            dedup: HashMap::new(),
            by_status: ByStatus::default(),
            in_flight: 0,
        }
    }
}

/// A stored event.
pub(super) struct EventRow {
    pub(super) event: Event,
    /// Every applied attempt with its sequence number, oldest first.
    pub(super) attempts: Vec<(u64, AttemptRecord)>,
    /// The outstanding deliveries of the event's current generation (since insertion or the
    /// last replay). When the last one finishes as delivered, a pending event is delivered.
    pub(super) outstanding: Vec<DeliveryId>,
}

/// A stored endpoint with its rotation and health state.
pub(super) struct EndpointRow {
    pub(super) endpoint: Endpoint,
    /// The rotated-out secret and until when it still signs.
    pub(super) previous: Option<(Secret, Timestamp)>,
    /// Since when the endpoint has failed without a success in between.
    pub(super) failing_since: Option<Timestamp>,
}

/// An outstanding delivery.
pub(super) struct DeliveryRow {
    pub(super) org: OrganizationId,
    pub(super) event_id: EventId,
    pub(super) endpoint_id: EndpointId,
    /// The attempt number of the latest claim (0 before the first).
    pub(super) attempt: u32,
    /// When it is due while pending.
    pub(super) next_attempt_at: Timestamp,
    /// `Some` while in flight.
    pub(super) lease: Option<Lease>,
    /// The place in its endpoint's FIFO line, for an ordered delivery.
    pub(super) seq: Option<u64>,
}

/// Who holds an in-flight delivery, and until when.
#[derive(Clone, Copy)]
pub(super) struct Lease {
    pub(super) owner: WorkerId,
    pub(super) expires_at: Timestamp,
}

impl DeliveryRow {
    /// When this delivery is due (the next attempt's time while pending, the lease expiry
    /// while in flight), with its id: its key in [`EndpointQueue::parallel`].
    pub(super) fn due_key(&self, id: DeliveryId) -> (Timestamp, DeliveryId) {
        (self.lease.map_or(self.next_attempt_at, |l| l.expires_at), id)
    }

    /// Whether a fenced call by `owner` for `attempt` may act on this delivery.
    pub(super) fn held_by(&self, owner: WorkerId, attempt: u32) -> bool {
        matches!(self.lease, Some(l) if l.owner == owner) && self.attempt == attempt
    }
}

/// The finished (`delivered` or `failed`) events of every organization by creation time, so
/// that a purge takes the oldest ones without walking any stored event: kept in step by
/// [`set_status`] and by the purge itself.
#[derive(Default)]
pub(super) struct Finished(BTreeSet<(Timestamp, OrganizationId, EventId)>);

impl Finished {
    /// Files `event` under the status it moves to.
    fn update(&mut self, event: &Event, status: EventStatus) {
        let key = (event.created_at, event.organization_id, event.id);
        if status == EventStatus::Pending {
            self.0.remove(&key);
        } else {
            self.0.insert(key);
        }
    }

    /// Takes out up to `n` of the oldest finished events created before `before`.
    pub(super) fn take_oldest(
        &mut self,
        before: Timestamp,
        n: usize,
    ) -> Vec<(Timestamp, OrganizationId, EventId)> {
        take_before(&mut self.0, before, n)
    }

    /// Every indexed event, for the tests that hold the index to the events.
    #[cfg(test)]
    pub(super) fn keys(&self) -> BTreeSet<(Timestamp, OrganizationId, EventId)> {
        self.0.clone()
    }
}

/// Takes out of a set ordered by time up to `n` of its first entries, those before `before`.
fn take_before<K: Ord>(
    set: &mut BTreeSet<(Timestamp, OrganizationId, K)>,
    before: Timestamp,
    n: usize,
) -> Vec<(Timestamp, OrganizationId, K)> {
    let mut oldest = Vec::new();
    while oldest.len() < n && set.first().is_some_and(|k| k.0 < before) {
        oldest.extend(set.pop_first());
    }
    oldest
}

/// The dedup entries of every organization by creation time, so that a purge forgets the
/// expired ones without walking the maps: an entry is filed when inserted and unfiled when
/// taken over or forgotten. The key is shared with [`Tenant::dedup`], not copied.
#[derive(Default)]
pub(super) struct DedupExpiry(BTreeSet<(Timestamp, OrganizationId, Arc<str>)>);

impl DedupExpiry {
    /// Records that `org`'s entry `dedup_id` now names `meta`, replacing `previous` (the
    /// entry it took over, if any).
    pub(super) fn file(
        &mut self,
        org: OrganizationId,
        dedup_id: &Arc<str>,
        meta: &EventMeta,
        previous: Option<&EventMeta>,
    ) {
        if let Some(old) = previous {
            self.0.remove(&(old.created_at, org, Arc::clone(dedup_id)));
        }
        self.0.insert((meta.created_at, org, Arc::clone(dedup_id)));
    }

    /// Takes out up to `n` of the oldest entries created before `before`.
    pub(super) fn take_oldest(
        &mut self,
        before: Timestamp,
        n: usize,
    ) -> Vec<(Timestamp, OrganizationId, Arc<str>)> {
        take_before(&mut self.0, before, n)
    }

    /// Every indexed entry, for the tests that hold the index to the maps.
    #[cfg(test)]
    pub(super) fn keys(&self) -> BTreeSet<(Timestamp, OrganizationId, Arc<str>)> {
        self.0.clone()
    }
}

/// Every kept attempt record by endpoint and position, so that an endpoint's attempt history
/// reads its own entries, newest first, instead of every event's attempts: an entry is added
/// when an attempt is recorded and removed when the record is dropped (beyond the kept
/// number, or with its event); a deleted endpoint's entries go with it.
#[derive(Default)]
pub(super) struct AttemptIndex(HashMap<EndpointId, BTreeSet<(AttemptPosition, EventId)>>);

impl AttemptIndex {
    /// The position of the record `seq` of an attempt made at `record.at`.
    fn key(event: EventId, seq: u64, record: &AttemptRecord) -> (AttemptPosition, EventId) {
        (AttemptPosition { at: record.at, seq }, event)
    }

    fn insert(&mut self, event: EventId, seq: u64, record: &AttemptRecord) {
        let entries = self.0.entry(record.endpoint_id).or_default();
        entries.insert(Self::key(event, seq, record));
    }

    /// Forgets the record `seq` of `event`.
    pub(super) fn remove(&mut self, event: EventId, seq: u64, record: &AttemptRecord) {
        if let Some(entries) = self.0.get_mut(&record.endpoint_id) {
            entries.remove(&Self::key(event, seq, record));
            if entries.is_empty() {
                self.0.remove(&record.endpoint_id);
            }
        }
    }

    /// The attempts of `endpoint` by position, oldest first.
    pub(super) fn of(&self, endpoint: EndpointId) -> Option<&BTreeSet<(AttemptPosition, EventId)>> {
        self.0.get(&endpoint)
    }

    /// Forgets every attempt of a deleted endpoint.
    pub(super) fn forget_endpoint(&mut self, endpoint: EndpointId) {
        self.0.remove(&endpoint);
    }
}

/// Moves an event to `status`, keeping its organization's ids per status and the index of
/// finished events right.
pub(super) fn set_status(
    by_status: &mut ByStatus,
    finished: &mut Finished,
    event: &mut Event,
    status: EventStatus,
    delivered_at: Option<Timestamp>,
) {
    finished.update(event, status);
    by_status.ids_mut(event.status).remove(&event.id);
    by_status.ids_mut(status).insert(event.id);
    event.status = status;
    event.delivered_at = delivered_at;
}

impl Queue {
    /// Queues one delivery of an event per enabled endpoint in `candidates` (the owning
    /// organization's endpoints, except `exclude`) whose filter matches `event_type`, due at
    /// `now`. Returns the
    /// queued deliveries and the matching disabled endpoints (which get a failed delivery).
    pub(super) fn fan_out(
        &mut self,
        endpoints: &HashMap<EndpointId, EndpointRow>,
        candidates: &[EndpointId],
        org: OrganizationId,
        (event_id, event_type): (EventId, &str),
        exclude: Option<EndpointId>,
        now: Timestamp,
    ) -> (Vec<DeliveryId>, Vec<EndpointId>) {
        let mut created = Vec::new();
        let mut disabled = Vec::new();
        for endpoint_id in candidates {
            if exclude == Some(*endpoint_id) {
                continue;
            }
            let Some(row) = endpoints.get(endpoint_id) else { continue };
            let ep = &row.endpoint;
            if !ep.event_type_filter.as_ref().map_or(true, |g| g.matches(event_type)) {
                continue;
            }
            if !ep.enabled {
                disabled.push(*endpoint_id);
                continue;
            }
            let fifo = ep.ordering == DeliveryOrdering::Fifo;
            created.push(self.push(org, event_id, *endpoint_id, fifo, now));
        }
        (created, disabled)
    }

    /// Queues one delivery (attempt 0, due `now`); with `fifo`, at the end of its endpoint's
    /// line.
    pub(super) fn push(
        &mut self,
        org: OrganizationId,
        event_id: EventId,
        endpoint_id: EndpointId,
        fifo: bool,
        now: Timestamp,
    ) -> DeliveryId {
        let id = DeliveryId::new();
        let seq = fifo.then(|| {
            self.next_seq += 1;
            self.next_seq
        });
        let row = DeliveryRow {
            org,
            event_id,
            endpoint_id,
            attempt: 0,
            next_attempt_at: now,
            lease: None,
            seq,
        };
        self.by_endpoint.insert(id, &row);
        self.deliveries.insert(id, row);
        id
    }
}

impl EventRow {
    /// Appends an attempt record with its sequence number, then drops the oldest of its
    /// endpoint beyond `keep`; returns the dropped ones.
    fn record_attempt(
        &mut self,
        seq: u64,
        record: AttemptRecord,
        keep: u32,
    ) -> Vec<(u64, AttemptRecord)> {
        let endpoint = record.endpoint_id;
        self.attempts.push((seq, record));
        self.trim(keep, |a| a.endpoint_id == endpoint)
    }

    /// Drops the oldest of the attempts that `counted` selects beyond `keep` (at least 1);
    /// returns the dropped ones.
    pub(super) fn trim(
        &mut self,
        keep: u32,
        counted: impl Fn(&AttemptRecord) -> bool,
    ) -> Vec<(u64, AttemptRecord)> {
        let kept = self.attempts.iter().filter(|(_, a)| counted(a)).count();
        let mut excess = kept.saturating_sub(keep.max(1) as usize);
        let mut dropped = Vec::with_capacity(excess);
        let mut i = 0;
        while excess > 0 && i < self.attempts.len() {
            if counted(&self.attempts[i].1) {
                dropped.push(self.attempts.remove(i));
                excess -= 1;
            } else {
                i += 1;
            }
        }
        dropped
    }
}

impl State {
    /// Records an attempt on `org`'s event `event_id`, if it is still stored: with the next
    /// sequence number, dropping the oldest of its endpoint beyond
    /// [`StoreLimits::max_attempts_kept`], and keeping the attempt index in step.
    pub(super) fn record_attempt(
        &mut self,
        org: OrganizationId,
        event_id: EventId,
        record: AttemptRecord,
    ) {
        let keep = self.limits.max_attempts_kept;
        let seq = self.take_attempt_seq();
        let Some(event) = self.orgs.get_mut(&org).and_then(|t| t.events.get_mut(&event_id)) else {
            return;
        };
        self.attempts.insert(event_id, seq, &record);
        for (seq, dropped) in event.record_attempt(seq, record, keep) {
            self.attempts.remove(event_id, seq, &dropped);
        }
    }

    /// The sequence number for the next recorded attempt.
    pub(super) fn take_attempt_seq(&mut self) -> u64 {
        self.next_attempt_seq += 1;
        self.next_attempt_seq
    }

    /// Removes an outstanding delivery (finished or cancelled): from the queue, from its
    /// event's outstanding list, and from the in-flight count. Returns the removed row.
    pub(super) fn remove_delivery(&mut self, id: DeliveryId) -> Option<DeliveryRow> {
        let row = self.queue.deliveries.remove(&id)?;
        self.queue.by_endpoint.remove(id, &row);
        if let Some(tenant) = self.orgs.get_mut(&row.org) {
            if row.lease.is_some() {
                tenant.in_flight = tenant.in_flight.saturating_sub(1);
            }
            if let Some(event) = tenant.events.get_mut(&row.event_id) {
                event.outstanding.retain(|d| *d != id);
            }
        }
        Some(row)
    }

    /// Remembers a failed delivery of `event_id` to `endpoint_id` and fails a `pending`
    /// event (the outstanding delivery, if any, must have been removed already).
    pub(super) fn record_failed(
        &mut self,
        org: OrganizationId,
        event_id: EventId,
        endpoint_id: EndpointId,
        reason: &str,
        at: Timestamp,
    ) {
        self.remember_failed(org, event_id, endpoint_id, reason, at);
        if let Some(tenant) = self.orgs.get_mut(&org) {
            if let Some(event) = tenant.events.get_mut(&event_id) {
                if event.event.status == EventStatus::Pending {
                    let (by_status, finished) = (&mut tenant.by_status, &mut self.finished);
                    set_status(by_status, finished, &mut event.event, EventStatus::Failed, None);
                }
            }
        }
    }

    /// Remembers a failed delivery of `event_id` to `endpoint_id` (replacing an older one),
    /// if the event is still stored.
    pub(super) fn remember_failed(
        &mut self,
        org: OrganizationId,
        event_id: EventId,
        endpoint_id: EndpointId,
        reason: &str,
        at: Timestamp,
    ) {
        let event = self.orgs.get(&org).and_then(|t| t.events.get(&event_id));
        let Some(event_created_at) = event.map(|row| row.event.created_at) else { return };
        let row = FailedRow { org, reason: reason.to_owned(), at, event_created_at };
        self.failed.insert(endpoint_id, event_id, row);
    }

    /// Fails at most [`BACKLOG_BATCH`](crate::store::BACKLOG_BATCH) outstanding deliveries of
    /// a disabled endpoint; returns how many.
    pub(super) fn fail_outstanding(
        &mut self,
        endpoint_id: EndpointId,
        reason: &str,
        at: Timestamp,
    ) -> u64 {
        let doomed: Vec<DeliveryId> = self
            .queue
            .by_endpoint
            .get(&endpoint_id)
            .map(|q| q.ids().take(crate::store::BACKLOG_BATCH).collect())
            .unwrap_or_default();
        let n = doomed.len() as u64;
        for id in doomed {
            if let Some(row) = self.remove_delivery(id) {
                self.record_failed(row.org, row.event_id, endpoint_id, reason, at);
            }
        }
        n
    }
}
