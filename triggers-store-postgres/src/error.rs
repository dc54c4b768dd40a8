//! Mapping sqlx errors onto the store's classified [`StoreError`].

use sqlx::migrate::MigrateError;
use triggers_core::StoreError;

/// SQLSTATE classes and codes that mean "the database cannot serve this right now".
///
/// - `08…` connection exceptions, `53…` insufficient resources (too many connections),
///   `57P01`–`57P05` administrator shutdown / crash shutdown / cannot connect now / idle
///   session timeout, `57014` query cancelled (our `statement_timeout`), `58…` system errors;
/// - `40001` serialization failure and `40P01` deadlock (retried inside the store first).
fn transient_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("58")
        || code.starts_with("57P")
        || code == "57014"
        || code == "40001"
        || code == "40P01"
}

/// Whether `code` is a deadlock or serialization failure: the statement can simply run again.
pub(crate) fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// Why one run of a transaction failed: a database error, which may be worth running again
/// ([`is_retryable_conflict`]), or the store's own.
pub(crate) enum TxError {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl TxError {
    /// The error to answer: a database error classified by [`map`].
    pub(crate) fn into_store(self) -> StoreError {
        match self {
            TxError::Sql(e) => map(e),
            TxError::Store(e) => e,
        }
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Sql(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

/// Whether running the same (idempotent) operation again on a fresh connection may succeed.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// How the `Unavailable` message of a call that got no pooled connection in time starts
/// (see [`crate::health::ConnectProbe::explain`], which adds the cause).
pub(crate) const NO_CONNECTION: &str = "no database connection";

/// Whether a database error is one the server sends when it refuses a new connection for
/// good reasons an operator must fix: bad credentials (`28…`) or a database that does not
/// exist (`3D000`).
fn refused_code(code: &str) -> bool {
    code.starts_with("28") || code == "3D000"
}

/// The cause of a connection-level failure in words an operator understands, without the
/// connection string: "connection refused", "database \"x\" does not exist", …
pub(crate) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".into()
        }
        sqlx::Error::Io(io) => format!("connection failed: {io}"),
        sqlx::Error::PoolTimedOut => {
            format!("{NO_CONNECTION} became free within the acquire timeout")
        }
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::Tls(tls) => format!("TLS failed: {tls}"),
        other => other.to_string(),
    }
}

/// Classifies a sqlx error:
/// connection, pool and I/O failures, and connections the server refuses (bad credentials,
/// no such database) → `Unavailable` (HTTP 503) with the cause in words; unique violations →
/// `Conflict`; other constraint and data errors → `InvalidInput`; decode errors → `Corrupt`;
/// everything else → `Backend` with the sqlx error as its source.
pub(crate) fn map(e: sqlx::Error) -> StoreError {
    if is_transient(&e) {
        return StoreError::Unavailable(describe(&e));
    }
    match e {
        // A table is missing: the migrations have not run (yet); see `start_unreachable`.
        sqlx::Error::Database(ref db) if db.code().as_deref() == Some("42P01") => {
            StoreError::Unavailable(format!(
                "the database schema is missing (not migrated yet?): {}",
                db.message()
            ))
        }
        sqlx::Error::Database(ref db) if db.code().is_some_and(|c| refused_code(&c)) => {
            StoreError::Unavailable(format!("PostgreSQL refused the connection: {}", describe(&e)))
        }
        sqlx::Error::PoolClosed => StoreError::Unavailable("the store is shutting down".into()),
        sqlx::Error::Database(ref db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(ref db)
            if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            StoreError::InvalidInput(db.message().to_owned())
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Backend(Box::new(other)),
    }
}

/// Classifies a migration failure: a database migrated by a newer version of this crate is
/// `Corrupt` (incompatible), a lost connection `Unavailable`, the rest `Backend`.
pub(crate) fn map_migrate(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(inner) => map(inner),
        MigrateError::VersionMissing(v) => StoreError::Corrupt(format!(
            "the database has migration {v}, which this version of triggers does not know: \
             it was migrated by a newer version"
        )),
        MigrateError::VersionMismatch(v) => StoreError::Corrupt(format!(
            "migration {v} in the database differs from this version's migration {v}"
        )),
        MigrateError::Dirty(v) => {
            StoreError::Corrupt(format!("migration {v} was left partially applied"))
        }
        other => StoreError::Backend(Box::new(other)),
    }
}

/// A stored value could not be turned back into a domain value.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_transport_errors_as_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(map(io), StoreError::Unavailable(_)));
        assert!(matches!(map(sqlx::Error::PoolTimedOut), StoreError::Unavailable(_)));
        assert!(matches!(map(sqlx::Error::PoolClosed), StoreError::Unavailable(_)));
        assert!(matches!(map(sqlx::Error::RowNotFound), StoreError::Backend(_)));
        let decode = sqlx::Error::Decode("bad".into());
        assert!(matches!(map(decode), StoreError::Corrupt(_)));
        assert!(transient_code("57P01") && transient_code("08006") && transient_code("40P01"));
        assert!(!transient_code("23505") && !transient_code("42P01"));
    }
}
