//! `kill -9` of the server during a load of `POST /api/events`: after a restart on the same
//! SQLite file, every event that was answered 202 is in the inbox.
//!
//! The server runs in a child process: this test binary re-executed with `--exact
//! crash::child_server` and the database path in `CHILD_DB`; it prints its port.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use triggers_core::{Ingestor, IngestorConfig, NoDeliverer, Tier, TierLimits, WorkerConfig};
use triggers_http::{Server, ServerConfig};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::child::ChildGuard;
use crate::support::Client;

const CHILD_DB: &str = "TRIGGERS_IT_CRASH_CHILD_DB";

/// Not a test of its own: the server process of `kill_9_loses_no_accepted_event`. Does
/// nothing unless started by it (with `CHILD_DB` set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server() {
    let Ok(path) = std::env::var(CHILD_DB) else { return };
    let store = SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 10_000_000),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    let ingestor = Ingestor::start(store, NoDeliverer, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    crate::child::announce(&listener);
    Server::new(ingestor, ServerConfig::default())
        .serve(listener, std::future::pending())
        .await
        .unwrap();
}

/// Starts the child server on `db`; its address once it listens.
fn spawn_child(db: &Path) -> (ChildGuard, SocketAddr) {
    crate::child::spawn("crash::child_server", [(CHILD_DB, db)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let (mut child, addr) = spawn_child(&db);
    let client = Client::new(addr);
    let r = client
        .send(
            "POST",
            "/api/keys/generate",
            None,
            Some(json!({"organization_name": "crash", "tier": "enterprise"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["api_key"].as_str().unwrap().to_owned();

    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (client, key) = (Client::new(addr), key.clone());
            let (accepted, failed, sent) = (accepted.clone(), failed.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let body = json!({"type": "load.test", "payload": {"w": w, "i": i},
                                      "dedup_id": format!("{w}-{i}")});
                    sent.fetch_add(1, Ordering::Relaxed);
                    match client.try_post("/api/events", &key, &body).await {
                        Some(r) if r.status == 202 => {
                            let id = r.json()["id"].as_str().unwrap().to_owned();
                            accepted.lock().unwrap().push(id);
                        }
                        Some(r) => panic!("unexpected answer {}: {}", r.status, r.text()),
                        None => {
                            failed.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    // Kill while requests are in flight, once a good number have been accepted.
    while accepted.lock().unwrap().len() < 400 {
        assert!(!failed.load(Ordering::Relaxed), "the server failed before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > accepted.len(), "some requests were in flight at the kill");

    let (child, addr) = spawn_child(&db);
    let client = Client::new(addr);
    let mut stored = HashSet::new();
    let mut cursor = String::new();
    loop {
        let r = client.get(&format!("/api/inbox?limit=1000&cursor={cursor}"), &key).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        for e in page["events"].as_array().unwrap() {
            stored.insert(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    let lost: Vec<_> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} accepted events lost: {lost:?}", lost.len(), accepted.len());
    assert!(stored.len() <= sent, "no event appeared from nowhere");
    drop(child);
}
