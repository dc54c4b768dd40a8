//! Races the database decides: a dedup id held by an uncommitted transaction, and a full
//! intake queue.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use triggers_core::store::{EventLog, InsertOutcome, StoreError};
use triggers_core::{EventId, OrganizationId};
use triggers_store_postgres::{testing::TestDatabase, PgConfig, PgStore};

use crate::support::{self, at, DAY};

/// Opens a transaction that inserts the dedup row `key` for `org` and leaves it uncommitted.
async fn hold_dedup(db: &TestDatabase, org: OrganizationId, key: &str) -> (PgConnection, EventId) {
    let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
    let id = EventId::new();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query(
        "INSERT INTO dedup (organization_id, dedup_id, event_id, event_type, created_at)
         VALUES ($1, $2, $3, 'other.type', $4)",
    )
    .bind(org.0)
    .bind(key)
    .bind(id.0)
    .bind(at(0))
    .execute(&mut conn)
    .await
    .unwrap();
    (conn, id)
}

/// Waits until some session of `store` waits for a lock.
async fn writer_blocked(store: &PgStore) {
    support::eventually("the writer waits for the lock", Duration::from_secs(30), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        waiting > 0
    })
    .await;
}

fn one_writer() -> PgConfig {
    PgConfig {
        writers: 1,
        channel_capacity: 1,
        batch_max_wait: Duration::ZERO,
        ..support::config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_id_held_by_an_uncommitted_winner_is_its_once_it_commits() {
    let Some(db) = support::database("dedup_uncommitted_winner_commits").await else { return };
    let store = support::connect(&db, one_writer()).await;
    let org = support::org(&store, "acme").await;
    let (mut holder, winner) = hold_dedup(&db, org.id, "k").await;

    let s = store.clone();
    let insert = tokio::spawn(async move {
        s.insert_events(org.id, vec![support::record("t", Some("k"), at(1))], DAY, at(1)).await
    });
    writer_blocked(&store).await;
    // The winner's event row, then its commit.
    sqlx::query(
        "INSERT INTO events (id, organization_id, event_type, payload, status, created_at)
         VALUES ($1, $2, 'other.type', '{}', 'pending', $3)",
    )
    .bind(winner.0)
    .bind(org.id.0)
    .bind(at(0))
    .execute(&mut holder)
    .await
    .unwrap();
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    let out = insert.await.unwrap().unwrap();
    match &out[0] {
        InsertOutcome::Duplicate(meta) => {
            assert_eq!(meta.id, winner);
            assert_eq!(meta.event_type, "other.type");
            assert_eq!(meta.created_at, at(0));
        }
        other => panic!("expected a duplicate of the committed winner, got {other:?}"),
    }
    drop(store);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_id_held_by_a_transaction_that_aborts_is_taken() {
    let Some(db) = support::database("dedup_uncommitted_winner_aborts").await else { return };
    let store = support::connect(&db, one_writer()).await;
    let org = support::org(&store, "acme").await;
    let (mut holder, _) = hold_dedup(&db, org.id, "k").await;

    let s = store.clone();
    let record = support::record("t", Some("k"), at(1));
    let mine = record.id;
    let insert =
        tokio::spawn(async move { s.insert_events(org.id, vec![record], DAY, at(1)).await });
    writer_blocked(&store).await;

    // The only writer is stuck: the first request fills the queue (capacity 1), the second
    // is refused at once. (A zero timeout polls the call once: far enough to enqueue it.)
    let probe = || store.insert_events(org.id, vec![support::record("t", None, at(1))], DAY, at(1));
    assert!(tokio::time::timeout(Duration::ZERO, probe()).await.is_err(), "queued, waiting");
    let refused = tokio::time::timeout(Duration::ZERO, probe()).await;
    assert!(matches!(refused, Ok(Err(StoreError::Overloaded(_)))), "{refused:?}");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let out = insert.await.unwrap().unwrap();
    assert!(
        matches!(&out[0], InsertOutcome::Inserted { meta, .. } if meta.id == mine),
        "the aborted holder leaves the id to us: {out:?}"
    );
    // The store keeps serving.
    let after = store.insert_events(org.id, vec![support::record("t", None, at(2))], DAY, at(2));
    assert!(matches!(&after.await.unwrap()[0], InsertOutcome::Inserted { .. }));
    drop(store);
    db.drop_database().await.unwrap();
}
