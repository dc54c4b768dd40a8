//! What survives a reopen: events, pending deliveries, leases; expired leases are reclaimed.

use std::time::Duration;

use triggers_core::store::{ClaimRequest, DeliveryQueue, EndpointStore, EventLog};
use triggers_core::WorkerId;

use crate::{insert_one, new_endpoint, new_org, open, raw, t, temp_db};

#[tokio::test]
async fn deliveries_and_leases_survive_a_reopen_and_expired_leases_are_reclaimed() {
    let (_dir, path) = temp_db();
    let lease = Duration::from_secs(30);
    let store = open(&path);
    let org = new_org(&store).await;
    store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    let ids = [
        insert_one(&store, org, "a", t(0)).await,
        insert_one(&store, org, "b", t(1)).await,
        insert_one(&store, org, "c", t(2)).await,
    ];
    let dead = WorkerId::new();
    let leased = store.claim(ClaimRequest::new(dead, 1, lease, t(3))).await.unwrap();
    assert_eq!(leased[0].event_id, ids[0]);
    drop(store);

    let store = open(&path);
    assert_eq!(store.queue_depth().await.unwrap(), 3);
    let s = store.stats(org).await.unwrap();
    assert_eq!((s.pending, s.in_flight), (3, 1));
    let w = WorkerId::new();
    // The lease is still live after the restart: only the other two are due.
    let got = store.claim(ClaimRequest::new(w, 10, lease, t(10))).await.unwrap();
    assert_eq!(got.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![ids[1], ids[2]]);
    drop(store);

    // After another restart, past the dead worker's lease, its delivery is claimed again.
    let store = open(&path);
    let got = store.claim(ClaimRequest::new(w, 10, lease, t(33))).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].event_id, got[0].attempt, got[0].lease_owner), (ids[0], 2, w));
    // The dead worker's fenced calls are stale.
    assert!(!store.release(leased[0].id, dead, 1, None).await.unwrap());
    assert!(!store.extend_lease(leased[0].id, dead, 1, t(100)).await.unwrap());
}

