//! Operational events: what the service tells an organization about its own endpoints, in
//! the organization's own stream (the inbox, and every matching endpoint but the subject).
//!
//! A store writes one in the same write as the change it announces
//! ([`EndpointStore::update_endpoint`](super::EndpointStore::update_endpoint) when it
//! enables or disables, [`DeliveryQueue::complete`](super::DeliveryQueue::complete) when a
//! completion disables) — or records it there in an outbox and inserts it from there — so
//! each change is announced exactly once: never twice, and never lost to a crash or an
//! error between the change and its announcement.

use serde::Serialize;

use super::{StoreError, StoreResult};
use crate::clock::Timestamp;
use crate::domain::event::EventRecord;
use crate::domain::{EndpointId, EventId};

/// The type of the event written when one of the organization's endpoints is disabled.
pub const OPERATIONAL_DISABLED: &str = "triggers.endpoint.disabled";

/// The type of the event written when one of the organization's endpoints is enabled again.
pub const OPERATIONAL_ENABLED: &str = "triggers.endpoint.enabled";

/// Announcements recorded with their change but not yet in the organization's stream, in
/// every organization: what
/// [`announcement_backlog`](super::EndpointStore::announcement_backlog) reports. Only a
/// store with an outbox has any, and only for moments (a call that could not move its
/// announcement, a crash).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnnouncementBacklog {
    /// How many wait.
    pub waiting: u64,
    /// How long the oldest of them has waited, by the store's own clock (a database's clock
    /// may differ from this node's); `None` when none waits.
    pub oldest_waited: Option<std::time::Duration>,
}

/// The payload of an operational event.
#[derive(Serialize)]
struct Payload<'a> {
    endpoint_id: EndpointId,
    url: &'a str,
    enabled: bool,
    reason: Option<&'a str>,
}

/// The operational event announcing that `endpoint` (at `url`) is now enabled, or disabled
/// with `reason`: [`OPERATIONAL_ENABLED`] or [`OPERATIONAL_DISABLED`], created `at`, with
/// no dedup id, and not delivered to the endpoint itself (`exclude_endpoint`). A store
/// inserts it as `insert_events` would, with no dedup window.
///
/// ```
/// use triggers_core::store::operational::{endpoint_changed, OPERATIONAL_DISABLED};
/// use triggers_core::EndpointId;
///
/// let id = EndpointId::new();
/// let at = triggers_core::clock::from_micros(0);
/// let event = endpoint_changed(id, "https://hooks.test/in", false, Some("410 Gone"), at)?;
/// assert_eq!(event.event_type, OPERATIONAL_DISABLED);
/// assert_eq!(event.exclude_endpoint, Some(id));
/// assert!(event.payload.get().contains(r#""reason":"410 Gone""#));
/// # Ok::<(), triggers_core::StoreError>(())
/// ```
pub fn endpoint_changed(
    endpoint: EndpointId,
    url: &str,
    enabled: bool,
    reason: Option<&str>,
    at: Timestamp,
) -> StoreResult<EventRecord> {
    let payload = Payload { endpoint_id: endpoint, url, enabled, reason };
    let payload =
        serde_json::value::to_raw_value(&payload).map_err(|e| StoreError::Backend(e.into()))?;
    Ok(EventRecord {
        id: EventId::new(),
        event_type: if enabled { OPERATIONAL_ENABLED } else { OPERATIONAL_DISABLED }.to_owned(),
        payload,
        dedup_id: None,
        created_at: at,
        exclude_endpoint: Some(endpoint),
    })
}
