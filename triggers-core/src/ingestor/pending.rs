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
//! which walks nothing). This node keeps, per organization, the last count it read plus
//! what it let in since: an ingest **reserves** its events under the node's lock before it
//! inserts (and gives back what turned out duplicate or failed), so concurrent requests on
//! one node never pass the bound together. The count is read again once older than
//! [`FRESH`], in the background, deciding meanwhile by the old one (acknowledgements and
//! finished deliveries only lower the real count, so the old one errs on the safe side).
//! Reads in the request's path are rare and one at a time per organization: its first
//! ingest on this node (concurrent first ingests wait for that one read), and the first
//! ingest after it acknowledged events here (so the room it made is usable at once; the
//! other requests meanwhile decide by the old count). A store whose readers are busy with
//! other requests therefore does not hold up ingestion.
//!
//! What is approximate: other nodes' inserts are seen at this node's next read (so an
//! organization may pass the bound by what the other nodes let in meanwhile — their
//! reservations hold them to it too, but each may have read an old count), and events
//! finished or acknowledged elsewhere count until then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::org::TierLimits;
use crate::error::{Error, Result};
use crate::store::{EventLog, StoreResult};
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

/// Longest wait for one read of a count; then it counts as failed (the old count, if any,
/// keeps deciding, and the next check reads again).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Entry {
    /// What the store counted at `read_at`; `None` before the first read.
    counted: Option<u64>,
    /// Reserved by requests whose inserts have not returned yet.
    inflight: u64,
    /// Inserted by this node (returned) since the read behind `counted` began: maybe in
    /// that count, maybe not, so counted on top.
    inserted: u64,
    read_at: Instant,
    /// The next check reads the count in its own path (after an acknowledgement here).
    stale: bool,
    /// Acknowledgements here so far: a read that began before the latest one does not
    /// clear `stale`.
    acks: u64,
    /// A read is under way: `inserted` and `acks` when it began.
    reading: Option<(u64, u64)>,
    /// Held by the request reading an organization's first count; concurrent first
    /// ingests wait for it, and the one that gets it next reads if that read failed.
    first: Arc<tokio::sync::Mutex<()>>,
    used_at: Instant,
}

impl Entry {
    fn known(&self) -> u64 {
        self.counted.unwrap_or(0).saturating_add(self.inflight).saturating_add(self.inserted)
    }

    fn begin_read(&mut self) {
        self.reading = Some((self.inserted, self.acks));
    }
}

/// The next step of a check, as [`PendingCounts::step`] finds it.
enum Step {
    /// Decide by the count known (and, when `refresh`, read a new one in the background).
    Decide { refresh: bool },
    /// Read the count in this request's path, then decide; holding the organization's
    /// first-read lock when it has no count yet.
    Read(Option<tokio::sync::OwnedMutexGuard<()>>),
    /// No count yet and another request reads it: wait for the lock it holds.
    Wait(Arc<tokio::sync::Mutex<()>>),
}

impl PendingCounts {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<OrganizationId, Entry>> {
        // A panic while the map was held leaves counts, not broken invariants.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves `n` pending events for `org` under `limit`, or `LimitExceeded` (nothing
    /// reserved). Hand the reservation back with [`Reservation::settle`] once the insert
    /// has returned (or failed).
    pub(super) async fn reserve<S: EventLog>(
        self: &Arc<Self>,
        store: &Arc<S>,
        org: OrganizationId,
        n: u64,
        limit: u64,
    ) -> Result<Reservation> {
        if n > limit {
            return Err(refused(limit));
        }
        let mut held = None;
        loop {
            match self.step(org, held.take()) {
                Step::Decide { refresh: false } => {}
                Step::Decide { refresh: true } => {
                    let (counts, store) = (self.clone(), store.clone());
                    tokio::spawn(async move {
                        let reading = Reading::new(&counts, org, None);
                        if let Err(e) = reading.finish(read(&*store, org).await) {
                            // The old count stays in use; the next check tries again.
                            tracing::debug!(error = %e, "reading pending events failed");
                        }
                    });
                }
                Step::Read(first) => {
                    // Ended by `finish`, or by the drop if this request hangs up midway.
                    let reading = Reading::new(self, org, first);
                    if let Err(e) = reading.finish(read(&**store, org).await) {
                        // An old count, if there is one, still decides.
                        if !self.entries().get(&org).is_some_and(|e| e.counted.is_some()) {
                            return Err(e);
                        }
                    }
                }
                Step::Wait(first) => {
                    // Kept into the next step: if the read this waited for failed, this
                    // request reads with it (tokio hands a freed lock to the next waiter,
                    // so letting it go and taking it again could pass it around forever).
                    held = Some(first.lock_owned().await);
                    continue;
                }
            }
            let mut entries = self.entries();
            // Gone only if swept while this request read (idle for minutes before): again.
            let Some(entry) = entries.get_mut(&org) else { continue };
            if entry.known().saturating_add(n) > limit {
                return Err(refused(limit));
            }
            entry.inflight = entry.inflight.saturating_add(n);
            return Ok(Reservation { counts: Some(self.clone()), org, n });
        }
    }

