//! Endpoints: creation, listing, deletion, secret rotation, fan-out and disabling.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::event::EventStatus;
use crate::domain::webhook::{DeliveryOrdering, Endpoint, Secret};
use crate::domain::{EndpointId, WorkerId};
use crate::store::{CompletionState, EventStore, InsertOutcome, NewEndpoint};

use super::support::{
    claim, claim_one, complete, completion, detail, endpoint, glob, insert, insert_one, new_org,
    record, status, t,
};

/// Endpoints are stored exactly (enabled, no reason), listed oldest first per organization,
/// and deleted only by their own organization; foreign and unknown ids answer `false`.
pub async fn endpoints_are_created_listed_and_deleted<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    let new = NewEndpoint {
        id: EndpointId::new(),
        url: "https://hooks.example.test/a?x=1&y=é".into(),
        event_type_filter: Some(glob("user_*.created")),
        secret: Secret::generate(),
        created_at: t(5),
        ordering: DeliveryOrdering::Fifo,
    };
    let first = store.create_endpoint(org, &new).await.unwrap();
    let expected = Endpoint {
        id: new.id,
        organization_id: org,
        url: new.url.clone(),
        event_type_filter: new.event_type_filter.clone(),
        secret: new.secret.clone(),
        enabled: true,
        disabled_reason: None,
        created_at: t(5),
        description: None,
        headers: Vec::new(),
        rate_limit: None,
        concurrency: None,
        ordering: DeliveryOrdering::Fifo,
    };
    assert_eq!(first, expected);
    let second = endpoint(store, org, None, t(6)).await;
    let theirs = endpoint(store, other, None, t(7)).await;
    assert_eq!(store.endpoints(org).await.unwrap(), vec![first.clone(), second.clone()]);
    assert_eq!(store.endpoints(other).await.unwrap(), vec![theirs.clone()]);
    assert_eq!(store.endpoints(new_org(store).await).await.unwrap(), vec![]);

    assert!(!store.delete_endpoint(other, first.id).await.unwrap(), "foreign delete");
    let s = Secret::generate();
    assert!(!store.rotate_endpoint_secret(other, first.id, &s, t(100)).await.unwrap());
    assert_eq!(store.endpoints(org).await.unwrap(), vec![first.clone(), second.clone()]);

    assert!(store.delete_endpoint(org, first.id).await.unwrap());
    assert_eq!(store.endpoints(org).await.unwrap(), vec![second]);
    assert!(!store.delete_endpoint(org, first.id).await.unwrap());
    assert!(!store.delete_endpoint(org, EndpointId::new()).await.unwrap());
    assert!(!store.rotate_endpoint_secret(org, EndpointId::new(), &s, t(9)).await.unwrap());
    assert_eq!(store.endpoints(other).await.unwrap(), vec![theirs]);
}

/// After a rotation the new secret is current and signs first; the previous one is offered
/// second while `now < previous_valid_until`; a second rotation forgets the oldest secret.
pub async fn rotated_secrets_sign_during_the_grace_period<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    let s1 = ep.secret.clone();
    insert_one(store, org, "rotate.me", t(0)).await;
    let w = WorkerId::new();
    let secrets_at = |now| async move {
        let d = claim_one(store, w, now).await;
        assert!(store.release(d.id, d.lease_owner, d.attempt, None).await.unwrap());
        d.secrets
    };
    assert_eq!(secrets_at(t(0)).await, vec![s1.clone()]);

    let s2 = Secret::generate();
    assert!(store.rotate_endpoint_secret(org, ep.id, &s2, t(60)).await.unwrap());
    assert_eq!(store.endpoints(org).await.unwrap()[0].secret, s2);
    assert_eq!(secrets_at(t(10)).await, vec![s2.clone(), s1.clone()]);
    assert_eq!(secrets_at(super::support::just_before(t(60))).await, vec![s2.clone(), s1]);
    assert_eq!(secrets_at(t(60)).await, vec![s2.clone()], "grace period is over");

    let s3 = Secret::generate();
    assert!(store.rotate_endpoint_secret(org, ep.id, &s3, t(200)).await.unwrap());
    assert_eq!(secrets_at(t(100)).await, vec![s3.clone(), s2], "only one previous secret");
    assert_eq!(store.endpoints(org).await.unwrap()[0].secret, s3);
}

/// Each inserted event gets one delivery per enabled endpoint whose filter matches its type
/// (no filter matches all), due at once, with the endpoint's URL.
pub async fn events_fan_out_to_matching_endpoints<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let all = endpoint(store, org, None, t(0)).await;
    let users = endpoint(store, org, Some("user.*"), t(1)).await;
    let orders = endpoint(store, org, Some("order.*"), t(2)).await;
    let records =
        vec![record("user.created", t(3)), record("order.paid", t(3)), record("misc", t(3))];
    let ids: Vec<_> = records.iter().map(|r| r.id).collect();
    let outcomes = insert(store, org, records, t(3)).await;
    let counts: Vec<u32> = outcomes
        .iter()
        .map(|o| match o {
            InsertOutcome::Inserted { deliveries, .. } => *deliveries,
            InsertOutcome::Duplicate(_) => panic!("not a duplicate"),
        })
        .collect();
    assert_eq!(counts, vec![2, 2, 1]);
    assert_eq!(store.queue_depth().await.unwrap(), 5);

    let claimed = claim(store, WorkerId::new(), 100, t(3)).await;
    let mut got: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
    for d in &claimed {
        let ep = [&all, &users, &orders].into_iter().find(|e| e.id == d.endpoint_id).unwrap();
        assert_eq!(d.url, ep.url);
        assert_eq!(d.attempt, 1);
        got.entry(d.event_id).or_default().insert(d.endpoint_id);
    }
    let expected = BTreeMap::from([
        (ids[0], BTreeSet::from([all.id, users.id])),
        (ids[1], BTreeSet::from([all.id, orders.id])),
        (ids[2], BTreeSet::from([all.id])),
    ]);
    assert_eq!(got, expected);
    assert_eq!(claimed.len(), 5);
}

