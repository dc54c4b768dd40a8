//! The bound on what an organization keeps pending
//! ([`IngestorConfig::max_pending`](super::IngestorConfig::max_pending)).
//!
//! An event stays `pending` until a webhook takes it, its deliveries fail for good, or the
//! organization acknowledges it; an inbox nobody acknowledges keeps every event, and the
//! rate limit alone bounds only how fast it grows — until the disk every tenant shares is
//! full. So an organization may keep at most as many pending events as its tier's rate lets
//! it send in `max_pending` (7 days by default: 100 800 on the free tier); an ingest that
//! would go past that is refused with [`Error::LimitExceeded`] and nothing stored or charged.
//!
//! The count comes from the store ([`EventLog::pending_events`](crate::store::EventLog),
//! which walks nothing), read at most once per [`FRESH`] per organization on this node;
//! between reads this node adds what it inserted. So the bound is approximate: an
//! organization may pass it by about what it can send in [`FRESH`] on each node (and its
//! requests in flight), never by more; events finished or acknowledged elsewhere count until
//! the next read. An acknowledgement on this node makes the next ingest read again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::org::{Organization, TierLimits};
use crate::error::{Error, Result};
use crate::store::EventLog;
use crate::OrganizationId;

/// How long a count read from the store is used before it is read again.
pub(super) const FRESH: Duration = Duration::from_secs(1);

/// Entries not used for this long are dropped by [`PendingCounts::sweep`].
const IDLE: Duration = Duration::from_secs(120);

/// What `limit` says in a refusal.
const LIMIT: &str = "pending events per organization (its tier's rate times TRIGGERS_MAX_PENDING; \
                     acknowledge or deliver some first)";

/// The most pending events an organization of `per_minute` may keep under `max_pending`:
/// what it could send in that time, at least one minute's worth. `None` when unbounded.
pub(super) fn limit_for(per_minute: u32, max_pending: Option<Duration>) -> Option<u64> {
    let max_pending = max_pending?;
    if per_minute == TierLimits::UNLIMITED {
        return None;
    }
    let minutes = (max_pending.as_secs() / 60).max(1);
    Some(u64::from(per_minute.max(1)).saturating_mul(minutes))
}

/// This node's view of each organization's pending events.
#[derive(Default)]
pub(super) struct PendingCounts {
    entries: Mutex<HashMap<OrganizationId, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    /// What the store counted at `read_at`.
    counted: u64,
    /// What this node inserted since.
    added: u64,
    /// `None`: read again before the next check.
    read_at: Option<Instant>,
    /// A read is under way (others use the count they have meanwhile).
    reading: bool,
    used_at: Instant,
}

impl PendingCounts {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<OrganizationId, Entry>> {
        // A panic while the map was held leaves counts, not broken invariants.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok` when `org` may add `n` pending events under `limit`; `LimitExceeded` otherwise.
    pub(super) async fn check<S: EventLog + ?Sized>(
        &self,
        store: &S,
        org: &Organization,
        n: u64,
        limit: u64,
    ) -> Result<()> {
        let refused = || Error::LimitExceeded { limit: LIMIT, max: limit };
        if n > limit {
            return Err(refused());
        }
        let now = Instant::now();
        let known = {
            let mut entries = self.entries();
            let entry = entries.entry(org.id).or_insert(Entry {
                counted: 0,
                added: 0,
                read_at: None,
                reading: false,
                used_at: now,
            });
            entry.used_at = now;
            let fresh = entry.read_at.is_some_and(|at| now.duration_since(at) < FRESH);
            // Another request reads the count for this organization: use the last one,
            // unless there is none yet.
            if fresh || (entry.reading && entry.read_at.is_some()) {
                Some(entry.counted.saturating_add(entry.added))
            } else {
                entry.reading = true;
                None
            }
        };
        let known = match known {
            Some(known) => known,
            None => {
                // Until the read is done; also when it fails or its request hangs up.
                let _reading = Reading { counts: self, org: org.id };
                let counted = store.pending_events(org.id).await?;
                let entry =
                    Entry { counted, added: 0, read_at: Some(now), reading: true, used_at: now };
                self.entries().insert(org.id, entry);
                counted
            }
        };
        if known.saturating_add(n) > limit {
            Err(refused())
        } else {
            Ok(())
        }
    }

    /// Counts `n` events this node inserted for `org` since its last read.
    pub(super) fn added(&self, org: OrganizationId, n: u64) {
        if let Some(entry) = self.entries().get_mut(&org) {
            entry.added = entry.added.saturating_add(n);
        }
    }

    /// Makes the next check of `org` read the store again (after an acknowledgement).
    pub(super) fn forget(&self, org: OrganizationId) {
        if let Some(entry) = self.entries().get_mut(&org) {
            entry.read_at = None;
        }
    }

    /// Drops the entries of organizations that have not ingested for a while.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.entries().retain(|_, e| e.reading || now.duration_since(e.used_at) < IDLE);
    }
}

/// Ends a read that was dropped midway (its request hung up, or the store failed): the next
/// check reads again.
struct Reading<'a> {
    counts: &'a PendingCounts,
    org: OrganizationId,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.counts.entries().get_mut(&self.org) {
            entry.reading = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_tiers_rate_over_the_duration() {
        let week = Some(Duration::from_secs(7 * 86_400));
        assert_eq!(limit_for(10, week), Some(100_800));
        assert_eq!(limit_for(0, week), Some(10_080), "a limit of 0 counts as 1");
        assert_eq!(limit_for(10, Some(Duration::from_secs(1))), Some(10), "one minute at least");
        assert_eq!(limit_for(TierLimits::UNLIMITED, week), None);
        assert_eq!(limit_for(10, None), None);
        assert_eq!(limit_for(u32::MAX - 1, Some(Duration::MAX)), Some(u64::MAX));
    }
}
