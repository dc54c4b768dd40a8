//! The inbox (listing and paging), ack, replay, stats, and isolation between organizations.

use crate::domain::event::EventStatus;
use crate::domain::{EventId, OrganizationId, WorkerId};
use crate::store::{AckOutcome, CompletionState, EventStore, ListQuery, QueueStats};

use super::support::{
    claim, complete, completion, detail, endpoint, glob, insert, insert_one, inserted, list_all,
    new_org, record, record_with, sorted, status, t,
};

async fn page<S: EventStore>(
    store: &S,
    org: OrganizationId,
    glob_text: Option<&str>,
    limit: u32,
    after: Option<EventId>,
) -> (Vec<EventId>, Option<EventId>) {
    let query = ListQuery {
        status: EventStatus::Pending,
        type_glob: glob_text.map(glob),
        limit,
        after,
        max_bytes: crate::store::DEFAULT_MAX_PAGE_BYTES,
    };
    let page = store.list_events(org, &query).await.unwrap();
    (page.items.iter().map(|e| e.id).collect(), page.next_after)
}

async fn insert_many<S: EventStore>(store: &S, org: OrganizationId, n: usize) -> Vec<EventId> {
    let records = (0..n).map(|i| record(&format!("page.{i}"), t(0))).collect();
    insert(store, org, records, t(0)).await.iter().map(inserted).collect()
}

/// Keyset paging returns ascending ids, visits every event that existed when paging began
/// exactly once even while new events arrive between pages, and says `None` only on the last
/// page.
pub async fn inbox_pages_visit_every_event_once<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let mut existing = Vec::new();
    for _ in 0..3 {
        existing.extend(insert_many(store, org, 8).await);
    }
    let (mut seen, mut added, mut after) = (Vec::new(), Vec::new(), None);
    loop {
        let (ids, next) = page(store, org, None, 5, after).await;
        assert!(ids.len() <= 5);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "a page is in ascending id order");
        if let (Some(after), Some(first)) = (after, ids.first()) {
            assert!(*first > after, "a page starts after the cursor");
        }
        seen.extend(&ids);
        match next {
            Some(next) => {
                assert_eq!(Some(&next), ids.last(), "next_after is the page's last id");
                after = Some(next);
            }
            None => break,
        }
        if added.len() < 6 {
            added.extend(insert_many(store, org, 2).await);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages continue in ascending order");
    for id in &existing {
        assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{id} must be visited once");
    }
    for id in &seen {
        assert!(existing.contains(id) || added.contains(id), "{id} is not an event of org");
    }

    // Exact page boundaries: 10 events, pages of 5 → the second page is the last.
    let org = new_org(store).await;
    let ids = sorted(insert_many(store, org, 10).await);
    assert_eq!(page(store, org, None, 5, None).await, (ids[..5].to_vec(), Some(ids[4])));
    assert_eq!(page(store, org, None, 5, Some(ids[4])).await, (ids[5..].to_vec(), None));
    assert_eq!(page(store, org, None, 5, Some(ids[9])).await, (vec![], None));
    assert_eq!(page(store, org, None, 11, None).await, (ids.clone(), None));
}

/// Listing filters by status and by type glob: `*` is the only wildcard (`_` is literal),
/// matching is case-sensitive, and `next_after` is `None` when no *matching* event follows.
pub async fn inbox_filters_by_status_and_type_glob<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let types = [
        "user.created",
        "user.deleted",
        "user_signup",
        "userXsignup",
        "User.created",
        "order.created",
        "usera.b",
    ];
    let records: Vec<_> = types.iter().map(|ty| record(ty, t(0))).collect();
    let ids: Vec<EventId> = insert(store, org, records, t(0)).await.iter().map(inserted).collect();
    let id = |ty: &str| ids[types.iter().position(|x| *x == ty).unwrap()];
    let ack = store.ack(org, &[id("user.deleted")], t(1)).await.unwrap();
    assert_eq!(ack.acknowledged, vec![id("user.deleted")]);

    let pending = |tys: &[&str]| sorted(tys.iter().map(|ty| id(ty)).collect());
    let cases: [(Option<&str>, Vec<EventId>); 8] = [
        (
            None,
            pending(&[
                "user.created",
                "user_signup",
                "userXsignup",
                "User.created",
                "order.created",
                "usera.b",
            ]),
        ),
        (
            Some("*"),
            pending(&[
                "user.created",
                "user_signup",
                "userXsignup",
                "User.created",
                "order.created",
                "usera.b",
            ]),
        ),
        (Some("user.*"), pending(&["user.created"])),
        (Some("user_*"), pending(&["user_signup"])),
        (Some("User.*"), pending(&["User.created"])),
        (Some("*.created"), pending(&["user.created", "User.created", "order.created"])),
        (Some("user*.*"), pending(&["user.created", "usera.b"])),
        (Some("user.deleted"), vec![]),
    ];
    for (glob_text, expected) in cases {
        let got = list_all(store, org, EventStatus::Pending, glob_text).await;
        assert_eq!(got, expected, "pending events matching {glob_text:?}");
    }
    let delivered = vec![id("user.deleted")];
    assert_eq!(list_all(store, org, EventStatus::Delivered, None).await, delivered);
    assert_eq!(list_all(store, org, EventStatus::Delivered, Some("user.*")).await, delivered);
    assert_eq!(list_all(store, org, EventStatus::Delivered, Some("order.*")).await, vec![]);
    assert_eq!(list_all(store, org, EventStatus::Failed, None).await, vec![]);

    // Paging under a filter: the last matching event ends the listing.
    let (items, next) = page(store, org, Some("user_*"), 1, None).await;
    assert_eq!((items, next), (vec![id("user_signup")], None));
    let created = pending(&["user.created", "User.created", "order.created"]);
    let (items, next) = page(store, org, Some("*.created"), 2, None).await;
    assert_eq!((items, next), (created[..2].to_vec(), Some(created[1])));
    let (items, next) = page(store, org, Some("*.created"), 2, Some(created[1])).await;
    assert_eq!((items, next), (created[2..].to_vec(), None));
}

