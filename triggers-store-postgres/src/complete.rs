//! Recording finished attempts: fenced, in one transaction per batch.
//!
//! 1. `FINISH_SQL` ends the leases that are still ours (`state = 'in_flight' AND lease_owner
//!    AND attempt`): retries become pending again, every other outcome deletes the delivery's
//!    row (a finished delivery has no row; its attempts are its history). It reports, per
//!    applied completion, whether its event has other outstanding deliveries.
//! 2. For successes of events with other outstanding deliveries, the events are locked in id
//!    order. Two batches finishing the last two deliveries of one event then decide "was this
//!    the last outstanding delivery?" one after the other, the second with a snapshot that
//!    sees the first's commit, so one of them marks the event delivered. A delivery with no
//!    outstanding sibling needs no lock: every other delivery of its event finished (and
//!    committed its decision) before, and only a replay adds deliveries, which deletes this
//!    one first (its completion is then stale).
//! 3. `RECORD_SQL` appends the attempts, updates endpoint health (only rows that change) and
//!    event status.
//!
//! A deadlock (possible with a concurrent replay of the same event) rolls the transaction
//! back; the batch is then run again.
//!
//! **Fast path.** When every completion of a batch is a success that disables nothing, and
//! this store claimed each delivery knowing it was its event's only outstanding delivery
//! ([`Singles`]),
//! no lock is needed and the whole batch is one autocommitted statement (`FAST_SQL`): the
//! common case of one endpoint per organization costs one round trip instead of four.
//! Nor does it look for the event's other outstanding deliveries: a single delivery whose
//! fenced delete applied was the last one (the argument of step 2), and probing
//! `deliveries_event` for each of them cost ≈ 20 % of the claim + complete throughput.
//! Deliveries are added to an event with outstanding ones by `replay`, which deletes those
//! first (their completions are then stale), and by `recover`, which first marks them
//! `shared` (migration 0008): the fast path's fence refuses a shared delivery, and the
//! completions it did not apply go down the successes path, which decides whether each is
//! stale. A recover that comes after a fast completion committed finds its event decided
//! (`delivered` stays delivered, as the store contract says).
//!
//! **Successes path.** A batch of successes that disable nothing, of which some delivery may
//! have a sibling (an event with two or more endpoints), runs steps 1 – 3 inside one
//! database function, `triggers_complete_successes` (migration 0009), in one autocommitted
//! statement: the finish, the lock of the events in id order, then the decision with a
//! snapshot taken after the lock (a volatile function takes one per statement it runs). The
//! same argument as the general path's, in one round trip instead of five (fan-out
//! deliveries on PostgreSQL were 20 – 40 % slower than one endpoint's; BENCHMARKS.md,
//! "Issue #17, thirteenth sitting").
//!
//! **Durability.** Every path commits with `synchronous_commit = off` (their first statement
//! sets it for its transaction): a completion is lease bookkeeping, which the store contract
//! lets a crash of the database undo — the delivery is then due again and attempted once
//! more, never lost. A committed completion is visible at once, to every node; only its
//! flush to disk is left to the WAL writer (≈ 200 ms at most), or to the next synchronous
//! commit, whichever comes first. The one claim that must not outrun that flush, a FIFO
//! line's next delivery, commits synchronously (see `queue.rs`), and so does a general-path
//! transaction that disables an endpoint: it also records the disable's announcement
//! (`store::operational`) in the outbox (`announce.rs`), an event to be, which must survive
//! a crash of the database as every insert does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::types::Uuid;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use triggers_core::store::{operational, Completion, CompletionState, StoreResult};
use triggers_core::Timestamp;
use triggers_core::{EndpointId, OrganizationId};

use crate::announce::Outbox;
use crate::error::{is_retryable_conflict, map};
use crate::queue::attempt_i32;

