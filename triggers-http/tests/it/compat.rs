//! Compatibility with clients written against the original Triggers API (docs/http.md,
//! "Compatibility"): answer fields, aliases, the payload limit, offset paging refused,
//! `status=all`, and webhook targets refused when configured.

use serde_json::{json, Value};
use triggers_http::{ServerConfig, WebhookConfig};

use crate::support::{Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_message_and_timestamp() {
    let s = TestServer::default().await;
    let key = s.key("enterprise").await;
    let body = json!({ "type": "user.created", "payload": { "id": 1 }, "dedup_id": "u1" });
    let first = s.client.post("/api/events", &key, body.clone()).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["message"], json!("Event accepted for delivery"));
    let again = s.client.post("/api/events", &key, body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], json!("duplicate"));
    assert!(again.json()["message"].as_str().unwrap().starts_with("Duplicate"));
    for path in ["/health", "/health/live", "/health/ready"] {
        let r = s.client.get(path, "").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["status"], json!("ok"));
        let ts = r.json()["timestamp"].as_str().unwrap().to_owned();
        chrono::DateTime::parse_from_rfc3339(&ts).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_name_and_pro_are_accepted_as_aliases() {
    let s = TestServer::default().await;
    let generate = |body: Value| s.client.send("POST", "/api/keys/generate", None, Some(body));
    let r = generate(json!({ "org_name": "legacy", "tier": "pro" })).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["organization_name"], json!("legacy"));
    assert_eq!(r.json()["tier"], json!("professional"));
    let key = r.json()["api_key"].as_str().unwrap().to_owned();
    assert_eq!(s.client.get("/api/keys", &key).await.json()["tier"], json!("professional"));
    // Both names at once is ambiguous; an unknown tier is still refused.
    let both = generate(json!({ "org_name": "a", "organization_name": "b" })).await;
    assert!(both.status == 400 || both.status == 422, "{}", both.text());
    generate(json!({ "org_name": "x", "tier": "gold" })).await.problem(422, "invalid_field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_limit_applies_to_the_payload_not_the_envelope() {
    let s = TestServer::default().await;
    let key = s.key("enterprise").await;
    // A JSON string payload of exactly 256 KiB of JSON text (quotes included).
    let text = "x".repeat(256 * 1024 - 2);
    let body = json!({ "type": "big.one", "payload": text, "dedup_id": "a".repeat(255) });
    let r = s.client.post("/api/events", &key, body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let stored = s.client.get(&format!("/api/events/{id}"), &key).await.json();
    assert_eq!(stored["payload"].as_str().unwrap().len(), text.len());
    // One byte more is a payload too large (422), not a body too large.
    let over = json!({ "type": "big.one", "payload": "x".repeat(256 * 1024 - 1) });
    let p = s.client.post("/api/events", &key, over).await.problem(422, "invalid_field");
    assert_eq!(p["field"], json!("payload"));
    // The body limit still holds: the payload limit plus 16 KiB.
    let huge = json!({ "type": "big.one", "payload": "x".repeat(256 * 1024 + 16 * 1024) });
    s.client.post("/api/events", &key, huge).await.problem(413, "body_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_paging_is_refused_and_status_all_lists_everything() {
    let s = TestServer::default().await;
    let key = s.key("enterprise").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = s.client.post("/api/events", &key, json!({ "type": "t", "payload": n })).await;
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    s.client.post_empty(&format!("/api/ack/{}", ids[1]), &key).await;
    for query in ["offset=100", "page=2", "status=failed&offset=0"] {
        let p =
            s.client.get(&format!("/api/inbox?{query}"), &key).await.problem(400, "invalid_query");
        assert!(p["detail"].as_str().unwrap().contains("cursor"), "{query}: {p}");
    }
    let mut seen = Vec::new();
    let mut url = "/api/inbox?status=all&limit=2".to_owned();
    loop {
        let page = s.client.get(&url, &key).await.json();
        for e in page["events"].as_array().unwrap() {
            seen.push((
                e["id"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/api/inbox?status=all&limit=2&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), if i == 1 { "delivered" } else { "pending" }.to_owned()))
        .collect();
    assert_eq!(seen, expected);
    s.client.get("/api/inbox?status=everything", &key).await.problem(400, "invalid_query");
}

/// Server options whose URL policy is `webhooks`'s, as the example server sets it.
fn with_policy(webhooks: WebhookConfig) -> Options {
    let server =
        ServerConfig { webhook_url_policy: Some(webhooks.url_policy()), ..ServerConfig::default() };
    Options { server, ..Options::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_targets_the_policy_refuses_are_refused_when_configured() {
    let s = TestServer::start(with_policy(WebhookConfig::default())).await;
    let key = s.key("enterprise").await;
    for url in [
        "http://localhost:8888/hook",
        "http://api.localhost/hook",
        "http://127.0.0.1:9/hook",
        "http://10.0.0.7/hook",
        "http://[::1]:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        // Other spellings resolvers read as 127.0.0.1 or loopback names.
        "http://2130706433/hook",
        "http://127.1/hook",
        "http://0x7f.0.0.1/hook",
        "http://localhost./hook",
    ] {
        let r = s.client.post("/api/webhook/config", &key, json!({ "url": url })).await;
        let p = r.problem(422, "invalid_field");
        assert_eq!(p["field"], json!("url"), "{url}");
        assert!(p["detail"].as_str().unwrap().contains("TRIGGERS_WEBHOOK_ALLOW"), "{url}: {p}");
    }
    assert_eq!(s.client.get("/api/webhook/config", &key).await.json()["webhooks"], json!([]));
    // A name is not resolved when configured (checked at delivery instead).
    let ok = s
        .client
        .post("/api/webhook/config", &key, json!({ "url": "https://hooks.example.com/in" }))
        .await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    let id = ok.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/webhooks/{id}");
    let r = s
        .client
        .send("PATCH", &path, Some(&key), Some(json!({ "url": "http://127.0.0.1/x" })))
        .await;
    r.problem(422, "invalid_field");
    assert_eq!(
        s.client.get(&path, &key).await.json()["url"],
        json!("https://hooks.example.com/in")
    );

    // With loopback allowed, the same target is fine.
    let allow = WebhookConfig {
        allow: WebhookConfig::parse_allow("127.0.0.0/8").unwrap(),
        ..WebhookConfig::default()
    };
    let open = TestServer::start(with_policy(allow)).await;
    let key = open.key("enterprise").await;
    let r = open
        .client
        .post("/api/webhook/config", &key, json!({ "url": "http://localhost:8888/hook" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // The deny-list refuses what it names, global or allowed, and nothing else.
    let fenced = WebhookConfig {
        allow: WebhookConfig::parse_allow("127.0.0.0/8").unwrap(),
        deny: WebhookConfig::parse_allow("127.0.0.2, 198.51.99.0/24").unwrap(),
        ..WebhookConfig::default()
    };
    let fenced = TestServer::start(with_policy(fenced)).await;
    let key = fenced.key("enterprise").await;
    for url in
        ["http://127.0.0.2:8888/hook", "https://198.51.99.7/in", "http://[::ffff:127.0.0.2]/"]
    {
        let r = fenced.client.post("/api/webhook/config", &key, json!({ "url": url })).await;
        let p = r.problem(422, "invalid_field");
        assert!(p["detail"].as_str().unwrap().contains("TRIGGERS_WEBHOOK_DENY"), "{url}: {p}");
    }
    assert_eq!(fenced.client.get("/api/webhook/config", &key).await.json()["webhooks"], json!([]));
    for url in ["http://127.0.0.1:8888/hook", "https://198.51.98.7/in"] {
        let r = fenced.client.post("/api/webhook/config", &key, json!({ "url": url })).await;
        assert_eq!(r.status, 201, "{url}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_makes_retries_safe_and_refuses_reuse() {
    let s = TestServer::default().await;
    let key = s.key("enterprise").await;
    let send = |idem: &'static str, body: Value| {
        let req = http::Request::post(format!("http://{}/api/events", s.addr))
            .header("X-API-Key", key.as_str())
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", idem)
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        s.client.request(req)
    };
    let order = json!({ "type": "order.paid", "payload": { "order": 7 } });
    let first = send("retry-7", order.clone()).await;
    assert_eq!(first.status, 202, "{}", first.text());
    let again = send("retry-7", order.clone()).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], json!("duplicate"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    // The same key with another payload: refused, nothing stored.
    let other = json!({ "type": "order.paid", "payload": { "order": 8 } });
    send("retry-7", other.clone()).await.problem(422, "idempotency_key_reused");
    let stats = s.client.get("/api/queue/stats", &key).await.json();
    assert_eq!(stats["pending"], json!(1));
    // An event with its own dedup_id keeps it: the key does not apply to it.
    let own = json!({ "type": "t", "payload": 1, "dedup_id": "mine" });
    assert_eq!(send("retry-9", own.clone()).await.status, 202);
    let other_key = send("retry-10", own).await;
    assert_eq!(other_key.json()["status"], json!("duplicate"), "a duplicate of `mine`");
    // The key is a dedup id: no control characters (a tab is one).
    send("a\tb", order.clone()).await.problem(422, "invalid_field");

    // A batch: item i takes `{key}#{i}`; a retry answers duplicates, a changed item is
    // refused in its slot while the others are answered as before.
    let batch = |items: Value| {
        let req = http::Request::post(format!("http://{}/api/events/batch", s.addr))
            .header("X-API-Key", key.as_str())
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "batch-1")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({ "events": items }).to_string(),
            )))
            .unwrap();
        s.client.request(req)
    };
    let items = json!([{ "type": "a", "payload": 1 }, { "type": "b", "payload": 2 }]);
    let r = batch(items.clone()).await.json();
    assert_eq!(r["results"][0]["status"], json!("accepted"));
    let r2 = batch(items).await.json();
    assert_eq!(r2["results"][0]["status"], json!("duplicate"));
    assert_eq!(r2["results"][1]["id"], r["results"][1]["id"]);
    let changed = json!([{ "type": "a", "payload": 1 }, { "type": "b", "payload": 3 }]);
    let r3 = batch(changed).await.json();
    assert_eq!(r3["results"][0]["status"], json!("duplicate"));
    assert_eq!(r3["results"][1]["error"]["code"], json!("idempotency_key_reused"));
    let stats = s.client.get("/api/queue/stats", &key).await.json();
    assert_eq!(stats["pending"], json!(4), "order 7, `mine`, and the batch's two");
    // On a batch the key may have at most 250 characters (room for `#i`).
    let long: &'static str = Box::leak("k".repeat(251).into_boxed_str());
    let req = http::Request::post(format!("http://{}/api/events/batch", s.addr))
        .header("X-API-Key", key.as_str())
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", long)
        .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"events":[null]}"#)))
        .unwrap();
    s.client.request(req).await.problem(422, "invalid_field");
}
