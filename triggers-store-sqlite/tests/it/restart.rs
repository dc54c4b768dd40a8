//! What survives a reopen: events, pending deliveries, leases; expired leases are reclaimed.

use std::time::Duration;

use triggers_core::store::{ClaimRequest, DeliveryQueue, EndpointStore, EventLog};
use triggers_core::WorkerId;

use crate::{insert_one, new_endpoint, new_org, open, t, temp_db};

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
