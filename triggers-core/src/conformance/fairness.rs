//! Fair claiming: the organization share, endpoint concurrency, the circuit breaker, and FIFO
//! endpoints (see `DeliveryQueue::claim`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::domain::webhook::DeliveryOrdering;
use crate::domain::{EventId, OrganizationId, WorkerId};
use crate::store::{
    ClaimRequest, CompletedAndClaimed, Completion, CompletionState, Delivery, EndpointPatch,
    EventStore, RecoverQuery,
};

use super::support::{
    claim, claim_capped, complete, completion, endpoint, endpoint_with, insert, inserted, new_org,
    plus, record, t, LEASE,
};

/// Inserts `n` events of one batch for `org` at `now`; returns their ids in batch order.
async fn batch<S: EventStore>(store: &S, org: OrganizationId, n: usize, now: i64) -> Vec<EventId> {
    let records = (0..n).map(|i| record(&format!("fair.{i}"), t(now))).collect();
    insert(store, org, records, t(now)).await.iter().map(inserted).collect()
}

fn count_by_org(got: &[Delivery]) -> HashMap<OrganizationId, usize> {
    let mut counts = HashMap::new();
    for d in got {
        *counts.entry(d.organization_id).or_default() += 1;
    }
    counts
}

/// An organization at its share is passed over, and another organization's later delivery is
/// claimed instead; leases of every claimer count, expired ones do not, and a finished one
/// frees its place.
pub async fn claims_respect_the_organization_share<S: EventStore>(store: &S) {
    let (noisy, quiet) = (new_org(store).await, new_org(store).await);
    endpoint(store, noisy, None, t(0)).await;
    endpoint(store, noisy, None, t(0)).await;
    endpoint(store, quiet, None, t(0)).await;
    batch(store, noisy, 4, 0).await; // 8 deliveries, due first
    batch(store, quiet, 1, 1).await; // 1 delivery, due later
    let caps = (3, 100);

    let (w1, w2) = (WorkerId::new(), WorkerId::new());
    let first = claim_capped(store, w1, 2, t(2), caps).await;
    assert_eq!(count_by_org(&first).get(&noisy), Some(&2), "earliest due first");
    let second = claim_capped(store, w2, 10, t(2), caps).await;
    let counts = count_by_org(&second);
    assert_eq!(counts.get(&noisy), Some(&1), "one more up to the share of 3, any claimer");
    assert_eq!(counts.get(&quiet), Some(&1), "the later delivery of another organization");
    assert!(claim_capped(store, w1, 10, t(2), caps).await.is_empty(), "noisy is at its share");

    // A finished delivery frees its place.
    assert!(complete(store, completion(&first[0], CompletionState::Delivered, t(3))).await);
    let third = claim_capped(store, w1, 10, t(3), caps).await;
    assert_eq!(count_by_org(&third), HashMap::from([(noisy, 1)]));

    // Without caps the same store hands out everything due.
    let rest = claim(store, w2, 10, t(3)).await;
    assert_eq!(count_by_org(&rest), HashMap::from([(noisy, 4)]));

    // Once every lease has expired, none counts: a full share again (the quiet delivery too).
    let later = plus(t(3), LEASE);
    let again = claim_capped(store, w1, 10, later, caps).await;
    assert_eq!(count_by_org(&again), HashMap::from([(noisy, 3), (quiet, 1)]));
}

/// Deliveries held back by the caps never take the place of claimable ones, however many of
/// them come due first: a small claim still gets later deliveries of other endpoints and
/// organizations (the backlog of an endpoint at its cap is passed over, not counted against
/// the claim's limit).
pub async fn held_back_deliveries_never_crowd_out_a_claim<S: EventStore>(store: &S) {
    let (noisy, quiet) = (new_org(store).await, new_org(store).await);
    let backlog = endpoint(store, noisy, Some("a.*"), t(0)).await;
    let second = endpoint(store, noisy, Some("b.*"), t(0)).await;
    let other = endpoint(store, quiet, None, t(0)).await;
    let records = (0..20).map(|i| record(&format!("a.{i}"), t(0))).collect();
    insert(store, noisy, records, t(0)).await;
    insert(store, noisy, vec![record("b.0", t(1))], t(1)).await;
    insert(store, quiet, vec![record("q.0", t(2))], t(2)).await;
    let caps = (3, 2);
    let w = WorkerId::new();
    let per_endpoint = |got: &[Delivery]| {
        let mut counts = HashMap::new();
        for d in got {
            *counts.entry(d.endpoint_id).or_insert(0) += 1;
        }
        counts
    };

    let first = claim_capped(store, w, 3, t(3), caps).await;
    assert_eq!(
        per_endpoint(&first),
        HashMap::from([(backlog.id, 2), (second.id, 1)]),
        "the endpoint cap of 2, then the next endpoint's delivery, within a limit of 3"
    );
    let next = claim_capped(store, w, 1, t(3), caps).await;
    assert_eq!(per_endpoint(&next), HashMap::from([(other.id, 1)]), "the organization share");
    assert!(claim_capped(store, w, 5, t(3), caps).await.is_empty());

    // A finished delivery frees one place of the backlog's endpoint: exactly one more.
    let done = first.iter().find(|d| d.endpoint_id == backlog.id).unwrap();
    assert!(complete(store, completion(done, CompletionState::Delivered, t(4))).await);
    let refill = claim_capped(store, w, 5, t(4), caps).await;
    assert_eq!(per_endpoint(&refill), HashMap::from([(backlog.id, 1)]));
}

