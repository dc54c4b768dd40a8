//! The delivery worker queue.
//!
//! One dispatcher task per [`Ingestor`](crate::Ingestor) claims due deliveries in batches
//! (leased to this pool's [`WorkerId`](crate::domain::WorkerId)), runs each attempt in its own task (at most
//! `concurrency` at once), and hands finished attempts to a completer task that records them
//! in batches, fenced by `(lease owner, attempt)`. The completer claims in the same store
//! call ([`complete_and_claim`](crate::store::DeliveryQueue::complete_and_claim)) into the
//! permits that are free, and hands those deliveries to the dispatcher: a slot that a
//! completion frees under an organization's or endpoint's cap is taken again in the round
//! trip that frees it. The dispatcher claims on its own when there is no completion to ride
//! on: at start, on wake-ups (new events), after the poll interval. Wake-ups that follow a
//! short claim by less than [`WorkerConfig::wake_coalesce`] wait out the rest of it.
//!
//! Crash behaviour: a process that dies simply stops renewing nothing — its leases run out
//! after `lease`, and any worker (here or on another node) claims the deliveries again with
//! the next attempt number (at-least-once; the event id stays the same). A completion that
//! arrives after its lease was taken over is refused by the store and changes nothing.
//!
//! Restart: with a stable lease owner (`WorkerConfig::node_id`, or the store's
//! [`node_id`](crate::store::DeliveryQueue::node_id)), the dispatcher first ends the leases
//! that id still holds — a previous run's, which crashed — so they are due at once.
//!
//! Shutdown (`Ingestor::shutdown`, or dropping the last `Ingestor` handle): the dispatcher
//! and the completer stop claiming, in-flight attempts get `shutdown_grace` to finish and be
//! recorded; those still running are cancelled and their deliveries released (due again at
//! once, attempt number restored), like deliveries the completer claimed as the pool stopped.

mod attempt;
mod complete;
mod config;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;

pub use config::WorkerConfig;

use crate::clock::{self, SharedClock};
use crate::deliver::{Attempt, Deliverer, Outcome};
use crate::domain::OrganizationId;
use crate::observe::{DeliveryResult, Observer};
use crate::retry::RetryPolicy;
use crate::store::{ClaimRequest, Completion, Delivery, EventStore};

use complete::{complete_loop, Refill, Refiller, COMPLETION_BATCH};

/// A running pool of delivery workers.
pub(crate) struct WorkerPool {
    stop: watch::Sender<bool>,
    dispatcher: tokio::task::JoinHandle<()>,
}

/// What every attempt task shares.
struct Shared<S, D> {
    store: Arc<S>,
    deliverer: Arc<D>,
    config: WorkerConfig,
    retry: RetryPolicy,
    clock: SharedClock,
    observer: Option<Arc<dyn Observer>>,
    /// Fired when leases of this pool end in the store (completions recorded, deferrals
    /// released) and the completer did not claim in their places itself: they no longer
    /// count against their organization's and endpoint's caps.
    freed: Arc<Notify>,
}

/// A finished attempt: its completion, result and latency, and its endpoint's organization
/// (for the log when the completion disables the endpoint).
type Finished = (Completion, DeliveryResult, Duration, OrganizationId);

impl WorkerPool {
    /// Starts the dispatcher and completer.
    pub(crate) fn spawn<S: EventStore, D: Deliverer>(
        store: Arc<S>,
        deliverer: Arc<D>,
        config: WorkerConfig,
        retry: RetryPolicy,
        clock: SharedClock,
        wake: Arc<Notify>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        if config.lease <= config.delivery_timeout {
            tracing::warn!(
                lease = ?config.lease,
                delivery_timeout = ?config.delivery_timeout,
                "lease is not longer than the delivery timeout: slow deliveries may run twice"
            );
        }
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store,
            deliverer,
            config,
            retry,
            clock,
            observer,
            freed: Arc::default(),
        });
        let dispatcher = tokio::spawn(dispatch(shared, wake, stop_rx));
        Self { stop, dispatcher }
    }

    /// Stops claiming, lets in-flight attempts finish within the grace period, releases the
    /// rest, records everything, and returns.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.dispatcher.await {
            tracing::error!(error = %e, "delivery dispatcher ended abnormally");
        }
    }
}