/// The node id lives in the file: the same after a reopen, another for another file. A
/// restarted Ingestor delivers what the crashed run had leased at once, although the clock
/// never reaches the end of that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_the_crashed_runs_leases_at_once() {
    use std::sync::Arc;
    use triggers_core::{
        FnDeliverer, Ingestor, IngestorConfig, ManualClock, Outcome, WorkerConfig,
    };

    let (_dir, path) = temp_db();
    let store = open(&path);
    let node = store.node_id().expect("a SQLite store has a node id");
    let (_other_dir, other) = crate::fresh();
    assert_ne!(other.node_id(), Some(node));
    let org = new_org(&store).await;
    store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    let id = insert_one(&store, org, "a", t(0)).await;
    // The crashed run held it under the node id, with an hour of lease left.
    let lease = Duration::from_secs(3600);
    let req = ClaimRequest::new(node, 1, lease, t(1));
    assert_eq!(store.claim(req).await.unwrap().len(), 1);
    drop(store);

    let store = open(&path);
    assert_eq!(store.node_id(), Some(node), "the node id survives a reopen");
    let clock = ManualClock::at(t(2));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let deliverer = FnDeliverer::new(move |d| {
        let _ = tx.send((d.event_id, d.attempt, d.lease_owner));
        async { Outcome::Delivered }
    });
    let config = IngestorConfig {
        clock: Arc::new(clock),
        worker: WorkerConfig { poll_interval: Duration::from_millis(5), ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    let ingestor = Ingestor::start(store, deliverer, config);
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
    assert_eq!(got, Some((id, 2, node)), "the next attempt, under the same node id");
    ingestor.shutdown().await;
}

/// A database written before deliveries were keyed by endpoint and event (schema version 7:
/// random delivery ids, the claim index holding leases) keeps its outstanding deliveries and
/// their leases through the upgrade: the pending ones are claimed and delivered, the live
/// lease still counts, and once it expires its delivery is claimed again with the next
/// attempt number.
#[tokio::test]
async fn outstanding_deliveries_of_a_version_7_database_survive_the_upgrade() {
    use triggers_core::store::{Completion, CompletionState};
    use triggers_core::{AttemptRecord, EventStatus};

    let (_dir, path) = temp_db();
    let store = open(&path);
    let org = new_org(&store).await;
    let endpoint = new_endpoint(None, t(0));
    store.create_endpoint(org, &endpoint).await.unwrap();
    let ids = [
        insert_one(&store, org, "a", t(0)).await,
        insert_one(&store, org, "b", t(1)).await,
        insert_one(&store, org, "c", t(2)).await,
    ];
    let lease = Duration::from_secs(30);
    let dead = WorkerId::new();
    assert_eq!(store.claim(ClaimRequest::new(dead, 1, lease, t(3))).await.unwrap().len(), 1);
    drop(store);

    // Back to version 7's deliveries table, ids random as they were then.
    raw(&path)
        .execute_batch(&format!(
            "BEGIN;
             CREATE TABLE v7 (
                 id BLOB PRIMARY KEY NOT NULL, event_seq INTEGER NOT NULL,
                 endpoint_seq INTEGER NOT NULL, state INTEGER NOT NULL,
                 attempt INTEGER NOT NULL, due_at INTEGER NOT NULL, claimed_due INTEGER,
                 lease_owner BLOB, line INTEGER) WITHOUT ROWID;
             INSERT INTO v7 SELECT randomblob(16), event_seq, endpoint_seq, state, attempt,
                 due_at, claimed_due, lease_owner, line FROM deliveries;
             DROP TABLE deliveries;
             ALTER TABLE v7 RENAME TO deliveries;
             CREATE INDEX deliveries_by_event ON deliveries (event_seq);
             CREATE INDEX deliveries_leased ON deliveries (event_seq) WHERE state = 1;
             CREATE INDEX deliveries_line ON deliveries (endpoint_seq, line)
                 WHERE line IS NOT NULL;
             CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_seq, event_seq);
             CREATE INDEX deliveries_endpoint_due ON deliveries (endpoint_seq, due_at)
                 WHERE line IS NULL;
             DROP INDEX failed_deliveries_by_age;
             ALTER TABLE failed_deliveries DROP COLUMN event_created_at;
             {UNDO_PENDING_COUNTS}
             PRAGMA user_version = 7;
             COMMIT;"
        ))
        .unwrap();

    let store = open(&path);
    let version: i64 = raw(&path).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, triggers_store_sqlite::SCHEMA_VERSION);
    assert_eq!(store.queue_depth().await.unwrap(), 3);
    assert_eq!(store.stats(org).await.unwrap().in_flight, 1);
    let w = WorkerId::new();
    let delivered = |d: &triggers_core::store::Delivery, at| Completion {
        delivery_id: d.id,
        lease_owner: d.lease_owner,
        attempt: d.attempt,
        state: CompletionState::Delivered,
        record: AttemptRecord {
            endpoint_id: endpoint.id,
            at,
            status_code: Some(200),
            latency_ms: 1,
            error: None,
        },
        disable_endpoint: None,
    };
    let got = store.claim(ClaimRequest::new(w, 10, lease, t(10))).await.unwrap();
    assert_eq!(got.iter().map(|d| d.event_id).collect::<Vec<_>>(), vec![ids[1], ids[2]]);
    let done: Vec<_> = got.iter().map(|d| delivered(d, t(11))).collect();
    assert_eq!(store.complete(&done).await.unwrap(), vec![true, true]);

    let again = store.claim(ClaimRequest::new(w, 10, lease, t(40))).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event_id, again[0].attempt), (ids[0], 2));
    assert_eq!(store.complete(&[delivered(&again[0], t(41))]).await.unwrap(), vec![true]);
    for id in ids {
        let event = store.event(org, id).await.unwrap().unwrap();
        assert_eq!(event.event.status, EventStatus::Delivered);
    }
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

