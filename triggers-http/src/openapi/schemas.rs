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

/// An optional query parameter.
fn q(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description,
            "schema": schema })
}

fn limit_parameter() -> Value {
    q(
        "limit",
        "Page size",
        json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }),
    )
}

fn cursor_parameter(kind: Cursor) -> Value {
    q(
        "cursor",
        "The previous page's next_cursor (opaque)",
        json!({ "type": "string", "pattern": cursor_pattern(kind) }),
    )
}

/// The query of `GET /api/webhooks/{id}/attempts`.
pub(super) fn attempts_parameters() -> Vec<Value> {
    vec![
        q(
            "status",
            "Only successful or only failed attempts",
            json!({ "type": "string", "enum": ["success", "failure"] }),
        ),
        q("since", "Only attempts that finished at or after this time", time()),
        limit_parameter(),
        cursor_parameter(Cursor::Attempts),
    ]
}

/// The `Idempotency-Key` header (IETF httpapi draft), of at most `max` characters.
pub(super) fn idempotency_key(max: u32) -> Value {
    json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Makes a retry safe: an event without a dedup_id takes the key as its \
            dedup_id (in a batch, item i takes `{key}#{i}`). A key seen within the dedup window \
            with the same event answers like a duplicate (200, the original's id); with another \
            type or payload it is 422 idempotency_key_reused (in a batch, in that item's slot). \
            An event with its own dedup_id keeps it (the key does not apply to it).",
        "schema": { "type": "string", "minLength": 1, "maxLength": max,
                    "pattern": format!("^[!-~](?:[ -~]{{0,{}}}[!-~])?$", max - 2) },
    })
}

/// The query of `GET /api/deliveries`.
pub(super) fn deliveries_parameters() -> Vec<Value> {
    vec![
        q("endpoint_id", "Only this endpoint's deliveries (404 if it is not yours)", uuid()),
        q(
            "status",
            "Only deliveries with this status",
            json!({ "type": "string", "enum": ["pending", "in_flight", "delivered", "failed"] }),
        ),
        limit_parameter(),
        cursor_parameter(Cursor::Deliveries),
    ]
}

pub(super) fn inbox_parameters() -> Value {
    json!([
        q(
            "status",
            "Only events with this status (`all`: every status)",
            json!({ "type": "string", "enum": ["pending", "delivered", "failed", "all"],
                  "default": "pending" })
        ),
        q("type", "Only events whose type matches this glob (`*` matches anything)", type_glob()),
        q(
            "limit",
            "Page size",
            json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 })
        ),
        cursor_parameter(Cursor::Inbox),
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

/// Text of 1–`max` characters without control characters (C0, DEL, C1), as the server
/// checks names, dedup ids and descriptions.
fn plain_text(min: u32, max: u32) -> Value {
    json!({ "type": "string", "minLength": min, "maxLength": max,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$" })
}

/// An organization name: like [`plain_text`], and not only white space (it is trimmed).
fn org_name() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 255,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
            "description": "Leading and trailing white space is trimmed" })
}

/// A type filter: 1–255 characters of the event type alphabet and `*`.
fn type_glob() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9._:*-]+$",
            "description": "Glob over event types; `*` matches any run of characters" })
}

/// A cursor as the server hands them out: base64url (no padding) of exactly the bytes it
/// encoded; empty means the first page. Anything else is 400 `invalid_query`.
pub(super) fn cursor_pattern(kind: Cursor) -> &'static str {
    match kind {
        // 16 bytes: 22 characters, the last one carrying 2 bits and 4 zero bits.
        Cursor::Inbox => "^(?:[A-Za-z0-9_-]{21}[AQgw])?$",
        // The tag `a` then 16 bytes: 23 characters, the last with 2 zero bits.
        Cursor::Attempts => "^(?:Y[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048])?$",
        // The tag `d` then 32 bytes: 44 characters.
        Cursor::Deliveries => "^(?:Z[A-P][A-Za-z0-9_-]{42})?$",
    }
}