async fn dispatch<S: EventStore, D: Deliverer>(
    shared: Arc<Shared<S, D>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = &shared.config;
    let stable = cfg.node_id.or_else(|| shared.store.node_id());
    let owner = stable.unwrap_or_default(); // the default is a fresh, random id
    if stable.is_some() {
        match shared.store.reclaim_leases(owner, shared.clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(%owner, reclaimed = n,
                "deliveries leased by a previous run of this node are due again"),
            Err(e) => tracing::warn!(%owner, error = %e,
                "reclaiming a previous run's leases failed; they will expire instead"),
        }
    }
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let (done_tx, done_rx) = mpsc::channel::<Finished>(cfg.concurrency + COMPLETION_BATCH);
    let org_cap = u32::try_from(cfg.effective_org_concurrency()).unwrap_or(u32::MAX);
    let endpoint_cap = u32::try_from(cfg.endpoint_concurrency).unwrap_or(u32::MAX);
    let (refill_tx, mut refills) = mpsc::unbounded_channel::<Refill>();
    let refiller = Refiller {
        permits: permits.clone(),
        owner,
        caps: (org_cap, endpoint_cap),
        to_dispatcher: refill_tx,
        stop: stop.clone(),
    };
    let completer = tokio::spawn(complete_loop(shared.clone(), done_rx, refiller));
    let (abort_tx, abort_rx) = watch::channel(false);
    let store_wake = shared.store.wakeups();
    let mut tasks = JoinSet::new();
    let start = |tasks: &mut JoinSet<()>, refill: Refill| {
        for (delivery, permit) in refill {
            let (done, abort) = (done_tx.clone(), abort_rx.clone());
            tasks.spawn(attempt_one(shared.clone(), delivery, permit, done, abort));
        }
    };
    tracing::debug!(%owner, concurrency = cfg.concurrency, org_cap, endpoint_cap,
        "delivery workers started");

    // Claims that failed in a row (the store is unavailable): the next claim waits longer.
    let mut failures: u32 = 0;
    'run: loop {
        while tasks.try_join_next().is_some() {}
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'run },
            Some(refill) = refills.recv() => {
                start(&mut tasks, refill);
                continue 'run;
            }
            _ = stop.changed() => break 'run,
        };
        let mut held = vec![first];
        while held.len() < cfg.claim_batch as usize {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let wanted = held.len();
        let req = ClaimRequest::new(
            owner,
            u32::try_from(wanted).unwrap_or(u32::MAX),
            cfg.lease,
            shared.clock.now(),
        )
        .with_caps(org_cap, endpoint_cap);
        // Deliveries the completer claims meanwhile start at once, not after this claim.
        let claim = shared.store.claim(req);
        tokio::pin!(claim);
        let claimed = loop {
            tokio::select! {
                claimed = &mut claim => break claimed,
                Some(refill) = refills.recv() => start(&mut tasks, refill),
            }
        };
        let claimed_at = TokioInstant::now();
        let got = match claimed {
            Ok(deliveries) => {
                let got = deliveries.len();
                start(&mut tasks, deliveries.into_iter().zip(held.drain(..)).collect());
                got
            }
            Err(e) => {
                // Back off instead of spinning: wake-ups (new events) do not shorten the
                // wait, which doubles from the poll interval up to CLAIM_BACKOFF_MAX.
                drop(held);
                failures = failures.saturating_add(1);
                let wait = claim_backoff(cfg.poll_interval, failures);
                tracing::warn!(error = %e, retry_in = ?wait, "claiming deliveries failed");
                let backoff = tokio::time::sleep(wait);
                tokio::pin!(backoff);
                loop {
                    tokio::select! {
                        _ = &mut backoff => continue 'run,
                        Some(refill) = refills.recv() => start(&mut tasks, refill),
                        _ = stop.changed() => break 'run,
                    }
                }
            }
        };
        failures = 0;
        drop(held);
        if got == wanted {
            continue; // There may be more due right now.
        }
        // Fewer than wanted: nothing more is due, or the rest is held back by the fairness
        // caps until one of this pool's attempts finishes (the completer claims in its place,
        // or fires `freed`), a store wake-up (another node's), or the poll.
        let poll = tokio::time::sleep(cfg.poll_interval);
        tokio::pin!(poll);
        let woken = loop {
            tokio::select! {
                Some(refill) = refills.recv() => start(&mut tasks, refill),
                _ = shared.freed.notified() => break false,
                _ = wake.notified() => break true,
                _ = async {
                    match &store_wake {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                } => break true,
                _ = &mut poll => break false,
                _ = stop.changed() => break 'run,
            }
        };
        if woken {
            // New events right after a short claim: let more of them gather first.
            let gap = tokio::time::sleep_until(claimed_at + cfg.wake_coalesce);
            tokio::pin!(gap);
            loop {
                tokio::select! {
                    Some(refill) = refills.recv() => start(&mut tasks, refill),
                    _ = shared.freed.notified() => break,
                    _ = &mut gap => break,
                    _ = stop.changed() => break 'run,
                }
            }
        }
    }

    // Shutdown: give in-flight attempts the grace period, then cancel and release the rest.
    // Deliveries the completer claimed as the pool stopped are released at once.
    let grace = tokio::time::sleep(cfg.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            Some(refill) = refills.recv() => release_unstarted(&*shared.store, refill).await,
            _ = &mut grace => {
                let _ = abort_tx.send(true);
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    drop(done_tx);
    if let Err(e) = completer.await {
        tracing::error!(error = %e, "completion recorder ended abnormally");
    }
    while let Ok(refill) = refills.try_recv() {
        release_unstarted(&*shared.store, refill).await;
    }
    tracing::debug!(%owner, "delivery workers stopped");
}

/// Gives back deliveries that were claimed but never started (the pool is stopping): due
/// again at once, attempt number restored.
async fn release_unstarted<S: EventStore>(store: &S, refill: Refill) {
    for (d, _permit) in refill {
        match store.release(d.id, d.lease_owner, d.attempt, None).await {
            Ok(_) => tracing::debug!(delivery = %d.id, "released unstarted on shutdown"),
            Err(e) => tracing::warn!(delivery = %d.id, error = %e,
                "release failed; the lease will expire instead"),
        }
    }
}

/// Runs one attempt and queues its completion; on shutdown abort, releases the delivery.
async fn attempt_one<S: EventStore, D: Deliverer>(
    shared: Arc<Shared<S, D>>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
    done: mpsc::Sender<Finished>,
    mut abort: watch::Receiver<bool>,
) {
    let delivery = Arc::new(delivery);
    let started = Instant::now();
    // The deliverer runs in its own task so a panic in it is contained and reported.
    let call = tokio::spawn({
        let (d, deliverer) = (delivery.clone(), shared.deliverer.clone());
        async move { deliverer.deliver(&d).await }
    });
    let call_abort = call.abort_handle();
    let timeout = shared.config.delivery_timeout;
    let attempt: Option<Attempt> = tokio::select! {
        r = tokio::time::timeout(timeout, call) => Some(match r {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(e)) => {
                let reason = if e.is_panic() { "deliverer panicked" } else { "delivery cancelled" };
                tracing::error!(delivery = %delivery.id, "{reason}");
                Outcome::Retry { after: None, reason: reason.into() }.into()
            }
            Err(_) => {
                call_abort.abort();
                Outcome::Retry { after: None, reason: format!("timed out after {timeout:?}") }.into()
            }
        }),
        _ = abort.wait_for(|a| *a) => None,
    };
    let Some(attempt) = attempt else {
        call_abort.abort();
        let d = &delivery;
        match shared.store.release(d.id, d.lease_owner, d.attempt, None).await {
            Ok(_) => tracing::debug!(delivery = %d.id, "released on shutdown"),
            Err(e) => tracing::warn!(delivery = %d.id, error = %e,
                "release failed; the lease will expire instead"),
        }
        return;
    };
    let latency = started.elapsed();
    if let Outcome::Deferred { after, reason } = &attempt.outcome {
        let (d, due) = (&delivery, clock::add(shared.clock.now(), *after));
        drop(permit);
        match shared.store.release(d.id, d.lease_owner, d.attempt, Some(due)).await {
            Ok(_) => {
                shared.freed.notify_one();
                tracing::debug!(delivery = %d.id, %reason, ?after, "deferred");
            }
            Err(e) => tracing::warn!(delivery = %d.id, error = %e,
                "deferring failed; the lease will expire instead"),
        }
        if let Some(observer) = &shared.observer {
            observer.delivery(DeliveryResult::Deferred, latency);
        }
        return;
    }
    let (completion, result) = attempt::completion(
        &delivery,
        attempt,
        shared.clock.now(),
        latency,
        &shared.retry,
        shared.config.disable_after,
        rand::random::<f64>(),
    );
    drop(permit);
    // The completer outlives every attempt task, so this only fails if it crashed; then the
    // lease expires and the delivery is retried.
    let _ = done.send((completion, result, latency, delivery.organization_id)).await;
}

/// An endpoint an applied completion asked to disable: finished, and logged if the store
/// reports this call disabled it (the store wrote its announcement with the disable).
pub(super) struct Disabled {
    org: OrganizationId,
    endpoint: crate::domain::EndpointId,
    reason: String,
    at: crate::clock::Timestamp,
}

/// The endpoints the applied completions of the batch asked to disable (once per endpoint
/// and batch), each with its first such completion.
pub(super) fn disabled_by(batch: &[Finished], applied: &[bool]) -> Vec<Disabled> {
    let mut disabled: Vec<Disabled> = Vec::new();
    for ((c, _, _, org), applied) in batch.iter().zip(applied) {
        let Some(reason) = &c.disable_endpoint else { continue };
        let endpoint = c.record.endpoint_id;
        if !applied || disabled.iter().any(|d| d.endpoint == endpoint) {
            continue;
        }
        disabled.push(Disabled { org: *org, endpoint, reason: reason.clone(), at: c.record.at });
    }
    disabled
}

/// Logs the endpoints of `disabled` that the store reports this call turned off
/// (`CompletedAndClaimed::disabled`: only those enabled until then), so each disable is
/// logged once, whichever node or batch sees the endpoint's other answers; returns them.
pub(super) fn log_disabled<'d>(
    disabled: &'d [Disabled],
    reported: &[crate::domain::EndpointId],
) -> Vec<&'d Disabled> {
    let logged: Vec<&Disabled> =
        disabled.iter().filter(|d| reported.contains(&d.endpoint)).collect();
    for d in &logged {
        tracing::warn!(organization_id = %d.org, endpoint_id = %d.endpoint,
            reason = %d.reason, "endpoint disabled");
    }
    logged
}

