//! The delivery queue: claims with leases, fenced completions, releases and heartbeats.

use std::collections::HashMap;

use super::state::{set_status, DeliveryRow, FailedRow, Lease, State};
use crate::clock::{self, Timestamp};
use crate::domain::event::EventStatus;
use crate::domain::{DeliveryId, EndpointId, OrganizationId, WorkerId};
use crate::store::{ClaimRequest, Completion, CompletionState, Delivery};

impl State {
    pub(super) fn claim(&mut self, req: ClaimRequest) -> Vec<Delivery> {
        let limit = req.limit as usize;
        if limit == 0 {
            return Vec::new();
        }
        // Live leases per organization and endpoint (the fairness rules count them).
        let mut org_busy: HashMap<OrganizationId, u32> = HashMap::new();
        let mut endpoint_busy: HashMap<EndpointId, u32> = HashMap::new();
        for row in self.queue.deliveries.values() {
            if row.lease.is_some_and(|l| l.expires_at > req.now) {
                *org_busy.entry(row.org).or_default() += 1;
                *endpoint_busy.entry(row.endpoint_id).or_default() += 1;
            }
        }
        // The due index is ordered by due time, so the first due entries are the earliest.
        // Deliveries of disabled endpoints stay queued but are skipped, and so are those the
        // fairness rules hold back.
        let mut picked: Vec<(Timestamp, DeliveryId)> = Vec::new();
        for &(at, id) in &self.queue.due {
            if at > req.now || picked.len() == limit {
                break;
            }
            let Some(d) = self.queue.deliveries.get(&id) else { continue };
            let Some(endpoint) = self.endpoints.get(&d.endpoint_id) else { continue };
            if !endpoint.endpoint.enabled {
                continue;
            }
            let ep_cap = if d.seq.is_some() || endpoint.failing_since.is_some() {
                1
            } else {
                // Its own limit, if lower than the claim's cap (see `DeliveryQueue::claim`).
                let own = endpoint.endpoint.concurrency.unwrap_or(u32::MAX).max(1);
                own.min(req.endpoint_concurrency)
            };
            let org_n = org_busy.entry(d.org).or_default();
            let ep_n = endpoint_busy.entry(d.endpoint_id).or_default();
            if *org_n >= req.org_concurrency || *ep_n >= ep_cap {
                continue;
            }
            if let Some(seq) = d.seq {
                let head = self.queue.lines.get(&d.endpoint_id).and_then(|l| l.first());
                if head.map(|h| h.0) != Some(seq) {
                    continue;
                }
            }
            *org_n += 1;
            *ep_n += 1;
            picked.push((at, id));
        }
        let expires_at = clock::add(req.now, req.lease);
        let mut claimed = Vec::with_capacity(picked.len());
        for key in picked {
            let id = key.1;
            let Some(row) = self.queue.deliveries.get_mut(&id) else { continue };
            self.queue.due.remove(&key);
            let was_in_flight = row.lease.is_some();
            row.attempt += 1;
            row.lease = Some(Lease { owner: req.owner, expires_at });
            self.queue.due.insert(row.due_key(id));
            let row: &DeliveryRow = row;
            let Some(tenant) = self.orgs.get_mut(&row.org) else { continue };
            if !was_in_flight {
                tenant.counts.in_flight += 1;
            }
            let (Some(event), Some(endpoint)) =
                (tenant.events.get(&row.event_id), self.endpoints.get(&row.endpoint_id))
            else {
                continue;
            };
            let mut secrets = vec![endpoint.endpoint.secret.clone()];
            if let Some((previous, until)) = &endpoint.previous {
                if req.now < *until {
                    secrets.push(previous.clone());
                }
            }
            claimed.push(Delivery {
                id,
                attempt: row.attempt,
                lease_owner: req.owner,
                lease_expires_at: expires_at,
                event_id: row.event_id,
                organization_id: row.org,
                event_type: event.event.event_type.clone(),
                payload: event.event.payload.clone(),
                created_at: event.event.created_at,
                endpoint_id: row.endpoint_id,
                url: endpoint.endpoint.url.clone(),
                secrets,
                endpoint_failing_since: endpoint.failing_since,
                headers: endpoint.endpoint.headers.clone(),
                endpoint_rate_limit: endpoint.endpoint.rate_limit,
                endpoint_concurrency: endpoint.endpoint.concurrency,
            });
        }
        claimed
    }

    pub(super) fn complete(&mut self, completions: &[Completion]) -> Vec<bool> {
        completions.iter().map(|c| self.complete_one(c)).collect()
    }