/// A CTE that drops the oldest attempts of the `(event_id, endpoint_id)` pairs of `$src`
/// beyond `$keep_param - 1` (the statement inserts one more, which it cannot see), so each
/// pair keeps at most `StoreLimits::max_attempts_kept`.
///
/// The attempts of a pair are read through the primary key `(event_id, seq)` whatever the
/// statistics say: the `OFFSET 0` subquery keeps the endpoint test out of the scan. Without
/// it, a database whose statistics were not gathered yet (any fresh one, for its first
/// minute) had the planner walk every attempt of the endpoint (`attempts_by_endpoint`) on
/// each completion — 10 – 20 ms per completion with 20 000 attempts, and end-to-end delivery
/// at ≈ 800 a second (BENCHMARKS.md, "Issue #17, second sitting").
///
/// Migration 0009's `triggers_complete_successes` runs a copy of this CTE: a change here
/// needs a migration that replaces the function.
macro_rules! trim_attempts_cte {
    ($src:literal, $keep_param:literal) => {
        concat!(
            "trimmed AS (
    DELETE FROM attempts a
    USING (SELECT DISTINCT event_id, endpoint_id FROM ",
            $src,
            ") p
    CROSS JOIN LATERAL (
        SELECT x.seq
        FROM (SELECT b.seq, b.endpoint_id FROM attempts b
              WHERE b.event_id = p.event_id OFFSET 0) x
        WHERE x.endpoint_id = p.endpoint_id
        ORDER BY x.seq DESC
        OFFSET greatest(",
            $keep_param,
            " - 1, 0)
    ) old
    WHERE a.event_id = p.event_id AND a.seq = old.seq
)"
        )
    };
}

/// `retry_at` NULL = finished (delivered or failed).
const FINISH_SQL: &str = r#"
WITH c AS (
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::timestamptz[])
        AS c(id, owner, attempt, retry_at)
),
retried AS (
    UPDATE deliveries d
    SET state = 'pending', next_attempt_at = c.retry_at, due_at = c.retry_at,
        lease_owner = NULL, lease_expires_at = NULL
    FROM c
    WHERE c.retry_at IS NOT NULL AND d.id = c.id AND d.state = 'in_flight'
      AND d.lease_owner = c.owner AND d.attempt = c.attempt
    RETURNING d.id, d.event_id
),
finished AS (
    DELETE FROM deliveries d
    USING c
    WHERE c.retry_at IS NULL AND d.id = c.id AND d.state = 'in_flight'
      AND d.lease_owner = c.owner AND d.attempt = c.attempt
    RETURNING d.id, d.event_id
)
SELECT x.id, x.event_id,
    EXISTS (SELECT 1 FROM deliveries o WHERE o.event_id = x.event_id AND o.id <> x.id)
        AS shared
FROM (SELECT * FROM retried UNION ALL SELECT * FROM finished) x
WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
"#;

/// `benches/pgbench/claim_complete.sql` runs a copy of this statement: change both.
const FAST_SQL: &str = concat!(
    r#"
WITH fin AS (
    DELETE FROM deliveries d
    USING UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::uuid[], $5::timestamptz[],
                $6::int4[], $7::int8[], $8::text[])
        WITH ORDINALITY AS c(id, owner, attempt, endpoint_id, at, status_code, latency_ms, error, ord)
    WHERE d.id = c.id AND d.state = 'in_flight' AND d.lease_owner = c.owner
      AND d.attempt = c.attempt AND NOT d.shared
    RETURNING d.id, d.event_id, c.endpoint_id, c.at, c.status_code, c.latency_ms, c.error, c.ord
),
attempts_in AS (
    INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms, error)
    SELECT event_id, endpoint_id, at, status_code, latency_ms, error FROM fin ORDER BY ord
),
"#,
    trim_attempts_cte!("fin", "$9"),
    r#",
healthy AS (
    UPDATE endpoints e SET failing_since = NULL
    WHERE e.id IN (SELECT endpoint_id FROM fin) AND e.failing_since IS NOT NULL
),
delivered AS (
    UPDATE events e SET status = 'delivered', delivered_at = fin.at
    FROM fin
    WHERE e.id = fin.event_id AND e.status = 'pending'
)
SELECT id FROM fin WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
"#
);

/// The successes path (the module docs): the function finishes, locks and decides.
const SUCCESSES_SQL: &str =
    "SELECT id FROM triggers_complete_successes($1, $2, $3, $4, $5, $6, $7, $8, $9) AS f(id)";

const LOCK_SQL: &str = r#"
SELECT id FROM events WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE
"#;

/// Endpoint `mode`: 1 = clear failing_since, 2 = set it, 3 = set it unless already failing.
const RECORD_SQL: &str = concat!(
    r#"
WITH attempts_in AS (
    INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms, error)
    SELECT event_id, endpoint_id, at, status_code, latency_ms, error
    FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int4[], $5::int8[], $6::text[])
        WITH ORDINALITY AS a(event_id, endpoint_id, at, status_code, latency_ms, error, ord)
    ORDER BY ord
),
pairs AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) AS p(event_id, endpoint_id)),
"#,
    trim_attempts_cte!("pairs", "$14"),
    r#",