/// What to finish for each of `disabled`: organization, endpoint, time of the disable.
pub(super) fn finish_targets(
    disabled: &[Disabled],
) -> Vec<(OrganizationId, crate::domain::EndpointId, clock::Timestamp)> {
    disabled.iter().map(|d| (d.org, d.endpoint, d.at)).collect()
}

/// Fails what the completions that disabled these endpoints left outstanding (they fail at
/// most [`BACKLOG_BATCH`](crate::store::BACKLOG_BATCH) each), in up to `rounds` rounds over
/// the targets not finished yet, 1 s apart and doubling up to a minute (several after a
/// store call failed, when the targets may or may not be disabled: nothing for one still
/// enabled). What is still left is logged; the next start, or enabling the endpoint,
/// finishes it.
pub(super) async fn finish_disabling<S: EventStore>(
    store: &S,
    mut targets: Vec<(OrganizationId, crate::domain::EndpointId, clock::Timestamp)>,
    rounds: u32,
) {
    let mut pause = Duration::from_secs(1);
    for round in 1..=rounds {
        let mut left = Vec::new();
        for (org, endpoint, at) in targets {
            if let Err(e) = store.finish_disabling(org, endpoint, at).await {
                tracing::debug!(organization_id = %org, endpoint_id = %endpoint, error = %e,
                    round, "failing a disabled endpoint's deliveries stopped");
                left.push((org, endpoint, at));
            }
        }
        targets = left;
        if targets.is_empty() || round == rounds {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(60));
    }
    for (org, endpoint, _) in targets {
        tracing::warn!(organization_id = %org, endpoint_id = %endpoint,
            "failing a disabled endpoint's deliveries stopped; the rest are failed at the \
             next start or when the endpoint is enabled");
    }
}

