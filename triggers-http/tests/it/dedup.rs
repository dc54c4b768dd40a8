//! Dedup through HTTP.

use std::collections::HashSet;

use serde_json::json;

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_answer_200_with_the_original() {
    let server = TestServer::default().await;
    let c = &server.client;
    let key = &server.key("free").await;
    let first = c.event(key, "order.paid", Some("order-1")).await;
    assert_eq!(first.status, 202);
    let again = c
        .post(
            "/api/events",
            key,
            json!({"type": "other.type", "payload": 2, "dedup_id": "order-1"}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    let (a, b) = (first.json(), again.json());
    assert_eq!(b["status"], "duplicate");
    assert_eq!(b["id"], a["id"]);
    assert_eq!(b["type"], "order.paid", "the original's type");
    assert_eq!(b["created_at"], a["created_at"]);
    // Another dedup id is a new event; so is the same id in another organization.
    assert_eq!(c.event(key, "order.paid", Some("order-2")).await.status, 202);
    let other = server.key("free").await;
    assert_eq!(c.event(&other, "order.paid", Some("order-1")).await.status, 202);
    // In a batch too.
    let r = c
        .post(
            "/api/events/batch",
            key,
            json!({"events": [
                {"type": "x", "payload": 1, "dedup_id": "order-1"},
                {"type": "x", "payload": 1, "dedup_id": "order-3"},
                {"type": "x", "payload": 1, "dedup_id": "order-3"},
            ]}),
        )
        .await;
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["status"], "duplicate");
    assert_eq!(results[0]["id"], a["id"]);
    assert_eq!(results[1]["status"], "accepted");
    assert_eq!(results[2]["status"], "duplicate");
    assert_eq!(results[2]["id"], results[1]["id"]);
    assert_eq!(c.get("/api/inbox", key).await.json()["events"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_requests_make_one_event() {
    let server = TestServer::default().await;
    let key = server.key("enterprise").await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, key) = (server.client.clone(), key.clone());
            tokio::spawn(async move { c.event(&key, "payment.settled", Some("pay-42")).await })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut accepted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 202 || r.status == 200, "{} {}", r.status, r.text());
        accepted += usize::from(r.status == 202);
        ids.insert(r.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one id for all: {ids:?}");
    assert_eq!(accepted, 1, "exactly one request stored the event");
    let inbox = server.client.get("/api/inbox", &key).await.json();
    let events = inbox["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"].as_str(), ids.iter().next().map(String::as_str));
}
