//! The completer: records finished attempts in batches and, in the same store call, claims
//! the deliveries that take their places ([`DeliveryQueue::complete_and_claim`]).
//!
//! Why here and not in the dispatcher: a lease counts against its organization's share and
//! its endpoint's cap until its completion is recorded. Claiming only after that commit
//! returned cost every refill of a capped endpoint a second round trip (issue #13: one
//! endpoint delivered half as fast as before the caps). Recording and claiming together
//! frees and retakes the slot in one transaction, and the caps count exactly what they
//! counted before.
//!
//! [`DeliveryQueue::complete_and_claim`]: crate::store::DeliveryQueue::complete_and_claim

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::{Finished, Shared};
use crate::deliver::Deliverer;
use crate::domain::{EndpointId, WorkerId};
use crate::observe::DeliveryResult;
use crate::store::{ClaimRequest, CompletedAndClaimed, Completion, Delivery, EventStore};

/// Most completions recorded in one store call.
pub(super) const COMPLETION_BATCH: usize = 256;

/// Deliveries the completer claimed, each with the worker permit it runs under.
pub(super) type Refill = Vec<(Delivery, OwnedSemaphorePermit)>;

/// What the completer needs to claim: the pool's permits, lease owner and caps, the channel
/// to the dispatcher (which starts the attempts), and the stop signal (no claims once set).
pub(super) struct Refiller {
    pub(super) permits: Arc<Semaphore>,
    pub(super) owner: WorkerId,
    pub(super) caps: (u32, u32),
    /// Unbounded, but never holds more deliveries than the pool has permits.
    pub(super) to_dispatcher: mpsc::UnboundedSender<Refill>,
    pub(super) stop: watch::Receiver<bool>,
}

