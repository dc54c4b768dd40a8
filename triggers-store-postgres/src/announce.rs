//! The outbox of endpoint announcements (`triggers_core::store::operational`).
//!
//! The write that changes an endpoint's `enabled` — a patch, or a completion that disables
//! it — records its announcement in the `announcements` table, in that write's own
//! transaction ([`record`]). Once that commits, the same call moves it into the
//! organization's stream ([`publish`]): one transaction deletes the outbox row and runs the
//! batch insert statement (`insert.rs`) for it, so whoever moves it, it is inserted once.
//!
//! Why not insert it in the change's own transaction, as the other stores do: the insert
//! locks every endpoint of the organization `FOR KEY SHARE` (so that its fan-out reads one
//! consistent set), and a completion's transaction — shared with other organizations'
//! completions — already holds delivery and event rows and the disabled endpoint `FOR
//! UPDATE`. Waiting there for the organization's other endpoints closed deadlock cycles with
//! the transactions that hold one endpoint and then fail its deliveries (finishing a disable,
//! deletes, switches to parallel, patches), and one tenant could provoke them: endpoints that
//! answer 410 and patches that enable them again.
//!
//! If moving it fails (a connection lost after the commit, a crash), the row stays, and the
//! store's sweep ([`spawn`]) moves what is left at start and every [`SWEEP_EVERY`] after, on
//! every node (`FOR UPDATE SKIP LOCKED`: nodes never wait for each other's rows). So an
//! announcement is never lost and never inserted twice; it reaches the stream with the call
//! that made the change, or within seconds after a failure.

use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::types::Uuid;
use sqlx::{Acquire, PgConnection, PgPool, Row};
use triggers_core::{EndpointId, EventId, EventRecord, OrganizationId};

use crate::error::is_retryable_conflict;

/// How often each node moves what is left in the outbox.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Rows one sweep transaction moves at most.
const SWEEP_BATCH: i64 = 100;

const RECORD_SQL: &str = r#"
INSERT INTO announcements (id, organization_id, endpoint_id, event_type, payload, created_at)
SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                     $6::timestamptz[])
"#;

const COLUMNS: &str = "id, organization_id, endpoint_id, event_type, payload, created_at";

/// Records `events` (operational events, each about its `exclude_endpoint`) in the outbox,
/// inside the caller's transaction.
pub(crate) async fn record(
    tx: &mut PgConnection,
    events: &[(OrganizationId, EventRecord)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let subject = |e: &EventRecord| e.exclude_endpoint.map_or(Uuid::nil(), |id| id.0);
    sqlx::query(RECORD_SQL)
        .bind(events.iter().map(|(_, e)| e.id.0).collect::<Vec<_>>())
        .bind(events.iter().map(|(org, _)| org.0).collect::<Vec<_>>())
        .bind(events.iter().map(|(_, e)| subject(e)).collect::<Vec<_>>())
        .bind(events.iter().map(|(_, e)| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|(_, e)| e.payload.get()).collect::<Vec<_>>())
        .bind(events.iter().map(|(_, e)| e.created_at).collect::<Vec<_>>())
        .execute(tx)
        .await?;
    Ok(())
}

/// Moves the outbox rows about `endpoints` into their organizations' streams, on `conn`
/// (not inside a transaction); a deadlock or serialization failure is run again (at most
/// three times). A failure is logged and left to the sweep: the change it announces is
/// committed either way.
pub(crate) async fn publish(conn: &mut PgConnection, endpoints: &[EndpointId], channel: &str) {
    let ids: Vec<Uuid> = endpoints.iter().map(|e| e.0).collect();
    let sql = format!("DELETE FROM announcements WHERE endpoint_id = ANY($1) RETURNING {COLUMNS}");
    let mut attempt = 0;
    loop {
        let take = sqlx::query(&sql).bind(&ids);
        match move_rows(conn, take, channel).await {
            Ok(_) => return,
            Err(e) if attempt < 3 && is_retryable_conflict(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing an endpoint announcement failed; the \
                    outbox sweep publishes it within seconds");
                return;
            }
        }
    }
}

/// [`publish`] on a connection of `pool`.
pub(crate) async fn publish_on(pool: &PgPool, endpoints: &[EndpointId], channel: &str) {
    match pool.acquire().await {
        Ok(mut conn) => publish(&mut conn, endpoints, channel).await,
        Err(e) => tracing::warn!(error = %e, "publishing an endpoint announcement failed; \
            the outbox sweep publishes it within seconds"),
    }
}

/// Moves every outbox row no other node is moving, oldest first; returns how many.
pub(crate) async fn sweep(pool: &PgPool, channel: &str) -> Result<usize, sqlx::Error> {
    let sql = format!(
        "DELETE FROM announcements WHERE id IN (
             SELECT id FROM announcements ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    );
    let mut conn = pool.acquire().await?;
    let mut moved = 0;
    loop {
        let n = move_rows(&mut conn, sqlx::query(&sql).bind(SWEEP_BATCH), channel).await?;
        moved += n;
        if i64::try_from(n).unwrap_or(i64::MAX) < SWEEP_BATCH {
            return Ok(moved);
        }
    }
}

/// Starts the sweep: at once, then every [`SWEEP_EVERY`], until aborted.
pub(crate) fn spawn(pool: PgPool, channel: std::sync::Arc<str>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sweep(&pool, &channel).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    published = n,
                    "published endpoint announcements left \
                    in the outbox"
                ),
                Err(e) => tracing::debug!(error = %e, "sweeping the announcement outbox failed"),
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    })
}

/// One transaction: `take` deletes outbox rows (returning them), and they are inserted as
/// events, fanned out and notified like any batch. Returns how many.
async fn move_rows(
    conn: &mut PgConnection,
    take: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    channel: &str,
) -> Result<usize, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let rows = take.fetch_all(&mut *tx).await?;
    let events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    crate::insert::insert_in(&mut tx, &events, channel).await?;
    tx.commit().await?;
    Ok(events.len())
}

/// An outbox row as the event it announces.
fn decode(row: &sqlx::postgres::PgRow) -> Result<(OrganizationId, EventRecord), sqlx::Error> {
    let payload: String = row.try_get("payload")?;
    let payload = RawValue::from_string(payload).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let event = EventRecord {
        id: EventId(row.try_get("id")?),
        event_type: row.try_get("event_type")?,
        payload,
        dedup_id: None,
        created_at: row.try_get("created_at")?,
        exclude_endpoint: Some(EndpointId(row.try_get("endpoint_id")?)),
    };
    Ok((OrganizationId(row.try_get("organization_id")?), event))
}
