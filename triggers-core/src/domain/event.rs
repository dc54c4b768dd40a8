//! Events: what clients send in, and what is stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{EndpointId, EventId, OrganizationId};
use crate::clock::Timestamp;

/// An event as a client submits it, before validation.
///
/// The payload is kept as the raw JSON text the client sent: it is validated as JSON once and
/// then stored and delivered byte for byte, never re-serialised.
#[derive(Debug, Clone, Deserialize)]
pub struct NewEvent {
    /// The event type, 1–255 characters of `[A-Za-z0-9._:-]`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Any JSON value.
    pub payload: Box<RawValue>,
    /// Optional idempotency key, 1–255 characters: the same `(organization, dedup_id)` within
    /// the dedup window stores nothing new.
    #[serde(default)]
    pub dedup_id: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` with `payload` (a JSON value) and no dedup id.
    ///
    /// ```
    /// let e = triggers_core::NewEvent::new("user.created", &serde_json::json!({"id": 7}));
    /// assert_eq!(e.payload.get(), r#"{"id":7}"#);
    /// ```
    pub fn new(event_type: impl Into<String>, payload: &serde_json::Value) -> Self {
        let payload = serde_json::value::to_raw_value(payload)
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        Self { event_type: event_type.into(), payload, dedup_id: None }
    }

    /// The same event with a dedup id.
    pub fn with_dedup_id(mut self, dedup_id: impl Into<String>) -> Self {
        self.dedup_id = Some(dedup_id.into());
        self
    }
}

/// An event ready to be stored: validated, with its id and creation time assigned.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// UUID v7 id assigned at ingestion.
    pub id: EventId,
    /// The event type (validated).
    pub event_type: String,
    /// The payload as raw JSON.
    pub payload: Box<RawValue>,
    /// The dedup id, if any (validated).
    pub dedup_id: Option<String>,
    /// When the event was accepted.
    pub created_at: Timestamp,
    /// Fan-out skips this endpoint (an operational event about the endpoint itself); `None`
    /// for every event a client sends.
    pub exclude_endpoint: Option<EndpointId>,
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Not yet consumed: deliveries are outstanding, or nobody has acknowledged it.
    Pending,
    /// Every webhook delivery succeeded, or a consumer acknowledged it.
    Delivered,
    /// A webhook delivery exhausted its retries. Still listable; can be replayed or acked.
    Failed,
}

impl EventStatus {
    /// The lowercase name used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Delivered => "delivered",
            EventStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            other => {
                Err(format!("unknown status {other:?}: expected pending, delivered or failed"))
            }
        }
    }
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's id (UUID v7).
    pub id: EventId,
    /// The owning organization.
    pub organization_id: OrganizationId,
    /// The event type.
    pub event_type: String,
    /// The payload as raw JSON, exactly as received.
    pub payload: Box<RawValue>,
    /// The dedup id it was sent with, if any.
    pub dedup_id: Option<String>,
    /// Where the event is in its life.
    pub status: EventStatus,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// When it became `delivered`, if it has.
    pub delivered_at: Option<Timestamp>,
}

impl PartialEq for Event {
    /// Field by field; payloads compare by their JSON text.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.organization_id == other.organization_id
            && self.event_type == other.event_type
            && self.payload.get() == other.payload.get()
            && self.dedup_id == other.dedup_id
            && self.status == other.status
            && self.created_at == other.created_at
            && self.delivered_at == other.delivered_at
    }
}

/// A summary of one stored event: what ingestion answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's id (for a duplicate: the original event's id).
    pub id: EventId,
    /// The event type (for a duplicate: the original's type).
    pub event_type: String,
    /// When it was accepted (for a duplicate: the original's time).
    pub created_at: Timestamp,
}

/// One delivery attempt, as recorded for `GET /api/events/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// The endpoint the attempt went to.
    pub endpoint_id: EndpointId,
    /// When the attempt finished.
    pub at: Timestamp,
    /// The HTTP status the receiver answered, if it answered.
    pub status_code: Option<u16>,
    /// How long the attempt took.
    pub latency_ms: u64,
    /// A short error description for a failed attempt.
    pub error: Option<String>,
}

/// An event with its delivery attempts, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDetail {
    /// The event.
    pub event: Event,
    /// Every recorded attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
}