    /// What a check of `org` does next, holding the first-read lock if it waited for it;
    /// marks a read as begun when it asks for one.
    fn step(&self, org: OrganizationId, held: Option<tokio::sync::OwnedMutexGuard<()>>) -> Step {
        let now = Instant::now();
        let mut entries = self.entries();
        let entry = entries.entry(org).or_insert_with(|| Entry {
            counted: None,
            inflight: 0,
            inserted: 0,
            read_at: now,
            stale: false,
            acks: 0,
            reading: None,
            first: Arc::default(),
            used_at: now,
        });
        entry.used_at = now;
        let idle = entry.reading.is_none();
        if entry.counted.is_none() {
            // The first read holds the lock while it runs: with the lock in hand, no read
            // is under way (the reader failed or hung up) and this request reads.
            let first = held.or_else(|| entry.first.clone().try_lock_owned().ok());
            return match first {
                Some(first) if idle => {
                    entry.begin_read();
                    Step::Read(Some(first))
                }
                _ => Step::Wait(entry.first.clone()),
            };
        }
        if idle && entry.stale {
            entry.begin_read();
            return Step::Read(None);
        }
        let refresh = idle && now.duration_since(entry.read_at) >= FRESH;
        if refresh {
            entry.begin_read();
        }
        Step::Decide { refresh }
    }

    /// Hands back a reservation of `reserved` once its insert returned: `inserted` of them
    /// were stored (0 when it failed); the rest (duplicates) never were.
    fn settle(&self, org: OrganizationId, reserved: u64, inserted: u64) {
        if let Some(entry) = self.entries().get_mut(&org) {
            entry.inflight = entry.inflight.saturating_sub(reserved);
            entry.inserted = entry.inserted.saturating_add(inserted);
        }
    }

    /// Makes the next check of `org` read the count in its path (after an acknowledgement
    /// here, so that the room it made is usable at once); the old count, an upper bound,
    /// decides the others meanwhile. (An acknowledgement of events acknowledged before
    /// counts too: one more read, in the path of an ingest the rate limit charges.)
    pub(super) fn forget(&self, org: OrganizationId) {
        if let Some(entry) = self.entries().get_mut(&org) {
            entry.stale = true;
            entry.acks = entry.acks.wrapping_add(1);
        }
    }

    /// Drops the entries of organizations that have not ingested for a while.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.entries().retain(|_, e| {
            e.reading.is_some() || e.inflight > 0 || now.duration_since(e.used_at) < IDLE
        });
    }
}

/// Pending events an ingest reserved ([`PendingCounts::reserve`]), handed back by
/// [`settle`](Self::settle) once its insert returned — or, should the request be dropped
/// before that (its client hung up), when dropped: then as if nothing was inserted, and
/// what the insert stored anyway is in the next count read (a second later at most).
pub(super) struct Reservation {
    counts: Option<Arc<PendingCounts>>,
    org: OrganizationId,
    n: u64,
}

impl Reservation {
    /// Nothing reserved (no bound applies).
    pub(super) fn none(org: OrganizationId) -> Self {
        Self { counts: None, org, n: 0 }
    }

    /// Hands the reservation back: `inserted` of its events were stored.
    pub(super) fn settle(mut self, inserted: u64) {
        if let Some(counts) = self.counts.take() {
            counts.settle(self.org, self.n, inserted);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(counts) = self.counts.take() {
            counts.settle(self.org, self.n, 0);
        }
    }
}

/// One read of `org`'s count, failing after [`READ_TIMEOUT`].
async fn read<S: EventLog + ?Sized>(store: &S, org: OrganizationId) -> StoreResult<u64> {
    tokio::time::timeout(READ_TIMEOUT, store.pending_events(org)).await.unwrap_or_else(|_| {
        Err(crate::StoreError::Unavailable("reading the pending events timed out".into()))
    })
}

fn refused(limit: u64) -> Error {
    Error::LimitExceeded { limit: LIMIT, max: limit }
}

/// A read of one organization's count under way. [`finish`](Self::finish) stores what it
/// read; dropped unfinished (its request hung up, the read failed) it lets the next check
/// read again. Holds the first-read lock, if any, until then.
struct Reading<'a> {
    counts: &'a PendingCounts,
    org: OrganizationId,
    done: bool,
    _first: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'a> Reading<'a> {
    fn new(
        counts: &'a PendingCounts,
        org: OrganizationId,
        first: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Self {
        Self { counts, org, done: false, _first: first }
    }

    /// Stores the count read. Inserts that returned while it ran may or may not be in it,
    /// so they stay counted on top (too many rather than too few); reservations still in
    /// flight stay counted whatever it saw.
    fn finish(mut self, read: StoreResult<u64>) -> Result<()> {
        let counted = read?;
        let now = Instant::now();
        if let Some(entry) = self.counts.entries().get_mut(&self.org) {
            let (inserted_before, acks_before) = entry.reading.unwrap_or((0, entry.acks));
            entry.counted = Some(counted);
            entry.inserted = entry.inserted.saturating_sub(inserted_before);
            entry.read_at = now;
            // An acknowledgement made while it ran may not be in it: read again.
            entry.stale = entry.acks != acks_before;
            entry.reading = None;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(entry) = self.counts.entries().get_mut(&self.org) {
                entry.reading = None;
            }
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
