//! Claims, leases, fencing, releases and lease extension.

use std::sync::Arc;

use crate::domain::event::EventStatus;
use crate::domain::{DeliveryId, WorkerId};
use crate::store::{CompletionState, EventStore, QueueStats};

use super::support::{
    assert_unique, claim, claim_one, complete, completion, detail, endpoint, insert, insert_one,
    just_before, new_org, plus, record, t, LEASE,
};

/// A claim returns only due deliveries, earliest due first, at most `limit`, each leased to
/// the claimer until `now + lease` with attempt 1 and every field of its event and endpoint.
pub async fn claims_take_due_deliveries_earliest_first<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    let e30 = insert_one(store, org, "due.30", t(30)).await;
    let mut rec = record("due.10", t(10));
    rec.payload =
        serde_json::value::RawValue::from_string(r#"{ "exact" : "text" }"#.into()).unwrap();
    let e10 = rec.id;
    insert(store, org, vec![rec], t(10)).await;
    let e20 = insert_one(store, org, "due.20", t(20)).await;
    let w = WorkerId::new();

    assert!(claim(store, w, 10, t(5)).await.is_empty(), "nothing is due yet");
    assert!(claim(store, w, 0, t(25)).await.is_empty(), "limit 0 claims nothing");
    let d = claim_one(store, w, t(25)).await;
    assert_eq!((d.event_id, d.attempt, d.lease_owner), (e10, 1, w));
    assert_eq!(d.lease_expires_at, plus(t(25), LEASE));
    assert_eq!((d.organization_id, d.event_type.as_str()), (org, "due.10"));
    assert_eq!(d.payload.get(), r#"{ "exact" : "text" }"#);
    assert_eq!(d.created_at, t(10));
    assert_eq!((d.endpoint_id, &d.url), (ep.id, &ep.url));
    assert_eq!((d.secrets.clone(), d.endpoint_failing_since), (vec![ep.secret.clone()], None));

    let next = claim(store, w, 10, t(25)).await;
    assert_eq!(next.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![e20]);
    let last = claim(store, w, 10, t(30)).await;
    assert_eq!(last.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![e30]);
    assert!(claim(store, w, 10, t(30)).await.is_empty(), "live leases are not claimed");
    // Later, every lease has expired: all three again, the latest-expiring last.
    let all = claim(store, w, 10, t(1000)).await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].event_id, e30);
}

/// Four concurrent claimers draining 200 deliveries receive each delivery exactly once.
pub async fn concurrent_claimers_never_share_a_delivery<S: EventStore>(store: Arc<S>) {
    let org = new_org(&*store).await;
    endpoint(&*store, org, None, t(0)).await;
    endpoint(&*store, org, None, t(0)).await;
    for _ in 0..2 {
        let records = (0..50).map(|i| record(&format!("bulk.{i}"), t(0))).collect();
        insert(&*store, org, records, t(0)).await;
    }
    assert_eq!(store.queue_depth().await.unwrap(), 200);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = WorkerId::new();
                let mut got = Vec::new();
                loop {
                    let batch = claim(&*store, owner, 7, t(1)).await;
                    if batch.is_empty() {
                        return got;
                    }
                    for d in batch {
                        assert_eq!((d.lease_owner, d.attempt), (owner, 1));
                        got.push(d.id);
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<DeliveryId> = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_unique(&all);
    assert_eq!(all.len(), 200);
    assert!(claim(&*store, WorkerId::new(), 10, t(1)).await.is_empty());
    assert_eq!(store.stats(org).await.unwrap().in_flight, 200);
}

/// A lease that ran out (`lease_expires_at <= now`) is claimed again with the next attempt
/// number by the new owner; the old owner's completion, release and heartbeat are stale.
pub async fn expired_leases_are_reclaimed_with_the_next_attempt<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "lease", t(0)).await;
    let (w1, w2) = (WorkerId::new(), WorkerId::new());
    let first = claim_one(store, w1, t(0)).await;
    assert_eq!((first.attempt, first.lease_expires_at), (1, t(30)));
    assert!(claim(store, w2, 10, just_before(t(30))).await.is_empty());

    let second = claim_one(store, w2, t(30)).await;
    assert_eq!(second.id, first.id);
    assert_eq!((second.attempt, second.lease_owner), (2, w2));
    assert_eq!(second.lease_expires_at, t(60));
    assert_eq!(store.stats(org).await.unwrap().in_flight, 1);

    assert!(!complete(store, completion(&first, CompletionState::Delivered, t(31))).await);
    assert!(!store.release(first.id, w1, 1, None).await.unwrap());
    assert!(!store.extend_lease(first.id, w1, 1, t(500)).await.unwrap());
    let d = detail(store, org, id).await;
    assert_eq!((d.event.status, d.attempts.len()), (EventStatus::Pending, 0));

    assert!(complete(store, completion(&second, CompletionState::Delivered, t(32))).await);
    assert_eq!(detail(store, org, id).await.event.status, EventStatus::Delivered);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 0);
}

