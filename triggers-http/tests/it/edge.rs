//! Hostile input at the edge (issue 11): deep JSON, bad webhook URLs, foreign `Host`s,
//! `/metrics` access, and connection fairness. Each refusal is checked together with what
//! must not have changed.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use triggers_http::ServerConfig;

use crate::support::{Options, TestServer};

const GUARD: Duration = Duration::from_secs(20);

/// Sends one raw HTTP/1.1 request (with `Connection: close`); the whole answer as text.
async fn raw(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out)).await.expect("no answer").ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A counter of `/metrics` (0 when absent).
async fn metric(server: &TestServer, line_prefix: &str) -> u64 {
    let text = server.client.send("GET", "/metrics", None, None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_is_refused_in_every_body_before_anything_is_stored() {
    let server = TestServer::default().await;
    let key = server.key("enterprise").await;
    let c = &server.client;
    let deep = nested(20_000);
    let send = |path: &'static str, body: String| {
        let c = c.clone();
        let key = key.clone();
        async move {
            let req = http::Request::post(path)
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            c.request(req).await
        }
    };
    let r = send("/api/events", format!(r#"{{"type":"deep","payload":{deep}}}"#)).await;
    r.problem(400, "malformed_json");
    let r = send(
        "/api/events/batch",
        format!(r#"{{"events":[{{"type":"ok","payload":1}},{{"type":"deep","payload":{deep}}}]}}"#),
    )
    .await;
    r.problem(400, "malformed_json");
    let r = send(
        "/api/webhook/config",
        format!(r#"{{"url":"http://127.0.0.1:9/hook","extra":{deep}}}"#),
    )
    .await;
    r.problem(400, "malformed_json");
    // Within the body limit of 128 but deeper than a payload may be: 422 on the payload.
    let r = send("/api/events", format!(r#"{{"type":"deep","payload":{}}}"#, nested(101))).await;
    assert_eq!(r.problem(422, "invalid_field")["field"], "payload");
    let r = send(
        "/api/events/batch",
        format!(r#"{{"events":[{{"type":"deep","payload":{}}}]}}"#, nested(101)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["results"][0]["error"]["field"], "payload");

    // Nothing above was stored; the deepest allowed payload is, and a standard client
    // (serde_json, limit 128) still reads the inbox page that embeds it.
    let inbox = c.get("/api/inbox", &key).await;
    assert_eq!(inbox.json()["events"], json!([]));
    assert_eq!(c.get("/api/webhook/config", &key).await.json()["webhooks"], json!([]));
    let r = send("/api/events", format!(r#"{{"type":"deep","payload":{}}}"#, nested(100))).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let inbox = c.get("/api/inbox", &key).await;
    let page: Value = serde_json::from_slice(&inbox.body).expect("a standard client reads it");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_are_checked_when_configured() {
    let server = TestServer::default().await;
    let key = server.key("free").await;
    let c = &server.client;
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(2048));
    for bad in [
        "http://127.0.0.1:99999/hook",
        "http://127.0.0.1:0/hook",
        "http://127.0.0.1:/hook",
        "https://user:secret@127.0.0.1/hook",
        "ftp://127.0.0.1/hook",
        "javascript:alert(1)",
        "http:///hook",
        "http://bad host/",
        long.as_str(),
    ] {
        let r = c.post("/api/webhook/config", &key, json!({ "url": bad })).await;
        assert_eq!(r.problem(422, "invalid_field")["field"], "url", "{bad}");
        let r = c.post("/api/webhook/config", &key, json!({ "webhook_url": bad })).await;
        assert_eq!(r.problem(422, "invalid_field")["field"], "url", "{bad}");
    }
    assert_eq!(c.get("/api/webhook/config", &key).await.json()["webhooks"], json!([]));
    let r = c.post("/api/webhook/config", &key, json!({ "url": "http://127.0.0.1:65535/h" })).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        c.get("/api/webhook/config", &key).await.json()["webhooks"][0]["url"],
        "http://127.0.0.1:65535/h"
    );
}

const GENERATE: &str = r#"{"organization_name":"rebound","tier":"enterprise"}"#;

fn generate_head(host: &str, extra: &str) -> String {
    format!(
        "POST /api/keys/generate HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_are_refused_without_an_admin_token() {
    let mut opts = Options::default();
    opts.server.allowed_hosts = vec!["dev.example.test".into(), "box.lan:8080".into()];
    let server = TestServer::start(opts).await;
    let (addr, port) = (server.addr, server.addr.port());
    for host in
        ["evil.example", "evil.example:8080", &format!("attacker.test:{port}"), "box.lan:80"]
    {
        let resp = raw(addr, &generate_head(host, ""), GENERATE).await;
        assert_eq!(status_of(&resp), 421, "{host}: {resp}");
        assert!(resp.contains("host_not_allowed"), "{resp}");
        assert!(!resp.contains("api_key"));
        // Every route, reads included.
        let resp = raw(addr, &format!("GET /health HTTP/1.1\r\nHost: {host}"), "").await;
        assert_eq!(status_of(&resp), 421, "{resp}");
    }
    // An absolute request URI naming a foreign host is refused like its Host header.
    let resp = raw(
        addr,
        &format!("POST http://evil.example/api/keys/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"),
        GENERATE,
    )
    .await;
    assert_eq!(status_of(&resp), 421, "{resp}");
    assert_eq!(
        metric(&server, "triggers_http_responses_total{status=\"201\"} ").await,
        0,
        "no key was minted"
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "dev.example.test:1234".into(),
        "box.lan:8080".into(),
    ] {
        let resp = raw(addr, &generate_head(&host, ""), GENERATE).await;
        assert_eq!(status_of(&resp), 201, "{host}: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_bearer_scheme_is_case_insensitive() {
    let mut opts = Options::default();
    opts.server.admin_token = Some("adm1n".into());
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    let resp = raw(addr, &generate_head("api.example.test", ""), GENERATE).await;
    assert_eq!(status_of(&resp), 401, "the token, not the Host, guards a token server: {resp}");
    let resp =
        raw(addr, &generate_head("api.example.test", "\r\nAuthorization: Bearer wrong"), GENERATE)
            .await;
    assert_eq!(status_of(&resp), 401, "{resp}");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("\r\nAuthorization: {scheme} adm1n");
        let resp = raw(addr, &generate_head("api.example.test", &auth), GENERATE).await;
        assert_eq!(status_of(&resp), 201, "{scheme}: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let mut opts = Options::default();
    opts.server.metrics_token = Some("m3trics".into());
    let server = TestServer::start(opts).await;
    let get = |auth: Option<&'static str>| {
        let c = server.client.clone();
        async move {
            let mut b = http::Request::get("/metrics");
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            c.request(b.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()).await
        }
    };
    get(None).await.problem(401, "invalid_metrics_token");
    let r = get(Some("Bearer wrong")).await;
    r.problem(401, "invalid_metrics_token");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    get(Some("Basic m3trics")).await.problem(401, "invalid_metrics_token");
    for ok in ["Bearer m3trics", "bearer m3trics"] {
        let r = get(Some(ok)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("triggers_http_responses_total"));
    }
    // Without a token, a loopback bind serves it openly.
    let open = TestServer::default().await;
    assert_eq!(open.client.send("GET", "/metrics", None, None).await.status, 200);
}

/// Whether the server closed `s` without answering a request sent on it.
async fn closed_without_answer(s: &mut TcpStream, addr: SocketAddr) -> bool {
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = [0u8; 512];
    match tokio::time::timeout(GUARD, s.read(&mut buf)).await.expect("no answer, no close") {
        Ok(0) | Err(_) => true,
        Ok(n) => {
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_more_than_its_connection_cap() {
    let mut opts = Options::default();
    opts.server.max_connections_per_peer = 4;
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_without_answer(&mut fifth, addr).await, "a fifth connection was served");
    // The four held ones are served, and keep being served.
    for s in &mut held {
        assert!(!closed_without_answer(s, addr).await);
    }
    drop(held);
    // Slots are given back when connections close.
    let mut served = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if !closed_without_answer(&mut s, addr).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "closed connections did not free the peer's slots");
    assert!(metric(&server, "triggers_http_connections_rejected_total ").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_global_cap_idle_connections_make_room_for_new_ones() {
    let opts = Options {
        server: ServerConfig {
            max_connections: 4,
            connection_wait: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        ..Options::default()
    };
    let server = TestServer::start(opts).await;
    let addr = server.addr;
    // Four idle keep-alive connections (each served one request) hold every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(GUARD, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A new client is served at once (the header/idle timeout is 10 s): the longest-idle
    // connection was closed for it.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert!(!closed_without_answer(&mut fresh, addr).await, "the new connection was refused");
    let mut first = idle.remove(0);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(GUARD, first.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the longest-idle connection was closed");
    assert_eq!(metric(&server, "triggers_http_connections_rejected_total ").await, 0);
}
