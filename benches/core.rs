//! Core benchmarks: the ingest path over MemoryStore, type filters, the rate limiter, dedup, the JSON
//! nesting scan every request body and payload goes through, MemoryStore claims behind
//! an endpoint's backlog at its cap, MemoryStore retention rounds over a full store, a
//! MemoryStore inbox page behind many acknowledged events, and an endpoint's newest history
//! pages in a MemoryStore that has delivered many events.
//!
//! Run: `cargo bench --bench core`
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use tokio::runtime::Runtime;
use triggers::{
    Clock, Ingestor, IngestorConfig, MemoryStore, NewEvent, NoDeliverer, OrganizationId,
    RateLimiter, SystemClock, Tier, TierLimits, WorkerConfig,
};

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// An Ingestor whose limits never bite and which runs no workers.
fn ingestor() -> Ingestor<MemoryStore, NoDeliverer> {
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, u32::MAX / 2),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    Ingestor::start(MemoryStore::new(), NoDeliverer, config)
}

fn payload() -> NewEvent {
    NewEvent::new("user.created", &json!({"user_id": 42, "email": "a@example.test", "plan": "pro"}))
}

fn ingest(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("ingest_memory");
    group.throughput(Throughput::Elements(1));
    let ing = rt.block_on(async { ingestor() });
    let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
    let event = payload();
    group.bench_function("one_task", |b| {
        b.to_async(&rt).iter(|| async { ing.ingest(&org, event.clone()).await.unwrap() })
    });

    // Many concurrent tasks: 64 tasks each ingesting `per_task` events; time per event.
    const TASKS: u64 = 64;
    group.bench_function("64_tasks_per_event", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(TASKS).max(1);
            rt.block_on(async {
                let start = Instant::now();
                let handles: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let (ing, org, event) = (ing.clone(), org.clone(), event.clone());
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                ing.ingest(&org, event.clone()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.await.unwrap();
                }
                start.elapsed().mul_f64(iters as f64 / (per_task * TASKS) as f64)
            })
        })
    });
    group.finish();
}

/// One endpoint's type filter against one event type: what a store's insert does for every
/// event of a batch and every endpoint of the organization (SQLite: inside its one writer).
/// `crafted`: a filter made for a backtracking matcher's worst case (128 restarts of 127
/// steps each); `crafted_middle`: the same with the piece between two stars.
fn type_glob(c: &mut Criterion) {
    let mut group = c.benchmark_group("type_glob");
    let cases = [
        ("typical", "user.*".to_owned(), "user.created".to_owned()),
        ("crafted", format!("*{}b", "a".repeat(127)), "a".repeat(255)),
        ("crafted_middle", format!("*{}b*", "a".repeat(127)), "a".repeat(255)),
    ];
    for (name, filter, event_type) in cases {
        let glob = triggers::TypeGlob::parse(&filter).unwrap();
        group.bench_function(name, |b| b.iter(|| glob.matches(std::hint::black_box(&event_type))));
    }
    group.finish();
}

fn limiter(c: &mut Criterion) {
    let limiter = RateLimiter::new();
    let orgs: Vec<OrganizationId> = (0..1024).map(|_| OrganizationId::new()).collect();
    let now = SystemClock.now();
    let mut i = 0usize;
    c.bench_function("limiter_check", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            limiter.check(orgs[i], u32::MAX / 2, 1, now)
        })
    });
}

