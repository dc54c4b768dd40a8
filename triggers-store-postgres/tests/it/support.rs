//! Fresh databases, the skip rule, fixed times and small builders.

use std::io::Write;
use std::time::Duration;

use triggers_core::domain::event::AttemptRecord;
use triggers_core::store::{
    Completion, CompletionState, Delivery, EndpointStore, NewEndpoint, OrgStore,
};
use triggers_core::{
    ApiKey, Endpoint, EndpointId, EventId, EventRecord, Organization, Secret, Tier, Timestamp,
    TypeGlob, WorkerId,
};
use triggers_store_postgres::testing::{self, TestDatabase, SKIP_VAR, URL_VAR};
use triggers_store_postgres::{PgConfig, PgStore};

/// The server URL, or `None` after printing why the test is skipped. Panics under `CI` when
/// asked to skip.
pub fn server_url(test: &str) -> Option<String> {
    if std::env::var_os(SKIP_VAR).is_none() {
        return Some(testing::server_url());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {SKIP_VAR} is set, but CI is: the PostgreSQL tests must run in CI"
    );
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {SKIP_VAR} is set");
    None
}

/// A fresh database for `test`, or `None` when skipped. Panics, saying how to start the
/// server or skip, when PostgreSQL does not answer.
pub async fn database(test: &str) -> Option<TestDatabase> {
    let url = server_url(test)?;
    match TestDatabase::create(&url).await {
        Ok(db) => Some(db),
        Err(error) => panic!(
            "{test}: cannot create a test database on {url}: {error}. Start PostgreSQL \
             (pg_ctlcluster --skip-systemctl-redirect 15 main start), point {URL_VAR} at a \
             server, or skip these tests with {SKIP_VAR}=1"
        ),
    }
}

/// Small settings for tests: few connections (many tests run at once).
pub fn config() -> PgConfig {
    PgConfig { max_connections: 4, writers: 2, ..PgConfig::default() }
}

pub async fn connect(db: &TestDatabase, config: PgConfig) -> PgStore {
    PgStore::connect_with(db.options.clone(), config).await.expect("connect to the test database")
}

/// 2026-01-01T00:00:00.123456Z plus `secs` seconds.
pub fn at(secs: i64) -> Timestamp {
    triggers_core::clock::from_micros(1_767_225_600_123_456 + secs * 1_000_000)
}

pub async fn org(store: &PgStore, name: &str) -> Organization {
    let org = Organization::new(name, Tier::Enterprise, at(0));
    store.create_organization(&org, &ApiKey::generate().hash()).await.unwrap();
    org
}

pub async fn endpoint(store: &PgStore, org: &Organization, filter: Option<&str>) -> Endpoint {
    let new = NewEndpoint {
        id: EndpointId::new(),
        url: "http://127.0.0.1:9/hook".into(),
        event_type_filter: filter.map(|f| TypeGlob::parse(f).unwrap()),
        secret: Secret::generate(),
        created_at: at(0),
        ordering: Default::default(),
    };
    store.create_endpoint(org.id, &new).await.unwrap()
}

pub fn record(event_type: &str, dedup: Option<&str>, now: Timestamp) -> EventRecord {
    EventRecord {
        id: EventId::new(),
        event_type: event_type.into(),
        payload: serde_json::value::to_raw_value(&serde_json::json!({"n": 1})).unwrap(),
        dedup_id: dedup.map(str::to_owned),
        created_at: now,
        exclude_endpoint: None,
    }
}

/// A successful attempt of `d` at `at(secs)`, completed by `owner`.
pub fn delivered(d: &Delivery, owner: WorkerId, secs: i64) -> Completion {
    Completion {
        delivery_id: d.id,
        lease_owner: owner,
        attempt: d.attempt,
        state: CompletionState::Delivered,
        record: AttemptRecord {
            endpoint_id: d.endpoint_id,
            at: at(secs),
            status_code: Some(200),
            latency_ms: 1,
            error: None,
        },
        disable_endpoint: None,
    }
}

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Polls `check` every 20 ms until it holds; panics after `limit` (a liveness bound, not a
/// speed assertion).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
