//! Races the database decides: a dedup id held by an uncommitted transaction, a full
//! intake queue, and the last two deliveries of an event completed at once.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use triggers_core::domain::event::EventStatus;
use triggers_core::store::{
    ClaimRequest, Completion, Delivery, DeliveryQueue, EventLog, InsertOutcome, StoreError,
};
use triggers_core::{EventId, OrganizationId, WorkerId};
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
    sessions_blocked(store, 1).await;
}

/// Waits until at least `n` sessions of `store`'s database wait for a lock.
async fn sessions_blocked(store: &PgStore, n: i64) {
    support::eventually("sessions wait for a lock", Duration::from_secs(30), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        waiting >= n
    })
    .await;
}

/// A connection whose open transaction holds the row `id` of `table` `FOR UPDATE`.
async fn lock_row(db: &TestDatabase, table: &str, id: sqlx::types::Uuid) -> PgConnection {
    let mut conn = PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let sql = format!("SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE");
    sqlx::query(&sql).bind(id).execute(&mut conn).await.unwrap();
    conn
}

/// An organization with one endpoint that matches every event, one event, and its delivery
/// claimed.
async fn one_in_flight(
    store: &PgStore,
) -> (triggers_core::Organization, triggers_core::Endpoint, Delivery) {
    let org = support::org(store, "acme").await;
    let endpoint = support::endpoint(store, &org, None).await;
    store.insert_events(org.id, vec![support::record("t", None, at(1))], DAY, at(1)).await.unwrap();
    let req = ClaimRequest::new(WorkerId::new(), 1, DAY, at(2));
    let flying = store.claim(req).await.unwrap().remove(0);
    (org, endpoint, flying)
}

/// Closes a deadlock with a transaction of `store` that waits for a row `holder` holds:
/// once that one has waited a while (its deadlock check comes first, so it is the one
/// rolled back), `holder` asks for `endpoint`, gets it, and commits.
async fn close_deadlock(store: &PgStore, holder: &mut PgConnection, endpoint: sqlx::types::Uuid) {
    writer_blocked(store).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE")
        .bind(endpoint)
        .execute(&mut *holder)
        .await;
    assert!(asked.is_ok(), "the store's transaction was rolled back, not this: {asked:?}");
    sqlx::query("COMMIT").execute(holder).await.unwrap();
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

/// An organization with two endpoints, one event, and its two deliveries claimed.
async fn event_with_two_deliveries(store: &PgStore) -> (OrganizationId, EventId, Vec<Delivery>) {
    let org = support::org(store, "acme").await;
    support::endpoint(store, &org, None).await;
    support::endpoint(store, &org, None).await;
    let record = support::record("t", None, at(1));
    let event = record.id;
    store.insert_events(org.id, vec![record], DAY, at(1)).await.unwrap();
    let claimed = store
        .claim(ClaimRequest::new(WorkerId::new(), 10, Duration::from_secs(60), at(2)))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "one delivery per endpoint");
    (org.id, event, claimed)
}

fn delivered(d: &Delivery, secs: i64) -> Completion {
    support::delivered(d, d.lease_owner, secs)
}

/// An event with two endpoints whose deliveries succeed in two batches at once (two workers
/// or two nodes): each batch finishes its delivery and then decides whether it was the
/// event's last. Both deletes are held back by a lock on the event until both batches wait,
/// so each batch's own snapshot still sees the other's delivery: the one that decides last
/// must decide after the other's commit, or the event stays `pending` with nothing left to
/// deliver. (Successes of a delivery that had a sibling at its claim take one statement,
/// `triggers_complete_successes`; this is its race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_two_deliveries_of_an_event_completed_at_once_deliver_it() {
    let Some(db) = support::database("last_two_deliveries_at_once").await else { return };
    let store = support::connect(&db, support::config()).await;
    let (org, event, claimed) = event_with_two_deliveries(&store).await;

    let mut holder = PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM events WHERE id = $1 FOR NO KEY UPDATE")
        .bind(event.0)
        .execute(&mut holder)
        .await
        .unwrap();
    let batches: Vec<_> = claimed
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (s, c) = (store.clone(), delivered(d, 3 + i as i64));
            tokio::spawn(async move { s.complete(&[c]).await })
        })
        .collect();
    sessions_blocked(&store, 2).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    for batch in batches {
        assert_eq!(batch.await.unwrap().unwrap(), vec![true]);
    }

    let detail = store.event(org, event).await.unwrap().unwrap();
    assert_eq!(detail.event.status, EventStatus::Delivered);
    assert_eq!(detail.attempts.len(), 2);
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    drop(store);
    db.drop_database().await.unwrap();
}

