//! Event insertion and lookup, and dedup.

use std::sync::Arc;

use crate::domain::event::{Event, EventDetail, EventMeta, EventRecord, EventStatus};
use crate::domain::webhook::DeliveryOrdering;
use crate::domain::{EventId, WorkerId};
use crate::store::{CompletionState, EventStore, InsertOutcome};

use super::support::{
    claim, complete, completion, dedup_record, detail, endpoint, endpoint_with, insert, inserted,
    just_before, list_all, new_org, plus, record_with, sorted, t, WINDOW,
};

/// Inserted events come back exactly: payload text byte for byte (spacing, key order, escapes
/// and number spelling kept), timestamps to the microsecond, `pending`, no attempts. Unknown
/// and foreign ids find nothing.
pub async fn events_round_trip_exactly<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let other = new_org(store).await;
    let now = t(7);
    let payloads = [
        r#"{"b": 1,  "a" : [1.50, "é\u00e9\"", {"nested": null}], "big": 123456789012345678901234567890}"#,
        r#"[ true,false ]"#,
        r#""just a string""#,
        "-0.0e+10",
        "null",
    ];
    let records: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dedup = format!("dedup-{i} ünïcode");
            record_with(&format!("type.{i}:v1_x-y"), p, (i % 2 == 0).then_some(&*dedup), now)
        })
        .collect();
    let expected: Vec<Event> = records
        .iter()
        .map(|r| Event {
            id: r.id,
            organization_id: org,
            event_type: r.event_type.clone(),
            payload: r.payload.clone(),
            dedup_id: r.dedup_id.clone(),
            status: EventStatus::Pending,
            created_at: now,
            delivered_at: None,
        })
        .collect();
    let outcomes = insert(store, org, records, now).await;
    for (outcome, event) in outcomes.iter().zip(&expected) {
        let meta =
            EventMeta { id: event.id, event_type: event.event_type.clone(), created_at: now };
        assert_eq!(outcome, &InsertOutcome::Inserted { meta, deliveries: 0 });
        let got = detail(store, org, event.id).await;
        assert_eq!(got.event.payload.get(), event.payload.get(), "payload text must be kept");
        assert_eq!(got, EventDetail { event: event.clone(), attempts: Vec::new() });
        assert_eq!(store.event(other, event.id).await.unwrap(), None, "foreign event visible");
    }
    assert_eq!(store.event(org, EventId::new()).await.unwrap(), None);
    let ids: Vec<_> = expected.iter().map(|e| e.id).collect();
    assert_eq!(list_all(store, org, EventStatus::Pending, None).await, sorted(ids));
}

/// A dedup id seen less than the window ago stores nothing and answers `Duplicate` with the
/// original's id, type and time.
pub async fn dedup_inside_the_window_returns_the_original<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let first = dedup_record("order.created", "order-1", t(0));
    let original =
        EventMeta { id: first.id, event_type: first.event_type.clone(), created_at: t(0) };
    assert_eq!(inserted(&insert(store, org, vec![first], t(0)).await[0]), original.id);

    for now in [t(0), t(1), just_before(plus(t(0), WINDOW))] {
        let again = dedup_record("order.updated", "order-1", now);
        let again_id = again.id;
        let outcome = insert(store, org, vec![again], now).await;
        assert_eq!(outcome, vec![InsertOutcome::Duplicate(original.clone())], "at {now}");
        assert_eq!(store.event(org, again_id).await.unwrap(), None, "a duplicate was stored");
    }
    assert_eq!(list_all(store, org, EventStatus::Pending, None).await, vec![original.id]);
}

/// A dedup entry as old as the window (`created_at + window <= now`) is taken over: the next
/// insert with that id is stored, and later ones are duplicates of the new event.
pub async fn dedup_entry_outside_the_window_is_taken_over<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let first = inserted(&insert(store, org, vec![dedup_record("a", "k", t(0))], t(0)).await[0]);
    let later = plus(t(0), WINDOW);
    let second = inserted(&insert(store, org, vec![dedup_record("b", "k", later)], later).await[0]);
    assert_ne!(first, second);

    let again_at = plus(later, std::time::Duration::from_secs(1));
    let outcome = insert(store, org, vec![dedup_record("c", "k", again_at)], again_at).await;
    let meta = EventMeta { id: second, event_type: "b".into(), created_at: later };
    assert_eq!(outcome, vec![InsertOutcome::Duplicate(meta)]);
    assert_eq!(list_all(store, org, EventStatus::Pending, None).await, sorted(vec![first, second]));
}

