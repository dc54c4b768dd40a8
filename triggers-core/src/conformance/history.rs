//! Delivery history: an endpoint's attempts and the status of each of its deliveries, paged
//! newest first.

use crate::domain::event::AttemptRecord;
use crate::domain::webhook::ENDPOINT_DISABLED;
use crate::domain::{EndpointId, EventId, WorkerId};
use crate::store::{
    AttemptEntry, AttemptPosition, AttemptQuery, CompletionState, DeliveryEntry, DeliveryQuery,
    DeliveryState, DeliveryStatus, EndpointPatch, EventStore,
};

use super::support::{
    assert_unique, claim, claim_one, complete, completion, detail, endpoint, insert_one, new_org,
    plus, t, LEASE,
};

fn attempts(success: Option<bool>, since: Option<i64>) -> AttemptQuery {
    AttemptQuery { success, since: since.map(t), before: None, limit: 100 }
}

/// Every attempt of `ep` matching `query`, paging `page` at a time; checks that the pages
/// together are the one-page answer.
async fn all_attempts<S: EventStore>(
    store: &S,
    org: crate::domain::OrganizationId,
    ep: EndpointId,
    query: AttemptQuery,
    page: u32,
) -> Vec<AttemptEntry> {
    let whole = store.endpoint_attempts(org, ep, &query).await.unwrap().unwrap();
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let q = AttemptQuery { before, limit: page, ..query };
        let got = store.endpoint_attempts(org, ep, &q).await.unwrap().unwrap();
        assert!(got.len() <= page as usize, "a page holds at most `limit` attempts");
        let done = got.len() < page as usize;
        before = got.last().map(|a| a.position);
        paged.extend(got);
        if done {
            break;
        }
    }
    assert_eq!(paged, whole, "paging by `before` visits the same attempts, once each");
    whole
}

/// Every delivery of `ep` with `status`, paging `page` at a time; checks that the pages
/// together are the one-page answer.
async fn all_deliveries<S: EventStore>(
    store: &S,
    org: crate::domain::OrganizationId,
    ep: EndpointId,
    status: Option<DeliveryStatus>,
    page: u32,
) -> Vec<DeliveryEntry> {
    let query = DeliveryQuery { status, before: None, limit: 100 };
    let whole = store.endpoint_deliveries(org, ep, &query).await.unwrap().unwrap();
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let q = DeliveryQuery { before, limit: page, ..query };
        let got = store.endpoint_deliveries(org, ep, &q).await.unwrap().unwrap();
        assert!(got.len() <= page as usize, "a page holds at most `limit` deliveries");
        let done = got.len() < page as usize;
        before = got.last().map(|d| d.position);
        paged.extend(got);
        if done {
            break;
        }
    }
    assert_eq!(paged, whole, "paging by `before` visits the same deliveries, once each");
    whole
}

