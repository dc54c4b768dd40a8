//! Per-organization rate limiting (GCRA).
//!
//! We evaluated the `governor` crate (one keyed limiter per tier). We use a small GCRA over a
//! sharded concurrent map instead because (1) the limit is a per-key parameter read from the
//! organization's tier on every call, so a tier change applies at once without moving keys
//! between limiters; (2) time comes from our injected [`Clock`](crate::Clock), so tests never
//! sleep; (3) callers need `remaining` and `reset` for headers on every answer. The state per
//! organization is one atomic integer, updated with a compare-and-swap loop: no lock is held on
//! the hot path beyond the map shard's read lock.
//!
//! **Across nodes** this limiter is per process: N nodes behind a load balancer allow up to N
//! times the limit in the worst case. Where one global limit matters, use a store-backed
//! [`SharedRateLimiter`] (the Postgres store provides one, exact at a database round trip per
//! request), best wrapped in a [`ChunkedLimiter`](crate::ChunkedLimiter): each node then takes
//! allowance in chunks of 2 % of the limit, one round trip per chunk, and the global limit
//! holds to within one chunk per node (the example server's default on PostgreSQL).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;

use crate::clock::Timestamp;
use crate::domain::OrganizationId;
use crate::store::StoreResult;

const MINUTE_NANOS: i64 = 60_000_000_000;

/// The limiter's answer: whether the request may go ahead, and what to put in the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request is allowed (and its cost was charged).
    pub allowed: bool,
    /// The per-minute limit (`X-RateLimit-Limit`).
    pub limit: u32,
    /// What can still be spent right now (`X-RateLimit-Remaining`).
    pub remaining: u32,
    /// Time until the full allowance is available again (`X-RateLimit-Reset`, in seconds).
    pub reset: Duration,
    /// For a refusal: time until this request would be allowed (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl RateDecision {
    /// The decision for an organization without a limit: allowed, everything remaining.
    pub fn unlimited() -> Self {
        let max = crate::TierLimits::UNLIMITED;
        Self { allowed: true, limit: max, remaining: max, reset: Duration::ZERO, retry_after: None }
    }
}

/// An in-process GCRA limiter keyed by organization. Burst = the per-minute limit; it refills
/// evenly (one unit every `60 s / limit`). Idle keys are dropped by [`sweep`](Self::sweep).
///
/// ```
/// use triggers_core::{clock::{Clock, ManualClock}, RateLimiter, OrganizationId};
/// let clock = ManualClock::new();
/// let limiter = RateLimiter::new();
/// let org = OrganizationId::new();
/// for _ in 0..10 {
///     assert!(limiter.check(org, 10, 1, clock.now()).allowed);
/// }
/// let refused = limiter.check(org, 10, 1, clock.now());
/// assert!(!refused.allowed);
/// assert_eq!(refused.retry_after.unwrap().as_secs(), 6);
/// ```
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Theoretical arrival time per organization, in Unix nanoseconds.
    tat: DashMap<OrganizationId, AtomicI64>,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Charges `cost` units to `org` if its allowance of `limit_per_minute` permits, else
    /// charges nothing. A cost above the limit can never pass.
    /// [`TierLimits::UNLIMITED`](crate::TierLimits::UNLIMITED) always passes and keeps no
    /// state.
    pub fn check(
        &self,
        org: OrganizationId,
        limit_per_minute: u32,
        cost: u32,
        now: Timestamp,
    ) -> RateDecision {
        if limit_per_minute == crate::TierLimits::UNLIMITED {
            return RateDecision::unlimited();
        }
        let now = nanos(now);
        let limit = limit_per_minute.max(1);
        let interval = MINUTE_NANOS / i64::from(limit);
        let increment = interval.saturating_mul(i64::from(cost));
        let decide = |tat: i64| {
            let new_tat = tat.max(now).saturating_add(increment);
            let allowed = new_tat - now <= MINUTE_NANOS;
            (allowed, new_tat)
        };
        // Fast path: the key exists, only a shard read lock is taken.
        let tat = if let Some(cell) = self.tat.get(&org) {
            let mut current = cell.load(Ordering::Acquire);
            loop {
                let (allowed, new_tat) = decide(current);
                if !allowed {
                    break Err(current);
                }
                match cell.compare_exchange_weak(
                    current,
                    new_tat,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break Ok(new_tat),
                    Err(seen) => current = seen,
                }
            }
        } else {
            let cell = self.tat.entry(org).or_insert_with(|| AtomicI64::new(now));
            let current = cell.load(Ordering::Acquire);
            let (allowed, new_tat) = decide(current);
            if allowed {
                cell.store(new_tat, Ordering::Release);
                Ok(new_tat)
            } else {
                Err(current)
            }
        };
        match tat {
            Ok(new_tat) => summary(true, limit, interval, new_tat, now, None),
            Err(current) => {
                let new_tat = current.max(now).saturating_add(increment);
                let wait = new_tat - now - MINUTE_NANOS;
                summary(false, limit, interval, current, now, Some(wait))
            }
        }
    }

    /// The state of `org` without charging anything (for headers on other responses).
    pub fn peek(&self, org: OrganizationId, limit_per_minute: u32, now: Timestamp) -> RateDecision {
        if limit_per_minute == crate::TierLimits::UNLIMITED {
            return RateDecision::unlimited();
        }
        let now_n = nanos(now);
        let limit = limit_per_minute.max(1);
        let interval = MINUTE_NANOS / i64::from(limit);
        let tat = self.tat.get(&org).map_or(now_n, |c| c.load(Ordering::Acquire));
        summary(true, limit, interval, tat, now_n, None)
    }

    /// Takes over a decision made elsewhere (by a [`SharedRateLimiter`]) as `org`'s state, so
    /// that [`peek`](Self::peek) reports what is left from it, refilling as time passes.
    pub fn mirror(&self, org: OrganizationId, decision: &RateDecision, now: Timestamp) {
        if decision.limit == crate::TierLimits::UNLIMITED {
            return;
        }
        let used = i64::try_from(decision.reset.as_nanos()).unwrap_or(MINUTE_NANOS);
        let tat = nanos(now).saturating_add(used);
        match self.tat.get(&org) {
            Some(cell) => cell.store(tat, Ordering::Release),
            None => {
                self.tat.insert(org, AtomicI64::new(tat));
            }
        }
    }

    /// Drops the state of organizations whose allowance is full again (they are
    /// indistinguishable from new ones), so memory stays bounded by recently active keys.
    pub fn sweep(&self, now: Timestamp) {
        let now = nanos(now);
        self.tat.retain(|_, tat| tat.load(Ordering::Acquire) > now);
    }

    /// How many organizations have state.
    pub fn len(&self) -> usize {
        self.tat.len()
    }

    /// Whether no organization has state.
    pub fn is_empty(&self) -> bool {
        self.tat.is_empty()
    }
}

