//! What the store benches share.

use triggers::store::{Completion, CompletionState, Delivery};
use triggers::{AttemptRecord, Timestamp};

/// The completion of a delivery that its receiver took at `at` (HTTP 200).
pub(crate) fn delivered(d: &Delivery, at: Timestamp) -> Completion {
    Completion {
        delivery_id: d.id,
        lease_owner: d.lease_owner,
        attempt: d.attempt,
        state: CompletionState::Delivered,
        record: AttemptRecord {
            endpoint_id: d.endpoint_id,
            at,
            status_code: Some(200),
            latency_ms: 3,
            error: None,
        },
        disable_endpoint: None,
    }
}