endpoints_up AS (
    UPDATE endpoints e
    SET failing_since = CASE x.mode WHEN 1 THEN NULL WHEN 2 THEN x.at
                                    ELSE coalesce(e.failing_since, x.at) END,
        enabled = e.enabled AND x.disable IS NULL,
        -- An endpoint already disabled keeps its reason.
        disabled_reason = CASE WHEN e.enabled AND x.disable IS NOT NULL THEN x.disable
                               ELSE e.disabled_reason END
    FROM UNNEST($7::uuid[], $8::int2[], $9::timestamptz[], $10::text[])
        AS x(id, mode, at, disable)
    -- Only rows that change: a healthy endpoint's row is not locked by every success.
    WHERE e.id = x.id
      AND (x.disable IS NOT NULL
           OR (x.mode = 1 AND e.failing_since IS NOT NULL)
           OR (x.mode = 2 AND e.failing_since IS DISTINCT FROM x.at)
           OR (x.mode = 3 AND e.failing_since IS NULL))
),
failed AS (
    UPDATE events SET status = 'failed'
    WHERE id = ANY($11::uuid[]) AND status = 'pending'
)
UPDATE events e SET status = 'delivered', delivered_at = x.at
FROM UNNEST($12::uuid[], $13::timestamptz[]) AS x(id, at)
WHERE e.id = x.id AND e.status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
"#
);

/// Attempts of deliveries a replay superseded while they were in flight (see
/// `superseded_deliveries`): recorded, fenced by lease owner and attempt; nothing else
/// changes.
const SUPERSEDED_SQL: &str = concat!(
    r#"
WITH fin AS (
    DELETE FROM superseded_deliveries d
    USING UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::uuid[], $5::timestamptz[],
                $6::int4[], $7::int8[], $8::text[])
        WITH ORDINALITY AS c(id, owner, attempt, endpoint_id, at, status_code, latency_ms, error, ord)
    WHERE d.id = c.id AND d.lease_owner = c.owner AND d.attempt = c.attempt
    RETURNING d.event_id, c.endpoint_id, c.at, c.status_code, c.latency_ms, c.error, c.ord
),
attempts_in AS (
    INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms, error)
    SELECT fin.event_id, endpoint_id, at, status_code, latency_ms, error FROM fin
    WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = fin.event_id)
    ORDER BY ord
),
"#,
    trim_attempts_cte!("fin", "$9"),
    r#"
SELECT count(*) FROM fin
"#
);

/// Deliveries this store claimed that were their event's only outstanding delivery at the
/// time.
/// Bounded: past [`Singles::CAP`] entries (deliveries claimed but never completed here) it
/// starts over, which only sends completions down the general path.
#[derive(Debug, Default)]
pub(crate) struct Singles(std::sync::Mutex<HashSet<Uuid>>);

impl Singles {
    const CAP: usize = 100_000;

    pub(crate) fn remember(&self, ids: &[triggers_core::DeliveryId]) {
        if ids.is_empty() {
            return;
        }
        let mut set = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.len() + ids.len() > Self::CAP {
            set.clear();
        }
        set.extend(ids.iter().map(|d| d.0));
    }

    /// Whether every delivery of `batch` is known to be single; forgets them either way.
    fn take_all(&self, batch: &[&Completion]) -> bool {
        let mut set = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = true;
        for c in batch {
            all &= set.remove(&c.delivery_id.0);
        }
        all
    }
}

/// Which statements apply a batch (the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Successes of deliveries claimed as their event's only outstanding one: `FAST_SQL`.
    Fast,
    /// Successes that disable nothing: `triggers_complete_successes`, one statement.
    Successes,
    /// Anything else: a transaction of `FINISH_SQL`, `LOCK_SQL` and `RECORD_SQL`.
    General,
}

/// A batch of completions ready to apply: each delivery's first completion only (a second
/// one would be stale), and the path that applies it.
struct Batch<'c> {
    all: &'c [Completion],
    firsts: Vec<&'c Completion>,
    path: Path,
    /// Attempts are trimmed to this many, including the one being inserted.
    keep: i64,
}

