//! Fair delivery and FIFO endpoints end to end: the server's real webhook deliverer posts to
//! receivers on 127.0.0.1, over SQLite (in process) and over PostgreSQL (two server
//! processes sharing one database: this test binary re-executed with `--exact
//! fair::child_server`, like `crash.rs`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use triggers_core::{IngestorConfig, RetryPolicy, Tier, TierLimits, WorkerConfig};
use triggers_http::{Server, ServerConfig, WebhookConfig, WebhookDeliverer};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::child::ChildGuard;
use crate::receiver::Receiver;
use crate::support::{Client, Options, TestServer};

// ---- servers -----------------------------------------------------------------------------------

fn webhook_config() -> WebhookConfig {
    WebhookConfig { allow: vec!["127.0.0.0/8".parse().unwrap()], ..WebhookConfig::default() }
}

/// The server's settings as in production (64 workers, 15 s timeout, the default fairness),
/// with quick retries for the FIFO cases.
fn ingestor_config(retry_delays: &[u64]) -> IngestorConfig {
    IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 1_000_000),
        retry: RetryPolicy::with_delays(
            retry_delays.iter().map(|s| Duration::from_secs(*s)).collect(),
        ),
        worker: WorkerConfig {
            poll_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        ..IngestorConfig::default()
    }
}

async fn sqlite_server(dir: &tempfile::TempDir, retry_delays: &[u64]) -> TestServer {
    let store = SqliteStore::open(dir.path().join("fair.db"), SqliteConfig::default()).unwrap();
    let deliverer = WebhookDeliverer::new(webhook_config()).unwrap();
    let opts = Options { ingestor: ingestor_config(retry_delays), server: ServerConfig::default() };
    TestServer::start_with(store, deliverer, opts).await
}