impl Refiller {
    /// The free worker permits (at most one claim batch), unless the pool is stopping.
    fn take_permits(&self, most: u32) -> Vec<OwnedSemaphorePermit> {
        let mut held = Vec::new();
        if *self.stop.borrow() {
            return held;
        }
        while held.len() < most as usize {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        held
    }
}

/// Records finished attempts in batches, claiming with each batch while permits are free.
pub(super) async fn complete_loop<S: EventStore, D: Deliverer>(
    shared: Arc<Shared<S, D>>,
    mut done: mpsc::Receiver<Finished>,
    refiller: Refiller,
) {
    let mut batch = Vec::with_capacity(COMPLETION_BATCH);
    // Failing what the disabling completions left outstanding (see `store::BACKLOG_BATCH`),
    // and at start what a previous run left half-way: as long as the backlogs, so these are
    // cut off at shutdown, not awaited — the next start finishes them
    // (`EndpointStore::unfinished_disables`), and meanwhile nothing of theirs is claimed.
    let mut finishing = tokio::task::JoinSet::new();
    let starting = shared.clone();
    finishing.spawn(async move {
        let now = starting.clock.now();
        super::finish_unfinished_disables(&*starting.store, now).await;
    });
    while done.recv_many(&mut batch, COMPLETION_BATCH).await > 0 {
        let completions: Vec<Completion> = batch.iter().map(|(c, ..)| c.clone()).collect();
        let recorded = record_and_refill(&shared, &completions, &refiller).await;
        let applied = recorded.as_ref().map(|r| &r.applied);
        if recorded.as_ref().map_or(true, |r| r.after_failure) {
            // A failed call may have committed a disable that no call reports: finish every
            // disable this batch asked for (nothing for an endpoint still enabled), trying
            // again while the store fails.
            let asked = super::disabled_by(&batch, &vec![true; batch.len()]);
            if !asked.is_empty() {
                let (targets, store) = (super::finish_targets(&asked), shared.clone());
                finishing.spawn(async move {
                    super::finish_disabling(&*store.store, targets, 8).await;
                });
            }
        }
        if let Some(Recorded { applied: flags, disabled: reported, .. }) = &recorded {
            let disabled = super::disabled_by(&batch, flags);
            if !disabled.is_empty() {
                // Finished by every node that saw a disabling answer (the calls are cheap
                // when nothing is left); logged by the one whose call turned it off (its
                // store write also announced it: `store::operational`).
                let (to_finish, store) = (super::finish_targets(&disabled), shared.clone());
                finishing.spawn(async move {
                    super::finish_disabling(&*store.store, to_finish, 1).await;
                });
                super::log_disabled(&disabled, reported);
            }
        }
        while finishing.try_join_next().is_some() {}
        if let (Some(flags), Some(observer)) = (applied, &shared.observer) {
            for ((_, result, latency, _), &applied) in batch.iter().zip(flags) {
                let result = if applied { *result } else { DeliveryResult::Stale };
                observer.delivery(result, *latency);
            }
        }
        batch.clear();
    }
    finishing.shutdown().await;
}

/// What one batch's recording reported.
struct Recorded {
    /// The applied flags.
    applied: Vec<bool>,
    /// The endpoints the call that recorded it disabled.
    disabled: Vec<EndpointId>,
    /// Whether an earlier call failed: it may have committed (a connection lost after the
    /// commit), and then the endpoints it disabled are reported by no call.
    after_failure: bool,
}

/// Records one batch and claims into the free permits; returns what the store reported
/// (`None` if recording failed for good). Wakes the dispatcher (`freed`) whenever a claim
/// may be worth making that this call did not make.
async fn record_and_refill<S: EventStore, D: Deliverer>(
    shared: &Shared<S, D>,
    completions: &[Completion],
    refiller: &Refiller,
) -> Option<Recorded> {
    let cfg = &shared.config;
    let held = refiller.take_permits(cfg.claim_batch);
    // Without a free permit, the same call with an empty claim: it records, and reports
    // the endpoints it disabled.
    let nothing = ClaimRequest::new(refiller.owner, 0, cfg.lease, shared.clock.now());
    if held.is_empty() {
        let recorded = record(&*shared.store, completions, nothing).await;
        shared.freed.notify_one();
        return recorded;
    }
    let limit = u32::try_from(held.len()).unwrap_or(u32::MAX);
    let req = ClaimRequest::new(refiller.owner, limit, cfg.lease, shared.clock.now())
        .with_caps(refiller.caps.0, refiller.caps.1);
    match shared.store.complete_and_claim(completions, req).await {
        Ok(CompletedAndClaimed { applied, disabled, claimed }) => {
            match claimed {
                Ok(deliveries) => {
                    // Every permit used: more may be due than this claim could take.
                    if deliveries.len() == held.len() {
                        shared.freed.notify_one();
                    }
                    if !deliveries.is_empty() {
                        let refill: Refill = deliveries.into_iter().zip(held).collect();
                        // The dispatcher outlives the completer, and releases what it gets
                        // once stopping; a send fails only if it crashed, and then the
                        // leases expire.
                        let _ = refiller.to_dispatcher.send(refill);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming with the completions failed");
                    shared.freed.notify_one();
                }
            }
            Some(Recorded { applied, disabled, after_failure: false })
        }
        Err(e) => {
            drop(held);
            tracing::warn!(error = %e, "recording delivery outcomes failed; retrying");
            let recorded = record(&*shared.store, completions, nothing).await;
            shared.freed.notify_one();
            recorded.map(|r| Recorded { after_failure: true, ..r })
        }
    }
}

/// Records completions (`nothing`: a claim of no delivery), retrying a failed call a few
/// times with a growing pause.
async fn record<S: EventStore>(
    store: &S,
    completions: &[Completion],
    nothing: ClaimRequest,
) -> Option<Recorded> {
    let mut tries = 0u32;
    loop {
        match store.complete_and_claim(completions, nothing).await {
            Ok(done) => {
                let (applied, disabled) = (done.applied, done.disabled);
                return Some(Recorded { applied, disabled, after_failure: tries > 0 });
            }
            Err(e) if tries < 5 => {
                tries += 1;
                tracing::warn!(error = %e, tries, "recording delivery outcomes failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << tries)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, count = completions.len(),
                    "recording delivery outcomes failed; their leases will expire and they will be retried");
                return None;
            }
        }
    }
}
