//! Endpoint lifecycle: lookup, patching, disabling (which fails outstanding deliveries),
//! re-enabling and recovering failed deliveries.

use crate::domain::event::EventStatus;
use crate::domain::webhook::DISABLED_BY_REQUEST;
use crate::domain::{EndpointId, WorkerId};
use crate::store::{
    ClaimRequest, CompletionState, EndpointPatch, EventStore, InsertOutcome, RecoverQuery,
};

use super::support::{
    claim, claim_capped, claim_one, complete, completion, detail, endpoint, glob, insert,
    insert_one, inserted, new_org, record, status, t, LEASE,
};

fn disable() -> EndpointPatch {
    EndpointPatch { enabled: Some(false), ..EndpointPatch::default() }
}

fn enable() -> EndpointPatch {
    EndpointPatch { enabled: Some(true), ..EndpointPatch::default() }
}

fn window(since: i64, until: Option<i64>, limit: u32) -> RecoverQuery {
    RecoverQuery { since: t(since), until: until.map(t), limit }
}

/// `endpoint` finds one endpoint of its own organization only; `update_endpoint` changes
/// exactly the fields the patch names (`Some(None)` clears), answers `None` for a foreign or
/// unknown id without changing anything, and claims carry the headers and limits.
pub async fn endpoints_are_found_and_patched<S: EventStore>(store: &S) {
    let (org, other) = (new_org(store).await, new_org(store).await);
    let ep = endpoint(store, org, Some("a.*"), t(0)).await;
    assert_eq!(store.endpoint(org, ep.id).await.unwrap(), Some(ep.clone()));
    assert_eq!(store.endpoint(other, ep.id).await.unwrap(), None, "foreign");
    assert_eq!(store.endpoint(org, EndpointId::new()).await.unwrap(), None);

    let headers = vec![("X-Tenant".to_owned(), "acme".to_owned()), ("X-B".into(), "2".into())];
    let patch = EndpointPatch {
        url: Some("https://hooks.example.test/new".into()),
        event_type_filter: Some(None),
        description: Some(Some("billing ✓".into())),
        headers: Some(headers.clone()),
        rate_limit: Some(Some(5)),
        concurrency: Some(Some(2)),
        enabled: None,
        ordering: None,
    };
    assert_eq!(store.update_endpoint(other, ep.id, &patch, t(1)).await.unwrap(), None);
    assert_eq!(store.update_endpoint(org, EndpointId::new(), &patch, t(1)).await.unwrap(), None);
    assert_eq!(store.endpoint(org, ep.id).await.unwrap(), Some(ep.clone()), "nothing changed");

    let up = store.update_endpoint(org, ep.id, &patch, t(1)).await.unwrap().unwrap();
    assert!(up.was_enabled);
    assert_eq!(up.failed, 0);
    let mut expected = ep.clone();
    expected.url = "https://hooks.example.test/new".into();
    expected.event_type_filter = None;
    expected.description = Some("billing ✓".into());
    expected.headers = headers.clone();
    expected.rate_limit = Some(5);
    expected.concurrency = Some(2);
    assert_eq!(up.endpoint, expected);
    assert_eq!(store.endpoint(org, ep.id).await.unwrap(), Some(expected.clone()));
    assert_eq!(store.endpoints(org).await.unwrap(), vec![expected.clone()]);

    // The cleared filter lets every type through; the claim carries the new settings.
    insert_one(store, org, "b.anything", t(2)).await;
    let d = claim_one(store, WorkerId::new(), t(2)).await;
    assert_eq!(d.url, "https://hooks.example.test/new");
    assert_eq!(d.headers, headers);
    assert_eq!((d.endpoint_rate_limit, d.endpoint_concurrency), (Some(5), Some(2)));

    // An empty patch changes nothing; `Some(None)` clears; a new filter applies.
    let same = store.update_endpoint(org, ep.id, &EndpointPatch::default(), t(3)).await.unwrap();
    assert_eq!(same.unwrap().endpoint, expected);
    let clear = EndpointPatch {
        description: Some(None),
        headers: Some(Vec::new()),
        rate_limit: Some(None),
        concurrency: Some(None),
        event_type_filter: Some(Some(glob("c.*"))),
        ..EndpointPatch::default()
    };
    let cleared = store.update_endpoint(org, ep.id, &clear, t(3)).await.unwrap().unwrap();
    assert_eq!(cleared.endpoint.description, None);
    assert_eq!(cleared.endpoint.headers, Vec::<(String, String)>::new());
    assert_eq!((cleared.endpoint.rate_limit, cleared.endpoint.concurrency), (None, None));
    let outcome = insert(store, org, vec![record("b.other", t(4))], t(4)).await;
    assert!(matches!(outcome[0], InsertOutcome::Inserted { deliveries: 0, .. }));
}

