//! The OpenAPI components: schemas, headers, security schemes.

use serde_json::{json, Value};

pub(super) const DESCRIPTION: &str = "Event ingestion: send events in, have them delivered to \
signed webhooks with retries, or pull them from an inbox and acknowledge them. \
Authenticate with the `X-API-Key` header. Errors are RFC 9457 `application/problem+json` \
documents with a stable `code`. Every route may also answer 404 `route_not_found` (unknown \
path) and 405 `method_not_allowed` (with an `Allow` header); requests that are not valid \
HTTP/1.1 or whose headers exceed 64 KiB are answered 400 or 431 by the HTTP layer, or the \
connection is closed. Timestamps are RFC 3339 UTC. Request bodies nested deeper than 128 \
levels are 400 `malformed_json`; an event payload may nest at most 100 levels (422). A server \
without an admin token answers every route 421 `host_not_allowed` unless the `Host` is \
`localhost`, a loopback address or one of TRIGGERS_ALLOWED_HOSTS (DNS-rebinding guard).";

pub(super) fn inbox_parameters() -> Value {
    let q = |name: &str, description: &str, schema: Value| {
        json!({ "name": name, "in": "query", "required": false, "description": description,
                "schema": schema })
    };
    json!([
        q(
            "status",
            "Only events with this status",
            json!({ "type": "string", "enum": ["pending", "delivered", "failed"],
                  "default": "pending" })
        ),
        q(
            "type",
            "Only events whose type matches this glob (`*` matches anything)",
            json!({ "type": "string", "minLength": 1, "maxLength": 255 })
        ),
        q(
            "limit",
            "Page size",
            json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 })
        ),
        q("cursor", "The previous page's next_cursor", json!({ "type": "string" })),
    ])
}

fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn nullable(mut v: Value) -> Value {
    if let Some(t) = v.get("type").cloned() {
        v["type"] = json!([t, "null"]);
    }
    v
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn tier() -> Value {
    json!({ "type": "string", "enum": ["free", "starter", "professional", "enterprise"] })
}

fn status() -> Value {
    json!({ "type": "string", "enum": ["pending", "delivered", "failed"] })
}

fn event_type() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9._:-]+$" })
}

fn webhook_properties() -> Value {
    json!({
        "id": uuid(),
        "url": { "type": "string", "format": "uri" },
        "event_type_filter": nullable(json!({ "type": "string" })),
        "enabled": { "type": "boolean" },
        "disabled_reason": nullable(json!({ "type": "string" })),
        "created_at": time(),
        "description": nullable(json!({ "type": "string", "maxLength": 1024 })),
        "headers": headers(),
        "rate_limit": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 10000,
            "description": "Deliveries per second to this endpoint at most" })),
        "concurrency": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 1000,
            "description": "Deliveries in flight to this endpoint at most (the server's \
                            TRIGGERS_ENDPOINT_CONCURRENCY caps it)" })),
    })
}

fn headers() -> Value {
    json!({
        "type": "object", "maxProperties": 20,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "description": "Static headers sent with every delivery. Names are HTTP tokens; \
            values visible ASCII without control characters. The webhook-* signature \
            headers, Host, Content-Length, Content-Type, Transfer-Encoding, Connection, \
            User-Agent and TE cannot be set.",
    })
}

fn ordering() -> Value {
    json!({ "type": "string", "enum": ["parallel", "fifo"], "default": "parallel",
            "description": "parallel: deliveries as they come due, several at once; fifo: \
                            one at a time in event order — event n+1 is not attempted before \
                            event n succeeded or finally failed, retries hold the line" })
}

fn event_properties(with_attempts: bool) -> Value {
    let mut p = json!({
        "id": uuid(),
        "type": event_type(),
        "payload": { "description": "The JSON value sent, verbatim" },
        "dedup_id": nullable(json!({ "type": "string" })),
        "status": status(),
        "created_at": time(),
        "delivered_at": nullable(time()),
    });
    if with_attempts {
        p["attempts"] =
            json!({ "type": "array", "items": { "$ref": "#/components/schemas/Attempt" } });
    }
    p
}

const EVENT_FIELDS: [&str; 7] =
    ["id", "type", "payload", "dedup_id", "status", "created_at", "delivered_at"];