/// A parallel endpoint holds at most the endpoint cap; a failing endpoint only one lease
/// (circuit breaker) until an attempt succeeds.
pub async fn claims_respect_endpoint_concurrency_and_the_breaker<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    let other = endpoint(store, org, Some("other.*"), t(0)).await;
    batch(store, org, 6, 0).await;
    let caps = (100, 2);
    let w = WorkerId::new();

    let got = claim_capped(store, w, 10, t(1), caps).await;
    assert_eq!(got.len(), 2, "the endpoint cap");
    assert!(got.iter().all(|d| d.endpoint_id == ep.id));
    assert!(other.event_type_filter.is_some());
    assert!(claim_capped(store, w, 10, t(1), caps).await.is_empty());

    // One attempt fails: the endpoint is failing, so it may hold one lease — it holds one.
    let retry = CompletionState::Retry { at: t(2) };
    assert!(complete(store, completion(&got[0], retry.clone(), t(2))).await);
    assert!(claim_capped(store, w, 10, t(2), caps).await.is_empty(), "breaker: one at a time");
    assert!(complete(store, completion(&got[1], retry, t(2))).await);
    let probe = claim_capped(store, w, 10, t(3), caps).await;
    assert_eq!(probe.len(), 1, "a failing endpoint gets exactly one probe");
    assert_eq!(probe[0].endpoint_failing_since, Some(t(2)));
    assert!(claim_capped(store, w, 10, t(3), caps).await.is_empty());

    // The probe succeeds: the endpoint is healthy again and gets its full concurrency.
    assert!(complete(store, completion(&probe[0], CompletionState::Delivered, t(4))).await);
    let healthy = claim_capped(store, w, 10, t(4), caps).await;
    assert_eq!(healthy.len(), 2);
    assert!(healthy.iter().all(|d| d.endpoint_failing_since.is_none()));
}

/// An expired lease is claimable again like a pending delivery due at its lease expiry: taken
/// in due order with the endpoint's pending deliveries, within its cap, by the new owner with
/// the next attempt number; a live lease still counts against the cap.
pub async fn expired_leases_are_claimed_in_due_order_within_the_caps<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let first = batch(store, org, 2, 0).await;
    let caps = (100, 2);
    let (w1, w2) = (WorkerId::new(), WorkerId::new());
    let leased = claim_capped(store, w1, 10, t(0), caps).await;
    assert_eq!(leased.len(), 2);
    // Due before the leases expire (t(30)), so first in line once they have.
    let early = batch(store, org, 1, 20).await;
    // Due after they expire.
    let late = batch(store, org, 1, 35).await;

    let now = t(40);
    let got = claim_capped(store, w2, 10, now, caps).await;
    assert_eq!(got.len(), 2, "the cap counts expired leases as free places");
    assert_eq!(got[0].event_id, early[0], "due first");
    assert!(first.contains(&got[1].event_id), "an expired lease, due at its expiry");
    assert_eq!((got[1].attempt, got[1].lease_owner), (2, w2));
    assert!(claim_capped(store, w2, 10, now, caps).await.is_empty(), "two live leases: full");

    // A finished delivery frees a place: the other expired lease (due t(30)) goes before the
    // pending delivery due at t(35).
    assert!(complete(store, completion(&got[0], CompletionState::Delivered, now)).await);
    let next = claim_capped(store, w2, 10, now, caps).await;
    assert_eq!(next.len(), 1);
    assert!(first.contains(&next[0].event_id) && next[0].event_id != got[1].event_id);
    assert_eq!(next[0].attempt, 2);
    // The first owner's leases are stale.
    for old in &leased {
        assert!(!complete(store, completion(old, CompletionState::Delivered, now)).await);
    }
    assert!(complete(store, completion(&next[0], CompletionState::Delivered, now)).await);
    let last = claim_capped(store, w2, 10, now, caps).await;
    assert_eq!(last.iter().map(|d| d.event_id).collect::<Vec<_>>(), late);
}