async fn key(client: &Client, name: &str, tier: &str) -> String {
    let body = json!({"organization_name": name, "tier": tier});
    let r = client.send("POST", "/api/keys/generate", None, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["api_key"].as_str().unwrap().to_owned()
}

async fn webhook(client: &Client, key: &str, url: &str, ordering: &str) -> Value {
    let r =
        client.post("/api/webhook/config", key, json!({"url": url, "ordering": ordering})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

async fn send(client: &Client, key: &str, n: i64) {
    let r =
        client.post("/api/events", key, json!({"type": "fair.test", "payload": {"n": n}})).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

// ---- tests ---------------------------------------------------------------------------------

/// The noisy neighbour: a free organization with 7 endpoints that never answer sends
/// one batch of 10 events (70 deliveries). It holds no more than its share of the 64 workers
/// (a quarter), so another organization's delivery still arrives at once — not after the 15 s
/// timeout, as when every worker sat on a hanging endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_hanging_endpoints_does_not_delay_another() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(&dir, &[0, 5, 300]).await;
    let c = &server.client;
    let hanging = Receiver::start(|_, _, _| None).await;
    let healthy = Receiver::start(|_, _, _| Some(200)).await;

    let noisy = key(c, "noisy", "free").await;
    for i in 0..7 {
        webhook(c, &noisy, &hanging.url(&format!("/hang/{i}")), "parallel").await;
    }
    let events: Vec<Value> =
        (0..10).map(|n| json!({"type": "noise", "payload": {"n": n}})).collect();
    let r = c.post("/api/events/batch", &noisy, json!({"events": events})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let share = WorkerConfig::default().effective_org_concurrency();
    hanging.until("the noisy share of workers", |s| s.len() >= share).await;
    // Give the server time to take more if it would (it must not).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hanging.seen().len(), share, "the noisy organization holds exactly its share");

    let quiet = key(c, "quiet", "free").await;
    webhook(c, &quiet, &healthy.url("/quiet"), "parallel").await;
    let sent = Instant::now();
    send(c, &quiet, 1).await;
    healthy.until("the quiet delivery", |s| !s.is_empty()).await;
    let waited = healthy.seen()[0].2 - sent;
    assert!(waited < Duration::from_secs(1), "the quiet organization waited {waited:?}");
    assert_eq!(hanging.seen().len(), share, "still no more than its share");
}

/// A FIFO endpoint whose receiver fails event 3 twice receives events 1..50 in order, with
/// no gaps, one at a time: event 4 is not attempted before event 3 succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_endpoint_receives_every_event_in_order_despite_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(&dir, &[0, 1, 1, 1]).await;
    let c = &server.client;
    let receiver =
        Receiver::start(|_, n, count| Some(if n == 3 && count <= 2 { 500 } else { 200 })).await;
    let k = key(c, "ordered", "enterprise").await;
    let hook = webhook(c, &k, &receiver.url("/fifo"), "fifo").await;
    assert_eq!(hook["ordering"], "fifo");
    for n in 1..=50 {
        send(c, &k, n).await;
    }
    receiver.until("event 50", |s| s.iter().any(|x| x.1 == 50)).await;
    let mut expected = vec![1, 2, 3, 3, 3];
    expected.extend(4..=50);
    assert_eq!(receiver.ns(), expected);
    assert_eq!(receiver.max_open.load(Ordering::SeqCst), 1, "one request at a time");
}

// ---- two server processes on one PostgreSQL database ---------------------------------------

const CHILD_PG: &str = "TRIGGERS_IT_FAIR_CHILD_PG";

/// Not a test of its own: a server process of `two_servers_on_postgres_keep_a_fifo_line`.
/// Does nothing unless started by it (with `CHILD_PG` set to the database URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server() {
    let Ok(url) = std::env::var(CHILD_PG) else { return };
    let config = triggers_store_postgres::PgConfig { max_connections: 6, ..Default::default() };
    let store = triggers_store_postgres::PgStore::connect(&url, config).await.unwrap();
    let deliverer = WebhookDeliverer::new(webhook_config()).unwrap();
    let ingestor = triggers_core::Ingestor::start(store, deliverer, ingestor_config(&[0, 1, 1, 1]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    crate::child::announce(&listener);
    Server::new(ingestor, ServerConfig::default())
        .serve(listener, std::future::pending())
        .await
        .unwrap();
}

fn spawn_child(url: &str) -> (ChildGuard, SocketAddr) {
    crate::child::spawn("fair::child_server", [(CHILD_PG, url)])
}

/// Two server processes share one PostgreSQL database; events are sent alternately to
/// both. The FIFO endpoint still gets them one at a time, in order, through event 4's two
/// failures, whichever node claims them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_postgres_keep_a_fifo_line() {
    use triggers_store_postgres::testing::{self, TestDatabase, SKIP_VAR};
    if std::env::var_os(SKIP_VAR).is_some() {
        assert!(std::env::var_os("CI").is_none(), "the PostgreSQL tests must run in CI");
        return;
    }
    let admin = testing::server_url();
    let db = TestDatabase::create(&admin).await.expect("PostgreSQL for the two-node test");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{}", db.name);
    let (_a, addr_a) = spawn_child(&url);
    let (_b, addr_b) = spawn_child(&url);
    let (a, b) = (Client::new(addr_a), Client::new(addr_b));

    let receiver =
        Receiver::start(|_, n, count| Some(if n == 4 && count <= 2 { 503 } else { 200 })).await;
    let k = key(&a, "two-nodes", "enterprise").await;
    webhook(&a, &k, &receiver.url("/fifo"), "fifo").await;
    for n in 1..=40 {
        send(if n % 2 == 0 { &b } else { &a }, &k, n).await;
    }
    receiver.until("event 40", |s| s.iter().any(|x| x.1 == 40)).await;
    let mut expected = vec![1, 2, 3, 4, 4, 4];
    expected.extend(5..=40);
    assert_eq!(receiver.ns(), expected);
    assert_eq!(receiver.max_open.load(Ordering::SeqCst), 1, "one request at a time");
}
