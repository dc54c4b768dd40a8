//! [`ChunkedLimiter`]: a shared (store-backed) rate limit that costs a store round trip per
//! allowance chunk instead of per request.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::clock::Timestamp;
use crate::domain::OrganizationId;
use crate::limiter::{RateDecision, SharedRateLimiter};
use crate::store::StoreResult;

/// Wraps a [`SharedRateLimiter`] (for example the PostgreSQL store's): each node takes
/// allowance from it in small chunks and spends them locally.
///
/// **Guarantee.** Every unit a node admits was charged in the shared limiter first, so the
/// organization's global GCRA limit holds, except that units a node took but has not spent
/// yet may be spent later: with `N` nodes, a burst can exceed the limit by at most
/// `N × (chunk − 1)` units, where `chunk` is [`chunk_size`](Self::chunk_size) of the limit
/// (one unit below 100 per minute, so small limits stay exact; about 2 % above). A refusal
/// charges nothing. When a chunk is not available but the request's own cost is, only the
/// cost is taken.
///
/// **Cost.** One shared-limiter round trip per chunk per node; after a refusal, requests of
/// that organization are refused locally until the `Retry-After` it gave; checks
/// of one organization on one node are serialised by an async mutex (so concurrent requests
/// do not all fetch a chunk at once). Idle state is one small entry per organization seen.
pub struct ChunkedLimiter<L> {
    inner: L,
    local: DashMap<OrganizationId, Arc<tokio::sync::Mutex<Held>>>,
}

/// Units a node holds for one organization.
#[derive(Debug, Default)]
struct Held {
    units: u32,
    /// After a refusal: until when a request of at least this cost is refused without
    /// asking (other nodes can only have spent more meanwhile), and the refusal.
    refused: Option<(Timestamp, u32, RateDecision)>,
}

impl<L: SharedRateLimiter> ChunkedLimiter<L> {
    /// Chunks taken from `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner, local: DashMap::new() }
    }

    /// The units taken per round trip for a per-minute `limit`: 2 % of it, from 1 to 100.
    pub fn chunk_size(limit: u32) -> u32 {
        (limit / 50).clamp(1, 100)
    }
}

impl<L> std::fmt::Debug for ChunkedLimiter<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedLimiter").field("organizations", &self.local.len()).finish()
    }
}

#[async_trait]
impl<L: SharedRateLimiter> SharedRateLimiter for ChunkedLimiter<L> {
    async fn check(
        &self,
        org: OrganizationId,
        limit_per_minute: u32,
        cost: u32,
        now: Timestamp,
    ) -> StoreResult<RateDecision> {
        let cell = self.local.entry(org).or_default().clone();
        let mut held = cell.lock().await;
        let with_held = |mut d: RateDecision, held: u32| {
            d.remaining = d.remaining.saturating_add(held).min(d.limit);
            d
        };
        if held.units >= cost {
            held.units -= cost;
            // Headers without a round trip: what this node still holds.
            let limit = limit_per_minute.max(1);
            let d = RateDecision {
                allowed: true,
                limit,
                remaining: held.units.min(limit),
                reset: std::time::Duration::ZERO,
                retry_after: None,
            };
            return Ok(d);
        }
        let need = cost - held.units;
        if let Some((until, refused_cost, d)) = held.refused {
            if now < until && need >= refused_cost {
                let wait = (until - now).to_std().unwrap_or_default();
                return Ok(RateDecision { retry_after: Some(wait), ..d });
            }
            held.refused = None;
        }
        let grab = need.max(Self::chunk_size(limit_per_minute));
        let mut d = self.inner.check(org, limit_per_minute, grab, now).await?;
        if d.allowed {
            held.units += grab - cost;
            return Ok(with_held(d, held.units));
        }
        let mut asked = grab;
        if grab > need && d.remaining >= need {
            asked = need;
            d = self.inner.check(org, limit_per_minute, need, now).await?;
            if d.allowed {
                held.units = 0;
                return Ok(with_held(d, held.units));
            }
        }
        if let Some(wait) = d.retry_after {
            // The wait of a refused chunk, shortened to what `need` units wait.
            let spare = asked - need;
            let earlier = std::time::Duration::from_secs(60) * spare / limit_per_minute.max(1);
            d.retry_after = Some(wait.saturating_sub(earlier));
            held.refused = Some((crate::clock::add(now, wait.saturating_sub(earlier)), need, d));
        }
        Ok(with_held(d, held.units))
    }

    /// Forgets this node's idle organizations (no units held, no refusal pending, not in
    /// use), then sweeps the shared limiter.
    async fn sweep(&self, now: Timestamp) -> StoreResult<u64> {
        self.local.retain(|_, cell| match cell.try_lock() {
            Ok(held) => held.units > 0 || held.refused.is_some_and(|(until, _, _)| until > now),
            Err(_) => true,
        });
        self.inner.sweep(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::limiter::RateLimiter;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The in-process limiter as a "shared" one, counting round trips.
    #[derive(Default)]
    struct Counted {
        limiter: RateLimiter,
        trips: AtomicU32,
    }

    #[async_trait]
    impl SharedRateLimiter for Arc<Counted> {
        async fn check(
            &self,
            org: OrganizationId,
            limit: u32,
            cost: u32,
            now: Timestamp,
        ) -> StoreResult<RateDecision> {
            self.trips.fetch_add(1, Ordering::SeqCst);
            Ok(self.limiter.check(org, limit, cost, now))
        }
    }

    #[tokio::test]
    async fn nodes_stay_within_one_chunk_each_and_save_round_trips() {
        let clock = ManualClock::new();
        let shared = Arc::new(Counted::default());
        let nodes: Vec<_> = (0..3).map(|_| ChunkedLimiter::new(shared.clone())).collect();
        let org = OrganizationId::new();
        let limit = 6000;
        let chunk = ChunkedLimiter::<Arc<Counted>>::chunk_size(limit);
        assert_eq!(chunk, 100);
        let mut admitted = 0;
        for i in 0..9000 {
            if nodes[i % 3].check(org, limit, 1, clock.now()).await.unwrap().allowed {
                admitted += 1;
            }
        }
        assert!(admitted <= limit, "never more than the shared limiter granted");
        assert!(admitted > limit - 3 * chunk, "at most one chunk per node unspent: {admitted}");
        assert!(shared.trips.load(Ordering::SeqCst) < 9000 / 10, "chunks, not one trip per call");

        // Small limits are exact: chunks of one.
        let small = OrganizationId::new();
        let mut ok = 0;
        for i in 0..20 {
            ok += u32::from(nodes[i % 2].check(small, 10, 1, clock.now()).await.unwrap().allowed);
        }
        assert_eq!(ok, 10);
        // A refusal charges nothing; a cost larger than a chunk is taken whole.
        let batch = OrganizationId::new();
        assert!(nodes[0].check(batch, 600, 500, clock.now()).await.unwrap().allowed);
        assert!(!nodes[1].check(batch, 600, 200, clock.now()).await.unwrap().allowed);
        assert!(nodes[1].check(batch, 600, 88, clock.now()).await.unwrap().allowed);

        // Idle organizations (nothing held, no refusal pending) are forgotten by a sweep.
        let before = nodes[1].local.len();
        clock.advance(std::time::Duration::from_secs(120));
        nodes[1].sweep(clock.now()).await.unwrap();
        assert!(nodes[1].local.len() < before, "{} of {before} kept", nodes[1].local.len());
        assert!(nodes[1].local.iter().all(|e| e.value().try_lock().unwrap().units > 0));
    }
}