/// A completion that does not match the delivery's current owner and attempt changes
/// nothing (no attempt record, no status, no endpoint change) and yields `false`; flags come
/// back one per completion, in order.
pub async fn stale_completions_change_nothing<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "fenced", t(0)).await;
    let d = claim_one(store, WorkerId::new(), t(0)).await;

    let mut wrong_owner = completion(&d, CompletionState::Failed, t(1));
    wrong_owner.lease_owner = WorkerId::new();
    wrong_owner.disable_endpoint = Some("stale".into());
    let mut wrong_attempt = completion(&d, CompletionState::Failed, t(1));
    wrong_attempt.attempt = 2;
    wrong_attempt.disable_endpoint = Some("stale".into());
    let mut unknown = completion(&d, CompletionState::Delivered, t(1));
    unknown.delivery_id = DeliveryId::new();
    let flags = store.complete(&[wrong_owner, wrong_attempt, unknown]).await.unwrap();
    assert_eq!(flags, vec![false, false, false]);
    let detail_now = detail(store, org, id).await;
    assert_eq!((detail_now.event.status, detail_now.attempts.len()), (EventStatus::Pending, 0));
    assert_eq!(store.endpoints(org).await.unwrap(), vec![ep]);
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 1);

    let ok = completion(&d, CompletionState::Retry { at: t(5) }, t(2));
    let flags = store.complete(&[ok.clone(), ok]).await.unwrap();
    assert_eq!(flags, vec![true, false], "the repeat is stale: the delivery is no longer leased");
    assert_eq!(detail(store, org, id).await.attempts.len(), 1);
    // The stale completions did not mark the endpoint failing before the real one did.
    let again = claim_one(store, WorkerId::new(), t(5)).await;
    assert_eq!(again.endpoint_failing_since, Some(t(2)));
}

/// `release` gives a delivery back unattempted: due when it was due before the claim (or at
/// the given time: a deferral), attempt number restored, no attempt record; it is fenced like
/// a completion.
pub async fn released_deliveries_are_due_again_with_their_attempt<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    let id = insert_one(store, org, "release", t(0)).await;
    let w1 = WorkerId::new();
    let d = claim_one(store, w1, t(0)).await;
    assert!(!store.release(d.id, WorkerId::new(), 1, None).await.unwrap(), "wrong owner");
    assert!(!store.release(d.id, w1, 2, None).await.unwrap(), "wrong attempt");
    assert!(!store.release(DeliveryId::new(), w1, 1, None).await.unwrap(), "unknown delivery");
    assert!(store.release(d.id, w1, 1, None).await.unwrap());
    assert!(!store.release(d.id, w1, 1, None).await.unwrap(), "already released");
    assert_eq!(store.stats(org).await.unwrap(), QueueStats { pending: 1, ..Default::default() });
    assert_eq!(detail(store, org, id).await.attempts, vec![]);

    let w2 = WorkerId::new();
    let again = claim_one(store, w2, t(0)).await;
    assert_eq!((again.id, again.attempt, again.lease_owner), (d.id, 1, w2));
    assert!(complete(store, completion(&again, CompletionState::Retry { at: t(100) }, t(1))).await);
    let retry = claim_one(store, w2, t(100)).await;
    assert_eq!(retry.attempt, 2);
    assert!(store.release(retry.id, w2, 2, None).await.unwrap());
    let deferred = claim_one(store, w1, t(100)).await;
    assert_eq!(deferred.attempt, 2);

    // A deferral: due again at the given time, still without using up the attempt.
    assert!(store.release(deferred.id, w1, 2, Some(t(160))).await.unwrap());
    assert_eq!(store.stats(org).await.unwrap().in_flight, 0);
    assert!(claim(store, w2, 10, just_before(t(160))).await.is_empty(), "deferred until t(160)");
    let after = claim_one(store, w2, t(160)).await;
    assert_eq!((after.id, after.attempt), (d.id, 2));
    assert_eq!(detail(store, org, id).await.attempts.len(), 1, "only the real attempt is recorded");
}