/// A completion with `disable_endpoint` disables the endpoint with that reason; its queued
/// deliveries fail (and their events), and a new event matching it gets a failed delivery
/// and no attempt: nothing of it is claimed.
pub async fn disabled_endpoints_get_no_deliveries<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let keep = endpoint(store, org, None, t(0)).await;
    let gone = endpoint(store, org, Some("probe.*"), t(1)).await;
    let first = insert_one(store, org, "probe.a", t(2)).await;
    let claimed = claim(store, WorkerId::new(), 10, t(2)).await;
    assert_eq!(claimed.len(), 2);
    // A second event queued for `gone` before it is disabled.
    let queued = insert_one(store, org, "probe.b", t(3)).await;

    let to_gone = claimed.iter().find(|d| d.endpoint_id == gone.id).unwrap();
    let mut c = completion(to_gone, CompletionState::Failed, t(4));
    c.disable_endpoint = Some("410 Gone".into());
    assert!(complete(store, c).await);
    let eps = store.endpoints(org).await.unwrap();
    assert_eq!(eps[0], keep);
    assert_eq!((eps[1].enabled, eps[1].disabled_reason.as_deref()), (false, Some("410 Gone")));
    assert_eq!(status(store, org, first).await, EventStatus::Failed);
    // The delivery queued for `gone` failed with the endpoint's reason, and so its event.
    assert_eq!(status(store, org, queued).await, EventStatus::Failed);

    let later = insert(store, org, vec![record("probe.c", t(5))], t(5)).await;
    assert!(matches!(later[0], InsertOutcome::Inserted { deliveries: 1, .. }));
    let later = later[0].meta().id;
    assert_eq!(status(store, org, later).await, EventStatus::Failed, "matched a disabled one");
    let rest = claim(store, WorkerId::new(), 10, t(1000)).await;
    // `keep`'s delivery of `first` (lease expired), of `queued`, of the new event, and of
    // the announcement of the disable (`triggers.endpoint.disabled`; none to `gone` itself).
    assert_eq!(rest.len(), 4);
    let announced = rest.iter().filter(|d| d.event_type == "triggers.endpoint.disabled").count();
    assert_eq!(announced, 1);
    assert!(rest.iter().all(|d| d.endpoint_id == keep.id), "a disabled endpoint was claimed");
    assert!(rest.iter().any(|d| d.event_id == queued));
    assert_eq!(detail(store, org, later).await.attempts.len(), 0, "no attempt was made");
}

/// Deleting an endpoint cancels its outstanding deliveries: they leave the queue, an
/// in-flight one's completion is stale (its attempt, really made, is still recorded, once),
/// and events keep their status.
pub async fn deleting_an_endpoint_cancels_its_deliveries<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let doomed = endpoint(store, org, None, t(0)).await;
    let kept = endpoint(store, org, None, t(1)).await;
    let e1 = insert_one(store, org, "x", t(2)).await;
    let e2 = insert_one(store, org, "x", t(2)).await;
    let w = WorkerId::new();
    let claimed = claim(store, w, 10, t(2)).await;
    assert_eq!(claimed.len(), 4);
    for d in claimed.iter().filter(|d| d.event_id == e2) {
        assert!(store.release(d.id, d.lease_owner, d.attempt, None).await.unwrap());
    }
    assert_eq!(store.queue_depth().await.unwrap(), 4);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 2);

    assert!(store.delete_endpoint(org, doomed.id).await.unwrap());
    assert_eq!(store.queue_depth().await.unwrap(), 2);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 1);
    let stale = claimed.iter().find(|d| d.event_id == e1 && d.endpoint_id == doomed.id).unwrap();
    let mut wrong = completion(stale, CompletionState::Delivered, t(3));
    wrong.lease_owner = WorkerId::new();
    assert!(!complete(store, wrong).await);
    assert!(detail(store, org, e1).await.attempts.is_empty(), "a wrong fence records nothing");
    let late = completion(stale, CompletionState::Delivered, t(3));
    assert!(!complete(store, late.clone()).await);
    assert!(!complete(store, late.clone()).await, "recorded once");
    let d1 = detail(store, org, e1).await;
    assert_eq!(d1.attempts, vec![late.record], "the attempt made before the delete");
    assert_eq!(d1.event.status, EventStatus::Pending, "a cancelled success delivers nothing");
    assert_eq!(status(store, org, e2).await, EventStatus::Pending);

    let again = claim(store, w, 10, t(2)).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event_id, again[0].endpoint_id), (e2, kept.id));
    assert_eq!(store.endpoints(org).await.unwrap(), vec![kept]);
}
