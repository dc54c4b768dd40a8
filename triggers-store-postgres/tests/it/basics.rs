//! Connecting, migrations, error classification and cross-node wake-ups.

use std::time::Duration;

use triggers_core::store::{DeliveryQueue, EventLog, InsertOutcome, OrgStore, StoreError};
use triggers_store_postgres::{PgConfig, PgStore};

use crate::support::{self, at, DAY};

#[tokio::test]
async fn malformed_urls_are_invalid_input_and_unreachable_servers_unavailable() {
    let err = PgStore::connect("mysql://nope", PgConfig::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    // Port 1 on loopback: nothing listens there.
    let config = PgConfig { acquire_timeout: Duration::from_secs(2), ..PgConfig::default() };
    let err =
        PgStore::connect("postgres://postgres@127.0.0.1:1/postgres", config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let Some(db) = support::database("nodes_starting_together_migrate_once").await else {
        return;
    };
    let (a, b) = tokio::join!(
        PgStore::connect_with(db.options.clone(), support::config()),
        PgStore::connect_with(db.options.clone(), support::config()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(applied, triggers_store_postgres::MIGRATOR.iter().count() as i64);
    a.ping().await.unwrap();
    b.ping().await.unwrap();
    drop((a, b));
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_surfaces_as_unavailable() {
    let Some(db) = support::database("statement_timeout_surfaces_as_unavailable").await else {
        return;
    };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    let short = PgConfig {
        statement_timeout: Some(Duration::from_millis(100)),
        migrate: false,
        listen: false,
        ..support::config()
    };
    let impatient = support::connect(&db, short).await;
    // Another session holds a lock the query needs, so it can only time out.
    let mut blocker = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let err = impatient.organization(org.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert_eq!(impatient.organization(org.id).await.unwrap(), Some(org));
    drop((store, impatient, blocker));
    db.drop_database().await.unwrap();
}

/// The store's statements are never JIT-compiled unless asked for: compiling a claim took
/// ≈ 100 ms once its estimated cost passed `jit_above_cost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_turn_jit_off_unless_asked() {
    let Some(db) = support::database("connections_turn_jit_off").await else { return };
    // JIT on for this database whatever the server's default, so that both answers below
    // come from the store's own setting.
    let mut plain = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{}\" SET jit = on", db.name))
        .execute(&mut plain)
        .await
        .unwrap();
    let jit = |store: PgStore| async move {
        let on: String = sqlx::query_scalar("SHOW jit").fetch_one(store.pool()).await.unwrap();
        on
    };
    assert_eq!(jit(support::connect(&db, support::config()).await).await, "off");
    let asked = PgConfig { jit: true, migrate: false, listen: false, ..support::config() };
    assert_eq!(jit(support::connect(&db, asked).await).await, "on");
    drop(plain);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_with_deliveries_wake_other_nodes() {
    let Some(db) = support::database("inserts_with_deliveries_wake_other_nodes").await else {
        return;
    };
    let a = support::connect(&db, support::config()).await;
    let b = support::connect(&db, support::config()).await;
    let wake = b.wakeups().expect("the listener is on by default");
    support::eventually("b listens", Duration::from_secs(30), || async {
        b.listener_connects() > 0
    })
    .await;
    let org = support::org(&a, "acme").await;
    let before = b.notifications_received();

    // No endpoint: no delivery, so no NOTIFY.
    let out = a.insert_events(org.id, vec![support::record("t", None, at(1))], DAY, at(1));
    assert!(matches!(&out.await.unwrap()[0], InsertOutcome::Inserted { deliveries: 0, .. }));

    support::endpoint(&a, &org, None).await;
    let notified = wake.notified();
    let batch = (0..20).map(|_| support::record("t", None, at(2))).collect();
    let out = a.insert_events(org.id, batch, DAY, at(2)).await.unwrap();
    assert!(out.iter().all(|o| matches!(o, InsertOutcome::Inserted { deliveries: 1, .. })));
    tokio::time::timeout(Duration::from_secs(30), notified).await.expect("b was woken");
    support::eventually("b heard the NOTIFY", Duration::from_secs(30), || async {
        b.notifications_received() > before
    })
    .await;
    drop((a, b));
    db.drop_database().await.unwrap();
}

use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_request_in_a_batch_fails_alone() {
    let Some(db) = support::database("one_bad_request_in_a_batch").await else { return };
    // One writer, held in its first batch (an insert waiting for a lock on `events`), so
    // that the requests below queue behind it and form its next batch.
    let config = PgConfig { writers: 1, ..support::config() };
    let store = support::connect(&db, config).await;
    let org = support::org(&store, "acme").await;
    let mut side = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut side).await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut side).await.unwrap();
    let blocker = {
        let store = store.clone();
        let first = vec![support::record("t", None, at(1))];
        tokio::spawn(async move { store.insert_events(org.id, first, DAY, at(1)).await })
    };
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND datname = current_database()";
    let mut held = false;
    for _ in 0..300 {
        let n: i64 = sqlx::query_scalar(waiting).fetch_one(&mut side).await.unwrap();
        held = n > 0;
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held, "the first insert never waited for the lock: the batch below is not pinned");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        calls.spawn(async move {
            // PostgreSQL text cannot hold NUL: the store gets it only because this test skips
            // the Ingestor's validation.
            let dedup = if i == 7 { "bad\0id".to_owned() } else { format!("ok-{i}") };
            let out = store
                .insert_events(org.id, vec![support::record("t", Some(&dedup), at(1))], DAY, at(1))
                .await;
            (i, out)
        });
    }
    // Time for the calls to queue (the assertions below hold however they are batched).
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut side).await.unwrap();
    assert!(matches!(&blocker.await.unwrap().unwrap()[0], InsertOutcome::Inserted { .. }));
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            (7, out) => assert!(matches!(out, Err(StoreError::InvalidInput(_))), "{out:?}"),
            (_, out) => {
                assert!(matches!(&out.unwrap()[0], InsertOutcome::Inserted { .. }));
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 19);
    drop(store);
    db.drop_database().await.unwrap();
}