/// `endpoint_attempts` lists the endpoint's attempt records (exactly those the events show),
/// newest first by time and then by recording order, filtered by outcome and `since`, paged
/// by position without gaps or repeats; another endpoint's attempts, a foreign organization
/// and an unknown endpoint see nothing of them.
pub async fn attempt_history_pages_newest_first<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    let a = endpoint(store, org, None, t(0)).await;
    let b = endpoint(store, org, None, t(0)).await;
    let mut events = Vec::new();
    for i in 1..=5 {
        events.push(insert_one(store, org, &format!("order.{i}"), t(i)).await);
    }
    let w = WorkerId::new();
    let claimed = claim(store, w, 10, t(6)).await;
    assert_eq!(claimed.len(), 10);
    let of = |ep: EndpointId, event: EventId| {
        claimed.iter().find(|d| d.endpoint_id == ep && d.event_id == event).unwrap().clone()
    };
    // a: e1 fails and is retried at t(15); e2 delivered; e3 fails finally; e4 and e5 are
    // delivered at the same time (recorded in that order). b: everything delivered at t(14).
    let retry = CompletionState::Retry { at: t(15) };
    assert!(complete(store, completion(&of(a.id, events[0]), retry, t(10))).await);
    let delivered = CompletionState::Delivered;
    assert!(complete(store, completion(&of(a.id, events[1]), delivered.clone(), t(11))).await);
    let failed = CompletionState::Failed;
    assert!(complete(store, completion(&of(a.id, events[2]), failed, t(12))).await);
    assert!(complete(store, completion(&of(a.id, events[3]), delivered.clone(), t(13))).await);
    assert!(complete(store, completion(&of(a.id, events[4]), delivered.clone(), t(13))).await);
    for e in &events {
        assert!(complete(store, completion(&of(b.id, *e), delivered.clone(), t(14))).await);
    }
    let again = claim_one(store, w, t(15)).await;
    assert_eq!((again.endpoint_id, again.event_id), (a.id, events[0]));
    assert!(complete(store, completion(&again, delivered.clone(), t(20))).await);

    let history = all_attempts(store, org, a.id, attempts(None, None), 2).await;
    let seen: Vec<(EventId, i64, bool)> = history
        .iter()
        .map(|h| (h.event_id, h.record.at.timestamp(), h.record.error.is_none()))
        .collect();
    let at = |s: i64| t(s).timestamp();
    assert_eq!(
        seen,
        vec![
            (events[0], at(20), true),
            (events[4], at(13), true),
            (events[3], at(13), true),
            (events[2], at(12), false),
            (events[1], at(11), true),
            (events[0], at(10), false),
        ],
        "newest first; equal times in reverse recording order"
    );
    let positions: Vec<AttemptPosition> = history.iter().map(|h| h.position).collect();
    assert_unique(&positions);
    assert!(positions.windows(2).all(|p| p[0] > p[1]), "positions strictly descending");
    for h in &history {
        assert_eq!(h.position.at, h.record.at);
        assert_eq!(h.record.endpoint_id, a.id);
        let i = events.iter().position(|e| *e == h.event_id).unwrap();
        assert_eq!(h.event_type, format!("order.{}", i + 1));
        let shown = detail(store, org, h.event_id).await.attempts;
        assert!(shown.contains(&h.record), "the record is the one the event shows");
    }
    let failure = &history[3].record;
    let expected = AttemptRecord {
        endpoint_id: a.id,
        at: t(12),
        status_code: None,
        latency_ms: 7,
        error: Some("connection refused".into()),
    };
    assert_eq!(failure, &expected);
    let mut shown = 0;
    for e in &events {
        let attempts = detail(store, org, *e).await.attempts;
        shown += attempts.iter().filter(|r| r.endpoint_id == a.id).count();
    }
    assert_eq!(shown, history.len(), "every record of the endpoint is listed");

    let ok = all_attempts(store, org, a.id, attempts(Some(true), None), 1).await;
    let ok: Vec<_> = ok.iter().map(|h| h.event_id).collect();
    assert_eq!(ok, vec![events[0], events[4], events[3], events[1]]);
    let bad = all_attempts(store, org, a.id, attempts(Some(false), None), 1).await;
    let bad: Vec<_> = bad.iter().map(|h| (h.event_id, h.record.status_code)).collect();
    assert_eq!(bad, vec![(events[2], None), (events[0], Some(503))]);
    let recent = all_attempts(store, org, a.id, attempts(None, Some(12)), 3).await;
    assert_eq!(recent.len(), 4, "since is inclusive: t(20), t(13) twice, t(12)");
    assert_eq!(recent[..], history[..4]);
    let both = attempts(Some(true), Some(13));
    assert_eq!(all_attempts(store, org, a.id, both, 2).await.len(), 3);

    let b_history = all_attempts(store, org, b.id, attempts(None, None), 2).await;
    assert_eq!(b_history.len(), 5);
    assert!(b_history.iter().all(|h| h.record.endpoint_id == b.id && h.record.at == t(14)));
    let b_events: Vec<_> = b_history.iter().map(|h| h.event_id).collect();
    assert_unique(&b_events);

    let q = attempts(None, None);
    assert_eq!(store.endpoint_attempts(other, a.id, &q).await.unwrap(), None, "foreign");
    assert_eq!(store.endpoint_attempts(org, EndpointId::new(), &q).await.unwrap(), None);
    let fresh = endpoint(store, other, None, t(30)).await;
    assert_eq!(store.endpoint_attempts(other, fresh.id, &q).await.unwrap(), Some(Vec::new()));
}

