//! Events: insertion with dedup and fan-out, lookup, the inbox, ack, replay and counts.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use super::state::{set_status, EventRow, State, Superseded};
use crate::clock::{self, Timestamp};
use crate::domain::event::{
    AttemptRecord, Event, EventDetail, EventMeta, EventRecord, EventStatus,
};
use crate::domain::webhook::ENDPOINT_DISABLED;
use crate::domain::{EventId, OrganizationId};
use crate::store::{
    page_item_size, AckOutcome, InsertOutcome, ListQuery, Page, QueueStats, StoreError, StoreResult,
};

impl State {
    pub(super) fn insert_events(
        &mut self,
        org: OrganizationId,
        events: Vec<EventRecord>,
        dedup_window: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<InsertOutcome>> {
        let State { orgs, endpoints, queue, dedup_expiry, .. } = self;
        let Some(tenant) = orgs.get_mut(&org) else {
            return Err(StoreError::InvalidInput(format!("no organization {org}")));
        };
        // Check everything that can fail before writing anything (atomicity).
        let mut ids = HashSet::with_capacity(events.len());
        for e in &events {
            if tenant.events.contains_key(&e.id) || !ids.insert(e.id) {
                return Err(StoreError::Conflict(format!("event {} exists", e.id)));
            }
        }
        let mut outcomes = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        for record in events {
            if let Some(dedup_id) = &record.dedup_id {
                if let Some(original) = tenant.dedup.get(dedup_id.as_str()) {
                    if clock::add(original.created_at, dedup_window) > now {
                        outcomes.push(InsertOutcome::Duplicate(original.clone()));
                        continue;
                    }
                }
            }
            let meta = EventMeta {
                id: record.id,
                event_type: record.event_type.clone(),
                created_at: record.created_at,
            };
            let (outstanding, disabled) = queue.fan_out(
                endpoints,
                &tenant.endpoints,
                org,
                (record.id, &record.event_type),
                record.exclude_endpoint,
                now,
            );
            failed.extend(disabled.into_iter().map(|endpoint| (record.id, endpoint)));
            let deliveries = u32::try_from(outstanding.len()).unwrap_or(u32::MAX);
            if let Some(dedup_id) = &record.dedup_id {
                let key: Arc<str> = Arc::from(dedup_id.as_str());
                let previous = tenant.dedup.insert(Arc::clone(&key), meta.clone());
                dedup_expiry.file(org, &key, &meta, previous.as_ref());
            }
            let event = Event {
                id: record.id,
                organization_id: org,
                event_type: record.event_type,
                payload: record.payload,
                dedup_id: record.dedup_id,
                status: EventStatus::Pending,
                created_at: record.created_at,
                delivered_at: None,
            };
            tenant.events.insert(record.id, EventRow { event, attempts: Vec::new(), outstanding });
            tenant.by_status.ids_mut(EventStatus::Pending).insert(record.id);
            outcomes.push(InsertOutcome::Inserted { meta, deliveries });
        }
        for (event_id, endpoint_id) in failed {
            self.record_failed(org, event_id, endpoint_id, ENDPOINT_DISABLED, now);
        }
        Ok(outcomes)
    }

    pub(super) fn event(&self, org: OrganizationId, id: EventId) -> Option<EventDetail> {
        let row = self.orgs.get(&org)?.events.get(&id)?;
        let attempts = row.attempts.iter().map(|(_, a)| a.clone()).collect();
        Some(EventDetail { event: row.event.clone(), attempts })
    }

    pub(super) fn list_events(&self, org: OrganizationId, query: &ListQuery) -> Page<Event> {
        let Some(tenant) = self.orgs.get(&org) else {
            return Page { items: Vec::new(), next_after: None };
        };
        let limit = query.limit.clamp(1, 1000) as usize;
        let from = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = tenant
            .by_status
            .ids(query.status)
            .range((from, Bound::Unbounded))
            .filter_map(|id| tenant.events.get(id))
            .map(|row| &row.event)
            .filter(|e| query.type_glob.as_ref().map_or(true, |g| g.matches(&e.event_type)));
        let mut items: Vec<Event> = Vec::new();
        let mut bytes = 0u64;
        let mut over_budget = false;
        for e in matching.by_ref().take(limit) {
            let size = page_item_size(&e.event_type, e.payload.get(), e.dedup_id.as_deref());
            if !items.is_empty() && bytes.saturating_add(size) > query.max_bytes {
                over_budget = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            items.push(e.clone());
        }
        // Look one further, so the last page says so.
        let more = over_budget || matching.next().is_some();
        let next_after = if more { items.last().map(|e| e.id) } else { None };
        Page { items, next_after }
    }

    pub(super) fn ack(
        &mut self,
        org: OrganizationId,
        ids: &[EventId],
        now: Timestamp,
    ) -> AckOutcome {
        let mut outcome = AckOutcome::default();
        let mut seen = HashSet::with_capacity(ids.len());
        let tenant = self.orgs.get_mut(&org);
        let Some(tenant) = tenant else {
            outcome.not_found = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
            return outcome;
        };
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            match tenant.events.get_mut(&id) {
                Some(row) => {
                    if row.event.status != EventStatus::Delivered {
                        let (by_status, finished) = (&mut tenant.by_status, &mut self.finished);
                        let delivered = EventStatus::Delivered;
                        set_status(by_status, finished, &mut row.event, delivered, Some(now));
                    }
                    outcome.acknowledged.push(id);
                }
                None => outcome.not_found.push(id),
            }
        }
        outcome
    }

    pub(super) fn replay(
        &mut self,
        org: OrganizationId,
        id: EventId,
        now: Timestamp,
    ) -> Option<EventStatus> {
        let cancelled =
            std::mem::take(&mut self.orgs.get_mut(&org)?.events.get_mut(&id)?.outstanding);
        self.queue.superseded.retain(|_, s| s.lease.expires_at > now);
        for delivery_id in cancelled {
            let Some(row) = self.remove_delivery(delivery_id) else { continue };
            if let Some(lease) = row.lease {
                let kept = Superseded { org, event_id: id, attempt: row.attempt, lease };
                self.queue.superseded.insert(delivery_id, kept);
            }
        }
        let State { orgs, endpoints, queue, failed, finished, attempts, limits, .. } = self;
        let tenant = orgs.get_mut(&org)?;
        for endpoint in &tenant.endpoints {
            failed.remove(*endpoint, id);
        }
        let row = tenant.events.get_mut(&id)?;
        // The attempts of deleted endpoints count together (`StoreLimits::max_attempts_kept`).
        let gone = |a: &AttemptRecord| !endpoints.contains_key(&a.endpoint_id);
        for (seq, dropped) in row.trim(limits.max_attempts_kept, gone) {
            attempts.remove(id, seq, &dropped);
        }
        set_status(&mut tenant.by_status, finished, &mut row.event, EventStatus::Pending, None);
        let (outstanding, disabled) = queue.fan_out(
            endpoints,
            &tenant.endpoints,
            org,
            (id, &row.event.event_type),
            None,
            now,
        );
        row.outstanding = outstanding;
        for endpoint_id in disabled {
            self.record_failed(org, id, endpoint_id, ENDPOINT_DISABLED, now);
        }
        self.orgs.get(&org)?.events.get(&id).map(|row| row.event.status)
    }

    /// `EventLog::pending_events`: the size of the organization's pending set.
    pub(super) fn pending_events(&self, org: OrganizationId) -> u64 {
        self.orgs.get(&org).map_or(0, |t| t.by_status.ids(EventStatus::Pending).len() as u64)
    }

    pub(super) fn stats(&self, org: OrganizationId) -> QueueStats {
        let Some(tenant) = self.orgs.get(&org) else { return QueueStats::default() };
        let count = |status| tenant.by_status.ids(status).len() as u64;
        QueueStats {
            pending: count(EventStatus::Pending),
            in_flight: tenant.in_flight,
            delivered: count(EventStatus::Delivered),
            failed: count(EventStatus::Failed),
        }
    }
}
