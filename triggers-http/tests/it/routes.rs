//! Every route's success path.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::TestServer;

fn is_rfc3339_utc(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_events_inbox_and_ack() {
    let server = TestServer::default().await;
    let c = &server.client;

    // Key generation: tier defaults to free.
    let r = c
        .send("POST", "/api/keys/generate", None, Some(json!({"organization_name": "acme"})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(created["organization_name"], "acme");
    assert_eq!(created["tier"], "free");
    assert_eq!(created["rate_limit_per_minute"], 10);
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("trg_"));
    let key = &key;

    let r = c.get("/api/keys", key).await;
    assert_eq!(r.status, 200);
    let info = r.json();
    assert_eq!(info["organization_id"], created["organization_id"]);
    assert_eq!(info["organization_name"], "acme");
    assert_eq!(info["tier"], "free");
    assert_eq!(info["rate_limit_per_minute"], 10);
    assert_eq!(info["webhooks"], json!([]));
    assert_eq!(r.header("x-ratelimit-limit"), "10");
    assert_eq!(r.header("x-ratelimit-remaining"), "10");

    // One event, payload kept verbatim (spacing and key order included).
    let raw =
        r#"{"type": "user.created", "payload": {"b": 1,  "a": [1, 2.50]}, "dedup_id": "u-1"}"#;
    let req = Request::post("/api/events")
        .header("x-api-key", key)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(raw)))
        .unwrap();
    let r = c.request(req).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit"), "10");
    assert_eq!(r.header("x-ratelimit-remaining"), "9");
    assert!(r.header("x-ratelimit-reset").parse::<u64>().unwrap() >= 1);
    let accepted = r.json();
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(accepted["type"], "user.created");
    assert!(is_rfc3339_utc(&accepted["created_at"]), "{accepted}");
    let id1 = accepted["id"].as_str().unwrap().to_owned();

    let r = c.get(&format!("/api/events/{id1}"), key).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains(r#""payload":{"b": 1,  "a": [1, 2.50]}"#), "{}", r.text());
    let e = r.json();
    assert_eq!(e["id"], id1.as_str());
    assert_eq!(e["type"], "user.created");
    assert_eq!(e["dedup_id"], "u-1");
    assert_eq!(e["status"], "pending");
    assert_eq!(e["created_at"], accepted["created_at"]);
    assert_eq!(e["delivered_at"], Value::Null);
    assert_eq!(e["attempts"], json!([]));

    // A batch: each item answered in place.
    let r = c
        .post(
            "/api/events/batch",
            key,
            json!({"events": [
                {"type": "order.paid", "payload": 1},
                {"type": "bad type", "payload": 2},
                {"type": "order.paid", "payload": [3]},
                "not an object",
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Three events reached the limiter (an invalid one included); a non-object is no event.
    assert_eq!(r.header("x-ratelimit-remaining"), "6");
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[1]["error"]["code"], "invalid_field");
    assert_eq!(results[1]["error"]["status"], 422);
    assert_eq!(results[1]["error"]["field"], "type");
    assert_eq!(results[2]["status"], "accepted");
    assert_eq!(results[3]["error"]["code"], "invalid_field");
    let id2 = results[0]["id"].as_str().unwrap().to_owned();
    let id3 = results[2]["id"].as_str().unwrap().to_owned();

    // Paging visits every event once, oldest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/inbox?limit=2&cursor={c}"),
            None => "/api/inbox?limit=2".to_owned(),
        };
        let r = c.get(&q, key).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["status"], "pending");
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, vec![id1.clone(), id2.clone(), id3.clone()]);
    let r = c.get("/api/inbox?type=order.*&status=pending", key).await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);

    // Ack one (idempotent), then many.
    for _ in 0..2 {
        let r = c.post_empty(&format!("/api/ack/{id1}"), key).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), json!({"id": id1, "status": "delivered"}));
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let r = c.post("/api/ack", key, json!({"ids": [id2, unknown, "nope"]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"acknowledged": [id2], "not_found": [unknown, "nope"]}));
    let r = c.get("/api/inbox?status=delivered", key).await;
    let delivered: Vec<_> =
        r.json()["events"].as_array().unwrap().iter().map(|e| e["id"].clone()).collect();
    assert_eq!(delivered, vec![json!(id1), json!(id2)]);
    let r = c.get(&format!("/api/events/{id1}"), key).await;
    assert!(is_rfc3339_utc(&r.json()["delivered_at"]));

    let r = c.get("/api/queue/stats", key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"pending": 1, "in_flight": 0, "delivered": 2, "failed": 0}));

    let r = c.post_empty(&format!("/api/events/{id3}/replay"), key).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["id"], id3.as_str());
    assert!(r.json()["status"].is_string());

    // Rotation: the new key works, the old one stops at once.
    let r = c.post_empty("/api/keys/rotate", key).await;
    assert_eq!(r.status, 200);
    let new_key = r.json()["api_key"].as_str().unwrap().to_owned();
    assert_ne!(&new_key, key);
    c.get("/api/keys", key).await.problem(401, "invalid_api_key");
    assert_eq!(c.get("/api/keys", &new_key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_and_show_attempts() {
    let server = TestServer::default().await;
    let c = &server.client;
    let key = &server.key("starter").await;

    let r = c
        .post(
            "/api/webhook/config",
            key,
            json!({"url": "http://127.0.0.1:9/hook", "event_type_filter": "user.*"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let first = r.json();
    assert_eq!(first["url"], "http://127.0.0.1:9/hook");
    assert_eq!(first["event_type_filter"], "user.*");
    assert_eq!(first["enabled"], true);
    assert!(first["secret"].as_str().unwrap().starts_with("whsec_"));
    let r =
        c.post("/api/webhook/config", key, json!({"webhook_url": "https://example.com/x"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let second = r.json();
    assert_eq!(second["url"], "https://example.com/x");
    assert_eq!(second["event_type_filter"], Value::Null);

    let r = c.get("/api/webhook/config", key).await;
    assert_eq!(r.status, 200);
    let hooks = r.json()["webhooks"].as_array().unwrap().clone();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0]["id"], first["id"]);
    assert_eq!(hooks[0]["disabled_reason"], Value::Null);
    assert!(hooks.iter().all(|h| h.get("secret").is_none()), "secrets are shown once");
    assert_eq!(c.get("/api/keys", key).await.json()["webhooks"].as_array().unwrap().len(), 2);

    // Both endpoints match user.created; the in-process deliverer accepts everything.
    let id = c.event(key, "user.created", None).await.json()["id"].as_str().unwrap().to_owned();
    let mut event = Value::Null;
    for _ in 0..500 {
        event = c.get(&format!("/api/events/{id}"), key).await.json();
        if event["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(event["status"], "delivered", "{event}");
    let mut endpoints: Vec<_> =
        event["attempts"].as_array().unwrap().iter().map(|a| a["endpoint_id"].clone()).collect();
    endpoints.sort_by_key(|v| v.to_string());
    let mut expected = vec![first["id"].clone(), second["id"].clone()];
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(endpoints, expected);
    let attempt = &event["attempts"][0];
    assert!(is_rfc3339_utc(&attempt["at"]));
    assert!(attempt["latency_ms"].is_u64());
    assert!(attempt.get("status_code").is_some() && attempt.get("error").is_some());

    let r = c
        .post_empty(&format!("/api/webhooks/{}/rotate-secret", first["id"].as_str().unwrap()), key)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && secret != first["secret"]);

    let r = c
        .send(
            "DELETE",
            &format!("/api/webhooks/{}", first["id"].as_str().unwrap()),
            Some(key),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = c.get("/api/webhook/config", key).await;
    assert_eq!(r.json()["webhooks"].as_array().unwrap().len(), 1);

    let metrics = c.send("GET", "/metrics", None, None).await.text();
    for line in [
        "triggers_deliveries_total{outcome=\"delivered\"} 2",
        "triggers_ingest_events_total{outcome=\"accepted\"} 1",
        "triggers_queue_depth 0",
    ] {
        assert!(metrics.contains(line), "{line:?} missing in\n{metrics}");
    }
}

#[tokio::test]
async fn health_ready_metrics_and_openapi() {
    let server = TestServer::default().await;
    let c = &server.client;
    for path in ["/health", "/health/live", "/health/ready"] {
        let r = c.send("GET", path, None, None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], json!("ok"));
        assert!(r.json()["timestamp"].is_string());
        assert_eq!(r.header("content-type"), "application/json");
    }
    let key = server.key("free").await;
    c.event(&key, "a", None).await;
    let r = c.send("GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("application/openmetrics-text"));
    let text = r.text();
    for needle in [
        "triggers_ingest_events_total{outcome=\"accepted\"} 1",
        "triggers_ingest_duration_seconds_bucket",
        "triggers_queue_depth 0",
        "triggers_rate_limited_requests_total 0",
        "triggers_http_responses_total{status=\"202\"} 1",
        "triggers_http_responses_total{status=\"201\"} 1",
        "# EOF",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let r = c.send("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["openapi"], "3.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_ordering_is_set_on_creation_and_shown() {
    let server = TestServer::default().await;
    let c = &server.client;
    let key = &server.key("starter").await;

    let r = c.post("/api/webhook/config", key, json!({"url": "https://example.com/p"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["ordering"], "parallel", "the default");
    let r = c
        .post(
            "/api/webhook/config",
            key,
            json!({"url": "https://example.com/f", "ordering": "fifo"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["ordering"], "fifo");

    // Bad values: a clear 422 naming the field, and nothing created.
    for bad in [json!("FIFO"), json!("serial"), json!(""), json!(1), json!(null)] {
        let body = json!({"url": "https://example.com/x", "ordering": bad});
        let r = c.post("/api/webhook/config", key, body).await;
        if bad.is_null() {
            // JSON null is "not given": the default.
            assert_eq!(r.status, 201, "{}", r.text());
            assert_eq!(r.json()["ordering"], "parallel");
            let id = r.json()["id"].as_str().unwrap().to_owned();
            let r = c.send("DELETE", &format!("/api/webhooks/{id}"), Some(key), None).await;
            assert_eq!(r.status, 204);
            continue;
        }
        assert_eq!(r.status, 422, "{bad}: {}", r.text());
        if bad.is_string() {
            assert_eq!(r.json()["field"], "ordering", "{}", r.text());
            assert!(r.json()["detail"].as_str().unwrap().contains("fifo"), "{}", r.text());
        }
    }
    let hooks = c.get("/api/webhook/config", key).await.json()["webhooks"].clone();
    let orderings: Vec<_> =
        hooks.as_array().unwrap().iter().map(|h| h["ordering"].clone()).collect();
    assert_eq!(orderings, vec![json!("parallel"), json!("fifo")]);
}

/// One URL answers each organization differently: no answer may be kept by a shared cache
/// (or a browser's disk) — success, error or unknown route alike; the dashboard's own files
/// keep their revalidated caching.
#[tokio::test]
async fn api_answers_are_never_stored_by_caches() {
    let server = TestServer::default().await;
    let c = &server.client;
    let key = server.key("free").await;
    for r in [
        c.get("/api/webhook/config", &key).await,
        c.get("/api/webhook/config", "tk_wrong").await,
        c.send("GET", "/api/nothing-here", None, None).await,
        c.send("GET", "/health", None, None).await,
    ] {
        assert_eq!(r.header("cache-control"), "no-store", "{}", r.status);
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{}", r.status);
    }
    let page = c.send("GET", "/ui/app.js", None, None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("cache-control"), "no-cache");
}