impl<'c> Batch<'c> {
    /// Prepares `completions`; forgets their deliveries in `singles` (see [`Singles`]).
    fn new(singles: &Singles, completions: &'c [Completion], keep: u32) -> Self {
        // A delivery named twice: only its first completion can apply (the first one ends
        // the lease, so the second would be stale).
        let mut seen = HashSet::new();
        let firsts: Vec<&Completion> =
            completions.iter().filter(|c| seen.insert(c.delivery_id)).collect();
        let simple = firsts
            .iter()
            .all(|c| c.state == CompletionState::Delivered && c.disable_endpoint.is_none());
        let single = singles.take_all(&firsts);
        let path = match (simple, single) {
            (true, true) => Path::Fast,
            (true, false) => Path::Successes,
            (false, _) => Path::General,
        };
        Batch { all: completions, firsts, path, keep: i64::from(keep.max(1)) }
    }

    /// One flag per completion, in order: `applied` holds each delivery once.
    fn flags(&self, mut applied: HashSet<Uuid>) -> Vec<bool> {
        self.all.iter().map(|c| applied.remove(&c.delivery_id.0)).collect()
    }

    /// The completions that did not apply.
    fn stale(&self, applied: &HashSet<Uuid>) -> Vec<&'c Completion> {
        self.firsts.iter().copied().filter(|c| !applied.contains(&c.delivery_id.0)).collect()
    }
}

/// Applies `completions` on a connection of `pool`; see [`complete_on`].
pub(crate) async fn complete(
    pool: &PgPool,
    singles: &Singles,
    completions: &[Completion],
    keep: u32,
    outbox: &Outbox,
) -> StoreResult<Vec<bool>> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = pool.acquire().await.map_err(map)?;
    Ok(complete_on(&mut conn, singles, completions, keep, outbox).await?.0)
}

/// Applies `completions` on `conn` (not inside a transaction); one flag per completion, in
/// order, and the endpoints they disabled (`CompletedAndClaimed::disabled`). The fast and
/// successes paths are one autocommitted statement each, the general path one transaction;
/// none waits for the WAL flush (the module's "Durability") unless it disables an endpoint.
/// Then it publishes the disables' announcements from `outbox` (`announce.rs`), notifying
/// as inserts do, or hands them to its sweep.
pub(crate) async fn complete_on(
    conn: &mut PgConnection,
    singles: &Singles,
    completions: &[Completion],
    keep: u32,
    outbox: &Outbox,
) -> StoreResult<(Vec<bool>, Vec<EndpointId>)> {
    if completions.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let batch = Batch::new(singles, completions, keep);
    let (mut applied, disabled) = apply(conn, &batch.firsts, batch.path, batch.keep).await?;
    if batch.path == Path::Fast {
        // Not applied on the fast path: stale, or `shared` since the claim (a `recover`
        // queued another delivery of the event); the successes path decides which.
        let rest = batch.stale(&applied);
        if !rest.is_empty() {
            applied.extend(apply(conn, &rest, Path::Successes, batch.keep).await?.0);
        }
    }
    if !disabled.is_empty() {
        publish_disables(conn, &disabled, outbox).await;
    }
    let disabled: Vec<EndpointId> = disabled.into_iter().map(|(id, _)| EndpointId(id)).collect();
    let stale = batch.stale(&applied);
    if !stale.is_empty() {
        record_superseded(conn, &stale, batch.keep).await.map_err(map)?;
    }
    Ok((batch.flags(applied), disabled))
}

/// Applies `firsts` on `path`, running a batch that was rolled back (a deadlock) again;
/// returns the ids of the deliveries whose completion applied, and of the endpoints they
/// disabled (only the general path disables).
async fn apply(
    conn: &mut PgConnection,
    firsts: &[&Completion],
    path: Path,
    keep: i64,
) -> StoreResult<(HashSet<Uuid>, Vec<(Uuid, Uuid)>)> {
    let mut attempt = 0;
    loop {
        let run = match path {
            Path::Fast => {
                complete_in_one(&mut *conn, FAST_SQL, firsts, keep).await.map(|a| (a, Vec::new()))
            }
            Path::Successes => complete_in_one(&mut *conn, SUCCESSES_SQL, firsts, keep)
                .await
                .map(|a| (a, Vec::new())),
            Path::General => {
                async {
                    let mut tx = conn.begin().await?;
                    let applied = complete_once(&mut tx, firsts, keep).await?;
                    tx.commit().await?;
                    Ok(applied)
                }
                .await
            }
        };
        match run {
            Err(e) if is_retryable_conflict(&e) && attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, "completion batch rolled back; running it again");
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            other => return other.map_err(map),
        }
    }
}