/// Both deliveries of an event succeed in one batch: the batch's own deletes leave nothing
/// outstanding, so it delivers the event (latest success time); a repeat is stale.
#[tokio::test]
async fn an_events_deliveries_completed_in_one_batch_deliver_it() {
    let Some(db) = support::database("deliveries_in_one_batch").await else { return };
    let store = support::connect(&db, support::config()).await;
    let (org, event, claimed) = event_with_two_deliveries(&store).await;
    let batch = [delivered(&claimed[0], 5), delivered(&claimed[1], 4)];
    assert_eq!(store.complete(&batch).await.unwrap(), vec![true, true]);
    let detail = store.event(org, event).await.unwrap().unwrap();
    assert_eq!(
        (detail.event.status, detail.event.delivered_at),
        (EventStatus::Delivered, Some(at(4)))
    );
    assert_eq!(store.complete(&batch).await.unwrap(), vec![false, false], "stale");
    assert_eq!(store.event(org, event).await.unwrap().unwrap().attempts.len(), 2);
    drop(store);
    db.drop_database().await.unwrap();
}

/// The announcement of a patch's change is recorded in the outbox with the change and
/// published after the commit (`announce.rs`): the patch's transaction holds no other
/// endpoint of the organization. Another transaction holding a second endpoint (as another
/// patch or a disabling completion does) and then asking for the first one gets it at once —
/// inserting the announcement inside the patch's transaction made that a deadlock — and the
/// announcement follows once the second endpoint is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_holds_no_other_endpoint_while_it_announces() {
    use triggers_core::store::{EndpointPatch, EndpointStore};
    let Some(db) = support::database("patch_announce_locks").await else { return };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    let x = support::endpoint(&store, &org, None).await;
    let y = support::endpoint(&store, &org, None).await;

    let mut other = lock_row(&db, "endpoints", y.id.0).await;
    let s = store.clone();
    let patch = tokio::spawn(async move {
        let disable = EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
        s.update_endpoint(org.id, x.id, &disable, at(1)).await
    });
    // The announcement waits for `y` (its fan-out reads every endpoint of the organization).
    writer_blocked(&store).await;
    let asked = sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 FOR KEY SHARE")
        .bind(x.id.0)
        .execute(&mut other)
        .await;
    assert!(asked.is_ok(), "the patch's change was committed, `x` is free: {asked:?}");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let update = patch.await.unwrap().expect("the patch succeeds").unwrap();
    assert!(!update.endpoint.enabled);
    let pool = store.pool().clone();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            n
        }
    };
    let events = "SELECT count(*) FROM events WHERE event_type = 'triggers.endpoint.disabled'";
    assert_eq!(count(events).await, 1, "announced once");
    assert_eq!(count("SELECT count(*) FROM announcements").await, 0, "the outbox is empty");
    drop(store);
    db.drop_database().await.unwrap();
}

