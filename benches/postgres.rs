//! PostgreSQL store benchmarks: durable ingest through the Ingestor with 64 concurrent
//! callers, delivery claim + complete throughput (events with one endpoint, and with two:
//! fan-out, whose completions take the successes path), and the shared rate limiter's cost.
//!
//! Run: `cargo bench --features postgres --bench postgres -- --warm-up-time 1 --measurement-time 3`
//!
//! The server comes from `TRIGGERS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates its own database
//! `triggers_test_<pid>_<uuid>` and drops it at the end. The server's settings are used as
//! they are (`synchronous_commit = on`: every commit is flushed to disk before the reply).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use tokio::runtime::Runtime;
use triggers_core::store::{
    ClaimRequest, DeliveryQueue, EndpointStore, EventLog, NewEndpoint, OrgStore,
};
use triggers_core::{
    ChunkedLimiter, Clock, EndpointId, EventId, EventRecord, Ingestor, IngestorConfig, NewEvent,
    NoDeliverer, Organization, OrganizationId, Secret, SharedRateLimiter, SystemClock, Tier,
    TierLimits, WorkerConfig, WorkerId,
};
use triggers_store_postgres::testing::{TestDatabase, URL_VAR};
use triggers_store_postgres::{PgConfig, PgStore};

const CALLERS: u64 = 64;
/// Claim + complete: concurrent claimers and their claim size.
const WORKERS: usize = 8;
const BATCH: u32 = 64;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn config() -> PgConfig {
    PgConfig { max_connections: 16, ..PgConfig::default() }
}

/// An Ingestor whose limits never bite and which runs no workers.
fn ingestor(store: PgStore) -> Ingestor<PgStore, NoDeliverer> {
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, u32::MAX / 2),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    Ingestor::start(store, NoDeliverer, config)
}

fn event(n: u64, dedup: bool) -> NewEvent {
    let e = NewEvent::new(
        "user.created",
        &json!({"user_id": n, "email": "someone@example.test", "plan": "pro", "seats": 5}),
    );
    if dedup {
        e.with_dedup_id(format!("{}-{n}", uuid::Uuid::new_v4().simple()))
    } else {
        e
    }
}

/// `CALLERS` tasks share `iters` single-event ingests; returns the elapsed time.
async fn ingest_concurrently(
    ing: &Ingestor<PgStore, NoDeliverer>,
    org: &Arc<Organization>,
    iters: u64,
    dedup: bool,
) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let n = iters / CALLERS + u64::from(c < iters % CALLERS);
        let (ing, org) = (ing.clone(), org.clone());
        tasks.spawn(async move {
            for i in 0..n {
                ing.ingest(&org, event(i, dedup)).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    start.elapsed()
}

fn ingest(c: &mut Criterion, rt: &Runtime, db: &TestDatabase) {
    let store = rt.block_on(PgStore::connect_with(db.options.clone(), config())).unwrap();
    let ing = rt.block_on(async { ingestor(store) });
    let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
    let org = Arc::new(org);
    let mut group = c.benchmark_group("postgres_ingest_64_callers");
    group.throughput(Throughput::Elements(1));
    for (name, dedup) in [("no_dedup_id", false), ("dedup_id", true)] {
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (ing, org) = (ing.clone(), org.clone());
                async move { ingest_concurrently(&ing, &org, iters, dedup).await }
            })
        });
    }
    group.finish();
    rt.block_on(ing.shutdown());
}

fn record(now: triggers_core::Timestamp) -> EventRecord {
    EventRecord {
        id: EventId::new(),
        event_type: "order.paid".into(),
        payload: serde_json::value::to_raw_value(&json!({"order": 7, "cents": 1999})).unwrap(),
        dedup_id: None,
        created_at: now,
        exclude_endpoint: None,
    }
}

/// Queues `n` events, each with a delivery per endpoint of `org` (not timed).
async fn fill(store: &PgStore, org: &Organization, n: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let now = SystemClock.now();
        let batch = (0..k).map(|_| record(now)).collect();
        store.insert_events(org.id, batch, Duration::from_secs(86400), now).await.unwrap();
        left -= k;
    }
}