/// Records the attempts of stale completions whose delivery a replay superseded.
async fn record_superseded(
    conn: &mut PgConnection,
    stale: &[&Completion],
    keep: i64,
) -> Result<(), sqlx::Error> {
    bind_attempts(sqlx::query(SUPERSEDED_SQL), stale).bind(keep).execute(conn).await?;
    Ok(())
}

/// Binds $1–$8 of `FAST_SQL` and `SUPERSEDED_SQL`: fence and attempt record per completion.
fn bind_attempts<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    firsts: &[&Completion],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(firsts.iter().map(|c| c.delivery_id.0).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| c.lease_owner.0).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| attempt_i32(c.attempt)).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| c.record.endpoint_id.0).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| c.record.at).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| c.record.status_code.map(i32::from)).collect::<Vec<_>>())
        .bind(
            firsts
                .iter()
                .map(|c| i64::try_from(c.record.latency_ms).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(firsts.iter().map(|c| c.record.error.clone()).collect::<Vec<_>>())
}

/// The fast path (`FAST_SQL`) or the successes path (`SUCCESSES_SQL`, which calls
/// `triggers_complete_successes` of migration 0009 with `FAST_SQL`'s arguments): one
/// statement; returns the ids of the deliveries whose completion applied.
async fn complete_in_one(
    conn: &mut PgConnection,
    sql: &'static str,
    firsts: &[&Completion],
    keep: i64,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let rows = bind_attempts(sqlx::query(sql), firsts).bind(keep).fetch_all(conn).await?;
    let mut ids = HashSet::with_capacity(rows.len());
    for row in &rows {
        use sqlx::Row;
        ids.insert(row.try_get::<Uuid, _>(0)?);
    }
    Ok(ids)
}

/// The general path, on `tx` (inside a transaction); returns the ids of the deliveries
/// whose completion applied, and of the endpoints they disabled. A disable's announcement is
/// recorded in the outbox in the same transaction (`announce.rs`), which then commits
/// synchronously: the announcement must survive a crash of the database, as every event.
async fn complete_once(
    tx: &mut PgConnection,
    firsts: &[&Completion],
    keep: i64,
) -> Result<(HashSet<Uuid>, Vec<(Uuid, Uuid)>), sqlx::Error> {
    let rows = sqlx::query(FINISH_SQL)
        .bind(firsts.iter().map(|c| c.delivery_id.0).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| c.lease_owner.0).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| attempt_i32(c.attempt)).collect::<Vec<_>>())
        .bind(firsts.iter().map(|c| retry_at(&c.state)).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    let mut applied: HashMap<Uuid, (Uuid, bool)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        use sqlx::Row;
        applied.insert(row.try_get("id")?, (row.try_get("event_id")?, row.try_get("shared")?));
    }
    let done: Vec<(&Completion, Uuid)> = firsts
        .iter()
        .filter_map(|c| applied.get(&c.delivery_id.0).map(|(e, _)| (*c, *e)))
        .collect();
    let mut to_lock: Vec<Uuid> = done
        .iter()
        .filter(|(c, _)| c.state == CompletionState::Delivered)
        .filter(|(c, _)| applied.get(&c.delivery_id.0).is_some_and(|(_, shared)| *shared))
        .map(|(_, e)| *e)
        .collect();
    if !to_lock.is_empty() {
        to_lock.sort_unstable();
        to_lock.dedup();
        sqlx::query(LOCK_SQL).bind(&to_lock).execute(&mut *tx).await?;
    }
    let disabled = disabling(tx, &done).await?;
    if !done.is_empty() {
        record(tx, &done, keep).await?;
    }
    if !disabled.is_empty() {
        announce(tx, &done, &disabled).await?;
    }
    Ok((applied.into_keys().collect(), disabled.into_iter().map(|d| (d.id, d.org)).collect()))
}

/// Moves the announcements of the `(endpoint, organization)` pairs disabled by a batch out
/// of the outbox (`announce.rs`): one organization per transaction, starting at a different
/// one each time, no lock waited for, and no statement past
/// [`announce::COMPLETER_BUDGET`](crate::announce::COMPLETER_BUDGET) — the completer is
/// every organization's, and what is left goes to the sweep task at once.
async fn publish_disables(conn: &mut PgConnection, disabled: &[(Uuid, Uuid)], outbox: &Outbox) {
    let deadline = std::time::Instant::now() + crate::announce::COMPLETER_BUDGET;
    let mut orgs: Vec<Uuid> = disabled.iter().map(|(_, org)| *org).collect();
    orgs.sort_unstable();
    orgs.dedup();
    // A different first organization each time, so that the same ones are not always the
    // ones past the budget.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let first = turn % orgs.len().max(1);
    orgs.rotate_left(first);
    for org in orgs {
        let endpoints: Vec<EndpointId> =
            disabled.iter().filter(|(_, o)| *o == org).map(|(id, _)| EndpointId(*id)).collect();
        let wait = crate::announce::Wait::Briefly(deadline);
        crate::announce::publish(conn, OrganizationId(org), &endpoints, outbox, wait).await;
    }
}

