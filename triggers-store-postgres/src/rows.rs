//! Turning rows back into domain values. Anything that does not parse is `Corrupt`.

use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::types::Uuid;
use sqlx::Row;
use triggers_core::domain::event::AttemptRecord;
use triggers_core::store::StoreResult;
use triggers_core::{
    DeliveryOrdering, Endpoint, Event, EventStatus, Organization, Secret, Tier, Timestamp, TypeGlob,
};

use crate::error::{corrupt, map};

/// Columns read by [`event`], in this order.
pub(crate) const EVENT_COLUMNS: &str =
    "id, organization_id, event_type, payload, dedup_id, status, created_at, delivered_at";

/// Columns read by [`endpoint`].
pub(crate) const ENDPOINT_COLUMNS: &str =
    "id, organization_id, url, type_filter, secret, enabled, disabled_reason, created_at, \
     description, headers, rate_limit, concurrency, ordering";

/// Columns read by [`organization`].
pub(crate) const ORG_COLUMNS: &str = "id, name, tier, created_at";

/// A typed column, with decode failures classified.
pub(crate) fn get<'r, T>(row: &'r PgRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col).map_err(map)
}

/// Stored JSON text back into a raw JSON value.
pub(crate) fn raw_json(text: String) -> StoreResult<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| corrupt("stored payload is not JSON", e))
}

fn status(s: &str) -> StoreResult<EventStatus> {
    s.parse().map_err(|e| corrupt("event status", e))
}

/// Parses a stored signing secret.
pub(crate) fn secret(s: String) -> StoreResult<Secret> {
    Secret::parse(s).map_err(|e| corrupt("endpoint secret", e))
}

/// An event from a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event(row: &PgRow) -> StoreResult<Event> {
    let status_text: String = get(row, "status")?;
    Ok(Event {
        id: get::<Uuid>(row, "id")?.into(),
        organization_id: get::<Uuid>(row, "organization_id")?.into(),
        event_type: get(row, "event_type")?,
        payload: raw_json(get(row, "payload")?)?,
        dedup_id: get(row, "dedup_id")?,
        status: status(&status_text)?,
        created_at: get(row, "created_at")?,
        delivered_at: get::<Option<Timestamp>>(row, "delivered_at")?,
    })
}

/// An endpoint from a row selected with [`ENDPOINT_COLUMNS`].
pub(crate) fn endpoint(row: &PgRow) -> StoreResult<Endpoint> {
    let filter: Option<String> = get(row, "type_filter")?;
    let event_type_filter = filter
        .map(|f| TypeGlob::parse(&f).map_err(|e| corrupt("endpoint type filter", e)))
        .transpose()?;
    Ok(Endpoint {
        id: get::<Uuid>(row, "id")?.into(),
        organization_id: get::<Uuid>(row, "organization_id")?.into(),
        url: get(row, "url")?,
        event_type_filter,
        secret: secret(get(row, "secret")?)?,
        enabled: get(row, "enabled")?,
        disabled_reason: get(row, "disabled_reason")?,
        created_at: get(row, "created_at")?,
        description: get(row, "description")?,
        headers: crate::lifecycle::decode_headers(get(row, "headers")?)?,
        rate_limit: crate::lifecycle::decode_limit(get(row, "rate_limit")?)?,
        concurrency: crate::lifecycle::decode_limit(get(row, "concurrency")?)?,
        ordering: DeliveryOrdering::parse(get(row, "ordering")?)
            .map_err(|e| corrupt("endpoint ordering", e))?,
    })
}

/// An organization from a row selected with [`ORG_COLUMNS`].
pub(crate) fn organization(row: &PgRow) -> StoreResult<Organization> {
    let tier: String = get(row, "tier")?;
    Ok(Organization {
        id: get::<Uuid>(row, "id")?.into(),
        name: get(row, "name")?,
        tier: tier.parse::<Tier>().map_err(|e| corrupt("organization tier", e))?,
        created_at: get(row, "created_at")?,
    })
}

/// A non-negative count from a `bigint` column.
pub(crate) fn count(row: &PgRow, col: &str) -> StoreResult<u64> {
    let n: i64 = get(row, col)?;
    u64::try_from(n).map_err(|e| corrupt("count", e))
}

/// An attempt record from a row with `endpoint_id, at, status_code, latency_ms, error`.
pub(crate) fn attempt(row: &PgRow) -> StoreResult<AttemptRecord> {
    let status: Option<i32> = get(row, "status_code")?;
    let latency: i64 = get(row, "latency_ms")?;
    Ok(AttemptRecord {
        endpoint_id: get::<Uuid>(row, "endpoint_id")?.into(),
        at: get(row, "at")?,
        status_code: status
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("attempt status code", e))?,
        latency_ms: u64::try_from(latency).unwrap_or(0),
        error: get(row, "error")?,
    })
}
