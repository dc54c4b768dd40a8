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
//! the live rows: the share keeps a large backlog (whose indexes each vacuum reads in full)
//! from being vacuumed every turn.
//! `SKIP_LOCKED`: when autovacuum or another node is already at it, this turn is skipped.
//! A vacuum blocks no reads or writes, and runs without the store's `statement_timeout`
//! (cancelled half-way, it would start over at the next turn). After a failure the task
//! waits twice as long before the next turn, up to a minute.
//!
//! Only the table's owner (or a superuser) may vacuum it. A store whose role is not (the
//! migrations ran under another role) ends the task at its first turn and leaves the table
//! to autovacuum, instead of drawing PostgreSQL's "skipping" warning every second.

use std::time::Duration;

use sqlx::{Executor, PgConnection, PgPool};

/// Dead row versions below which `deliveries` is never vacuumed by this task.
pub(crate) const DEAD_MIN: i64 = 2_000;

/// The longest pause after failures.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Starts the task; it runs until aborted (or finds it may not vacuum the table).
pub(crate) fn spawn(pool: PgPool, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = every;
        let mut owner_checked = false;
        let mut failing = false;
        loop {
            tokio::time::sleep(pause).await;
            if !owner_checked {
                match may_vacuum(&pool).await {
                    Ok(true) => {
                        owner_checked = true;
                        pause = every;
                    }
                    Ok(false) => {
                        tracing::info!(
                            "this role does not own the deliveries table: vacuuming it is left to autovacuum"
                        );
                        return;
                    }
                    // Not reachable or not migrated yet (`PgConfig::start_unreachable`).
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot look at the deliveries table yet");
                        pause = (pause * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            match vacuum_if_needed(&pool).await {
                Ok(_) => {
                    if failing {
                        tracing::info!("vacuuming the delivery queue works again");
                    }
                    failing = false;
                    pause = every;
                }
                // Logged once per run of failures (the database away, say): the queue only
                // gets slower meanwhile, and every other call reports the cause.
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "vacuuming the delivery queue failed");
                    }
                    failing = true;
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
            }
        }
    })
}

/// Whether this store's role may vacuum `deliveries` (owns it, by membership, or is a
/// superuser).
async fn may_vacuum(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE')
         FROM pg_class c WHERE c.oid = 'deliveries'::regclass",
    )
    .fetch_one(pool)
    .await
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
    let mut conn = pool.acquire().await?;
    let vacuumed = without_timeout(&mut conn).await;
    // Back to the connection's own timeout, whatever the vacuum did; a connection that
    // cannot be reset is not returned to the pool.
    if let Err(e) = conn.execute("RESET statement_timeout").await {
        conn.detach();
        return Err(e);
    }
    vacuumed?;
    Ok(true)
}

/// The vacuum itself, without a statement timeout. Sent as plain text, each statement runs
/// on its own, outside any transaction (where `VACUUM` refuses to run).
async fn without_timeout(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    conn.execute("SET statement_timeout = 0").await?;
    conn.execute("VACUUM (SKIP_LOCKED) deliveries").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::{Connection, PgConnection};

    use crate::testing;
    use crate::PgConfig;

    /// Deliveries finished by the thousand leave dead row versions; the store vacuums them
    /// away by itself, long before autovacuum's next visit.
    #[tokio::test]
    async fn a_churned_queue_is_vacuumed_by_the_store() {
        let config =
            PgConfig { vacuum_interval: Some(Duration::from_millis(50)), ..Default::default() };
        let Some((db, store)) = testing::fresh_store(config).await else { return };
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

    /// A role that does not own the table may not vacuum it: the task ends at once instead
    /// of asking PostgreSQL every second.
    #[tokio::test]
    async fn a_role_that_does_not_own_the_queue_leaves_it_to_autovacuum() {
        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let role = format!("{}_guest", db.name);
        let mut admin = db.admin().await.unwrap();
        sqlx::query(&format!("CREATE ROLE {role} LOGIN")).execute(&mut admin).await.unwrap();
        let guest = sqlx::PgPool::connect_with(db.options.clone().username(&role)).await.unwrap();

        assert!(super::may_vacuum(store.pool()).await.unwrap(), "the owner may");
        assert!(!super::may_vacuum(&guest).await.unwrap(), "a guest may not");
        let task = super::spawn(guest.clone(), Duration::from_millis(10));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends by itself")
            .unwrap();

        guest.close().await;
        drop(store);
        db.drop_database().await.unwrap();
        sqlx::query(&format!("DROP ROLE {role}")).execute(&mut admin).await.unwrap();
    }
}
