//! The outbox of endpoint announcements (`triggers_core::store::operational`).
//!
//! The write that changes an endpoint's `enabled` — a patch, or a completion that disables
//! it — records its announcement in the `announcements` table, in that write's own
//! transaction ([`record`]). Once that commits, the same call moves it into the
//! organization's stream ([`publish`]): one transaction deletes the outbox rows of the
//! endpoint and runs the batch insert statement (`insert.rs`) for them, so whoever moves a
//! row, it is inserted once. Every mover takes all of an endpoint's rows, waiting for rows
//! another mover holds, so one endpoint's announcements are inserted in the order of its
//! changes (`seq`, drawn while the change holds the endpoint), and each event gets its id
//! when it is moved, in that order.
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
//! The completer moves its announcements on its own connection, between recording a batch
//! and claiming the next, one organization per transaction (starting at a different one
//! each time), and it does not wait for locks: each is waited for at most
//! [`COMPLETER_LOCK_WAIT`] (1 ms, the least PostgreSQL takes), and no statement runs past
//! [`COMPLETER_BUDGET`] from the first move's start ([`Wait::Briefly`]; only each commit
//! may end later). An organization that keeps one of its endpoints locked (a recover, a
//! delete, a patch) so costs the completer, which every organization shares, a round trip
//! and no wait. What the completer could not move it hands to the sweep task
//! ([`Outbox::hand_over`]), which moves those endpoints' rows at once, waiting up to
//! [`HANDED_LOCK_WAIT`] for each lock itself, and while a lock still holds them, again after
//! a pause per organization (`handover.rs`: 0.25 s, doubling up to 5 s). A patch,
//! the organization's own request, waits as long as it must ([`Wait::AsNeeded`]). The
//! limits are lifted before the commit, whose notification may wait for other
//! transactions' commits.
//!
//! What a call could not move (a lock held, a connection lost after the commit, a crash)
//! stays in the outbox. Every node's sweep task ([`spawn`]) moves it: what a call of this
//! node handed over as above (only those endpoints: rows other calls are moving right now
//! are left to them; organizations never tried before those tried again), and, at start and
//! every [`SWEEP_EVERY`] after, the rows of endpoints that have one older than
//! [`SWEEP_MIN_AGE`] (younger ones are usually being moved by their own call), passing by
//! the organizations that wait for a retry. Both move one endpoint per transaction; after a
//! move of an organization failed, its other endpoints wait with it and the others are
//! moved, so one organization keeping its endpoints locked costs the task one short wait per
//! retry (the sweep: [`SWEEP_LOCK_WAIT`] per pass) and never keeps the others' rows from
//! being reached. So an announcement is never lost and never inserted twice; it reaches the
//! stream with the call that made the change, or soon after the locks it waits for are
//! released (within the organization's current pause, at most 5 s), or, after its call
//! failed otherwise, with a sweep some seconds later (at the next start, if no node is
//! running).
//!
//! Order: one endpoint's announcements enter the stream in the order of its changes. The
//! events' ids come from the moving node's clock, so with two nodes whose clocks disagree,
//! the inbox (ordered by id) may list a later change of an endpoint first, as it may any two
//! events inserted on different nodes.

use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::types::Uuid;
use sqlx::{Acquire, PgConnection, PgPool, Row};
use triggers_core::{EndpointId, EventId, EventRecord, OrganizationId};

use crate::error::is_retryable_conflict;
use crate::handover::Handed;

/// How often each node moves what is left in the outbox.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Rows younger than this are left to the call that recorded them.
pub(crate) const SWEEP_MIN_AGE: Duration = Duration::from_secs(5);

/// Longest wait for one lock when the completer moves its announcements: none to speak of
/// (PostgreSQL's least `lock_timeout`); the sweep task waits instead ([`Outbox::hand_over`]).
pub(crate) const COMPLETER_LOCK_WAIT: Duration = Duration::from_millis(1);

/// The completer moves no further organization's announcements once this has passed.
pub(crate) const COMPLETER_BUDGET: Duration = Duration::from_millis(200);

/// Longest wait for one lock when the sweep moves one endpoint's announcements.
pub(crate) const SWEEP_LOCK_WAIT: Duration = Duration::from_secs(1);

/// Endpoints one sweep pass looks at, at most.
const SWEEP_ENDPOINTS: i64 = 1_000;

/// Longest wait for one lock when the sweep task moves what a call handed over: short,
/// since it tries again (`handover.rs`) while the lock stays held.
const HANDED_LOCK_WAIT: Duration = Duration::from_millis(200);

/// SQLSTATE `lock_not_available`: `lock_timeout` expired.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// SQLSTATE `query_canceled`: `statement_timeout` expired.
const QUERY_CANCELED: &str = "57014";

