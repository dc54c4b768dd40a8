//! Delivery history through the Ingestor: attempts of one endpoint, and deliveries of one
//! endpoint or merged across the organization's endpoints, paged newest first.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use triggers_core::domain::event::AttemptRecord;
use triggers_core::store::{
    ClaimRequest, Completion, CompletionState, DeliveryQueue, DeliveryState, DeliveryStatus,
};
use triggers_core::*;

fn start(clock: &ManualClock) -> Ingestor<MemoryStore, NoDeliverer> {
    let config = IngestorConfig {
        clock: std::sync::Arc::new(clock.clone()),
        tier_limits: TierLimits::unlimited(),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    Ingestor::start(MemoryStore::new(), NoDeliverer, config)
}

/// Every page of `query`, following the cursors; checks each page's size.
async fn pages(
    ing: &Ingestor<MemoryStore, NoDeliverer>,
    org: &Organization,
    mut query: DeliveriesQuery,
) -> Vec<(EventId, EndpointId, DeliveryStatus)> {
    let mut seen = Vec::new();
    loop {
        let page = ing.deliveries(org, query.clone()).await.unwrap();
        assert!(page.deliveries.len() <= query.limit as usize);
        seen.extend(page.deliveries.iter().map(|d| (d.event_id, d.endpoint_id, d.state.status())));
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.deliveries.len(), query.limit as usize, "only full pages continue");
                query.cursor = Some(c);
            }
            None => return seen,
        }
    }
}

#[tokio::test]
async fn deliveries_merge_every_endpoint_newest_event_first_exactly_once() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    let all = ing.create_endpoint(&org, "http://127.0.0.1:1/all", None).await.unwrap();
    let users = ing.create_endpoint(&org, "http://127.0.0.1:1/u", Some("user.*")).await.unwrap();
    let orders = ing.create_endpoint(&org, "http://127.0.0.1:1/o", Some("order.*")).await.unwrap();
    let foreign = ing.create_endpoint(&other, "http://127.0.0.1:1/f", None).await.unwrap();
    ing.ingest(&other, NewEvent::new("user.x", &json!(1))).await.unwrap();

    let mut expected = Vec::new();
    for i in 0..12 {
        let kind = if i % 3 == 0 { "user.created" } else { "order.paid" };
        let id = ing.ingest(&org, NewEvent::new(kind, &json!({ "i": i }))).await.unwrap().id;
        let mut targets = vec![all.id, if i % 3 == 0 { users.id } else { orders.id }];
        targets.sort_unstable_by(|a, b| b.cmp(a));
        expected.push((id, targets));
        clock.advance(Duration::from_millis(1));
    }
    // Newest event first; for one event, endpoint ids descending.
    let want: Vec<(EventId, EndpointId, DeliveryStatus)> = expected
        .iter()
        .rev()
        .flat_map(|(e, eps)| eps.iter().map(move |ep| (*e, *ep, DeliveryStatus::Pending)))
        .collect();
    for limit in [1, 5, 24, 1000] {
        let q = DeliveriesQuery { limit, ..DeliveriesQuery::default() };
        assert_eq!(pages(&ing, &org, q).await, want, "limit {limit}");
    }
    let unique: HashSet<_> = want.iter().collect();
    assert_eq!(unique.len(), 24);

    // One endpoint; a status that matches nothing.
    let q = DeliveriesQuery { endpoint: Some(users.id), limit: 2, ..DeliveriesQuery::default() };
    let only: Vec<_> = want.iter().filter(|(_, ep, _)| *ep == users.id).cloned().collect();
    assert_eq!(pages(&ing, &org, q).await, only);
    let q = DeliveriesQuery { status: Some(DeliveryStatus::Failed), ..DeliveriesQuery::default() };
    assert_eq!(pages(&ing, &org, q).await, Vec::new());

    // Another organization's endpoint is not found; bad limits and cursors are refused.
    let q = DeliveriesQuery { endpoint: Some(foreign.id), ..DeliveriesQuery::default() };
    assert!(matches!(ing.deliveries(&org, q).await, Err(Error::NotFound)));
    let q = DeliveriesQuery { limit: 0, ..DeliveriesQuery::default() };
    let refused = ing.deliveries(&org, q).await;
    assert!(matches!(refused, Err(Error::Invalid(ValidationError::Field { field: "limit", .. }))));
    let q = DeliveriesQuery { cursor: Some("bm9wZQ".into()), ..DeliveriesQuery::default() };
    let refused = ing.deliveries(&org, q).await;
    assert!(matches!(refused, Err(Error::Invalid(ValidationError::Field { field: "cursor", .. }))));
}

