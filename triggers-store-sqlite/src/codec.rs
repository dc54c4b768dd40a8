//! Reading stored values back, checking each: a damaged row is a `StoreError::Corrupt`, never a
//! panic.

use chrono::{TimeZone, Utc};
use rusqlite::types::ValueRef;
use rusqlite::Row;
use serde_json::value::RawValue;
use triggers_core::{EventStatus, StoreError, Timestamp};
use uuid::Uuid;

use crate::error::{corrupt, map_err};

type R<T> = Result<T, StoreError>;

/// Microseconds since the Unix epoch, as stored.
pub(crate) fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// A `Duration` in microseconds, saturating.
pub(crate) fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The stored number for an event status.
pub(crate) fn status_code(s: EventStatus) -> i64 {
    match s {
        EventStatus::Pending => 0,
        EventStatus::Delivered => 1,
        EventStatus::Failed => 2,
    }
}

fn value<'a>(row: &'a Row<'_>, idx: usize) -> R<ValueRef<'a>> {
    row.get_ref(idx).map_err(map_err)
}

/// A UUID stored as a 16-byte blob.
pub(crate) fn uuid(row: &Row<'_>, idx: usize) -> R<Uuid> {
    match value(row, idx)? {
        ValueRef::Blob(b) => Uuid::from_slice(b)
            .map_err(|_| corrupt(format!("column {idx}: an id of {} bytes", b.len()))),
        other => Err(corrupt(format!("column {idx}: an id stored as {}", other.data_type()))),
    }
}

/// A timestamp stored as unix microseconds.
pub(crate) fn ts(row: &Row<'_>, idx: usize) -> R<Timestamp> {
    match value(row, idx)? {
        ValueRef::Integer(m) => ts_from(m),
        other => Err(corrupt(format!("column {idx}: a time stored as {}", other.data_type()))),
    }
}

/// A timestamp from unix microseconds, if representable.
pub(crate) fn ts_from(m: i64) -> R<Timestamp> {
    Utc.timestamp_micros(m).single().ok_or_else(|| corrupt(format!("time {m} out of range")))
}

/// A timestamp that may be NULL.
pub(crate) fn opt_ts(row: &Row<'_>, idx: usize) -> R<Option<Timestamp>> {
    match value(row, idx)? {
        ValueRef::Null => Ok(None),
        _ => ts(row, idx).map(Some),
    }
}

/// An integer.
pub(crate) fn int(row: &Row<'_>, idx: usize) -> R<i64> {
    match value(row, idx)? {
        ValueRef::Integer(i) => Ok(i),
        other => Err(corrupt(format!("column {idx}: a number stored as {}", other.data_type()))),
    }
}

/// An integer that may be NULL.
pub(crate) fn opt_int(row: &Row<'_>, idx: usize) -> R<Option<i64>> {
    match value(row, idx)? {
        ValueRef::Null => Ok(None),
        _ => int(row, idx).map(Some),
    }
}

/// A UTF-8 text value, borrowed from the row.
pub(crate) fn str_ref<'a>(row: &'a Row<'_>, idx: usize) -> R<&'a str> {
    match value(row, idx)? {
        ValueRef::Text(b) => std::str::from_utf8(b)
            .map_err(|_| corrupt(format!("column {idx}: text is not valid UTF-8"))),
        other => Err(corrupt(format!("column {idx}: text stored as {}", other.data_type()))),
    }
}

/// A UTF-8 text value.
pub(crate) fn text(row: &Row<'_>, idx: usize) -> R<String> {
    str_ref(row, idx).map(str::to_owned)
}

/// A text value that may be NULL.
pub(crate) fn opt_text(row: &Row<'_>, idx: usize) -> R<Option<String>> {
    match value(row, idx)? {
        ValueRef::Null => Ok(None),
        _ => text(row, idx).map(Some),
    }
}

/// A JSON payload, checked to be JSON.
pub(crate) fn payload(row: &Row<'_>, idx: usize) -> R<Box<RawValue>> {
    let s = text(row, idx)?;
    RawValue::from_string(s).map_err(|e| corrupt(format!("stored payload is not JSON: {e}")))
}

/// An event status.
pub(crate) fn status(row: &Row<'_>, idx: usize) -> R<EventStatus> {
    match int(row, idx)? {
        0 => Ok(EventStatus::Pending),
        1 => Ok(EventStatus::Delivered),
        2 => Ok(EventStatus::Failed),
        n => Err(corrupt(format!("unknown event status {n}"))),
    }
}

/// A non-negative integer that fits `T`.
pub(crate) fn unsigned<T: TryFrom<i64>>(row: &Row<'_>, idx: usize) -> R<T> {
    let n = int(row, idx)?;
    T::try_from(n).map_err(|_| corrupt(format!("column {idx}: {n} out of range")))
}

/// The first row of a query, decoded by `f`.
pub(crate) fn query_opt<T, P: rusqlite::Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
    f: impl FnOnce(&Row<'_>) -> R<T>,
) -> R<Option<T>> {
    let mut rows = stmt.query(params).map_err(map_err)?;
    match rows.next().map_err(map_err)? {
        Some(row) => f(row).map(Some),
        None => Ok(None),
    }
}

/// Every row of a query, decoded by `f`.
pub(crate) fn query_vec<T, P: rusqlite::Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
    mut f: impl FnMut(&Row<'_>) -> R<T>,
) -> R<Vec<T>> {
    let mut rows = stmt.query(params).map_err(map_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        out.push(f(row)?);
    }
    Ok(out)
}
