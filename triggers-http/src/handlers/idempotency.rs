//! The `Idempotency-Key` request header (IETF httpapi draft) on `POST /api/events` and
//! `POST /api/events/batch`, built on dedup ids.
//!
//! - The key (the header's value, verbatim: quotes included if the client sends the draft's
//!   quoted form) is checked like a dedup id: 1–255 characters, no control characters.
//! - An event without a `dedup_id` takes the key as its dedup id; in a batch, item `i` takes
//!   `"{key}#{i}"` (so the key may have at most 250 characters there). An event with its own
//!   `dedup_id` keeps it: the key does not apply to that event.
//! - When the key finds an earlier event (a duplicate within the dedup window), the request
//!   must carry the same event: same type, same payload text. Then it is answered like any
//!   duplicate (200, the original's id); otherwise 422 `idempotency_key_reused` (in a batch,
//!   in that item's slot), and nothing is stored. An original purged by retention meanwhile
//!   cannot be compared; the request is answered as a duplicate.

use http::HeaderMap;
use triggers_core::{Deliverer, EventId, EventStore, NewEvent, Organization};

use crate::app::App;
use crate::error::ApiError;

const HEADER: &str = "idempotency-key";

/// Longest key on a batch: room for `#` and an item index below 1000.
const MAX_BATCH_KEY: usize = 250;

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError::Invalid { field: "Idempotency-Key".into(), reason: reason.into() }
}

/// The request's key, checked; `None` without the header.
pub(super) fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(invalid("send the header once"));
    }
    let text = value.to_str().map_err(|_| invalid("must be visible ASCII"))?;
    triggers_core::domain::validate::validate_dedup_id(text)
        .map_err(|e| invalid(format!("must be a valid dedup id ({e})")))?;
    Ok(Some(text.to_owned()))
}

/// What the key did to one event: `Some((type, payload))` to compare with an original if the
/// key became its dedup id, `None` if the event carries its own dedup id.
pub(super) type Keyed = Option<(String, Box<serde_json::value::RawValue>)>;

/// Gives `event` the dedup id `dedup` unless it has its own.
pub(super) fn apply(event: &mut NewEvent, dedup: String) -> Keyed {
    if event.dedup_id.is_some() {
        return None;
    }
    event.dedup_id = Some(dedup);
    Some((event.event_type.clone(), event.payload.clone()))
}

/// The request's key, checked for a batch (at most 250 characters).
pub(super) fn batch_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let key = key(headers)?;
    if key.as_ref().is_some_and(|k| k.chars().count() > MAX_BATCH_KEY) {
        return Err(invalid(format!("at most {MAX_BATCH_KEY} characters on a batch")));
    }
    Ok(key)
}

/// The dedup id item `index` of a batch takes from `key`.
pub(super) fn batch_dedup(key: &str, index: usize) -> String {
    format!("{key}#{index}")
}

/// Whether the duplicate `original` found through the key is the event the request carries.
pub(super) async fn same_event<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    org: &Organization,
    original: EventId,
    (event_type, payload): &(String, Box<serde_json::value::RawValue>),
) -> Result<bool, ApiError> {
    match app.ingestor.event(org, original).await {
        Ok(detail) => {
            Ok(detail.event.event_type == *event_type
                && detail.event.payload.get() == payload.get())
        }
        Err(triggers_core::Error::NotFound) => Ok(true),
        Err(e) => Err(e.into()),
    }
}