/// `complete_and_claim` with `completions` at `now`, caps `(org, endpoint)`, limit 10.
async fn complete_and_claim<S: EventStore>(
    store: &S,
    completions: Vec<Completion>,
    now: crate::clock::Timestamp,
    (org_cap, endpoint_cap): (u32, u32),
) -> (Vec<bool>, Vec<Delivery>) {
    let req = ClaimRequest::new(WorkerId::new(), 10, LEASE, now).with_caps(org_cap, endpoint_cap);
    let CompletedAndClaimed { applied, disabled, claimed } =
        store.complete_and_claim(&completions, req).await.unwrap();
    assert_eq!(applied.len(), completions.len(), "one flag per completion");
    if completions.iter().all(|c| c.disable_endpoint.is_none()) {
        assert!(disabled.is_empty(), "nothing disabled: {disabled:?}");
    }
    (applied, claimed.unwrap())
}

/// `complete_and_claim` records the completions, then claims as if the leases they ended
/// were gone: an endpoint at its cap gets exactly its freed slot back, a stale completion
/// frees nothing, a retry makes the endpoint failing (one lease) at once, and a FIFO line
/// whose head finished offers its next delivery — the same as `complete`, then `claim`.
pub async fn completing_and_claiming_takes_the_freed_places<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, Some("fair.*"), t(0)).await;
    let fifo = endpoint_with(store, org, Some("line.*"), DeliveryOrdering::Fifo, t(0)).await;
    batch(store, org, 5, 0).await;
    let records: Vec<_> = (0..3).map(|i| record(&format!("line.{i}"), t(0))).collect();
    let line: Vec<EventId> = records.iter().map(|r| r.id).collect();
    insert(store, org, records, t(0)).await;
    let caps = (100, 2);

    let first = claim_capped(store, WorkerId::new(), 10, t(1), caps).await;
    let (parallel, heads): (Vec<Delivery>, Vec<Delivery>) =
        first.into_iter().partition(|d| d.endpoint_id == ep.id);
    assert_eq!((parallel.len(), heads.len()), (2, 1), "the endpoint cap and the line's head");
    assert_eq!(heads[0].event_id, line[0]);

    // One of the endpoint's two leases ends: exactly one delivery takes its place.
    let done = completion(&parallel[0], CompletionState::Delivered, t(2));
    let (applied, refill) = complete_and_claim(store, vec![done.clone()], t(2), caps).await;
    assert_eq!(applied, vec![true]);
    assert_eq!(refill.len(), 1, "the freed slot, no more: {refill:?}");
    assert_eq!(refill[0].endpoint_id, ep.id);
    assert!(refill[0].id != parallel[1].id && refill[0].id != parallel[0].id);

    // A stale completion ends no lease: nothing to take.
    let (applied, none) = complete_and_claim(store, vec![done], t(2), caps).await;
    assert_eq!(applied, vec![false]);
    assert!(none.is_empty(), "a stale completion freed a place: {none:?}");

    // The line's head is delivered and a parallel attempt fails: the line's next delivery
    // is claimed, while the endpoint, failing now, already holds its one lease.
    let retry = CompletionState::Retry { at: t(10) };
    let finished = vec![
        completion(&heads[0], CompletionState::Delivered, t(3)),
        completion(&parallel[1], retry, t(3)),
    ];
    let (applied, next) = complete_and_claim(store, finished, t(3), caps).await;
    assert_eq!(applied, vec![true, true]);
    assert_eq!(next.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![line[1]]);
    assert_eq!(next[0].endpoint_id, fifo.id);

    // With nothing to record it is a plain claim.
    let (applied, nothing) = complete_and_claim(store, Vec::new(), t(3), caps).await;
    assert!(applied.is_empty() && nothing.is_empty());
}

