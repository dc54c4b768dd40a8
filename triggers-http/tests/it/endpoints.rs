//! Endpoint lifecycle over HTTP: `GET`/`PATCH /api/webhooks/{id}`, disabling and
//! re-enabling, operational events, and `POST /api/webhooks/{id}/recover`.
//!
//! The server runs without delivery workers, so deliveries stay outstanding until the test
//! looks at them (delivery at a real receiver is covered by the webhook tests).

use serde_json::{json, Value};
use triggers_core::WorkerConfig;

use crate::support::{Options, TestServer};

/// A server that stores but never delivers.
async fn server() -> TestServer {
    let mut opts = Options::default();
    opts.ingestor.worker = WorkerConfig { concurrency: 0, ..WorkerConfig::default() };
    TestServer::start(opts).await
}

async fn webhook(s: &TestServer, key: &str, filter: Option<&str>) -> String {
    let mut body = json!({ "url": "https://hooks.example.com/in" });
    if let Some(f) = filter {
        body["event_type_filter"] = json!(f);
    }
    let r = s.client.post("/api/webhook/config", key, body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

async fn patch(s: &TestServer, key: &str, id: &str, body: Value) -> crate::support::Resp {
    s.client.send("PATCH", &format!("/api/webhooks/{id}"), Some(key), Some(body)).await
}

async fn stats(s: &TestServer, key: &str) -> Value {
    s.client.get("/api/queue/stats", key).await.json()
}

/// The inbox events of `event_type` (pending), oldest first.
async fn inbox_of(s: &TestServer, key: &str, event_type: &str) -> Vec<Value> {
    let r = s.client.get(&format!("/api/inbox?type={event_type}&limit=100"), key).await;
    assert_eq!(r.status, 200);
    r.json()["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_shown_and_patched_by_their_owner_only() {
    let s = server().await;
    let (key, other) = (s.key("free").await, s.key("free").await);
    let id = webhook(&s, &key, Some("user.*")).await;

    let shown = s.client.get(&format!("/api/webhooks/{id}"), &key).await;
    assert_eq!(shown.status, 200);
    let before = shown.json();
    assert_eq!(before["id"], json!(id));
    assert_eq!(before["event_type_filter"], json!("user.*"));
    assert_eq!(before["enabled"], json!(true));
    assert_eq!(before["headers"], json!({}));
    assert!(before.get("secret").is_none(), "the secret is not shown");
    s.client.get(&format!("/api/webhooks/{id}"), &other).await.problem(404, "not_found");
    s.client.get("/api/webhooks/not-a-uuid", &key).await.problem(404, "not_found");

    let body = json!({
        "url": "https://hooks.example.com/v2",
        "event_type_filter": null,
        "headers": { "X-Tenant": "acme", "Authorization": "Bearer t0ken" },
        "rate_limit": 5,
        "concurrency": 2,
        "description": "billing",
    });
    patch(&s, &other, &id, body.clone()).await.problem(404, "not_found");
    assert_eq!(s.client.get(&format!("/api/webhooks/{id}"), &key).await.json(), before);

    let r = patch(&s, &key, &id, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = r.json();
    assert_eq!(after["url"], json!("https://hooks.example.com/v2"));
    assert_eq!(after["event_type_filter"], Value::Null);
    assert_eq!(after["headers"], json!({ "Authorization": "Bearer t0ken", "X-Tenant": "acme" }));
    assert_eq!((after["rate_limit"].clone(), after["concurrency"].clone()), (json!(5), json!(2)));
    assert_eq!(after["description"], json!("billing"));
    assert_eq!(s.client.get(&format!("/api/webhooks/{id}"), &key).await.json(), after);
    let listed = s.client.get("/api/webhook/config", &key).await.json();
    assert_eq!(listed["webhooks"][0], after);

    // `null` clears; absent fields stay.
    let r = patch(&s, &key, &id, json!({ "headers": null, "rate_limit": null })).await;
    assert_eq!(r.status, 200);
    let cleared = r.json();
    assert_eq!(cleared["headers"], json!({}));
    assert_eq!(cleared["rate_limit"], Value::Null);
    assert_eq!(cleared["concurrency"], json!(2));
    assert_eq!(cleared["description"], json!("billing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordering_is_patched_and_a_bad_one_changes_nothing() {
    let s = server().await;
    let (key, other) = (s.key("free").await, s.key("free").await);
    let id = webhook(&s, &key, Some("user.*")).await;
    let path = format!("/api/webhooks/{id}");
    let before = s.client.get(&path, &key).await.json();
    assert_eq!(before["ordering"], json!("parallel"));

    let refused = [
        (json!({ "ordering": "sequential" }), "ordering"),
        (json!({ "ordering": "FIFO" }), "ordering"),
        (json!({ "ordering": null }), "ordering"),
        (json!({ "ordering": 1 }), "body"),
        // A valid ordering next to a bad field: nothing of the patch applies.
        (json!({ "ordering": "fifo", "url": "ftp://example.com/x" }), "url"),
        (json!({ "ordering": "fifo", "concurrency": 0 }), "concurrency"),
    ];
    for (body, field) in refused {
        let r = patch(&s, &key, &id, body.clone()).await;
        let detail = r.problem(422, "invalid_field").to_string();
        assert!(detail.contains(field), "{body}: {detail}");
        assert_eq!(s.client.get(&path, &key).await.json(), before, "{body} changed something");
    }
    patch(&s, &other, &id, json!({ "ordering": "fifo" })).await.problem(404, "not_found");
    assert_eq!(s.client.get(&path, &key).await.json(), before);

    let r = patch(&s, &key, &id, json!({ "ordering": "fifo" })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = r.json();
    assert_eq!(after["ordering"], json!("fifo"));
    let mut expected = before.clone();
    expected["ordering"] = json!("fifo");
    assert_eq!(after, expected, "only the ordering changed");
    assert_eq!(s.client.get(&path, &key).await.json(), after);
    let listed = s.client.get("/api/webhook/config", &key).await.json();
    assert_eq!(listed["webhooks"][0]["ordering"], json!("fifo"));

    let r = patch(&s, &key, &id, json!({ "ordering": "parallel", "description": "x" })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["ordering"].clone(), r.json()["description"].clone()),
        (json!("parallel"), json!("x"))
    );
    assert_eq!(s.client.get(&path, &key).await.json()["ordering"], json!("parallel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_patches_are_refused_and_change_nothing() {
    let s = server().await;
    let key = s.key("free").await;
    let id = webhook(&s, &key, None).await;
    let before = s.client.get(&format!("/api/webhooks/{id}"), &key).await.json();
    let cases = [
        (json!({ "url": "ftp://example.com/x" }), "url"),
        (json!({ "url": "" }), "url"),
        (json!({ "event_type_filter": "bad filter" }), "event_type_filter"),
        (json!({ "headers": { "Host": "evil.example" } }), "headers"),
        (json!({ "headers": { "content-length": "1" } }), "headers"),
        (json!({ "headers": { "webhook-signature": "v1,x" } }), "headers"),
        (json!({ "headers": { "Bad Name": "x" } }), "headers"),
        (json!({ "headers": { "X-A": "a\r\nX-Injected: 1" } }), "headers"),
        // Wrong JSON types are refused while parsing, naming the body.
        (json!({ "headers": { "X-A": 1 } }), "body"),
        (json!({ "rate_limit": 0 }), "rate_limit"),
        (json!({ "concurrency": 100000 }), "concurrency"),
        (json!({ "concurrency": -1 }), "body"),
        (json!({ "enabled": "yes" }), "body"),
        (json!({ "description": "x".repeat(1025) }), "description"),
        (json!({ "enable": true }), "body"),
    ];
    for (body, field) in cases {
        let r = patch(&s, &key, &id, body.clone()).await;
        let problem = r.problem(422, "invalid_field");
        let detail = problem.to_string();
        assert!(detail.contains(field), "{body}: {detail}");
    }
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    patch(&s, &key, &id, json!({ "headers": many })).await.problem(422, "invalid_field");
    let r = s.client.send("PATCH", &format!("/api/webhooks/{id}"), Some(&key), None).await;
    assert!(r.status == 400 || r.status == 415, "{}", r.status);
    assert_eq!(s.client.get(&format!("/api/webhooks/{id}"), &key).await.json(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_fails_outstanding_work_and_recover_queues_it_again() {
    let s = server().await;
    let key = s.key("enterprise").await;
    let id = webhook(&s, &key, Some("order.*")).await;
    let watcher = webhook(&s, &key, Some("triggers.endpoint.*")).await;
    for _ in 0..3 {
        assert_eq!(s.client.event(&key, "order.paid", None).await.status, 202);
    }
    let st = stats(&s, &key).await;
    assert_eq!((st["pending"].clone(), st["failed"].clone()), (json!(3), json!(0)));

    let r = patch(&s, &key, &id, json!({ "enabled": false })).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["enabled"], json!(false));
    assert_eq!(r.json()["disabled_reason"], json!("disabled by request"));
    // Its outstanding deliveries failed; only the operational event is pending now (it has a
    // delivery to the watcher, never to the endpoint it is about).
    let st = stats(&s, &key).await;
    assert_eq!((st["pending"].clone(), st["failed"].clone()), (json!(1), json!(3)));
    let disabled = inbox_of(&s, &key, "triggers.endpoint.disabled").await;
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["payload"]["endpoint_id"], json!(id));
    assert_eq!(disabled[0]["payload"]["reason"], json!("disabled by request"));
    // A new matching event gets a failed delivery, no attempt.
    let late = s.client.event(&key, "order.late", None).await.json()["id"].clone();
    let late = s.client.get(&format!("/api/events/{}", late.as_str().unwrap()), &key).await;
    assert_eq!(late.json()["status"], json!("failed"));
    assert_eq!(late.json()["attempts"], json!([]));

    let r = patch(&s, &key, &id, json!({ "enabled": true })).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.json()["enabled"].clone(), r.json()["disabled_reason"].clone()),
        (json!(true), Value::Null)
    );
    let enabled = inbox_of(&s, &key, "triggers.endpoint.enabled").await;
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0]["payload"]["endpoint_id"], json!(id));

    let path = format!("/api/webhooks/{id}/recover");
    let r = s.client.post(&path, &key, json!({ "since": "2000-01-01T00:00:00Z" })).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({ "queued": 4, "more": false }));
    let st = stats(&s, &key).await;
    assert_eq!((st["pending"].clone(), st["failed"].clone()), (json!(6), json!(0)));
    let again = s.client.post(&path, &key, json!({ "since": "2000-01-01T00:00:00Z" })).await;
    assert_eq!(again.json(), json!({ "queued": 0, "more": false }));
    let _ = watcher;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_recovers_are_refused_and_change_nothing() {
    let s = server().await;
    let (key, other) = (s.key("enterprise").await, s.key("enterprise").await);
    let id = webhook(&s, &key, None).await;
    s.client.event(&key, "x", None).await;
    patch(&s, &key, &id, json!({ "enabled": false })).await;
    patch(&s, &key, &id, json!({ "enabled": true })).await;
    let before = stats(&s, &key).await;
    let path = format!("/api/webhooks/{id}/recover");
    for body in [
        json!({}),
        json!({ "since": "yesterday" }),
        json!({ "since": 5 }),
        json!({ "since": "2026-01-01T00:00:00Z", "extra": 1 }),
    ] {
        s.client.post(&path, &key, body).await.problem(422, "invalid_field");
    }
    // An empty window (until not after since) queues nothing.
    let empty = json!({ "since": "2026-01-02T00:00:00Z", "until": "2000-01-01T00:00:00Z" });
    let r = s.client.post(&path, &key, empty).await;
    assert_eq!((r.status, r.json()), (202, json!({ "queued": 0, "more": false })));
    let body = json!({ "since": "2000-01-01T00:00:00Z" });
    s.client.post(&path, &other, body.clone()).await.problem(404, "not_found");
    s.client.post("/api/webhooks/nope/recover", &key, body).await.problem(404, "not_found");
    assert_eq!(stats(&s, &key).await, before, "nothing was queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_and_recovers_are_charged_to_the_rate_limit() {
    let s = server().await;
    let key = s.key("free").await;
    let id = webhook(&s, &key, None).await;
    let path = format!("/api/webhooks/{id}");
    // Free tier: 10 per minute. Disabling costs one (it ingests an operational event).
    assert_eq!(patch(&s, &key, &id, json!({ "enabled": false })).await.status, 200);
    for _ in 0..9 {
        assert_eq!(s.client.event(&key, "x", None).await.status, 202);
    }
    let before = s.client.get(&path, &key).await.json();
    patch(&s, &key, &id, json!({ "enabled": true })).await.problem(429, "rate_limited");
    let body = json!({ "since": "2000-01-01T00:00:00Z" });
    let r = s.client.post(&format!("{path}/recover"), &key, body).await;
    r.problem(429, "rate_limited");
    assert_eq!(s.client.get(&path, &key).await.json(), before, "still disabled");
    // Changes that ingest nothing are not charged.
    let r = patch(&s, &key, &id, json!({ "description": "still free" })).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recover_queues_no_more_than_the_allowance_pays_for() {
    let s = server().await;
    let key = s.key("free").await;
    let id = webhook(&s, &key, None).await;
    // Free tier: 10 per minute. Disable (1), six events that each get a failed delivery (6),
    // enable (1): 2 units are left for the recover, so it queues 2 of the 6 and says more.
    assert_eq!(patch(&s, &key, &id, json!({ "enabled": false })).await.status, 200);
    for _ in 0..6 {
        assert_eq!(s.client.event(&key, "order.paid", None).await.status, 202);
    }
    assert_eq!(patch(&s, &key, &id, json!({ "enabled": true })).await.status, 200);
    let path = format!("/api/webhooks/{id}/recover");
    let body = json!({ "since": "2000-01-01T00:00:00Z" });
    let r = s.client.post(&path, &key, body.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({ "queued": 2, "more": true }));
    s.client.post(&path, &key, body).await.problem(429, "rate_limited");
}