/// Disabling through `update_endpoint` fails every outstanding delivery of the endpoint
/// (pending and in flight) with the reason, without an attempt: they leave the queue depth
/// and the in-flight count, their events become `failed`, a stale completion changes
/// nothing. Disabling again fails nothing; re-enabling clears the reason.
pub async fn disabling_an_endpoint_fails_its_outstanding_deliveries<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    let other = endpoint(store, org, Some("keep.*"), t(0)).await;
    let flying = insert_one(store, org, "x", t(1)).await;
    let w = WorkerId::new();
    let in_flight = claim_one(store, w, t(1)).await;
    let waiting = insert_one(store, org, "x", t(2)).await;
    let kept = insert_one(store, org, "keep.me", t(2)).await;
    assert_eq!(store.queue_depth().await.unwrap(), 4);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 1);

    let up = store.update_endpoint(org, ep.id, &disable(), t(3)).await.unwrap().unwrap();
    assert!(up.was_enabled);
    assert_eq!(up.failed, 3, "the in-flight one and two pending ones");
    assert!(!up.endpoint.enabled);
    assert_eq!(up.endpoint.disabled_reason.as_deref(), Some(DISABLED_BY_REQUEST));
    assert_eq!(store.queue_depth().await.unwrap(), 1, "only `other`'s delivery is left");
    assert_eq!(store.stats(org).await.unwrap().in_flight, 0);
    assert_eq!(status(store, org, flying).await, EventStatus::Failed);
    assert_eq!(status(store, org, waiting).await, EventStatus::Failed);
    assert_eq!(detail(store, org, waiting).await.attempts.len(), 0, "no attempt was made");
    assert!(!complete(store, completion(&in_flight, CompletionState::Delivered, t(4))).await);
    assert_eq!(status(store, org, flying).await, EventStatus::Failed);

    let again = store.update_endpoint(org, ep.id, &disable(), t(5)).await.unwrap().unwrap();
    assert_eq!((again.was_enabled, again.failed), (false, 0));
    let rest = claim(store, w, 10, t(5)).await;
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].event_id, rest[0].endpoint_id), (kept, other.id));

    let back = store.update_endpoint(org, ep.id, &enable(), t(6)).await.unwrap().unwrap();
    assert!(!back.was_enabled);
    assert!(back.endpoint.enabled);
    assert_eq!(back.endpoint.disabled_reason, None);
    assert_eq!(store.queue_depth().await.unwrap(), 1, "enabling queues nothing by itself");
}

/// An event is `delivered` only once its last outstanding delivery succeeded, also when
/// `recover` queued another delivery of it while one was in flight: that one's success
/// leaves the event `pending`, and the recovered delivery's final failure fails it.
pub async fn a_recovered_delivery_keeps_its_event_open<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let a = endpoint(store, org, Some("x"), t(0)).await;
    let b = endpoint(store, org, Some("x"), t(0)).await;
    let event = insert_one(store, org, "x", t(1)).await;
    // b is disabled: its delivery fails, and so does the event.
    store.update_endpoint(org, b.id, &disable(), t(2)).await.unwrap().unwrap();
    assert_eq!(status(store, org, event).await, EventStatus::Failed);
    // a's delivery, now the event's only outstanding one, goes out ...
    let w = WorkerId::new();
    let to_a = claim_one(store, w, t(3)).await;
    assert_eq!(to_a.endpoint_id, a.id);
    // ... while b comes back and its failed delivery is queued again.
    store.update_endpoint(org, b.id, &enable(), t(4)).await.unwrap().unwrap();
    let recovered = store.recover(org, b.id, window(0, None, 10), t(4)).await.unwrap().unwrap();
    assert_eq!(recovered.queued, 1);
    assert_eq!(status(store, org, event).await, EventStatus::Pending);
    // a's success does not finish the event: b's delivery is outstanding.
    assert!(complete(store, completion(&to_a, CompletionState::Delivered, t(5))).await);
    assert_eq!(status(store, org, event).await, EventStatus::Pending);
    // b's delivery fails for good: the event is failed.
    let to_b = claim_one(store, w, t(6)).await;
    assert_eq!((to_b.event_id, to_b.endpoint_id), (event, b.id));
    assert!(complete(store, completion(&to_b, CompletionState::Failed, t(7))).await);
    assert_eq!(status(store, org, event).await, EventStatus::Failed);
}

