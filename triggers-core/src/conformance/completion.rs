//! What applied completions do to deliveries, events and endpoints; replay; queue depth.

use crate::domain::event::EventStatus;
use crate::domain::WorkerId;
use crate::store::{CompletionState, EventStore, QueueStats};

use super::support::{
    claim, claim_one, complete, completion, detail, endpoint, insert_one, just_before, list_all,
    new_org, t,
};

/// `Delivered` finishes a delivery; the event becomes `delivered` (at the last completion's
/// time) only when every one of its deliveries is; every attempt is recorded in order.
pub async fn events_are_delivered_when_every_delivery_is<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let e1 = endpoint(store, org, None, t(0)).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "fan", t(0)).await;
    let w = WorkerId::new();
    let claimed = claim(store, w, 10, t(0)).await;
    assert_eq!(claimed.len(), 2);
    let (d1, d2) = match claimed[0].endpoint_id == e1.id {
        true => (&claimed[0], &claimed[1]),
        false => (&claimed[1], &claimed[0]),
    };

    let r1 = completion(d1, CompletionState::Retry { at: t(10) }, t(1));
    assert!(complete(store, r1.clone()).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Pending);
    let d1b = claim_one(store, w, t(10)).await;
    assert_eq!((d1b.id, d1b.attempt), (d1.id, 2));
    let r2 = completion(&d1b, CompletionState::Delivered, t(11));
    assert!(complete(store, r2.clone()).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Pending, "d2 is open");

    let r3 = completion(d2, CompletionState::Delivered, t(12));
    assert!(complete(store, r3.clone()).await);
    let d = detail(store, org, id).await;
    assert_eq!((d.event.status, d.event.delivered_at), (EventStatus::Delivered, Some(t(12))));
    assert_eq!(d.attempts, vec![r1.record, r2.record, r3.record]);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert_eq!(list_all(store, org, EventStatus::Delivered, None).await, vec![id]);
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 0, in_flight: 0, delivered: 1, failed: 0 });
}

/// `Retry { at }` puts the delivery back, not due before `at` and due at `at`, with the next
/// attempt number; the lease is gone.
pub async fn retries_are_due_at_their_time<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "retry", t(0)).await;
    let w = WorkerId::new();
    let d = claim_one(store, w, t(0)).await;
    assert!(complete(store, completion(&d, CompletionState::Retry { at: t(60) }, t(1))).await);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 0);
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    assert!(claim(store, w, 10, just_before(t(60))).await.is_empty());
    let again = claim_one(store, w, t(60)).await;
    assert_eq!((again.id, again.attempt), (d.id, 2));
    let detail_now = detail(store, org, id).await;
    assert_eq!((detail_now.event.status, detail_now.attempts.len()), (EventStatus::Pending, 1));
}

/// `Failed` ends the delivery and makes a pending event `failed`; later completions do not
/// change a failed event, and an ack turns it `delivered`.
pub async fn failed_deliveries_fail_the_event<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "fail", t(0)).await;
    let claimed = claim(store, WorkerId::new(), 10, t(0)).await;
    assert!(complete(store, completion(&claimed[0], CompletionState::Failed, t(1))).await);
    let event = detail(store, org, id).await.event;
    assert_eq!((event.status, event.delivered_at), (EventStatus::Failed, None));
    assert_eq!(list_all(store, org, EventStatus::Failed, None).await, vec![id]);
    assert_eq!(list_all(store, org, EventStatus::Pending, None).await, vec![]);
    assert_eq!(store.queue_depth().await.unwrap(), 1);

    assert!(complete(store, completion(&claimed[1], CompletionState::Delivered, t(2))).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Failed);
    assert!(claim(store, WorkerId::new(), 10, t(1000)).await.is_empty(), "failed is final");
    assert_eq!(detail(store, org, id).await.attempts.len(), 2);

    let ack = store.ack(org, &[id], t(3)).await.unwrap();
    assert_eq!(ack.acknowledged, vec![id]);
    let event = detail(store, org, id).await.event;
    assert_eq!((event.status, event.delivered_at), (EventStatus::Delivered, Some(t(3))));
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 0, in_flight: 0, delivered: 1, failed: 0 });
}

/// Acknowledging an event does not cancel its deliveries, and no later delivery outcome
/// changes its status or `delivered_at`.
pub async fn acknowledged_events_keep_their_status<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let failing = insert_one(store, org, "a", t(0)).await;
    let succeeding = insert_one(store, org, "b", t(0)).await;
    store.ack(org, &[failing, succeeding], t(5)).await.unwrap();
    let claimed = claim(store, WorkerId::new(), 10, t(6)).await;
    assert_eq!(claimed.len(), 2, "acked events' deliveries are still made");
    for d in &claimed {
        let state = match d.event_id == failing {
            true => CompletionState::Failed,
            false => CompletionState::Delivered,
        };
        assert!(complete(store, completion(d, state, t(9))).await);
    }
    for id in [failing, succeeding] {
        let d = detail(store, org, id).await;
        assert_eq!((d.event.status, d.event.delivered_at), (EventStatus::Delivered, Some(t(5))));
        assert_eq!(d.attempts.len(), 1);
    }
}

