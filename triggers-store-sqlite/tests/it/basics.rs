//! Events, dedup, the inbox, ack, replay, stats, retention and backpressure.

use std::time::Duration;

use triggers_core::store::{DeliveryQueue, EndpointStore, EventLog, InsertOutcome, ListQuery};
use triggers_core::{EventStatus, StoreError, TypeGlob};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::{fresh, insert_one, new_endpoint, new_org, raw, record, t, temp_db, WINDOW};

#[tokio::test]
async fn payloads_round_trip_byte_for_byte() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    let payload = r#"{ "b": 2,  "a": [1, 2.50, "ü\u00e9"], "z": null }"#;
    let rec = record("user.created", payload, Some("k1"), t(1));
    let id = rec.id;
    store.insert_events(org, vec![rec], WINDOW, t(1)).await.unwrap();
    let detail = store.event(org, id).await.unwrap().unwrap();
    assert_eq!(detail.event.payload.get(), payload);
    assert_eq!(detail.event.created_at, t(1));
    assert_eq!(detail.event.dedup_id.as_deref(), Some("k1"));
    assert_eq!(detail.event.status, EventStatus::Pending);
    // Another organization sees nothing.
    let other = new_org(&store).await;
    assert!(store.event(other, id).await.unwrap().is_none());
}

#[tokio::test]
async fn dedup_holds_within_the_window_and_across_reopen_then_expires() {
    let (dir, path) = temp_db();
    let store = SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    let org = new_org(&store).await;
    let a = record("t", "1", Some("same"), t(0));
    let b = record("t", "2", Some("same"), t(0));
    let out = store.insert_events(org, vec![a.clone(), b], WINDOW, t(0)).await.unwrap();
    assert!(matches!(&out[0], InsertOutcome::Inserted { meta, .. } if meta.id == a.id));
    assert!(matches!(&out[1], InsertOutcome::Duplicate(meta) if meta.id == a.id));
    drop(store);

    let store = SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    let just_inside = t(24 * 3600 - 1);
    let c = record("t", "3", Some("same"), just_inside);
    let out = store.insert_events(org, vec![c], WINDOW, just_inside).await.unwrap();
    assert!(
        matches!(&out[0], InsertOutcome::Duplicate(meta) if meta.id == a.id && meta.created_at == t(0))
    );
    // At exactly created_at + window the entry has expired and is taken over.
    let d = record("t", "4", Some("same"), t(24 * 3600));
    let out = store.insert_events(org, vec![d.clone()], WINDOW, t(24 * 3600)).await.unwrap();
    assert!(matches!(&out[0], InsertOutcome::Inserted { meta, .. } if meta.id == d.id));
    let e = record("t", "5", Some("same"), t(24 * 3600 + 5));
    let out = store.insert_events(org, vec![e], WINDOW, t(24 * 3600 + 5)).await.unwrap();
    assert!(matches!(&out[0], InsertOutcome::Duplicate(meta) if meta.id == d.id));
    // Dedup ids are per organization.
    let other = new_org(&store).await;
    let f = record("t", "6", Some("same"), t(24 * 3600 + 5));
    let out = store.insert_events(other, vec![f], WINDOW, t(24 * 3600 + 5)).await.unwrap();
    assert!(matches!(out[0], InsertOutcome::Inserted { .. }));
    drop(dir);
}

/// The write-ahead log's largest size after `n` single-event commits with `checkpoint_pages`.
async fn wal_size_after_commits(checkpoint_pages: u32, n: usize) -> u64 {
    let (_dir, path) = temp_db();
    let config = SqliteConfig { checkpoint_pages, ..SqliteConfig::default() };
    let store = SqliteStore::open(&path, config).unwrap();
    let org = new_org(&store).await;
    for i in 0..n {
        let rec = record("t", &format!("{{\"n\":{i}}}"), Some(&i.to_string()), t(0));
        store.insert_events(org, vec![rec], WINDOW, t(0)).await.unwrap();
    }
    let mut wal = path.into_os_string();
    wal.push("-wal");
    std::fs::metadata(wal).unwrap().len()
}

#[tokio::test]
async fn the_log_is_checkpointed_at_checkpoint_pages() {
    // Each commit writes a few pages; a checkpoint lets the log start over from the top, so
    // its file never grows much beyond `checkpoint_pages`.
    let small = wal_size_after_commits(8, 400).await;
    let large = wal_size_after_commits(4000, 400).await;
    assert!(small < 64 * 4096, "with 8 pages the log reached {small} bytes");
    assert!(large > 4 * small, "with 4000 pages the log reached only {large} bytes");
}