/// `endpoint_deliveries` gives one entry per event the endpoint was to receive, newest event
/// first: outstanding ones as pending (with attempts made and due time) or in flight (with
/// the lease), then failed ones with their reason, then delivered ones with the success's
/// time — an outstanding delivery of a replayed event hides its earlier success. Each status
/// filter lists exactly its entries; events the endpoint never matched are not listed; a
/// foreign organization and an unknown endpoint get `None`.
pub async fn delivery_listing_reports_each_status<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    let a = endpoint(store, org, Some("a.*"), t(0)).await;
    let b = endpoint(store, org, Some("b.*"), t(0)).await;
    let mut e = Vec::new();
    for i in 1..=6 {
        e.push(insert_one(store, org, "a.x", t(i)).await);
    }
    let w = WorkerId::new();
    let first = claim(store, w, 5, t(7)).await;
    let ids: Vec<_> = first.iter().map(|d| d.event_id).collect();
    assert_eq!(ids, e[..5].to_vec(), "earliest due first");
    assert!(complete(store, completion(&first[0], CompletionState::Delivered, t(8))).await);
    assert!(complete(store, completion(&first[1], CompletionState::Failed, t(8))).await);
    let retry = CompletionState::Retry { at: t(100) };
    assert!(complete(store, completion(&first[3], retry, t(8))).await);
    // e5: delivered, then replayed: outstanding again, attempt 0.
    assert!(complete(store, completion(&first[4], CompletionState::Delivered, t(10))).await);
    store.replay(org, e[4], t(11)).await.unwrap().unwrap();

    let all = all_deliveries(store, org, a.id, None, 2).await;
    let states: Vec<(EventId, DeliveryState)> =
        all.iter().map(|d| (d.event_id, d.state.clone())).collect();
    assert_eq!(
        states,
        vec![
            (e[5], DeliveryState::Pending { attempts: 0, next_attempt_at: t(6) }),
            (e[4], DeliveryState::Pending { attempts: 0, next_attempt_at: t(11) }),
            (e[3], DeliveryState::Pending { attempts: 1, next_attempt_at: t(100) }),
            (e[2], DeliveryState::InFlight { attempt: 1, lease_expires_at: plus(t(7), LEASE) }),
            (e[1], DeliveryState::Failed { at: t(8), reason: "connection refused".into() }),
            (e[0], DeliveryState::Delivered { at: t(8) }),
        ]
    );
    let positions: Vec<u128> = all.iter().map(|d| d.position).collect();
    assert!(positions.windows(2).all(|p| p[0] > p[1]), "positions strictly descending");
    for (i, d) in all.iter().enumerate() {
        assert_eq!(d.endpoint_id, a.id);
        assert_eq!(d.event_type, "a.x");
        assert_eq!(d.event_created_at, t(6 - i as i64), "the event's creation time");
    }
    for status in [
        DeliveryStatus::Pending,
        DeliveryStatus::InFlight,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
    ] {
        let expected: Vec<_> = all.iter().filter(|d| d.state.status() == status).cloned().collect();
        let got = all_deliveries(store, org, a.id, Some(status), 1).await;
        assert_eq!(got, expected, "status {status:?}");
    }
    assert_eq!(all_deliveries(store, org, b.id, None, 2).await, Vec::new(), "never matched");

    // An event matching a disabled endpoint is listed as failed with the reason.
    let off = EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
    store.update_endpoint(org, b.id, &off, t(12)).await.unwrap().unwrap();
    let missed = insert_one(store, org, "b.y", t(13)).await;
    let listed = all_deliveries(store, org, b.id, Some(DeliveryStatus::Failed), 2).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_id, missed);
    assert_eq!(
        listed[0].state,
        DeliveryState::Failed { at: t(13), reason: ENDPOINT_DISABLED.into() }
    );

    let q = DeliveryQuery { status: None, before: None, limit: 10 };
    assert_eq!(store.endpoint_deliveries(other, a.id, &q).await.unwrap(), None, "foreign");
    assert_eq!(store.endpoint_deliveries(org, EndpointId::new(), &q).await.unwrap(), None);
}
