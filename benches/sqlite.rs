//! SQLite store benchmarks: durable ingest through the Ingestor (single events and batches of
//! 100), single-caller latency, and delivery claim + complete throughput.
//!
//! Run: `cargo bench --bench sqlite -- --warm-up-time 1 --measurement-time 3`
//!
//! Every database lives in a fresh temporary directory and runs with the default settings
//! (`synchronous = FULL`, WAL): each commit is fsynced.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use tokio::runtime::Runtime;
use triggers_core::store::{
    ClaimRequest, Completion, DeliveryQueue, EndpointStore, EventLog, NewEndpoint, OrgStore,
};
use triggers_core::{
    Clock, EndpointId, EventId, EventRecord, FnDeliverer, Ingestor, IngestorConfig, NewEvent,
    NoDeliverer, Organization, Outcome, Secret, SystemClock, Tier, TierLimits, WorkerConfig,
    WorkerId,
};
use triggers_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A store on a fresh file; the directory is deleted when the returned guard drops.
fn store(synchronous: Synchronous) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig { synchronous, ..SqliteConfig::default() };
    let store = SqliteStore::open(dir.path().join("bench.db"), config).unwrap();
    (dir, store)
}

/// An Ingestor whose limits never bite and which runs no workers.
fn ingestor(store: SqliteStore) -> Ingestor<SqliteStore, NoDeliverer> {
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, u32::MAX / 2),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    Ingestor::start(store, NoDeliverer, config)
}

fn event() -> NewEvent {
    NewEvent::new(
        "user.created",
        &json!({"user_id": 42, "email": "someone@example.test", "plan": "pro", "seats": 5}),
    )
}

/// `callers` tasks share `iters` ingests; returns the time per event.
fn ingest_concurrently(
    rt: &Runtime,
    ing: &Ingestor<SqliteStore, NoDeliverer>,
    org: &Arc<Organization>,
    callers: u64,
    iters: u64,
) -> Duration {
    let per_task = iters.div_ceil(callers).max(1);
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let (ing, org) = (ing.clone(), org.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        ing.ingest(&org, event()).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed().mul_f64(iters as f64 / (per_task * callers) as f64)
    })
}

fn ingest(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sqlite_ingest");
    group.throughput(Throughput::Elements(1));
    for (name, sync) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        let (_dir, store) = store(sync);
        let ing = rt.block_on(async { ingestor(store) });
        let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
        let org = Arc::new(org);
        group.bench_function(format!("64_callers_{name}"), |b| {
            b.iter_custom(|iters| ingest_concurrently(&rt, &ing, &org, 64, iters))
        });
        group.bench_function(format!("one_caller_{name}"), |b| {
            b.to_async(&rt).iter(|| async { ing.ingest(&org, event()).await.unwrap() })
        });
        rt.block_on(ing.shutdown());
    }
    group.finish();

    // Batches of 100 events with unique dedup ids (as `POST /api/events/batch` sends them),
    // four callers: the writer's work per event when the fsync is shared by hundreds. Without
    // an endpoint, and with one that takes every event (its deliveries queue up: no workers).
    let mut group = c.benchmark_group("sqlite_ingest_batch");
    group.throughput(Throughput::Elements(100));
    for endpoints in [0, 1] {
        let (_dir, store) = store(Synchronous::Full);
        let ing = rt.block_on(async { ingestor(store) });
        let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
        for _ in 0..endpoints {
            rt.block_on(ing.store().create_endpoint(org.id, &every_event())).unwrap();
        }
        let org = Arc::new(org);
        let next = Arc::new(AtomicU64::new(0));
        group.bench_function(format!("100_events_4_callers_{endpoints}_endpoints"), |b| {
            b.iter_custom(|iters| ingest_batches(&rt, &ing, &org, &next, iters))
        });
        rt.block_on(ing.shutdown());
    }
    group.finish();
}

/// Four tasks share `iters` batches of 100 events with fresh dedup ids; returns the time per
/// batch.
fn ingest_batches(
    rt: &Runtime,
    ing: &Ingestor<SqliteStore, NoDeliverer>,
    org: &Arc<Organization>,
    next: &Arc<AtomicU64>,
    iters: u64,
) -> Duration {
    let per_task = iters.div_ceil(4).max(1);
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (ing, org, next) = (ing.clone(), org.clone(), next.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let events = (0..100)
                            .map(|_| {
                                let n = next.fetch_add(1, Ordering::Relaxed);
                                event().with_dedup_id(format!("bench-{n}"))
                            })
                            .collect();
                        ing.ingest_batch(&org, events).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed().mul_f64(iters as f64 / (per_task * 4) as f64)
    })
}