#[tokio::test]
async fn concurrent_identical_dedup_ids_store_one_event() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let rec = record("t", &i.to_string(), Some("race"), t(0));
                store.insert_events(org, vec![rec], WINDOW, t(0)).await.unwrap().remove(0)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut inserted = 0;
    for task in tasks {
        let out = task.await.unwrap();
        inserted += matches!(out, InsertOutcome::Inserted { .. }) as usize;
        ids.insert(out.meta().id);
    }
    assert_eq!(inserted, 1);
    assert_eq!(ids.len(), 1, "every caller gets the winner's id");
    assert_eq!(store.stats(org).await.unwrap().pending, 1);
}

#[tokio::test]
async fn inbox_pages_in_id_order_with_case_sensitive_globs() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    let mut ids = Vec::new();
    for (i, ty) in
        ["user.created", "User.created", "user_x", "userAx", "order.paid"].iter().enumerate()
    {
        ids.push(insert_one(&store, org, ty, t(i as i64)).await);
    }
    let list = |glob: Option<&str>, limit, after| {
        let store = store.clone();
        let q = ListQuery {
            status: EventStatus::Pending,
            type_glob: glob.map(|g| TypeGlob::parse(g).unwrap()),
            limit,
            after,
            max_bytes: u64::MAX,
        };
        async move { store.list_events(org, &q).await.unwrap() }
    };
    let page = list(Some("user.*"), 10, None).await;
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[0]]);
    // `_` is a literal, not a single-character wildcard.
    let page = list(Some("user_*"), 10, None).await;
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2]]);
    // Pages of two: every event exactly once, in id order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = list(None, 2, after).await;
        seen.extend(page.items.iter().map(|e| e.id));
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let last = list(None, 5, None).await;
    assert_eq!(last.items.len(), 5);
    assert_eq!(last.next_after, None, "no event follows an exactly full last page");
}

#[tokio::test]
async fn ack_replay_and_stats() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    let a = insert_one(&store, org, "t", t(0)).await;
    let b = insert_one(&store, org, "t", t(0)).await;
    let unknown = triggers_core::EventId::new();
    let out = store.ack(org, &[a, a, unknown], t(5)).await.unwrap();
    assert_eq!(out.acknowledged, vec![a]);
    assert_eq!(out.not_found, vec![unknown]);
    // Idempotent: the first delivery time stays.
    store.ack(org, &[a], t(9)).await.unwrap();
    let ev = store.event(org, a).await.unwrap().unwrap().event;
    assert_eq!((ev.status, ev.delivered_at), (EventStatus::Delivered, Some(t(5))));
    let s = store.stats(org).await.unwrap();
    assert_eq!((s.pending, s.delivered, s.failed, s.in_flight), (1, 1, 0, 0));

    store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    assert_eq!(store.replay(org, a, t(10)).await.unwrap(), Some(EventStatus::Pending));
    let ev = store.event(org, a).await.unwrap().unwrap().event;
    assert_eq!((ev.status, ev.delivered_at), (EventStatus::Pending, None));
    assert_eq!(store.queue_depth().await.unwrap(), 1, "replay queued one delivery");
    let other = new_org(&store).await;
    assert_eq!(store.replay(other, b, t(10)).await.unwrap(), None);
    assert_eq!(store.ack(other, &[b], t(10)).await.unwrap().not_found, vec![b]);
}

