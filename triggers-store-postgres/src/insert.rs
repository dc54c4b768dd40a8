//! Writing one group-commit batch of insert requests.
//!
//! A batch is written by **one statement** (so it commits atomically, in autocommit mode)
//! that takes every event as arrays and
//! 1. claims the dedup ids: `INSERT INTO dedup … SELECT FROM UNNEST(…) ORDER BY key
//!    ON CONFLICT DO NOTHING RETURNING …` (sorted, so concurrent batches lock keys in one
//!    order and cannot deadlock each other);
//! 2. inserts the events that have no dedup id or won theirs (event ids are assigned before
//!    the batch; a batch runs as if none of them were stored — without a conflict clause
//!    PostgreSQL inserts them directly instead of by speculative insertion, 16 % less time
//!    for a 1 000-event statement (BENCHMARKS.md, "Issue #17, sixth sitting") — and if one
//!    is — an earlier run of the batch committed it — the statement fails with nothing
//!    written, and the batch runs again without the stored ones, which are then resolved
//!    below: re-running a batch is idempotent);
//! 3. fans out those same events: one delivery per enabled, matching endpoint (`LIKE filter
//!    ESCAPE '\'`) and one failed delivery per disabled, matching endpoint (the event is then
//!    `failed`); deliveries to FIFO endpoints join their line (see the claim in `queue.rs`).
//!    The organizations' endpoints are locked `FOR KEY SHARE` first, once each: a concurrent
//!    delete, disable or ordering switch (which lock the endpoint `FOR UPDATE`) waits for the
//!    batch, and a batch that had to wait for one reads the endpoint as that change left it
//!    — deleted: nothing; disabled: a failed delivery. The status, the deliveries and the
//!    failed deliveries all read that one locked set (read apart, an endpoint disabled while
//!    the batch waited got neither, and its event could stay `pending` with nothing
//!    outstanding);
//! 4. calls `pg_notify` once if any delivery was created.
//!
//! Items the statement did not insert are then resolved with a fresh snapshot: an event row
//! with the item's own id means an earlier run of this batch committed it (inserted); else
//! the dedup row names the winner (duplicate). When two transactions race for one dedup id,
//! `ON CONFLICT` waits for the other to commit or abort, so the winner is always a committed
//! row. A dedup row older than the caller's window is deleted (only if it is still expired)
//! and the item is tried again, so exactly one of several racing callers takes it over.
//!
//! The statement is prepared, so after its fifth run on a connection PostgreSQL keeps a
//! generic plan, which assumes a handful of rows for each `UNNEST` whatever the batch holds
//! (up to `PgConfig::batch_max_events`). It therefore never joins two of its own row sets
//! with each other: expecting few rows, a generic plan joined them by nested loop, and a
//! batch of n events with a matching endpoint compared n × n rows (2 000 events: four
//! million, ≈ 1.6 s holding a writer; BENCHMARKS.md, "Issue #17, tenth sitting"). The
//! events to insert are one set (`todo`) that the insert and the fan-out read alike, with the
//! dedup winners found by a hashed lookup, and the delivery counts are summed by a grouping,
//! not a join.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::types::Uuid;
use sqlx::{PgConnection, PgPool, Row};
use tokio::time::Instant;
use triggers_core::store::{InsertOutcome, StoreError, StoreResult};
use triggers_core::{EventMeta, EventRecord, OrganizationId, Timestamp};

use crate::error::{is_retryable_conflict, is_transient, map};

/// One caller's `insert_events` call, waiting for a writer.
pub(crate) struct InsertJob {
    pub(crate) org: OrganizationId,
    pub(crate) events: Vec<EventRecord>,
    pub(crate) window: Duration,
    pub(crate) now: Timestamp,
    /// The caller waits no longer: a job still queued then is answered `Unavailable` without
    /// being written, and a batch is not retried past its earliest deadline
    /// (`PgConfig::acquire_timeout` after the call).
    pub(crate) deadline: Instant,
    pub(crate) reply: tokio::sync::oneshot::Sender<StoreResult<Vec<InsertOutcome>>>,
}

impl InsertJob {
    /// Payload bytes, for the batch size limit.
    pub(crate) fn bytes(&self) -> usize {
        self.events.iter().map(|e| e.payload.get().len()).sum()
    }
}

