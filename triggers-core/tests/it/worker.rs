//! The worker queue: retries on a test clock, crashes, timeouts, panics, shutdown, fan-out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use triggers_core::store::{ClaimRequest, DeliveryQueue, EndpointStore};
use triggers_core::*;

use crate::eventually;

fn policy(delays: &[u64]) -> RetryPolicy {
    RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::with_delays(delays.iter().map(|s| Duration::from_secs(*s)).collect())
    }
}

fn config(clock: &ManualClock, retry: RetryPolicy) -> IngestorConfig {
    IngestorConfig {
        clock: Arc::new(clock.clone()),
        tier_limits: TierLimits::default().with(Tier::Enterprise, 1_000_000),
        retry,
        worker: WorkerConfig {
            concurrency: 8,
            poll_interval: Duration::from_millis(5),
            shutdown_grace: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        ..IngestorConfig::default()
    }
}

/// A deliverer that answers from a script per attempt number, and records what it saw.
#[derive(Clone, Default)]
struct Scripted {
    seen: Arc<Mutex<Vec<(EventId, u32, String)>>>,
}

impl Scripted {
    fn deliverer(&self, script: impl Fn(u32) -> Outcome + Send + Sync + 'static) -> FnDeliverer {
        let seen = self.seen.clone();
        let script = Arc::new(script);
        FnDeliverer::new(move |d: store::Delivery| {
            seen.lock().unwrap().push((d.event_id, d.attempt, d.url.clone()));
            let script = script.clone();
            async move { script(d.attempt) }
        })
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn attempts<S: EventStore, D: Deliverer>(
    ing: &Ingestor<S, D>,
    org: &Organization,
    id: EventId,
) -> Vec<AttemptRecord> {
    ing.event(org, id).await.unwrap().attempts
}

/// Real time long enough for several poll intervals, to show nothing happens early.
async fn quiet() {
    tokio::time::sleep(Duration::from_millis(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_in_process_exactly_once_each() {
    let clock = ManualClock::new();
    let seen = Scripted::default();
    let ing = Ingestor::start(
        MemoryStore::new(),
        seen.deliverer(|_| Outcome::Delivered),
        config(&clock, policy(&[0])),
    );
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://all", None).await.unwrap();
    for i in 0..50 {
        ing.ingest(&org, NewEvent::new("t", &json!(i))).await.unwrap();
    }
    eventually("all 50 delivered", || async { ing.stats(&org).await.unwrap().delivered == 50 })
        .await;
    let mut ids: Vec<_> = seen.seen.lock().unwrap().iter().map(|s| s.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    assert_eq!(seen.count(), 50, "each delivered once");
    ing.shutdown().await;
}

/// One delivery at a time per endpoint, and a poll interval so long that only wake-ups and
/// completions can start a claim during a test.
fn capped_config() -> IngestorConfig {
    let mut config = config(&ManualClock::new(), policy(&[0]));
    config.worker.endpoint_concurrency = 1;
    config.worker.poll_interval = Duration::from_secs(30);
    config
}

/// An endpoint at its concurrency cap gets its freed slot taken again in the round trip that
/// records the attempt that freed it: one queue call per delivery, not a completion and then
/// a claim (issue #13: every refill of a capped endpoint waited for two commits, which
/// halved the delivery rate to one endpoint). The poll interval is long, so a refill that
/// nobody made would stall the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_endpoint_is_refilled_in_the_round_trip_that_frees_it() {
    let store = crate::counting::Counting::default();
    let config = capped_config();
    let deliverer = FnDeliverer::new(|_| async { Outcome::Delivered });
    let ing = Ingestor::start(store.clone(), deliverer, config);
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://capped", None).await.unwrap();
    let events = (0..40).map(|i| NewEvent::new("t", &json!(i))).collect();
    ing.ingest_batch(&org, events).await.unwrap();
    eventually("all 40 delivered", || async { ing.stats(&org).await.unwrap().delivered == 40 })
        .await;
    // 40, plus a few claims of the dispatcher's own (at start, on the ingest's wake-up, or
    // when it held the free permits as a batch came in); two per delivery before.
    let calls = store.queue_calls();
    assert!(calls <= 40 + 8, "{calls} queue round trips for 40 deliveries one at a time");
    ing.shutdown().await;
}

/// A stream of events for an endpoint at its cap: each event wakes the dispatcher, but a
/// wake-up within `wake_coalesce` of the last short claim waits, so the store sees at most
/// one claim per interval instead of one per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_for_an_endpoint_at_its_cap_do_not_claim_once_per_event() {
    let store = crate::counting::Counting::default();
    let mut config = capped_config();
    config.worker.wake_coalesce = Duration::from_millis(20);
    let coalesce = config.worker.wake_coalesce;
    // The endpoint's one attempt hangs until the test ends: it stays at its cap.
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let deliverer = FnDeliverer::new(move |_| {
        let g = g.clone();
        async move {
            g.notified().await;
            Outcome::Delivered
        }
    });
    let ing = Ingestor::start(store.clone(), deliverer, config);
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://capped", None).await.unwrap();
    ing.ingest(&org, NewEvent::new("t", &json!(0))).await.unwrap();
    eventually("the first attempt runs", || async {
        ing.stats(&org).await.unwrap().in_flight == 1
    })
    .await;

    let before = store.queue_calls();
    let started = std::time::Instant::now();
    // An event about every millisecond: each wakes the dispatcher after its last claim ended.
    for i in 1..=100 {
        ing.ingest(&org, NewEvent::new("t", &json!(i))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let claims = store.queue_calls() - before;
    // A claim a wake-up starts begins at least WAKE_COALESCE after the previous one ended:
    // at most one per interval, plus the ones in progress at either end. (Without the rule,
    // about one per event.)
    let intervals = elapsed.as_micros() / coalesce.as_micros();
    let bound = u64::try_from(intervals).unwrap_or(u64::MAX).saturating_add(2);
    assert!(claims <= bound.min(50), "{claims} claims for 100 events in {elapsed:?}");
    gate.notify_waiters();
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_at_the_scheduled_times() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let seen = Scripted::default();
    let deliverer = seen.deliverer(|attempt| {
        if attempt <= 2 {
            Outcome::Retry { after: None, reason: format!("boom {attempt}") }
        } else {
            Outcome::Delivered
        }
    });
    let ing = Ingestor::start(MemoryStore::new(), deliverer, config(&clock, policy(&[0, 5, 300])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let ep = ing.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;

    eventually("attempt 1", || async { attempts(&ing, &org, id).await.len() == 1 }).await;
    clock.advance(Duration::from_secs(4));
    quiet().await;
    assert_eq!(attempts(&ing, &org, id).await.len(), 1, "attempt 2 is not due before 5 s");
    clock.advance(Duration::from_secs(1));
    eventually("attempt 2", || async { attempts(&ing, &org, id).await.len() == 2 }).await;
    clock.advance(Duration::from_secs(299));
    quiet().await;
    assert_eq!(attempts(&ing, &org, id).await.len(), 2, "attempt 3 is not due before 5 min");
    clock.advance(Duration::from_secs(1));
    eventually("delivered", || async {
        ing.event(&org, id).await.unwrap().event.status == EventStatus::Delivered
    })
    .await;

    let recs = attempts(&ing, &org, id).await;
    let offsets: Vec<i64> = recs.iter().map(|r| (r.at - t0).num_seconds()).collect();
    assert_eq!(offsets, vec![0, 5, 305]);
    assert_eq!(recs[0].error.as_deref(), Some("boom 1"));
    assert_eq!(recs[2].error, None);
    assert!(recs.iter().all(|r| r.endpoint_id == ep.id));
    let attempt_numbers: Vec<u32> = seen.seen.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(attempt_numbers, vec![1, 2, 3]);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_and_replay_delivers_again() {
    let clock = ManualClock::new();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Scripted::default();
    let f = fail.clone();
    let deliverer = seen.deliverer(move |_| {
        if f.load(Ordering::SeqCst) {
            Outcome::Retry { after: None, reason: "500".into() }
        } else {
            Outcome::Delivered
        }
    });
    let ing = Ingestor::start(MemoryStore::new(), deliverer, config(&clock, policy(&[0, 1])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    eventually("attempt 1", || async { attempts(&ing, &org, id).await.len() == 1 }).await;
    clock.advance(Duration::from_secs(1));
    eventually("failed", || async {
        ing.event(&org, id).await.unwrap().event.status == EventStatus::Failed
    })
    .await;
    clock.advance(Duration::from_secs(3600));
    quiet().await;
    assert_eq!(attempts(&ing, &org, id).await.len(), 2, "no attempt after the schedule ends");

    fail.store(false, Ordering::SeqCst);
    assert_eq!(ing.replay(&org, id).await.unwrap().status, EventStatus::Pending);
    eventually("delivered after replay", || async {
        ing.event(&org, id).await.unwrap().event.status == EventStatus::Delivered
    })
    .await;
    assert_eq!(attempts(&ing, &org, id).await.len(), 3);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_loses_its_lease_and_another_delivers() {
    let clock = ManualClock::new();
    let store = MemoryStore::new();

    // Node A runs on its own runtime; its deliverer hangs once it has the delivery.
    let node_a =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let got_it = Arc::new(tokio::sync::Notify::new());
    let hang = {
        let got_it = got_it.clone();
        FnDeliverer::new(move |_d| {
            let got_it = got_it.clone();
            async move {
                got_it.notify_one();
                std::future::pending::<Outcome>().await
            }
        })
    };
    let ing_a = {
        let _guard = node_a.enter();
        Ingestor::start(store.clone(), hang, config(&clock, policy(&[0, 5])))
    };
    let (org, _) = ing_a.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing_a.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = ing_a.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    tokio::time::timeout(Duration::from_secs(10), got_it.notified()).await.unwrap();
    // The crash: every task of node A dies at once, nothing is released.
    node_a.shutdown_background();

    let seen = Scripted::default();
    let ing_b = Ingestor::start(
        store.clone(),
        seen.deliverer(|_| Outcome::Delivered),
        config(&clock, policy(&[0, 5])),
    );
    quiet().await;
    assert_eq!(seen.count(), 0, "the lease is still live");
    assert_eq!(ing_b.stats(&org).await.unwrap().in_flight, 1);
    clock.advance(WorkerConfig::default().lease + Duration::from_secs(1));
    eventually("redelivered", || async {
        ing_b.event(&org, id).await.unwrap().event.status == EventStatus::Delivered
    })
    .await;
    let seen = seen.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].0, seen[0].1), (id, 2), "same event id, next attempt number");
    ing_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_become_retries() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let deliverer = FnDeliverer::new(move |d: store::Delivery| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            match d.attempt {
                1 => panic!("deliverer bug"),
                2 => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Outcome::Delivered
                }
                _ => Outcome::Delivered,
            }
        }
    });
    let mut cfg = config(&clock, policy(&[0, 1, 1]));
    cfg.worker.delivery_timeout = Duration::from_millis(500);
    let ing = Ingestor::start(MemoryStore::new(), deliverer, cfg);
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    eventually("attempt 1", || async { attempts(&ing, &org, id).await.len() == 1 }).await;
    clock.advance(Duration::from_secs(1));
    eventually("attempt 2", || async { attempts(&ing, &org, id).await.len() == 2 }).await;
    clock.advance(Duration::from_secs(1));
    eventually("delivered", || async {
        ing.event(&org, id).await.unwrap().event.status == EventStatus::Delivered
    })
    .await;
    let recs = attempts(&ing, &org, id).await;
    assert_eq!(recs[0].error.as_deref(), Some("deliverer panicked"));
    assert!(recs[1].error.as_deref().unwrap().contains("timed out"), "{:?}", recs[1].error);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_unfinished_deliveries() {
    let clock = ManualClock::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let deliverer = FnDeliverer::new(move |_| {
        let s = s.clone();
        async move {
            s.notify_one();
            std::future::pending::<Outcome>().await
        }
    });
    let store = MemoryStore::new();
    let ing = Ingestor::start(store.clone(), deliverer, config(&clock, policy(&[0, 5])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), ing.shutdown()).await.unwrap();
    // Released: due at once, attempt number restored, nothing recorded.
    let claimed = store
        .claim(ClaimRequest::new(WorkerId::new(), 10, Duration::from_secs(60), clock.now()))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].event_id, claimed[0].attempt), (id, 1));
    assert!(attempts(&ing, &org, id).await.is_empty());
    // Ingestion keeps working after the workers stopped.
    ing.ingest(&org, NewEvent::new("t", &json!(2))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_and_long_failing_endpoints_are_disabled() {
    let clock = ManualClock::new();
    let seen = Scripted::default();
    let deliverer = seen.deliverer(|_| Outcome::Retry { after: None, reason: "503".into() });
    let gone = Scripted::default();
    let _ = gone;
    let mut cfg = config(&clock, policy(&[0, 3600, 3600, 3600]));
    cfg.worker.disable_after = Duration::from_secs(2 * 3600);
    let ing = Ingestor::start(MemoryStore::new(), deliverer, cfg);
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let ep = ing.create_endpoint(&org, "inproc://flaky", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    for n in 1..=2 {
        eventually("attempt", || async { attempts(&ing, &org, id).await.len() == n }).await;
        clock.advance(Duration::from_secs(3600));
    }
    // Third failure is two hours after the first: the endpoint is disabled.
    eventually("disabled", || async { !ing.endpoints(&org).await.unwrap()[0].enabled }).await;
    let eps = ing.endpoints(&org).await.unwrap();
    assert_eq!(eps[0].id, ep.id);
    assert!(
        eps[0].disabled_reason.as_deref().unwrap().contains("failing"),
        "{:?}",
        eps[0].disabled_reason
    );
    clock.advance(Duration::from_secs(3600));
    quiet().await;
    assert_eq!(attempts(&ing, &org, id).await.len(), 3, "disabled endpoints get no attempts");
    ing.shutdown().await;

    // 410 Gone disables at once.
    let ing = Ingestor::start(
        MemoryStore::new(),
        FnDeliverer::new(|_| async { Outcome::Gone("410 Gone".into()) }),
        config(&clock, policy(&[0, 5])),
    );
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://gone", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    eventually("failed", || async {
        ing.event(&org, id).await.unwrap().event.status == EventStatus::Failed
    })
    .await;
    let eps = ing.endpoints(&org).await.unwrap();
    assert!(!eps[0].enabled);
    assert!(eps[0].disabled_reason.as_deref().unwrap().contains("410"));
    ing.shutdown().await;
}

/// A completion that disables an endpoint fails at most one batch of its backlog in the
/// completion batch it shares with other organizations; the workers fail the rest in writes
/// of their own right after. If that stops (here: refused, as in a crash), the rest waits,
/// never delivered, and the next start of the workers finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoints_whole_backlog_is_failed_also_after_a_restart() {
    let n = store::BACKLOG_BATCH + 30;
    // Each attempt waits until every event is in, so the backlog is whole when the first
    // completion disables the endpoint.
    let (open, opened) = tokio::sync::watch::channel(false);
    let gone = move || {
        let opened = opened.clone();
        FnDeliverer::new(move |_| {
            let mut opened = opened.clone();
            async move {
                let _ = opened.wait_for(|open| *open).await;
                Outcome::Gone("410 Gone".into())
            }
        })
    };
    let clock = ManualClock::new();
    for refused in [false, true] {
        open.send_replace(false);
        let store = crate::counting::Counting::default();
        store.refuse_finishing(refused);
        let ing = Ingestor::start(store.clone(), gone(), config(&clock, policy(&[0])));
        let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
        ing.create_endpoint(&org, "inproc://gone", Some("t")).await.unwrap();
        for chunk in 0..n.div_ceil(100) {
            let count = (n - chunk * 100).min(100);
            let events = (0..count).map(|i| NewEvent::new("t", &json!(i))).collect();
            ing.ingest_batch(&org, events).await.unwrap();
        }
        open.send_replace(true);
        eventually("disabled", || async { !ing.endpoints(&org).await.unwrap()[0].enabled }).await;
        if refused {
            quiet().await;
            let left = store.queue_depth().await.unwrap();
            // `concurrency` (8) attempts were in flight: each completion ends its own.
            assert!(left >= 30 - 8, "one batch at most failed by the completion: {left} left");
            assert_eq!(store.unfinished_disables().await.unwrap().len(), 1);
            ing.shutdown().await;
            store.refuse_finishing(false);
            // A start whose finishing takes long (held here) still shuts down at once: the
            // work is cut off, and the next start does it.
            let held = store.sharing_data();
            held.hold_finishing();
            let calls = held.finish_calls();
            let ing = Ingestor::start(held.clone(), gone(), config(&clock, policy(&[0])));
            eventually("finishing started", || async { held.finish_calls() > calls }).await;
            tokio::time::timeout(Duration::from_secs(10), ing.shutdown()).await.unwrap();
            assert!(store.queue_depth().await.unwrap() > 0, "cut off, not finished");
            let ing = Ingestor::start(store.clone(), gone(), config(&clock, policy(&[0])));
            eventually("finished at the next start", || async {
                store.queue_depth().await.unwrap() == 0
            })
            .await;
            assert_eq!(ing.stats(&org).await.unwrap().failed, n as u64);
            ing.shutdown().await;
        } else {
            eventually("every event failed", || async {
                ing.stats(&org).await.unwrap().failed == n as u64
            })
            .await;
            assert_eq!(store.queue_depth().await.unwrap(), 0);
            ing.shutdown().await;
        }
    }
}

/// Two deliveries of one endpoint in flight answer 410 in different completion batches:
/// the first completion disables the endpoint (and fails a batch of its backlog, which the
/// second, still in flight, is not in; the follow-up that fails the rest is refused here,
/// as by a store fault), the second applies too — and the disable is announced once, by the
/// call the store reports turned it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_is_announced_once_however_many_answers_say_so() {
    let n = store::BACKLOG_BATCH + 30;
    let (open, opened) = tokio::sync::watch::channel(false);
    let (second, second_go) = tokio::sync::watch::channel(false);
    let calls = Arc::new(AtomicU32::new(0));
    let attempted = Arc::new(Mutex::new(Vec::new()));
    let deliverer = {
        let (calls, attempted) = (calls.clone(), attempted.clone());
        FnDeliverer::new(move |d: store::Delivery| {
            let (mut opened, mut second_go) = (opened.clone(), second_go.clone());
            let call = calls.fetch_add(1, Ordering::SeqCst);
            attempted.lock().unwrap().push(d.event_id);
            async move {
                // Every attempt waits until the whole backlog is in; the second one also
                // until the first one's disable is recorded.
                let _ = opened.wait_for(|open| *open).await;
                if call > 0 {
                    let _ = second_go.wait_for(|go| *go).await;
                }
                Outcome::Gone("410 Gone".into())
            }
        })
    };
    let store = crate::counting::Counting::default();
    store.refuse_finishing(true);
    let ing = Ingestor::start(store.clone(), deliverer, config(&ManualClock::new(), policy(&[0])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let ep = ing.create_endpoint(&org, "inproc://gone", Some("t")).await.unwrap();
    for chunk in 0..n.div_ceil(100) {
        let count = (n - chunk * 100).min(100);
        let events = (0..count).map(|i| NewEvent::new("t", &json!(i))).collect();
        ing.ingest_batch(&org, events).await.unwrap();
    }
    eventually("two attempts in flight", || async { calls.load(Ordering::SeqCst) == 2 }).await;
    open.send_replace(true);
    eventually("disabled", || async { !ing.endpoint(&org, ep.id).await.unwrap().enabled }).await;
    second.send_replace(true);
    // Both answers were recorded: the second completion applied after the disable.
    let ids: Vec<EventId> = attempted.lock().unwrap().clone();
    for id in ids {
        eventually("its attempt recorded", || async { attempts(&ing, &org, id).await.len() == 1 })
            .await;
    }
    let announced = || async {
        let glob = TypeGlob::parse("triggers.endpoint.disabled").unwrap();
        let query = InboxQuery { type_glob: Some(glob), ..InboxQuery::default() };
        ing.inbox(&org, query).await.unwrap().events.len()
    };
    eventually("the announcement", || async { announced().await >= 1 }).await;
    quiet().await;
    assert_eq!(announced().await, 1, "one disable, one announcement");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no other attempt was made");
    ing.shutdown().await;
}

/// The store call that disables an endpoint fails after its commit (a connection lost): the
/// worker's retry finds its completion stale, and still the disable is announced, once —
/// the store wrote the announcement with the disable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_is_announced_when_its_store_call_fails_after_the_commit() {
    let deliverer = FnDeliverer::new(|_: store::Delivery| async { Outcome::Gone("410".into()) });
    let store = crate::counting::Counting::default();
    store.fail_after_commit(1);
    let ing = Ingestor::start(store.clone(), deliverer, config(&ManualClock::new(), policy(&[0])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let ep = ing.create_endpoint(&org, "inproc://gone", Some("t")).await.unwrap();
    ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap();
    eventually("disabled", || async { !ing.endpoint(&org, ep.id).await.unwrap().enabled }).await;
    let announced = || async {
        let glob = TypeGlob::parse("triggers.endpoint.disabled").unwrap();
        let query = InboxQuery { type_glob: Some(glob), ..InboxQuery::default() };
        ing.inbox(&org, query).await.unwrap().events
    };
    eventually("the announcement", || async { !announced().await.is_empty() }).await;
    quiet().await;
    let events = announced().await;
    assert_eq!(events.len(), 1, "one disable, one announcement");
    assert!(events[0].payload.get().contains(&ep.id.to_string()), "{}", events[0].payload.get());
    ing.shutdown().await;
}

/// The store call that disables an endpoint with a backlog fails after its commit: no call
/// reports the disable, and still its whole backlog is failed without a restart (after such
/// a failure the worker finishes every disable the batch asked for), also when finishing
/// fails at first (it is tried again until the store answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_whose_store_call_failed_after_the_commit_is_finished() {
    let n = store::BACKLOG_BATCH + 30;
    let (open, opened) = tokio::sync::watch::channel(false);
    let deliverer = FnDeliverer::new(move |_: store::Delivery| {
        let mut opened = opened.clone();
        async move {
            let _ = opened.wait_for(|open| *open).await;
            Outcome::Gone("410 Gone".into())
        }
    });
    let store = crate::counting::Counting::default();
    let ing = Ingestor::start(store.clone(), deliverer, config(&ManualClock::new(), policy(&[0])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let ep = ing.create_endpoint(&org, "inproc://gone", Some("t")).await.unwrap();
    // One delivery in flight at a time: no later answer of the endpoint's (applied, and
    // disabling too) can start the finishing instead.
    let one = store::EndpointPatch { concurrency: Some(Some(1)), ..Default::default() };
    ing.update_endpoint(&org, ep.id, &one).await.unwrap();
    for chunk in 0..n.div_ceil(100) {
        let count = (n - chunk * 100).min(100);
        let events = (0..count).map(|i| NewEvent::new("t", &json!(i))).collect();
        ing.ingest_batch(&org, events).await.unwrap();
    }
    store.fail_after_commit(1);
    store.refuse_finishing(true);
    open.send_replace(true);
    eventually("disabled", || async { !ing.endpoint(&org, ep.id).await.unwrap().enabled }).await;
    eventually("finishing tried", || async { store.finish_calls() > 0 }).await;
    store.refuse_finishing(false);
    eventually("the whole backlog failed", || async {
        let stats = ing.stats(&org).await.unwrap();
        // The backlog, and the announcement (pending in the inbox).
        (stats.failed, stats.pending) == (n as u64, 1)
    })
    .await;
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_follows_filters() {
    let clock = ManualClock::new();
    let seen = Scripted::default();
    let ing = Ingestor::start(
        MemoryStore::new(),
        seen.deliverer(|_| Outcome::Delivered),
        config(&clock, policy(&[0])),
    );
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://all", None).await.unwrap();
    ing.create_endpoint(&org, "inproc://users", Some("user.*")).await.unwrap();
    ing.create_endpoint(&org, "inproc://orders", Some("order.paid")).await.unwrap();
    for t in ["user.created", "user.deleted", "order.paid", "order.refunded"] {
        ing.ingest(&org, NewEvent::new(t, &json!({}))).await.unwrap();
    }
    eventually("all delivered", || async { ing.stats(&org).await.unwrap().delivered == 4 }).await;
    let mut per_url: HashMap<String, usize> = HashMap::new();
    for (_, _, url) in seen.seen.lock().unwrap().iter() {
        *per_url.entry(url.clone()).or_default() += 1;
    }
    assert_eq!(per_url["inproc://all"], 4);
    assert_eq!(per_url["inproc://users"], 2);
    assert_eq!(per_url["inproc://orders"], 1);
    ing.shutdown().await;
}

/// An endpoint deleted while a worker is delivering to it: the request was really sent, so
/// its attempt still lands in the event's history when it ends (the completion itself is
/// stale and decides nothing), and nothing is delivered to the endpoint again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_in_flight_when_its_endpoint_is_deleted_is_recorded() {
    let clock = ManualClock::new();
    let (started, release) =
        (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let held = {
        let (started, release, calls) = (started.clone(), release.clone(), calls.clone());
        FnDeliverer::new(move |_d| {
            let (started, release) = (started.clone(), release.clone());
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                started.notify_one();
                release.notified().await;
                Outcome::Delivered
            }
        })
    };
    let ing = Ingestor::start(MemoryStore::new(), held, config(&clock, policy(&[0])));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let endpoint = ing.create_endpoint(&org, "inproc://doomed", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("t", &json!(1))).await.unwrap().id;
    tokio::time::timeout(Duration::from_secs(10), started.notified()).await.unwrap();

    ing.delete_endpoint(&org, endpoint.id).await.unwrap();
    assert!(attempts(&ing, &org, id).await.is_empty(), "nothing recorded before it ends");
    release.notify_one();
    eventually("the attempt recorded", || async { attempts(&ing, &org, id).await.len() == 1 })
        .await;
    let recorded = attempts(&ing, &org, id).await;
    assert_eq!(recorded[0].endpoint_id, endpoint.id);
    assert_eq!(recorded[0].error, None);
    let stats = ing.stats(&org).await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (1, 0), "the event keeps its status");
    quiet().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "delivered to a deleted endpoint again");
    ing.shutdown().await;
}