/// Recover takes the oldest events by creation time, also when they were stored after newer
/// ones (records carry their own `created_at`), and a window that holds nothing queues
/// nothing whatever lies outside it.
pub async fn recover_takes_the_oldest_by_creation_time<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    store.update_endpoint(org, ep.id, &disable(), t(1)).await.unwrap().unwrap();
    // Stored in this order, created at 30, 10, 20: each gets a failed delivery.
    let late = insert_one(store, org, "x", t(30)).await;
    let early = insert_one(store, org, "x", t(10)).await;
    let middle = insert_one(store, org, "x", t(20)).await;
    store.update_endpoint(org, ep.id, &enable(), t(31)).await.unwrap().unwrap();

    for (since, until) in [(31, None), (0, Some(10)), (11, Some(20)), (25, Some(25))] {
        let q = window(since, until, 10);
        let none = store.recover(org, ep.id, q, t(32)).await.unwrap().unwrap();
        assert_eq!((none.queued, none.more), (0, false), "window {since}..{until:?}");
    }
    let w = WorkerId::new();
    for (expected, more) in [(early, true), (middle, true), (late, false)] {
        let one = store.recover(org, ep.id, window(0, None, 1), t(33)).await.unwrap().unwrap();
        assert_eq!((one.queued, one.more), (1, more));
        let got = claim(store, w, 10, t(33)).await;
        assert_eq!(got.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![expected]);
    }
}

/// `recover` queues the failed deliveries of an enabled endpoint whose event lies in the
/// window, oldest first, at most `limit` per call with `more` telling whether some remain;
/// failed events become `pending` again and are delivered by the queued deliveries.
/// A disabled endpoint recovers nothing; foreign ids answer `None`; replay and deletion
/// forget failed deliveries.
pub async fn recover_requeues_failed_deliveries<S: EventStore>(store: &S) {
    let (org, stranger) = (new_org(store).await, new_org(store).await);
    let ep = endpoint(store, org, None, t(0)).await;
    let w = WorkerId::new();
    // e0 fails by exhausted retries; e1..e3 are stranded by disabling; e4 arrives while the
    // endpoint is disabled; e5 is outside the window.
    let e0 = insert_one(store, org, "x", t(1)).await;
    let d0 = claim_one(store, w, t(1)).await;
    assert!(complete(store, completion(&d0, CompletionState::Failed, t(1))).await);
    let e1 = insert_one(store, org, "x", t(2)).await;
    let e2 = insert_one(store, org, "x", t(3)).await;
    let e3 = insert_one(store, org, "x", t(4)).await;
    store.update_endpoint(org, ep.id, &disable(), t(5)).await.unwrap().unwrap();
    let e4 = insert_one(store, org, "x", t(6)).await;
    let e5 = insert_one(store, org, "x", t(20)).await;
    assert_eq!(store.queue_depth().await.unwrap(), 0);

    let q = window(0, Some(10), 3);
    assert_eq!(store.recover(stranger, ep.id, q, t(21)).await.unwrap(), None, "foreign");
    assert_eq!(store.recover(org, EndpointId::new(), q, t(21)).await.unwrap(), None);
    let nothing = store.recover(org, ep.id, q, t(21)).await.unwrap().unwrap();
    assert_eq!((nothing.queued, nothing.more), (0, false), "a disabled endpoint recovers nothing");
    assert_eq!(store.queue_depth().await.unwrap(), 0);

    store.update_endpoint(org, ep.id, &enable(), t(21)).await.unwrap().unwrap();
    let first = store.recover(org, ep.id, q, t(22)).await.unwrap().unwrap();
    assert_eq!((first.queued, first.more), (3, true));
    let got = claim(store, w, 10, t(22)).await;
    let mut ids: Vec<_> = got.iter().map(|d| d.event_id).collect();
    ids.sort();
    assert_eq!(ids, vec![e0, e1, e2], "oldest first");
    assert!(got.iter().all(|d| d.endpoint_id == ep.id && d.attempt == 1));
    assert_eq!(status(store, org, e1).await, EventStatus::Pending);
    for d in &got {
        assert!(complete(store, completion(d, CompletionState::Delivered, t(23))).await);
    }
    assert_eq!(status(store, org, e1).await, EventStatus::Delivered);
    assert_eq!(detail(store, org, e0).await.attempts.len(), 2, "history is kept");

    let second = store.recover(org, ep.id, q, t(24)).await.unwrap().unwrap();
    assert_eq!((second.queued, second.more), (2, false));
    let got = claim(store, w, 10, t(24)).await;
    let mut ids: Vec<_> = got.iter().map(|d| d.event_id).collect();
    ids.sort();
    assert_eq!(ids, vec![e3, e4]);
    let done = store.recover(org, ep.id, q, t(25)).await.unwrap().unwrap();
    assert_eq!((done.queued, done.more), (0, false), "recovered deliveries are not failed");
    assert_eq!(status(store, org, e5).await, EventStatus::Failed, "outside the window");

    // Replay forgets the failed delivery of e5 (the endpoint is enabled: a fresh one).
    assert_eq!(store.replay(org, e5, t(26)).await.unwrap(), Some(EventStatus::Pending));
    let open = store.recover(org, ep.id, window(0, None, 100), t(27)).await.unwrap().unwrap();
    assert_eq!(open.queued, 0, "replay superseded the failed delivery");

    // Deletion forgets failed deliveries (nothing left to recover, nothing queued).
    let gone = endpoint(store, org, Some("y"), t(30)).await;
    store.update_endpoint(org, gone.id, &disable(), t(30)).await.unwrap().unwrap();
    let y = insert(store, org, vec![record("y", t(31))], t(31)).await;
    assert!(matches!(y[0], InsertOutcome::Inserted { deliveries: 1, .. }), "only `ep`");
    let y = y[0].meta().id;
    assert_eq!(status(store, org, y).await, EventStatus::Failed);
    let replayed = store.replay(org, y, t(31)).await.unwrap();
    assert_eq!(replayed, Some(EventStatus::Failed), "a matching endpoint is still disabled");
    assert!(store.delete_endpoint(org, gone.id).await.unwrap());
    assert_eq!(store.recover(org, gone.id, window(0, None, 10), t(32)).await.unwrap(), None);
}