/// Records the announcement of each of `disabled` in the outbox (`store::operational`,
/// `announce.rs`): its first disabling completion's reason and time, as `record` stored
/// them; and makes the transaction commit synchronously.
async fn announce(
    tx: &mut PgConnection,
    done: &[(&Completion, Uuid)],
    disabled: &[Disabling],
) -> Result<(), sqlx::Error> {
    let mut events = Vec::with_capacity(disabled.len());
    for d in disabled {
        let first = done.iter().find_map(|(c, _)| {
            let reason = c.disable_endpoint.as_deref()?;
            (c.record.endpoint_id.0 == d.id).then_some((reason, c.record.at))
        });
        let Some((reason, at)) = first else { continue };
        let event =
            operational::endpoint_changed(EndpointId(d.id), &d.url, false, Some(reason), at)
                .map_err(|e| sqlx::Error::Encode(e.into()))?;
        events.push((OrganizationId(d.org), event));
    }
    sqlx::query("SET LOCAL synchronous_commit TO DEFAULT").execute(&mut *tx).await?;
    crate::announce::record(tx, &events).await
}

/// An endpoint a completion of the batch disables: enabled until now, locked.
struct Disabling {
    id: Uuid,
    org: Uuid,
    url: String,
}

/// The endpoints that the disabling completions among `done` disable now: those still
/// enabled, locked (in id order) until the transaction ends, so a concurrent batch on any
/// node that disables one of them waits and then finds it disabled. In the order of their
/// first disabling completion. No statement when nothing disables (the usual case).
async fn disabling(
    tx: &mut PgConnection,
    done: &[(&Completion, Uuid)],
) -> Result<Vec<Disabling>, sqlx::Error> {
    let mut asked: Vec<Uuid> = Vec::new();
    for (c, _) in done.iter().filter(|(c, _)| c.disable_endpoint.is_some()) {
        if !asked.contains(&c.record.endpoint_id.0) {
            asked.push(c.record.endpoint_id.0);
        }
    }
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    // Every one of them, enabled or not: a row the WHERE clause passed over would stay
    // unlocked, and a concurrent enable could commit before `record` disables it again —
    // unannounced and unreported.
    let locked: Vec<(Uuid, Uuid, String, bool)> = sqlx::query_as(
        "SELECT id, organization_id, url, enabled FROM endpoints WHERE id = ANY($1)
         ORDER BY id FOR UPDATE",
    )
    .bind(&asked)
    .fetch_all(&mut *tx)
    .await?;
    let disabling = asked.iter().filter_map(|id| {
        let (_, org, url, _) = locked.iter().find(|(e, _, _, enabled)| e == id && *enabled)?;
        Some(Disabling { id: *id, org: *org, url: url.clone() })
    });
    Ok(disabling.collect())
}