/// Finishes every disable the store reports unfinished
/// ([`EndpointStore::unfinished_disables`](crate::store::EndpointStore::unfinished_disables)).
pub(super) async fn finish_unfinished_disables<S: EventStore>(store: &S, now: clock::Timestamp) {
    let unfinished = match store.unfinished_disables().await {
        Ok(unfinished) => unfinished,
        Err(e) => {
            tracing::warn!(error = %e, "listing unfinished endpoint disables failed");
            return;
        }
    };
    for (org, endpoint) in unfinished {
        match store.finish_disabling(org, endpoint, now).await {
            Ok(n) => tracing::info!(organization_id = %org, endpoint_id = %endpoint, failed = n,
                "finished failing a disabled endpoint's deliveries"),
            Err(e) => tracing::warn!(organization_id = %org, endpoint_id = %endpoint,
                error = %e, "failing a disabled endpoint's deliveries stopped"),
        }
    }
}

/// Longest wait between two claims while claiming fails.
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The wait after the `failures`-th failed claim in a row: the poll interval, doubled per
/// failure, at most [`CLAIM_BACKOFF_MAX`].
fn claim_backoff(poll_interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(8);
    poll_interval.saturating_mul(factor).min(CLAIM_BACKOFF_MAX)
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn claim_backoff_doubles_up_to_a_cap() {
        let poll = Duration::from_millis(500);
        assert_eq!(claim_backoff(poll, 1), poll);
        assert_eq!(claim_backoff(poll, 2), Duration::from_secs(1));
        assert_eq!(claim_backoff(poll, 4), Duration::from_secs(4));
        assert_eq!(claim_backoff(poll, 6), CLAIM_BACKOFF_MAX);
        assert_eq!(claim_backoff(poll, u32::MAX), CLAIM_BACKOFF_MAX);
    }
}