/// Announcements left in the outbox (their call failed after the commit, or the process
/// died) are published by the store's sweep, once each, within seconds, in the order of the
/// changes (`seq`) whatever times the changes carry, each with an id given when it is
/// published, and delivered to the other endpoints only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_left_in_the_outbox_are_published_by_the_sweep() {
    let Some(db) = support::database("outbox_sweep").await else { return };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    let watcher = support::endpoint(&store, &org, None).await;
    let subject = support::endpoint(&store, &org, None).await;
    // A disable, then an enable whose change carries an earlier time (another node's clock).
    let left = [
        (EventId::new(), "triggers.endpoint.disabled", r#"{"enabled":false}"#, at(5)),
        (EventId::new(), "triggers.endpoint.enabled", r#"{"enabled":true}"#, at(1)),
    ];
    for (id, kind, payload, created) in &left {
        sqlx::query(
            "INSERT INTO announcements (id, organization_id, endpoint_id, event_type, payload, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.0)
        .bind(org.id.0)
        .bind(subject.id.0)
        .bind(kind)
        .bind(payload)
        .bind(created)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let published = || async {
        let rows: Vec<(sqlx::types::Uuid, String)> = sqlx::query_as(
            "SELECT id, event_type FROM events WHERE event_type LIKE 'triggers.endpoint.%'
             ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        rows
    };
    support::eventually("the sweep publishes them", Duration::from_secs(30), || async {
        published().await.len() == 2
    })
    .await;
    let rows = published().await;
    let kinds: Vec<&str> = rows.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(kinds, [left[0].1, left[1].1], "in the order of the changes");
    assert!(rows.iter().all(|(id, _)| left.iter().all(|l| l.0 .0 != *id)), "ids given anew");
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM announcements")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(outbox, 0);
    // Delivered to the watcher only, never to the endpoint it is about.
    let targets: Vec<sqlx::types::Uuid> =
        sqlx::query_scalar("SELECT endpoint_id FROM deliveries WHERE event_id = ANY($1)")
            .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(targets, [watcher.id.0, watcher.id.0]);
    // Still once each a sweep later.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(published().await, rows, "once each");
    drop(store);
    db.drop_database().await.unwrap();
}

/// A disabling completion for an endpoint that is disabled when the completion starts (an
/// earlier disable left this delivery in flight) while a transaction is enabling it: the
/// completion waits for that transaction, finds the endpoint enabled, and disables it again
/// — announced and reported, not silently (it used to lock only endpoints it read as
/// enabled, so the enable could commit under it unseen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_racing_an_enable_is_announced() {
    use triggers_core::store::CompletionState;
    let Some(db) = support::database("disable_races_enable").await else { return };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    let ep = support::endpoint(&store, &org, None).await;
    store.insert_events(org.id, vec![support::record("t", None, at(1))], DAY, at(1)).await.unwrap();
    let owner = WorkerId::new();
    let req = ClaimRequest::new(owner, 1, Duration::from_secs(600), at(2));
    let flying = store.claim(req).await.unwrap().remove(0);
    // An earlier disable that left this delivery outstanding.
    sqlx::query("UPDATE endpoints SET enabled = false, disabled_reason = 'first' WHERE id = $1")
        .bind(ep.id.0)
        .execute(store.pool())
        .await
        .unwrap();

    let mut enabling = PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut enabling).await.unwrap();
    sqlx::query("UPDATE endpoints SET enabled = true, disabled_reason = NULL WHERE id = $1")
        .bind(ep.id.0)
        .execute(&mut enabling)
        .await
        .unwrap();
    let mut c = support::delivered(&flying, owner, 3);
    c.state = CompletionState::Failed;
    c.disable_endpoint = Some("second".into());
    let s = store.clone();
    let done = tokio::spawn(async move {
        let nothing = ClaimRequest::new(WorkerId::new(), 0, Duration::from_secs(60), at(3));
        s.complete_and_claim(&[c], nothing).await
    });
    writer_blocked(&store).await;
    sqlx::query("COMMIT").execute(&mut enabling).await.unwrap();

    let done = done.await.unwrap().unwrap();
    assert_eq!((done.applied, done.disabled), (vec![true], vec![ep.id]), "this call disabled it");
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE event_type = 'triggers.endpoint.disabled'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(reasons.len(), 1, "announced: {reasons:?}");
    assert!(reasons[0].contains(r#""reason":"second""#), "{reasons:?}");
    drop(store);
    db.drop_database().await.unwrap();
}

/// The completer moves the announcements of the disables it made right after the batch, on
/// its connection, shared by every organization: it does not wait for the organization's
/// endpoint locks (`announce::COMPLETER_LOCK_WAIT`), so an organization keeping one of its
/// endpoints locked (a recover, a delete, a patch) cannot hold every organization's
/// completions up. It hands the announcement to the sweep task, which moves it soon after
/// the lock is released — held here for over a second, past the task's first tries — and
/// before the periodic sweep would take the row (only rows older than
/// `announce::SWEEP_MIN_AGE`, 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_hands_an_announcement_it_cannot_move_to_the_sweep() {
    use triggers_core::store::{CompletionState, EndpointStore};
    let Some(db) = support::database("completion_lock_wait").await else { return };
    let store = support::connect(&db, support::config()).await;
    let org = support::org(&store, "acme").await;
    let x = support::endpoint(&store, &org, Some("t")).await;
    let held = support::endpoint(&store, &org, Some("other")).await;
    store.insert_events(org.id, vec![support::record("t", None, at(1))], DAY, at(1)).await.unwrap();
    let owner = WorkerId::new();
    let flying = store.claim(ClaimRequest::new(owner, 1, DAY, at(2))).await.unwrap().remove(0);

    let mut other = lock_row(&db, "endpoints", held.id.0).await;
    let mut c = support::delivered(&flying, owner, 3);
    c.state = CompletionState::Failed;
    c.disable_endpoint = Some("410 Gone".into());
    let nothing = ClaimRequest::new(WorkerId::new(), 0, DAY, at(3));
    let done =
        tokio::time::timeout(Duration::from_secs(20), store.complete_and_claim(&[c], nothing))
            .await
            .expect("the completer is not held by one organization's lock")
            .unwrap();
    assert_eq!(done.disabled, vec![x.id]);
    let recorded: sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> =
        sqlx::query_scalar("SELECT recorded_at FROM announcements")
            .fetch_one(store.pool())
            .await
            .expect("left in the outbox");
    let waiting = store.announcement_backlog().await.unwrap();
    assert_eq!(waiting.waiting, 1);
    assert!(waiting.oldest_waited.is_some_and(|d| d < Duration::from_secs(60)), "{waiting:?}");
    let published = || {
        let pool = store.pool().clone();
        async move {
            let ids: Vec<sqlx::types::Uuid> = sqlx::query_scalar(
                "SELECT id FROM events WHERE event_type = 'triggers.endpoint.disabled'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            ids
        }
    };
    assert!(published().await.is_empty(), "not published while the lock is held");
    // Held past the sweep task's first tries (0.2 s waits after pauses of 0.25, 0.5 s): it
    // tries again, a little later each time.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(published().await.is_empty(), "not published while the lock is held");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    support::eventually("the sweep task publishes it", Duration::from_secs(30), || async {
        published().await.len() == 1
    })
    .await;
    assert_eq!(store.announcement_backlog().await.unwrap(), Default::default());
    // The event's id carries the time it was moved (UUIDv7, this machine's clock).
    let id = published().await[0];
    let (secs, nanos) = id.get_timestamp().expect("a UUIDv7").to_unix();
    let moved = sqlx::types::chrono::DateTime::from_timestamp(secs as i64, nanos).unwrap();
    assert!(
        (moved - recorded).num_milliseconds() < 5_000,
        "moved when the lock was released ({recorded} → {moved}), not by the periodic sweep"
    );
    drop(store);
    db.drop_database().await.unwrap();
}

/// A patch that disables an endpoint fails its in-flight deliveries while holding it; a
/// disabling completion holding one of them and then asking for the endpoint closes a
/// deadlock, which PostgreSQL breaks by rolling the patch back (it waited first). The patch
/// runs again, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_that_loses_a_deadlock_runs_again() {
    use triggers_core::store::{EndpointPatch, EndpointStore};
    let Some(db) = support::database("patch_deadlock").await else { return };
    let store = support::connect(&db, support::config()).await;
    let (org, x, flying) = one_in_flight(&store).await;

    // The completion's side: it holds the delivery ...
    let mut completion = lock_row(&db, "deliveries", flying.id.0).await;
    let s = store.clone();
    let patch = tokio::spawn(async move {
        let disable = EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
        s.update_endpoint(org.id, x.id, &disable, at(3)).await
    });
    close_deadlock(&store, &mut completion, x.id.0).await;
    let update = patch.await.unwrap().expect("the patch ran again and succeeded").unwrap();
    assert!(!update.endpoint.enabled);
    assert_eq!(update.failed, 1, "its delivery failed");
    drop(store);
    db.drop_database().await.unwrap();
}

/// Finishing a disable fails the endpoint's outstanding deliveries while holding it: the
/// same deadlock as a patch's with a disabling completion that holds one of them, and the
/// same answer — the step runs again, and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_disable_that_loses_a_deadlock_runs_again() {
    use triggers_core::store::EndpointStore;
    let Some(db) = support::database("finish_deadlock").await else { return };
    let store = support::connect(&db, support::config()).await;
    let (org, x, flying) = one_in_flight(&store).await;
    // Disabled by a completion whose one batch left this delivery outstanding.
    sqlx::query("UPDATE endpoints SET enabled = false, disabled_reason = '410' WHERE id = $1")
        .bind(x.id.0)
        .execute(store.pool())
        .await
        .unwrap();

    let mut completion = lock_row(&db, "deliveries", flying.id.0).await;
    let s = store.clone();
    let finishing = tokio::spawn(async move { s.finish_disabling(org.id, x.id, at(3)).await });
    close_deadlock(&store, &mut completion, x.id.0).await;
    let failed = finishing.await.unwrap().expect("the step ran again and succeeded");
    assert_eq!(failed, 1, "its delivery failed");
    drop(store);
    db.drop_database().await.unwrap();
}