/// Failed deliveries stored by version 9 (without their event's creation time) are found by
/// a recover after the upgrade that indexes them by it, in their windows, oldest first.
#[tokio::test]
async fn failed_deliveries_of_a_version_9_database_are_recovered_by_their_window() {
    use triggers_core::store::{EndpointPatch, RecoverQuery};

    let (_dir, path) = temp_db();
    let store = open(&path);
    let org = new_org(&store).await;
    let endpoint = new_endpoint(None, t(0));
    store.create_endpoint(org, &endpoint).await.unwrap();
    let off = EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
    store.update_endpoint(org, endpoint.id, &off, t(0)).await.unwrap().unwrap();
    // Each gets a failed delivery (the endpoint is disabled); created at 20, 10, 30.
    let ids = [
        insert_one(&store, org, "a", t(20)).await,
        insert_one(&store, org, "b", t(10)).await,
        insert_one(&store, org, "c", t(30)).await,
    ];
    let on = EndpointPatch { enabled: Some(true), ..EndpointPatch::default() };
    store.update_endpoint(org, endpoint.id, &on, t(31)).await.unwrap().unwrap();
    drop(store);
    raw(&path)
        .execute_batch(&format!(
            "BEGIN;
             DROP INDEX failed_deliveries_by_age;
             ALTER TABLE failed_deliveries DROP COLUMN event_created_at;
             {UNDO_PENDING_COUNTS}
             PRAGMA user_version = 9;
             COMMIT;"
        ))
        .unwrap();

    let store = open(&path);
    let version: i64 = raw(&path).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, triggers_store_sqlite::SCHEMA_VERSION);
    let window =
        |since, until, limit| RecoverQuery { since: t(since), until: Some(t(until)), limit };
    let r = store.recover(org, endpoint.id, window(11, 20, 10), t(32)).await.unwrap().unwrap();
    assert_eq!((r.queued, r.more), (0, false), "nothing was created in [11, 20)");
    let r = store.recover(org, endpoint.id, window(0, 100, 2), t(32)).await.unwrap().unwrap();
    assert_eq!((r.queued, r.more), (2, true));
    let got = store.claim(ClaimRequest::new(WorkerId::new(), 10, Duration::from_secs(30), t(32)));
    let mut got: Vec<_> = got.await.unwrap().iter().map(|d| d.event_id).collect();
    got.sort();
    let mut oldest = vec![ids[1], ids[0]];
    oldest.sort();
    assert_eq!(got, oldest, "the two created first");
    let r = store.recover(org, endpoint.id, window(0, 100, 2), t(33)).await.unwrap().unwrap();
    assert_eq!((r.queued, r.more), (1, false));
}

#[tokio::test]
async fn pending_events_of_a_version_10_database_are_counted_by_the_migration() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    let (org, other) = (new_org(&store).await, new_org(&store).await);
    for event_type in ["a", "b", "c"] {
        insert_one(&store, org, event_type, t(1)).await;
    }
    let acked = insert_one(&store, org, "d", t(1)).await;
    store.ack(org, &[acked], t(2)).await.unwrap();
    insert_one(&store, other, "e", t(1)).await;
    drop(store);
    raw(&path)
        .execute_batch(&format!("BEGIN; {UNDO_PENDING_COUNTS} PRAGMA user_version = 10; COMMIT;"))
        .unwrap();

    let store = open(&path);
    assert_eq!(store.pending_events(org).await.unwrap(), 3, "acknowledged: not pending");
    assert_eq!(store.pending_events(other).await.unwrap(), 1);
    insert_one(&store, org, "f", t(3)).await;
    assert_eq!(store.pending_events(org).await.unwrap(), 4, "counted on from there");
}

/// What migration 0011 added, dropped to stand for a database of an older version (run
/// inside the caller's transaction).
const UNDO_PENDING_COUNTS: &str = "DROP TRIGGER events_pending_changed;
     DROP TRIGGER events_pending_deleted;
     DROP TABLE pending_counts;";
