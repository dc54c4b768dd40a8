//! Retention: purging finished events and expired dedup entries.
//!
//! Both take the oldest entries from an index kept in step with every change
//! ([`Finished`](super::state::Finished), [`DedupExpiry`](super::state::DedupExpiry)), so a
//! batch costs what it deletes, never a walk of the stored events or dedup maps: retention
//! over a large store does not stall the other organizations behind the store's mutex.

use super::state::State;
use crate::clock::Timestamp;
use crate::domain::{EventId, OrganizationId};

impl State {
    pub(super) fn purge_finished(&mut self, before: Timestamp, batch: u32) -> u64 {
        let old = self.finished.take_oldest(before, batch as usize);
        for &(_, org, id) in &old {
            self.purge_event(org, id);
        }
        old.len() as u64
    }

    /// Deletes one event with its outstanding deliveries and the failed deliveries kept for
    /// `recover` (at most one per endpoint of its organization).
    fn purge_event(&mut self, org: OrganizationId, id: EventId) {
        let Some(tenant) = self.orgs.get_mut(&org) else { return };
        let outstanding = tenant
            .events
            .get_mut(&id)
            .map(|row| std::mem::take(&mut row.outstanding))
            .unwrap_or_default();
        for endpoint in &tenant.endpoints {
            self.failed.remove(*endpoint, id);
        }
        for delivery in outstanding {
            self.remove_delivery(delivery);
        }
        if let Some(tenant) = self.orgs.get_mut(&org) {
            if let Some(row) = tenant.events.remove(&id) {
                tenant.by_status.ids_mut(row.event.status).remove(&id);
                for (seq, record) in &row.attempts {
                    self.attempts.remove(id, *seq, record);
                }
            }
        }
    }

    pub(super) fn purge_dedup(&mut self, before: Timestamp, batch: u32) -> u64 {
        let expired = self.dedup_expiry.take_oldest(before, batch as usize);
        for (_, org, dedup_id) in &expired {
            if let Some(tenant) = self.orgs.get_mut(org) {
                tenant.dedup.remove(dedup_id);
            }
        }
        expired.len() as u64
    }
}