fn nanos(t: Timestamp) -> i64 {
    t.timestamp_micros().saturating_mul(1000)
}

fn summary(
    allowed: bool,
    limit: u32,
    interval: i64,
    tat: i64,
    now: i64,
    wait: Option<i64>,
) -> RateDecision {
    let used = (tat - now).max(0);
    let free = (MINUTE_NANOS - used).max(0) / interval;
    let to_duration = |n: i64| Duration::from_nanos(u64::try_from(n.max(0)).unwrap_or(0));
    RateDecision {
        allowed,
        limit,
        remaining: u32::try_from(free).unwrap_or(u32::MAX).min(limit),
        reset: to_duration(used),
        retry_after: wait.map(to_duration),
    }
}

/// A rate limiter shared by every node through the store: one exact global limit per
/// organization, at the cost of a store round trip per check.
#[async_trait]
pub trait SharedRateLimiter: Send + Sync + 'static {
    /// Same semantics as [`RateLimiter::check`], enforced atomically in the store.
    async fn check(
        &self,
        org: OrganizationId,
        limit_per_minute: u32,
        cost: u32,
        now: Timestamp,
    ) -> StoreResult<RateDecision>;

    /// Forgets the state of organizations whose allowance is full again as of `now` (they
    /// behave like new ones), so state stays bounded by recently active organizations.
    /// Returns how many were forgotten. The [`Ingestor`](crate::Ingestor) calls it once a
    /// minute. The default keeps everything.
    async fn sweep(&self, now: Timestamp) -> StoreResult<u64> {
        let _ = now;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    #[test]
    fn burst_then_even_refill() {
        let clock = ManualClock::new();
        let l = RateLimiter::new();
        let org = OrganizationId::new();
        for i in 0..60 {
            let d = l.check(org, 60, 1, clock.now());
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.remaining, 59 - i);
        }
        let refused = l.check(org, 60, 1, clock.now());
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.reset, Duration::from_secs(60));
        clock.advance(Duration::from_secs(1));
        assert!(l.check(org, 60, 1, clock.now()).allowed, "one unit refilled after 1 s");
        assert!(!l.check(org, 60, 1, clock.now()).allowed);
    }

    #[test]
    fn batches_cost_their_size_and_refusals_charge_nothing() {
        let clock = ManualClock::new();
        let l = RateLimiter::new();
        let org = OrganizationId::new();
        assert!(l.check(org, 10, 7, clock.now()).allowed);
        let refused = l.check(org, 10, 4, clock.now());
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(6)));
        assert!(l.check(org, 10, 3, clock.now()).allowed, "the refused batch charged nothing");
        assert!(!l.check(org, 10, 11, clock.now()).allowed, "over the burst never passes");
    }

    #[test]
    fn organizations_are_independent_and_idle_keys_are_swept() {
        let clock = ManualClock::new();
        let l = RateLimiter::new();
        let (a, b) = (OrganizationId::new(), OrganizationId::new());
        assert!(l.check(a, 1, 1, clock.now()).allowed);
        assert!(!l.check(a, 1, 1, clock.now()).allowed);
        assert!(l.check(b, 1, 1, clock.now()).allowed);
        assert_eq!(l.len(), 2);
        clock.advance(Duration::from_secs(61));
        l.sweep(clock.now());
        assert!(l.is_empty());
        assert_eq!(l.peek(a, 1, clock.now()).remaining, 1);
    }

    #[test]
    fn unlimited_always_passes_and_keeps_no_state() {
        let clock = ManualClock::new();
        let l = RateLimiter::new();
        let org = OrganizationId::new();
        let unlimited = crate::TierLimits::UNLIMITED;
        for _ in 0..10_000 {
            assert!(l.check(org, unlimited, 1000, clock.now()).allowed);
        }
        assert!(l.is_empty(), "no state for an unlimited organization");
        assert_eq!(l.peek(org, unlimited, clock.now()), RateDecision::unlimited());
        // A finite limit for the same organization still limits.
        assert!(!l.check(org, 10, 11, clock.now()).allowed);
    }

    #[test]
    fn concurrent_checks_never_exceed_the_limit() {
        let clock = ManualClock::new();
        let l = std::sync::Arc::new(RateLimiter::new());
        let org = OrganizationId::new();
        let now = clock.now();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..100).filter(|_| l.check(org, 300, 1, now).allowed).count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 300);
    }
}
