//! Rate limits through HTTP, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use triggers_core::clock::ManualClock;
use triggers_core::{Tier, TierLimits};

use crate::support::{Options, TestServer};

/// A server on a manual clock whose free tier allows 3 units a minute.
async fn free_tier_of_three() -> (ManualClock, TestServer) {
    let clock = ManualClock::new();
    let mut opts = Options::default();
    opts.ingestor.tier_limits = TierLimits::default().with(Tier::Free, 3);
    opts.ingestor.clock = Arc::new(clock.clone());
    (clock, TestServer::start(opts).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_after_the_allowance_is_429_and_other_orgs_are_unaffected() {
    let (clock, server) = free_tier_of_three().await;
    let c = &server.client;
    let (a, b) = (server.key("free").await, server.key("free").await);

    for remaining in [2, 1, 0] {
        let r = c.event(&a, "t", None).await;
        assert_eq!(r.status, 202);
        assert_eq!(r.header("x-ratelimit-limit"), "3");
        assert_eq!(r.header("x-ratelimit-remaining"), remaining.to_string());
    }
    let r = c.event(&a, "t", None).await;
    let p = r.problem(429, "rate_limited");
    assert!(p["detail"].as_str().unwrap().contains("3 events per minute"));
    assert_eq!(r.header("x-ratelimit-limit"), "3");
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    assert_eq!(r.header("retry-after"), "20", "one event refills every 20 s");
    assert_eq!(r.header("x-ratelimit-reset"), "60");
    // A batch is refused whole, and other routes still answer with the (unchanged) headers.
    let batch = json!({"events": [{"type": "t", "payload": 1}]});
    c.post("/api/events/batch", &a, batch.clone()).await.problem(429, "rate_limited");
    let r = c.get("/api/inbox", &a).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 3, "refused events were not stored");
    assert_eq!(r.header("x-ratelimit-remaining"), "0");

    // Another organization of the same tier has its own allowance.
    let r = c.event(&b, "t", None).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-ratelimit-remaining"), "2");

    // A batch costs its size: 3 events is more than b has left.
    let three = json!({"events": [{"type": "t", "payload": 1}, {"type": "t", "payload": 2}, {"type": "t", "payload": 3}]});
    c.post("/api/events/batch", &b, three).await.problem(429, "rate_limited");

    // The allowance refills evenly.
    clock.advance(Duration::from_secs(20));
    let r = c.event(&a, "t", None).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    c.event(&a, "t", None).await.problem(429, "rate_limited");

    let metrics = c.send("GET", "/metrics", None, None).await.text();
    assert!(metrics.contains("triggers_rate_limited_requests_total 4"), "{metrics}");
    assert!(
        metrics.contains("triggers_ingest_events_total{outcome=\"rate_limited\"} 6"),
        "{metrics}"
    );
}

/// A request that costs more than the tier's whole per-minute limit can never pass: 422
/// `limit_exceeded` naming the limit, nothing charged or stored — a 429 would have a client
/// that honours `Retry-After` send it forever. One within the limit still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_costing_more_than_a_minutes_allowance_is_422_not_429() {
    let (clock, server) = free_tier_of_three().await;
    let c = &server.client;
    let key = server.key("free").await;

    let four: Vec<_> = (0..4).map(|n| json!({"type": "t", "payload": n})).collect();
    let r = c.post("/api/events/batch", &key, json!({ "events": four })).await;
    let p = r.problem(422, "limit_exceeded");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("limit of 3 rate-limit units in one request"), "{detail}");
    assert_eq!(r.header("retry-after"), "", "nothing to wait for");
    let r = c.get("/api/inbox", &key).await;
    assert!(r.json()["events"].as_array().unwrap().is_empty(), "nothing stored");
    assert_eq!(r.header("x-ratelimit-remaining"), "3", "nothing charged");

    // A replay to four endpoints costs four.
    for n in 0..4 {
        let url = format!("http://127.0.0.1:9/hook{n}");
        let r = c.post("/api/webhook/config", &key, json!({ "url": url })).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = c.event(&key, "t", None).await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = c.post_empty(&format!("/api/events/{id}/replay"), &key).await;
    r.problem(422, "limit_exceeded");
    assert_eq!(r.header("x-ratelimit-remaining"), "2", "only the event was charged");

    let three: Vec<_> = (0..3).map(|n| json!({"type": "t", "payload": n})).collect();
    clock.advance(Duration::from_secs(60));
    let r = c.post("/api/events/batch", &key, json!({ "events": three })).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
