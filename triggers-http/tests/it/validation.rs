//! Bad input gets a clear 4xx problem and changes nothing.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use triggers_http::ServerConfig;

use crate::support::{Client, Options, Resp, TestServer};

async fn raw(c: &Client, path: &str, key: &str, content_type: Option<&str>, body: &[u8]) -> Resp {
    let mut b = Request::post(path).header("x-api-key", key);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    c.request(b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_wrong_types_415_invalid_fields_422() {
    let opts = Options {
        server: ServerConfig { max_body: 4096, ..ServerConfig::default() },
        ..Options::default()
    };
    let server = TestServer::start(opts).await;
    let c = &server.client;
    let key = &server.key("enterprise").await;
    let json = Some("application/json");

    for body in [
        &b""[..],
        b"{",
        b"{\"type\": \"a\", \"payload\": }",
        b"nul",
        b"{\"type\":\"a\",\"payload\":1}}",
    ] {
        raw(c, "/api/events", key, json, body).await.problem(400, "malformed_json");
    }
    for body in [&b"[]"[..], b"\"text\"", b"42", b"null"] {
        raw(c, "/api/events", key, json, body).await.problem(400, "not_an_object");
        raw(c, "/api/events/batch", key, json, body).await.problem(400, "not_an_object");
        raw(c, "/api/ack", key, json, body).await.problem(400, "not_an_object");
        raw(c, "/api/webhook/config", key, json, body).await.problem(400, "not_an_object");
    }
    let ok = br#"{"type": "a", "payload": 1}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/json; charset=latin1"),
        Some("application/xml"),
    ] {
        raw(c, "/api/events", key, ct, ok).await.problem(415, "unsupported_media_type");
    }
    let too_big = format!(r#"{{"type": "a", "payload": "{}"}}"#, "x".repeat(5000));
    let r = raw(c, "/api/events", key, json, too_big.as_bytes()).await;
    r.problem(413, "body_too_large");

    let invalid = [
        (json!({"payload": 1}), "type"),
        (json!({"type": "a"}), "payload"),
        (json!({"type": "", "payload": 1}), "type"),
        (json!({"type": "has space", "payload": 1}), "type"),
        (json!({"type": "t".repeat(256), "payload": 1}), "type"),
        (json!({"type": 7, "payload": 1}), "body"),
        (json!({"type": "a", "payload": 1, "dedup_id": ""}), "dedup_id"),
        (json!({"type": "a", "payload": 1, "dedup_id": "d".repeat(256)}), "dedup_id"),
    ];
    for (body, field) in invalid {
        let p = c.post("/api/events", key, body.clone()).await.problem(422, "invalid_field");
        assert_eq!(p["field"], field, "{body}");
    }
    let p =
        c.post("/api/events/batch", key, json!({"events": []})).await.problem(422, "invalid_field");
    assert_eq!(p["field"], "events");
    c.post("/api/events/batch", key, json!({"events": {}})).await.problem(422, "invalid_field");
    c.post("/api/events/batch", key, json!({})).await.problem(422, "invalid_field");
    c.post("/api/ack", key, json!({"ids": [1, 2]})).await.problem(422, "invalid_field");
    let p = c
        .post("/api/ack", key, json!({"ids": vec!["x"; 1001]}))
        .await
        .problem(422, "invalid_field");
    assert_eq!(p["field"], "ids");

    // Webhook config: url required, http(s) only, filter checked.
    for body in [
        json!({}),
        json!({"url": "ftp://example.com"}),
        json!({"url": "example.com/hook"}),
        json!({"url": "https://a.example", "webhook_url": "https://b.example"}),
        json!({"url": "https://a.example", "event_type_filter": "bad filter"}),
    ] {
        c.post("/api/webhook/config", key, body).await.problem(422, "invalid_field");
    }
    // Key generation: unknown tier and empty names.
    let p = c
        .send(
            "POST",
            "/api/keys/generate",
            None,
            Some(json!({"organization_name": "x", "tier": "gold"})),
        )
        .await
        .problem(422, "invalid_field");
    assert_eq!(p["field"], "tier");
    c.send("POST", "/api/keys/generate", None, Some(json!({"organization_name": "  "})))
        .await
        .problem(422, "invalid_field");
    // A control character is refused wherever it is, also where trimming would drop it (as
    // the OpenAPI pattern says; found by the fuzzer).
    for name in ["acme\n", "\tacme", "ac\u{85}me", "acme\u{85}"] {
        let p = c
            .send("POST", "/api/keys/generate", None, Some(json!({"org_name": name})))
            .await
            .problem(422, "invalid_field");
        assert_eq!(p["field"], "organization_name", "{name:?}");
    }
    c.send("POST", "/api/keys/generate", None, Some(json!({"tier": "free"})))
        .await
        .problem(422, "invalid_field");

    // Nothing was stored.
    assert_eq!(c.get("/api/inbox", key).await.json()["events"], json!([]));
    assert_eq!(c.get("/api/webhook/config", key).await.json()["webhooks"], json!([]));
}

#[tokio::test]
async fn bad_queries_are_400_and_bad_ids_404() {
    let server = TestServer::default().await;
    let c = &server.client;
    let key = &server.key("free").await;
    for q in [
        "status=gone",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "cursor=%%%",
        "cursor=abc",
        "type=a%20b",
        "limit=1&limit=2",
    ] {
        c.get(&format!("/api/inbox?{q}"), key).await.problem(400, "invalid_query");
    }
    assert_eq!(c.get("/api/inbox?unknown=1&cursor=", key).await.status, 200);
    // Unknown parameters are ignored, but not without end: each name is checked against the
    // ones before it.
    let many: Vec<String> = (0..33).map(|i| format!("p{i}=1")).collect();
    let body =
        c.get(&format!("/api/inbox?{}", many.join("&")), key).await.problem(400, "invalid_query");
    assert!(body["detail"].as_str().unwrap().contains("at most 32 parameters"), "{body}");
    assert_eq!(c.get(&format!("/api/inbox?{}", many[..32].join("&")), key).await.status, 200);
    // `batch` names the batch resource (405 for GET, checked with the other 405s).
    for id in ["not-a-uuid", "123", "%00"] {
        c.get(&format!("/api/events/{id}"), key).await.problem(404, "not_found");
        c.post_empty(&format!("/api/ack/{id}"), key).await.problem(404, "not_found");
        c.post_empty(&format!("/api/events/{id}/replay"), key).await.problem(404, "not_found");
        c.send("DELETE", &format!("/api/webhooks/{id}"), Some(key), None)
            .await
            .problem(404, "not_found");
    }
    let unknown = uuid::Uuid::now_v7();
    c.get(&format!("/api/events/{unknown}"), key).await.problem(404, "not_found");
    c.post_empty(&format!("/api/ack/{unknown}"), key).await.problem(404, "not_found");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let server = TestServer::default().await;
    let c = &server.client;
    for path in
        ["/", "/api", "/api/event", "/api/events/", "/health/", "/api/events/x/y", "/API/events"]
    {
        c.send("GET", path, None, None).await.problem(404, "route_not_found");
    }
    let cases = [
        ("GET", "/api/events", "POST"),
        ("DELETE", "/api/events/batch", "POST"),
        ("GET", "/api/events/batch", "POST"),
        ("PUT", "/api/webhook/config", "GET, POST"),
        ("PUT", "/api/webhooks/abc", "DELETE, GET, PATCH"),
        ("POST", "/health", "GET"),
        ("PATCH", "/api/inbox", "GET"),
        ("GET", "/api/keys/generate", "POST"),
    ];
    for (method, path, allow) in cases {
        let r = c.send(method, path, None, None).await;
        r.problem(405, "method_not_allowed");
        assert_eq!(r.header("allow"), allow, "{method} {path}");
    }
}