/// An endpoint's own concurrency limit (`EndpointPatch::concurrency`) caps it below the
/// claim's endpoint cap, never above: the cap in effect is the smaller of the two. Other
/// endpoints are not held back by it, and clearing it restores the claim's cap.
pub async fn claims_respect_an_endpoints_own_concurrency<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let own = endpoint(store, org, None, t(0)).await;
    let other = endpoint(store, org, None, t(0)).await;
    let limit = |n: Option<u32>| EndpointPatch { concurrency: Some(n), ..EndpointPatch::default() };
    store.update_endpoint(org, own.id, &limit(Some(2)), t(0)).await.unwrap().unwrap();
    batch(store, org, 8, 0).await;
    let caps = (100, 4);
    let w = WorkerId::new();
    let per_endpoint = |got: &[Delivery]| {
        let own_n = got.iter().filter(|d| d.endpoint_id == own.id).count();
        (own_n, got.len() - own_n)
    };

    let first = claim_capped(store, w, 100, t(1), caps).await;
    assert_eq!(per_endpoint(&first), (2, 4), "its own 2, the claim's 4 for the other");
    assert!(first.iter().all(|d| d.endpoint_id == own.id || d.endpoint_id == other.id));
    assert!(claim_capped(store, w, 100, t(1), caps).await.is_empty());

    // A limit above the claim's cap does not raise it.
    store.update_endpoint(org, own.id, &limit(Some(10)), t(2)).await.unwrap().unwrap();
    let more = claim_capped(store, w, 100, t(2), caps).await;
    assert_eq!(per_endpoint(&more), (2, 0), "up to the claim's 4, no further");

    // A finished delivery frees a place under its own limit; clearing the limit restores
    // the claim's cap.
    store.update_endpoint(org, own.id, &limit(Some(1)), t(3)).await.unwrap().unwrap();
    let own_done: Vec<&Delivery> =
        first.iter().chain(&more).filter(|d| d.endpoint_id == own.id).collect();
    for d in &own_done[..3] {
        assert!(complete(store, completion(d, CompletionState::Delivered, t(3))).await);
    }
    assert!(claim_capped(store, w, 100, t(3), caps).await.is_empty(), "1 in flight, limit 1");
    store.update_endpoint(org, own.id, &limit(None), t(4)).await.unwrap().unwrap();
    let restored = claim_capped(store, w, 100, t(4), caps).await;
    assert_eq!(per_endpoint(&restored), (3, 0), "back to the claim's cap of 4");
}

/// An endpoint with a delivery rate of its own holds at most twice its rate in flight (at
/// least 1), below its concurrency and the claim's cap: its backlog is not claimed only to
/// be put back.
pub async fn claims_hold_a_rate_limited_endpoint_to_twice_its_rate<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let slow = endpoint(store, org, None, t(0)).await;
    let rate = |n: Option<u32>| EndpointPatch { rate_limit: Some(n), ..EndpointPatch::default() };
    store.update_endpoint(org, slow.id, &rate(Some(1)), t(0)).await.unwrap().unwrap();
    batch(store, org, 20, 0).await;
    let (caps, w) = ((100, 16), WorkerId::new());
    assert_eq!(claim_capped(store, w, 100, t(1), caps).await.len(), 2, "twice 1 per second");
    assert!(claim_capped(store, w, 100, t(1), caps).await.is_empty());

    store.update_endpoint(org, slow.id, &rate(Some(3)), t(2)).await.unwrap().unwrap();
    assert_eq!(claim_capped(store, w, 100, t(2), caps).await.len(), 4, "6 in all");
    // A rate above half the claim's cap leaves the claim's cap (and its own concurrency).
    store.update_endpoint(org, slow.id, &rate(Some(100)), t(3)).await.unwrap().unwrap();
    assert_eq!(claim_capped(store, w, 100, t(3), caps).await.len(), 10, "16 in all");
    store.update_endpoint(org, slow.id, &rate(None), t(4)).await.unwrap().unwrap();
    assert!(claim_capped(store, w, 100, t(4), caps).await.is_empty(), "still 16 in flight");
}

