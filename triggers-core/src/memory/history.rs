//! Delivery history: an endpoint's attempts and deliveries, read from the tables in memory.
//!
//! The memory store keeps no index by endpoint: a history call walks the organization's
//! events (and, for outstanding deliveries, the queue). That is fine for the tests, examples
//! and embedded uses this store is for; the database stores read through indexes. An event's
//! position is its id (UUID v7) as a number.

use std::collections::BTreeMap;

use super::state::State;
use crate::domain::{EndpointId, EventId, OrganizationId};
use crate::store::{
    AttemptEntry, AttemptPosition, AttemptQuery, DeliveryEntry, DeliveryQuery, DeliveryState,
};

impl State {
    pub(super) fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> Option<Vec<AttemptEntry>> {
        self.endpoint(org, endpoint)?;
        let tenant = self.orgs.get(&org)?;
        let mut found: Vec<AttemptEntry> = tenant
            .events
            .values()
            .flat_map(|row| row.attempts.iter().map(move |(seq, a)| (row, *seq, a)))
            .filter(|(_, _, a)| a.endpoint_id == endpoint)
            .filter(|(_, _, a)| query.success.map_or(true, |ok| a.error.is_none() == ok))
            .filter(|(_, _, a)| query.since.map_or(true, |since| a.at >= since))
            .map(|(row, seq, a)| AttemptEntry {
                position: AttemptPosition { at: a.at, seq },
                event_id: row.event.id,
                event_type: row.event.event_type.clone(),
                record: a.clone(),
            })
            .filter(|e| query.before.map_or(true, |before| e.position < before))
            .collect();
        found.sort_unstable_by_key(|e| std::cmp::Reverse(e.position));
        found.truncate(query.limit as usize);
        Some(found)
    }

    pub(super) fn endpoint_deliveries(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &DeliveryQuery,
    ) -> Option<Vec<DeliveryEntry>> {
        self.endpoint(org, endpoint)?;
        let tenant = self.orgs.get(&org)?;
        let below = |id: &EventId| query.before.map_or(true, |before| id.0.as_u128() < before);
        // The state of each listed event, most specific first: outstanding, failed, delivered.
        let mut states: BTreeMap<EventId, DeliveryState> = BTreeMap::new();
        for (event_id, row) in &tenant.events {
            if !below(event_id) {
                continue;
            }
            let success = row
                .attempts
                .iter()
                .filter(|(_, a)| a.endpoint_id == endpoint && a.error.is_none())
                .map(|(_, a)| a.at)
                .max();
            if let Some(at) = success {
                states.insert(*event_id, DeliveryState::Delivered { at });
            }
        }
        for ((ep, event_id), failed) in self.failed.range((endpoint, EventId(uuid::Uuid::nil()))..)
        {
            if *ep != endpoint {
                break;
            }
            if below(event_id) {
                let state = DeliveryState::Failed { at: failed.at, reason: failed.reason.clone() };
                states.insert(*event_id, state);
            }
        }
        let outstanding = self.queue.by_endpoint.get(&endpoint).into_iter().flat_map(|q| q.ids());
        for row in outstanding.filter_map(|id| self.queue.deliveries.get(&id)) {
            if !below(&row.event_id) {
                continue;
            }
            let state = match row.lease {
                Some(lease) => DeliveryState::InFlight {
                    attempt: row.attempt,
                    lease_expires_at: lease.expires_at,
                },
                None => DeliveryState::Pending {
                    attempts: row.attempt,
                    next_attempt_at: row.next_attempt_at,
                },
            };
            states.insert(row.event_id, state);
        }
        let listed = states
            .into_iter()
            .rev()
            .filter(|(_, state)| query.status.map_or(true, |s| state.status() == s))
            .filter_map(|(event_id, state)| {
                let event = &tenant.events.get(&event_id)?.event;
                Some(DeliveryEntry {
                    position: event_id.0.as_u128(),
                    event_id,
                    event_type: event.event_type.clone(),
                    event_created_at: event.created_at,
                    endpoint_id: endpoint,
                    state,
                })
            })
            .take(query.limit as usize)
            .collect();
        Some(listed)
    }
}
