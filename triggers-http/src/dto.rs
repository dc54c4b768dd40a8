//! Request and response bodies. Field names are the contract of SPEC §5.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use triggers_core::store::{AttemptEntry, DeliveryEntry, DeliveryState, QueueStats};
use triggers_core::{
    AttemptRecord, DeliveryOrdering, Endpoint, EndpointId, Event, EventId, EventStatus, Ingested,
    Timestamp,
};

use crate::error::Problem;
use crate::respond::{rfc3339, rfc3339_opt};

// ---- requests ---------------------------------------------------------------------------

/// `POST /api/keys/generate`.
#[derive(Debug, Deserialize)]
pub(crate) struct GenerateKey {
    /// `org_name` is the original API's name for it (compatibility).
    #[serde(alias = "org_name")]
    pub(crate) organization_name: String,
    #[serde(default)]
    pub(crate) tier: Option<String>,
}

/// `POST /api/events/batch`: items are parsed one by one, so each can fail on its own.
#[derive(Debug, Deserialize)]
pub(crate) struct Batch {
    pub(crate) events: Vec<Box<RawValue>>,
}

/// `POST /api/ack`.
#[derive(Debug, Deserialize)]
pub(crate) struct AckMany {
    pub(crate) ids: Vec<String>,
}

/// `POST /api/webhook/config`; `webhook_url` is an alias of `url`.
#[derive(Debug, Deserialize)]
pub(crate) struct WebhookConfigRequest {
    #[serde(default, deserialize_with = "not_null")]
    pub(crate) url: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub(crate) webhook_url: Option<String>,
    #[serde(default)]
    pub(crate) event_type_filter: Option<String>,
    /// `parallel` (default) or `fifo`.
    #[serde(default)]
    pub(crate) ordering: Option<String>,
}

// ---- responses --------------------------------------------------------------------------

/// 201 of `POST /api/keys/generate`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyCreated<'a> {
    pub(crate) api_key: &'a str,
    pub(crate) organization_id: String,
    pub(crate) organization_name: &'a str,
    pub(crate) tier: &'static str,
    pub(crate) rate_limit_per_minute: u32,
}

/// 200 of `GET /api/keys`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyInfo<'a> {
    pub(crate) organization_id: String,
    pub(crate) organization_name: &'a str,
    pub(crate) tier: &'static str,
    pub(crate) rate_limit_per_minute: u32,
    pub(crate) webhooks: Vec<WebhookView<'a>>,
}

/// 200 of `POST /api/keys/rotate`.
#[derive(Debug, Serialize)]
pub(crate) struct ApiKeyBody<'a> {
    pub(crate) api_key: &'a str,
}

/// 202 / 200 of `POST /api/events`, and each successful batch item.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    pub(crate) id: EventId,
    pub(crate) status: &'static str,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) created_at: Timestamp,
    /// A sentence for people, as in the original API's answers; clients should read `status`.
    pub(crate) message: &'static str,
}

/// `message` of an accepted event.
pub(crate) const ACCEPTED_MESSAGE: &str = "Event accepted for delivery";
/// `message` of a duplicate.
pub(crate) const DUPLICATE_MESSAGE: &str =
    "Duplicate dedup_id within the dedup window; nothing new was stored";

impl From<Ingested> for Accepted {
    fn from(i: Ingested) -> Self {
        Self {
            id: i.id,
            status: if i.duplicate { "duplicate" } else { "accepted" },
            event_type: i.event_type,
            created_at: i.created_at,
            message: if i.duplicate { DUPLICATE_MESSAGE } else { ACCEPTED_MESSAGE },
        }
    }
}

/// One batch result: the single-event body, or `{error: <problem>}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum BatchItem {
    Ok(Accepted),
    Err { error: Problem },
}

/// 200 of `POST /api/events/batch`.
#[derive(Debug, Serialize)]
pub(crate) struct BatchResults {
    pub(crate) results: Vec<BatchItem>,
}

/// One delivery attempt.
#[derive(Debug, Serialize)]
pub(crate) struct AttemptView<'a> {
    pub(crate) endpoint_id: EndpointId,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) at: Timestamp,
    pub(crate) status_code: Option<u16>,
    pub(crate) latency_ms: u64,
    pub(crate) error: Option<&'a str>,
}

impl<'a> From<&'a AttemptRecord> for AttemptView<'a> {
    fn from(a: &'a AttemptRecord) -> Self {
        Self {
            endpoint_id: a.endpoint_id,
            at: a.at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error.as_deref(),
        }
    }
}