/// `workers` claimers (claim up to `batch`, complete all as delivered) complete `n`
/// deliveries between them. The queue holds a standing backlog beyond these `n` (see
/// `claim_complete`), so every claim is full and the figure is the steady-state rate of a
/// busy queue, not the ramp-down of draining it to empty.
async fn drain(store: &PgStore, n: u64, workers: usize, batch: u32) -> Duration {
    let left = Arc::new(std::sync::atomic::AtomicU64::new(n));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (store, left) = (store.clone(), left.clone());
        tasks.spawn(async move {
            let owner = WorkerId::new();
            let mut done = 0u64;
            loop {
                let take = left
                    .fetch_update(SeqCst, SeqCst, |l| Some(l.saturating_sub(u64::from(batch))))
                    .unwrap()
                    .min(u64::from(batch));
                if take == 0 {
                    return done;
                }
                let now = SystemClock.now();
                let limit = u32::try_from(take).unwrap();
                let req = ClaimRequest::new(owner, limit, Duration::from_secs(60), now);
                let got = store.claim(req).await.unwrap();
                assert_eq!(got.len() as u64, take, "the standing backlog keeps claims full");
                let completions: Vec<_> = got.iter().map(|d| common::delivered(d, now)).collect();
                let applied = store.complete(&completions).await.unwrap();
                done += applied.iter().filter(|ok| **ok).count() as u64;
            }
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.unwrap();
    }
    assert_eq!(total, n, "every delivery was completed once");
    start.elapsed()
}

/// Claim + complete on `db`, whose queue holds only this bench's deliveries: events of an
/// organization with `endpoints` endpoints. With one, each delivery is its event's only one
/// (the completion fast path); with two or more, completions take the successes path.
fn claim_complete(c: &mut Criterion, rt: &Runtime, db: &TestDatabase, endpoints: u64) {
    let store = rt.block_on(PgStore::connect_with(db.options.clone(), config())).unwrap();
    let org = Organization::new("queue", Tier::Enterprise, SystemClock.now());
    rt.block_on(async {
        store.create_organization(&org, &triggers_core::ApiKey::generate().hash()).await.unwrap();
        for _ in 0..endpoints {
            let endpoint = NewEndpoint {
                id: EndpointId::new(),
                url: "inproc://bench".into(),
                event_type_filter: None,
                secret: Secret::generate(),
                created_at: SystemClock.now(),
                ordering: Default::default(),
            };
            store.create_endpoint(org.id, &endpoint).await.unwrap();
        }
    });
    // The standing backlog: two full claims per worker, queued once, never drained. Each
    // round queues at least the deliveries it drains (a few more with two endpoints: they
    // join the backlog).
    let events = |deliveries: u64| deliveries.div_ceil(endpoints);
    rt.block_on(fill(&store, &org, events(2 * WORKERS as u64 * u64::from(BATCH))));
    let mut group = c.benchmark_group("postgres_claim_complete");
    group.throughput(Throughput::Elements(1));
    let name = match endpoints {
        1 => format!("{WORKERS}_workers_batch_{BATCH}"),
        n => format!("{WORKERS}_workers_batch_{BATCH}_{n}_endpoints"),
    };
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, org) = (store.clone(), org.clone());
            async move {
                fill(&store, &org, events(iters)).await;
                drain(&store, iters, WORKERS, BATCH).await
            }
        })
    });
    group.finish();
}

/// The cost of one rate-limit check of the shared limiter: exact (one round trip per check)
/// and chunked (one round trip per chunk of 100 at this limit), 64 concurrent callers of one
/// organization whose limit never bites.
fn shared_limiter(c: &mut Criterion, rt: &Runtime, db: &TestDatabase) {
    let store = rt.block_on(PgStore::connect_with(db.options.clone(), config())).unwrap();
    let exact: Arc<dyn SharedRateLimiter> = Arc::new(store.rate_limiter());
    let chunked: Arc<dyn SharedRateLimiter> = Arc::new(ChunkedLimiter::new(store.rate_limiter()));
    let mut group = c.benchmark_group("postgres_shared_limiter");
    group.throughput(Throughput::Elements(1));
    for (name, limiter) in [("exact", exact), ("chunked", chunked)] {
        let org = OrganizationId::new();
        group.bench_function(format!("{name}_64_callers"), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let limiter = limiter.clone();
                async move {
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..CALLERS)
                        .map(|i| {
                            let limiter = limiter.clone();
                            let n = iters / CALLERS + u64::from(i < iters % CALLERS);
                            tokio::spawn(async move {
                                for _ in 0..n {
                                    let d = limiter
                                        .check(org, u32::MAX / 2, 1, SystemClock.now())
                                        .await
                                        .unwrap();
                                    assert!(d.allowed);
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    started.elapsed()
                }
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let url = triggers_store_postgres::testing::server_url();
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create(&url)).unwrap_or_else(|e| {
        panic!("the postgres bench needs a server at {url} (set {URL_VAR}): {e}")
    });
    ingest(c, &rt, &db);
    claim_complete(c, &rt, &db, 1);
    shared_limiter(c, &rt, &db);
    rt.block_on(db.drop_database()).unwrap();
    // Fan-out in a database of its own: the queue holds only its deliveries.
    let fan_out = rt.block_on(TestDatabase::create(&url)).unwrap();
    claim_complete(c, &rt, &fan_out, 2);
    rt.block_on(fan_out.drop_database()).unwrap();
}

criterion_group!(postgres, benches);
criterion_main!(postgres);