/// Which list a cursor belongs to.
#[derive(Clone, Copy)]
pub(super) enum Cursor {
    Inbox,
    Attempts,
    Deliveries,
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
        "event_type_filter": nullable(type_glob()),
        "enabled": { "type": "boolean" },
        "disabled_reason": nullable(json!({ "type": "string" })),
        "created_at": time(),
        "description": nullable(plain_text(0, 1024)),
        "headers": headers(),
        "rate_limit": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 10000,
            "description": "Deliveries per second to this endpoint at most; it also holds \
                            the endpoint to twice that many deliveries in flight" })),
        "concurrency": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 1000,
            "description": "Deliveries in flight to this endpoint at most (the server's \
                            TRIGGERS_ENDPOINT_CONCURRENCY caps it)" })),
    })
}

/// A header name the server accepts: an HTTP token (RFC 9110) that is not one of the
/// reserved names, in any letter case.
fn header_name_pattern() -> String {
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let reserved: Vec<String> =
        triggers_core::domain::webhook::RESERVED_HEADERS.iter().map(|n| any_case(n)).collect();
    format!("^(?!(?:{})$)[!#$%&'*+.^_`|~0-9A-Za-z-]{{1,256}}$", reserved.join("|"))
}

fn headers() -> Value {
    json!({
        "type": "object", "maxProperties": 20,
        "propertyNames": { "pattern": header_name_pattern() },
        "additionalProperties": { "type": "string", "maxLength": 4096,
                                  "pattern": "^(?:[!-~](?:[ \\t!-~]*[!-~])?)?$" },
        "description": "Static headers sent with every delivery. Names are HTTP tokens; \
            values visible ASCII without control characters. The webhook-* signature \
            headers, Host, Content-Length, Content-Type, Transfer-Encoding, Connection, \
            User-Agent and TE cannot be set, and a name may be given once in any letter case \
            (`X-A` and `x-a` together are 422).",
    })
}

