//! Bad input at the store boundary: typed errors, never a panic.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use triggers_core::domain::event::EventRecord;
use triggers_core::store::{
    ClaimRequest, DeliveryQueue, EndpointStore, EventLog, InsertOutcome, ListQuery, OrgStore,
};
use triggers_core::{EventStatus, StoreError, WorkerId};
use triggers_store_sqlite::{SqliteConfig, SqliteError, SqliteStore, SCHEMA_VERSION};

use crate::{fresh, insert_one, new_endpoint, new_org, open, raw, record, t, temp_db, WINDOW};

fn expect_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Err(StoreError::Corrupt(msg)) => msg,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_values_are_invalid_input_and_store_nothing() {
    let (_dir, path) = temp_db();
    let config = SqliteConfig { max_value_len: Some(1024), ..SqliteConfig::default() };
    let store = SqliteStore::open(&path, config).unwrap();
    let org = new_org(&store).await;
    let big = format!("\"{}\"", "x".repeat(2048));
    let batch = vec![record("t", "1", None, t(0)), record("t", &big, None, t(0))];
    match store.insert_events(org, batch, WINDOW, t(0)).await {
        Err(StoreError::InvalidInput(_)) => {}
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(store.stats(org).await.unwrap().pending, 0, "the batch is atomic");
    let long_type = "t".repeat(2000);
    assert!(matches!(
        store.insert_events(org, vec![record(&long_type, "1", None, t(0))], WINDOW, t(0)).await,
        Err(StoreError::InvalidInput(_))
    ));
    // The writer is fine afterwards.
    insert_one(&store, org, "t", t(1)).await;
    assert_eq!(store.stats(org).await.unwrap().pending, 1);
}

#[tokio::test]
async fn unknown_organizations_and_taken_ids_are_typed_errors() {
    let (_dir, store) = fresh();
    let ghost = triggers_core::OrganizationId::new();
    let r = store.insert_events(ghost, vec![record("t", "1", None, t(0))], WINDOW, t(0)).await;
    assert!(matches!(r, Err(StoreError::InvalidInput(_))), "{r:?}");
    let r = store.create_endpoint(ghost, &new_endpoint(None, t(0))).await;
    assert!(matches!(r, Err(StoreError::InvalidInput(_))), "{r:?}");
    let org = triggers_core::Organization::new("a", triggers_core::Tier::Free, t(0));
    let key = triggers_core::ApiKey::generate().hash();
    store.create_organization(&org, &key).await.unwrap();
    assert!(matches!(store.create_organization(&org, &key).await, Err(StoreError::Conflict(_))));
    let rec = record("t", "1", None, t(0));
    store.insert_events(org.id, vec![rec.clone()], WINDOW, t(0)).await.unwrap();
    let r = store.insert_events(org.id, vec![rec], WINDOW, t(0)).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

/// A batch of 40 events with dedup ids (multi-row statements of 32 and 8 rows) whose 20th
/// event has an id already stored.
fn batch_with_a_taken_id(taken: &EventRecord, tag: &str) -> Vec<EventRecord> {
    (0..40)
        .map(|i| match i {
            19 => taken.clone(),
            _ => record("t", "1", Some(&format!("{tag}-{i}")), t(1)),
        })
        .collect()
}

/// The multi-row inserts run `INSERT OR FAIL` (no statement journal): a statement that fails
/// half-way keeps its earlier rows, and only the writer's rollback of the whole request
/// (the transaction, or the request's savepoint when it shares a transaction) removes them.
/// Both ways, a batch that fails in a multi-row chunk leaves nothing: no event, no dedup id,
/// no delivery.
#[tokio::test]
async fn a_batch_failing_inside_a_multi_row_insert_stores_nothing() {
    let (_dir, store) = fresh();
    let org = new_org(&store).await;
    store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    let taken = record("t", "1", None, t(0));
    store.insert_events(org, vec![taken.clone()], WINDOW, t(0)).await.unwrap();

    // Alone in its transaction.
    let r = store.insert_events(org, batch_with_a_taken_id(&taken, "a"), WINDOW, t(1)).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    // Beside a good batch, in as many transactions as the writer makes of them.
    let good: Vec<EventRecord> =
        (0..40).map(|i| record("t", "1", Some(&format!("g-{i}")), t(1))).collect();
    let (bad, ok) = tokio::join!(
        store.insert_events(org, batch_with_a_taken_id(&taken, "b"), WINDOW, t(1)),
        store.insert_events(org, good, WINDOW, t(1)),
    );
    assert!(matches!(bad, Err(StoreError::Conflict(_))), "{bad:?}");
    assert_eq!(ok.unwrap().len(), 40);

    let stats = store.stats(org).await.unwrap();
    assert_eq!(stats.pending, 41, "the taken event and the good batch only: {stats:?}");
    // The failed batches' dedup ids were not recorded: the same ids are new events now.
    let again: Vec<EventRecord> = ["a-0", "a-31", "a-39", "b-0", "b-18", "b-39"]
        .iter()
        .map(|d| record("t", "1", Some(d), t(2)))
        .collect();
    let out = store.insert_events(org, again, WINDOW, t(2)).await.unwrap();
    assert!(
        out.iter().all(|o| matches!(o, InsertOutcome::Inserted { deliveries: 1, .. })),
        "{out:?}"
    );
    // Every stored event has exactly its one delivery: none left over from the failed batches.
    let claimed = store
        .claim(
            ClaimRequest::new(WorkerId::new(), 1000, Duration::from_secs(60), t(3))
                .with_caps(1000, 1000),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 47);
}

#[tokio::test]
async fn tampered_rows_read_back_as_corrupt() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    let org = new_org(&store).await;
    let a = insert_one(&store, org, "t", t(0)).await;
    let b = insert_one(&store, org, "t", t(1)).await;
    let c = insert_one(&store, org, "t", t(2)).await;
    let d = insert_one(&store, org, "t", t(3)).await;
    store.create_endpoint(org, &new_endpoint(None, t(0))).await.unwrap();
    let db = raw(&path);
    let set = |sql: &str, id: triggers_core::EventId| {
        db.execute(sql, [id.0.as_bytes().as_slice()]).unwrap();
    };
    set("UPDATE events SET event_type = CAST(x'c328ff' AS TEXT) WHERE id = ?1", a);
    set("UPDATE events SET payload = '{not json' WHERE id = ?1", b);
    set("UPDATE events SET dedup_id = x'00ff' WHERE id = ?1", c);
    set("UPDATE events SET created_at = 'yesterday' WHERE id = ?1", d);
    db.execute("UPDATE endpoints SET id = x'0102'", []).unwrap();
    db.execute("UPDATE organizations SET tier = 'platinum'", []).unwrap();

    for id in [a, b, c, d] {
        expect_corrupt(store.event(org, id).await);
    }
    let q = ListQuery {
        status: EventStatus::Pending,
        type_glob: None,
        limit: 10,
        after: None,
        max_bytes: u64::MAX,
    };
    expect_corrupt(store.list_events(org, &q).await);
    expect_corrupt(store.endpoints(org).await);
    expect_corrupt(store.organization(org).await);
}

#[tokio::test]
async fn malformed_ids_and_unknown_statuses_read_back_as_corrupt() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    let org = new_org(&store).await;
    insert_one(&store, org, "t", t(0)).await;
    let db = raw(&path);
    db.execute("UPDATE events SET id = x'abcd'", []).unwrap();
    let q = ListQuery {
        status: EventStatus::Pending,
        type_glob: None,
        limit: 10,
        after: None,
        max_bytes: u64::MAX,
    };
    let msg = expect_corrupt(store.list_events(org, &q).await);
    assert!(msg.contains("2 bytes"), "{msg}");
    db.execute("UPDATE events SET status = 7", []).unwrap();
    let msg = expect_corrupt(store.stats(org).await);
    assert!(msg.contains("status 7"), "{msg}");
}