/// One batch disables endpoints of two organizations while one of them keeps another of its
/// endpoints locked: the other organization's announcement is published with the call (one
/// organization per move), and only the locked one's is left to the sweep task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organizations_lock_leaves_only_its_own_announcement_to_the_sweep() {
    use triggers_core::store::CompletionState;
    let Some(db) = support::database("completion_lock_per_org").await else { return };
    let store = support::connect(&db, support::config()).await;
    let (busy, calm) = (support::org(&store, "busy").await, support::org(&store, "calm").await);
    let busy_ep = support::endpoint(&store, &busy, Some("t")).await;
    let held = support::endpoint(&store, &busy, Some("other")).await;
    support::endpoint(&store, &calm, Some("t")).await;
    for org in [&busy, &calm] {
        let record = support::record("t", None, at(1));
        store.insert_events(org.id, vec![record], DAY, at(1)).await.unwrap();
    }
    let owner = WorkerId::new();
    let flying = store.claim(ClaimRequest::new(owner, 10, DAY, at(2))).await.unwrap();
    assert_eq!(flying.len(), 2);

    let mut other = lock_row(&db, "endpoints", held.id.0).await;
    let completions: Vec<_> = flying
        .iter()
        .map(|d| {
            let mut c = support::delivered(d, owner, 3);
            c.state = CompletionState::Failed;
            c.disable_endpoint = Some("410 Gone".into());
            c
        })
        .collect();
    let nothing = ClaimRequest::new(WorkerId::new(), 0, DAY, at(3));
    let done = store.complete_and_claim(&completions, nothing).await.unwrap();
    assert_eq!(done.disabled.len(), 2);
    let announced = |org: triggers_core::OrganizationId| {
        let pool = store.pool().clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events
                 WHERE organization_id = $1 AND event_type = 'triggers.endpoint.disabled'",
            )
            .bind(org.0)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    assert_eq!(announced(calm.id).await, 1, "the calm organization's is published at once");
    assert_eq!(announced(busy.id).await, 0, "the busy one's waits for its lock");
    let left: Vec<sqlx::types::Uuid> = sqlx::query_scalar("SELECT endpoint_id FROM announcements")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(left, [busy_ep.id.0]);
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    support::eventually("the sweep publishes it", Duration::from_secs(30), || async {
        announced(busy.id).await == 1
    })
    .await;
    drop(store);
    db.drop_database().await.unwrap();
}
