//! The database goes away under load and comes back: calls fail with `Unavailable` while it
//! is away, the store recovers by itself, nothing acknowledged is lost, and the listener
//! reconnects.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;

use triggers_core::store::{DeliveryQueue, EventLog, OrgStore, StoreError};
use triggers_core::{EventId, OrganizationId};
use triggers_store_postgres::{testing::TestDatabase, PgConfig, PgStore};

use crate::proxy::Proxy;
use crate::support::{self, at, DAY};

/// Inserts 5-event batches from 8 tasks, `rounds` each or until `stop`; returns the ids of acknowledged
/// events, panicking on any error other than `Unavailable`.
async fn load(
    store: PgStore,
    org: OrganizationId,
    stop: Arc<AtomicBool>,
    rounds: usize,
) -> (Vec<EventId>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let (store, stop) = (store.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0);
            for round in 0..rounds {
                let batch: Vec<_> = (0..5)
                    .map(|i| {
                        let key = format!("{task}-{round}-{i}");
                        support::record("load", Some(&key), at(1))
                    })
                    .collect();
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match store.insert_events(org, batch, DAY, at(1)).await {
                    Ok(outcomes) => acked.extend(outcomes.iter().map(|o| o.meta().id)),
                    Err(StoreError::Unavailable(_)) => failed += 1,
                    Err(e) => panic!("only Unavailable may fail an insert: {e:?}"),
                }
            }
            (acked, failed)
        });
    }
    let (mut acked, mut failed) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (a, f) = done.unwrap();
        acked.extend(a);
        failed += f;
    }
    (acked, failed)
}

async fn assert_all_present(store: &PgStore, org: OrganizationId, ids: &[EventId]) {
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every acknowledged event has its own id");
    for id in ids {
        assert!(store.event(org, *id).await.unwrap().is_some(), "acknowledged {id} is stored");
    }
}

