//! Delivery history: an endpoint's attempts and deliveries, read from the tables in memory.
//!
//! Attempts are read from the index of each endpoint's attempt records, newest first, so a
//! page costs what it lists (plus the records a `success` filter skips). Deliveries are
//! read by walking the organization's events newest first from the cursor and working out
//! each one's state for the endpoint, until the page is full: a page costs the events it
//! walks, which is what it lists for an endpoint that receives most of them, and more for
//! one whose type filter matches few. The database stores read both through indexes. An
//! event's position is its id (UUID v7) as a number.

use std::ops::Bound;

use super::state::{EventRow, State};
use crate::domain::{EndpointId, EventId, OrganizationId};
use crate::store::{AttemptEntry, AttemptQuery, DeliveryEntry, DeliveryQuery, DeliveryState};

impl State {
    pub(super) fn endpoint_attempts(
        &self,
        org: OrganizationId,
        endpoint: EndpointId,
        query: &AttemptQuery,
    ) -> Option<Vec<AttemptEntry>> {
        self.endpoint(org, endpoint)?;
        let tenant = self.orgs.get(&org)?;
        let Some(index) = self.attempts.of(endpoint) else { return Some(Vec::new()) };
        let upper = query.before.map_or(Bound::Unbounded, |before| {
            Bound::Excluded((before, EventId(uuid::Uuid::nil())))
        });
        let found = index
            .range((Bound::Unbounded, upper))
            .rev()
            .take_while(|(position, _)| query.since.map_or(true, |since| position.at >= since))
            .filter_map(|&(position, event_id)| {
                let row = tenant.events.get(&event_id)?;
                let (_, record) = row.attempts.iter().find(|(seq, _)| *seq == position.seq)?;
                Some((position, row, record))
            })
            .filter(|(_, _, a)| query.success.map_or(true, |ok| a.error.is_none() == ok))
            .map(|(position, row, record)| AttemptEntry {
                position,
                event_id: row.event.id,
                event_type: row.event.event_type.clone(),
                record: record.clone(),
            })
            .take(query.limit as usize)
            .collect();
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
        let upper = query.before.map_or(Bound::Unbounded, |before| {
            Bound::Excluded(EventId(uuid::Uuid::from_u128(before)))
        });
        let listed = tenant
            .events
            .range((Bound::Unbounded, upper))
            .rev()
            .filter_map(|(event_id, row)| {
                Some((*event_id, row, self.delivery_state(endpoint, row)?))
            })
            .filter(|(_, _, state)| query.status.map_or(true, |s| state.status() == s))
            .map(|(event_id, row, state)| DeliveryEntry {
                position: event_id.0.as_u128(),
                event_id,
                event_type: row.event.event_type.clone(),
                event_created_at: row.event.created_at,
                endpoint_id: endpoint,
                state,
            })
            .take(query.limit as usize)
            .collect();
        Some(listed)
    }

    /// The state of an event's delivery to `endpoint`, most specific first: outstanding
    /// (pending or in flight), failed, delivered (its latest successful attempt); `None` if
    /// it has none of these.
    fn delivery_state(&self, endpoint: EndpointId, row: &EventRow) -> Option<DeliveryState> {
        // At most one: a new delivery to the endpoint is queued only by a replay (which
        // cancels the outstanding ones first) or by recovering a failed one.
        let outstanding = row
            .outstanding
            .iter()
            .filter_map(|id| self.queue.deliveries.get(id))
            .find(|d| d.endpoint_id == endpoint);
        if let Some(d) = outstanding {
            return Some(match d.lease {
                Some(lease) => DeliveryState::InFlight {
                    attempt: d.attempt,
                    lease_expires_at: lease.expires_at,
                },
                None => DeliveryState::Pending {
                    attempts: d.attempt,
                    next_attempt_at: d.next_attempt_at,
                },
            });
        }
        if let Some(failed) = self.failed.get(endpoint, row.event.id) {
            return Some(DeliveryState::Failed { at: failed.at, reason: failed.reason.clone() });
        }
        row.attempts
            .iter()
            .filter(|(_, a)| a.endpoint_id == endpoint && a.error.is_none())
            .map(|(_, a)| a.at)
            .max()
            .map(|at| DeliveryState::Delivered { at })
    }
}