/// Ack marks events `delivered` with `delivered_at = now`, is idempotent (the first time
/// stays), reports every id once, and sends unknown and foreign ids to `not_found`.
pub async fn ack_is_idempotent_and_reports_unknown_ids<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    let a = insert_one(store, org, "a", t(0)).await;
    let b = insert_one(store, org, "b", t(0)).await;
    let c = insert_one(store, org, "c", t(0)).await;
    let foreign = insert_one(store, other, "f", t(0)).await;
    let unknown = EventId::new();

    let outcome = store.ack(org, &[a, a, b, foreign, unknown, unknown, b], t(10)).await.unwrap();
    assert_eq!(outcome, AckOutcome { acknowledged: vec![a, b], not_found: vec![foreign, unknown] });
    for id in [a, b] {
        let event = detail(store, org, id).await.event;
        assert_eq!((event.status, event.delivered_at), (EventStatus::Delivered, Some(t(10))));
    }
    assert_eq!(status(store, org, c).await, EventStatus::Pending);
    let f = detail(store, other, foreign).await.event;
    assert_eq!((f.status, f.delivered_at), (EventStatus::Pending, None), "foreign event acked");

    let again = store.ack(org, &[a], t(20)).await.unwrap();
    assert_eq!(again, AckOutcome { acknowledged: vec![a], not_found: vec![] });
    assert_eq!(detail(store, org, a).await.event.delivered_at, Some(t(10)), "first ack stays");
    assert_eq!(store.ack(org, &[], t(20)).await.unwrap(), AckOutcome::default());
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 1, in_flight: 0, delivered: 2, failed: 0 });
}

/// Replay sets an event `pending` again and clears `delivered_at`; unknown and foreign ids
/// answer `None` and change nothing.
pub async fn replay_sets_events_pending_again<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    let id = insert_one(store, org, "a", t(0)).await;
    store.ack(org, &[id], t(1)).await.unwrap();

    assert_eq!(store.replay(other, id, t(2)).await.unwrap(), None);
    assert_eq!(status(store, org, id).await, EventStatus::Delivered, "foreign replay applied");
    assert_eq!(store.replay(org, EventId::new(), t(2)).await.unwrap(), None);

    assert_eq!(store.replay(org, id, t(3)).await.unwrap(), Some(EventStatus::Pending));
    let event = detail(store, org, id).await.event;
    assert_eq!((event.status, event.delivered_at), (EventStatus::Pending, None));
    assert_eq!(store.replay(org, id, t(4)).await.unwrap(), Some(EventStatus::Pending));
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 1, in_flight: 0, delivered: 0, failed: 0 });
}

/// Stats count the organization's events by status and its leased deliveries, and nothing
/// of other organizations.
pub async fn stats_count_events_and_in_flight_deliveries<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    assert_eq!(store.stats(org).await.unwrap(), QueueStats::default());
    endpoint(store, org, Some("s.*"), t(0)).await;
    let sa = insert_one(store, org, "s.a", t(0)).await;
    insert_one(store, org, "s.b", t(0)).await;
    let p1 = insert_one(store, org, "p.1", t(0)).await;
    insert_one(store, org, "p.2", t(0)).await;
    insert_one(store, other, "o.1", t(0)).await;
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 4, in_flight: 0, delivered: 0, failed: 0 });

    let claimed = claim(store, WorkerId::new(), 10, t(0)).await;
    assert_eq!(claimed.len(), 2);
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 4, in_flight: 2, delivered: 0, failed: 0 });

    let failing = claimed.iter().find(|d| d.event_id == sa).unwrap();
    assert!(complete(store, completion(failing, CompletionState::Failed, t(1))).await);
    store.ack(org, &[p1], t(2)).await.unwrap();
    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats, QueueStats { pending: 2, in_flight: 1, delivered: 1, failed: 1 });
    let theirs = store.stats(other).await.unwrap();
    assert_eq!(theirs, QueueStats { pending: 1, in_flight: 0, delivered: 0, failed: 0 });
}

