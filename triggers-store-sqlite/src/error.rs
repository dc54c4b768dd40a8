//! Turning SQLite failures into classified [`StoreError`]s.

use rusqlite::ErrorCode;
use triggers_core::StoreError;

/// A failure specific to this backend, carried as the source of `StoreError::Backend`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The database file (or its directory) cannot be written, so the store cannot work.
    #[error("the database {0} is read-only")]
    ReadOnly(String),
    /// SQLite itself failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// How an `Unavailable` message caused by a full disk starts (see [`is_write_fault`]).
pub(crate) const DISK_FULL: &str = "the disk is full";
/// How an `Unavailable` message caused by a failed disk read or write starts.
pub(crate) const IO_ERROR: &str = "disk I/O error";

/// Whether `e` says that writing to the disk failed (full, or an I/O error): the writer then
/// reports itself unhealthy until a write succeeds again.
pub(crate) fn is_write_fault(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m.starts_with(DISK_FULL) || m.starts_with(IO_ERROR))
}

/// Classifies a rusqlite error.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &e {
        E::SqliteFailure(f, msg) => {
            let detail = msg.clone().unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    StoreError::Unavailable(format!("database is locked: {detail}"))
                }
                ErrorCode::NotADatabase => {
                    StoreError::Corrupt(format!("the file is not a SQLite database: {detail}"))
                }
                ErrorCode::DatabaseCorrupt => StoreError::Corrupt(format!("sqlite: {detail}")),
                ErrorCode::TooBig => StoreError::InvalidInput(format!("value too large: {detail}")),
                ErrorCode::ConstraintViolation => StoreError::Conflict(detail),
                ErrorCode::ReadOnly => StoreError::Backend(Box::new(SqliteError::ReadOnly(detail))),
                // Transient: the write is rolled back and works again once space is freed.
                ErrorCode::DiskFull => StoreError::Unavailable(format!("{DISK_FULL}: {detail}")),
                ErrorCode::SystemIoFailure => {
                    StoreError::Unavailable(format!("{IO_ERROR}: {detail}"))
                }
                _ => StoreError::Backend(Box::new(SqliteError::Sqlite(e))),
            }
        }
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => StoreError::Corrupt(format!("unreadable stored value: {e}")),
        _ => StoreError::Backend(Box::new(SqliteError::Sqlite(e))),
    }
}

/// A damaged stored value.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Shorthand: `.map_err(map_err)` on a rusqlite result.
pub(crate) trait SqlResultExt<T> {
    /// Classifies the error.
    fn store(self) -> Result<T, StoreError>;
}

impl<T> SqlResultExt<T> for Result<T, rusqlite::Error> {
    fn store(self) -> Result<T, StoreError> {
        self.map_err(map_err)
    }
}
