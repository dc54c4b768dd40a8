//! The disk holding the SQLite database and the server's log fills up, and is freed again:
//! every request is answered (503 `store_unavailable` with `Retry-After` while writes fail),
//! `/health/ready` says 503, the server recovers without a restart, and every event answered
//! 202 is stored, in an intact file.
//!
//! The filesystem is a 2 MiB tmpfs (half of it taken by a file that is deleted later), which needs root (CI runs as root); otherwise the test is
//! skipped with a printed reason. The server runs in a child process (this test binary
//! re-executed with `--exact diskfull::child_server`) whose stdout and stderr — its log —
//! are a file on the same tmpfs, like a server logging next to its database.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use triggers_core::{Ingestor, IngestorConfig, NoDeliverer, Tier, TierLimits, WorkerConfig};
use triggers_http::{Server, ServerConfig};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::support::{Client, Resp};

const CHILD_DB: &str = "TRIGGERS_IT_DISKFULL_CHILD_DB";
const CHILD_PORT_FILE: &str = "TRIGGERS_IT_DISKFULL_PORT_FILE";

/// Not a test of its own: the server process of `a_full_disk_is_answered_and_recovered_from`.
/// Does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server() {
    let (Ok(db), Ok(port_file)) = (std::env::var(CHILD_DB), std::env::var(CHILD_PORT_FILE)) else {
        return;
    };
    // The server's own log setup: lines that cannot be written are dropped, never a panic.
    triggers_http::logging::init("info").unwrap();
    let store = SqliteStore::open(&db, SqliteConfig::default()).unwrap();
    let config = IngestorConfig {
        tier_limits: TierLimits::default().with(Tier::Enterprise, 10_000_000),
        worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
        ..IngestorConfig::default()
    };
    let ingestor = Ingestor::start(store, NoDeliverer, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(&port_file, port.to_string()).unwrap();
    Server::new(ingestor, ServerConfig::default())
        .serve(listener, std::future::pending())
        .await
        .unwrap();
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` after printing why, when this process may not mount (not root, or no
    /// permission). Under `CI` the test must run: it panics instead.
    fn mount(base: &Path, size: &str) -> Option<Tmpfs> {
        let dir = base.join("fs");
        std::fs::create_dir(&dir).unwrap();
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            })
            .unwrap_or_default();
        let why = if uid != "0" {
            format!("not running as root (uid {uid:?}), cannot mount a tmpfs")
        } else {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .output();
            match out {
                Ok(o) if o.status.success() => return Some(Tmpfs { dir }),
                Ok(o) => format!("mount failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!("cannot run mount: {e}"),
            }
        };
        assert!(std::env::var_os("CI").is_none(), "the disk-full test must run in CI: {why}");
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED diskfull: {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Kills the child process when dropped (also when the test fails).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(db: &Path, log: &Path, port_file: &Path) -> (ChildGuard, SocketAddr) {
    let log = File::create(log).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "diskfull::child_server", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, db)
        .env(CHILD_PORT_FILE, port_file)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(port_file).ok().and_then(|p| p.parse().ok()) {
            break port;
        }
        assert!(Instant::now() < deadline, "the child server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Sends `method path` and insists on an answer: a dropped connection fails the test.
async fn must_answer(
    client: &Client,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> Resp {
    let req = async {
        let mut b = hyper::Request::builder().method(method).uri(path).header("x-api-key", key);
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                bytes::Bytes::from(v.to_string())
            }
            None => bytes::Bytes::new(),
        };
        client.request(b.body(http_body_util::Full::new(body)).unwrap()).await
    };
    tokio::time::timeout(Duration::from_secs(20), req)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 20 s"))
}

fn assert_unavailable(r: &Resp) {
    let problem = r.problem(503, "store_unavailable");
    assert!(r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1), "{:?}", r.headers);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("disk is full"), "the cause is in the detail: {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_and_recovered_from() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(base.path(), "2m") else { return };
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).unwrap();
    let db = fs.dir.join("triggers.db");
    let (child, addr) = spawn_child(&db, &fs.dir.join("server.log"), &base.path().join("port"));
    let client = Client::new(addr);
    let r = client
        .send(
            "POST",
            "/api/keys/generate",
            None,
            Some(json!({"organization_name": "full", "tier": "enterprise"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["api_key"].as_str().unwrap().to_owned();

    // 60 KB events until the disk is full.
    let big = json!({"type": "big.event", "payload": {"blob": "x".repeat(60_000)}});
    let mut acked = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let r = must_answer(&client, "POST", "/api/events", &key, Some(big.clone())).await;
        if r.status == 202 {
            acked.push(r.json()["id"].as_str().unwrap().to_owned());
        } else {
            assert_unavailable(&r);
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    assert!(refused == 3, "the disk never filled up");
    assert!(!acked.is_empty(), "events were stored before the disk filled up");

    // While it is full (and the log cannot be written), every request is still answered.
    for i in 0..30 {
        let r = must_answer(&client, "POST", "/api/events", &key, Some(big.clone())).await;
        assert_unavailable(&r);
        let r = must_answer(&client, "GET", "/health/ready", &key, None).await;
        assert_unavailable(&r);
        let r = must_answer(
            &client,
            "GET",
            &format!("/api/events/{}", acked[i % acked.len()]),
            &key,
            None,
        )
        .await;
        assert_eq!(r.status, 200, "reads still work: {}", r.text());
        let r = must_answer(&client, "GET", "/health", &key, None).await;
        assert_eq!(r.status, 200);
    }

    // Space is freed: the server recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = must_answer(&client, "GET", "/health/ready", &key, None).await;
        if r.status == 200 {
            break;
        }
        assert_unavailable(&r);
        assert!(Instant::now() < deadline, "not ready again 20 s after space was freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        let r = must_answer(&client, "POST", "/api/events", &key, Some(big.clone())).await;
        assert_eq!(r.status, 202, "{}", r.text());
        acked.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let small = json!({"type": "small.event", "payload": {"n": 1}});
    for _ in 0..20 {
        let r = must_answer(&client, "POST", "/api/events", &key, Some(small.clone())).await;
        assert_eq!(r.status, 202, "{}", r.text());
        acked.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    for id in &acked {
        let r = must_answer(&client, "GET", &format!("/api/events/{id}"), &key, None).await;
        assert_eq!(r.status, 200, "acknowledged event {id} is stored: {}", r.text());
    }

    // The file is intact.
    drop(child);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let stored: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(stored as usize, acked.len(), "exactly the acknowledged events are stored");
    drop(conn);
    drop(fs);
}
