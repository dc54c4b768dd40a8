//! Integration tests of the SQLite store, in one binary.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod bad_input;
mod basics;
mod conformance;
mod crash;
mod queue;
mod restart;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::value::RawValue;
use tempfile::TempDir;
use triggers_core::clock::from_micros;
use triggers_core::store::{EventLog, InsertOutcome, NewEndpoint, OrgStore};
use triggers_core::{
    ApiKey, EndpointId, EventId, EventRecord, Organization, OrganizationId, Secret, Tier,
    Timestamp, TypeGlob,
};
use triggers_store_sqlite::{SqliteConfig, SqliteStore};

pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// 2026-01-01T00:00:00.123456Z plus `secs` seconds.
pub fn t(secs: i64) -> Timestamp {
    from_micros(1_767_225_600_123_456 + secs * 1_000_000)
}

/// A temporary directory and the path of a database inside it.
pub fn temp_db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("triggers.db");
    (dir, path)
}

pub fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteConfig::default()).unwrap()
}

/// A fresh store in its own temporary directory.
pub fn fresh() -> (TempDir, SqliteStore) {
    let (dir, path) = temp_db();
    (dir, open(&path))
}

pub async fn new_org(store: &SqliteStore) -> OrganizationId {
    let org = Organization::new("test", Tier::Enterprise, t(0));
    store.create_organization(&org, &ApiKey::generate().hash()).await.unwrap();
    org.id
}

pub fn record(
    event_type: &str,
    payload: &str,
    dedup_id: Option<&str>,
    now: Timestamp,
) -> EventRecord {
    EventRecord {
        id: EventId::new(),
        event_type: event_type.to_owned(),
        payload: RawValue::from_string(payload.to_owned()).unwrap(),
        dedup_id: dedup_id.map(str::to_owned),
        created_at: now,
        exclude_endpoint: None,
    }
}

pub async fn insert_one(
    store: &SqliteStore,
    org: OrganizationId,
    ty: &str,
    now: Timestamp,
) -> EventId {
    let out = store
        .insert_events(org, vec![record(ty, r#"{"n":1}"#, None, now)], WINDOW, now)
        .await
        .unwrap();
    match &out[0] {
        InsertOutcome::Inserted { meta, .. } => meta.id,
        other => panic!("expected an insert, got {other:?}"),
    }
}

pub fn new_endpoint(filter: Option<&str>, at: Timestamp) -> NewEndpoint {
    NewEndpoint {
        id: EndpointId::new(),
        url: "http://127.0.0.1:9/hook".into(),
        event_type_filter: filter.map(|f| TypeGlob::parse(f).unwrap()),
        secret: Secret::generate(),
        created_at: at,
        ordering: Default::default(),
    }
}

/// A raw connection to the database file, for inspecting or tampering with it.
pub fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}
