//! The OpenAPI 3.1 document served at `GET /openapi.json`.
//!
//! Paths come from the router's table ([`crate::routes`]); each route's operation is written
//! in [`operation`], whose `match` is exhaustive, so a route cannot be served undocumented.

mod schemas;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::router::{routes, Route};

/// What a route needs, for the document.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    ApiKey,
    Admin,
    Metrics,
}

/// One documented operation.
struct Op {
    id: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    /// Success statuses with their schema (`None`: no body).
    ok: &'static [(u16, Option<&'static str>)],
    /// Error statuses (problem+json).
    errors: &'static [u16],
}

/// Errors of routes with a JSON body, authenticated by API key, that hit the store.
const BODY_ERRORS: &[u16] = &[400, 401, 408, 413, 415, 422, 500, 503];
/// Errors of authenticated routes without a body.
const AUTH_ERRORS: &[u16] = &[401, 500, 503];
/// Errors of authenticated routes addressing an item by id.
const ITEM_ERRORS: &[u16] = &[401, 404, 500, 503];

fn operation(route: Route) -> Op {
    let op = |id, summary, auth, request, ok, errors| Op { id, summary, auth, request, ok, errors };
    match route {
        Route::KeysGenerate => op(
            "generateKey",
            "Create an organization and its API key (the only time the key is shown)",
            Auth::Admin,
            Some("GenerateKeyRequest"),
            &[(201, Some("KeyCreated"))],
            &[400, 401, 403, 408, 413, 415, 422, 500, 503],
        ),
        Route::KeysShow => op(
            "showKey",
            "The caller's organization and webhooks",
            Auth::ApiKey,
            None,
            &[(200, Some("KeyInfo"))],
            AUTH_ERRORS,
        ),
        Route::KeysRotate => op(
            "rotateKey",
            "Issue a new API key; the old one stops working at once",
            Auth::ApiKey,
            None,
            &[(200, Some("ApiKey"))],
            AUTH_ERRORS,
        ),
        Route::EventsCreate => op(
            "createEvent",
            "Ingest one event (202), or find the original of a duplicate dedup_id (200); 422 \
             limit_exceeded when the organization keeps as many pending events as \
             TRIGGERS_MAX_PENDING allows (nothing stored or charged)",
            Auth::ApiKey,
            Some("NewEvent"),
            &[(202, Some("Accepted")), (200, Some("Accepted"))],
            &[400, 401, 408, 413, 415, 422, 429, 500, 503],
        ),
        Route::EventsBatch => op(
            "createEvents",
            "Ingest 1-1000 events; one result per item, in order; refused whole with 422 \
             limit_exceeded when its valid events would take the organization past \
             TRIGGERS_MAX_PENDING pending events (nothing stored or charged)",
            Auth::ApiKey,
            Some("BatchRequest"),
            &[(200, Some("BatchResults"))],
            &[400, 401, 408, 413, 415, 422, 429, 500, 503],
        ),
        Route::EventsShow => op(
            "showEvent",
            "One event with its delivery attempts",
            Auth::ApiKey,
            None,
            &[(200, Some("EventDetail"))],
            ITEM_ERRORS,
        ),
        Route::EventsReplay => op(
            "replayEvent",
            "Deliver an event again to its matching webhooks; costs one unit of the rate limit \
             per delivery (at least one), 429 when the allowance is spent, 422 \
             limit_exceeded when it would cost more than the tier's per-minute limit",
            Auth::ApiKey,
            None,
            &[(202, Some("IdStatus"))],
            &[401, 404, 422, 429, 500, 503],
        ),
        Route::Inbox => op(
            "listInbox",
            "A page of events, oldest first (ascending id); follow next_cursor",
            Auth::ApiKey,
            None,
            &[(200, Some("InboxPage"))],
            &[400, 401, 500, 503],
        ),
        Route::AckOne => op(
            "ackEvent",
            "Mark one event delivered (idempotent)",
            Auth::ApiKey,
            None,
            &[(200, Some("IdStatus"))],
            ITEM_ERRORS,
        ),
        Route::AckMany => op(
            "ackEvents",
            "Mark up to 1000 events delivered",
            Auth::ApiKey,
            Some("AckRequest"),
            &[(200, Some("AckResult"))],
            BODY_ERRORS,
        ),
        Route::WebhookCreate => op(
            "createWebhook",
            "Add a webhook endpoint (the only time, besides rotation, the secret is shown); \
             422 limit_exceeded past TRIGGERS_MAX_ENDPOINTS",
            Auth::ApiKey,
            Some("WebhookConfigRequest"),
            &[(201, Some("WebhookCreated"))],
            BODY_ERRORS,
        ),
        Route::WebhookList => op(
            "listWebhooks",
            "The organization's webhook endpoints",
            Auth::ApiKey,
            None,
            &[(200, Some("WebhookList"))],
            AUTH_ERRORS,
        ),
        Route::WebhookDelete => op(
            "deleteWebhook",
            "Delete a webhook endpoint and cancel its outstanding deliveries (an attempt in flight is still recorded when it ends)",
            Auth::ApiKey,
            None,
            &[(204, None)],
            ITEM_ERRORS,
        ),
        Route::WebhookRotateSecret => op(
            "rotateWebhookSecret",
            "Give a webhook a new signing secret; the old one keeps signing for a grace period",
            Auth::ApiKey,
            None,
            &[(200, Some("Secret"))],
            ITEM_ERRORS,
        ),
        Route::QueueStats => op(
            "queueStats",
            "Event counts by status, and deliveries in flight, for the caller",
            Auth::ApiKey,
            None,
            &[(200, Some("QueueStats"))],
            AUTH_ERRORS,
        ),
        Route::Health => op(
            "health",
            "Liveness (the same as /health/live)",
            Auth::None,
            None,
            &[(200, Some("Health"))],
            &[],
        ),
        Route::Live => op(
            "live",
            "Liveness: the process is up",
            Auth::None,
            None,
            &[(200, Some("Health"))],
            &[],
        ),
        Route::Ready => op(
            "ready",
            "Readiness: a store round trip",
            Auth::None,
            None,
            &[(200, Some("Health"))],
            &[503],
        ),
        Route::Metrics => op(
            "metrics",
            "Prometheus metrics (OpenMetrics text); needs the metrics token when one is \
             configured, else is served on loopback binds only (403)",
            Auth::Metrics,
            None,
            &[(200, Some("text"))],
            &[401, 403],
        ),
        Route::OpenApi => {
            op("openapi", "This document", Auth::None, None, &[(200, Some("object"))], &[])
        }
        Route::WebhookShow => op(
            "showWebhook",
            "One webhook endpoint",
            Auth::ApiKey,
            None,
            &[(200, Some("Webhook"))],
            ITEM_ERRORS,
        ),
        Route::WebhookPatch => op(
            "updateWebhook",
            "Change a webhook endpoint; enabled: true re-enables it, false disables it",
            Auth::ApiKey,
            Some("WebhookPatch"),
            &[(200, Some("Webhook"))],
            &[400, 401, 404, 408, 413, 415, 422, 429, 500, 503],
        ),
        Route::WebhookRecover => op(
            "recoverWebhook",
            "Queue again the failed deliveries of an endpoint whose event was created in \
             [since, until); per call at most 10000, the tier's per-minute limit and the \
             remaining allowance, one rate-limit unit each and at least one per call",
            Auth::ApiKey,
            Some("RecoverRequest"),
            &[(202, Some("Recovered"))],
            &[400, 401, 404, 408, 413, 415, 422, 429, 500, 503],
        ),
        Route::WebhookAttempts => op(
            "listWebhookAttempts",
            "An endpoint's delivery attempts, newest first (time, status code, latency, short \
             error); follow next_cursor for older ones",
            Auth::ApiKey,
            None,
            &[(200, Some("AttemptsPage"))],
            &[400, 401, 404, 500, 503],
        ),
        Route::Deliveries => op(
            "listDeliveries",
            "Deliveries of one endpoint or of all the organization's endpoints, newest event \
             first, with their status; follow next_cursor for older ones",
            Auth::ApiKey,
            None,
            &[(200, Some("DeliveriesPage"))],
            &[400, 401, 404, 500, 503],
        ),
        // The browser pages are documented too, so the document lists every route; a client
        // generator can skip them by their `text/*` bodies. 404 when `TRIGGERS_UI=off`.
        Route::Dashboard => op(
            "dashboard",
            "The dashboard (HTML; sign in with an API key)",
            Auth::None,
            None,
            &[(200, Some("html")), (304, None)],
            &[404],
        ),
        Route::DashboardFile => op(
            "dashboardFile",
            "A file of the dashboard (script or style sheet)",
            Auth::None,
            None,
            &[(200, Some("file")), (304, None)],
            &[404],
        ),
        Route::Docs => op(
            "docs",
            "These API docs, interactive (HTML)",
            Auth::None,
            None,
            &[(200, Some("html")), (304, None)],
            &[404],
        ),
        Route::DocsFile => op(
            "docsFile",
            "A file of the API docs (script or style sheet)",
            Auth::None,
            None,
            &[(200, Some("file")), (304, None)],
            &[404],
        ),
    }
}