/// `Retry` and `Failed` mark the endpoint failing since the first such attempt's time;
/// `Delivered` clears it. Claims report it in `endpoint_failing_since`.
pub async fn endpoint_failure_time_is_tracked<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    insert_one(store, org, "one", t(0)).await;
    let w = WorkerId::new();
    let d = claim_one(store, w, t(0)).await;
    assert_eq!(d.endpoint_failing_since, None);
    assert!(complete(store, completion(&d, CompletionState::Retry { at: t(10) }, t(2))).await);
    let d = claim_one(store, w, t(10)).await;
    assert_eq!(d.endpoint_failing_since, Some(t(2)));
    assert!(complete(store, completion(&d, CompletionState::Retry { at: t(20) }, t(12))).await);
    let d = claim_one(store, w, t(20)).await;
    assert_eq!(d.endpoint_failing_since, Some(t(2)), "the first failure time stays");
    assert!(complete(store, completion(&d, CompletionState::Delivered, t(21))).await);

    insert_one(store, org, "two", t(30)).await;
    let d = claim_one(store, w, t(30)).await;
    assert_eq!(d.endpoint_failing_since, None, "a success clears it");
    assert!(complete(store, completion(&d, CompletionState::Failed, t(31))).await);
    insert_one(store, org, "three", t(40)).await;
    let d = claim_one(store, w, t(40)).await;
    assert_eq!(d.endpoint_failing_since, Some(t(31)), "Failed marks it too");
}

/// A `Retry` completion with `disable_endpoint` disables the endpoint: the retried delivery
/// is outstanding, so it fails (and its event) and leaves the queue; new events get a failed
/// delivery of it instead of a queued one.
pub async fn completions_can_disable_an_endpoint<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let sick = endpoint(store, org, None, t(0)).await;
    let healthy = endpoint(store, org, None, t(0)).await;
    let first = insert_one(store, org, "a", t(0)).await;
    let w = WorkerId::new();
    let claimed = claim(store, w, 10, t(0)).await;
    let to_sick = claimed.iter().find(|d| d.endpoint_id == sick.id).unwrap();
    let mut c = completion(to_sick, CompletionState::Retry { at: t(5) }, t(1));
    c.disable_endpoint = Some("failing for too long".into());
    assert!(complete(store, c).await);
    let eps = store.endpoints(org).await.unwrap();
    let find = |id| eps.iter().find(|e| e.id == id).unwrap();
    assert!(!find(sick.id).enabled);
    assert_eq!(find(sick.id).disabled_reason.as_deref(), Some("failing for too long"));
    assert_eq!(find(healthy.id), &healthy);

    // The retried delivery was outstanding: disabling failed it, and so its event. Left:
    // the healthy endpoint's delivery of it, and of the disable's announcement.
    assert_eq!(store.queue_depth().await.unwrap(), 2, "only the healthy deliveries are left");
    assert_eq!(detail(store, org, first).await.event.status, EventStatus::Failed);
    assert_eq!(detail(store, org, first).await.attempts.len(), 1);

    let second = insert_one(store, org, "b", t(2)).await;
    let later = claim(store, w, 10, t(100)).await;
    assert!(later.iter().all(|d| d.endpoint_id == healthy.id), "a disabled endpoint was claimed");
    let announced = later.iter().find(|d| d.event_type == "triggers.endpoint.disabled");
    let mut events: Vec<_> = later.iter().map(|d| d.event_id).collect();
    events.sort();
    let mut expected = vec![first, second, announced.expect("the announcement").event_id];
    expected.sort();
    assert_eq!(events, expected);
    assert_eq!(detail(store, org, second).await.event.status, EventStatus::Failed);
}