async fn terminate_backends(db: &TestDatabase) -> i64 {
    let mut admin = db.admin().await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    killed.into_iter().filter(|k| *k).count() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_survived_and_nothing_acknowledged_is_lost() {
    let Some(db) = support::database("terminated_connections").await else { return };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    support::endpoint(&store, &org, None).await;
    support::eventually("listening", Duration::from_secs(30), || async {
        store.listener_connects() > 0
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(store.clone(), org.id, stop.clone(), 40));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        terminate_backends(&db).await;
    }
    let (acked, _failed) = loader.await.unwrap();
    assert!(!acked.is_empty());

    // Afterwards everything works again, by itself.
    store.ping().await.unwrap();
    let more = store.insert_events(org.id, vec![support::record("t", None, at(2))], DAY, at(2));
    more.await.unwrap();
    assert_all_present(&store, org.id, &acked).await;
    let claimed = store
        .claim(triggers_core::store::ClaimRequest::new(
            triggers_core::WorkerId::new(),
            10,
            Duration::from_secs(30),
            at(3),
        ))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);

    // The listener lost its connection too, reconnected, and hears NOTIFYs again.
    let connects = store.listener_connects();
    terminate_backends(&db).await;
    support::eventually("the listener reconnects", Duration::from_secs(30), || async {
        store.listener_connects() > connects
    })
    .await;
    let heard = store.notifications_received();
    let admin = sqlx::PgPool::connect_with(db.options.clone()).await.unwrap();
    support::eventually("a NOTIFY after the termination is heard", Duration::from_secs(30), || {
        let admin = admin.clone();
        let store = &store;
        async move {
            sqlx::query("SELECT pg_notify('triggers_deliveries', '')")
                .execute(&admin)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            store.notifications_received() > heard
        }
    })
    .await;
    admin.close().await;
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_unavailable_and_recovered_from() {
    let Some(db) = support::database("lost_database").await else { return };
    let target: SocketAddr = {
        let host = db.options.get_host().to_owned();
        let host = if host == "localhost" { "127.0.0.1".to_owned() } else { host };
        format!("{host}:{}", db.options.get_port()).parse().unwrap()
    };
    let proxy = Proxy::start(target).await;
    let config = PgConfig { acquire_timeout: Duration::from_secs(1), ..support::config() };
    let options = db.options.clone().host("127.0.0.1").port(proxy.addr.port());
    let store = PgStore::connect_with(options, config).await.unwrap();
    let org = support::org(&store, "acme").await;
    support::endpoint(&store, &org, None).await;
    support::eventually("listening", Duration::from_secs(30), || async {
        store.listener_connects() > 0
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(store.clone(), org.id, stop.clone(), 1_000_000));
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    // While it is away, calls fail with Unavailable (inserts included: the load checks).
    for _ in 0..2 {
        let err = store.ping().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = store
            .insert_events(org.id, vec![support::record("t", None, at(2))], DAY, at(2))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
    let connects = store.listener_connects();
    proxy.restore();
    support::eventually("the store serves again", Duration::from_secs(30), || async {
        store.ping().await.is_ok()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = loader.await.unwrap();
    assert!(failed > 0, "some inserts failed during the outage");
    assert!(!acked.is_empty());
    assert_all_present(&store, org.id, &acked).await;
    store.insert_events(org.id, vec![support::record("t", None, at(3))], DAY, at(3)).await.unwrap();
    support::eventually("the listener is back", Duration::from_secs(30), || async {
        store.listener_connects() > connects
    })
    .await;
    drop((store, proxy));
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_keep_their_cause() {
    let Some(db) = support::database("connect_failures").await else { return };
    let config = PgConfig { acquire_timeout: Duration::from_secs(1), ..support::config() };

    // Nothing listens: "connection refused", not "pool timed out".
    let target: SocketAddr = format!("127.0.0.1:{}", db.options.get_port()).parse().unwrap();
    let proxy = Proxy::start(target).await;
    proxy.refuse().await;
    let options = db.options.clone().host("127.0.0.1").port(proxy.addr.port());
    let err = PgStore::connect_with(options, config.clone()).await.unwrap_err();
    let StoreError::Unavailable(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{}", proxy.addr.port())), "{message}");

    // A database that does not exist is named as such, as Unavailable (not a raw dump).
    let options = db.options.clone().database("triggers_no_such_database");
    let err = PgStore::connect_with(options, config).await.unwrap_err();
    let StoreError::Unavailable(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("\"triggers_no_such_database\" does not exist"), "{message}");
    drop(proxy);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_without_its_database_becomes_ready_when_it_is_reached() {
    let Some(db) = support::database("start_unreachable").await else { return };
    let target: SocketAddr = format!("127.0.0.1:{}", db.options.get_port()).parse().unwrap();
    let proxy = Proxy::start(target).await;
    proxy.refuse().await;
    let config = PgConfig {
        acquire_timeout: Duration::from_secs(1),
        start_unreachable: true,
        ..support::config()
    };
    let options = db.options.clone().host("127.0.0.1").port(proxy.addr.port());
    let store = PgStore::connect_with(options, config).await.unwrap();
    // Not ready, saying why; calls fail with Unavailable.
    let err = store.ping().await.unwrap_err();
    let StoreError::Unavailable(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("connection refused"), "{message}");
    let err = store.organization(OrganizationId::new()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    // The database appears (a fresh one: the store migrates it) and the store is ready.
    proxy.restore();
    support::eventually("ready once the database is reached", Duration::from_secs(30), || async {
        store.ping().await.is_ok()
    })
    .await;
    let org = support::org(&store, "late").await;
    let out = store
        .insert_events(org.id, vec![support::record("t", None, at(1))], DAY, at(1))
        .await
        .unwrap();
    assert!(store.event(org.id, out[0].meta().id).await.unwrap().is_some());

    // Errors the database itself sends still refuse to start.
    let config = PgConfig { start_unreachable: true, ..support::config() };
    let options = db.options.clone().database("triggers_no_such_database");
    let err = PgStore::connect_with(options, config).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(ref m) if m.contains("does not exist")),
        "{err:?}"
    );
    drop((store, proxy));
    db.drop_database().await.unwrap();
}