/// The problem `code`s an error status carries (`ApiError::status` and `ApiError::code`, read
/// the other way round). The document lists them per response, so a client knows which codes
/// to expect and the fuzzer's response check holds the server to them.
fn problem_codes(status: u16) -> &'static [&'static str] {
    match status {
        400 => &["malformed_json", "not_an_object", "invalid_query", "bad_request"],
        401 => {
            &["missing_api_key", "invalid_api_key", "invalid_admin_token", "invalid_metrics_token"]
        }
        403 => &["key_generation_disabled", "metrics_forbidden"],
        404 => &["not_found", "route_not_found"],
        405 => &["method_not_allowed"],
        408 => &["request_timeout"],
        413 => &["body_too_large"],
        415 => &["unsupported_media_type"],
        421 => &["host_not_allowed"],
        422 => &["invalid_field", "limit_exceeded", "idempotency_key_reused"],
        429 => &["rate_limited"],
        500 => &["internal_error"],
        503 => &["overloaded", "store_unavailable"],
        _ => &[],
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

fn response(status: u16, schema: Option<&str>, auth: Auth) -> Value {
    let mut r = Map::new();
    let codes = problem_codes(status);
    let description = if status >= 400 && !codes.is_empty() {
        format!("{}: code {}", reason(status), codes.join(", "))
    } else {
        reason(status).to_owned()
    };
    r.insert("description".into(), json!(description));
    let mut headers = Map::new();
    // Rate headers need a known organization: not on 401.
    if auth == Auth::ApiKey && status != 401 {
        for h in ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"] {
            headers.insert(h.into(), header_ref(h));
        }
    }
    if matches!(status, 429 | 503) {
        headers.insert("Retry-After".into(), header_ref("Retry-After"));
    }
    if !headers.is_empty() {
        r.insert("headers".into(), Value::Object(headers));
    }
    let content = match schema {
        None => None,
        Some("text") => Some(json!({
            "application/openmetrics-text": { "schema": { "type": "string" } }
        })),
        Some("object") => Some(json!({ "application/json": { "schema": { "type": "object" } } })),
        Some("html") => Some(json!({ "text/html": { "schema": { "type": "string" } } })),
        Some("file") => Some(json!({
            "text/javascript": { "schema": { "type": "string" } },
            "text/css": { "schema": { "type": "string" } }
        })),
        Some(name) if status >= 400 => {
            let codes = problem_codes(status);
            let schema = if codes.is_empty() {
                schema_ref(name)
            } else {
                json!({ "allOf": [
                    schema_ref(name),
                    { "type": "object", "properties": { "code": { "enum": codes } } },
                ] })
            };
            Some(json!({ "application/problem+json": { "schema": schema } }))
        }
        Some(name) => Some(json!({ "application/json": { "schema": schema_ref(name) } })),
    };
    if let Some(content) = content {
        r.insert("content".into(), content);
    }
    Value::Object(r)
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

fn operation_json(path: &str, route: Route) -> Value {
    let op = operation(route);
    let mut responses = BTreeMap::new();
    for &(status, schema) in op.ok {
        responses.insert(status.to_string(), response(status, schema, op.auth));
    }
    for &status in op.errors {
        responses.insert(status.to_string(), response(status, Some("Problem"), op.auth));
    }
    // Every route: a server without an admin token refuses foreign `Host`s (DNS rebinding).
    responses.insert("421".into(), response(421, Some("Problem"), Auth::None));
    let mut o = Map::new();
    o.insert("operationId".into(), json!(op.id));
    o.insert("summary".into(), json!(op.summary));
    o.insert(
        "security".into(),
        match op.auth {
            Auth::None => json!([]),
            Auth::ApiKey => json!([{ "ApiKey": [] }]),
            // Without a configured admin token the route is open.
            Auth::Admin => json!([{ "AdminToken": [] }, {}]),
            // Without a configured metrics token the route is open on loopback binds.
            Auth::Metrics => json!([{ "MetricsToken": [] }, {}]),
        },
    );
    if path.contains("{id}") {
        o.insert(
            "parameters".into(),
            json!([{
                "name": "id", "in": "path", "required": true,
                "description": "A UUID; a malformed id is answered like an unknown one (404)",
                "schema": { "type": "string", "format": "uuid" }
            }]),
        );
    }
    if path.contains("{file}") {
        o.insert(
            "parameters".into(),
            json!([{
                "name": "file", "in": "path", "required": true,
                "description": "A file name, e.g. `app.js`; an unknown one is 404",
                "schema": { "type": "string" }
            }]),
        );
    }
    match route {
        Route::Inbox => {
            o.insert("parameters".into(), schemas::inbox_parameters());
        }
        Route::WebhookAttempts => {
            if let Some(Value::Array(params)) = o.get_mut("parameters") {
                params.extend(schemas::attempts_parameters());
            }
        }
        Route::Deliveries => {
            o.insert("parameters".into(), Value::Array(schemas::deliveries_parameters()));
        }
        Route::EventsCreate => {
            o.insert("parameters".into(), json!([schemas::idempotency_key(255)]));
        }
        Route::EventsBatch => {
            o.insert("parameters".into(), json!([schemas::idempotency_key(250)]));
        }
        _ => {}
    }
    if let Some(name) = op.request {
        o.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": { "application/json": { "schema": schema_ref(name) } }
            }),
        );
    }
    o.insert("responses".into(), json!(responses));
    Value::Object(o)
}