#[cfg(test)]
mod disabled_tests {
    use super::*;
    use crate::domain::event::AttemptRecord;
    use crate::domain::{DeliveryId, EndpointId, WorkerId};
    use crate::store::CompletionState;

    fn finished(endpoint: EndpointId, disable: Option<&str>) -> Finished {
        let completion = Completion {
            delivery_id: DeliveryId::new(),
            lease_owner: WorkerId::new(),
            attempt: 1,
            state: CompletionState::Failed,
            record: AttemptRecord {
                endpoint_id: endpoint,
                at: chrono::DateTime::UNIX_EPOCH,
                status_code: Some(410),
                latency_ms: 1,
                error: Some("HTTP 410".into()),
            },
            disable_endpoint: disable.map(str::to_owned),
        };
        (completion, DeliveryResult::Failed, Duration::ZERO, OrganizationId::new())
    }

    /// Only what the store reports as disabled by the call is logged, once per endpoint: a
    /// disabling completion for an endpoint an earlier call (or node) disabled is not.
    #[test]
    fn only_the_disables_the_store_reports_are_logged() {
        let (a, b) = (EndpointId::new(), EndpointId::new());
        let batch = [finished(a, Some("410")), finished(a, Some("410")), finished(b, Some("410"))];
        let asked = disabled_by(&batch, &[true, true, true]);
        let endpoints = |d: &[Disabled]| d.iter().map(|d| d.endpoint).collect::<Vec<_>>();
        assert_eq!(endpoints(&asked), [a, b], "both are finished, once each");
        let logged: Vec<EndpointId> =
            log_disabled(&asked, &[a]).iter().map(|d| d.endpoint).collect();
        assert_eq!(logged, [a]);
        assert!(log_disabled(&asked, &[]).is_empty());
        // A stale completion disables nothing, reported or not.
        assert!(log_disabled(&disabled_by(&batch[2..], &[false]), &[b]).is_empty());
    }
}