/// Queues `n` deliveries (one endpoint, `n` events); not timed.
async fn queue_deliveries(store: &SqliteStore, org: &Organization, n: u64) {
    let payload = serde_json::value::to_raw_value(&json!({"user_id": 42, "plan": "pro"})).unwrap();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let now = SystemClock.now();
        let events = (0..k)
            .map(|_| EventRecord {
                id: EventId::new(),
                event_type: "user.created".into(),
                payload: payload.clone(),
                dedup_id: None,
                created_at: now,
                exclude_endpoint: None,
            })
            .collect();
        store.insert_events(org.id, events, Duration::from_secs(86400), now).await.unwrap();
        left -= k;
    }
}

/// One claimer: claims up to 128 due deliveries and records them all as delivered in one
/// call, until the queue is empty.
async fn claim_complete_loop(store: SqliteStore) {
    let owner = WorkerId::new();
    loop {
        let now = SystemClock.now();
        let lease = Duration::from_secs(60);
        let claimed = store.claim(ClaimRequest::new(owner, 128, lease, now)).await.unwrap();
        if claimed.is_empty() {
            return;
        }
        let completions: Vec<Completion> =
            claimed.iter().map(|d| common::delivered(d, now)).collect();
        let flags = store.complete(&completions).await.unwrap();
        assert!(flags.iter().all(|f| *f));
    }
}

/// A parallel endpoint that receives every event (never called: the benches run no workers
/// or complete deliveries themselves).
fn every_event() -> NewEndpoint {
    NewEndpoint {
        id: EndpointId::new(),
        url: "inproc://bench".into(),
        event_type_filter: None,
        secret: Secret::generate(),
        created_at: SystemClock.now(),
        ordering: Default::default(),
    }
}

/// A store with an organization and one endpoint that receives every event.
fn queue_store(rt: &Runtime) -> (tempfile::TempDir, SqliteStore, Organization) {
    let (dir, store) = store(Synchronous::Full);
    let org = Organization::new("bench", Tier::Enterprise, SystemClock.now());
    rt.block_on(async {
        store.create_organization(&org, &triggers_core::ApiKey::generate().hash()).await.unwrap();
        store.create_endpoint(org.id, &every_event()).await.unwrap();
    });
    (dir, store, org)
}

/// Claim + complete throughput, per delivery: `claimers` concurrent loops of "claim 128,
/// complete them in one call" (1 = strictly sequential; 4 overlaps claims and completions
/// the way the worker pool's claim loop and completer do).
fn claim_complete(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sqlite_queue");
    group.throughput(Throughput::Elements(1));
    let (_dir, store, org) = queue_store(&rt);
    for claimers in [1u64, 4] {
        group.bench_function(format!("claim_complete_128_x{claimers}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    queue_deliveries(&store, &org, iters).await;
                    let start = Instant::now();
                    let loops: Vec<_> = (0..claimers)
                        .map(|_| tokio::spawn(claim_complete_loop(store.clone())))
                        .collect();
                    for l in loops {
                        l.await.unwrap();
                    }
                    let elapsed = start.elapsed();
                    assert_eq!(store.queue_depth().await.unwrap(), 0);
                    elapsed
                })
            })
        });
    }

    // The real worker pool (claim loop, 256 concurrent attempts, batched completer) with an
    // in-process deliverer that accepts at once: time until the queue is empty. With the
    // default caps the one endpoint has at most 16 deliveries in flight; `_uncapped` sets the
    // endpoint and organization caps to 256, so it may have all of them in flight (as before
    // fair claiming), which measures the claim machinery alone.
    for (name, wide_caps) in [
        ("worker_pool_instant_deliverer", None),
        ("worker_pool_instant_deliverer_uncapped", Some(256)),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    queue_deliveries(&store, &org, iters).await;
                    let defaults = WorkerConfig::default();
                    let config = IngestorConfig {
                        worker: WorkerConfig {
                            concurrency: 256,
                            claim_batch: 128,
                            poll_interval: Duration::from_millis(5),
                            endpoint_concurrency: wide_caps
                                .unwrap_or(defaults.endpoint_concurrency),
                            org_concurrency: wide_caps.or(defaults.org_concurrency),
                            ..defaults
                        },
                        ..IngestorConfig::default()
                    };
                    let deliverer = FnDeliverer::new(|_| async { Outcome::Delivered });
                    let start = Instant::now();
                    let ing = Ingestor::start(store.clone(), deliverer, config);
                    while store.queue_depth().await.unwrap() > 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let elapsed = start.elapsed();
                    ing.shutdown().await;
                    elapsed
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ingest, claim_complete);
criterion_main!(benches);