/// How often the dedup take-over / resolution loop may run before giving up on an item, and
/// how often [`insert`] may run the batch again without event ids it found stored.
const MAX_ROUNDS: usize = 4;
/// Delays before re-running a batch that failed with a transient error.
const RETRY_DELAYS: [Duration; 3] =
    [Duration::from_millis(10), Duration::from_millis(100), Duration::from_millis(400)];

/// The batch statement: `$1` – `$6` the events' columns, `$7` the wake-up channel, `$8` each
/// event's excluded endpoint (see the module docs for why `todo` is read three times rather
/// than joined).
const INSERT_SQL: &str = r#"
WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::timestamptz[], $8::uuid[])
        AS t(id, organization_id, event_type, payload, dedup_id, created_at, exclude)
),
claimed AS (
    INSERT INTO dedup (organization_id, dedup_id, event_id, event_type, created_at)
    SELECT organization_id, dedup_id, id, event_type, created_at FROM input
    WHERE dedup_id IS NOT NULL
    ORDER BY organization_id, dedup_id
    ON CONFLICT (organization_id, dedup_id) DO NOTHING
    RETURNING event_id
),
-- The events to insert. (The `OR` keeps the membership test a hashed lookup: PostgreSQL
-- turns a bare `IN (subquery)` into a join, which a generic plan may make a nested loop.)
todo AS (
    SELECT * FROM input i WHERE i.dedup_id IS NULL OR i.id IN (SELECT event_id FROM claimed)
),
-- The endpoints of the batch's organizations, locked once each and read as they are once
-- locked (a disable that committed while the batch waited for its lock is seen), so that
-- the status, the deliveries and the failed deliveries all agree on which are enabled.
eps AS MATERIALIZED (
    SELECT ep.id, ep.organization_id, ep.enabled, ep.filter_like, ep.ordering
    FROM endpoints ep
    -- By index, as an array (a join with `input` may become a scan of every endpoint).
    WHERE ep.organization_id = ANY (ARRAY(SELECT DISTINCT organization_id FROM input))
    -- In id order, as `lifecycle::fail_outstanding` locks several: no deadlock between them.
    ORDER BY ep.id
    FOR KEY SHARE
),
-- Each inserted event with each matching disabled endpoint: a failed delivery.
disabled AS MATERIALIZED (
    SELECT t.id AS event_id, t.organization_id, t.created_at, ep.id AS endpoint_id
    FROM todo t JOIN eps ep
        ON ep.organization_id = t.organization_id AND NOT ep.enabled
       AND ep.id IS DISTINCT FROM t.exclude
       AND (ep.filter_like IS NULL OR t.event_type LIKE ep.filter_like ESCAPE '\')
),
ev AS (
    INSERT INTO events (id, organization_id, event_type, payload, dedup_id, status, created_at)
    SELECT t.id, t.organization_id, t.event_type, t.payload, t.dedup_id,
           -- A failed delivery (`dead`) fails the event. (A hashed lookup, as above.)
           CASE WHEN t.id IN (SELECT event_id FROM disabled) THEN 'failed' ELSE 'pending' END,
           t.created_at
    FROM todo t
    RETURNING id, organization_id, status
),
-- The pending events the statement adds, per organization (`pending.rs`; counted here
-- rather than by a trigger, which would copy every inserted row, payload and all).
counted AS (
    INSERT INTO pending_deltas (organization_id, n)
    SELECT organization_id, count(*) FROM ev WHERE status = 'pending' GROUP BY 1
),
-- Every row of `todo` is inserted (a stored id fails the whole statement), so the fan-out
-- reads `todo` too.
fanout AS (
    INSERT INTO deliveries
        (id, event_id, organization_id, endpoint_id, state, attempt, next_attempt_at, due_at,
         fifo_seq)
    SELECT triggers_delivery_id(t.id), t.id, t.organization_id, ep.id, 'pending', 0,
           t.created_at, t.created_at,
           -- One sequence value per statement, drawn only if a FIFO endpoint matched.
           CASE WHEN ep.ordering = 'fifo' THEN (SELECT nextval('deliveries_fifo_seq')) END
    FROM todo t JOIN eps ep
        ON ep.organization_id = t.organization_id AND ep.enabled
       AND ep.id IS DISTINCT FROM t.exclude
       AND (ep.filter_like IS NULL OR t.event_type LIKE ep.filter_like ESCAPE '\')
    RETURNING event_id
),
dead AS (
    INSERT INTO failed_deliveries
        (endpoint_id, event_id, organization_id, reason, failed_at, event_created_at)
    SELECT endpoint_id, event_id, organization_id, 'endpoint_disabled', created_at, created_at
    FROM disabled
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
),
wake AS (SELECT pg_notify($7, '') FROM (SELECT 1 FROM fanout LIMIT 1) one)
SELECT id, sum(n)::int8 AS deliveries, (SELECT count(*) FROM wake) AS woke
FROM (SELECT id, 0 AS n FROM ev UNION ALL SELECT event_id, 1 FROM fanout) x
GROUP BY id
"#;

/// Which of the batch's event ids are stored already (`$1`).
const STORED_SQL: &str = "SELECT id FROM events WHERE id = ANY($1::uuid[])";

const RESOLVE_SQL: &str = r#"
SELECT i.ord, e.id IS NOT NULL AS mine,
       -- Deliveries the insert created: outstanding ones still have a row, finished ones
       -- (rows deleted) have attempts; one delivery per endpoint.
       (SELECT count(DISTINCT x.endpoint_id) FROM (
            SELECT endpoint_id FROM deliveries d WHERE d.event_id = i.id
            UNION ALL
            SELECT endpoint_id FROM attempts a WHERE a.event_id = i.id) x) AS deliveries,
       dd.event_id AS original_id, dd.event_type AS original_type,
       dd.created_at AS original_created_at
FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]) WITH ORDINALITY AS i(id, org, dedup_id, ord)
LEFT JOIN events e ON e.id = i.id
LEFT JOIN dedup dd ON dd.organization_id = i.org AND dd.dedup_id = i.dedup_id
"#;