/// An event's `exclude_endpoint` gets neither a queued delivery nor, when disabled, a failed
/// one; every other matching endpoint is served as usual.
pub async fn excluded_endpoints_get_nothing<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let subject = endpoint(store, org, None, t(0)).await;
    let other = endpoint(store, org, None, t(0)).await;
    let mut about = record("triggers.endpoint.enabled", t(1));
    about.exclude_endpoint = Some(subject.id);
    let outcome = insert(store, org, vec![about], t(1)).await;
    assert!(matches!(outcome[0], InsertOutcome::Inserted { deliveries: 1, .. }));
    let d = claim_one(store, WorkerId::new(), t(1)).await;
    assert_eq!(d.endpoint_id, other.id);

    store.update_endpoint(org, subject.id, &disable(), t(2)).await.unwrap().unwrap();
    let mut about = record("triggers.endpoint.disabled", t(3));
    about.exclude_endpoint = Some(subject.id);
    let id = about.id;
    insert(store, org, vec![about], t(3)).await;
    assert_eq!(status(store, org, id).await, EventStatus::Pending, "no failed delivery");
    store.update_endpoint(org, subject.id, &enable(), t(4)).await.unwrap().unwrap();
    let none = store.recover(org, subject.id, window(0, None, 10), t(5)).await.unwrap().unwrap();
    assert_eq!(none.queued, 0);
}

/// Inserts `n` events of `event_type` at `at`, in inserts of at most 100; returns their ids.
async fn insert_many<S: EventStore>(
    store: &S,
    org: crate::domain::OrganizationId,
    event_type: &str,
    n: usize,
    at: i64,
) -> Vec<crate::domain::EventId> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let count = (n - chunk * 100).min(100);
        let records = (0..count).map(|_| record(event_type, t(at))).collect();
        ids.extend(insert(store, org, records, t(at)).await.iter().map(inserted));
    }
    ids
}

