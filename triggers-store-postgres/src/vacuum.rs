//! Keeping the delivery queue's table small: a task that vacuums `deliveries` as soon as
//! its dead row versions outnumber what a claim can afford to step over.
//!
//! Every delivery leaves dead row versions behind (the claim rewrites its row, the
//! completion deletes it), and their index entries stay until a vacuum removes them. The
//! claim's first look at each endpoint (`deliveries_endpoint_due`, earliest due first) steps
//! over every dead entry due before the endpoint's first live one — in a busy queue, nearly
//! all of them. Autovacuum visits a database at most once per `autovacuum_naptime` (a minute
//! by default), and meanwhile claims got slower with every delivery: end to end, 1 700 and
//! then ≈ 600 deliveries a second on a database reused after a few runs, where a claim read
//! ≈ 2 500 index pages (BENCHMARKS.md, "Issue #17, third sitting").
//!
//! So the store looks at the table's statistics every
//! [`PgConfig::vacuum_interval`](crate::PgConfig::vacuum_interval) and runs `VACUUM
//! (SKIP_LOCKED) deliveries` once the dead row versions exceed [`DEAD_MIN`] plus a fifth of
//! the live rows: the share keeps a
//! large backlog (whose indexes each vacuum reads in full) from being vacuumed every turn.
//! `SKIP_LOCKED`: when autovacuum or another node is already at it, this turn is skipped.
//! A vacuum blocks no reads or writes. A role that does not own the table makes the vacuum
//! a no-op (PostgreSQL skips it with a warning); autovacuum still works then.

use std::time::Duration;

use sqlx::PgPool;

/// Dead row versions below which `deliveries` is never vacuumed by this task.
pub(crate) const DEAD_MIN: i64 = 2_000;

/// Starts the task; it runs until aborted.
pub(crate) fn spawn(pool: PgPool, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            match vacuum_if_needed(&pool).await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("vacuuming the delivery queue works again");
                }
                Ok(_) => {}
                // Once per run of failures (the database away, a statement timeout): the
                // queue only gets slower meanwhile, and every other call reports the cause.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "vacuuming the delivery queue failed");
                }
                Err(_) => {}
            }
        }
    })
}

/// Vacuums `deliveries` if its dead row versions call for it; whether it did.
pub(crate) async fn vacuum_if_needed(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let (dead, live): (i64, i64) = sqlx::query_as(
        "SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables
         WHERE relid = 'deliveries'::regclass",
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or((0, 0));
    if dead < DEAD_MIN + live / 5 {
        return Ok(false);
    }
    tracing::debug!(dead, live, "vacuuming deliveries");
    sqlx::raw_sql("VACUUM (SKIP_LOCKED) deliveries").execute(pool).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::{Connection, PgConnection};

    use crate::testing::{self, TestDatabase, SKIP_VAR};
    use crate::{PgConfig, PgStore};

    /// Deliveries finished by the thousand leave dead row versions; the store vacuums them
    /// away by itself, long before autovacuum's next visit.
    #[tokio::test]
    async fn a_churned_queue_is_vacuumed_by_the_store() {
        if std::env::var_os(SKIP_VAR).is_some() {
            assert!(std::env::var_os("CI").is_none(), "{SKIP_VAR} is set, but CI is");
            return;
        }
        let db = TestDatabase::create(&testing::server_url()).await.expect("a test database");
        let config =
            PgConfig { vacuum_interval: Some(Duration::from_millis(50)), ..Default::default() };
        let store = PgStore::connect_with(db.options.clone(), config).await.unwrap();
        assert!(!super::vacuum_if_needed(store.pool()).await.unwrap(), "nothing to vacuum yet");

        // 5 000 deliveries queued and finished; the connection's end reports its statistics.
        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        sqlx::query(
            "INSERT INTO deliveries (id, event_id, organization_id, endpoint_id, state,
                                     next_attempt_at, due_at)
             SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(),
                    'pending', now(), now()
             FROM generate_series(1, 5000)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query("DELETE FROM deliveries").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();

        let started = Instant::now();
        loop {
            let (vacuums, dead): (i64, i64) = sqlx::query_as(
                "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables
                 WHERE relid = 'deliveries'::regclass",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            if vacuums > 0 && dead < super::DEAD_MIN {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "not vacuumed: {dead} dead");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(store);
        db.drop_database().await.unwrap();
    }
}
