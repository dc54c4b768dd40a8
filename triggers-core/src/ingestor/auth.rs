//! A short-lived cache of authenticated keys, so the hot path does not hit the store, and a
//! bound on the lookups that miss it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::OrganizationId;

/// Key hash → organization, each entry living `ttl`. Only successful lookups are cached, so
/// guessing keys cannot fill it; it is bounded anyway.
///
/// A lookup of a key never seen valid on this node (an invented key, or a new one) belongs
/// to no organization, so the store gate cannot share it out: instead at most `lookups` of
/// them reach the store at once, at most [`MAX_WAITING_LOOKUPS`] wait for a turn, none for
/// longer than [`LOOKUP_WAIT`]; the rest are `Overloaded` at once. A flood of invented keys
/// then leaves the store's small pools to the organizations' requests. A key seen valid in
/// the last [`KNOWN_FOR`] (remembered apart, its hash only: [`is_known`](Self::is_known))
/// is looked up without a turn when its cache entry has expired, as before, so neither a
/// flood nor a slow store (each lookup then waits for a connection) makes valid keys wait
/// for turns.
pub(super) struct AuthCache {
    cache: Cache<[u8; 32], Organization>,
    known: Cache<[u8; 32], OrganizationId>,
    lookups: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// How long a key seen valid is looked up without a turn.
pub(super) const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

/// Most key lookups waiting for a turn at once.
pub(super) const MAX_WAITING_LOOKUPS: usize = 64;

/// Longest wait of a key lookup for its turn.
pub(super) const LOOKUP_WAIT: Duration = Duration::from_secs(1);

impl AuthCache {
    pub(super) fn new(ttl: Duration, lookups: usize) -> Self {
        let cache = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        let known = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(KNOWN_FOR)
            .support_invalidation_closures()
            .build();
        let lookups = Arc::new(Semaphore::new(lookups.max(1)));
        Self { cache, known, lookups, waiting: AtomicUsize::new(0) }
    }

    /// Whether `hash` was a valid key on this node in the last [`KNOWN_FOR`] and was not
    /// rotated out here since (its lookup takes no turn).
    pub(super) fn is_known(&self, hash: &KeyHash) -> bool {
        self.known.contains_key(hash.as_bytes())
    }

    /// A turn to look a key up in the store: at once if one is free, else after waiting
    /// (at most [`LOOKUP_WAIT`], behind at most [`MAX_WAITING_LOOKUPS`] others), else
    /// `Overloaded`.
    pub(super) async fn lookup_turn(&self) -> Result<OwnedSemaphorePermit, Error> {
        let overloaded = Error::Overloaded(Duration::from_secs(1));
        if let Ok(turn) = self.lookups.clone().try_acquire_owned() {
            return Ok(turn);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_LOOKUPS {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded);
        }
        let turn = tokio::time::timeout(LOOKUP_WAIT, self.lookups.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match turn {
            Ok(Ok(turn)) => Ok(turn),
            // Timed out, or the semaphore closed (it never is).
            _ => Err(overloaded),
        }
    }

    pub(super) fn get(&self, hash: &KeyHash) -> Option<Organization> {
        self.cache.get(hash.as_bytes())
    }

    pub(super) fn insert(&self, hash: KeyHash, org: Organization) {
        self.known.insert(hash.0, org.id);
        self.cache.insert(hash.0, org);
    }

    /// Forgets every cached key of `org` (after rotation): a rotated-out key is neither
    /// accepted nor known any more.
    pub(super) fn forget(&self, org: OrganizationId) {
        // Only fails if closures were not enabled at build time, which they are.
        let _ = self.cache.invalidate_entries_if(move |_, o| o.id == org);
        let _ = self.known.invalidate_entries_if(move |_, o| *o == org);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A key seen valid is known until its organization's keys are rotated here.
    #[test]
    fn a_rotated_out_key_is_no_longer_known() {
        let auth = AuthCache::new(Duration::from_secs(60), 1);
        let org = Organization::new("acme", crate::domain::org::Tier::Free, chrono::Utc::now());
        let (hash, other) = (KeyHash::of("tk_one"), KeyHash::of("tk_two"));
        assert!(!auth.is_known(&hash));
        auth.insert(hash, org.clone());
        assert!(auth.is_known(&hash) && !auth.is_known(&other));
        auth.forget(org.id);
        assert!(!auth.is_known(&hash) && auth.get(&hash).is_none());
    }

    /// With every turn taken, at most `MAX_WAITING_LOOKUPS` lookups wait (one more is
    /// refused at once), they get their turns in order as turns end, and a wait ends after
    /// `LOOKUP_WAIT` at the latest.
    #[tokio::test(start_paused = true)]
    async fn lookups_wait_in_a_bounded_room_for_a_bounded_time() {
        let auth = Arc::new(AuthCache::new(Duration::from_secs(60), 1));
        let held = auth.lookup_turn().await.unwrap();
        let waiters: Vec<_> = (0..MAX_WAITING_LOOKUPS)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.lookup_turn().await.map(drop) })
            })
            .collect();
        while auth.waiting.load(Ordering::Acquire) < MAX_WAITING_LOOKUPS {
            tokio::task::yield_now().await;
        }
        assert!(matches!(auth.lookup_turn().await, Err(Error::Overloaded(_))), "room full");
        drop(held);
        for waiter in waiters {
            assert!(waiter.await.unwrap().is_ok(), "each waiter gets its turn");
        }

        let held = auth.lookup_turn().await.unwrap();
        let start = tokio::time::Instant::now();
        assert!(matches!(auth.lookup_turn().await, Err(Error::Overloaded(_))), "waited too long");
        assert_eq!(start.elapsed(), LOOKUP_WAIT);
        drop(held);
        assert!(auth.lookup_turn().await.is_ok());
    }
}
