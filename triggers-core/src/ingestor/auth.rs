//! A short-lived cache of authenticated keys, so the hot path does not hit the store, and a
//! bound on the lookups that miss it.

use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::OrganizationId;

/// Key hash → organization, each entry living `ttl`. Only successful lookups are cached, so
/// guessing keys cannot fill it; it is bounded anyway.
///
/// A lookup that misses (an unknown key, or a known one after `ttl`) belongs to no
/// organization, so the store gate cannot share it out: instead at most `lookups` of them
/// reach the store at once. A flood of invented keys then waits for itself (each lookup is
/// one indexed read) and leaves the store's small pools to the organizations' requests.
pub(super) struct AuthCache {
    cache: Cache<[u8; 32], Organization>,
    lookups: Semaphore,
}

impl AuthCache {
    pub(super) fn new(ttl: Duration, lookups: usize) -> Self {
        let cache = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Self { cache, lookups: Semaphore::new(lookups.max(1)) }
    }

    /// A turn to look a key up in the store (waits while `lookups` others run).
    pub(super) async fn lookup_turn(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed; `None` would only mean it was.
        self.lookups.acquire().await.ok()
    }

    pub(super) fn get(&self, hash: &KeyHash) -> Option<Organization> {
        self.cache.get(hash.as_bytes())
    }

    pub(super) fn insert(&self, hash: KeyHash, org: Organization) {
        self.cache.insert(hash.0, org);
    }

    /// Forgets every cached key of `org` (after rotation).
    pub(super) fn forget(&self, org: OrganizationId) {
        // Only fails if closures were not enabled at build time, which they are.
        let _ = self.cache.invalidate_entries_if(move |_, o| o.id == org);
    }
}
