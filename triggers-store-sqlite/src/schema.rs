//! Connections, pragmas and the versioned schema.
//!
//! The schema version is kept in `PRAGMA user_version`; migration `i` (1-based) brings a
//! database from version `i - 1` to `i` in one transaction. A database whose version is newer
//! than the last migration this build knows is refused with `StoreError::Corrupt`.

use std::path::Path;

use rusqlite::limits::Limit;
use rusqlite::{Connection, DatabaseName, OpenFlags};
use triggers_core::{StoreError, WorkerId};

use crate::config::SqliteConfig;
use crate::error::{SqlResultExt, SqliteError};

/// Every migration, in order. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    // Issue 13: fair claims and FIFO lines.
    include_str!("migrations/0002_fair.sql"),
    // Issue 14: endpoint settings and failed deliveries.
    include_str!("migrations/0003_lifecycle.sql"),
    // Issue 12: tenant quotas.
    include_str!("migrations/0004_quotas.sql"),
    // Issue 15: the node id that lets a restart reclaim its own leases at once.
    include_str!("migrations/0005_embed.sql"),
    // Issue 14: delivery history by endpoint.
    include_str!("migrations/0006_history.sql"),
    // Issue 13, finished: claims find due deliveries per endpoint.
    include_str!("migrations/0007_claim_by_endpoint.sql"),
    // Issue 17: leases leave the claim index.
    include_str!("migrations/0008_pending_due.sql"),
    // Issue 17: deliveries keyed by endpoint and event.
    include_str!("migrations/0009_deliveries_by_key.sql"),
    // Hostile-tenant review: recover seeks its window of failed deliveries.
    include_str!("migrations/0010_failed_by_age.sql"),
    // Hostile-tenant review: pending events counted per organization.
    include_str!("migrations/0011_pending_counts.sql"),
];

/// Marks a database as ours (`PRAGMA application_id`, "TRGS").
const APPLICATION_ID: i64 = 0x5452_4753;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI
}

/// A cheap write for health checks: rewrites the header's application id (one page).
pub(crate) fn probe_write(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}")).store()
}

/// Settings every connection gets.
fn common_pragmas(conn: &Connection, config: &SqliteConfig) -> Result<(), StoreError> {
    let cache_kib = config.cache_size_kib.max(64);
    conn.busy_timeout(config.busy_timeout).store()?;
    if let Some(max) = config.max_value_len {
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, i32::try_from(max).unwrap_or(i32::MAX));
    }
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -{cache_kib};
         PRAGMA temp_store = MEMORY;"
    ))
    .store()?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Opens the writer's connection: creates the file if needed, switches to WAL, applies the
/// migrations, and checks that the database is ours, current and writable.
pub(crate) fn open_writer(path: &Path, config: &SqliteConfig) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, open_flags()).store()?;
    common_pragmas(&conn, config)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).store()?;
    if conn.is_readonly(DatabaseName::Main).store()? {
        return Err(read_only(path));
    }
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "sqlite did not switch to WAL mode");
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA journal_size_limit = {};
         PRAGMA wal_autocheckpoint = {};",
        config.synchronous.pragma_value(),
        config.journal_size_limit,
        config.checkpoint_pages.max(1)
    ))
    .store()?;
    migrate(&conn).map_err(|e| match e {
        StoreError::Backend(src) if is_read_only(&*src) => read_only(path),
        other => other,
    })?;
    Ok(conn)
}

/// The database's node id (see `DeliveryQueue::node_id`), created on first use. Stays the same
/// across restarts: it lives in the file.
pub(crate) fn node_id(conn: &Connection) -> Result<WorkerId, StoreError> {
    let fresh = WorkerId::new();
    conn.execute(
        "INSERT INTO node (id) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM node)",
        [fresh.0.as_bytes().as_slice()],
    )
    .store()?;
    let bytes: Vec<u8> = conn.query_row("SELECT id FROM node LIMIT 1", [], |r| r.get(0)).store()?;
    uuid::Uuid::from_slice(&bytes)
        .map(WorkerId)
        .map_err(|e| StoreError::Corrupt(format!("node id: {e}")))
}

/// Copies the write-ahead log into the database file and truncates the log to zero bytes,
/// on a connection of its own (the writer's is always inside a transaction).
pub(crate) fn checkpoint_truncate(
    path: &Path,
    busy_timeout: std::time::Duration,
) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(path, open_flags()).store()?;
    conn.busy_timeout(busy_timeout).store()?;
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .store()?;
    if busy != 0 {
        tracing::warn!("the write-ahead log could not be truncated now (readers were busy)");
    }
    Ok(())
}

/// Opens one read-only reader connection (`PRAGMA query_only`).
pub(crate) fn open_reader(path: &Path, config: &SqliteConfig) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, open_flags()).store()?;
    common_pragmas(&conn, config)?;
    conn.execute_batch("PRAGMA query_only = ON;").store()?;
    Ok(conn)
}

fn read_only(path: &Path) -> StoreError {
    StoreError::Backend(Box::new(SqliteError::ReadOnly(path.display().to_string())))
}

fn is_read_only(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<SqliteError>() {
        Some(SqliteError::ReadOnly(_)) => true,
        Some(SqliteError::Sqlite(s)) => {
            s.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)
        }
        None => false,
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`].
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).store()?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Corrupt(format!(
            "the database belongs to another application (application_id {app_id:#x})"
        )));
    }
    let version = user_version(conn)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this build of triggers \
             knows ({SCHEMA_VERSION}); upgrade triggers to open it"
        )));
    }
    if version < 0 {
        return Err(StoreError::Corrupt(format!("invalid schema version {version}")));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = i as i64 + 1;
        let mut tx = Tx::begin(conn)?;
        // Re-check inside the write lock: another process may have migrated meanwhile.
        if user_version(conn)? >= to {
            tx.commit()?;
            continue;
        }
        conn.execute_batch(sql).store()?;
        conn.execute_batch(&format!(
            "PRAGMA user_version = {to}; PRAGMA application_id = {APPLICATION_ID};"
        ))
        .store()?;
        tx.commit()?;
        tracing::info!(version = to, "applied sqlite schema migration");
    }
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).store()
}

/// A `BEGIN IMMEDIATE` transaction on a shared connection, rolled back unless committed.
struct Tx<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> Tx<'c> {
    fn begin(conn: &'c Connection) -> Result<Self, StoreError> {
        conn.execute_batch("BEGIN IMMEDIATE").store()?;
        Ok(Self { conn, done: false })
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT").store()?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rollback of a failed migration failed");
            }
        }
    }
}