/// `extend_lease` moves a live lease's expiry, fenced like a completion: stale calls change
/// nothing.
pub async fn lease_extension_is_fenced<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    insert_one(store, org, "heartbeat", t(0)).await;
    let (w1, w2) = (WorkerId::new(), WorkerId::new());
    let d = claim_one(store, w1, t(0)).await;
    assert!(!store.extend_lease(d.id, w2, 1, t(500)).await.unwrap(), "wrong owner");
    assert!(!store.extend_lease(d.id, w1, 2, t(500)).await.unwrap(), "wrong attempt");
    assert!(!store.extend_lease(DeliveryId::new(), w1, 1, t(500)).await.unwrap());
    // The stale calls did not extend anything: the lease still ends at t(30).
    let taken = claim_one(store, w2, t(30)).await;
    assert_eq!((taken.id, taken.attempt), (d.id, 2));
    assert!(!store.extend_lease(d.id, w1, 1, t(500)).await.unwrap(), "old owner");

    assert!(store.extend_lease(d.id, w2, 2, t(120)).await.unwrap());
    assert!(claim(store, w1, 10, t(60)).await.is_empty(), "extended past the old expiry");
    assert!(claim(store, w1, 10, just_before(t(120))).await.is_empty());
    let third = claim_one(store, w1, t(120)).await;
    assert_eq!((third.id, third.attempt, third.lease_owner), (d.id, 3, w1));
}

/// `reclaim_leases` ends exactly the live leases of one owner: those deliveries are due at
/// once and claimed with the next attempt (also by the same owner, as after a restart); the
/// old attempt's completion is stale; other owners' leases and expired leases are untouched.
pub async fn reclaimed_leases_are_due_at_once<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, None, t(0)).await;
    for i in 0..3 {
        insert_one(store, org, &format!("reclaim.{i}"), t(0)).await;
    }
    let (node, other) = (WorkerId::new(), WorkerId::new());
    let mine = claim(store, node, 2, t(0)).await;
    let theirs = claim_one(store, other, t(0)).await;
    assert_eq!(mine.len(), 2);

    assert_eq!(store.reclaim_leases(WorkerId::new(), t(1)).await.unwrap(), 0, "no leases");
    assert_eq!(store.reclaim_leases(node, t(1)).await.unwrap(), 2);
    assert_eq!(store.reclaim_leases(node, t(1)).await.unwrap(), 0, "already ended");
    assert_eq!(store.stats(org).await.unwrap().in_flight, 3, "still in flight until claimed");

    // The same owner (a restarted node) claims them again at once, long before the lease.
    let again = claim(store, node, 10, t(1)).await;
    let mut expected: Vec<_> = mine.iter().map(|d| d.id).collect();
    let mut got: Vec<_> = again.iter().map(|d| d.id).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "only the reclaimed deliveries are due; the other lease is live");
    assert!(again.iter().all(|d| d.attempt == 2 && d.lease_owner == node));
    assert_eq!(again[0].lease_expires_at, plus(t(1), LEASE));

    assert!(!complete(store, completion(&mine[0], CompletionState::Delivered, t(2))).await);
    let fresh = again.iter().find(|d| d.id == mine[0].id).unwrap();
    assert!(complete(store, completion(fresh, CompletionState::Delivered, t(2))).await);
    assert!(complete(store, completion(&theirs, CompletionState::Delivered, t(2))).await);

    // An expired lease is not counted again.
    let late = claim_one(store, node, t(100)).await;
    assert_eq!(late.id, mine[1].id);
    assert_eq!(store.reclaim_leases(node, plus(t(100), LEASE)).await.unwrap(), 0);
}
