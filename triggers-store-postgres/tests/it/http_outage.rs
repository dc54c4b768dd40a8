//! PostgreSQL goes away under load behind the HTTP server, and comes back: every request is
//! answered (503 `store_unavailable` with `Retry-After` and the cause while it is away,
//! bounded by the acquire timeout), `/health/ready` says 503, the server serves again by
//! itself, and every event answered 202 is stored. The outage is a proxy on loopback that
//! closes its port, so the shared database server is not restarted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use triggers_core::{Ingestor, IngestorConfig, NoDeliverer, Tier, TierLimits, WorkerConfig};
use triggers_http::{Server, ServerConfig};
use triggers_store_postgres::PgStore;

use crate::proxy::Proxy;
use crate::support;

/// A client that gives up after 10 s, like the one of the report.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// Sends the request; panics when it is not answered within [`CLIENT_TIMEOUT`].
    async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).unwrap();
        let call = async {
            let res = self.client.request(req).await.expect("the connection failed");
            let status = res.status().as_u16();
            let retry_after =
                res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Answer { status, retry_after, body }
        };
        tokio::time::timeout(CLIENT_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {CLIENT_TIMEOUT:?}"))
    }
}

/// Asserts a 503 `store_unavailable` with `Retry-After`; returns the detail.
fn unavailable(a: &Answer) -> String {
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["code"], "store_unavailable", "{}", a.body);
    assert!(a.retry_after.as_deref().is_some_and(|s| s.parse::<u64>().is_ok()), "Retry-After");
    a.body["detail"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_answered_fast_and_recovered_from() {
    let Some(db) = support::database("http_outage").await else { return };
    let target: SocketAddr = format!("127.0.0.1:{}", db.options.get_port()).parse().unwrap();
    let proxy = Proxy::start(target).await;
    // The default acquire timeout (2 s): requests must be answered well within 10 s.
    let config = support::config();
    assert_eq!(config.acquire_timeout, Duration::from_secs(2));
    let options = db.options.clone().host("127.0.0.1").port(proxy.addr.port());
    let store = PgStore::connect_with(options, config).await.unwrap();
    let ingestor_config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 10_000_000),
        // Workers run (and must back off while claims fail); nothing is ever due for them.
        worker: WorkerConfig { concurrency: 2, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    let ingestor = Ingestor::start(store, NoDeliverer, ingestor_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = Http {
        base: format!("http://{}", listener.local_addr().unwrap()),
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(Server::new(ingestor, ServerConfig::default()).serve(listener, async {
            let _ = stopped.await;
        }));
    let body = json!({"organization_name": "outage", "tier": "enterprise"});
    let a = http.send("POST", "/api/keys/generate", None, Some(body)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let key = a.body["api_key"].as_str().unwrap().to_owned();

    // 8 clients send events (with dedup ids) all along.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        let (http, key, acked, refused, stop) =
            (http.clone(), key.clone(), acked.clone(), refused.clone(), stop.clone());
        clients.spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body = json!({"type": "load", "payload": {"c": c, "i": i},
                                  "dedup_id": format!("{c}-{i}")});
                let a = http.send("POST", "/api/events", Some(&key), Some(body)).await;
                match a.status {
                    202 => acked.lock().unwrap().push(a.body["id"].as_str().unwrap().to_owned()),
                    _ => {
                        unavailable(&a);
                        *refused.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The database goes away: its port is closed.
    proxy.refuse().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let detail = loop {
        let a = http.send("GET", "/health/ready", None, None).await;
        if a.status == 503 {
            break unavailable(&a);
        }
        assert!(Instant::now() < deadline, "still ready 30 s into the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(detail.contains("connection refused"), "the cause is named: {detail}");
    assert!(!detail.contains("password"), "{detail}");
    // Requests keep being answered (the clients check each) for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_during = *refused.lock().unwrap();
    assert!(refused_during > 0, "requests were refused with 503 during the outage");
    let a = http.send("GET", "/api/queue/stats", Some(&key), None).await;
    unavailable(&a);

    // It comes back: the server serves again by itself.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = http.send("GET", "/health/ready", None, None).await;
        if a.status == 200 {
            break;
        }
        unavailable(&a);
        assert!(Instant::now() < deadline, "not ready 30 s after the database came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "events are accepted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let unique: HashSet<_> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len());
    for id in &acked {
        let a = http.send("GET", &format!("/api/events/{id}"), Some(&key), None).await;
        assert_eq!(a.status, 200, "acknowledged event {id} is stored: {}", a.body);
    }
    let _ = stop_server.send(());
    server.await.unwrap().unwrap();
    drop(proxy);
    db.drop_database().await.unwrap();
}