/// A FIFO endpoint never has two deliveries in flight, and they complete in event order:
/// a retry holds the line, an expired lease makes the same delivery due again first, and a
/// final failure lets the next one go. A parallel endpoint of the same organization is not
/// held back by the line.
pub async fn fifo_endpoints_deliver_one_at_a_time_in_event_order<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let fifo = endpoint_with(store, org, None, DeliveryOrdering::Fifo, t(0)).await;
    let parallel = endpoint(store, org, None, t(0)).await;
    assert_eq!(fifo.ordering, DeliveryOrdering::Fifo);
    assert_eq!(parallel.ordering, DeliveryOrdering::Parallel);
    let mut order = batch(store, org, 4, 0).await;
    order.extend(batch(store, org, 2, 1).await);
    let w = WorkerId::new();
    let fifo_of = |got: &[Delivery]| -> Vec<Delivery> {
        got.iter().filter(|d| d.endpoint_id == fifo.id).cloned().collect()
    };

    let first = claim(store, w, 100, t(2)).await;
    let heads = fifo_of(&first);
    assert_eq!(first.len() - heads.len(), 6, "every parallel delivery");
    assert_eq!(heads.len(), 1, "one FIFO delivery in flight");
    assert_eq!(heads[0].event_id, order[0]);
    assert!(fifo_of(&claim(store, w, 100, t(2)).await).is_empty());
    for d in first.iter().filter(|d| d.endpoint_id == parallel.id) {
        assert!(complete(store, completion(d, CompletionState::Delivered, t(2))).await);
    }

    // Event 0 is retried at t(10): the line waits for it.
    let retry = CompletionState::Retry { at: t(10) };
    assert!(complete(store, completion(&heads[0], retry, t(3))).await);
    assert!(claim(store, w, 100, t(9)).await.is_empty(), "the retry holds the line");
    let again = claim(store, w, 100, t(10)).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event_id, again[0].attempt), (order[0], 2));

    // Its worker dies: once the lease expires the same delivery is first again.
    let expired = plus(t(10), LEASE);
    assert!(claim(store, w, 100, plus(t(9), LEASE)).await.is_empty(), "lease still live");
    let reclaimed = claim(store, w, 100, expired).await;
    assert_eq!(reclaimed.len(), 1);
    assert_eq!((reclaimed[0].event_id, reclaimed[0].attempt), (order[0], 3));
    assert!(!complete(store, completion(&again[0], CompletionState::Delivered, expired)).await);

    // Event 0 finally fails; then the rest go one by one, in order.
    let mut current = reclaimed.into_iter().next();
    let mut seen = Vec::new();
    let mut state = CompletionState::Failed;
    let mut now = expired;
    while let Some(d) = current {
        seen.push(d.event_id);
        now = plus(now, std::time::Duration::from_secs(1));
        assert!(complete(store, completion(&d, state, now)).await);
        state = CompletionState::Delivered;
        let mut next = claim(store, w, 100, now).await;
        assert!(next.len() <= 1, "at most one FIFO delivery at a time");
        current = next.pop();
    }
    assert_eq!(seen, order, "every event once, in event order");
}

/// Failed deliveries of a FIFO endpoint that `recover` queues again join the end of its
/// line, oldest event first: still one delivery of the endpoint at a time, in that order.
pub async fn recovered_deliveries_join_the_fifo_line<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let fifo = endpoint_with(store, org, None, DeliveryOrdering::Fifo, t(0)).await;
    let events = batch(store, org, 4, 0).await;
    let w = WorkerId::new();
    let one = |got: Vec<Delivery>| -> Delivery {
        assert_eq!(got.len(), 1, "one FIFO delivery at a time: {got:?}");
        got.into_iter().next().unwrap()
    };
    // Events 0 and 1 fail for good; event 2 is in flight when they are recovered.
    for (i, at) in [(0, 1), (1, 2)] {
        let d = one(claim(store, w, 10, t(at)).await);
        assert_eq!(d.event_id, events[i]);
        assert!(complete(store, completion(&d, CompletionState::Failed, t(at))).await);
    }
    let head = one(claim(store, w, 10, t(3)).await);
    assert_eq!(head.event_id, events[2]);
    let query = RecoverQuery { since: t(0), until: None, limit: 10 };
    let recovered = store.recover(org, fifo.id, query, t(4)).await.unwrap().unwrap();
    assert_eq!((recovered.queued, recovered.more), (2, false));
    assert!(claim(store, w, 10, t(4)).await.is_empty(), "the line's head is in flight");

    let mut seen = Vec::new();
    let mut current = head;
    for now in 5..8 {
        assert!(complete(store, completion(&current, CompletionState::Delivered, t(now))).await);
        current = one(claim(store, w, 10, t(now)).await);
        seen.push(current.event_id);
    }
    assert_eq!(seen, vec![events[3], events[0], events[1]], "behind the line, in event order");
}

