//! The delivery queue: claims with leases, fenced completions, releases and heartbeats.

use std::collections::HashMap;

use super::state::{set_status, DeliveryRow, Lease, State};
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
        let picked = self.pick(&req, limit);
        let expires_at = clock::add(req.now, req.lease);
        let mut claimed = Vec::with_capacity(picked.len());
        for id in picked {
            let Some(row) = self.queue.deliveries.get_mut(&id) else { continue };
            self.queue.by_endpoint.remove(id, row);
            let was_in_flight = row.lease.is_some();
            row.attempt += 1;
            row.lease = Some(Lease { owner: req.owner, expires_at });
            self.queue.by_endpoint.insert(id, row);
            let row: &DeliveryRow = row;
            let Some(tenant) = self.orgs.get_mut(&row.org) else { continue };
            if !was_in_flight {
                tenant.in_flight += 1;
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

    /// The deliveries a claim takes (`DeliveryQueue::claim`'s rules), earliest due first.
    ///
    /// Per endpoint, its due deliveries in due order — its parallel ones merged with the
    /// head of its line — as long as its cap leaves room: the backlog of an endpoint at its
    /// cap, and the rest of a FIFO line, are never visited. Then across endpoints in due
    /// order, within each organization's share. The same choice as walking every due
    /// delivery in due order and passing over the held-back ones: an endpoint's picks are a
    /// prefix of its due deliveries, and an organization's share, once full, holds back all
    /// of its later ones.
    pub(super) fn pick(&self, req: &ClaimRequest, limit: usize) -> Vec<DeliveryId> {
        let now = req.now;
        // Live leases per endpoint and organization (the fairness rules count them).
        let queues: Vec<_> =
            self.queue.by_endpoint.iter().map(|(id, q)| (id, q, q.live_leases(now))).collect();
        let mut org_busy: HashMap<OrganizationId, u32> = HashMap::new();
        for (_, q, live) in &queues {
            *org_busy.entry(q.org).or_default() += live;
        }
        let mut candidates: Vec<((Timestamp, DeliveryId), OrganizationId)> = Vec::new();
        for (endpoint_id, q, live) in queues {
            // Deliveries of disabled (or deleted) endpoints stay queued but are skipped.
            let Some(endpoint) = self.endpoints.get(endpoint_id) else { continue };
            let full = org_busy.get(&q.org).is_some_and(|n| *n >= req.org_concurrency);
            if !endpoint.endpoint.enabled || full {
                continue;
            }
            let parallel_cap = if endpoint.failing_since.is_some() {
                1
            } else {
                // Its own limit, and twice its own rate, if lower than the claim's cap (see
                // `DeliveryQueue::claim`).
                let own = endpoint.endpoint.concurrency.unwrap_or(u32::MAX).max(1);
                let paced = endpoint.endpoint.rate_limit.map_or(u32::MAX, |r| r.saturating_mul(2));
                own.min(paced.max(1)).min(req.endpoint_concurrency)
            };
            let mut head = q.line.first().and_then(|&(_, id)| {
                let key = self.queue.deliveries.get(&id)?.due_key(id);
                (key.0 <= now).then_some(key)
            });
            let mut due = q.parallel.iter().take_while(|(at, _)| *at <= now).peekable();
            let mut busy = live;
            let mut taken = 0;
            // Whether a later parallel delivery may still fit.
            let mut parallel_open = true;
            while taken < limit {
                let next_parallel = if parallel_open { due.peek().copied() } else { None };
                let head_first = match (next_parallel, head) {
                    (Some(&parallel), Some(h)) => h < parallel,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let (key, ordered) = match head_first {
                    true => match head.take() {
                        Some(h) => (h, true),
                        None => break,
                    },
                    false => match due.next() {
                        Some(&p) => (p, false),
                        None => break,
                    },
                };
                #[cfg(test)]
                self.visited.set(self.visited.get() + 1);
                if busy >= if ordered { 1 } else { parallel_cap } {
                    // Passed over. If a parallel delivery does not fit, no later one does.
                    parallel_open &= ordered;
                    continue;
                }
                busy += 1;
                taken += 1;
                candidates.push((key, q.org));
            }
        }
        candidates.sort_unstable_by_key(|c| c.0);
        let mut picked = Vec::with_capacity(limit.min(candidates.len()));
        for ((_, id), org) in candidates {
            if picked.len() == limit {
                break;
            }
            let n = org_busy.entry(org).or_default();
            if *n < req.org_concurrency {
                *n += 1;
                picked.push(id);
            }
        }
        picked
    }

    /// One flag per completion, and the endpoints they disabled (each once; see
    /// `CompletedAndClaimed::disabled`).
    pub(super) fn complete(&mut self, completions: &[Completion]) -> (Vec<bool>, Vec<EndpointId>) {
        let mut disabled = Vec::new();
        let applied = completions
            .iter()
            .map(|c| {
                let (applied, disabled_now) = self.complete_one(c);
                if disabled_now {
                    disabled.push(c.record.endpoint_id);
                }
                applied
            })
            .collect();
        (applied, disabled)
    }

    /// Whether `c` applied, and whether it disabled its endpoint.
    fn complete_one(&mut self, c: &Completion) -> (bool, bool) {
        let Some(row) = self.queue.deliveries.get(&c.delivery_id) else {
            self.record_superseded(c);
            return (false, false);
        };
        if !row.held_by(c.lease_owner, c.attempt) {
            return (false, false);
        }
        let (org, event_id, endpoint_id) = (row.org, row.event_id, row.endpoint_id);
        let mut disabled_now = false;
        if let Some(endpoint) = self.endpoints.get_mut(&endpoint_id) {
            match c.state {
                CompletionState::Delivered => endpoint.failing_since = None,
                CompletionState::Retry { .. } | CompletionState::Failed => {
                    endpoint.failing_since.get_or_insert(c.record.at);
                }
            }
            if let (Some(reason), true) = (&c.disable_endpoint, endpoint.endpoint.enabled) {
                disabled_now = true;
                endpoint.endpoint.enabled = false;
                endpoint.endpoint.disabled_reason = Some(reason.clone());
            }
        }
        if c.state == CompletionState::Failed {
            let reason = c.record.error.as_deref().unwrap_or("failed");
            self.remember_failed(org, event_id, endpoint_id, reason, c.record.at);
        }
        match c.state {
            CompletionState::Retry { at } => {
                if let Some(row) = self.queue.deliveries.get_mut(&c.delivery_id) {
                    self.queue.by_endpoint.remove(c.delivery_id, row);
                    row.lease = None;
                    row.next_attempt_at = at;
                    self.queue.by_endpoint.insert(c.delivery_id, row);
                }
                if let Some(tenant) = self.orgs.get_mut(&org) {
                    tenant.in_flight = tenant.in_flight.saturating_sub(1);
                }
            }
            CompletionState::Delivered | CompletionState::Failed => {
                self.remove_delivery(c.delivery_id);
            }
        }
        self.record_attempt(org, event_id, c.record.clone());
        if let Some(tenant) = self.orgs.get_mut(&org) {
            if let Some(event) = tenant.events.get_mut(&event_id) {
                if event.event.status == EventStatus::Pending {
                    match c.state {
                        CompletionState::Delivered if event.outstanding.is_empty() => {
                            let (at, delivered) = (Some(c.record.at), EventStatus::Delivered);
                            let (by_status, finished) = (&mut tenant.by_status, &mut self.finished);
                            set_status(by_status, finished, &mut event.event, delivered, at);
                        }
                        CompletionState::Failed => {
                            let (by_status, finished) = (&mut tenant.by_status, &mut self.finished);
                            let failed = EventStatus::Failed;
                            set_status(by_status, finished, &mut event.event, failed, None);
                        }
                        _ => {}
                    }
                }
            }
        }
        // One batch, by the completion that disabled it (see `store::BACKLOG_BATCH`).
        if let (Some(reason), true) = (&c.disable_endpoint, disabled_now) {
            self.fail_outstanding(endpoint_id, reason, c.record.at);
            self.announce(org, endpoint_id, c.record.at);
        }
        (true, disabled_now)
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
        self.record_attempt(s.org, s.event_id, c.record.clone());
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
        self.queue.by_endpoint.remove(id, row);
        row.lease = None;
        row.attempt = row.attempt.saturating_sub(1);
        // `next_attempt_at` is still the time it was due when claimed.
        if let Some(at) = due_at {
            row.next_attempt_at = at;
        }
        self.queue.by_endpoint.insert(id, row);
        if let Some(tenant) = self.orgs.get_mut(&row.org) {
            tenant.in_flight = tenant.in_flight.saturating_sub(1);
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
        self.queue.by_endpoint.remove(id, row);
        row.lease = Some(Lease { owner, expires_at: until });
        self.queue.by_endpoint.insert(id, row);
        true
    }

    pub(super) fn reclaim_leases(&mut self, owner: WorkerId, now: Timestamp) -> u64 {
        let live: Vec<DeliveryId> = self
            .queue
            .by_endpoint
            .iter()
            .flat_map(|(_, q)| q.leased.iter().rev().take_while(|(at, _)| *at > now))
            .map(|(_, id)| *id)
            .collect();
        let mut ended = 0;
        for id in live {
            let Some(row) = self.queue.deliveries.get_mut(&id) else { continue };
            if row.lease.map_or(true, |l| l.owner != owner) {
                continue;
            }
            self.queue.by_endpoint.remove(id, row);
            row.lease = row.lease.map(|l| Lease { expires_at: now, ..l });
            self.queue.by_endpoint.insert(id, row);
            ended += 1;
        }
        ended
    }

    pub(super) fn queue_depth(&self) -> u64 {
        self.queue.deliveries.len() as u64
    }
}
