//! Authentication, the admin token, and isolation between organizations.

use serde_json::json;
use triggers_http::ServerConfig;

use crate::support::{Options, TestServer};

/// Every route that needs an API key, with a body where it takes one.
fn authenticated_routes(id: &str) -> Vec<(&'static str, String, Option<serde_json::Value>)> {
    vec![
        ("GET", "/api/keys".into(), None),
        ("POST", "/api/keys/rotate".into(), None),
        ("POST", "/api/events".into(), Some(json!({"type": "t", "payload": 1}))),
        (
            "POST",
            "/api/events/batch".into(),
            Some(json!({"events": [{"type": "t", "payload": 1}]})),
        ),
        ("GET", format!("/api/events/{id}"), None),
        ("POST", format!("/api/events/{id}/replay"), None),
        ("GET", "/api/inbox".into(), None),
        ("POST", format!("/api/ack/{id}"), None),
        ("POST", "/api/ack".into(), Some(json!({"ids": [id]}))),
        ("POST", "/api/webhook/config".into(), Some(json!({"url": "https://example.com"}))),
        ("GET", "/api/webhook/config".into(), None),
        ("DELETE", format!("/api/webhooks/{id}"), None),
        ("POST", format!("/api/webhooks/{id}/rotate-secret"), None),
        ("GET", "/api/queue/stats".into(), None),
        ("GET", format!("/api/webhooks/{id}"), None),
        ("PATCH", format!("/api/webhooks/{id}"), Some(json!({"enabled": true}))),
        (
            "POST",
            format!("/api/webhooks/{id}/recover"),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        ),
        ("GET", format!("/api/webhooks/{id}/attempts"), None),
        ("GET", "/api/deliveries".into(), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_rotated_keys_are_401() {
    let server = TestServer::default().await;
    let c = &server.client;
    let old = server.key("free").await;
    let r = c.post_empty("/api/keys/rotate", &old).await;
    assert_eq!(r.status, 200);
    let id = uuid::Uuid::now_v7().to_string();
    let routes = authenticated_routes(&id);
    assert_eq!(
        routes.len(),
        triggers_http::routes()
            .iter()
            .filter(|r| r.path.starts_with("/api/") && r.path != "/api/keys/generate")
            .count(),
        "every authenticated route is covered"
    );
    for (method, path, body) in routes {
        let r = c.send(method, &path, None, body.clone()).await;
        r.problem(401, "missing_api_key");
        assert_eq!(r.header("x-ratelimit-limit"), "", "no rate headers without an organization");
        c.send(method, &path, Some("trg_not-a-key"), body.clone())
            .await
            .problem(401, "invalid_api_key");
        c.send(method, &path, Some(&old), body.clone()).await.problem(401, "invalid_api_key");
        c.send(method, &path, Some("ünïcödé"), body).await.problem(401, "invalid_api_key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_generation_needs_the_admin_token_when_configured() {
    let opts = Options {
        server: ServerConfig { admin_token: Some("let-me-in".into()), ..ServerConfig::default() },
        ..Options::default()
    };
    let server = TestServer::start(opts).await;
    let c = &server.client;
    let body = json!({"organization_name": "acme"});
    let r = c.send("POST", "/api/keys/generate", None, Some(body.clone())).await;
    r.problem(401, "invalid_admin_token");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    for auth in
        ["Bearer nope", "Bearer let-me-i", "Bearer let-me-inn", "Basic let-me-in", "let-me-in"]
    {
        let req = http::Request::post("/api/keys/generate")
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        c.request(req).await.problem(401, "invalid_admin_token");
    }
    let req = http::Request::post("/api/keys/generate")
        .header("authorization", "Bearer let-me-in")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let r = c.request(req).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_organizations_ids_are_404() {
    let server = TestServer::default().await;
    let c = &server.client;
    let (alice, mallory) = (server.key("free").await, server.key("free").await);
    let event =
        c.event(&alice, "secret.thing", None).await.json()["id"].as_str().unwrap().to_owned();
    let hook = c.post("/api/webhook/config", &alice, json!({"url": "https://example.com/a"})).await;
    let hook = hook.json()["id"].as_str().unwrap().to_owned();

    c.get(&format!("/api/events/{event}"), &mallory).await.problem(404, "not_found");
    c.post_empty(&format!("/api/events/{event}/replay"), &mallory).await.problem(404, "not_found");
    c.post_empty(&format!("/api/ack/{event}"), &mallory).await.problem(404, "not_found");
    let r = c.post("/api/ack", &mallory, json!({"ids": [event]})).await;
    assert_eq!(r.json(), json!({"acknowledged": [], "not_found": [event]}));
    let r = c.send("DELETE", &format!("/api/webhooks/{hook}"), Some(&mallory), None).await;
    r.problem(404, "not_found");
    c.post_empty(&format!("/api/webhooks/{hook}/rotate-secret"), &mallory)
        .await
        .problem(404, "not_found");
    assert_eq!(c.get("/api/inbox", &mallory).await.json()["events"], json!([]));
    assert_eq!(c.get("/api/webhook/config", &mallory).await.json()["webhooks"], json!([]));
    assert_eq!(c.get("/api/queue/stats", &mallory).await.json()["pending"], 0);

    // Nothing changed for Alice.
    let e = c.get(&format!("/api/events/{event}"), &alice).await.json();
    assert_eq!(e["status"], "pending");
    assert_eq!(
        c.get("/api/webhook/config", &alice).await.json()["webhooks"].as_array().unwrap().len(),
        1
    );
    // Errors after authentication carry the caller's rate headers.
    let r = c.get(&format!("/api/events/{event}"), &mallory).await;
    assert_eq!(r.header("x-ratelimit-limit"), "10");
}