const RECORD_SQL: &str = r#"
INSERT INTO announcements (id, organization_id, endpoint_id, event_type, payload, created_at)
SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                     $6::timestamptz[])
"#;

/// Takes (deletes and returns) every outbox row of the endpoints `$1`, locked in one order
/// (two movers of overlapping endpoints cannot wait for each other in a cycle). Rows another
/// mover holds are waited for (and then gone): never a newer row of an endpoint before an
/// older.
const TAKE_SQL: &str = r#"
DELETE FROM announcements WHERE id IN (
    SELECT id FROM announcements WHERE endpoint_id = ANY($1)
    ORDER BY endpoint_id, seq FOR UPDATE)
RETURNING organization_id, endpoint_id, event_type, payload, created_at, seq
"#;

/// The endpoints (with their organizations) that have a row older than `$1` seconds,
/// oldest first, at most `$2`, of no organization in `$3`.
const LEFT_SQL: &str = r#"
SELECT endpoint_id, organization_id FROM announcements
WHERE recorded_at < now() - make_interval(secs => $1) AND organization_id <> ALL($3)
GROUP BY endpoint_id, organization_id ORDER BY min(recorded_at) LIMIT $2
"#;

/// What a node's calls share with its sweep task: the stream's notification channel, and
/// the endpoints whose announcements a call could not move (`handover.rs`).
#[derive(Debug)]
pub(crate) struct Outbox {
    channel: std::sync::Arc<str>,
    wake: tokio::sync::Notify,
    handed: std::sync::Mutex<Handed>,
}

impl Outbox {
    /// The outbox of a store that notifies `channel`.
    pub(crate) fn new(channel: std::sync::Arc<str>) -> Outbox {
        Outbox {
            channel,
            wake: tokio::sync::Notify::new(),
            handed: std::sync::Mutex::new(Handed::default()),
        }
    }

    /// Has the sweep task move the announcements of `org`'s `endpoints`: at once, unless
    /// the organization waits for a retry already (`handover.rs`). A call could not move
    /// them itself.
    pub(crate) fn hand_over(&self, org: OrganizationId, endpoints: &[EndpointId]) {
        self.handed().add(org.0, endpoints.iter().map(|e| e.0));
        self.wake.notify_one();
    }

    /// The channel the store's inserts notify.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        // Every change under the lock completes before it is released.
        self.handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long moving announcements may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Each lock at most [`COMPLETER_LOCK_WAIT`], and no statement past this instant: the
    /// completer, shared by every organization.
    Briefly(std::time::Instant),
    /// The store's `statement_timeout`: a request of the organization itself.
    AsNeeded,
}

/// The limits of one move (lifted for its commit): each lock waited for at most `lock`,
/// and no statement running past `deadline`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    lock: Duration,
    deadline: Option<std::time::Instant>,
}

/// Sets the transaction's `lock_timeout` (`$1`) and, unless `$2` is null, its
/// `statement_timeout`: bound values, so one prepared statement whatever they are.
const LIMIT_SQL: &str = r#"
SELECT set_config('lock_timeout', $1, true),
       set_config('statement_timeout', coalesce($2, current_setting('statement_timeout')), true)
"#;

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

/// Moves the outbox rows of `endpoints` (all of one organization) into its stream, on
/// `conn` (not inside a transaction), waiting for locks as `wait` says; a deadlock or
/// serialization failure is run again (at most three times). What it cannot move it hands
/// to the sweep ([`Outbox::hand_over`]): the change it announces is committed either way.
pub(crate) async fn publish(
    conn: &mut PgConnection,
    org: OrganizationId,
    endpoints: &[EndpointId],
    outbox: &Outbox,
    wait: Wait,
) {
    let ids: Vec<Uuid> = endpoints.iter().map(|e| e.0).collect();
    let mut attempt = 0;
    loop {
        let limits = match wait {
            Wait::AsNeeded => None,
            Wait::Briefly(deadline) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left < Duration::from_millis(1) {
                    tracing::debug!(
                        "the completer's time for announcements is spent; the \
                        outbox sweep publishes the rest"
                    );
                    outbox.hand_over(org, endpoints);
                    return;
                }
                Some(Limits { lock: left.min(COMPLETER_LOCK_WAIT), deadline: Some(deadline) })
            }
        };
        let take = sqlx::query(TAKE_SQL).bind(&ids);
        match move_rows(conn, take, &outbox.channel, limits).await {
            Ok(_) => return,
            Err(e) if attempt < 3 && is_retryable_conflict(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            Err(e) if is_timeout(&e) => {
                tracing::debug!(error = %e, "an endpoint announcement waits for a lock or ran \
                    out of time; the outbox sweep publishes it");
                outbox.hand_over(org, endpoints);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing an endpoint announcement failed; the \
                    outbox sweep publishes it");
                outbox.hand_over(org, endpoints);
                return;
            }
        }
    }
}

