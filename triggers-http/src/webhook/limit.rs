//! Per-endpoint limits: a concurrency cap and an optional rate, so one slow or rate-limited
//! receiver cannot occupy every delivery worker.
//!
//! A delivery that cannot get a slot within a short wait is not queued here: it returns
//! `Deferred` and goes back to the store, due again after the endpoint's defer time (at the
//! concurrency cap) or when the rate allows it, freeing its worker for other endpoints. No
//! attempt is recorded or used up.
//!
//! The rate is a tiny GCRA per endpoint (burst = one second's worth, at least one delivery),
//! a dozen lines over a `Mutex<Instant>` that is never held across an await; a rate-limiter
//! crate would bring its own clock and key store for no gain here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use triggers_core::EndpointId;

/// The map is swept of idle endpoints when it grows past this (and then past twice its size).
const SWEEP_FLOOR: usize = 1024;

/// An endpoint's own limits, carried on each delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Own {
    /// Deliveries in flight at most (capped by the configured concurrency).
    pub(crate) concurrency: Option<u32>,
    /// Deliveries per second at most (instead of the configured rate).
    pub(crate) rate: Option<u32>,
}

/// Time between deliveries at `rate` per second, and the burst window (one second's worth).
fn pacing(rate: Option<f64>) -> Option<(Duration, Duration)> {
    rate.filter(|r| r.is_finite() && *r > 0.0).map(|r| {
        let interval = Duration::from_secs_f64((1.0 / r).min(86_400.0));
        (interval, interval.max(Duration::from_secs(1)))
    })
}

/// Why a delivery could not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// The endpoint already has its maximum of deliveries in flight.
    Concurrency,
    /// The endpoint's rate is used up for this long.
    Rate(Duration),
}

#[derive(Debug)]
struct Slot {
    permits: Arc<Semaphore>,
    /// GCRA theoretical arrival time.
    tat: Mutex<Option<Instant>>,
}

/// Held while a delivery runs: its concurrency permit.
#[derive(Debug)]
pub(crate) struct Pass {
    _permit: OwnedSemaphorePermit,
    _slot: Arc<Slot>,
}

#[derive(Debug)]
pub(crate) struct EndpointLimits {
    slots: DashMap<EndpointId, Arc<Slot>>,
    max_concurrency: usize,
    /// Time between deliveries at the configured rate, and the burst window.
    pacing: Option<(Duration, Duration)>,
    max_wait: Duration,
    sweep_above: AtomicUsize,
}

impl EndpointLimits {
    pub(crate) fn new(max_concurrency: usize, rate: Option<f64>, max_wait: Duration) -> Self {
        let pacing = pacing(rate);
        Self {
            slots: DashMap::new(),
            max_concurrency: max_concurrency.clamp(1, Semaphore::MAX_PERMITS),
            pacing,
            max_wait,
            sweep_above: AtomicUsize::new(SWEEP_FLOOR),
        }
    }

    /// Waits at most the configured bound for a concurrency permit, then for the rate.
    /// `own` holds the endpoint's own limits (from the store): its concurrency (never above
    /// the configured cap) and its rate per second (instead of the configured rate).
    pub(crate) async fn acquire(&self, endpoint: EndpointId, own: Own) -> Result<Pass, Busy> {
        let slot = self.slot(endpoint);
        let permit =
            match tokio::time::timeout(self.max_wait, slot.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed; treat it like a timeout anyway.
                Ok(Err(_)) | Err(_) => return Err(Busy::Concurrency),
            };
        if let Some(cap) = own.concurrency {
            // In flight to this endpoint, this delivery included.
            let in_flight = self.max_concurrency - slot.permits.available_permits();
            if in_flight > cap as usize {
                return Err(Busy::Concurrency);
            }
        }
        let pacing = match own.rate {
            Some(rate) => pacing(Some(f64::from(rate))),
            None => self.pacing,
        };
        if let Some(wait) = self.reserve_rate(&slot, pacing)? {
            tokio::time::sleep(wait).await;
        }
        Ok(Pass { _permit: permit, _slot: slot })
    }

