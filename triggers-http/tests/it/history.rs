//! Delivery history over HTTP, end to end: real deliveries from the server's webhook
//! deliverer to a receiver on 127.0.0.1 (over SQLite), then `GET /api/webhooks/{id}/attempts`
//! and `GET /api/deliveries` answer what happened, newest first, page by page.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use triggers_core::{IngestorConfig, RetryPolicy, Tier, TierLimits, WorkerConfig};
use triggers_http::{ServerConfig, WebhookConfig, WebhookDeliverer};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::receiver::Receiver;
use crate::support::{Options, TestServer};

async fn server(dir: &tempfile::TempDir) -> TestServer {
    let store = SqliteStore::open(dir.path().join("history.db"), SqliteConfig::default()).unwrap();
    let webhooks =
        WebhookConfig { allow: vec!["127.0.0.0/8".parse().unwrap()], ..WebhookConfig::default() };
    let deliverer = WebhookDeliverer::new(webhooks).unwrap();
    let ingestor = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 1_000_000),
        // Retries without waiting.
        retry: RetryPolicy::with_delays(vec![Duration::ZERO; 2]),
        worker: WorkerConfig {
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
        ..IngestorConfig::default()
    };
    TestServer::start_with(store, deliverer, Options { ingestor, server: ServerConfig::default() })
        .await
}