/// [`publish`] on a connection of `pool`.
pub(crate) async fn publish_on(
    pool: &PgPool,
    org: OrganizationId,
    endpoints: &[EndpointId],
    outbox: &Outbox,
) {
    match pool.acquire().await {
        Ok(mut conn) => publish(&mut conn, org, endpoints, outbox, Wait::AsNeeded).await,
        Err(e) => {
            tracing::warn!(error = %e, "publishing an endpoint announcement failed; \
                the outbox sweep publishes it");
            outbox.hand_over(org, endpoints);
        }
    }
}

/// Moves the rows of the endpoints that have one older than [`SWEEP_MIN_AGE`], one endpoint
/// per transaction, of no organization in `waiting` (those the sweep task retries itself);
/// returns how many. An organization whose move fails (a lock held past
/// [`SWEEP_LOCK_WAIT`], an error) is left for the next sweep, and the others are moved.
pub(crate) async fn sweep(
    pool: &PgPool,
    channel: &str,
    waiting: Vec<Uuid>,
) -> Result<usize, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut moved = 0;
    let limits = Some(Limits { lock: SWEEP_LOCK_WAIT, deadline: None });
    // Organizations whose move failed in this sweep: their endpoints wait for the next one,
    // and the passes after it look past them (one organization keeping its endpoints locked
    // costs a sweep about a second, and never keeps the others' rows from being reached).
    let mut held: Vec<Uuid> = waiting;
    loop {
        let endpoints: Vec<(Uuid, Uuid)> = sqlx::query_as(LEFT_SQL)
            .bind(SWEEP_MIN_AGE.as_secs_f64())
            .bind(SWEEP_ENDPOINTS)
            .bind(&held)
            .fetch_all(&mut *conn)
            .await?;
        let held_before = held.len();
        for (endpoint, org) in &endpoints {
            if held.contains(org) {
                continue;
            }
            let take = sqlx::query(TAKE_SQL).bind(std::slice::from_ref(endpoint));
            match move_rows(&mut conn, take, channel, limits).await {
                Ok(n) => moved += n,
                Err(e) => {
                    held.push(*org);
                    if !is_timeout(&e) {
                        tracing::warn!(endpoint_id = %endpoint, error = %e,
                            "publishing endpoint announcements left in the outbox failed; \
                             the next sweep tries again");
                    } else {
                        tracing::debug!(endpoint_id = %endpoint, error = %e,
                            "announcements left in the outbox wait for a lock");
                    }
                }
            }
        }
        // A full pass may have left more behind, and one that held organizations back may
        // have more to find past them.
        let full = i64::try_from(endpoints.len()).unwrap_or(i64::MAX) >= SWEEP_ENDPOINTS;
        if !full && held.len() == held_before {
            return Ok(moved);
        }
        if endpoints.is_empty() {
            return Ok(moved);
        }
    }
}

/// Moves the announcements of the handed-over organizations due now, one endpoint per
/// transaction, each lock waited for at most [`HANDED_LOCK_WAIT`]. An organization whose
/// move fails waits for its retry with the endpoints not moved yet; a lost connection ends
/// the pass (what is left is due again at once, on a new connection).
async fn move_handed(pool: &PgPool, outbox: &Outbox) {
    let due = outbox.handed().due(std::time::Instant::now());
    if due.is_empty() {
        return;
    }
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "moving handed-over announcements failed");
            let now = std::time::Instant::now();
            let mut handed = outbox.handed();
            for batch in due {
                let left = batch.endpoints.clone();
                handed.failed(batch, left, now);
            }
            return;
        }
    };
    let limits = Some(Limits { lock: HANDED_LOCK_WAIT, deadline: None });
    let mut due = due.into_iter();
    while let Some(batch) = due.next() {
        for (i, endpoint) in batch.endpoints.iter().enumerate() {
            let take = sqlx::query(TAKE_SQL).bind(std::slice::from_ref(endpoint));
            let Err(e) = move_rows(&mut conn, take, &outbox.channel, limits).await else {
                continue;
            };
            let lost = !matches!(e, sqlx::Error::Database(_));
            if is_timeout(&e) {
                tracing::debug!(endpoint_id = %endpoint, error = %e,
                    "a handed-over announcement waits for a lock");
            } else {
                tracing::warn!(endpoint_id = %endpoint, error = %e,
                    "moving a handed-over announcement failed; trying again later");
            }
            let left = batch.endpoints[i..].to_vec();
            let mut handed = outbox.handed();
            handed.failed(batch, left, std::time::Instant::now());
            if lost {
                // The connection is gone: the others are due again at once, on a new one.
                for rest in due {
                    handed.add(rest.org, rest.endpoints);
                }
                return;
            }
            break;
        }
    }
}

