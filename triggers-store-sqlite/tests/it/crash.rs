//! Crash safety: a child process ingests through the Ingestor as fast as it can and prints
//! every acknowledged id; the parent SIGKILLs it mid-stream, reopens the database and checks
//! that every acknowledged event is there, intact, and that SQLite's integrity check passes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;

use serde_json::value::RawValue;
use triggers_core::store::EventLog;
use triggers_core::{
    EventId, Ingestor, IngestorConfig, NewEvent, NoDeliverer, OrganizationId, Tier, TierLimits,
    WorkerConfig,
};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

use crate::raw;

const CHILD_ENV: &str = "TRIGGERS_SQLITE_CRASH_DB";
const TASKS: usize = 32;

/// The payload of event `n` of task `task`: what the parent expects back byte for byte.
fn payload(task: usize, n: usize) -> String {
    format!(r#"{{"task":{task},"n":{n},"pad":"{}"}}"#, "p".repeat((task * 7 + n) % 200))
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let (_dir, path) = crate::temp_db();
    let mut acked: Vec<(OrganizationId, EventId, String)> = Vec::new();
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash::crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Kill at a different point each round, while tasks are mid-flight.
        let kill_after = 300 + round * 700;
        let mut seen_this_round = 0;
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else { continue };
            let parts: Vec<&str> = rest.split(' ').collect();
            let org = OrganizationId::from_str(parts[0]).unwrap();
            let id = EventId::from_str(parts[1]).unwrap();
            let (task, n) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
            acked.push((org, id, payload(task, n)));
            seen_this_round += 1;
            if seen_this_round == kill_after && !killed {
                child.kill().unwrap(); // SIGKILL on unix
                killed = true;
            }
            // Keep reading: lines printed before the kill were acknowledged too.
        }
        let status = child.wait().unwrap();
        assert!(killed, "the child stopped before it was killed: {status:?}");
        assert!(!status.success());
        eprintln!("round {round}: {seen_this_round} acknowledged, {} in total", acked.len());
        check(&path, &acked);
    }
}

fn check(path: &Path, acked: &[(OrganizationId, EventId, String)]) {
    let integrity: String =
        raw(path).query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(path, SqliteConfig::default()).unwrap();
        for (org, id, payload) in acked {
            let detail = store.event(*org, *id).await.unwrap();
            let detail = detail.unwrap_or_else(|| panic!("acknowledged event {id} is missing"));
            assert_eq!(detail.event.payload.get(), payload);
            assert_eq!(detail.event.event_type, "crash.test");
        }
    });
}

/// The child: ingests from many tasks until it is killed, printing each acknowledged event.
#[test]
#[ignore = "child process of acknowledged_events_survive_sigkill"]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(Path::new(&path), SqliteConfig::default()).unwrap();
        let config = IngestorConfig {
            tier_limits: TierLimits::default().with(Tier::Enterprise, u32::MAX / 2),
            worker: WorkerConfig { concurrency: 0, ..WorkerConfig::default() },
            ..IngestorConfig::default()
        };
        let ingestor = Ingestor::start(store, NoDeliverer, config);
        let (org, _key) = ingestor.create_organization("crash", Tier::Enterprise).await.unwrap();
        let org = Arc::new(org);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (ingestor, org) = (ingestor.clone(), org.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        let event = NewEvent {
                            event_type: "crash.test".into(),
                            payload: RawValue::from_string(payload(task, n)).unwrap(),
                            dedup_id: (n % 2 == 0).then(|| format!("{task}-{n}")),
                        };
                        match ingestor.ingest(&org, event).await {
                            Ok(done) => println!("ACK {} {} {task} {n}", org.id, done.id),
                            Err(triggers_core::Error::Overloaded(_)) => {
                                tokio::task::yield_now().await
                            }
                            Err(e) => panic!("ingest failed: {e}"),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}
