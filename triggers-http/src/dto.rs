//! Request and response bodies. Field names are the contract of SPEC §5.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use triggers_core::store::QueueStats;
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
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
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
}

impl From<Ingested> for Accepted {
    fn from(i: Ingested) -> Self {
        Self {
            id: i.id,
            status: if i.duplicate { "duplicate" } else { "accepted" },
            event_type: i.event_type,
            created_at: i.created_at,
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
    pub(crate) rate_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) concurrency: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) description: Option<Option<String>>,
    /// `parallel` or `fifo`; `null` is refused (an ordering cannot be cleared).
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) ordering: Option<Option<String>>,
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
}