/// Starts the sweep task, until aborted: it moves what calls hand over
/// ([`Outbox::hand_over`], `handover.rs`) when due, and every [`SWEEP_EVERY`] (the first at
/// once) sweeps the rows older than [`SWEEP_MIN_AGE`], whichever call left them, passing by
/// the organizations that wait for a retry.
pub(crate) fn spawn(pool: PgPool, outbox: std::sync::Arc<Outbox>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            move_handed(&pool, &outbox).await;
            if tokio::time::Instant::now() >= next_sweep {
                let waiting = outbox.handed().waiting();
                match sweep(&pool, &outbox.channel, waiting).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        published = n,
                        "published endpoint announcements left in the outbox"
                    ),
                    // The database is unreachable, or not migrated yet: the store says so
                    // elsewhere (its health check, its calls).
                    Err(e) => {
                        tracing::debug!(error = %e, "sweeping the announcement outbox failed");
                    }
                }
                next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
            }
            let now = std::time::Instant::now();
            let until = match outbox.handed().next_due(now) {
                Some(due) => tokio::time::Instant::from_std(due).min(next_sweep),
                None => next_sweep,
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = outbox.wake.notified() => {}
            }
        }
    })
}

/// One transaction: `take` deletes outbox rows (returning them), and they are inserted as
/// events — ids given now, in the order of the changes — fanned out and notified like any
/// batch. With `limits`, a lock not granted or a statement not done within them fails the
/// transaction ([`is_timeout`]); they are lifted for the commit. Returns how many.
async fn move_rows(
    conn: &mut PgConnection,
    take: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    channel: &str,
    limits: Option<Limits>,
) -> Result<usize, sqlx::Error> {
    let mut tx = conn.begin().await?;
    if let Some(limits) = limits {
        let lock = format!("{}ms", limits.lock.as_millis().max(1));
        let statement = limits.deadline.map(time_left);
        sqlx::query(LIMIT_SQL).bind(lock).bind(statement).execute(&mut *tx).await?;
    }
    let rows = take.fetch_all(&mut *tx).await?;
    let mut taken = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    taken.sort_by_key(|(seq, _)| *seq);
    let events: Vec<(OrganizationId, EventRecord)> = taken
        .into_iter()
        .map(|(_, (org, mut event))| {
            // Drawn in the order of the changes (`decode` leaves the nil id).
            event.id = EventId::new();
            (org, event)
        })
        .collect();
    if let Some(deadline) = limits.and_then(|l| l.deadline) {
        // What is left for the insert, not what was left for the take.
        let statement = time_left(deadline);
        sqlx::query(LIMIT_SQL)
            .bind(format!("{}ms", limits.map_or(0, |l| l.lock.as_millis()).max(1)))
            .bind(statement)
            .execute(&mut *tx)
            .await?;
    }
    crate::insert::insert_in(&mut tx, &events, channel).await?;
    if limits.is_some() {
        // The commit's notification waits for other notifying commits: not a lock to give
        // up on once the work is done.
        sqlx::query("SET LOCAL lock_timeout = 0").execute(&mut *tx).await?;
        sqlx::query("SET LOCAL statement_timeout TO DEFAULT").execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(events.len())
}

/// The time left until `deadline`, as a `statement_timeout` value (1 ms at least: `0`
/// would mean none).
fn time_left(deadline: std::time::Instant) -> String {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    format!("{}ms", left.as_millis().max(1))
}

/// Whether `e` is a wait that `lock_timeout` or `statement_timeout` ended.
fn is_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some(LOCK_NOT_AVAILABLE | QUERY_CANCELED)))
}

/// An outbox row: its place in the order of changes, and the event it announces (its id
/// given by the mover).
fn decode(
    row: &sqlx::postgres::PgRow,
) -> Result<(i64, (OrganizationId, EventRecord)), sqlx::Error> {
    let payload: String = row.try_get("payload")?;
    let payload = RawValue::from_string(payload).map_err(|e| sqlx::Error::Decode(e.into()))?;
    let event = EventRecord {
        id: EventId(Uuid::nil()),
        event_type: row.try_get("event_type")?,
        payload,
        dedup_id: None,
        created_at: row.try_get("created_at")?,
        exclude_endpoint: Some(EndpointId(row.try_get("endpoint_id")?)),
    };
    Ok((row.try_get("seq")?, (OrganizationId(row.try_get("organization_id")?), event)))
}
