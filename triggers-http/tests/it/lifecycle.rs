//! Start-up refusal, graceful shutdown, readiness and store failures.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use triggers_core::{Ingestor, IngestorConfig, MemoryStore, NoDeliverer};
use triggers_http::{ServeError, Server, ServerConfig};

use crate::flaky::{FlakyStore, Mode};
use crate::support::{Options, TestServer};
use triggers_core::store::operational::AnnouncementBacklog;

#[tokio::test]
async fn a_non_loopback_listener_needs_an_admin_token() {
    let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let result = Server::new(ingestor, ServerConfig::default())
        .serve(listener, std::future::pending())
        .await;
    assert!(matches!(result, Err(ServeError::AdminTokenRequired(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_stops() {
    let server = TestServer::default().await;
    let addr = server.addr;
    let key = server.key("free").await;
    // An idle keep-alive connection must not hold the shutdown up.
    let idle = TcpStream::connect(addr).await.unwrap();
    // A request whose body is only half sent when the shutdown starts.
    let body = br#"{"type":"in.flight","payload":{"x":1}}"#;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server start reading it
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "shutdown did not wait for the in-flight request");
    s.write_all(&body[10..]).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    stopping.await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_503_or_500_without_leaking() {
    let store = FlakyStore::default();
    let server = TestServer::start_on(store.clone(), Options::default()).await;
    let c = &server.client;
    let key = server.key("free").await;
    assert_eq!(c.send("GET", "/health/ready", None, None).await.status, 200);
    // The store's gauges are read at scrape time: announcements waiting in an outbox.
    let oldest_waited = Some(Duration::from_secs(120));
    store.set_backlog(AnnouncementBacklog { waiting: 3, oldest_waited });
    let gauge = |text: &str, name: &str| -> i64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line[name.len() + 1..].parse().unwrap()
    };
    let text = c.send("GET", "/metrics", None, None).await.text();
    assert_eq!(gauge(&text, "triggers_announcements_waiting"), 3, "{text}");
    assert!(gauge(&text, "triggers_announcements_oldest_age_seconds") >= 120, "{text}");

    store.set(Mode::Unavailable);
    let r = c.send("GET", "/health/ready", None, None).await;
    r.problem(503, "store_unavailable");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(c.send("GET", "/health", None, None).await.status, 200, "liveness needs no store");
    let r = c.event(&key, "t", None).await;
    r.problem(503, "store_unavailable");
    assert!(!r.text().contains("db.internal"), "{}", r.text());
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("x-ratelimit-limit"), "10");
    c.get("/api/inbox", &key).await.problem(503, "store_unavailable");

    store.set(Mode::Overloaded);
    let r = c.event(&key, "t", None).await;
    r.problem(503, "overloaded");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    let r =
        c.post("/api/events/batch", &key, json!({"events": [{"type": "t", "payload": 1}]})).await;
    r.problem(503, "overloaded");

    store.set(Mode::Broken);
    let r = c.event(&key, "t", None).await;
    r.problem(500, "internal_error");
    assert!(!r.text().contains("events_secret_internal"), "{}", r.text());
    c.get("/api/queue/stats", &key).await.problem(500, "internal_error");
    // /metrics still answers when the queue depth cannot be read.
    let metrics = c.send("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("triggers_http_responses_total{status=\"500\"} 2"));
    assert_eq!(gauge(&metrics.text(), "triggers_announcements_waiting"), 3, "kept its value");

    // A panic below a handler costs that request a 500, not the connection or the server.
    store.set(Mode::Panic);
    let r = c.event(&key, "t", None).await;
    r.problem(500, "internal_error");
    assert_eq!(r.header("cache-control"), "no-store", "the panic's answer too");
    c.get("/api/inbox", &key).await.problem(500, "internal_error");

    store.set(Mode::Healthy);
    assert_eq!(c.event(&key, "t", None).await.status, 202);
    assert_eq!(c.get("/api/inbox", &key).await.json()["events"].as_array().unwrap().len(), 1);
}