#[test]
fn a_file_that_is_not_a_database_is_corrupt() {
    let (_dir, path) = temp_db();
    let garbage: Vec<u8> =
        (0..16384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, garbage).unwrap();
    let msg = expect_corrupt(SqliteStore::open(&path, SqliteConfig::default()));
    assert!(msg.contains("not a SQLite database"), "{msg}");
}

#[tokio::test]
async fn damaged_pages_are_corrupt_not_a_panic() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    let org = new_org(&store).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(insert_one(&store, org, "t", t(i)).await);
    }
    drop(store);
    // Keep page 1 (header and schema), scribble over every page after it.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192, "the database spans several pages");
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    std::fs::write(&path, bytes).unwrap();
    let store = match SqliteStore::open(&path, SqliteConfig::default()) {
        Err(StoreError::Corrupt(_)) => return,
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(store) => store,
    };
    expect_corrupt(store.event(org, ids[100]).await);
    let q = ListQuery {
        status: EventStatus::Pending,
        type_glob: None,
        limit: 10,
        after: None,
        max_bytes: u64::MAX,
    };
    expect_corrupt(store.list_events(org, &q).await);
}

#[test]
fn another_applications_database_is_refused() {
    let (_dir, path) = temp_db();
    raw(&path).execute_batch("PRAGMA application_id = 42; CREATE TABLE x (y);").unwrap();
    let msg = expect_corrupt(SqliteStore::open(&path, SqliteConfig::default()));
    assert!(msg.contains("another application"), "{msg}");
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let (_dir, path) = temp_db();
    drop(open(&path));
    let newer = SCHEMA_VERSION + 1;
    raw(&path).execute_batch(&format!("PRAGMA user_version = {newer}")).unwrap();
    let msg = expect_corrupt(SqliteStore::open(&path, SqliteConfig::default()));
    assert!(msg.contains("newer"), "{msg}");
    let v: i64 = raw(&path).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, newer);
}

const READ_ONLY_ENV: &str = "TRIGGERS_SQLITE_READ_ONLY_DB";

fn assert_read_only_error(path: &Path) {
    match SqliteStore::open(path, SqliteConfig::default()) {
        Err(StoreError::Backend(src)) => {
            assert!(
                matches!(src.downcast_ref::<SqliteError>(), Some(SqliteError::ReadOnly(_))),
                "{src}"
            )
        }
        other => panic!("expected a read-only Backend error, got {other:?}"),
    }
}

#[test]
fn a_read_only_database_is_a_typed_error() {
    let (dir, path) = temp_db();
    drop(open(&path));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let running_as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if running_as_root {
        // Root may write anything: check as an unprivileged user, in a child process.
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "bad_input::read_only_child", "--ignored", "--nocapture"])
            .env(READ_ONLY_ENV, &path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("READ-ONLY CHECKED"), "{stdout}");
    } else {
        assert_read_only_error(&path);
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run by `a_read_only_database_is_a_typed_error` as an unprivileged user.
#[test]
#[ignore = "child process of a_read_only_database_is_a_typed_error"]
fn read_only_child() {
    let Some(path) = std::env::var_os(READ_ONLY_ENV) else { return };
    assert_read_only_error(Path::new(&path));
    println!("READ-ONLY CHECKED");
}