/// The document as a JSON value.
pub(crate) fn document() -> Value {
    document_at("")
}

/// The document for an API served under `base_path` (`""`: at the root): `servers` names it,
/// so clients and generated SDKs prefix every path with it.
pub(crate) fn document_at(base_path: &str) -> Value {
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for info in routes() {
        paths
            .entry(info.path)
            .or_default()
            .insert(info.method.to_ascii_lowercase(), operation_json(info.path, info.route));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Triggers API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": schemas::DESCRIPTION,
        },
        "servers": [{ "url": if base_path.is_empty() { "/" } else { base_path } }],
        "paths": paths,
        "components": schemas::components(),
    })
}

/// The document as JSON text for the root mount, built once.
pub(crate) fn document_bytes() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(document().to_string())).clone()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::problem_codes;
    use crate::error::ApiError;

    /// Every error the server can answer is listed under its status, and nowhere else.
    #[test]
    fn every_problem_code_is_listed_under_its_status() {
        let rate = triggers_core::RateDecision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset: Duration::from_secs(1),
            retry_after: Some(Duration::from_secs(1)),
        };
        let errors = [
            ApiError::MalformedJson("x".into()),
            ApiError::NotAnObject,
            ApiError::InvalidQuery("x".into()),
            ApiError::BadBody,
            ApiError::MissingApiKey,
            ApiError::InvalidApiKey,
            ApiError::InvalidAdminToken,
            ApiError::KeyGenerationDisabled,
            ApiError::InvalidMetricsToken,
            ApiError::MetricsForbidden,
            ApiError::HostNotAllowed,
            ApiError::RouteNotFound,
            ApiError::NotFound("event"),
            ApiError::MethodNotAllowed("GET".into()),
            ApiError::BodyTimeout,
            ApiError::BodyTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::Invalid { field: "x".into(), reason: "y".into() },
            ApiError::RateLimited(rate),
            ApiError::LimitExceeded { limit: "endpoints", max: 1 },
            ApiError::IdempotencyKeyReused,
            ApiError::Overloaded(Duration::from_secs(1)),
            ApiError::Unavailable("x".into()),
            ApiError::Internal,
        ];
        let mut listed = 0;
        for e in &errors {
            let status = e.status().as_u16();
            assert!(problem_codes(status).contains(&e.code()), "{} under {status}", e.code());
            listed += 1;
        }
        let all: usize = (400..600).map(|s| problem_codes(s).len()).sum();
        assert_eq!(all, listed, "a listed code no error has");
    }
}