/// Switching to parallel releases a line at once; switching to FIFO orders what is queued
/// afterwards; both through `set_endpoint_ordering` and through `update_endpoint`. Only the
/// owner may switch.
pub async fn endpoint_ordering_can_be_switched<S: EventStore>(store: &S) {
    let (org, stranger) = (new_org(store).await, new_org(store).await);
    let ep = endpoint(store, org, None, t(0)).await;
    assert!(!store.set_endpoint_ordering(stranger, ep.id, DeliveryOrdering::Fifo).await.unwrap());
    assert!(store.set_endpoint_ordering(org, ep.id, DeliveryOrdering::Fifo).await.unwrap());
    assert_eq!(store.endpoints(org).await.unwrap()[0].ordering, DeliveryOrdering::Fifo);
    let ordered = batch(store, org, 3, 0).await;
    let w = WorkerId::new();
    let head = claim(store, w, 10, t(1)).await;
    assert_eq!(head.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![ordered[0]]);

    assert!(store.set_endpoint_ordering(org, ep.id, DeliveryOrdering::Parallel).await.unwrap());
    assert_eq!(store.endpoints(org).await.unwrap()[0].ordering, DeliveryOrdering::Parallel);
    let rest = claim(store, w, 10, t(1)).await;
    let mut ids: Vec<_> = rest.iter().map(|d| d.event_id).collect();
    ids.sort();
    assert_eq!(ids, ordered[1..].to_vec(), "the line's other deliveries are parallel now");

    // The same through `update_endpoint`, together with another field, and only for the
    // owner. (Nothing of the endpoint is in flight then: a line waits for that.)
    for d in head.iter().chain(&rest) {
        assert!(complete(store, completion(d, CompletionState::Delivered, t(2))).await);
    }
    let fifo = EndpointPatch {
        ordering: Some(DeliveryOrdering::Fifo),
        description: Some(Some("ordered".into())),
        ..EndpointPatch::default()
    };
    assert_eq!(store.update_endpoint(stranger, ep.id, &fifo, t(2)).await.unwrap(), None);
    assert_eq!(
        store.endpoint(org, ep.id).await.unwrap().unwrap().ordering,
        DeliveryOrdering::Parallel
    );
    let up = store.update_endpoint(org, ep.id, &fifo, t(2)).await.unwrap().unwrap();
    assert_eq!(up.endpoint.ordering, DeliveryOrdering::Fifo);
    assert_eq!(up.endpoint.description.as_deref(), Some("ordered"));
    assert_eq!(store.endpoint(org, ep.id).await.unwrap(), Some(up.endpoint));
    let line = batch(store, org, 3, 2).await;
    let head = claim(store, w, 10, t(3)).await;
    assert_eq!(head.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![line[0]]);
    let parallel =
        EndpointPatch { ordering: Some(DeliveryOrdering::Parallel), ..EndpointPatch::default() };
    let up = store.update_endpoint(org, ep.id, &parallel, t(3)).await.unwrap().unwrap();
    assert_eq!(up.endpoint.ordering, DeliveryOrdering::Parallel);
    let rest = claim(store, w, 10, t(3)).await;
    let mut ids: Vec<_> = rest.iter().map(|d| d.event_id).collect();
    ids.sort();
    assert_eq!(ids, line[1..].to_vec(), "patched to parallel: the line is released");
}

/// Four claimers on a FIFO line of 40 deliveries: never two in flight, delivered in order.
pub async fn concurrent_claimers_keep_a_fifo_line<S: EventStore>(store: Arc<S>) {
    let org = new_org(&*store).await;
    endpoint_with(&*store, org, None, DeliveryOrdering::Fifo, t(0)).await;
    let mut order = Vec::new();
    for i in 0..4 {
        order.extend(batch(&*store, org, 10, i).await);
    }
    let in_flight = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, in_flight, seen) = (store.clone(), in_flight.clone(), seen.clone());
            tokio::spawn(async move {
                let owner = WorkerId::new();
                let mut idle = 0;
                while idle < 200 {
                    let got = claim(&*store, owner, 4, t(10)).await;
                    if got.is_empty() {
                        idle += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    idle = 0;
                    assert_eq!(got.len(), 1, "one FIFO delivery per claim");
                    assert_eq!(in_flight.fetch_add(1, Ordering::SeqCst), 0, "two in flight");
                    seen.lock().unwrap().push(got[0].event_id);
                    tokio::task::yield_now().await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let done = completion(&got[0], CompletionState::Delivered, t(11));
                    assert!(complete(&*store, done).await);
                    if seen.lock().unwrap().len() == 40 {
                        return;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), order);
}
