//! A short-lived cache of authenticated keys, so the hot path does not hit the store.

use std::time::Duration;

use moka::sync::Cache;

use crate::domain::key::KeyHash;
use crate::domain::org::Organization;
use crate::domain::OrganizationId;

/// Key hash → organization, each entry living `ttl`. Only successful lookups are cached, so
/// guessing keys cannot fill it; it is bounded anyway.
pub(super) struct AuthCache {
    cache: Cache<[u8; 32], Organization>,
}

impl AuthCache {
    pub(super) fn new(ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Self { cache }
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