const DELETE_EXPIRED_SQL: &str = r#"
DELETE FROM dedup d
USING UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS x(org, dedup_id, threshold)
WHERE d.organization_id = x.org AND d.dedup_id = x.dedup_id AND d.created_at <= x.threshold
"#;

/// One event of the batch: where its outcome goes, and its dedup threshold.
#[derive(Clone, Copy)]
struct Item<'a> {
    job: usize,
    pos: usize,
    org: Uuid,
    event: &'a EventRecord,
    /// A dedup row created at or before this is expired for this caller.
    threshold: Timestamp,
}

/// Why a batch failed.
enum Failure {
    Sql(sqlx::Error),
    /// A dedup row kept changing under the item; the caller may retry.
    Unresolved,
}

/// What one batch wrote: one result per job, whether any delivery was created, and how long
/// its statements ran (not counting waits for a connection or between retries).
pub(crate) struct Written {
    pub(crate) results: Vec<StoreResult<Vec<InsertOutcome>>>,
    pub(crate) deliveries: bool,
    pub(crate) busy: Duration,
}

/// Writes `jobs` as one batch, re-running it on transient failures (safe: see the module
/// docs). Returns one result per job. A non-transient failure of a batch of several jobs is
/// retried job by job, so one bad request cannot fail the others.
pub(crate) async fn write(pool: &PgPool, jobs: &[InsertJob], channel: &str) -> Written {
    let mut busy = Duration::ZERO;
    match write_retrying(pool, jobs, channel, &mut busy).await {
        Ok((outcomes, deliveries)) => {
            Written { results: outcomes.into_iter().map(Ok).collect(), deliveries, busy }
        }
        Err(e) if jobs.len() > 1 && !e.is_transient() => {
            tracing::warn!(error = %e, jobs = jobs.len(), "batch insert failed; writing its jobs one by one");
            let mut results = Vec::with_capacity(jobs.len());
            let mut deliveries = false;
            for job in jobs {
                let one = write_retrying(pool, std::slice::from_ref(job), channel, &mut busy).await;
                results.push(one.map(|(mut outcomes, created)| {
                    deliveries |= created;
                    outcomes.pop().unwrap_or_default()
                }));
            }
            Written { results, deliveries, busy }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "batch insert failed");
            let results = jobs.iter().map(|_| Err(replicate(&e))).collect();
            Written { results, deliveries: false, busy }
        }
    }
}

