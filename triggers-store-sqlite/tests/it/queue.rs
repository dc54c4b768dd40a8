//! Fan-out, claims, leases, fenced completions, releases, endpoint changes.

use std::time::Duration;

use triggers_core::store::{
    ClaimRequest, Completion, CompletionState, Delivery, DeliveryQueue, EndpointStore, EventLog,
};
use triggers_core::{AttemptRecord, EventStatus, Secret, Timestamp, WorkerId};

use crate::{fresh, insert_one, new_endpoint, new_org, t};

const LEASE: Duration = Duration::from_secs(30);

async fn claim(
    store: &impl DeliveryQueue,
    owner: WorkerId,
    limit: u32,
    now: Timestamp,
) -> Vec<Delivery> {
    store.claim(ClaimRequest::new(owner, limit, LEASE, now)).await.unwrap()
}

fn done(d: &Delivery, state: CompletionState, at: Timestamp) -> Completion {
    Completion {
        delivery_id: d.id,
        lease_owner: d.lease_owner,
        attempt: d.attempt,
        state,
        record: AttemptRecord {
            endpoint_id: d.endpoint_id,
            at,
            status_code: Some(500),
            latency_ms: 12,
            error: Some("boom".into()),
        },
        disable_endpoint: None,
    }
}

#[tokio::test]
async fn fan_out_claim_and_complete_a_full_lifecycle() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    let all = store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    let users = store.create_endpoint(org, &new_endpoint(Some("user.*"), t(0))).await.unwrap();
    store.create_endpoint(org, &new_endpoint(Some("User.*"), t(0))).await.unwrap();
    let a = insert_one(&store, org, "user.created", t(1)).await;
    let b = insert_one(&store, org, "order.paid", t(2)).await;
    assert_eq!(store.queue_depth().await.unwrap(), 3);

    let w = WorkerId::new();
    let got = claim(&store, w, 10, t(5)).await;
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|d| d.attempt == 1 && d.lease_owner == w));
    assert!(got.windows(2).all(|p| p[0].created_at <= p[1].created_at), "earliest due first");
    assert_eq!(store.stats(org).await.unwrap().in_flight, 3);
    assert!(claim(&store, WorkerId::new(), 10, t(6)).await.is_empty(), "leases are live");
    let da = got.iter().find(|d| d.event_id == a && d.endpoint_id == all.id).unwrap();
    let du = got.iter().find(|d| d.event_id == a && d.endpoint_id == users.id).unwrap();
    let db = got.iter().find(|d| d.event_id == b).unwrap();
    assert_eq!(da.payload.get(), r#"{"n":1}"#);
    assert_eq!(da.secrets.len(), 1);

    // One of two deliveries done: the event stays pending until the other is.
    let ok = store.complete(&[done(da, CompletionState::Delivered, t(7))]).await.unwrap();
    assert_eq!(ok, vec![true]);
    assert_eq!(store.event(org, a).await.unwrap().unwrap().event.status, EventStatus::Pending);
    // Failed: the event fails, and the endpoint gets disabled (after
    // its delivery of `a` is done: disabling fails outstanding deliveries).
    let mut fail = done(db, CompletionState::Failed, t(9));
    fail.disable_endpoint = Some("410 Gone".into());
    store.complete(&[fail]).await.unwrap();
    assert_eq!(store.event(org, b).await.unwrap().unwrap().event.status, EventStatus::Failed);
    // Retry: pending again, due later; the endpoint is failing since the attempt.
    let retry = CompletionState::Retry { at: t(100) };
    assert_eq!(store.complete(&[done(du, retry, t(8))]).await.unwrap(), vec![true]);
    assert!(claim(&store, w, 10, t(99)).await.is_empty());
    let again = claim(&store, w, 10, t(100)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].endpoint_failing_since, Some(t(8)));
    // A stale completion (old attempt) changes nothing.
    assert_eq!(
        store.complete(&[done(du, CompletionState::Delivered, t(101))]).await.unwrap(),
        vec![false]
    );
    store.complete(&[done(&again[0], CompletionState::Delivered, t(102))]).await.unwrap();
    let detail = store.event(org, a).await.unwrap().unwrap();
    assert_eq!(detail.event.status, EventStatus::Delivered);
    assert_eq!(detail.event.delivered_at, Some(t(102)));
    assert_eq!(detail.attempts.iter().map(|r| r.at).collect::<Vec<_>>(), vec![t(7), t(8), t(102)]);
    assert_eq!(detail.attempts[0].status_code, Some(500));

    // A disabled endpoint gets no new deliveries.
    let eps = store.endpoints(org).await.unwrap();
    let all_now = eps.iter().find(|e| e.id == all.id).unwrap();
    assert!(!all_now.enabled);
    assert_eq!(all_now.disabled_reason.as_deref(), Some("410 Gone"));
    insert_one(&store, org, "order.paid", t(200)).await;
    assert!(claim(&store, w, 10, t(201)).await.is_empty());
    assert_eq!(store.queue_depth().await.unwrap(), 0, "a disabled endpoint gets no new deliveries");
    // ... but a failed delivery of it, which fails the new event. Pending: the announcement
    // of the disable (`triggers.endpoint.disabled`, in the inbox; no delivery to `all`).
    let s = store.stats(org).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.failed, s.in_flight), (1, 1, 2, 0));
}

