//! Two nodes (two stores with their own pools) on one database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use triggers_core::store::{ClaimRequest, Completion, DeliveryQueue, EventLog, InsertOutcome};
use triggers_core::worker::WorkerConfig;
use triggers_core::{
    DeliveryId, EndpointId, EventId, FnDeliverer, Ingestor, IngestorConfig, NewEvent, Outcome,
    Tier, TierLimits, WorkerId,
};
use triggers_store_postgres::PgStore;

use crate::support::{self, at, DAY};

type Seen = Arc<Mutex<Vec<(DeliveryId, u32, EventId, EndpointId)>>>;

fn recording_deliverer(seen: Seen) -> FnDeliverer {
    FnDeliverer::new(move |d| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((d.id, d.attempt, d.event_id, d.endpoint_id));
            Outcome::Delivered
        }
    })
}

fn ingestor_config() -> IngestorConfig {
    IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 10_000_000),
        worker: WorkerConfig {
            concurrency: 8,
            claim_batch: 16,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        ..IngestorConfig::default()
    }
}

async fn two_stores(db: &triggers_store_postgres::testing::TestDatabase) -> (PgStore, PgStore) {
    let (a, b) = tokio::join!(
        PgStore::connect_with(db.options.clone(), support::config()),
        PgStore::connect_with(db.options.clone(), support::config()),
    );
    (a.unwrap(), b.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingestors_dedup_exactly_and_drain_one_queue_exactly_once() {
    let Some(db) = support::database("two_ingestors").await else { return };
    let (a, b) = two_stores(&db).await;
    let pool = a.pool().clone();
    let seen: Seen = Arc::default();
    let ia = Ingestor::start(a, recording_deliverer(seen.clone()), ingestor_config());
    let ib = Ingestor::start(b, recording_deliverer(seen.clone()), ingestor_config());
    let (org, _key) = ia.create_organization("acme", Tier::Enterprise).await.unwrap();
    let all = ia.create_endpoint(&org, "inproc://all", None).await.unwrap();
    let orders = ia.create_endpoint(&org, "inproc://orders", Some("order.*")).await.unwrap();

    // Both nodes, four callers each, send the same 200 dedup ids in the same order.
    const KEYS: usize = 200;
    let mut callers = tokio::task::JoinSet::new();
    for ingestor in [ia.clone(), ib.clone()] {
        for _ in 0..4 {
            let (ingestor, org) = (ingestor.clone(), org.clone());
            callers.spawn(async move {
                let mut got = Vec::new();
                for k in 0..KEYS {
                    let kind = if k % 2 == 0 { "order.created" } else { "user.created" };
                    let event = NewEvent::new(kind, &serde_json::json!({ "k": k }))
                        .with_dedup_id(format!("key-{k}"));
                    let ingested = ingestor.ingest(&org, event).await.unwrap();
                    got.push((k, ingested.id, ingested.duplicate));
                }
                got
            });
        }
    }
    let mut ids: HashMap<usize, HashSet<EventId>> = HashMap::new();
    let mut originals: HashMap<usize, usize> = HashMap::new();
    while let Some(got) = callers.join_next().await {
        for (k, id, duplicate) in got.unwrap() {
            ids.entry(k).or_default().insert(id);
            *originals.entry(k).or_default() += usize::from(!duplicate);
        }
    }
    assert_eq!(ids.len(), KEYS);
    assert!(ids.values().all(|s| s.len() == 1), "every caller got the same id per dedup id");
    assert!(originals.values().all(|n| *n == 1), "exactly one caller stored each dedup id");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, KEYS as i64);

    // The workers of both nodes drain the queue: each delivery exactly once.
    support::eventually("all events delivered", Duration::from_secs(120), || async {
        ia.stats(&org).await.unwrap().delivered == KEYS as u64
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let expected = KEYS + KEYS / 2; // every event to `all`, the orders also to `orders`
    assert_eq!(seen.len(), expected, "no delivery attempted twice, none lost");
    let unique: HashSet<_> = seen.iter().map(|(id, ..)| *id).collect();
    assert_eq!(unique.len(), expected);
    assert!(seen.iter().all(|(_, attempt, ..)| *attempt == 1));
    let pairs: HashSet<_> = seen.iter().map(|(_, _, e, ep)| (*e, *ep)).collect();
    assert_eq!(pairs.len(), expected);
    assert_eq!(pairs.iter().filter(|(_, ep)| *ep == orders.id).count(), KEYS / 2);
    assert_eq!(pairs.iter().filter(|(_, ep)| *ep == all.id).count(), KEYS);
    assert_eq!(ia.queue_depth().await.unwrap(), 0);
    ia.shutdown().await;
    ib.shutdown().await;
    drop((ia, ib, pool));
    db.drop_database().await.unwrap();
}

fn claim(owner: WorkerId, limit: u32, secs: i64) -> ClaimRequest {
    ClaimRequest::new(owner, limit, Duration::from_secs(30), at(secs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_node_that_died_are_reclaimed_by_the_other() {
    let Some(db) = support::database("dead_node_leases").await else { return };
    let (a, b) = two_stores(&db).await;
    let org = support::org(&a, "acme").await;
    support::endpoint(&a, &org, None).await;
    let batch = (0..50).map(|_| support::record("t", None, at(0))).collect();
    a.insert_events(org.id, batch, DAY, at(0)).await.unwrap();

    let dead = WorkerId::new();
    let lost: HashSet<DeliveryId> =
        a.claim(claim(dead, 20, 1)).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(lost.len(), 20);
    drop(a); // the node dies mid-lease

    let alive = WorkerId::new();
    let rest = b.claim(claim(alive, 100, 2)).await.unwrap();
    assert_eq!(rest.len(), 30, "live leases are not claimed");
    assert!(rest.iter().all(|d| !lost.contains(&d.id) && d.attempt == 1));
    assert!(b.claim(claim(alive, 100, 30)).await.unwrap().is_empty(), "lease runs to 31 s");
    let reclaimed = b.claim(claim(alive, 100, 31)).await.unwrap();
    let ids: HashSet<DeliveryId> = reclaimed.iter().map(|d| d.id).collect();
    assert_eq!(ids, lost, "exactly the dead node's deliveries come back");
    assert!(reclaimed.iter().all(|d| d.attempt == 2));

    let all: Vec<_> =
        rest.iter().chain(&reclaimed).map(|d| support::delivered(d, alive, 32)).collect();
    assert!(b.complete(&all).await.unwrap().iter().all(|ok| *ok));
    // The dead node's late completion is stale.
    let late: Vec<_> = reclaimed
        .iter()
        .map(|d| Completion { lease_owner: dead, attempt: 1, ..support::delivered(d, dead, 33) })
        .collect();
    assert!(b.complete(&late).await.unwrap().iter().all(|ok| !*ok));
    assert_eq!(b.queue_depth().await.unwrap(), 0);
    assert_eq!(b.stats(org.id).await.unwrap().delivered, 50);
    drop(b);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_on_two_nodes_share_one_queue_exactly_once() {
    let Some(db) = support::database("two_node_claimers").await else { return };
    let (a, b) = two_stores(&db).await;
    let org = support::org(&a, "acme").await;
    support::endpoint(&a, &org, None).await;
    for chunk in 0..4 {
        let batch = (0..100).map(|_| support::record("t", None, at(chunk))).collect();
        let out = a.insert_events(org.id, batch, DAY, at(chunk)).await.unwrap();
        assert!(out.iter().all(|o| matches!(o, InsertOutcome::Inserted { deliveries: 1, .. })));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                let owner = WorkerId::new();
                let mut mine = Vec::new();
                loop {
                    let got = store.claim(claim(owner, 16, 10)).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    let done: Vec<_> =
                        got.iter().map(|d| support::delivered(d, owner, 11)).collect();
                    let applied = store.complete(&done).await.unwrap();
                    assert!(applied.iter().all(|ok| *ok), "our own fresh leases complete");
                    mine.extend(got.iter().map(|d| (d.id, d.attempt)));
                }
            });
        }
    }
    let mut claimed = Vec::new();
    while let Some(mine) = tasks.join_next().await {
        claimed.extend(mine.unwrap());
    }
    assert_eq!(claimed.len(), 400);
    assert_eq!(claimed.iter().map(|(id, _)| id).collect::<HashSet<_>>().len(), 400);
    assert!(claimed.iter().all(|(_, attempt)| *attempt == 1));
    assert_eq!(a.queue_depth().await.unwrap(), 0);
    assert_eq!(b.stats(org.id).await.unwrap().delivered, 400);
    drop((a, b));
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_finishing_the_last_deliveries_of_an_event_together_deliver_it() {
    let Some(db) = support::database("concurrent_last_deliveries").await else { return };
    let (a, b) = two_stores(&db).await;
    let org = support::org(&a, "acme").await;
    let first = support::endpoint(&a, &org, None).await;
    support::endpoint(&a, &org, None).await;
    let batch = (0..100).map(|_| support::record("t", None, at(0))).collect();
    a.insert_events(org.id, batch, DAY, at(0)).await.unwrap();
    let owner = WorkerId::new();
    let claimed = a.claim(claim(owner, 1000, 1)).await.unwrap();
    assert_eq!(claimed.len(), 200);
    // Node a finishes every event's first delivery, node b its second, at the same time.
    let (to_a, to_b): (Vec<_>, Vec<_>) = claimed.iter().partition(|d| d.endpoint_id == first.id);
    let run = |store: PgStore, mine: Vec<&triggers_core::store::Delivery>| {
        let chunks: Vec<Vec<Completion>> = mine
            .chunks(10)
            .map(|c| c.iter().map(|d| support::delivered(d, owner, 2)).collect())
            .collect();
        tokio::spawn(async move {
            for chunk in chunks {
                assert!(store.complete(&chunk).await.unwrap().iter().all(|ok| *ok));
            }
        })
    };
    let (ra, rb) = tokio::join!(run(a.clone(), to_a), run(b.clone(), to_b));
    ra.unwrap();
    rb.unwrap();
    let stats = a.stats(org.id).await.unwrap();
    assert_eq!((stats.delivered, stats.pending), (100, 0), "no event missed its last delivery");
    drop((a, b));
    db.drop_database().await.unwrap();
}