fn dedup(c: &mut Criterion) {
    let rt = runtime();
    let ing = rt.block_on(async { ingestor() });
    let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
    let hit = payload().with_dedup_id("always-the-same");
    rt.block_on(ing.ingest(&org, hit.clone())).unwrap();
    let mut group = c.benchmark_group("dedup");
    group.bench_function("hit", |b| {
        b.to_async(&rt).iter(|| async {
            let r = ing.ingest(&org, hit.clone()).await.unwrap();
            assert!(r.duplicate);
        })
    });
    let mut n = 0u64;
    group.bench_function("miss", |b| {
        b.to_async(&rt).iter_batched(
            || {
                n += 1;
                payload().with_dedup_id(format!("unique-{n}"))
            },
            |event| async { ing.ingest(&org, event).await.unwrap() },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The nesting-depth scan (`domain::json::nested_deeper_than`) over a batch body of 100
/// events of ≈ 150 B, as `POST /api/events/batch` runs it on the body and then on each payload.
fn json_depth(c: &mut Criterion) {
    use triggers::domain::json::nested_deeper_than;
    let item = json!({
        "type": "order.created",
        "dedup_id": "d7c1b5f0-3a59-4c8e-9b6f-0e6d2f7b1a42",
        "payload": {"order_id": 1234567, "customer": {"id": "c_81723", "email": "x@example.test"},
                    "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}], "note": "leave at door"}
    });
    let body = serde_json::to_vec(&json!({ "events": vec![item; 100] })).unwrap();
    let mut group = c.benchmark_group("json_depth");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("batch_body_100", |b| {
        b.iter(|| nested_deeper_than(std::hint::black_box(&body), 128))
    });
    group.finish();
}

/// A claim while one endpoint has `backlog` due deliveries and is at its cap of 16: it takes
/// nothing, and should cost the same whatever the backlog (`DeliveryQueue::claim`).
fn claim_behind_backlog(c: &mut Criterion) {
    use std::time::Duration;
    use triggers::store::{ClaimRequest, DeliveryQueue};
    use triggers::WorkerId;

    let rt = runtime();
    let mut group = c.benchmark_group("memory_queue");
    for backlog in [1_000usize, 20_000] {
        // An Ingestor without workers, so that the deliveries stay queued.
        let ing = rt.block_on(async { ingestor() });
        let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
        let store = ing.store();
        rt.block_on(async {
            // Never called: the Ingestor runs no workers.
            ing.create_endpoint(&org, "http://127.0.0.1:9/hook", None).await.unwrap();
            for _ in 0..backlog / 100 {
                ing.ingest_batch(&org, (0..100).map(|_| payload()).collect()).await.unwrap();
            }
        });
        // Every delivery is due now; the first claim fills the endpoint's 16 places.
        let now = SystemClock.now();
        let claim = |limit| {
            let req = ClaimRequest::new(WorkerId::new(), limit, Duration::from_secs(3600), now);
            req.with_caps(1000, 16)
        };
        assert_eq!(rt.block_on(store.claim(claim(100))).unwrap().len(), 16);
        group.bench_function(format!("claim_behind_capped_backlog_{backlog}"), |b| {
            b.iter(|| {
                let got = rt.block_on(store.claim(claim(16))).unwrap();
                assert!(got.is_empty());
            })
        });
        rt.block_on(ing.shutdown());
    }
    group.finish();
}

/// A retention round over a store holding `events` delivered events with dedup ids, none
/// of them old enough yet: what every other organization waits for behind the store's
/// mutex while the round runs (it should not grow with the store).
fn retention_over_full_store(c: &mut Criterion) {
    use triggers::store::Retention;

    let rt = runtime();
    let mut group = c.benchmark_group("memory_retention");
    for events in [1_000usize, 100_000] {
        let ing = rt.block_on(async { ingestor() });
        let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
        let start = SystemClock.now();
        rt.block_on(fill_delivered(&ing, &org, events));
        let store = ing.store();
        group.bench_function(format!("round_with_nothing_due_{events}"), |b| {
            b.iter(|| {
                let purged = rt.block_on(store.purge_finished_batch(start, 500)).unwrap();
                let forgotten = rt.block_on(store.purge_dedup_batch(start, 500)).unwrap();
                assert_eq!((purged, forgotten), (0, 0));
            })
        });
        rt.block_on(ing.shutdown());
    }
    // Every event old enough: a whole purge in the Ingestor's batches of 500.
    group.sample_size(10);
    group.bench_function("drain_100000_in_batches_of_500", |b| {
        b.iter_batched(
            || {
                let ing = rt.block_on(async { ingestor() });
                let (org, _) =
                    rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
                rt.block_on(fill_delivered(&ing, &org, 100_000));
                (ing, SystemClock.now())
            },
            |(ing, before)| {
                let store = ing.store();
                let mut purged = 0;
                while let n @ 1.. = rt.block_on(store.purge_finished_batch(before, 500)).unwrap() {
                    purged += n;
                }
                while rt.block_on(store.purge_dedup_batch(before, 500)).unwrap() > 0 {}
                assert_eq!(purged, 100_000);
                ing
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Stores `events` events with dedup ids and acknowledges them (delivered).
async fn fill_delivered(
    ing: &Ingestor<MemoryStore, NoDeliverer>,
    org: &triggers::Organization,
    events: usize,
) {
    for b in 0..events / 100 {
        let batch = (0..100).map(|i| payload().with_dedup_id(format!("{b}-{i}"))).collect();
        let done = ing.ingest_batch(org, batch).await.unwrap();
        let ids: Vec<_> = done.results.iter().map(|r| r.as_ref().unwrap().id).collect();
        ing.ack_many(org, &ids).await.unwrap();
    }
}

/// The first page of `pending` events (the inbox) of an organization whose older
/// `delivered` events number 1 000 or 100 000: it should not grow with them.
fn inbox_behind_delivered(c: &mut Criterion) {
    use triggers::store::{EventLog, ListQuery, DEFAULT_MAX_PAGE_BYTES};
    use triggers::EventStatus;

    let rt = runtime();
    let mut group = c.benchmark_group("memory_inbox");
    for delivered in [1_000usize, 100_000] {
        let ing = rt.block_on(async { ingestor() });
        let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
        rt.block_on(async {
            fill_delivered(&ing, &org, delivered).await;
            ing.ingest_batch(&org, (0..100).map(|_| payload()).collect()).await.unwrap();
        });
        let query = ListQuery {
            status: EventStatus::Pending,
            type_glob: None,
            limit: 100,
            after: None,
            max_bytes: DEFAULT_MAX_PAGE_BYTES,
        };
        let store = ing.store();
        group.bench_function(format!("pending_page_behind_{delivered}_delivered"), |b| {
            b.iter(|| {
                let page = rt.block_on(store.list_events(org.id, &query)).unwrap();
                assert_eq!(page.items.len(), 100);
            })
        });
        rt.block_on(ing.shutdown());
    }
    group.finish();
}

/// The newest page of an endpoint's attempts and of its deliveries, after 1 000 or 100 000
/// events were delivered to it: it should not grow with them.
fn history_after_many_deliveries(c: &mut Criterion) {
    use std::time::Duration;
    use triggers::store::{
        AttemptQuery, ClaimRequest, DeliveryHistory, DeliveryQuery, DeliveryQueue,
    };
    use triggers::WorkerId;

    let rt = runtime();
    let mut group = c.benchmark_group("memory_history");
    for delivered in [1_000usize, 100_000] {
        let ing = rt.block_on(async { ingestor() });
        let (org, _) = rt.block_on(ing.create_organization("bench", Tier::Enterprise)).unwrap();
        let store = ing.store();
        let endpoint = rt.block_on(async {
            // Never called: the bench completes the deliveries itself.
            let endpoint = ing.create_endpoint(&org, "http://127.0.0.1:9/hook", None).await;
            for _ in 0..delivered / 100 {
                ing.ingest_batch(&org, (0..100).map(|_| payload()).collect()).await.unwrap();
                let now = SystemClock.now();
                let req = ClaimRequest::new(WorkerId::new(), 100, Duration::from_secs(60), now);
                let claimed = store.claim(req.with_caps(1000, 1000)).await.unwrap();
                let done: Vec<_> = claimed.iter().map(|d| common::delivered(d, now)).collect();
                assert_eq!(store.complete(&done).await.unwrap().len(), 100);
            }
            endpoint.unwrap().id
        });
        group.bench_function(format!("attempts_page_after_{delivered}"), |b| {
            let query = AttemptQuery { success: None, since: None, before: None, limit: 50 };
            b.iter(|| {
                let page = rt.block_on(store.endpoint_attempts(org.id, endpoint, &query));
                assert_eq!(page.unwrap().unwrap().len(), 50);
            })
        });
        group.bench_function(format!("deliveries_page_after_{delivered}"), |b| {
            let query = DeliveryQuery { status: None, before: None, limit: 50 };
            b.iter(|| {
                let page = rt.block_on(store.endpoint_deliveries(org.id, endpoint, &query));
                assert_eq!(page.unwrap().unwrap().len(), 50);
            })
        });
        rt.block_on(ing.shutdown());
    }
    group.finish();
}

criterion_group!(
    benches,
    ingest,
    type_glob,
    limiter,
    dedup,
    json_depth,
    claim_behind_backlog,
    retention_over_full_store,
    inbox_behind_delivered,
    history_after_many_deliveries
);
criterion_main!(benches);