/// Writes attempts, endpoint health and event status for the applied completions, in
/// completion order (so "the last word" per endpoint and per event is the later one).
async fn record(
    tx: &mut PgConnection,
    done: &[(&Completion, Uuid)],
    keep: i64,
) -> Result<(), sqlx::Error> {
    // Per endpoint: the combined effect of its completions in order.
    let mut endpoints: Vec<(Uuid, i16, Timestamp, Option<String>)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut failed: Vec<Uuid> = Vec::new();
    let mut delivered: Vec<(Uuid, Timestamp)> = Vec::new();
    for (c, event) in done {
        let ep = c.record.endpoint_id.0;
        let slot = *index.entry(ep).or_insert_with(|| {
            endpoints.push((ep, 0, c.record.at, None));
            endpoints.len() - 1
        });
        let entry = &mut endpoints[slot];
        match c.state {
            CompletionState::Delivered => entry.1 = 1,
            CompletionState::Retry { .. } | CompletionState::Failed => {
                // Not failing before → failing since now; already failing → unchanged.
                match entry.1 {
                    0 => (entry.1, entry.2) = (3, c.record.at),
                    1 => (entry.1, entry.2) = (2, c.record.at),
                    _ => {}
                }
            }
        }
        // The first disabling completion's reason, as in the other stores and as announced.
        if let (Some(reason), None) = (&c.disable_endpoint, &entry.3) {
            entry.3 = Some(reason.clone());
        }
        match c.state {
            CompletionState::Failed => failed.push(*event),
            CompletionState::Delivered => delivered.push((*event, c.record.at)),
            CompletionState::Retry { .. } => {}
        }
    }
    // A failure in this batch wins over a success of the same event; the last success of
    // an event gives its delivered_at.
    let failed_set: HashSet<Uuid> = failed.iter().copied().collect();
    let mut last_success: HashMap<Uuid, Timestamp> = HashMap::new();
    for (event, at) in delivered.into_iter().filter(|(e, _)| !failed_set.contains(e)) {
        last_success.insert(event, at);
    }
    let endpoints: Vec<_> = endpoints.into_iter().filter(|e| e.1 != 0 || e.3.is_some()).collect();

    sqlx::query(RECORD_SQL)
        .bind(done.iter().map(|(_, e)| *e).collect::<Vec<_>>())
        .bind(done.iter().map(|(c, _)| c.record.endpoint_id.0).collect::<Vec<_>>())
        .bind(done.iter().map(|(c, _)| c.record.at).collect::<Vec<_>>())
        .bind(done.iter().map(|(c, _)| c.record.status_code.map(i32::from)).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|(c, _)| i64::try_from(c.record.latency_ms).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(done.iter().map(|(c, _)| c.record.error.as_deref()).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.1).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.2).collect::<Vec<_>>())
        .bind(endpoints.iter().map(|e| e.3.as_deref()).collect::<Vec<_>>())
        .bind(failed)
        .bind(last_success.keys().copied().collect::<Vec<_>>())
        .bind(last_success.values().copied().collect::<Vec<_>>())
        .bind(keep)
        .execute(&mut *tx)
        .await?;

    // Issue 14: failed deliveries are remembered for `recover`, and disabling an endpoint
    // fails its outstanding deliveries. Both are rare, so they cost a statement only then.
    let failures: Vec<(&Completion, Uuid)> =
        done.iter().filter(|(c, _)| c.state == CompletionState::Failed).copied().collect();
    if !failures.is_empty() {
        sqlx::query(crate::lifecycle::RECORD_FAILED_SQL)
            .bind(failures.iter().map(|(c, _)| c.record.endpoint_id.0).collect::<Vec<_>>())
            .bind(failures.iter().map(|(_, e)| *e).collect::<Vec<_>>())
            .bind(
                failures
                    .iter()
                    .map(|(c, _)| c.record.error.as_deref().unwrap_or("failed"))
                    .collect::<Vec<_>>(),
            )
            .bind(failures.iter().map(|(c, _)| c.record.at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    let mut disabled: Vec<(Uuid, String)> = Vec::new();
    let mut last_at = None;
    for (c, _) in done {
        if let Some(reason) = &c.disable_endpoint {
            if !disabled.iter().any(|(id, _)| *id == c.record.endpoint_id.0) {
                disabled.push((c.record.endpoint_id.0, reason.clone()));
            }
            last_at = Some(c.record.at);
        }
    }
    if let Some(at) = last_at {
        crate::lifecycle::fail_outstanding(tx, &disabled, at).await?;
    }
    Ok(())
}

fn retry_at(s: &CompletionState) -> Option<Timestamp> {
    match s {
        CompletionState::Retry { at } => Some(*at),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use sqlx::types::Uuid;
    use sqlx::{Connection, PgConnection};

    use crate::testing;
    use crate::PgConfig;

    /// A fresh database has no statistics until autovacuum first analyzes it; the trim must
    /// not depend on them (see `trim_attempts_cte!`). Generic plan, as for the store's
    /// prepared statements after their fifth run.
    #[tokio::test]
    async fn trimming_attempts_reads_one_events_attempts_without_statistics() {
        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        let endpoint = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms)
             SELECT gen_random_uuid(), $1, now(), 200, 1 FROM generate_series(1, 5000)",
        )
        .bind(endpoint)
        .execute(&mut conn)
        .await
        .unwrap();
        let sql = concat!(
            "WITH fin AS (SELECT $1::uuid AS event_id, $2::uuid AS endpoint_id), ",
            trim_attempts_cte!("fin", "$3"),
            " SELECT 1"
        );
        let args = [format!("'{}'", Uuid::new_v4()), format!("'{endpoint}'"), "20".into()];
        let plan = testing::generic_plan(&mut conn, "", sql, &args).await;
        assert!(!plan.contains("attempts_by_endpoint"), "{plan}");
        assert!(plan.contains("attempts_pkey"), "{plan}");
        drop((conn, store));
        db.drop_database().await.unwrap();
    }

    /// Completions are lease bookkeeping: every path commits without waiting for the flush
    /// (the module's "Durability"). Checked inside an open transaction, where the setting
    /// the statements (or the successes path's function) made is still visible.
    #[tokio::test]
    async fn completions_commit_without_a_flush() {
        use triggers_core::domain::event::AttemptRecord;
        use triggers_core::store::{Completion, CompletionState};
        use triggers_core::{DeliveryId, EndpointId, WorkerId};

        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        let completion = Completion {
            delivery_id: DeliveryId::new(),
            lease_owner: WorkerId::new(),
            attempt: 1,
            state: CompletionState::Delivered,
            record: AttemptRecord {
                endpoint_id: EndpointId::new(),
                at: sqlx::types::chrono::Utc::now(),
                status_code: Some(200),
                latency_ms: 1,
                error: None,
            },
            disable_endpoint: None,
        };
        for path in [super::Path::Fast, super::Path::Successes, super::Path::General] {
            let mut tx = conn.begin().await.unwrap();
            let batch = [&completion];
            let applied = match path {
                super::Path::Fast => {
                    super::complete_in_one(&mut tx, super::FAST_SQL, &batch, 20).await
                }
                super::Path::Successes => {
                    super::complete_in_one(&mut tx, super::SUCCESSES_SQL, &batch, 20).await
                }
                super::Path::General => {
                    super::complete_once(&mut tx, &batch, 20).await.map(|(applied, _)| applied)
                }
            };
            assert!(applied.unwrap().is_empty(), "no such delivery: stale");
            let mode: String =
                sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(mode, "off", "{path:?}");
            tx.rollback().await.unwrap();
        }
        drop((conn, store));
        db.drop_database().await.unwrap();
    }

    /// The one exception: a completion that disables an endpoint writes its announcement
    /// (`store::operational`) in the same transaction, which commits synchronously, so
    /// nothing it announced can be lost to a crash of the database.
    #[tokio::test]
    async fn a_disabling_completion_commits_its_announcement_with_a_flush() {
        use sqlx::types::chrono::Utc;
        use std::time::Duration;
        use triggers_core::store::{
            ClaimRequest, Completion, CompletionState, DeliveryQueue, EventLog,
        };
        use triggers_core::{EventId, WorkerId};

        let Some((db, store)) = testing::fresh_store(PgConfig::default()).await else { return };
        let (org, endpoints) = testing::org_with_endpoints(&store, 1).await;
        let event = triggers_core::EventRecord {
            id: EventId::new(),
            event_type: "x".into(),
            payload: serde_json::value::RawValue::from_string("1".into()).unwrap(),
            dedup_id: None,
            created_at: Utc::now(),
            exclude_endpoint: None,
        };
        store.insert_events(org, vec![event], Duration::ZERO, Utc::now()).await.unwrap();
        let req = ClaimRequest::new(WorkerId::new(), 1, Duration::from_secs(60), Utc::now());
        let claimed = store.claim(req).await.unwrap();
        let completion = Completion {
            delivery_id: claimed[0].id,
            lease_owner: claimed[0].lease_owner,
            attempt: claimed[0].attempt,
            state: CompletionState::Failed,
            record: triggers_core::AttemptRecord {
                endpoint_id: endpoints[0],
                at: Utc::now(),
                status_code: Some(410),
                latency_ms: 1,
                error: Some("HTTP 410".into()),
            },
            disable_endpoint: Some("410 Gone".into()),
        };

        let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let (applied, disabled) = super::complete_once(&mut tx, &[&completion], 20).await.unwrap();
        assert_eq!((applied.len(), disabled), (1, vec![(endpoints[0].0, org.0)]));
        let recorded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM announcements WHERE event_type = 'triggers.endpoint.disabled'",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(recorded, 1, "recorded in the outbox in the same transaction");
        let mode: String =
            sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
        assert_eq!(mode, "on", "the server's own setting, not off");
        tx.rollback().await.unwrap();
        drop((conn, store));
        db.drop_database().await.unwrap();
    }
}