/// Disabling fails a backlog larger than [`BACKLOG_BATCH`](crate::store::BACKLOG_BATCH)
/// entirely, through `update_endpoint`. A completion that disables an endpoint fails at most
/// one batch: the rest stays outstanding, is never claimed, is listed by
/// `unfinished_disables`, and `finish_disabling` fails it with the completion's reason.
/// Enabling over such a rest fails it first (nothing queued before the disable is delivered
/// after it). `finish_disabling` changes nothing for an enabled, foreign or finished
/// endpoint.
pub async fn disabling_fails_a_large_backlog_in_batches<S: EventStore>(store: &S) {
    use crate::store::{DeliveryQuery, DeliveryState, DeliveryStatus, BACKLOG_BATCH};
    let n = BACKLOG_BATCH + 7;
    let (org, stranger) = (new_org(store).await, new_org(store).await);
    let gone = endpoint(store, org, Some("a.*"), t(0)).await;
    let patched = endpoint(store, org, Some("b.*"), t(0)).await;
    let revived = endpoint(store, org, Some("c.*"), t(0)).await;
    let bystander = endpoint(store, org, Some("d.*"), t(0)).await;
    let mut events = std::collections::HashMap::new();
    for (ty, at) in [("a.x", 1), ("b.x", 2), ("c.x", 2)] {
        events.insert(ty, insert_many(store, org, ty, n, at).await);
    }
    let kept = insert_one(store, org, "d.x", t(2)).await;
    assert_eq!(store.queue_depth().await.unwrap(), 3 * n as u64 + 1);

    // A completion disables `gone` (its own delivery retried): one batch at most is failed.
    let w = WorkerId::new();
    let first = claim_one(store, w, t(1)).await;
    assert_eq!(first.endpoint_id, gone.id, "only `a.x` deliveries are due at t(1)");
    let mut c = completion(&first, CompletionState::Retry { at: t(50) }, t(3));
    c.disable_endpoint = Some("410 Gone".into());
    assert!(complete(store, c).await);
    let left = store.queue_depth().await.unwrap() - (2 * n as u64 + 1);
    assert!(left >= (n - BACKLOG_BATCH) as u64, "at most one batch failed: {left} left");
    let unfinished = store.unfinished_disables().await.unwrap();
    assert_eq!(unfinished, vec![(org, gone.id)]);
    let claimed = claim(store, w, 100, t(100)).await;
    assert!(claimed.iter().all(|d| d.endpoint_id != gone.id), "a disabled endpoint was claimed");
    for d in &claimed {
        let released = store.release(d.id, d.lease_owner, d.attempt, None).await.unwrap();
        assert!(released);
    }

    assert_eq!(store.finish_disabling(stranger, gone.id, t(4)).await.unwrap(), 0, "foreign");
    assert_eq!(store.queue_depth().await.unwrap(), 2 * n as u64 + 1 + left, "nothing changed");
    assert_eq!(store.finish_disabling(org, gone.id, t(4)).await.unwrap(), left);
    assert_eq!(store.finish_disabling(org, gone.id, t(5)).await.unwrap(), 0, "finished");
    assert_eq!(store.finish_disabling(org, bystander.id, t(5)).await.unwrap(), 0, "enabled");
    assert_eq!(store.queue_depth().await.unwrap(), 2 * n as u64 + 1);
    assert_eq!(store.unfinished_disables().await.unwrap(), vec![]);
    for id in [events["a.x"][0], events["a.x"][n - 1]] {
        assert_eq!(status(store, org, id).await, EventStatus::Failed);
    }
    let query = DeliveryQuery { status: Some(DeliveryStatus::Failed), before: None, limit: 2000 };
    let failed = store.endpoint_deliveries(org, gone.id, &query).await.unwrap().unwrap();
    assert_eq!(failed.len(), n, "every delivery of `gone` is failed");
    for entry in &failed {
        let DeliveryState::Failed { reason, .. } = &entry.state else { panic!("{entry:?}") };
        assert_eq!(reason, "410 Gone", "the completion's reason, also for the later batches");
    }

    // Disabling through `update_endpoint` fails the whole backlog before it returns.
    let up = store.update_endpoint(org, patched.id, &disable(), t(6)).await.unwrap().unwrap();
    assert_eq!((up.was_enabled, up.failed), (true, n as u64));
    assert_eq!(store.queue_depth().await.unwrap(), n as u64 + 1);
    assert_eq!(status(store, org, events["b.x"][n - 1]).await, EventStatus::Failed);

    // Enabling over what a completion's disable left: failed first, then enabled.
    let second = claim(store, w, 100, t(7)).await;
    let to_revived = second.iter().find(|d| d.endpoint_id == revived.id).unwrap();
    let mut c = completion(to_revived, CompletionState::Failed, t(7));
    c.disable_endpoint = Some("failing for too long".into());
    assert!(complete(store, c).await);
    for d in second.iter().filter(|d| d.endpoint_id != revived.id) {
        assert!(store.release(d.id, d.lease_owner, d.attempt, None).await.unwrap());
    }
    let rest = store.queue_depth().await.unwrap() - 1;
    assert!(rest > 0, "a completion fails one batch at most");
    let back = store.update_endpoint(org, revived.id, &enable(), t(8)).await.unwrap().unwrap();
    assert!(!back.was_enabled && back.endpoint.enabled);
    assert_eq!(back.failed, rest, "enabling failed what the disable left");
    assert_eq!(store.queue_depth().await.unwrap(), 1, "only the bystander's delivery");
    assert_eq!(status(store, org, events["c.x"][n - 1]).await, EventStatus::Failed);
    let last = claim(store, w, 100, t(200)).await;
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].endpoint_id, last[0].event_id), (bystander.id, kept));
}

/// Deleting an endpoint whose backlog is larger than
/// [`BACKLOG_BATCH`](crate::store::BACKLOG_BATCH) (pending deliveries, failed ones and one in
/// flight) cancels and forgets all of it; events keep their status; the in-flight attempt is
/// still recorded when it ends; another endpoint keeps its deliveries; a foreign delete
/// changes nothing.
pub async fn deleting_cancels_a_large_backlog<S: EventStore>(store: &S) {
    use crate::store::BACKLOG_BATCH;
    let n = BACKLOG_BATCH + 7;
    let (org, stranger) = (new_org(store).await, new_org(store).await);
    let doomed = endpoint(store, org, Some("a.*"), t(0)).await;
    let kept = endpoint(store, org, Some("b.*"), t(0)).await;
    let failed = insert_many(store, org, "a.x", n, 1).await;
    store.update_endpoint(org, doomed.id, &disable(), t(2)).await.unwrap();
    store.update_endpoint(org, doomed.id, &enable(), t(2)).await.unwrap();
    let pending = insert_many(store, org, "a.x", n, 3).await;
    let other = insert_one(store, org, "b.x", t(4)).await;
    let w = WorkerId::new();
    let flying = claim_one(store, w, t(3)).await;
    assert_eq!(flying.endpoint_id, doomed.id);
    assert_eq!(store.queue_depth().await.unwrap(), n as u64 + 1);

    assert!(!store.delete_endpoint(stranger, doomed.id).await.unwrap(), "foreign");
    assert_eq!(store.queue_depth().await.unwrap(), n as u64 + 1, "nothing changed");
    assert!(store.delete_endpoint(org, doomed.id).await.unwrap());
    assert_eq!(store.queue_depth().await.unwrap(), 1, "only the other endpoint's delivery");
    assert_eq!(store.endpoints(org).await.unwrap(), vec![kept.clone()]);
    assert_eq!(status(store, org, pending[n - 1]).await, EventStatus::Pending);
    assert_eq!(status(store, org, failed[n - 1]).await, EventStatus::Failed);
    let late = completion(&flying, CompletionState::Delivered, t(5));
    assert!(!complete(store, late.clone()).await, "cancelled");
    assert_eq!(detail(store, org, flying.event_id).await.attempts, vec![late.record]);
    let rest = claim(store, w, 100, t(10)).await;
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].event_id, rest[0].endpoint_id), (other, kept.id));
}