#[tokio::test]
async fn attempts_page_newest_first_and_cursors_do_not_cross() {
    let clock = ManualClock::new();
    let ing = start(&clock);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let (other, _) = ing.create_organization("other", Tier::Free).await.unwrap();
    let ep = ing.create_endpoint(&org, "http://127.0.0.1:1/all", None).await.unwrap();
    for i in 0..5 {
        ing.ingest(&org, NewEvent::new("a", &json!(i))).await.unwrap();
    }
    // Attempt each delivery by hand: even ones succeed, odd ones fail for good.
    let now = clock.now();
    let claimed = ing
        .store()
        .claim(ClaimRequest::new(WorkerId::new(), 10, Duration::from_secs(30), now))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    for (i, d) in claimed.iter().enumerate() {
        clock.advance(Duration::from_secs(1));
        let ok = i % 2 == 0;
        let completion = Completion {
            delivery_id: d.id,
            lease_owner: d.lease_owner,
            attempt: d.attempt,
            state: if ok { CompletionState::Delivered } else { CompletionState::Failed },
            record: AttemptRecord {
                endpoint_id: d.endpoint_id,
                at: clock.now(),
                status_code: Some(if ok { 200 } else { 500 }),
                latency_ms: 3,
                error: (!ok).then(|| "HTTP 500".to_owned()),
            },
            disable_endpoint: None,
        };
        assert_eq!(ing.store().complete(&[completion]).await.unwrap(), vec![true]);
    }

    let mut query = AttemptsQuery { limit: 2, ..AttemptsQuery::default() };
    let mut seen = Vec::new();
    loop {
        let page = ing.endpoint_attempts(&org, ep.id, query.clone()).await.unwrap();
        seen.extend(page.attempts.iter().map(|a| a.event_id));
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    let newest_first: Vec<EventId> = claimed.iter().rev().map(|d| d.event_id).collect();
    assert_eq!(seen, newest_first);

    let q = AttemptsQuery { success: Some(false), ..AttemptsQuery::default() };
    let failed = ing.endpoint_attempts(&org, ep.id, q).await.unwrap();
    assert_eq!(failed.attempts.len(), 2);
    assert!(failed.attempts.iter().all(|a| a.record.status_code == Some(500)));
    assert_eq!(failed.next_cursor, None);

    // Statuses as the deliveries list shows them.
    let q =
        DeliveriesQuery { status: Some(DeliveryStatus::Delivered), ..DeliveriesQuery::default() };
    let delivered = ing.deliveries(&org, q).await.unwrap().deliveries;
    assert_eq!(delivered.len(), 3);
    assert!(delivered.iter().all(|d| matches!(d.state, DeliveryState::Delivered { .. })));

    assert!(matches!(
        ing.endpoint_attempts(&other, ep.id, AttemptsQuery::default()).await,
        Err(Error::NotFound)
    ));
    // A deliveries cursor is not an attempts cursor (and the other way round).
    let q = DeliveriesQuery { limit: 1, ..DeliveriesQuery::default() };
    let cursor = ing.deliveries(&org, q).await.unwrap().next_cursor.unwrap();
    let q = AttemptsQuery { cursor: Some(cursor), ..AttemptsQuery::default() };
    let refused = ing.endpoint_attempts(&org, ep.id, q).await;
    assert!(matches!(refused, Err(Error::Invalid(ValidationError::Field { field: "cursor", .. }))));
    let q = AttemptsQuery { limit: 1, ..AttemptsQuery::default() };
    let cursor = ing.endpoint_attempts(&org, ep.id, q).await.unwrap().next_cursor.unwrap();
    let q = DeliveriesQuery { cursor: Some(cursor), ..DeliveriesQuery::default() };
    assert!(matches!(ing.deliveries(&org, q).await, Err(Error::Invalid(_))));
}