async fn webhook(s: &TestServer, key: &str, url: String) -> String {
    let r = s.client.post("/api/webhook/config", key, json!({ "url": url })).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Every item of a listing at `path` (which has a query already), `limit` at a time,
/// following `next_cursor`.
async fn all(s: &TestServer, key: &str, path: &str, field: &str, limit: u32) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{path}&limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = s.client.get(&url, key).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.json()[field].as_array().unwrap().clone();
        assert!(page.len() <= limit as usize);
        items.extend(page);
        match r.json()["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// Polls `check` (a listing) until it holds, for up to 30 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn field<'a>(items: &'a [Value], name: &str) -> Vec<&'a Value> {
    items.iter().map(|i| &i[name]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_deliveries_tell_what_happened_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir).await;
    let key = s.key("enterprise").await;
    let stranger = s.key("free").await;
    // /a fails event 2 every time; /b takes everything.
    let receiver =
        Receiver::start(|path, n, _| Some(if path == "/a" && n == 2 { 500 } else { 200 })).await;
    let a = webhook(&s, &key, receiver.url("/a")).await;
    let b = webhook(&s, &key, receiver.url("/b")).await;
    let mut events = Vec::new();
    for n in 1..=4 {
        let body = json!({ "type": "order.paid", "payload": { "n": n } });
        let r = s.client.post("/api/events", &key, body).await;
        assert_eq!(r.status, 202, "{}", r.text());
        events.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let failed_a = format!("/api/deliveries?endpoint_id={a}&status=failed");
    until("event 2 to fail at /a", async || {
        s.client.get(&failed_a, &key).await.json()["deliveries"].as_array().unwrap().len() == 1
    })
    .await;
    let delivered = "/api/deliveries?status=delivered";
    until("the other seven deliveries", async || {
        all(&s, &key, delivered, "deliveries", 100).await.len() == 7
    })
    .await;
    let tries_of_2 = receiver.seen().iter().filter(|(p, n, _)| p == "/a" && *n == 2).count();
    assert!(tries_of_2 >= 2, "retried, then failed");

    // Attempts of /a: each one the receiver saw, newest first, paged exactly once.
    let attempts = all(&s, &key, &format!("/api/webhooks/{a}/attempts?"), "attempts", 2).await;
    assert_eq!(attempts.len(), 3 + tries_of_2);
    let times: Vec<&str> = attempts.iter().map(|x| x["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    for x in &attempts {
        assert_eq!(x["endpoint_id"], json!(a));
        assert_eq!(x["event_type"], json!("order.paid"));
        assert!(x["latency_ms"].is_u64());
        let ok = x["success"].as_bool().unwrap();
        assert_eq!(x["status_code"], json!(if ok { 200 } else { 500 }));
        assert_eq!(x["error"].is_null(), ok);
        assert_eq!(ok, x["event_id"] != json!(events[1]), "only event 2 failed");
    }
    let failures =
        all(&s, &key, &format!("/api/webhooks/{a}/attempts?status=failure"), "attempts", 10).await;
    assert_eq!(failures.len(), tries_of_2);
    assert!(failures.iter().all(|x| x["error"].as_str().unwrap().contains("500")));
    let successes =
        all(&s, &key, &format!("/api/webhooks/{a}/attempts?status=success"), "attempts", 10).await;
    assert_eq!(successes.len(), 3);
    let since = format!("/api/webhooks/{a}/attempts?since=2999-01-01T00:00:00Z");
    assert_eq!(all(&s, &key, &since, "attempts", 10).await, Vec::<Value>::new());
    let since = format!("/api/webhooks/{a}/attempts?since={}", times[2].replace('+', "%2B"));
    let recent = all(&s, &key, &since, "attempts", 10).await;
    assert!(recent.len() >= 3 && recent[..3] == attempts[..3], "since is inclusive");

    // Deliveries of /a: newest event first, one per event.
    let of_a = all(&s, &key, &format!("/api/deliveries?endpoint_id={a}"), "deliveries", 3).await;
    let ids: Vec<&Value> = field(&of_a, "event_id");
    let newest_first: Vec<Value> = events.iter().rev().map(|e| json!(e)).collect();
    assert_eq!(ids, newest_first.iter().collect::<Vec<_>>());
    let statuses: Vec<&Value> = field(&of_a, "status");
    assert_eq!(
        statuses,
        vec![&json!("delivered"), &json!("delivered"), &json!("failed"), &json!("delivered")]
    );
    assert!(of_a[2]["reason"].as_str().unwrap().contains("500"));
    assert!(of_a[2]["failed_at"].is_string() && of_a[2]["delivered_at"].is_null());
    assert!(of_a[0]["delivered_at"].is_string() && of_a[0]["reason"].is_null());

    // All of the organization's deliveries, paged one at a time: eight, each once.
    let every = all(&s, &key, "/api/deliveries?", "deliveries", 1).await;
    assert_eq!(every.len(), 8);
    let pairs: HashSet<(String, String)> =
        every.iter().map(|d| (d["event_id"].to_string(), d["endpoint_id"].to_string())).collect();
    assert_eq!(pairs.len(), 8);
    let created: Vec<&str> =
        every.iter().map(|d| d["event_created_at"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest event first");

    // A disabled endpoint's missed event is listed as failed, endpoint_disabled.
    let r = s
        .client
        .send("PATCH", &format!("/api/webhooks/{b}"), Some(&key), Some(json!({ "enabled": false })))
        .await;
    assert_eq!(r.status, 200);
    let body = json!({ "type": "order.paid", "payload": { "n": 5 } });
    assert_eq!(s.client.post("/api/events", &key, body).await.status, 202);
    let missed =
        all(&s, &key, &format!("/api/deliveries?endpoint_id={b}&status=failed"), "deliveries", 10)
            .await;
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0]["reason"], json!("endpoint_disabled"));

    // Someone else's endpoint is not found; so is an unknown one.
    s.client.get(&format!("/api/webhooks/{a}/attempts"), &stranger).await.problem(404, "not_found");
    s.client
        .get(&format!("/api/deliveries?endpoint_id={a}"), &stranger)
        .await
        .problem(404, "not_found");
    let unknown = uuid::Uuid::now_v7();
    s.client
        .get(&format!("/api/webhooks/{unknown}/attempts"), &key)
        .await
        .problem(404, "not_found");
    s.client.get("/api/webhooks/nope/attempts", &key).await.problem(404, "not_found");
    let none = s.client.get("/api/deliveries", &stranger).await;
    assert_eq!(none.json(), json!({ "deliveries": [], "next_cursor": null }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_history_queries_are_400_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir).await;
    let key = s.key("enterprise").await;
    let a = webhook(&s, &key, "http://127.0.0.1:9/a".into()).await;
    let attempts = format!("/api/webhooks/{a}/attempts");
    for (query, name) in [
        ("status=ok", "status"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=garbage", "cursor"),
    ] {
        let p =
            s.client.get(&format!("{attempts}?{query}"), &key).await.problem(400, "invalid_query");
        assert!(p["detail"].as_str().unwrap().starts_with(name), "{query}: {p}");
    }
    for (query, name) in [
        ("status=done", "status"),
        ("endpoint_id=123", "endpoint_id"),
        ("limit=x", "limit"),
        ("cursor=AAAA", "cursor"),
    ] {
        let p = s
            .client
            .get(&format!("/api/deliveries?{query}"), &key)
            .await
            .problem(400, "invalid_query");
        assert!(p["detail"].as_str().unwrap().starts_with(name), "{query}: {p}");
    }
    // A cursor of one list is refused by the other.
    s.client.post("/api/events", &key, json!({ "type": "t", "payload": { "n": 1 } })).await;
    s.client.post("/api/events", &key, json!({ "type": "t", "payload": { "n": 2 } })).await;
    let page = s.client.get("/api/deliveries?limit=1", &key).await.json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    s.client.get(&format!("{attempts}?cursor={cursor}"), &key).await.problem(400, "invalid_query");
    s.client.get("/api/deliveries", "trg_wrong").await.problem(401, "invalid_api_key");
}