/// Switching a FIFO endpoint whose line is longer than
/// [`BACKLOG_BATCH`](crate::store::BACKLOG_BATCH) to parallel — through
/// `set_endpoint_ordering` and through `update_endpoint` — turns all of its line into
/// parallel deliveries: the whole backlog is claimable at once, beside the head in flight.
pub async fn switching_a_long_line_to_parallel<S: EventStore>(store: &S) {
    use crate::domain::webhook::DeliveryOrdering;
    use crate::store::BACKLOG_BATCH;
    let n = BACKLOG_BATCH + 7;
    let (org, stranger) = (new_org(store).await, new_org(store).await);
    let mut lines = Vec::new();
    for (filter, ty, at) in [("a.*", "a.x", 1), ("b.*", "b.x", 2)] {
        let ep = endpoint(store, org, Some(filter), t(0)).await;
        let fifo = DeliveryOrdering::Fifo;
        assert!(store.set_endpoint_ordering(org, ep.id, fifo).await.unwrap());
        let ids = insert_many(store, org, ty, n, at).await;
        lines.push((ep, ids));
    }
    let w = WorkerId::new();
    let heads = claim(store, w, 100, t(5)).await;
    assert_eq!(heads.len(), 2, "one head per line");
    assert!(claim(store, w, 100, t(5)).await.is_empty(), "the lines wait for their heads");

    let parallel = DeliveryOrdering::Parallel;
    let (set, patched) = (&lines[0].0, &lines[1].0);
    assert!(!store.set_endpoint_ordering(stranger, set.id, parallel).await.unwrap(), "foreign");
    assert!(claim(store, w, 100, t(5)).await.is_empty(), "nothing changed");
    assert!(store.set_endpoint_ordering(org, set.id, parallel).await.unwrap());
    let patch = EndpointPatch { ordering: Some(parallel), ..EndpointPatch::default() };
    let up = store.update_endpoint(org, patched.id, &patch, t(5)).await.unwrap().unwrap();
    assert_eq!(up.endpoint.ordering, parallel);

    // Every delivery of both lines is claimable now, the first and the last alike.
    let mut claimed = std::collections::HashSet::new();
    loop {
        let got = claim_capped(store, w, 500, t(6), (u32::MAX, u32::MAX)).await;
        if got.is_empty() {
            break;
        }
        claimed.extend(got.iter().map(|d| (d.endpoint_id, d.event_id)));
    }
    assert_eq!(claimed.len(), 2 * (n - 1), "all but the two heads in flight");
    for (ep, ids) in &lines {
        assert!(claimed.contains(&(ep.id, ids[1])) && claimed.contains(&(ep.id, ids[n - 1])));
    }
}

