//! Tenant quotas through HTTP: charged replays, superseded attempts kept, endpoint and
//! attempt caps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use triggers_core::clock::ManualClock;
use triggers_core::store::StoreLimits;
use triggers_core::{FnDeliverer, MemoryStore, Outcome, RetryPolicy, Tier, TierLimits};

use crate::support::{Client, Options, TestServer};

/// Polls `GET /api/events/{id}` until `done` holds (at most 10 s); returns the event.
async fn wait_for(c: &Client, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let e = c.get(&format!("/api/events/{id}"), key).await.json();
        if done(&e) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("event {id} never reached the expected state");
}

async fn webhook(c: &Client, key: &str, n: usize) -> crate::support::Resp {
    c.post("/api/webhook/config", key, json!({"url": format!("https://hooks.example.test/{n}")}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_costs_one_unit_per_delivery_and_429_changes_nothing() {
    let clock = ManualClock::new();
    let mut opts = Options::default();
    opts.ingestor.tier_limits = TierLimits::default().with(Tier::Free, 4);
    opts.ingestor.clock = Arc::new(clock.clone());
    let server = TestServer::start(opts).await;
    let c = &server.client;
    let key = server.key("free").await;
    for n in 0..2 {
        assert_eq!(webhook(c, &key, n).await.status, 201);
    }
    let r = c.event(&key, "t", None).await;
    assert_eq!(r.header("x-ratelimit-remaining"), "3");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let delivered =
        |e: &Value| e["status"] == "delivered" && e["attempts"].as_array().unwrap().len() == 2;
    wait_for(c, &key, &id, delivered).await;

    // Two endpoints: the replay costs 2.
    let r = c.post_empty(&format!("/api/events/{id}/replay"), &key).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(r.header("x-ratelimit-limit"), "4");
    assert_eq!(r.header("x-ratelimit-remaining"), "1");
    let after =
        |e: &Value| e["status"] == "delivered" && e["attempts"].as_array().unwrap().len() == 4;
    let before = wait_for(c, &key, &id, after).await;

    // One unit left, two needed: refused whole, with the rate headers, and nothing changes.
    let r = c.post_empty(&format!("/api/events/{id}/replay"), &key).await;
    let p = r.problem(429, "rate_limited");
    assert!(p["detail"].as_str().unwrap().contains("4 events per minute"), "{p}");
    assert_eq!(r.header("x-ratelimit-limit"), "4");
    assert_eq!(r.header("x-ratelimit-remaining"), "1");
    assert_eq!(r.header("retry-after"), "15", "one more unit refills in 15 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = c.get(&format!("/api/events/{id}"), &key).await.json();
    assert_eq!(now, before, "status and attempts unchanged");
    let stats = c.get("/api/queue/stats", &key).await.json();
    assert_eq!((stats["pending"].as_u64(), stats["in_flight"].as_u64()), (Some(0), Some(0)));
    // The refused replay charged nothing: the last unit still buys an ingest.
    assert_eq!(c.event(&key, "t", None).await.status, 202);

    // Unknown ids are 404 and cost nothing.
    clock.advance(Duration::from_secs(60));
    let r = c.post_empty(&format!("/api/events/{}/replay", uuid_like()), &key).await;
    r.problem(404, "not_found");
    assert_eq!(r.header("x-ratelimit-remaining"), "4");
}

fn uuid_like() -> String {
    "0190f0f0-0000-7000-8000-000000000000".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_replays_is_held_to_the_allowance() {
    let mut opts = Options::default();
    opts.ingestor.tier_limits = TierLimits::default().with(Tier::Free, 10);
    let server = TestServer::start(opts).await;
    let c = &server.client;
    let key = server.key("free").await;
    assert_eq!(webhook(c, &key, 0).await.status, 201);
    let id = c.event(&key, "t", None).await.json()["id"].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let (c, key, path) = (c.clone(), key.clone(), format!("/api/events/{id}/replay"));
            tokio::spawn(async move { c.post_empty(&path, &key).await.status })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            202 => accepted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 9, "10 per minute, one spent on the ingest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_in_flight_when_replayed_is_still_recorded() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let deliverer = FnDeliverer::new({
        let (gate, calls) = (gate.clone(), calls.clone());
        move |_| {
            let (gate, calls) = (gate.clone(), calls.clone());
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first attempt hangs until the test lets it go.
                    let _ = gate.acquire().await;
                    return Outcome::Retry { after: None, reason: "HTTP 503".into() };
                }
                Outcome::Delivered
            }
        }
    });
    let server = TestServer::start_with(MemoryStore::new(), deliverer, Options::default()).await;
    let c = &server.client;
    let key = server.key("enterprise").await;
    assert_eq!(webhook(c, &key, 0).await.status, 201);
    let id = c.event(&key, "t", None).await.json()["id"].as_str().unwrap().to_owned();
    for _ in 0..500 {
        if calls.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the first attempt is in flight");
    assert_eq!(c.post_empty(&format!("/api/events/{id}/replay"), &key).await.status, 202);
    let fresh = |e: &Value| e["status"] == "delivered";
    wait_for(c, &key, &id, fresh).await;
    gate.add_permits(1);
    let both = |e: &Value| e["attempts"].as_array().unwrap().len() == 2;
    let e = wait_for(c, &key, &id, both).await;
    let codes: Vec<_> =
        e["attempts"].as_array().unwrap().iter().map(|a| a["error"].clone()).collect();
    assert_eq!(codes, vec![Value::Null, json!("HTTP 503")], "the superseded attempt is kept");
    assert_eq!(e["status"], "delivered", "and it decides nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_past_the_cap_are_422_and_not_stored() {
    let limits = StoreLimits { max_endpoints: 3, ..StoreLimits::default() };
    let server = TestServer::start_on(MemoryStore::with_limits(limits), Options::default()).await;
    let c = &server.client;
    let (key, other) = (server.key("free").await, server.key("free").await);
    for n in 0..3 {
        assert_eq!(webhook(c, &key, n).await.status, 201);
    }
    let r = webhook(c, &key, 3).await;
    let p = r.problem(422, "limit_exceeded");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains('3') && detail.contains("webhook endpoints per organization"), "{p}");
    let listed = c.get("/api/webhook/config", &key).await.json();
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 3, "nothing stored");
    assert_eq!(webhook(c, &other, 0).await.status, 201, "per organization");
    // Deleting one frees its place.
    let first = listed["webhooks"][0]["id"].as_str().unwrap().to_owned();
    let r = c.send("DELETE", &format!("/api/webhooks/{first}"), Some(&key), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(webhook(c, &key, 4).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_keeps_its_newest_attempts_only() {
    let limits = StoreLimits { max_attempts_kept: 3, ..StoreLimits::default() };
    let failing =
        FnDeliverer::new(|_| async { Outcome::Retry { after: None, reason: "HTTP 500".into() } });
    let mut opts = Options::default();
    opts.ingestor.retry = RetryPolicy::with_delays(vec![Duration::ZERO; 6]);
    let server = TestServer::start_with(MemoryStore::with_limits(limits), failing, opts).await;
    let c = &server.client;
    let key = server.key("enterprise").await;
    assert_eq!(webhook(c, &key, 0).await.status, 201);
    let id = c.event(&key, "t", None).await.json()["id"].as_str().unwrap().to_owned();
    let e = wait_for(c, &key, &id, |e| e["status"] == "failed").await;
    let attempts = e["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "6 attempts made, 3 kept: {e}");
    let times: Vec<_> = attempts.iter().map(|a| a["at"].as_str().unwrap().to_owned()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_stay_bounded_under_steady_load_with_a_short_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = triggers_store_sqlite::SqliteStore::open(
        dir.path().join("retention.db"),
        triggers_store_sqlite::SqliteConfig::default(),
    )
    .unwrap();
    let clock = ManualClock::new();
    let mut opts = Options::default();
    opts.ingestor.clock = Arc::new(clock.clone());
    opts.ingestor.retention = Some(Duration::from_secs(10));
    opts.ingestor.dedup_window = Duration::from_secs(10);
    opts.ingestor.purge_interval = Some(Duration::from_millis(20));
    let server = TestServer::start_on(store, opts).await;
    let c = &server.client;
    let key = server.key("enterprise").await;
    let r = c
        .post(
            "/api/webhook/config",
            &key,
            json!({"url": "https://hooks.example.test/", "event_type_filter": "load.*"}),
        )
        .await;
    assert_eq!(r.status, 201);
    // Never delivered nor acknowledged: pending events are never purged.
    let kept = c.event(&key, "inbox.keep", None).await.json()["id"].as_str().unwrap().to_owned();
    let stats = |c: &Client, key: &str| {
        let (c, key) = (c.clone(), key.to_owned());
        async move { c.get("/api/queue/stats", &key).await.json() }
    };
    for round in 0..6 {
        let events: Vec<_> = (0..50)
            .map(|i| json!({"type": "load.x", "payload": {"i": i}, "dedup_id": format!("d{i}")}))
            .collect();
        let r = c.post("/api/events/batch", &key, json!({ "events": events })).await;
        assert_eq!(r.status, 200);
        let results = r.json()["results"].as_array().unwrap().clone();
        assert!(
            results.iter().all(|x| x["status"] == "accepted"),
            "round {round}: dedup ids past their window are forgotten: {results:?}"
        );
        // Delivered by the workers (webhook), then aged past the retention.
        let mut s = stats(c, &key).await;
        for _ in 0..500 {
            if s["pending"] == 1 && s["delivered"] == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            s = stats(c, &key).await;
        }
        assert_eq!(
            (s["pending"].as_u64(), s["delivered"].as_u64()),
            (Some(1), Some(50)),
            "round {round}"
        );
        clock.advance(Duration::from_secs(11));
        for _ in 0..500 {
            if s["delivered"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            s = stats(c, &key).await;
        }
        assert_eq!(
            (s["pending"].as_u64(), s["delivered"].as_u64()),
            (Some(1), Some(0)),
            "round {round}: purged"
        );
    }
    let e = c.get(&format!("/api/events/{kept}"), &key).await;
    assert_eq!(e.json()["status"], "pending", "the pending event is still there");
    let page = c.get("/api/inbox?status=delivered", &key).await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
}

/// An organization that never acknowledges keeps at most its tier's rate times
/// `TRIGGERS_MAX_PENDING` pending events: past that, ingests are 422 `limit_exceeded`,
/// nothing stored or charged, until it acknowledges some; another organization ingests on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_past_the_bound_are_refused_until_acknowledged() {
    let clock = ManualClock::new();
    let mut opts = Options::default();
    opts.ingestor.tier_limits = TierLimits::default().with(Tier::Free, 5);
    opts.ingestor.clock = Arc::new(clock.clone());
    // 5 a minute, two minutes: 10 pending events.
    opts.ingestor.max_pending = Some(Duration::from_secs(120));
    let server = TestServer::start(opts).await;
    let c = &server.client;
    let (key, other) = (server.key("free").await, server.key("free").await);
    let batch = |n: usize| json!({"events": (0..n).map(|i| json!({"type": "kept", "payload": {"i": i}})).collect::<Vec<_>>()});
    assert_eq!(c.post("/api/events/batch", &key, batch(5)).await.status, 200);
    clock.advance(Duration::from_secs(60));
    assert_eq!(c.post("/api/events/batch", &key, batch(4)).await.status, 200);

    let r = c.post("/api/events/batch", &key, batch(2)).await;
    let body = r.problem(422, "limit_exceeded");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("10 pending events") && detail.contains("TRIGGERS_MAX_PENDING"),
        "{detail}"
    );
    let last = c.event(&key, "kept", None).await;
    assert_eq!(last.status, 202);
    c.event(&key, "one.too.many", None).await.problem(422, "limit_exceeded");
    let stats = c.get("/api/queue/stats", &key).await.json();
    assert_eq!(stats["pending"], 10, "nothing stored: {stats}");
    assert_eq!(c.event(&other, "theirs", None).await.status, 202);

    // With the allowance full again, refusals charge nothing.
    clock.advance(Duration::from_secs(60));
    c.event(&key, "still.full", None).await.problem(422, "limit_exceeded");
    c.post("/api/events/batch", &key, batch(1)).await.problem(422, "limit_exceeded");
    let stats = c.get("/api/queue/stats", &key).await;
    assert_eq!(stats.header("x-ratelimit-remaining"), "5", "nothing charged");
    let id = last.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(c.post_empty(&format!("/api/ack/{id}"), &key).await.status, 200);
    assert_eq!(c.event(&key, "room.again", None).await.status, 202);
    c.event(&key, "full.again", None).await.problem(422, "limit_exceeded");
}