/// Replay cancels outstanding deliveries (an in-flight one's completion becomes stale),
/// queues fresh ones (attempt 1 on claim) per matching enabled endpoint, keeps the attempt
/// history, and the event is delivered once the fresh deliveries are.
pub async fn replay_supersedes_outstanding_deliveries<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "replay", t(0)).await;
    let old = claim(store, WorkerId::new(), 10, t(0)).await;
    assert_eq!(old.len(), 2);
    let failed = completion(&old[0], CompletionState::Failed, t(1));
    assert!(complete(store, failed.clone()).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Failed);

    assert_eq!(store.replay(org, id, t(5)).await.unwrap(), Some(EventStatus::Pending));
    let d = detail(store, org, id).await;
    assert_eq!((d.event.status, d.event.delivered_at), (EventStatus::Pending, None));
    assert_eq!(d.attempts, vec![failed.record.clone()], "history is kept");
    // Stale, but the attempt was really made: it is recorded, and changes nothing else.
    let superseded = completion(&old[1], CompletionState::Delivered, t(6));
    assert!(!complete(store, superseded.clone()).await);
    let d = detail(store, org, id).await;
    assert_eq!(d.attempts, vec![failed.record.clone(), superseded.record.clone()]);
    assert_eq!(d.event.status, EventStatus::Pending);
    assert_eq!(store.queue_depth().await.unwrap(), 2);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 0);

    let fresh = claim(store, WorkerId::new(), 10, t(5)).await;
    assert_eq!(fresh.len(), 2);
    let mut endpoints = Vec::new();
    for d in &fresh {
        assert!(old.iter().all(|o| o.id != d.id), "replay queues fresh deliveries");
        assert_eq!((d.event_id, d.attempt), (id, 1));
        endpoints.push(d.endpoint_id);
    }
    let mut old_endpoints: Vec<_> = old.iter().map(|d| d.endpoint_id).collect();
    endpoints.sort();
    old_endpoints.sort();
    assert_eq!(endpoints, old_endpoints);
    assert!(complete(store, completion(&fresh[0], CompletionState::Delivered, t(7))).await);
    assert!(complete(store, completion(&fresh[1], CompletionState::Delivered, t(8))).await);
    let d = detail(store, org, id).await;
    assert_eq!((d.event.status, d.event.delivered_at), (EventStatus::Delivered, Some(t(8))));
    assert_eq!(d.attempts.len(), 4);

    // A delivered event can be replayed too.
    assert_eq!(store.replay(org, id, t(9)).await.unwrap(), Some(EventStatus::Pending));
    assert_eq!(claim(store, WorkerId::new(), 10, t(9)).await.len(), 2);
}

/// An event's only delivery, replayed while in flight: the old completion is stale and does
/// not mark the event delivered, whatever the store knew at claim time; the fresh delivery
/// decides. And a delivery completed before a replay leaves the replay's fresh one pending.
/// (Stores may take a shortcut for an event's only delivery; this is what it must survive.)
pub async fn replay_of_a_single_delivery_supersedes_it<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "single", t(0)).await;
    let old = claim(store, WorkerId::new(), 10, t(0)).await;
    assert_eq!(old.len(), 1);
    assert_eq!(store.replay(org, id, t(1)).await.unwrap(), Some(EventStatus::Pending));
    assert!(!complete(store, completion(&old[0], CompletionState::Delivered, t(2))).await);
    let d = detail(store, org, id).await;
    // The superseded attempt is in the history; the status is the fresh delivery's to decide.
    assert_eq!((d.event.status, d.attempts.len()), (EventStatus::Pending, 1));

    let fresh = claim(store, WorkerId::new(), 10, t(1)).await;
    assert_eq!(fresh.len(), 1);
    assert_ne!(fresh[0].id, old[0].id);
    assert!(complete(store, completion(&fresh[0], CompletionState::Delivered, t(3))).await);
    let d = detail(store, org, id).await;
    assert_eq!((d.event.status, d.event.delivered_at), (EventStatus::Delivered, Some(t(3))));

    // Replayed after its delivery: pending again, and stays so until the fresh one is done.
    assert_eq!(store.replay(org, id, t(4)).await.unwrap(), Some(EventStatus::Pending));
    let again = claim(store, WorkerId::new(), 10, t(4)).await;
    assert_eq!(again.len(), 1);
    assert!(!complete(store, completion(&fresh[0], CompletionState::Delivered, t(5))).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Pending);
    assert!(complete(store, completion(&again[0], CompletionState::Delivered, t(6))).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Delivered);
}

/// The queue depth counts outstanding (pending and in-flight) deliveries of every
/// organization.
pub async fn queue_depth_counts_outstanding_deliveries<S: EventStore>(store: &S) {
    assert_eq!(store.queue_depth().await.unwrap(), 0, "the factory must give an empty store");
    let (a, b) = (new_org(store).await, new_org(store).await);
    endpoint(store, a, None, t(0)).await;
    endpoint(store, a, None, t(0)).await;
    endpoint(store, b, None, t(0)).await;
    insert_one(store, a, "x", t(0)).await;
    insert_one(store, a, "x", t(0)).await;
    for _ in 0..3 {
        insert_one(store, b, "y", t(0)).await;
    }
    assert_eq!(store.queue_depth().await.unwrap(), 7);
    let claimed = claim(store, WorkerId::new(), 3, t(0)).await;
    assert_eq!(store.queue_depth().await.unwrap(), 7, "in-flight deliveries count");
    assert!(complete(store, completion(&claimed[0], CompletionState::Delivered, t(1))).await);
    assert_eq!(store.queue_depth().await.unwrap(), 6);
    let retry = CompletionState::Retry { at: t(10) };
    assert!(complete(store, completion(&claimed[1], retry, t(1))).await);
    assert_eq!(store.queue_depth().await.unwrap(), 6);
    assert!(complete(store, completion(&claimed[2], CompletionState::Failed, t(1))).await);
    assert_eq!(store.queue_depth().await.unwrap(), 5);
}
