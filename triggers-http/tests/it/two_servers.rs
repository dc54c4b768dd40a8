//! Two server processes on one PostgreSQL database: with `TRIGGERS_RATE_LIMITER=shared` a
//! free-tier organization (10 a minute) gets 10 of 20 requests through, whichever node
//! answers; with `local` each node allows its own 10.
//!
//! Each server is this test binary re-executed with `--exact two_servers::child_server`, the
//! database URL in `CHILD_URL` and the limiter in `CHILD_LIMITER`; it prints its port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use triggers_core::{ChunkedLimiter, Ingestor, SharedRateLimiter};
use triggers_http::settings::{RateLimiterKind, Settings};
use triggers_http::{Server, WebhookDeliverer};
use triggers_store_postgres::testing::{self, TestDatabase, SKIP_VAR};
use triggers_store_postgres::{PgConfig, PgStore};

use crate::child::ChildGuard;
use crate::support::Client;

const CHILD_URL: &str = "TRIGGERS_IT_TWO_SERVERS_URL";
const CHILD_LIMITER: &str = "TRIGGERS_IT_TWO_SERVERS_LIMITER";

/// Not a test of its own: a server process of the test below, built from the same settings
/// as the example server. Does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server() {
    let Ok(url) = std::env::var(CHILD_URL) else { return };
    let limiter = std::env::var(CHILD_LIMITER).unwrap();
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", url.as_str()),
        ("TRIGGERS_TIER_LIMITS", "free=10"),
        ("TRIGGERS_RATE_LIMITER", limiter.as_str()),
        ("TRIGGERS_WORKERS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = Settings::from_env_map(&vars).unwrap();
    let config =
        PgConfig { max_connections: 4, limits: settings.store_limits, ..PgConfig::default() };
    let store = PgStore::connect(&url, config).await.unwrap();
    let mut ingestor_config = settings.ingestor_config();
    if settings.rate_limiter == RateLimiterKind::Shared {
        let shared: Arc<dyn SharedRateLimiter> =
            Arc::new(ChunkedLimiter::new(store.rate_limiter()));
        ingestor_config.shared_limiter = Some(shared);
    }
    let deliverer = WebhookDeliverer::new(settings.webhook_config()).unwrap();
    let ingestor = Ingestor::start(store, deliverer, ingestor_config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    crate::child::announce(&listener);
    Server::new(ingestor, settings.server_config())
        .serve(listener, std::future::pending())
        .await
        .unwrap();
}

fn spawn_child(url: &str, limiter: &str) -> (ChildGuard, SocketAddr) {
    crate::child::spawn("two_servers::child_server", [(CHILD_URL, url), (CHILD_LIMITER, limiter)])
}

/// Sends 20 events of a new free-tier organization, alternating between the two nodes;
/// returns how many were accepted and how many the inbox holds.
async fn twenty_requests(a: &Client, b: &Client) -> (usize, usize) {
    let r = a
        .send(
            "POST",
            "/api/keys/generate",
            None,
            Some(json!({"organization_name": "two", "tier": "free"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["api_key"].as_str().unwrap().to_owned();
    let mut accepted = 0;
    for i in 0..20 {
        let node = if i % 2 == 0 { a } else { b };
        let r = node.event(&key, "t", None).await;
        match r.status {
            202 => accepted += 1,
            429 => {
                r.problem(429, "rate_limited");
                assert!(!r.header("retry-after").is_empty());
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let inbox = a.get("/api/inbox?limit=1000", &key).await.json();
    (accepted, inbox["events"].as_array().unwrap().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_rate_limit() {
    if std::env::var_os(SKIP_VAR).is_some() {
        return;
    }
    let server = testing::server_url();
    let db = TestDatabase::create(&server).await.expect("a PostgreSQL test database");
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let url = format!("{base}/{}", db.name);

    let (_a, a) = spawn_child(&url, "shared");
    let (_b, b) = spawn_child(&url, "shared");
    let (accepted, stored) = twenty_requests(&Client::new(a), &Client::new(b)).await;
    assert_eq!((accepted, stored), (10, 10), "shared: one limit of 10 across both nodes");

    let (_c, c) = spawn_child(&url, "local");
    let (_d, d) = spawn_child(&url, "local");
    let (accepted, stored) = twenty_requests(&Client::new(c), &Client::new(d)).await;
    assert_eq!((accepted, stored), (20, 20), "local: each node allows its own 10");
}