fn ordering() -> Value {
    json!({ "type": ["string", "null"], "enum": ["parallel", "fifo", null], "default": "parallel",
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
                    "invalid_metrics_token", "metrics_forbidden", "host_not_allowed",
                    "idempotency_key_reused"] },
                "field": { "type": "string", "description": "The invalid field (422 only)" },
            })),
            "GenerateKeyRequest": {
                "type": "object",
                "description": "`org_name` is accepted instead of `organization_name` (the \
                                original API's name); send one of them",
                "properties": {
                    "organization_name": org_name(),
                    "org_name": org_name(),
                    "tier": { "type": ["string", "null"],
                              "enum": ["free", "starter", "professional", "enterprise", "pro",
                                       null],
                              "default": "free",
                              "description": "`pro` is an alias of `professional`; null or \
                                              absent: free" },
                },
                "oneOf": [
                    { "required": ["organization_name"] },
                    { "required": ["org_name"] },
                ],
            },
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
                "payload": { "description": "Any JSON value nested at most 100 levels deep; \
                    its JSON text at most TRIGGERS_MAX_BODY bytes (default 262144)" },
                "dedup_id": nullable(plain_text(1, 255)),
            })),
            "Accepted": object(&["id", "status", "type", "created_at", "message"], json!({
                "id": uuid(),
                "status": { "type": "string", "enum": ["accepted", "duplicate"] },
                "type": event_type(),
                "created_at": time(),
                "message": { "type": "string",
                             "description": "A sentence for people; clients read `status`" },
            })),
            "BatchRequest": object(&["events"], json!({
                "events": { "type": "array", "minItems": 1, "maxItems": 1000,
                            "items": { "description": "A NewEvent. Each item is checked on \
                                its own: one that is not a valid NewEvent gets `{error}` in its \
                                slot of the 200 answer, and the others are still ingested." } },
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
                                             1-65535 and no user name or password; a target \
                                             the server's address policy refuses (loopback, \
                                             private, …) is 422 naming TRIGGERS_WEBHOOK_ALLOW" },
                    "webhook_url": { "type": "string", "format": "uri", "maxLength": 2048,
                                     "description": "Alias of url" },
                    "event_type_filter": nullable(type_glob()),
                    "ordering": ordering(),
                },
                "description": "Send one of url and webhook_url (an alias), not both",
                "oneOf": [ { "required": ["url"] }, { "required": ["webhook_url"] } ],
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
            "Health": object(&["status", "timestamp"], json!({
                "status": { "type": "string", "const": "ok" },
                "timestamp": time(),
            })),
            "WebhookPatch": {
                "type": "object",
                "additionalProperties": false,
                "description": "Absent fields stay as they are; null clears an optional one.",
                "properties": {
                    "url": nullable(json!({ "type": "string", "format": "uri",
                             "description": "http or https; checked like on creation; null is \
                                             the same as absent (the URL stays)" })),
                    "event_type_filter": nullable(type_glob()),
                    "enabled": { "type": ["boolean", "null"], "description": "true re-enables a \
                        disabled endpoint (clearing disabled_reason); false disables it and \
                        fails its outstanding deliveries (recover them later); null: unchanged" },
                    "headers": nullable(headers()),
                    "rate_limit": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 10000 })),
                    "concurrency": nullable(json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                    "description": nullable(plain_text(0, 1024)),
                    "ordering": {
                        "type": "string", "enum": ["parallel", "fifo"],
                        "description": "Switch the delivery ordering (see WebhookConfigRequest). \
                            To parallel: the line's waiting deliveries are released at once. \
                            To fifo: deliveries queued from then on form the line (those \
                            already queued stay parallel). null is refused.",
                    },
                },
            },
            "EndpointAttempt": object(
                &["event_id", "event_type", "endpoint_id", "at", "success", "status_code",
                  "latency_ms", "error"],
                json!({
                    "event_id": uuid(),
                    "event_type": event_type(),
                    "endpoint_id": uuid(),
                    "at": time(),
                    "success": { "type": "boolean" },
                    "status_code": nullable(json!({ "type": "integer" })),
                    "latency_ms": { "type": "integer", "minimum": 0 },
                    "error": nullable(json!({ "type": "string", "maxLength": 500 })),
                }),
            ),
            "AttemptsPage": object(&["attempts", "next_cursor"], json!({
                "attempts": { "type": "array",
                              "items": { "$ref": "#/components/schemas/EndpointAttempt" } },
                "next_cursor": nullable(json!({ "type": "string",
                    "description": "Set when older attempts follow" })),
            })),
            "Delivery": object(
                &["event_id", "event_type", "event_created_at", "endpoint_id", "status",
                  "attempts", "next_attempt_at", "lease_expires_at", "delivered_at",
                  "failed_at", "reason"],
                json!({
                    "event_id": uuid(),
                    "event_type": event_type(),
                    "event_created_at": time(),
                    "endpoint_id": uuid(),
                    "status": { "type": "string",
                                "enum": ["pending", "in_flight", "delivered", "failed"] },
                    "attempts": nullable(json!({ "type": "integer", "minimum": 0,
                        "description": "pending: attempts made so far; in_flight: the attempt \
                                        being made; otherwise null" })),
                    "next_attempt_at": nullable(json!({ "type": "string", "format": "date-time",
                        "description": "pending only" })),
                    "lease_expires_at": nullable(json!({ "type": "string", "format": "date-time",
                        "description": "in_flight only" })),
                    "delivered_at": nullable(json!({ "type": "string", "format": "date-time",
                        "description": "delivered only: when the successful attempt finished" })),
                    "failed_at": nullable(json!({ "type": "string", "format": "date-time",
                        "description": "failed only" })),
                    "reason": nullable(json!({ "type": "string",
                        "description": "failed only: the last error, or why the endpoint was \
                                        disabled (endpoint_disabled when it was disabled when \
                                        the event arrived)" })),
                }),
            ),
            "DeliveriesPage": object(&["deliveries", "next_cursor"], json!({
                "deliveries": { "type": "array",
                                "items": { "$ref": "#/components/schemas/Delivery" } },
                "next_cursor": nullable(json!({ "type": "string",
                    "description": "Set when older deliveries follow" })),
            })),
            "RecoverRequest": {
                "type": "object",
                "required": ["since"],
                "additionalProperties": false,
                "properties": {
                    "since": time(),
                    "until": nullable(json!({ "type": "string", "format": "date-time",
                        "description": "Exclusive; not after since: an empty window" })),
                },
            },
            "Recovered": object(&["queued", "more"], json!({
                "queued": { "type": "integer", "maximum": 10000,
                            "description": "Failed deliveries queued again by this call" },
                "more": { "type": "boolean",
                          "description": "Failed deliveries of the window remain: call again" },
            })),
        },
    })
}