/// `CompletedAndClaimed::disabled` names an endpoint once, in the call that turns it off:
/// not for a stale completion; once for two disabling completions in one call, whose first
/// reason is kept (as across calls); and anew once it was enabled and is disabled again. An
/// empty claim (`limit` 0) claims nothing, not even a due delivery.
pub async fn disables_are_reported_by_the_call_that_makes_them<S: EventStore>(store: &S) {
    use crate::store::{Completion, Delivery};
    let org = new_org(store).await;
    let ep = endpoint(store, org, Some("x"), t(0)).await;
    let other = endpoint(store, org, Some("y"), t(0)).await;
    insert_one(store, org, "x", t(1)).await;
    insert_one(store, org, "x", t(1)).await;
    let w = WorkerId::new();
    let flying = claim(store, w, 10, t(2)).await;
    assert_eq!(flying.len(), 2);
    let waiting = insert_one(store, org, "y", t(3)).await;
    let nothing = ClaimRequest::new(WorkerId::new(), 0, LEASE, t(4));
    let disabling = |d: &Delivery, reason: &str, at: i64| -> Completion {
        let mut c = completion(d, CompletionState::Failed, t(at));
        c.disable_endpoint = Some(reason.into());
        c
    };

    let mut stale = disabling(&flying[0], "stale", 4);
    stale.lease_owner = WorkerId::new();
    let done = store.complete_and_claim(&[stale], nothing).await.unwrap();
    assert_eq!((done.applied, done.disabled), (vec![false], vec![]), "a stale completion");
    assert!(store.endpoint(org, ep.id).await.unwrap().unwrap().enabled);

    let both = [disabling(&flying[0], "first", 4), disabling(&flying[1], "second", 4)];
    let done = store.complete_and_claim(&both, nothing).await.unwrap();
    assert!(done.applied[0]);
    assert_eq!(done.disabled, vec![ep.id], "reported once");
    assert!(done.claimed.unwrap().is_empty(), "an empty claim claims nothing");
    let now = store.endpoint(org, ep.id).await.unwrap().unwrap();
    assert_eq!((now.enabled, now.disabled_reason.as_deref()), (false, Some("first")));
    let due = claim(store, w, 10, t(5)).await;
    assert_eq!(due.len(), 1, "the due delivery was left for a real claim");
    assert_eq!((due[0].event_id, due[0].endpoint_id), (waiting, other.id));

    store.update_endpoint(org, ep.id, &enable(), t(6)).await.unwrap().unwrap();
    insert_one(store, org, "x", t(7)).await;
    let again = claim(store, w, 10, t(8)).await;
    assert_eq!(again.len(), 1);
    let done = store.complete_and_claim(&[disabling(&again[0], "again", 9)], nothing).await;
    assert_eq!(done.unwrap().disabled, vec![ep.id], "a new disable is reported anew");
}

/// A completion that disables an endpoint which another completion already disabled (its
/// delivery still outstanding, left by the first one's batch) keeps the first reason, and
/// only the first call reports the endpoint as disabled by it
/// (`CompletedAndClaimed::disabled`, through `complete_and_claim` with an empty claim).
pub async fn a_disabled_endpoint_keeps_its_first_reason<S: EventStore>(store: &S) {
    use crate::store::{DeliveryQuery, DeliveryStatus, BACKLOG_BATCH};
    let n = BACKLOG_BATCH + 10;
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    insert_many(store, org, "x", n, 1).await;
    let w = WorkerId::new();
    let mut flying = Vec::new();
    loop {
        let got = claim_capped(store, w, 500, t(2), (u32::MAX, u32::MAX)).await;
        if got.is_empty() {
            break;
        }
        flying.extend(got);
    }
    assert_eq!(flying.len(), n, "all in flight");
    let nothing = ClaimRequest::new(WorkerId::new(), 0, LEASE, t(3));
    let mut first = completion(&flying[0], CompletionState::Failed, t(3));
    first.disable_endpoint = Some("410 Gone".into());
    let done = store.complete_and_claim(&[first], nothing).await.unwrap();
    assert_eq!((done.applied, done.disabled), (vec![true], vec![ep.id]), "this call disabled it");
    assert!(done.claimed.unwrap().is_empty(), "an empty claim claims nothing");

    // At most one batch was failed: some in-flight deliveries are still outstanding.
    let query = DeliveryQuery { status: Some(DeliveryStatus::InFlight), before: None, limit: 10 };
    let left = store.endpoint_deliveries(org, ep.id, &query).await.unwrap().unwrap();
    let survivor = flying.iter().find(|d| left.iter().any(|e| e.event_id == d.event_id));
    let mut second = completion(survivor.unwrap(), CompletionState::Failed, t(4));
    second.disable_endpoint = Some("failing for too long".into());
    let done = store.complete_and_claim(&[second], nothing).await.unwrap();
    assert_eq!(done.applied, vec![true], "its delivery was still outstanding");
    assert_eq!(done.disabled, vec![], "already disabled: not this call's disable");
    let now = store.endpoint(org, ep.id).await.unwrap().unwrap();
    assert_eq!(now.disabled_reason.as_deref(), Some("410 Gone"), "the first reason stays");
    let made = announcements(store, org).await;
    assert_eq!(made.len(), 1, "announced by the first only: {made:?}");
    assert_eq!(made[0].1["reason"], "410 Gone");
}

/// The operational events of `org` (`triggers.endpoint.*`), oldest first: type, payload
/// fields `endpoint_id`, `enabled`, `reason`, and creation time.
async fn announcements<S: EventStore>(
    store: &S,
    org: crate::domain::OrganizationId,
) -> Vec<(String, serde_json::Value, crate::clock::Timestamp)> {
    let mut found = Vec::new();
    for status in [EventStatus::Pending, EventStatus::Delivered, EventStatus::Failed] {
        for id in super::support::list_all(store, org, status, Some("triggers.endpoint.*")).await {
            let event = detail(store, org, id).await.event;
            let payload: serde_json::Value = serde_json::from_str(event.payload.get()).unwrap();
            assert_eq!(event.status, EventStatus::Pending, "{payload}: excluded from its subject");
            found.push((event.event_type, payload, event.created_at));
        }
    }
    found.sort_by_key(|(_, _, at)| *at);
    found
}