/// A batch runs as if none of its event ids were stored. One that is stored — an earlier
/// run of the batch committed it before its answer was lost — makes the statement fail, and
/// the batch runs again without it: the stored event is not inserted or fanned out twice,
/// it is answered as inserted, and the rest of the batch goes in.
#[tokio::test]
async fn a_batch_with_an_event_id_already_stored_runs_again_and_writes_each_event_once() {
    let Some(db) = support::database("batch_with_a_stored_event_id").await else { return };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    support::endpoint(&store, &org, None).await;
    let stored = support::record("t", None, at(1));
    let first = store.insert_events(org.id, vec![stored.clone()], DAY, at(1)).await.unwrap();
    assert!(matches!(first[0], InsertOutcome::Inserted { deliveries: 1, .. }), "{first:?}");

    let fresh = support::record("t", Some("fresh"), at(2));
    let again =
        store.insert_events(org.id, vec![stored.clone(), fresh.clone()], DAY, at(2)).await.unwrap();
    for (outcome, record) in again.iter().zip([&stored, &fresh]) {
        match outcome {
            InsertOutcome::Inserted { meta, deliveries: 1 } => assert_eq!(meta.id, record.id),
            other => panic!("expected an insert with one delivery, got {other:?}"),
        }
    }
    let mut conn = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    for record in [&stored, &fresh] {
        let (events, deliveries): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE id = $1),
                    (SELECT count(*) FROM deliveries WHERE event_id = $1)",
        )
        .bind(record.id.0)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!((events, deliveries), (1, 1), "event {}", record.id);
    }
    conn.close().await.unwrap();
    drop(store);
    db.drop_database().await.unwrap();
}