#[tokio::test]
async fn release_extend_and_expired_leases() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    insert_one(&store, org, "t", t(0)).await;
    let (w1, w2) = (WorkerId::new(), WorkerId::new());
    let d = claim(&store, w1, 1, t(1)).await.remove(0);
    assert!(!store.release(d.id, w2, d.attempt, None).await.unwrap(), "wrong owner");
    assert!(store.release(d.id, w1, d.attempt, None).await.unwrap());
    let d = claim(&store, w2, 1, t(1)).await.remove(0);
    assert_eq!(d.attempt, 1, "release restored the attempt number");
    assert!(store.extend_lease(d.id, w2, 1, t(100)).await.unwrap());
    assert!(claim(&store, w1, 1, t(50)).await.is_empty(), "the extended lease is live");
    let stolen = claim(&store, w1, 1, t(100)).await.remove(0);
    assert_eq!((stolen.attempt, stolen.lease_owner), (2, w1));
    assert!(!store.extend_lease(d.id, w2, 1, t(200)).await.unwrap());
    assert!(!store.release(d.id, w2, 1, None).await.unwrap());
    assert_eq!(
        store.complete(&[done(&d, CompletionState::Delivered, t(101))]).await.unwrap(),
        vec![false]
    );
}

#[tokio::test]
async fn delete_and_rotate_endpoints() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    let ep = store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    let other = new_org(&store).await;
    let fresh_secret = Secret::generate();
    assert!(!store.rotate_endpoint_secret(other, ep.id, &fresh_secret, t(60)).await.unwrap());
    assert!(store.rotate_endpoint_secret(org, ep.id, &fresh_secret, t(60)).await.unwrap());
    insert_one(&store, org, "t", t(0)).await;
    insert_one(&store, org, "t", t(0)).await;
    let w = WorkerId::new();
    let d = claim(&store, w, 1, t(10)).await.remove(0);
    assert_eq!(d.secrets, vec![fresh_secret.clone(), ep.secret.clone()]);
    let late = claim(&store, w, 1, t(60)).await.remove(0);
    assert_eq!(late.secrets, vec![fresh_secret], "the old secret expired");

    assert!(!store.delete_endpoint(other, ep.id).await.unwrap());
    assert!(store.delete_endpoint(org, ep.id).await.unwrap());
    assert!(store.endpoints(org).await.unwrap().is_empty());
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert_eq!(
        store.complete(&[done(&d, CompletionState::Delivered, t(11))]).await.unwrap(),
        vec![false]
    );
    assert_eq!(store.stats(org).await.unwrap().pending, 2, "events keep their status");
}

/// Disabling, deleting or switching to parallel an endpoint with a large backlog changes it
/// in writes of `BACKLOG_BATCH` deliveries each, and another organization's writes run
/// between them: while one call changes 30 000 deliveries, a stream of another
/// organization's single inserts keeps completing. (In one write, the whole change held the
/// writer: an insert queued behind it waited for all of it; three finished meanwhile
/// against 30 or so now.)
#[tokio::test]
async fn endpoint_wide_changes_let_other_organizations_write_between_their_batches() {
    use triggers_core::store::{EndpointPatch, BACKLOG_BATCH};
    use triggers_core::DeliveryOrdering;
    for change in ["disable", "delete", "switch to parallel"] {
        let (_dir, store) = fresh();
        let (busy, other) = (new_org(&store).await, new_org(&store).await);
        let ep = store.create_endpoint(busy, &new_endpoint(None, t(0))).await.unwrap();
        if change == "switch to parallel" {
            let fifo = DeliveryOrdering::Fifo;
            assert!(store.set_endpoint_ordering(busy, ep.id, fifo).await.unwrap());
        }
        let n = 30 * BACKLOG_BATCH;
        for _ in 0..n / 1000 {
            let records =
                (0..1000).map(|_| crate::record("t", r#"{"n":1}"#, None, t(1))).collect::<Vec<_>>();
            store.insert_events(busy, records, crate::WINDOW, t(1)).await.unwrap();
        }
        assert_eq!(store.queue_depth().await.unwrap(), n as u64);

        let running = {
            let store = store.clone();
            tokio::spawn(async move {
                match change {
                    "disable" => {
                        let patch =
                            EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
                        let up = store.update_endpoint(busy, ep.id, &patch, t(2)).await;
                        assert_eq!(up.unwrap().unwrap().failed, n as u64);
                    }
                    "delete" => assert!(store.delete_endpoint(busy, ep.id).await.unwrap()),
                    _ => {
                        let parallel = DeliveryOrdering::Parallel;
                        assert!(store.set_endpoint_ordering(busy, ep.id, parallel).await.unwrap());
                    }
                }
            })
        };
        let mut finished_meanwhile = 0;
        while !running.is_finished() {
            insert_one(&store, other, "t", t(2)).await;
            finished_meanwhile += 1;
        }
        running.await.unwrap();
        let left = if change == "switch to parallel" { n as u64 } else { 0 };
        assert_eq!(store.queue_depth().await.unwrap(), left, "{change}");
        assert!(
            finished_meanwhile >= 10,
            "{change}: only {finished_meanwhile} inserts of another organization finished meanwhile"
        );
    }
}
