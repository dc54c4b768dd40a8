//! Retention: purging finished events and expired dedup entries.

use super::state::{status_count, State};
use crate::clock::Timestamp;
use crate::domain::event::EventStatus;
use crate::domain::{EventId, OrganizationId};

impl State {
    pub(super) fn purge_finished(&mut self, before: Timestamp, batch: u32) -> u64 {
        let mut old: Vec<(Timestamp, OrganizationId, EventId)> = self
            .orgs
            .iter()
            .flat_map(|(org, tenant)| {
                tenant
                    .events
                    .values()
                    .map(|row| &row.event)
                    .filter(|e| e.status != EventStatus::Pending && e.created_at < before)
                    .map(move |e| (e.created_at, *org, e.id))
            })
            .collect();
        old.sort_unstable();
        old.truncate(batch as usize);
        for (_, org, id) in &old {
            let outstanding = self
                .orgs
                .get_mut(org)
                .and_then(|t| t.events.get_mut(id))
                .map(|row| std::mem::take(&mut row.outstanding))
                .unwrap_or_default();
            for delivery in outstanding {
                self.remove_delivery(delivery);
            }
            if let Some(tenant) = self.orgs.get_mut(org) {
                if let Some(row) = tenant.events.remove(id) {
                    *status_count(&mut tenant.counts, row.event.status) -= 1;
                }
            }
        }
        old.len() as u64
    }

    pub(super) fn purge_dedup(&mut self, before: Timestamp, batch: u32) -> u64 {
        let mut left = batch as usize;
        for tenant in self.orgs.values_mut() {
            if left == 0 {
                break;
            }
            let expired: Vec<String> = tenant
                .dedup
                .iter()
                .filter(|(_, meta)| meta.created_at < before)
                .map(|(id, _)| id.clone())
                .take(left)
                .collect();
            left -= expired.len();
            for id in expired {
                tenant.dedup.remove(&id);
            }
        }
        (batch as usize - left) as u64
    }
}