#[tokio::test]
async fn purge_deletes_only_old_delivered_events_and_old_dedup_ids() {
    let (_dir, path) = temp_db();
    let config = SqliteConfig {
        retention: Some(Duration::from_secs(3600)),
        dedup_retention: Duration::from_secs(2 * 3600),
        purge_batch: 2,
        ..SqliteConfig::default()
    };
    let store = SqliteStore::open(&path, config).unwrap();
    let org = new_org(&store).await;
    let mut old = Vec::new();
    for i in 0..5 {
        let rec = record("t", "1", Some(&format!("d{i}")), t(i));
        old.push(rec.id);
        store.insert_events(org, vec![rec], WINDOW, t(i)).await.unwrap();
    }
    let pending_old = insert_one(&store, org, "t", t(0)).await;
    let recent = insert_one(&store, org, "t", t(3000)).await;
    store.ack(org, &old, t(3000)).await.unwrap();
    store.ack(org, &[recent], t(3000)).await.unwrap();

    let report = store.purge(t(3600 + 10)).await.unwrap();
    assert_eq!(report.events, 5);
    assert_eq!(report.dedup_ids, 0, "dedup ids are younger than dedup_retention");
    for id in &old {
        assert!(store.event(org, *id).await.unwrap().is_none());
    }
    assert!(store.event(org, pending_old).await.unwrap().is_some());
    assert!(store.event(org, recent).await.unwrap().is_some());
    // A purged event's dedup id still answers duplicates inside the window.
    let again = record("t", "1", Some("d0"), t(3700));
    let out = store.insert_events(org, vec![again], WINDOW, t(3700)).await.unwrap();
    assert!(matches!(&out[0], InsertOutcome::Duplicate(m) if m.id == old[0]));

    let report = store.purge(t(3 * 3600)).await.unwrap();
    assert_eq!(report.dedup_ids, 5);
    let n: i64 = raw(&path).query_row("SELECT count(*) FROM dedup", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_write_queue_is_overloaded_at_once_and_nothing_is_stored() {
    let (_dir, path) = temp_db();
    let config = SqliteConfig {
        writer_queue: 1,
        max_batch: 1,
        busy_timeout: Duration::from_secs(60),
        ..SqliteConfig::default()
    };
    let store = SqliteStore::open(&path, config).unwrap();
    let org = new_org(&store).await;
    // Another connection holds the write lock: the writer stalls in BEGIN IMMEDIATE.
    let lock = raw(&path);
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..10 {
        let (store, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            let rec = record("t", &i.to_string(), None, t(0));
            let _ = tx.send(store.insert_events(org, vec![rec], WINDOW, t(0)).await);
        });
    }
    drop(tx);
    // At most one request is in the writer's hands and one queued: eight are refused at once.
    let mut overloaded = 0;
    while overloaded < 8 {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(Err(StoreError::Overloaded(_)))) => overloaded += 1,
            other => panic!("expected Overloaded while the writer is stalled, got {other:?}"),
        }
    }
    lock.execute_batch("COMMIT").unwrap();
    let mut ok = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Ok(_) => ok += 1,
            Err(StoreError::Overloaded(_)) => overloaded += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok + overloaded, 10);
    assert!(ok >= 1);
    assert_eq!(store.stats(org).await.unwrap().pending, ok as u64);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_request_does_not_fail_its_batch() {
    let (_dir, path) = temp_db();
    let config = SqliteConfig {
        max_value_len: Some(4096),
        busy_timeout: Duration::from_secs(60),
        ..SqliteConfig::default()
    };
    let store = SqliteStore::open(&path, config).unwrap();
    let org = new_org(&store).await;
    let lock = raw(&path);
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let big = format!("\"{}\"", "x".repeat(10_000));
    let payloads = ["1".to_owned(), big, "3".to_owned(), "4".to_owned()];
    let tasks: Vec<_> = payloads
        .into_iter()
        .map(|p| {
            let store = store.clone();
            tokio::spawn(async move {
                let rec = record("t", &p, None, t(0));
                store.insert_events(org, vec![rec], WINDOW, t(0)).await
            })
        })
        .collect();
    // Let every task queue its request while the writer is stalled, so they share batches.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    lock.execute_batch("COMMIT").unwrap();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(matches!(results[1], Err(StoreError::InvalidInput(_))), "{:?}", results[1]);
    for i in [0, 2, 3] {
        assert!(results[i].is_ok(), "request {i}: {:?}", results[i]);
    }
    assert_eq!(store.stats(org).await.unwrap().pending, 3);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn the_purge_task_applies_the_configured_retention() {
    let (_dir, path) = temp_db();
    let config =
        SqliteConfig { retention: Some(Duration::from_secs(60)), ..SqliteConfig::default() };
    let store = SqliteStore::open(&path, config).unwrap();
    let org = new_org(&store).await;
    let id = insert_one(&store, org, "t", t(0)).await;
    store.ack(org, &[id], t(1)).await.unwrap();
    let clock = triggers_core::ManualClock::at(t(30));
    let task =
        store.spawn_purge_task(std::sync::Arc::new(clock.clone()), Duration::from_millis(10));
    // Inside the retention period nothing goes; once the clock passes it, the event does.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.event(org, id).await.unwrap().is_some());
    clock.set(t(61));
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.event(org, id).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the purge task deleted the event");
    task.abort();
}

/// Inserts add to the pending count per writer transaction: a request that fails inside a
/// shared batch (a stored id) takes its events out of the count with its writes, the others
/// keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counts_leave_out_failed_requests_of_a_shared_batch() {
    let (_dir, store) = fresh();
    let store = std::sync::Arc::new(store);
    let org = new_org(&store).await;
    let taken = record("taken", "{}", None, t(1));
    store.insert_events(org, vec![taken.clone()], WINDOW, t(1)).await.unwrap();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            // Every third call repeats a stored id: the insert fails.
            let events = if i % 3 == 0 {
                vec![record("fresh", "{}", None, t(2)), taken.clone()]
            } else {
                vec![record("fresh", "{}", None, t(2)), record("fresh", "{}", None, t(2))]
            };
            tokio::spawn(async move { store.insert_events(org, events, WINDOW, t(2)).await })
        })
        .collect();
    let mut failed = 0;
    for call in calls {
        failed += usize::from(call.await.unwrap().is_err());
    }
    assert_eq!(failed, 14, "the calls with a stored id");
    let pending = 1 + 2 * (40 - 14) as u64;
    assert_eq!(store.stats(org).await.unwrap().pending, pending);
    assert_eq!(store.pending_events(org).await.unwrap(), pending);
}