/// A history cursor is opaque, but a client can craft one: a time PostgreSQL cannot hold
/// (before 4713 BC) used to reach the database and come back as a store error (HTTP 500,
/// an error line per request). A well-formed cursor's time is taken as the nearest end of
/// 1970 – 9999: before it lists nothing, after it everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_history_cursor_is_invalid_input_not_a_store_error() {
    use base64::Engine as _;
    use triggers_core::{AttemptsQuery, Ingestor, IngestorConfig, NoDeliverer, Tier};
    let Some(db) = support::database("crafted_history_cursor").await else { return };
    let store = support::connect(&db, support::config()).await;
    let config = IngestorConfig {
        worker: triggers_core::WorkerConfig { concurrency: 0, ..Default::default() },
        ..IngestorConfig::default()
    };
    let ing = Ingestor::start(store, NoDeliverer, config);
    let (org, _) = ing.create_organization("acme", Tier::Free).await.unwrap();
    let ep = ing.create_endpoint(&org, "https://hooks.example.test/a", None).await.unwrap();
    for micros in [-1_000_000_000_000_000_000_i64, i64::MAX] {
        let mut bytes = vec![b'a'];
        bytes.extend_from_slice(&micros.to_be_bytes());
        bytes.extend_from_slice(&7_u64.to_be_bytes());
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let query = AttemptsQuery { cursor: Some(cursor), ..AttemptsQuery::default() };
        let page = ing.endpoint_attempts(&org, ep.id, query).await;
        assert!(page.is_ok_and(|p| p.attempts.is_empty()), "{micros}");
    }
    ing.shutdown().await;
    db.drop_database().await.unwrap();
}

/// The pending-event count: statement triggers record deltas, the fold task moves them into
/// the counters, and the count stays exact throughout; the migration counts what a database
/// already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counts_are_folded_and_counted_by_the_migration() {
    let Some(db) = support::database("pending_counts_are_folded").await else { return };
    let store = support::connect(&db, support::config()).await;
    let (org, other) = (support::org(&store, "acme").await, support::org(&store, "other").await);
    let records = (0..5).map(|_| support::record("inbox", None, at(1))).collect();
    let ids: Vec<_> = store
        .insert_events(org.id, records, DAY, at(1))
        .await
        .unwrap()
        .iter()
        .map(|o| match o {
            InsertOutcome::Inserted { meta, .. } => meta.id,
            InsertOutcome::Duplicate(_) => panic!("no dedup ids"),
        })
        .collect();
    store
        .insert_events(other.id, vec![support::record("x", None, at(1))], DAY, at(1))
        .await
        .unwrap();
    store.ack(org.id, &ids[..2], at(2)).await.unwrap();
    assert_eq!(store.pending_events(org.id).await.unwrap(), 3);
    let deltas = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pending_deltas")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    support::eventually("the deltas are folded", Duration::from_secs(30), || async {
        deltas().await == 0
    })
    .await;
    let folded: i64 = sqlx::query_scalar("SELECT n FROM pending_counts WHERE organization_id = $1")
        .bind(org.id.0)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(folded, 3);
    assert_eq!(store.pending_events(org.id).await.unwrap(), 3);
    assert_eq!(store.pending_events(other.id).await.unwrap(), 1);

    // A database migrated before the counters: the migrations count its pending events.
    drop(store);
    let mut admin = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE pending_counts, pending_deltas CASCADE;
         DROP TRIGGER events_pending_changed ON events;
         DROP TRIGGER events_pending_deleted ON events;
         DROP FUNCTION triggers_pending_changed, triggers_pending_deleted;
         DELETE FROM _sqlx_migrations WHERE version >= 20261208000012;",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let store = support::connect(&db, support::config()).await;
    assert_eq!(store.pending_events(org.id).await.unwrap(), 3);
    assert_eq!(store.pending_events(other.id).await.unwrap(), 1);
    store.ack(org.id, &ids[2..3], at(3)).await.unwrap();
    assert_eq!(store.pending_events(org.id).await.unwrap(), 2);

    // Stopped between the two: the triggers record writes, nothing is counted yet. The
    // count sees those writes, so the deltas they left are not added on top.
    drop(store);
    sqlx::raw_sql(
        "DELETE FROM pending_counts;
         DELETE FROM _sqlx_migrations WHERE version = 20261208000013;",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("UPDATE events SET status = 'delivered' WHERE id = $1")
        .bind(ids[3].0)
        .execute(&mut admin)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_deltas")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(left >= 1, "the trigger recorded the change");
    let store = support::connect(&db, support::config()).await;
    assert_eq!(store.pending_events(org.id).await.unwrap(), 1);
    assert_eq!(store.pending_events(other.id).await.unwrap(), 1);
    drop((store, admin));
    db.drop_database().await.unwrap();
}