    fn slot(&self, endpoint: EndpointId) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(&endpoint) {
            return slot.clone();
        }
        let slot = self
            .slots
            .entry(endpoint)
            .or_insert_with(|| {
                Arc::new(Slot {
                    permits: Arc::new(Semaphore::new(self.max_concurrency)),
                    tat: Mutex::new(None),
                })
            })
            .clone();
        self.maybe_sweep();
        slot
    }

    /// Drops the state of endpoints nobody is using and whose rate holds nothing back any
    /// more. A slot in use is held by a [`Pass`] or by a caller between lookup and
    /// acquisition, so its reference count is above one; the shard lock `retain` holds keeps
    /// new clones from appearing meanwhile. A slot whose rate's theoretical arrival time is
    /// still ahead is kept too: dropping it would give its endpoint a fresh burst, so one
    /// organization churning through endpoints could make another's receiver get more than
    /// its rate. (Once that time has passed, a fresh slot behaves exactly like the old one.)
    fn maybe_sweep(&self) {
        let len = self.slots.len();
        if len <= self.sweep_above.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        self.slots.retain(|_, slot| {
            let pacing =
                slot.tat.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t > now);
            Arc::strong_count(slot) > 1 || pacing
        });
        let next = (self.slots.len() * 2).max(SWEEP_FLOOR);
        self.sweep_above.store(next, Ordering::Relaxed);
    }

    /// Reserves the next delivery slot of the endpoint's rate: `None` to go at once,
    /// `Some(wait)` to go after a wait within the bound, or `Busy::Rate` when even that is
    /// too far off (nothing is reserved then).
    fn reserve_rate(
        &self,
        slot: &Slot,
        pacing: Option<(Duration, Duration)>,
    ) -> Result<Option<Duration>, Busy> {
        let Some((interval, window)) = pacing else { return Ok(None) };
        let now = Instant::now();
        let mut tat = slot.tat.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = tat.map_or(now, |t| t.max(now)) + interval;
        let wait = next.saturating_duration_since(now).saturating_sub(window);
        if wait > self.max_wait {
            return Err(Busy::Rate(wait));
        }
        *tat = Some(next);
        Ok((!wait.is_zero()).then_some(wait))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_is_per_endpoint() {
        let limits = EndpointLimits::new(2, None, Duration::from_millis(20));
        let (a, b) = (EndpointId::new(), EndpointId::new());
        let first = limits.acquire(a, Own::default()).await.unwrap();
        let _second = limits.acquire(a, Own::default()).await.unwrap();
        assert_eq!(limits.acquire(a, Own::default()).await.unwrap_err(), Busy::Concurrency);
        let _other = limits.acquire(b, Own::default()).await.unwrap();
        drop(first);
        assert!(limits.acquire(a, Own::default()).await.is_ok(), "a released permit is reusable");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_allows_a_second_of_burst_then_paces() {
        // 4 per second, waits of up to 300 ms allowed.
        let limits = EndpointLimits::new(100, Some(4.0), Duration::from_millis(300));
        let e = EndpointId::new();
        let start = Instant::now();
        for _ in 0..4 {
            drop(limits.acquire(e, Own::default()).await.unwrap());
        }
        assert_eq!(Instant::now(), start, "the burst goes at once");
        drop(limits.acquire(e, Own::default()).await.unwrap());
        assert_eq!(Instant::now() - start, Duration::from_millis(250), "then one per 250 ms");
        // Reserve ahead without waiting until the next wait would exceed the bound.
        let slot = limits.slot(e);
        assert_eq!(limits.reserve_rate(&slot, limits.pacing), Ok(Some(Duration::from_millis(250))));
        assert_eq!(
            limits.reserve_rate(&slot, limits.pacing),
            Err(Busy::Rate(Duration::from_millis(500)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoints_own_limits_apply() {
        let limits = EndpointLimits::new(4, None, Duration::from_millis(300));
        let e = EndpointId::new();
        let own = Own { concurrency: Some(1), rate: None };
        let held = limits.acquire(e, own).await.unwrap();
        assert_eq!(limits.acquire(e, own).await.unwrap_err(), Busy::Concurrency);
        drop(held);
        // 2 per second of its own: a burst of two, then a wait of 500 ms is too long.
        let rated = Own { concurrency: None, rate: Some(2) };
        let start = Instant::now();
        drop(limits.acquire(e, rated).await.unwrap());
        drop(limits.acquire(e, rated).await.unwrap());
        assert_eq!(Instant::now(), start);
        assert!(matches!(limits.acquire(e, rated).await, Err(Busy::Rate(_))));
    }

    #[tokio::test]
    async fn idle_endpoints_are_swept() {
        let limits = EndpointLimits::new(1, None, Duration::from_millis(10));
        let busy = EndpointId::new();
        let held = limits.acquire(busy, Own::default()).await.unwrap();
        for _ in 0..SWEEP_FLOOR - 1 {
            drop(limits.acquire(EndpointId::new(), Own::default()).await.unwrap());
        }
        assert_eq!(limits.len(), SWEEP_FLOOR);
        // The next new endpoint pushes the map over the floor: idle ones go, the busy one and
        // the one being acquired stay.
        drop(limits.acquire(EndpointId::new(), Own::default()).await.unwrap());
        assert_eq!(limits.len(), 2);
        assert!(limits.slots.contains_key(&busy));
        assert_eq!(limits.acquire(busy, Own::default()).await.unwrap_err(), Busy::Concurrency);
        drop(held);
    }

    /// An idle endpoint whose rate still holds deliveries back survives a sweep: it gets no
    /// fresh burst. Once its rate has caught up, it is swept like any idle endpoint.
    #[tokio::test(start_paused = true)]
    async fn a_sweep_keeps_the_rate_of_an_endpoint_it_still_paces() {
        let limits = EndpointLimits::new(8, None, Duration::from_millis(10));
        let paced = EndpointId::new();
        let own = Own { concurrency: None, rate: Some(2) };
        drop(limits.acquire(paced, own).await.unwrap());
        drop(limits.acquire(paced, own).await.unwrap());
        assert!(matches!(limits.acquire(paced, own).await, Err(Busy::Rate(_))), "burst used up");
        for _ in 0..SWEEP_FLOOR {
            drop(limits.acquire(EndpointId::new(), Own::default()).await.unwrap());
        }
        assert!(limits.slots.contains_key(&paced), "kept by the sweep");
        assert!(matches!(limits.acquire(paced, own).await, Err(Busy::Rate(_))), "no new burst");

        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..2 * SWEEP_FLOOR {
            drop(limits.acquire(EndpointId::new(), Own::default()).await.unwrap());
        }
        assert!(!limits.slots.contains_key(&paced), "swept once its rate caught up");
    }
}