/// An event; the payload is embedded verbatim as received.
#[derive(Debug, Serialize)]
pub(crate) struct EventView<'a> {
    pub(crate) id: EventId,
    #[serde(rename = "type")]
    pub(crate) event_type: &'a str,
    pub(crate) payload: &'a RawValue,
    pub(crate) dedup_id: Option<&'a str>,
    pub(crate) status: EventStatus,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) created_at: Timestamp,
    #[serde(serialize_with = "rfc3339_opt")]
    pub(crate) delivered_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<Vec<AttemptView<'a>>>,
}

impl<'a> EventView<'a> {
    /// The event without its attempts (inbox listings).
    pub(crate) fn of(e: &'a Event) -> Self {
        Self {
            id: e.id,
            event_type: &e.event_type,
            payload: &e.payload,
            dedup_id: e.dedup_id.as_deref(),
            status: e.status,
            created_at: e.created_at,
            delivered_at: e.delivered_at,
            attempts: None,
        }
    }
}

/// 200 of `GET /api/inbox`.
#[derive(Debug, Serialize)]
pub(crate) struct InboxBody<'a> {
    pub(crate) events: Vec<EventView<'a>>,
    pub(crate) next_cursor: Option<String>,
}

/// `{id, status}`: replay and single ack.
#[derive(Debug, Serialize)]
pub(crate) struct IdStatus {
    pub(crate) id: EventId,
    pub(crate) status: EventStatus,
}

/// 200 of `POST /api/ack`. Ids are echoed as sent; a malformed id counts as not found.
#[derive(Debug, Serialize)]
pub(crate) struct AckManyBody<'a> {
    pub(crate) acknowledged: Vec<&'a str>,
    pub(crate) not_found: Vec<&'a str>,
}

/// 201 of `POST /api/webhook/config`: the only time (besides rotation) the secret is shown.
#[derive(Debug, Serialize)]
pub(crate) struct WebhookCreated<'a> {
    pub(crate) id: EndpointId,
    pub(crate) url: &'a str,
    pub(crate) event_type_filter: Option<&'a str>,
    pub(crate) secret: &'a str,
    pub(crate) enabled: bool,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) created_at: Timestamp,
    pub(crate) ordering: DeliveryOrdering,
}

/// A webhook endpoint without its secret.
#[derive(Debug, Serialize)]
pub(crate) struct WebhookView<'a> {
    pub(crate) id: EndpointId,
    pub(crate) url: &'a str,
    pub(crate) event_type_filter: Option<&'a str>,
    pub(crate) enabled: bool,
    pub(crate) disabled_reason: Option<&'a str>,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) created_at: Timestamp,
    pub(crate) description: Option<&'a str>,
    /// Custom headers as an object (names as set).
    pub(crate) headers: std::collections::BTreeMap<&'a str, &'a str>,
    pub(crate) rate_limit: Option<u32>,
    pub(crate) concurrency: Option<u32>,
    pub(crate) ordering: DeliveryOrdering,
}

impl<'a> From<&'a Endpoint> for WebhookView<'a> {
    fn from(e: &'a Endpoint) -> Self {
        Self {
            id: e.id,
            url: &e.url,
            event_type_filter: e.event_type_filter.as_ref().map(|g| g.as_str()),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.as_deref(),
            created_at: e.created_at,
            description: e.description.as_deref(),
            headers: e.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            rate_limit: e.rate_limit,
            concurrency: e.concurrency,
            ordering: e.ordering,
        }
    }
}

/// `PATCH /api/webhooks/{id}`: absent fields stay; `null` clears an optional one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookPatch {
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) event_type_filter: Option<Option<String>>,
    #[serde(default)]
    pub(crate) enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) headers: Option<Option<std::collections::BTreeMap<String, String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) rate_limit: Option<Option<WholeNumber>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) concurrency: Option<Option<WholeNumber>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) description: Option<Option<String>>,
    /// `parallel` or `fifo`; `null` is refused (an ordering cannot be cleared).
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) ordering: Option<Option<String>>,
}

/// A field that may be absent (the `default` `None`) but not `null`.
fn not_null<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    String::deserialize(d).map(Some)
}

/// A non-negative whole number that fits `u32`, written as JSON allows it: `5` or `5.0` (JSON
/// Schema calls both integers, so the OpenAPI document's clients may send either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WholeNumber(pub(crate) u32);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let whole = n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX))
                .map(|f| f as u64)
        });
        whole.and_then(|w| u32::try_from(w).ok()).map(WholeNumber).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a whole number from 0 to {}, got {n}",
                u32::MAX
            ))
        })
    }
}

/// A present field: `Some(None)` for `null`, `Some(Some(v))` for a value (absent fields get
/// the `default` `None`).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /api/webhooks/{id}/recover`: RFC 3339 times.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecoverRequest {
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: Option<String>,
}