/// Inside one batch, a repeated dedup id is a duplicate of its first occurrence; events
/// without a dedup id are never duplicates.
pub async fn dedup_applies_inside_one_batch<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    let now = t(3);
    let plain = |ty: &str| record_with(ty, "{}", None, now);
    let batch = vec![
        dedup_record("a", "k1", now),
        dedup_record("b", "k2", now),
        dedup_record("c", "k1", now),
        plain("d"),
        plain("d"),
        dedup_record("f", "k2", now),
    ];
    let (a, b) = (batch[0].id, batch[1].id);
    let (c, f) = (batch[2].id, batch[5].id);
    let (d1, d2) = (batch[3].id, batch[4].id);
    let outcomes = insert(store, org, batch, now).await;
    let meta = |id, ty: &str| EventMeta { id, event_type: ty.into(), created_at: now };
    let ins = |id, ty: &str| InsertOutcome::Inserted { meta: meta(id, ty), deliveries: 0 };
    assert_eq!(
        outcomes,
        vec![
            ins(a, "a"),
            ins(b, "b"),
            InsertOutcome::Duplicate(meta(a, "a")),
            ins(d1, "d"),
            ins(d2, "d"),
            InsertOutcome::Duplicate(meta(b, "b")),
        ]
    );
    assert_eq!(store.event(org, c).await.unwrap(), None);
    assert_eq!(store.event(org, f).await.unwrap(), None);
    assert_eq!(list_all(store, org, EventStatus::Pending, None).await, sorted(vec![a, b, d1, d2]));
}