pub(super) fn components() -> Value {
    let mut detail_fields = EVENT_FIELDS.to_vec();
    detail_fields.push("attempts");
    json!({
        "securitySchemes": {
            "ApiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
            "AdminToken": { "type": "http", "scheme": "bearer",
                "description": "Needed for key generation when the server has an admin token" },
            "MetricsToken": { "type": "http", "scheme": "bearer",
                "description": "Needed for /metrics when the server has a metrics token" },
        },
        "headers": {
            "X-RateLimit-Limit": { "description": "Events allowed per minute",
                "schema": { "type": "integer" } },
            "X-RateLimit-Remaining": { "description": "Events that may be sent right now",
                "schema": { "type": "integer" } },
            "X-RateLimit-Reset": { "description": "Seconds until the full allowance is back",
                "schema": { "type": "integer" } },
            "Retry-After": { "description": "Seconds to wait before retrying",
                "schema": { "type": "integer" } },
        },
        "schemas": {
            "Problem": object(&["type", "title", "status", "detail", "code"], json!({
                "type": { "type": "string", "format": "uri-reference" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "code": { "type": "string", "description": "Stable machine code", "enum": [
                    "malformed_json", "not_an_object", "invalid_query", "bad_request",
                    "missing_api_key", "invalid_api_key", "invalid_admin_token",
                    "key_generation_disabled", "route_not_found", "not_found", "method_not_allowed", "request_timeout",
                    "body_too_large", "unsupported_media_type", "invalid_field", "rate_limited",
                    "overloaded", "store_unavailable", "internal_error", "limit_exceeded",
                    "invalid_metrics_token", "metrics_forbidden", "host_not_allowed"] },
                "field": { "type": "string", "description": "The invalid field (422 only)" },
            })),
            "GenerateKeyRequest": object(&["organization_name"], json!({
                "organization_name": { "type": "string", "minLength": 1, "maxLength": 255 },
                "tier": { "allOf": [tier()], "default": "free" },
            })),
            "KeyCreated": object(&["api_key", "organization_id", "organization_name", "tier",
                                   "rate_limit_per_minute"], json!({
                "api_key": { "type": "string" },
                "organization_id": uuid(),
                "organization_name": { "type": "string" },
                "tier": tier(),
                "rate_limit_per_minute": { "type": "integer" },
            })),
            "KeyInfo": object(&["organization_id", "organization_name", "tier",
                                "rate_limit_per_minute", "webhooks"], json!({
                "organization_id": uuid(),
                "organization_name": { "type": "string" },
                "tier": tier(),
                "rate_limit_per_minute": { "type": "integer" },
                "webhooks": { "type": "array", "items": { "$ref": "#/components/schemas/Webhook" } },
            })),
            "ApiKey": object(&["api_key"], json!({ "api_key": { "type": "string" } })),
            "NewEvent": object(&["type", "payload"], json!({
                "type": event_type(),
                "payload": { "description": "Any JSON value nested at most 100 levels deep" },
                "dedup_id": { "type": "string", "minLength": 1, "maxLength": 255 },
            })),
            "Accepted": object(&["id", "status", "type", "created_at"], json!({
                "id": uuid(),
                "status": { "type": "string", "enum": ["accepted", "duplicate"] },
                "type": event_type(),
                "created_at": time(),
            })),
            "BatchRequest": object(&["events"], json!({
                "events": { "type": "array", "minItems": 1, "maxItems": 1000,
                            "items": { "$ref": "#/components/schemas/NewEvent" } },
            })),
            "BatchResults": object(&["results"], json!({
                "results": { "type": "array", "items": { "oneOf": [
                    { "$ref": "#/components/schemas/Accepted" },
                    object(&["error"], json!({ "error": { "$ref": "#/components/schemas/Problem" } })),
                ] } },
            })),
            "Attempt": object(&["endpoint_id", "at", "status_code", "latency_ms", "error"], json!({
                "endpoint_id": uuid(),
                "at": time(),
                "status_code": nullable(json!({ "type": "integer" })),
                "latency_ms": { "type": "integer" },
                "error": nullable(json!({ "type": "string" })),
            })),
            "Event": object(&EVENT_FIELDS, event_properties(false)),
            "EventDetail": object(&detail_fields, event_properties(true)),
            "InboxPage": object(&["events", "next_cursor"], json!({
                "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } },
                "next_cursor": nullable(json!({ "type": "string",
                    "description": "Set when more events follow: the page ended at `limit` \
                                    events or at the byte budget (TRIGGERS_MAX_PAGE_BYTES)" })),
            })),
            "IdStatus": object(&["id", "status"], json!({ "id": uuid(), "status": status() })),
            "AckRequest": object(&["ids"], json!({
                "ids": { "type": "array", "maxItems": 1000, "items": { "type": "string" } },
            })),
            "AckResult": object(&["acknowledged", "not_found"], json!({
                "acknowledged": { "type": "array", "items": { "type": "string" } },
                "not_found": { "type": "array", "items": { "type": "string" },
                    "description": "Unknown, foreign or malformed ids, as sent" },
            })),
            "WebhookConfigRequest": {
                "type": "object",
                "properties": {
                    "url": { "type": "string", "format": "uri", "maxLength": 2048,
                             "description": "http or https, with a host, an optional port \
                                             1-65535 and no user name or password" },
                    "webhook_url": { "type": "string", "format": "uri", "maxLength": 2048,
                                     "description": "Alias of url" },
                    "event_type_filter": { "type": "string",
                        "description": "Glob over event types; `*` matches anything" },
                    "ordering": ordering(),
                },
                "anyOf": [ { "required": ["url"] }, { "required": ["webhook_url"] } ],
            },
            "WebhookCreated": {
                "type": "object",
                "required": ["id", "url", "event_type_filter", "secret", "enabled"],
                "properties": {
                    "id": uuid(),
                    "url": { "type": "string", "format": "uri" },
                    "event_type_filter": nullable(json!({ "type": "string" })),
                    "secret": { "type": "string", "description": "whsec_…; shown only here" },
                    "enabled": { "type": "boolean" },
                    "created_at": time(),
                    "ordering": ordering(),
                },
            },
            "Webhook": object(&["id", "url", "event_type_filter", "enabled", "disabled_reason"],
                              webhook_properties()),
            "WebhookList": object(&["webhooks"], json!({
                "webhooks": { "type": "array", "items": { "$ref": "#/components/schemas/Webhook" } },
            })),
            "Secret": object(&["secret"], json!({ "secret": { "type": "string" } })),
            "QueueStats": object(&["pending", "in_flight", "delivered", "failed"], json!({
                "pending": { "type": "integer" },
                "in_flight": { "type": "integer" },
                "delivered": { "type": "integer" },
                "failed": { "type": "integer" },
            })),
            "Health": object(&["status"], json!({ "status": { "type": "string", "const": "ok" } })),
            "WebhookPatch": {
                "type": "object",
                "additionalProperties": false,
                "description": "Absent fields stay as they are; null clears an optional one.",
                "properties": {
                    "url": { "type": "string", "format": "uri",
                             "description": "http or https; checked like on creation" },
                    "event_type_filter": nullable(json!({ "type": "string" })),
                    "enabled": { "type": "boolean", "description": "true re-enables a disabled \
                        endpoint (clearing disabled_reason); false disables it and fails its \
                        outstanding deliveries (recover them later)" },
                    "headers": nullable(headers()),
                    "rate_limit": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 10000 })),
                    "concurrency": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                    "description": nullable(json!({ "type": "string", "maxLength": 1024 })),
                    "ordering": {
                        "type": "string", "enum": ["parallel", "fifo"],
                        "description": "Switch the delivery ordering (see WebhookConfigRequest). \
                            To parallel: the line's waiting deliveries are released at once. \
                            To fifo: deliveries queued from then on form the line (those \
                            already queued stay parallel). null is refused.",
                    },
                },
            },
            "RecoverRequest": object(&["since"], json!({
                "since": time(),
                "until": time(),
            })),
            "Recovered": object(&["queued", "more"], json!({
                "queued": { "type": "integer", "maximum": 10000,
                            "description": "Failed deliveries queued again by this call" },
                "more": { "type": "boolean",
                          "description": "Failed deliveries of the window remain: call again" },
            })),
        },
    })
}