/// Operational events (`store::operational`): the write that changes an endpoint's
/// `enabled` inserts one event about it — a completion that disables it, a patch that
/// disables or enables it — into the organization's inbox and to its other matching
/// endpoints, never to the endpoint itself (one matching everything: otherwise, disabled, it
/// would make the event `failed`). A stale completion, a second disabling completion, a
/// disabling completion for an endpoint already disabled and a patch that leaves `enabled`
/// as it was insert none. With nothing of the organization held by others, no announcement
/// is left waiting (`announcement_backlog`).
pub async fn endpoint_changes_are_announced_by_the_write_that_makes_them<S: EventStore>(store: &S) {
    use crate::store::operational::{OPERATIONAL_DISABLED, OPERATIONAL_ENABLED};
    use crate::store::{Completion, Delivery};
    let org = new_org(store).await;
    let ep = endpoint(store, org, None, t(0)).await;
    let watcher = endpoint(store, org, Some("triggers.endpoint.*"), t(0)).await;
    insert_one(store, org, "x", t(1)).await;
    insert_one(store, org, "x", t(1)).await;
    insert_one(store, org, "x", t(1)).await;
    let w = WorkerId::new();
    let flying = claim(store, w, 10, t(2)).await;
    assert_eq!(flying.len(), 3);
    let nothing = ClaimRequest::new(WorkerId::new(), 0, LEASE, t(3));
    let disabling = |d: &Delivery, reason: &str, at: i64| -> Completion {
        let mut c = completion(d, CompletionState::Failed, t(at));
        c.disable_endpoint = Some(reason.into());
        c
    };
    let id = serde_json::json!(ep.id);

    let mut stale = disabling(&flying[0], "stale", 3);
    stale.lease_owner = WorkerId::new();
    assert_eq!(store.complete(&[stale]).await.unwrap(), [false]);
    assert!(announcements(store, org).await.is_empty(), "a stale completion announces nothing");

    let both = [disabling(&flying[0], "first", 4), disabling(&flying[1], "second", 4)];
    assert!(store.complete_and_claim(&both, nothing).await.unwrap().applied[0]);
    let made = announcements(store, org).await;
    assert_eq!(made.len(), 1, "one announcement per disable: {made:?}");
    assert_eq!(made[0].0, OPERATIONAL_DISABLED);
    assert_eq!(made[0].1["endpoint_id"], id);
    assert_eq!((&made[0].1["enabled"], &made[0].1["reason"]), (&false.into(), &"first".into()));
    assert_eq!(made[0].1["url"], serde_json::json!(ep.url));
    assert_eq!(made[0].2, t(4), "created at the attempt's time");
    // The third delivery's answer comes after the disable (the disable failed it: stale).
    store.complete(&[disabling(&flying[2], "late", 5)]).await.unwrap();
    assert_eq!(announcements(store, org).await.len(), 1, "already disabled: no announcement");
    let told = claim(store, w, 10, t(6)).await;
    let targets: Vec<EndpointId> = told.iter().map(|d| d.endpoint_id).collect();
    assert_eq!(targets, [watcher.id], "delivered to the watcher only");
    assert_eq!(told[0].event_type, OPERATIONAL_DISABLED);

    let rename = EndpointPatch {
        url: Some("https://hooks.test/renamed".into()),
        ..EndpointPatch::default()
    };
    store.update_endpoint(org, ep.id, &rename, t(7)).await.unwrap().unwrap();
    store.update_endpoint(org, ep.id, &disable(), t(7)).await.unwrap().unwrap();
    assert_eq!(announcements(store, org).await.len(), 1, "no change of `enabled`");

    store.update_endpoint(org, ep.id, &enable(), t(8)).await.unwrap().unwrap();
    store.update_endpoint(org, ep.id, &enable(), t(9)).await.unwrap().unwrap();
    store.update_endpoint(org, ep.id, &disable(), t(10)).await.unwrap().unwrap();
    let made = announcements(store, org).await;
    let kinds: Vec<(&str, &serde_json::Value)> =
        made.iter().map(|(kind, p, _)| (kind.as_str(), &p["reason"])).collect();
    let by_request = serde_json::json!(DISABLED_BY_REQUEST);
    assert_eq!(
        kinds,
        [
            (OPERATIONAL_DISABLED, &"first".into()),
            (OPERATIONAL_ENABLED, &serde_json::Value::Null),
            (OPERATIONAL_DISABLED, &by_request),
        ]
    );
    assert_eq!((made[1].2, made[2].2), (t(8), t(10)));
    assert_eq!(made[1].1["url"], "https://hooks.test/renamed", "the endpoint as it is now");
    assert!(made.iter().all(|(_, p, _)| p["endpoint_id"] == id));
    let backlog = store.announcement_backlog().await.unwrap();
    assert_eq!(backlog, Default::default(), "nothing held: every call published its own");
}