/// A copy of `e` for another waiter of the same failed batch.
pub(crate) fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Overloaded(s) => StoreError::Overloaded(s.clone()),
        StoreError::Conflict(s) => StoreError::Conflict(s.clone()),
        StoreError::InvalidInput(s) => StoreError::InvalidInput(s.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        other => StoreError::Backend(other.to_string().into()),
    }
}

type Outcomes = (Vec<Vec<InsertOutcome>>, bool);

/// [`write`]'s batch, re-run on transient failures; adds the statements' time to `busy`.
async fn write_retrying(
    pool: &PgPool,
    jobs: &[InsertJob],
    channel: &str,
    busy: &mut Duration,
) -> StoreResult<Outcomes> {
    let mut delays = RETRY_DELAYS.iter();
    let deadline = jobs.iter().map(|j| j.deadline).min().unwrap_or_else(Instant::now);
    loop {
        let attempt = async {
            // Wait for a connection no longer than the callers wait (sqlx's own acquire
            // timeout counts from now, not from the call).
            let mut conn = match tokio::time::timeout_at(deadline, pool.acquire()).await {
                Ok(conn) => conn?,
                Err(_) => return Err(Failure::Sql(sqlx::Error::PoolTimedOut)),
            };
            let started = Instant::now();
            let written = write_once(&mut conn, jobs, channel).await;
            *busy += started.elapsed();
            written
        };
        match attempt.await {
            Ok(done) => return Ok(done),
            Err(Failure::Sql(e)) if is_transient(&e) || is_retryable_conflict(&e) => {
                match delays.next().filter(|d| Instant::now() + **d < deadline) {
                    Some(delay) => {
                        tracing::debug!(error = %e, ?delay, "batch insert failed; running it again");
                        tokio::time::sleep(*delay).await;
                    }
                    None => return Err(map(e)),
                }
            }
            Err(Failure::Sql(e)) => return Err(map(e)),
            Err(Failure::Unresolved) => {
                return Err(StoreError::Conflict(
                    "a dedup id kept changing owner during the insert; retry".into(),
                ))
            }
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

/// The first dedup-window threshold we accept: far before any real event.
fn threshold(now: Timestamp, window: Duration) -> Timestamp {
    const FLOOR_MICROS: i64 = -2_208_988_800_000_000; // 1900-01-01
    let window = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    let micros = now.timestamp_micros().saturating_sub(window).max(FLOOR_MICROS);
    triggers_core::clock::from_micros(micros)
}

async fn write_once(
    conn: &mut PgConnection,
    jobs: &[InsertJob],
    channel: &str,
) -> Result<Outcomes, Failure> {
    let mut outcomes: Vec<Vec<Option<InsertOutcome>>> =
        jobs.iter().map(|j| vec![None; j.events.len()]).collect();
    // Inside one batch the first item with a dedup id wins; later ones copy its outcome.
    let mut firsts: HashMap<(Uuid, &str), (usize, usize)> = HashMap::new();
    let mut followers: Vec<((usize, usize), (usize, usize))> = Vec::new();
    let mut todo: Vec<Item<'_>> = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let threshold = threshold(job.now, job.window);
        for (p, event) in job.events.iter().enumerate() {
            let item = Item { job: j, pos: p, org: job.org.0, event, threshold };
            match &event.dedup_id {
                Some(d) => match firsts.entry((job.org.0, d.as_str())) {
                    std::collections::hash_map::Entry::Occupied(o) => {
                        followers.push(((j, p), *o.get()));
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((j, p));
                        todo.push(item);
                    }
                },
                None => todo.push(item),
            }
        }
    }

    let mut deliveries = false;
    for _round in 0..MAX_ROUNDS {
        if todo.is_empty() {
            break;
        }
        let inserted = insert(conn, &todo, channel).await?;
        let mut missing = Vec::new();
        for item in todo.drain(..) {
            match inserted.get(&item.event.id.0) {
                Some(&n) => {
                    deliveries |= n > 0;
                    outcomes[item.job][item.pos] = Some(inserted_outcome(item.event, n));
                }
                None => missing.push(item),
            }
        }
        if missing.is_empty() {
            break;
        }
        let mut expired = Vec::new();
        for (item, found) in missing.iter().zip(resolve(conn, &missing).await?) {
            match found {
                Found::Mine(n) => {
                    deliveries |= n > 0;
                    outcomes[item.job][item.pos] = Some(inserted_outcome(item.event, n));
                }
                Found::Original(meta) if meta.created_at <= item.threshold => expired.push(*item),
                Found::Original(meta) => {
                    outcomes[item.job][item.pos] = Some(InsertOutcome::Duplicate(meta));
                }
                Found::Nothing => todo.push(*item),
            }
        }
        if !expired.is_empty() {
            delete_expired(conn, &expired).await?;
            todo.extend(expired);
        }
    }
    if !todo.is_empty() {
        return Err(Failure::Unresolved);
    }
    for ((j, p), (fj, fp)) in followers {
        let meta = outcomes[fj][fp].as_ref().map(|o| o.meta().clone());
        outcomes[j][p] = meta.map(InsertOutcome::Duplicate);
    }
    let outcomes = outcomes
        .into_iter()
        .map(|job| job.into_iter().collect::<Option<Vec<_>>>())
        .collect::<Option<Vec<_>>>()
        .ok_or(Failure::Unresolved)?;
    Ok((outcomes, deliveries))
}

fn inserted_outcome(event: &EventRecord, deliveries: i64) -> InsertOutcome {
    InsertOutcome::Inserted {
        meta: EventMeta {
            id: event.id,
            event_type: event.event_type.clone(),
            created_at: event.created_at,
        },
        deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
    }
}

/// Runs [`INSERT_SQL`]; returns the inserted event ids with their delivery counts. Where an
/// event id is stored already (an earlier run of this batch committed it: the statement then
/// failed with nothing written), the batch runs again without the stored ones, which the
/// caller resolves as its own.
async fn insert(
    conn: &mut PgConnection,
    items: &[Item<'_>],
    channel: &str,
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    // Borrowed: the usual run has no stored id and copies nothing.
    let mut rest = Cow::Borrowed(items);
    let mut rounds = 0;
    loop {
        if rest.is_empty() {
            return Ok(HashMap::new());
        }
        match run_insert(conn, &rest, channel).await {
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some(UNIQUE_VIOLATION)
                    && db.constraint() == Some("events_pkey")
                    && rounds < MAX_ROUNDS =>
            {
                // Stored ids come from an earlier run of this batch; one that was still
                // committing when we looked makes the next run fail again, and is seen then.
                rounds += 1;
                let ids: Vec<Uuid> = rest.iter().map(|i| i.event.id.0).collect();
                let stored: HashSet<Uuid> = sqlx::query_scalar(STORED_SQL)
                    .bind(ids)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .collect();
                rest.to_mut().retain(|i| !stored.contains(&i.event.id.0));
            }
            other => return other,
        }
    }
}

/// Inserts `events` (operational events: no dedup ids, fresh ids) on `conn`, inside the
/// caller's transaction, fanned out and notified like any batch (`store::operational`).
pub(crate) async fn insert_in(
    conn: &mut PgConnection,
    events: &[(OrganizationId, EventRecord)],
    channel: &str,
) -> Result<(), sqlx::Error> {
    let items: Vec<Item<'_>> = events
        .iter()
        .enumerate()
        .map(|(pos, (org, event))| Item {
            job: 0,
            pos,
            org: org.0,
            event,
            threshold: event.created_at,
        })
        .collect();
    if !items.is_empty() {
        run_insert(conn, &items, channel).await?;
    }
    Ok(())
}

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// Runs [`INSERT_SQL`] once for `items`.
async fn run_insert(
    conn: &mut PgConnection,
    items: &[Item<'_>],
    channel: &str,
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    let rows = sqlx::query(INSERT_SQL)
        .bind(items.iter().map(|i| i.event.id.0).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.org).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.event_type.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.payload.get()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.dedup_id.as_deref()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.created_at).collect::<Vec<_>>())
        .bind(channel)
        .bind(items.iter().map(|i| i.event.exclude_endpoint.map(|e| e.0)).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    let mut inserted = HashMap::with_capacity(rows.len());
    for row in rows {
        inserted.insert(row.try_get::<Uuid, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    Ok(inserted)
}

/// What holds an item that was not inserted.
enum Found {
    /// The item's own event exists: an earlier run of this batch committed it.
    Mine(i64),
    /// The dedup id belongs to this event.
    Original(EventMeta),
    /// Neither (the dedup row was taken over and removed meanwhile): try again.
    Nothing,
}

async fn resolve(conn: &mut PgConnection, items: &[Item<'_>]) -> Result<Vec<Found>, Failure> {
    let rows = sqlx::query(RESOLVE_SQL)
        .bind(items.iter().map(|i| i.event.id.0).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.org).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.dedup_id.as_deref()).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    let mut found: Vec<Found> = items.iter().map(|_| Found::Nothing).collect();
    for row in &rows {
        let ord: i64 = row.try_get("ord")?;
        let slot = usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i));
        let Some(slot) = slot else { continue };
        let original: Option<Uuid> = row.try_get("original_id")?;
        *slot = if row.try_get::<bool, _>("mine")? {
            Found::Mine(row.try_get("deliveries")?)
        } else if let Some(id) = original {
            Found::Original(EventMeta {
                id: id.into(),
                event_type: row.try_get("original_type")?,
                created_at: row.try_get("original_created_at")?,
            })
        } else {
            Found::Nothing
        };
    }
    Ok(found)
}

async fn delete_expired(conn: &mut PgConnection, items: &[Item<'_>]) -> Result<(), sqlx::Error> {
    sqlx::query(DELETE_EXPIRED_SQL)
        .bind(items.iter().map(|i| i.org).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.event.dedup_id.as_deref()).collect::<Vec<_>>())
        .bind(items.iter().map(|i| i.threshold).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::types::chrono::Utc;
    use sqlx::{Connection, PgConnection};
    use triggers_core::store::{EventLog, InsertOutcome};
    use triggers_core::{EndpointId, EventId, EventRecord, EventStatus};

    use crate::testing;
    use crate::PgConfig;

    /// Rows a plan's nodes produced (`actual rows` × `loops`) plus the rows its filters
    /// removed, from `EXPLAIN (ANALYZE, TIMING off)` text.
    fn rows_handled(plan: &str) -> u64 {
        let number = |s: &str| -> u64 {
            s.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
        };
        let mut total = 0;
        for line in plan.lines() {
            if let Some(at) = line.find("actual rows=") {
                let rest = &line[at + "actual rows=".len()..];
                let rows = number(rest);
                let loops = rest.find("loops=").map_or(1, |l| number(&rest[l + "loops=".len()..]));
                total += rows * loops;
            }
            if let Some(at) = line.find("Rows Removed by") {
                let rest = &line[at..];
                total += rest.find(": ").map_or(0, |c| number(&rest[c + 2..]));
            }
        }
        total
    }

    /// The batch statement is prepared: after its fifth run it keeps a generic plan, which
    /// assumes a handful of rows per `UNNEST`. That plan must handle a large batch with a
    /// matching enabled and a matching disabled endpoint in work proportional to the batch
    /// (it used to compare every inserted event with every input row).
    #[tokio::test]
    async fn the_batch_statements_generic_plan_is_linear_in_the_batch() {
        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let (org, endpoints) = testing::org_with_endpoints(&store, 2).await;
        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        sqlx::query("UPDATE endpoints SET enabled = false WHERE id = $1")
            .bind(endpoints[1].0)
            .execute(&mut conn)
            .await
            .unwrap();
        let n = 500;
        let array = |items: Vec<String>| format!("'{{{}}}'", items.join(","));
        let dedup = (0..n).map(|i| if i % 2 == 0 { format!("d-{i}") } else { "NULL".into() });
        let args = [
            array((0..n).map(|_| EventId::new().0.to_string()).collect()),
            array(vec![org.0.to_string(); n]),
            array(vec!["order.created".into(); n]),
            array(vec!["1".into(); n]),
            array(dedup.collect()),
            array(vec![format!("\"{}\"", Utc::now().to_rfc3339()); n]),
            "'triggers_test_wake'".into(),
            array(vec!["NULL".into(); n]),
        ];
        let mut tx = conn.begin().await.unwrap();
        let plan =
            testing::generic_plan(&mut tx, "(ANALYZE, TIMING off)", super::INSERT_SQL, &args).await;
        let (deliveries, failed): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM failed_deliveries)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!((deliveries, failed), (n as i64, n as i64), "{plan}");
        tx.rollback().await.unwrap();
        // About twenty passes over the batch (≈ 22 n); comparing every pair would be n × n.
        let handled = rows_handled(&plan);
        assert!(handled < 40 * n as u64, "{handled} rows for {n} events:\n{plan}");
        drop((conn, store));
        db.drop_database().await.unwrap();
    }

    /// A new `order.created` event with an empty payload.
    fn order_created(dedup_id: Option<&str>, now: triggers_core::Timestamp) -> EventRecord {
        EventRecord {
            id: EventId::new(),
            event_type: "order.created".into(),
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            dedup_id: dedup_id.map(str::to_owned),
            created_at: now,
            exclude_endpoint: None,
        }
    }

    /// Disables `endpoint` the way `update_endpoint` does (locks it `FOR UPDATE`, then
    /// updates it) in a transaction on a connection of its own, runs `work` while that
    /// transaction is open, waits until `work` is blocked on a lock, then commits. `work`
    /// therefore starts before the disable commits and reaches the endpoint after.
    async fn while_disabling<T>(
        db: &testing::TestDatabase,
        endpoint: EndpointId,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE")
            .bind(endpoint.0)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE endpoints SET enabled = false, disabled_reason = 'disabled_by_request'
             WHERE id = $1",
        )
        .bind(endpoint.0)
        .execute(&mut *tx)
        .await
        .unwrap();
        let mut watcher = PgConnection::connect_with(&db.options).await.unwrap();
        let commit = async {
            for _ in 0..1000 {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&mut watcher)
                .await
                .unwrap();
                if waiting > 0 {
                    return tx.commit().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the work never waited for the endpoint's lock");
        };
        tokio::join!(work, commit).0
    }

    /// A failed delivery of the event to the endpoint, and no queued one.
    async fn failed_not_queued(db: &testing::TestDatabase, endpoint: EndpointId, event: EventId) {
        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        let (failed, queued): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM failed_deliveries
                     WHERE endpoint_id = $1 AND event_id = $2 AND reason = 'endpoint_disabled'),
                    (SELECT count(*) FROM deliveries WHERE event_id = $2)",
        )
        .bind(endpoint.0)
        .bind(event.0)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!((failed, queued), (1, 0));
    }

    /// A batch that started before a disable committed, and reached the endpoint after,
    /// reads the endpoint as the disable left it: the event gets a failed delivery and is
    /// `failed`. (It used to get neither a delivery nor a failed one, and stayed `pending`
    /// with nothing outstanding.)
    #[tokio::test]
    async fn an_endpoint_disabled_while_a_batch_waits_for_it_fails_the_batchs_events() {
        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let (org, endpoints) = testing::org_with_endpoints(&store, 1).await;
        let endpoint = endpoints[0];
        let now = Utc::now();
        let event = order_created(Some("d-1"), now);
        let id = event.id;
        let insert = store.insert_events(org, vec![event], Duration::from_secs(60), now);
        let outcomes = while_disabling(&db, endpoint, insert).await.unwrap();
        assert!(matches!(outcomes[..], [InsertOutcome::Inserted { deliveries: 0, .. }]));
        let detail = store.event(org, id).await.unwrap().unwrap();
        assert_eq!(detail.event.status, EventStatus::Failed);
        failed_not_queued(&db, endpoint, id).await;
        drop(store);
        db.drop_database().await.unwrap();
    }

    /// The same for a replay: the endpoint disabled while the replay waits for it gets a
    /// failed delivery, and the replayed event is `failed`.
    #[tokio::test]
    async fn an_endpoint_disabled_while_a_replay_waits_for_it_fails_the_event() {
        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let (org, endpoints) = testing::org_with_endpoints(&store, 1).await;
        let endpoint = endpoints[0];
        let now = Utc::now();
        let event = order_created(None, now);
        let id = event.id;
        store.insert_events(org, vec![event], Duration::from_secs(60), now).await.unwrap();
        let replay = store.replay(org, id, Utc::now());
        let status = while_disabling(&db, endpoint, replay).await.unwrap();
        assert_eq!(status, Some(EventStatus::Failed));
        failed_not_queued(&db, endpoint, id).await;
        drop(store);
        db.drop_database().await.unwrap();
    }
}
