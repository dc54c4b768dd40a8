//! Memory under hostile paging: eight concurrent requests for the largest inbox page over 200
//! events of 250 KiB keep the server's peak RSS under 300 MiB (before byte-bounded pages it
//! reached 654 MiB), and paging still visits every event exactly once.
//!
//! The server runs in a child process (this test binary re-executed with `--exact
//! rss::child_server`) so that its peak RSS (`VmHWM` in `/proc/<pid>/status`) is its own.

use std::collections::HashSet;

use serde_json::Value;
use triggers_core::{Ingestor, IngestorConfig, NoDeliverer, Tier, TierLimits, WorkerConfig};
use triggers_http::{Server, ServerConfig};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::support::Client;

const CHILD_DB: &str = "TRIGGERS_IT_RSS_CHILD_DB";
const EVENTS: usize = 200;
const PAYLOAD: usize = 250 * 1024;
const LIMIT_MIB: u64 = 300;

/// Not a test of its own: the server process of `eight_largest_pages_stay_under_300_mib`.
/// Does nothing unless started by it (with `CHILD_DB` set). Default settings, so the page
/// budget is the default 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server() {
    let Ok(path) = std::env::var(CHILD_DB) else { return };
    let store = SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 1_000_000),
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

/// The child's peak resident set size in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_largest_pages_stay_under_300_mib() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) =
        crate::child::spawn("rss::child_server", [(CHILD_DB, dir.path().join("rss.db"))]);
    let client = Client::new(addr);
    let r = client
        .send(
            "POST",
            "/api/keys/generate",
            None,
            Some(serde_json::json!({"organization_name": "big", "tier": "enterprise"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["api_key"].as_str().unwrap().to_owned();

    let filler = "x".repeat(PAYLOAD - 2);
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let body = serde_json::json!({"type": "big.event", "payload": filler, "dedup_id": format!("big-{i}")});
        let r = client.post("/api/events", &key, body).await;
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let before = peak_rss_kib(child.0.id());

    // Eight at once, each asking for the largest page (limit=1000: every event).
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move { client.get("/api/inbox?limit=1000", &key).await })
        })
        .collect();
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let n = page["events"].as_array().unwrap().len();
        assert!((1..EVENTS).contains(&n), "the page ended at the byte budget ({n} events)");
        assert!(r.body.len() <= 4 * 1024 * 1024, "page body of {} bytes", r.body.len());
        assert!(page["next_cursor"].is_string());
    }
    let peak = peak_rss_kib(child.0.id());
    eprintln!("child peak RSS: {} MiB before the pages, {} MiB after", before / 1024, peak / 1024);
    assert!(peak / 1024 < LIMIT_MIB, "peak RSS {} MiB >= {LIMIT_MIB} MiB", peak / 1024);

    // Following next_cursor visits every event exactly once, in order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = client.get(&format!("/api/inbox?limit=1000&cursor={cursor}"), &key).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page: Value = r.json();
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["payload"].as_str().map(str::len), Some(PAYLOAD - 2));
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), EVENTS);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), EVENTS, "no event twice");
    assert_eq!(seen, ids, "every event, in creation order");
    drop(child);
}