/// A batch of 100 events is decided exactly as 100 single inserts in order would be, however
/// a store groups its writes: repeated dedup ids far apart, ids recorded before the batch
/// (inside and outside the window), events without an id; and each stored event gets its own
/// payload and its own deliveries, to a parallel and a FIFO endpoint (in event order).
pub async fn a_large_batch_is_decided_like_single_inserts<S: EventStore>(store: &S) {
    let org = new_org(store).await;
    endpoint(store, org, Some("hook.*"), t(0)).await;
    let fifo = endpoint_with(store, org, Some("hook.*"), DeliveryOrdering::Fifo, t(0)).await.id;
    let now = plus(t(0), WINDOW);
    insert(store, org, vec![dedup_record("expired", "old", t(0))], t(0)).await;
    let recorded = dedup_record("live", "live", just_before(now));
    let live =
        EventMeta { id: recorded.id, event_type: "live".into(), created_at: just_before(now) };
    insert(store, org, vec![recorded], just_before(now)).await;

    let batch: Vec<EventRecord> = (0..100)
        .map(|i| {
            // The first 35 carry only new ids (a store writing them together finds no
            // conflict); repeats, recorded ids and the expired one come later.
            let dedup_id = match i {
                _ if i % 10 == 0 => None,
                61 | 91 => Some("live".to_owned()),
                45 | 77 => Some("old".to_owned()),
                _ if i > 50 && i % 7 == 3 => Some(format!("repeat-{}", i % 3)),
                _ => Some(format!("unique-{i}")),
            };
            let ty = if i % 2 == 0 { format!("hook.{i}") } else { format!("other.{i}") };
            record_with(&ty, &format!(r#"{{"i":{i}}}"#), dedup_id.as_deref(), now)
        })
        .collect();

    // The reference: one by one, in order.
    let mut seen = std::collections::HashMap::from([("live".to_owned(), live.clone())]);
    let expected: Vec<InsertOutcome> = batch
        .iter()
        .map(|e| {
            let meta = EventMeta { id: e.id, event_type: e.event_type.clone(), created_at: now };
            if let Some(key) = &e.dedup_id {
                if let Some(original) = seen.get(key) {
                    return InsertOutcome::Duplicate(original.clone());
                }
                seen.insert(key.clone(), meta.clone());
            }
            let deliveries = if e.event_type.starts_with("hook.") { 2 } else { 0 };
            InsertOutcome::Inserted { meta, deliveries }
        })
        .collect();
    let payloads: std::collections::HashMap<EventId, String> =
        batch.iter().map(|e| (e.id, e.payload.get().to_owned())).collect();
    let outcomes = insert(store, org, batch, now).await;
    assert_eq!(outcomes, expected);
    let duplicate_of = |id| {
        expected.iter().filter(|o| matches!(o, InsertOutcome::Duplicate(m) if m.id == id)).count()
    };
    assert_eq!(duplicate_of(live.id), 2, "the id recorded inside the window");
    assert_eq!(duplicate_of(expected[45].meta().id), 1, "the expired id, taken over by event 45");

    let stored: Vec<EventId> = expected
        .iter()
        .filter_map(|o| match o {
            InsertOutcome::Inserted { meta, .. } => Some(meta.id),
            InsertOutcome::Duplicate(_) => None,
        })
        .collect();
    for id in payloads.keys() {
        let found = store.event(org, *id).await.unwrap();
        match stored.contains(id) {
            true => assert_eq!(
                found.map(|d| d.event.payload.get().to_owned()),
                Some(payloads[id].clone())
            ),
            false => assert!(found.is_none(), "a duplicate was stored"),
        }
    }

    // Every delivery carries its own event: claimed and completed until none is left.
    let (mut delivered, mut in_line) = (Vec::new(), Vec::new());
    loop {
        let got = claim(store, WorkerId::new(), 100, now).await;
        if got.is_empty() {
            break;
        }
        for d in got {
            assert_eq!(d.payload.get(), payloads[&d.event_id], "the delivery of another event");
            assert!(d.event_type.starts_with("hook."));
            assert!(complete(store, completion(&d, CompletionState::Delivered, now)).await);
            if d.endpoint_id == fifo {
                in_line.push(d.event_id);
            }
            delivered.push(d.event_id);
        }
    }
    let hooks: Vec<EventId> = expected
        .iter()
        .filter_map(|o| match o {
            InsertOutcome::Inserted { meta, deliveries: 2 } => Some(meta.id),
            _ => None,
        })
        .collect();
    assert_eq!(in_line, hooks, "the FIFO endpoint's line is in event order");
    assert_eq!(sorted(delivered), sorted([hooks.clone(), hooks].concat()));
}

/// Dedup is per organization: the same dedup id in two organizations stores two events.
pub async fn dedup_is_per_organization<S: EventStore>(store: &S) {
    let (org_a, org_b) = (new_org(store).await, new_org(store).await);
    let a = inserted(&insert(store, org_a, vec![dedup_record("x", "shared", t(0))], t(0)).await[0]);
    let b = inserted(&insert(store, org_b, vec![dedup_record("x", "shared", t(1))], t(1)).await[0]);
    assert_ne!(a, b);
    assert_eq!(list_all(store, org_a, EventStatus::Pending, None).await, vec![a]);
    assert_eq!(list_all(store, org_b, EventStatus::Pending, None).await, vec![b]);
}

/// Sixteen concurrent inserts of one dedup id (from different tasks, each its own call):
/// exactly one is `Inserted`, every call reports the winner's id, one event is stored.
pub async fn concurrent_dedup_has_exactly_one_winner<S: EventStore>(store: Arc<S>) {
    let org = new_org(&*store).await;
    let now = t(0);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let rec = dedup_record(&format!("race.{i}"), "race", now);
                store.insert_events(org, vec![rec], WINDOW, now).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    assert_eq!(outcomes.len(), 16);
    let winners: Vec<_> =
        outcomes.iter().filter(|o| matches!(o, InsertOutcome::Inserted { .. })).collect();
    assert_eq!(winners.len(), 1, "exactly one insert wins: {outcomes:?}");
    let winner = winners[0].meta().clone();
    for outcome in &outcomes {
        assert_eq!(outcome.meta(), &winner, "every call reports the winner");
    }
    assert_eq!(list_all(&*store, org, EventStatus::Pending, None).await, vec![winner.id]);
}