/// 202 of `POST /api/webhooks/{id}/recover`.
#[derive(Debug, Serialize)]
pub(crate) struct RecoverBody {
    pub(crate) queued: u32,
    pub(crate) more: bool,
}

/// 200 of `GET /api/webhook/config`.
#[derive(Debug, Serialize)]
pub(crate) struct WebhookList<'a> {
    pub(crate) webhooks: Vec<WebhookView<'a>>,
}

/// 200 of `POST /api/webhooks/{id}/rotate-secret`.
#[derive(Debug, Serialize)]
pub(crate) struct SecretBody<'a> {
    pub(crate) secret: &'a str,
}

/// 200 of `GET /api/queue/stats`.
#[derive(Debug, Serialize)]
pub(crate) struct StatsBody {
    pub(crate) pending: u64,
    pub(crate) in_flight: u64,
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
}

impl From<QueueStats> for StatsBody {
    fn from(s: QueueStats) -> Self {
        Self {
            pending: s.pending,
            in_flight: s.in_flight,
            delivered: s.delivered,
            failed: s.failed,
        }
    }
}

/// 200 of the health routes.
#[derive(Debug, Serialize)]
pub(crate) struct StatusOk {
    pub(crate) status: &'static str,
    /// The server's clock (the original API's health answers carry it).
    #[serde(serialize_with = "rfc3339")]
    pub(crate) timestamp: Timestamp,
}

/// One item of `GET /api/webhooks/{id}/attempts`.
#[derive(Debug, Serialize)]
pub(crate) struct EndpointAttemptView<'a> {
    pub(crate) event_id: EventId,
    pub(crate) event_type: &'a str,
    pub(crate) endpoint_id: EndpointId,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) at: Timestamp,
    pub(crate) success: bool,
    pub(crate) status_code: Option<u16>,
    pub(crate) latency_ms: u64,
    pub(crate) error: Option<&'a str>,
}

impl<'a> From<&'a AttemptEntry> for EndpointAttemptView<'a> {
    fn from(a: &'a AttemptEntry) -> Self {
        Self {
            event_id: a.event_id,
            event_type: &a.event_type,
            endpoint_id: a.record.endpoint_id,
            at: a.record.at,
            success: a.record.error.is_none(),
            status_code: a.record.status_code,
            latency_ms: a.record.latency_ms,
            error: a.record.error.as_deref(),
        }
    }
}

/// 200 of `GET /api/webhooks/{id}/attempts`.
#[derive(Debug, Serialize)]
pub(crate) struct AttemptsBody<'a> {
    pub(crate) attempts: Vec<EndpointAttemptView<'a>>,
    pub(crate) next_cursor: Option<String>,
}

/// One item of `GET /api/deliveries`: every key is always present; those that do not apply
/// to the status are `null`.
#[derive(Debug, Serialize)]
pub(crate) struct DeliveryView<'a> {
    pub(crate) event_id: EventId,
    pub(crate) event_type: &'a str,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) event_created_at: Timestamp,
    pub(crate) endpoint_id: EndpointId,
    pub(crate) status: &'static str,
    /// Pending: attempts made so far; in flight: the attempt being made.
    pub(crate) attempts: Option<u32>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub(crate) next_attempt_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub(crate) lease_expires_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub(crate) delivered_at: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub(crate) failed_at: Option<Timestamp>,
    pub(crate) reason: Option<&'a str>,
}

impl<'a> From<&'a DeliveryEntry> for DeliveryView<'a> {
    fn from(d: &'a DeliveryEntry) -> Self {
        let mut view = Self {
            event_id: d.event_id,
            event_type: &d.event_type,
            event_created_at: d.event_created_at,
            endpoint_id: d.endpoint_id,
            status: d.state.status().as_str(),
            attempts: None,
            next_attempt_at: None,
            lease_expires_at: None,
            delivered_at: None,
            failed_at: None,
            reason: None,
        };
        match &d.state {
            DeliveryState::Pending { attempts, next_attempt_at } => {
                view.attempts = Some(*attempts);
                view.next_attempt_at = Some(*next_attempt_at);
            }
            DeliveryState::InFlight { attempt, lease_expires_at } => {
                view.attempts = Some(*attempt);
                view.lease_expires_at = Some(*lease_expires_at);
            }
            DeliveryState::Delivered { at } => view.delivered_at = Some(*at),
            DeliveryState::Failed { at, reason } => {
                view.failed_at = Some(*at);
                view.reason = Some(reason);
            }
        }
        view
    }
}

/// 200 of `GET /api/deliveries`.
#[derive(Debug, Serialize)]
pub(crate) struct DeliveriesBody<'a> {
    pub(crate) deliveries: Vec<DeliveryView<'a>>,
    pub(crate) next_cursor: Option<String>,
}