    fn complete_one(&mut self, c: &Completion) -> bool {
        let Some(row) = self.queue.deliveries.get(&c.delivery_id) else {
            self.record_superseded(c);
            return false;
        };
        if !row.held_by(c.lease_owner, c.attempt) {
            return false;
        }
        let (org, event_id, endpoint_id) = (row.org, row.event_id, row.endpoint_id);
        if let Some(endpoint) = self.endpoints.get_mut(&endpoint_id) {
            match c.state {
                CompletionState::Delivered => endpoint.failing_since = None,
                CompletionState::Retry { .. } | CompletionState::Failed => {
                    endpoint.failing_since.get_or_insert(c.record.at);
                }
            }
            if let Some(reason) = &c.disable_endpoint {
                endpoint.endpoint.enabled = false;
                endpoint.endpoint.disabled_reason = Some(reason.clone());
            }
        }
        if c.state == CompletionState::Failed {
            let reason = c.record.error.clone().unwrap_or_else(|| "failed".to_owned());
            self.failed.insert((endpoint_id, event_id), FailedRow { org, reason, at: c.record.at });
        }
        match c.state {
            CompletionState::Retry { at } => {
                if let Some(row) = self.queue.deliveries.get_mut(&c.delivery_id) {
                    self.queue.due.remove(&row.due_key(c.delivery_id));
                    row.lease = None;
                    row.next_attempt_at = at;
                    self.queue.due.insert(row.due_key(c.delivery_id));
                }
                if let Some(tenant) = self.orgs.get_mut(&org) {
                    tenant.counts.in_flight = tenant.counts.in_flight.saturating_sub(1);
                }
            }
            CompletionState::Delivered | CompletionState::Failed => {
                self.remove_delivery(c.delivery_id);
            }
        }
        let keep = self.limits.max_attempts_kept;
        let seq = self.take_attempt_seq();
        if let Some(tenant) = self.orgs.get_mut(&org) {
            if let Some(event) = tenant.events.get_mut(&event_id) {
                event.record_attempt(seq, c.record.clone(), keep);
                if event.event.status == EventStatus::Pending {
                    match c.state {
                        CompletionState::Delivered if event.outstanding.is_empty() => {
                            let at = Some(c.record.at);
                            let delivered = EventStatus::Delivered;
                            set_status(&mut tenant.counts, &mut event.event, delivered, at);
                        }
                        CompletionState::Failed => {
                            let failed = EventStatus::Failed;
                            set_status(&mut tenant.counts, &mut event.event, failed, None);
                        }
                        _ => {}
                    }
                }
            }
        }
        if let Some(reason) = &c.disable_endpoint {
            self.fail_outstanding(endpoint_id, reason, c.record.at);
        }
        true
    }

    /// The attempt of a delivery a replay cancelled while it was in flight: recorded in the
    /// event's history, nothing else changes.
    fn record_superseded(&mut self, c: &Completion) {
        let fenced = self
            .queue
            .superseded
            .get(&c.delivery_id)
            .is_some_and(|s| s.lease.owner == c.lease_owner && s.attempt == c.attempt);
        if !fenced {
            return;
        }
        let Some(s) = self.queue.superseded.remove(&c.delivery_id) else { return };
        let keep = self.limits.max_attempts_kept;
        let seq = self.take_attempt_seq();
        if let Some(event) = self.orgs.get_mut(&s.org).and_then(|t| t.events.get_mut(&s.event_id)) {
            event.record_attempt(seq, c.record.clone(), keep);
        }
    }

    pub(super) fn release(
        &mut self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        due_at: Option<Timestamp>,
    ) -> bool {
        let Some(row) = self.queue.deliveries.get_mut(&id) else { return false };
        if !row.held_by(owner, attempt) {
            return false;
        }
        self.queue.due.remove(&row.due_key(id));
        row.lease = None;
        row.attempt = row.attempt.saturating_sub(1);
        // `next_attempt_at` is still the time it was due when claimed.
        if let Some(at) = due_at {
            row.next_attempt_at = at;
        }
        self.queue.due.insert(row.due_key(id));
        if let Some(tenant) = self.orgs.get_mut(&row.org) {
            tenant.counts.in_flight = tenant.counts.in_flight.saturating_sub(1);
        }
        true
    }

    pub(super) fn extend_lease(
        &mut self,
        id: DeliveryId,
        owner: WorkerId,
        attempt: u32,
        until: Timestamp,
    ) -> bool {
        let Some(row) = self.queue.deliveries.get_mut(&id) else { return false };
        if !row.held_by(owner, attempt) {
            return false;
        }
        self.queue.due.remove(&row.due_key(id));
        row.lease = Some(Lease { owner, expires_at: until });
        self.queue.due.insert(row.due_key(id));
        true
    }

    pub(super) fn reclaim_leases(&mut self, owner: WorkerId, now: Timestamp) -> u64 {
        let mut ended = 0;
        for (id, row) in &mut self.queue.deliveries {
            let Some(lease) = &mut row.lease else { continue };
            if lease.owner != owner || lease.expires_at <= now {
                continue;
            }
            self.queue.due.remove(&(lease.expires_at, *id));
            lease.expires_at = now;
            self.queue.due.insert((now, *id));
            ended += 1;
        }
        ended
    }

    pub(super) fn queue_depth(&self) -> u64 {
        self.queue.deliveries.len() as u64
    }
}
