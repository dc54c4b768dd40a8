//! A delivery's id carries its row's key.
//!
//! The `deliveries` table is keyed by `(endpoint_seq, event_seq)` (migration 0009): an
//! endpoint's deliveries in event order are the table itself, so no separate index has to
//! follow every delivery in and out. The id a worker gets back is therefore not a random
//! UUID but the key and a random tag: `endpoint_seq` in the first 5 bytes, `event_seq` in the
//! next 7 (both big-endian), 4 random bytes last. Completions, releases and heartbeats find
//! the row by primary key and then compare the whole id, so a delivery queued again for the
//! same endpoint and event (a replay) has a new id, and a stale worker's id matches nothing.
//! An id from elsewhere decodes to some key and fails the comparison, like an unknown one.
//!
//! The sequence numbers stay inside the store's process: ids go to the delivery workers and
//! their logs, never into an API answer or a webhook (`webhook-id` is the event id).

use triggers_core::store::StoreResult;
use triggers_core::{DeliveryId, StoreError};
use uuid::Uuid;

/// Bytes of the endpoint's sequence number: 2^40 endpoints.
const ENDPOINT_BYTES: usize = 5;
/// Bytes of the event's sequence number: 2^56 events (at a million a second, two thousand
/// years).
const EVENT_BYTES: usize = 7;

/// The id of a new delivery of event `event_seq` to endpoint `endpoint_seq`. Fails (instead of
/// wrapping) for sequence numbers beyond the id's room, which SQLite's row numbers reach only
/// after far more rows than a database can hold.
pub(crate) fn new_id(endpoint_seq: i64, event_seq: i64) -> StoreResult<DeliveryId> {
    let (Some(endpoint), Some(event)) =
        (fit(endpoint_seq, ENDPOINT_BYTES), fit(event_seq, EVENT_BYTES))
    else {
        return Err(StoreError::Unavailable(format!(
            "delivery key out of range (endpoint {endpoint_seq}, event {event_seq})"
        )));
    };
    let mut bytes = [0u8; 16];
    bytes[..ENDPOINT_BYTES].copy_from_slice(&endpoint[8 - ENDPOINT_BYTES..]);
    bytes[ENDPOINT_BYTES..12].copy_from_slice(&event[8 - EVENT_BYTES..]);
    // Four bytes of a random (version 4) UUID, all random.
    bytes[12..].copy_from_slice(&Uuid::new_v4().as_bytes()[12..]);
    Ok(DeliveryId(Uuid::from_bytes(bytes)))
}

/// The row key `(endpoint_seq, event_seq)` an id points at (any id decodes to some key).
pub(crate) fn key(id: DeliveryId) -> (i64, i64) {
    let b = id.0.as_bytes();
    let mut endpoint = [0u8; 8];
    endpoint[8 - ENDPOINT_BYTES..].copy_from_slice(&b[..ENDPOINT_BYTES]);
    let mut event = [0u8; 8];
    event[8 - EVENT_BYTES..].copy_from_slice(&b[ENDPOINT_BYTES..12]);
    (i64::from_be_bytes(endpoint), i64::from_be_bytes(event))
}

/// `n`'s big-endian bytes if it is not negative and fits in `bytes` bytes.
fn fit(n: i64, bytes: usize) -> Option<[u8; 8]> {
    (n >= 0 && n < 1i64 << (8 * bytes)).then(|| n.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_key_and_differ_per_delivery() {
        for (endpoint, event) in [(1, 1), (0, 0), ((1 << 40) - 1, (1 << 56) - 1), (7, 1 << 33)] {
            let id = new_id(endpoint, event).unwrap();
            assert_eq!(key(id), (endpoint, event));
            assert_ne!(new_id(endpoint, event).unwrap(), id, "a new id for the same key");
        }
    }

    #[test]
    fn keys_beyond_the_room_are_refused() {
        for (endpoint, event) in [(1 << 40, 1), (1, 1 << 56), (-1, 1), (1, -1), (i64::MAX, 1)] {
            assert!(new_id(endpoint, event).is_err(), "{endpoint} {event}");
        }
    }

    #[test]
    fn any_id_decodes_to_a_key() {
        let (endpoint, event) = key(DeliveryId(Uuid::from_bytes([0xff; 16])));
        assert_eq!((endpoint, event), ((1 << 40) - 1, (1 << 56) - 1));
    }
}