/// An organization can never see, list, ack, replay or count another's events.
pub async fn organizations_cannot_reach_each_others_events<S: EventStore>(store: &S) {
    let (owner, intruder) = (new_org(store).await, new_org(store).await);
    let id = insert_one(store, owner, "secret.thing", t(0)).await;
    assert_eq!(store.event(intruder, id).await.unwrap(), None);
    for status in [EventStatus::Pending, EventStatus::Delivered, EventStatus::Failed] {
        assert_eq!(list_all(store, intruder, status, None).await, vec![]);
        assert_eq!(list_all(store, intruder, status, Some("*")).await, vec![]);
    }
    let ack = store.ack(intruder, &[id], t(1)).await.unwrap();
    assert_eq!(ack, AckOutcome { acknowledged: vec![], not_found: vec![id] });
    assert_eq!(store.replay(intruder, id, t(1)).await.unwrap(), None);
    assert_eq!(store.stats(intruder).await.unwrap(), QueueStats::default());
    let event = detail(store, owner, id).await.event;
    assert_eq!((event.status, event.delivered_at), (EventStatus::Pending, None));
    assert_eq!(list_all(store, owner, EventStatus::Pending, None).await, vec![id]);
}

/// A page ends before the first event that would take its [`page_item_size`] sum above
/// `max_bytes`, always holds at least one event (also one larger than the budget), counts only
/// matching events, and `next_after` continues there: paging visits every event exactly once.
///
/// [`page_item_size`]: crate::store::page_item_size
pub async fn inbox_pages_stop_at_the_byte_budget<S: EventStore>(store: &S) {
    use crate::store::page_item_size;
    let org = new_org(store).await;
    let budget = 6_000u64;
    // Payload sizes (bytes of JSON text); one is larger than the whole budget.
    let sizes = [1_000usize, 2_500, 1_200, 9_000, 300, 300, 4_000, 2_000, 5_900, 10, 10];
    let mut expected = Vec::new();
    let mut by_id = std::collections::HashMap::new();
    for (i, size) in sizes.iter().enumerate() {
        let payload = format!("\"{}\"", "x".repeat(size - 2));
        let dedup = format!("budget-{i}");
        let rec = record_with("budget.item", &payload, Some(&dedup), t(0));
        let cost = page_item_size("budget.item", &payload, Some(&dedup));
        let id = inserted(&insert(store, org, vec![rec], t(0)).await[0]);
        expected.push(id);
        by_id.insert(id, cost);
        // A large non-matching event between them counts for nothing.
        let other = record_with("other.item", &format!("\"{}\"", "y".repeat(8_000)), None, t(0));
        insert(store, org, vec![other], t(0)).await;
    }
    let query = |after| ListQuery {
        status: EventStatus::Pending,
        type_glob: Some(glob("budget.*")),
        limit: 1000,
        after,
        max_bytes: budget,
    };
    let (mut seen, mut after, mut pages) = (Vec::<EventId>::new(), None, 0);
    loop {
        let page = store.list_events(org, &query(after)).await.unwrap();
        pages += 1;
        assert!(!page.items.is_empty(), "a page holds at least one event");
        let ids: Vec<EventId> = page.items.iter().map(|e| e.id).collect();
        let total: u64 = ids.iter().map(|id| by_id[id]).sum();
        assert!(ids.len() == 1 || total <= budget, "page {ids:?} holds {total} > {budget}");
        seen.extend(&ids);
        match page.next_after {
            Some(next) => {
                assert_eq!(Some(&next), ids.last(), "next_after is the page's last id");
                let following = expected[seen.len()];
                assert!(
                    total + by_id[&following] > budget,
                    "the page stopped although the next event ({}) fits",
                    by_id[&following]
                );
                after = Some(next);
            }
            None => break,
        }
        assert!(pages <= sizes.len(), "paging does not end");
    }
    assert_eq!(seen, expected, "every matching event exactly once, in order");
    // The expected breaks: [1000,2500,1200] [9000] [300,300,4000] [2000] [5900] [10,10].
    assert_eq!(pages, 6);

    // `limit` still applies below the budget, and a generous budget changes nothing.
    let mut q = query(None);
    q.limit = 2;
    q.max_bytes = u64::MAX;
    let page = store.list_events(org, &q).await.unwrap();
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), expected[..2]);
    assert_eq!(page.next_after, Some(expected[1]));
    q.limit = 1000;
    let page = store.list_events(org, &q).await.unwrap();
    assert_eq!(page.items.len(), sizes.len());
    assert_eq!(page.next_after, None);
    // A budget of 0 still gives one event per page.
    q.max_bytes = 0;
    let page = store.list_events(org, &q).await.unwrap();
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), expected[..1]);
    assert_eq!(page.next_after, Some(expected[0]));
}
