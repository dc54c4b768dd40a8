//! [`ApiError`]: every way a request can fail, mapped to a status code and an RFC 9457
//! `application/problem+json` body in exactly one place ([`ApiError::into_response`]).

use std::time::Duration;

use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;
use triggers_core::{Error, RateDecision, StoreError, ValidationError};

use crate::respond::{self, Body};

/// Why a request failed. Each variant has one status and one stable machine `code`.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400 `malformed_json`: the body is not JSON (syntax error, truncated, not UTF-8, too deep).
    MalformedJson(String),
    /// 400 `not_an_object`: the body is JSON but not an object.
    NotAnObject,
    /// 400 `invalid_query`: a query parameter is malformed.
    InvalidQuery(String),
    /// 400 `bad_request`: the body could not be read.
    BadBody,
    /// 401 `missing_api_key`.
    MissingApiKey,
    /// 401 `invalid_api_key`: unknown or rotated away.
    InvalidApiKey,
    /// 401 `invalid_admin_token`: key generation needs the admin bearer token.
    InvalidAdminToken,
    /// 403 `key_generation_disabled`: the service's admin policy is `Closed`.
    KeyGenerationDisabled,
    /// 401 `invalid_metrics_token`: `/metrics` needs the metrics bearer token.
    InvalidMetricsToken,
    /// 403 `metrics_forbidden`: no metrics token is configured and the server is not bound
    /// to a loopback address.
    MetricsForbidden,
    /// 421 `host_not_allowed`: without an admin token only loopback `Host`s (and
    /// `ServerConfig::allowed_hosts`) are served, against DNS rebinding.
    HostNotAllowed,
    /// 404 `route_not_found`.
    RouteNotFound,
    /// 404 `not_found`: no such item for this organization (also malformed ids).
    NotFound(&'static str),
    /// 405 `method_not_allowed`, with the `Allow` header.
    MethodNotAllowed(String),
    /// 408 `request_timeout`: the body did not arrive in time.
    BodyTimeout,
    /// 413 `body_too_large`.
    BodyTooLarge(usize),
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType,
    /// 422 `invalid_field`: valid JSON with an invalid field.
    Invalid { field: String, reason: String },
    /// 429 `rate_limited`.
    RateLimited(RateDecision),
    /// 422 `limit_exceeded`: a per-organization limit is reached (which one, and its value).
    LimitExceeded { limit: &'static str, max: u64 },
    /// 422 `idempotency_key_reused`: an `Idempotency-Key` seen before came with another body.
    IdempotencyKeyReused,
    /// 503 `overloaded`.
    Overloaded(Duration),
    /// 503 `store_unavailable`, with the store's message; the response names only the kind
    /// of cause ([`public_cause`]), the log has the whole message.
    Unavailable(String),
    /// 500 `internal_error`; the cause is logged, never sent.
    Internal,
}

/// The problem document (RFC 9457) plus our stable `code` and, for 422, the `field`.
#[derive(Debug, Serialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) title: &'static str,
    pub(crate) status: u16,
    pub(crate) detail: String,
    pub(crate) code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
}

/// The `type` URI of a problem code.
pub(crate) fn problem_type(code: &str) -> String {
    format!("urn:triggers:problem:{code}")
}

impl ApiError {
    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::NotAnObject | Self::InvalidQuery(_) | Self::BadBody => {
                StatusCode::BAD_REQUEST
            }
            Self::KeyGenerationDisabled => StatusCode::FORBIDDEN,
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::InvalidAdminToken
            | Self::InvalidMetricsToken => StatusCode::UNAUTHORIZED,
            Self::MetricsForbidden => StatusCode::FORBIDDEN,
            Self::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            Self::RouteNotFound | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::LimitExceeded { .. } | Self::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Overloaded(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::NotAnObject => "not_an_object",
            Self::InvalidQuery(_) => "invalid_query",
            Self::BadBody => "bad_request",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::InvalidAdminToken => "invalid_admin_token",
            Self::KeyGenerationDisabled => "key_generation_disabled",
            Self::InvalidMetricsToken => "invalid_metrics_token",
            Self::MetricsForbidden => "metrics_forbidden",
            Self::HostNotAllowed => "host_not_allowed",
            Self::RouteNotFound => "route_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::BodyTimeout => "request_timeout",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Invalid { .. } => "invalid_field",
            Self::RateLimited(_) => "rate_limited",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Overloaded(_) => "overloaded",
            Self::Unavailable(_) => "store_unavailable",
            Self::Internal => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "Malformed JSON",
            Self::NotAnObject => "Body is not a JSON object",
            Self::InvalidQuery(_) => "Invalid query",
            Self::BadBody => "Bad request",
            Self::MissingApiKey => "Missing API key",
            Self::InvalidApiKey => "Invalid API key",
            Self::InvalidAdminToken => "Admin token required",
            Self::KeyGenerationDisabled => "Key generation disabled",
            Self::InvalidMetricsToken => "Metrics token required",
            Self::MetricsForbidden => "Metrics not served here",
            Self::HostNotAllowed => "Host not allowed",
            Self::RouteNotFound => "No such route",
            Self::NotFound(_) => "Not found",
            Self::MethodNotAllowed(_) => "Method not allowed",
            Self::BodyTimeout => "Request timeout",
            Self::BodyTooLarge(_) => "Body too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Invalid { .. } => "Invalid field",
            Self::RateLimited(_) => "Rate limit exceeded",
            Self::LimitExceeded { .. } => "Limit exceeded",
            Self::IdempotencyKeyReused => "Idempotency key reused",
            Self::Overloaded(_) => "Overloaded",
            Self::Unavailable(_) => "Store unavailable",
            Self::Internal => "Internal error",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::MalformedJson(why) => format!("the body is not valid JSON: {why}"),
            Self::NotAnObject => "the body must be a JSON object".into(),
            Self::InvalidQuery(why) => why.clone(),
            Self::BadBody => "the request body could not be read".into(),
            Self::MissingApiKey => "send your API key in the X-API-Key header".into(),
            Self::InvalidApiKey => "the API key is unknown or was rotated".into(),
            Self::InvalidAdminToken => {
                "key generation needs `Authorization: Bearer <admin token>`".into()
            }
            Self::KeyGenerationDisabled => {
                "organizations are not created over HTTP here; ask the operator for a key".into()
            }
            Self::InvalidMetricsToken => {
                "/metrics needs `Authorization: Bearer <metrics token>`".into()
            }
            Self::MetricsForbidden => {
                "without a metrics token (TRIGGERS_METRICS_TOKEN) /metrics is served on \
                 loopback addresses only"
                    .into()
            }
            Self::HostNotAllowed => {
                "this server has no admin token and answers only requests addressed to \
                 localhost, a loopback address or a host in TRIGGERS_ALLOWED_HOSTS"
                    .into()
            }
            Self::RouteNotFound => "no route matches this path".into(),
            Self::NotFound(what) => format!("no such {what}"),
            Self::MethodNotAllowed(allow) => format!("this route allows {allow}"),
            Self::BodyTimeout => "the request body did not arrive in time".into(),
            Self::BodyTooLarge(limit) => format!("the body exceeds the limit of {limit} bytes"),
            Self::UnsupportedMediaType => "send the body as Content-Type: application/json".into(),
            Self::Invalid { field, reason } => format!("{field}: {reason}"),
            Self::RateLimited(d) => format!(
                "the limit of {} events per minute is spent; retry in {} s",
                d.limit,
                retry_secs(d.retry_after.unwrap_or_default())
            ),
            Self::Overloaded(after) => {
                format!("the server cannot keep up; retry in {} s", retry_secs(*after))
            }
            Self::LimitExceeded { limit, max } => {
                format!("the limit of {max} {limit} is reached")
            }
            Self::IdempotencyKeyReused => "this Idempotency-Key was used with a different event \
                (type or payload) within the dedup window; use a new key for a new event"
                .to_owned(),
            Self::Unavailable(why) => {
                format!("the store is unavailable ({}); retry later", public_cause(why))
            }
            Self::Internal => "an internal error occurred; it has been logged".into(),
        }
    }

    /// The problem document.
    pub(crate) fn problem(&self) -> Problem {
        let code = self.code();
        Problem {
            kind: problem_type(code),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(),
            code,
            field: match self {
                Self::Invalid { field, .. } => Some(field.clone()),
                _ => None,
            },
        }
    }

    /// The complete response: status, problem body and the headers this error calls for.
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut res = respond::json_with(self.status(), &self.problem());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match &self {
            Self::MethodNotAllowed(allow) => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(ALLOW, v);
                }
            }
            Self::RateLimited(d) => {
                respond::rate_headers(headers, d);
                let after = d.retry_after.unwrap_or(Duration::from_secs(1));
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_secs(after)));
            }
            Self::Overloaded(after) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_secs(*after)));
            }
            Self::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(1u64));
            }
            Self::InvalidAdminToken | Self::InvalidMetricsToken => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of an oversized or late body is not read: close the connection.
            Self::BodyTooLarge(_) | Self::BodyTimeout => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}

/// The kind of cause of a store's `Unavailable` message, in words a client and an operator
/// understand, without host names, ports, database names or credentials (the response of
/// an unauthenticated `/health/ready` must not describe the internal network; the log has
/// the whole message).
pub(crate) fn public_cause(message: &str) -> &'static str {
    const CAUSES: [(&str, &str); 10] = [
        ("the disk is full", "the disk is full"),
        ("disk I/O error", "a disk I/O error"),
        ("connection refused", "the database refused the connection: connection refused"),
        ("does not exist", "the database does not exist"),
        ("authentication failed", "the database rejected the credentials"),
        ("schema is missing", "the database is not migrated yet"),
        ("shutting down", "the database is shutting down"),
        ("administrator command", "the database is shutting down"),
        ("no database connection", "no database connection became free in time"),
        ("database is locked", "the database is locked"),
    ];
    CAUSES
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("it cannot serve requests now", |(_, cause)| cause)
}

/// `text` without the user information of any URL in it (`postgres://user:secret@host` →
/// `postgres://…@host`): a store's message must never carry a password into a log or a
/// response.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || c == '/').unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(user_end) => {
                out.push('…');
                rest = &tail[user_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub(crate) fn retry_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        // The detail is "{field}: {reason}": do not repeat the field of a `Field` error.
        let reason = match &e {
            ValidationError::Field { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        Self::Invalid { field: e.field().to_owned(), reason }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(v) => v.into(),
            Error::RateLimited(d) => Self::RateLimited(d),
            Error::Unauthorized => Self::InvalidApiKey,
            Error::NotFound => Self::NotFound("item"),
            Error::Overloaded(after) => Self::Overloaded(after),
            Error::LimitExceeded { limit, max } => Self::LimitExceeded { limit, max },
            Error::Store(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %redact(&why), "store unavailable");
                Self::Unavailable(why)
            }
            Error::Store(StoreError::Overloaded(why)) => {
                tracing::warn!(error = %why, "store overloaded");
                Self::Overloaded(Duration::from_secs(1))
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_statuses_without_leaking() {
        let store = |e| ApiError::from(Error::Store(e));
        assert_eq!(store(StoreError::Unavailable("db down".into())).status().as_u16(), 503);
        assert_eq!(store(StoreError::Overloaded("full".into())).status().as_u16(), 503);
        let internal = store(StoreError::Corrupt("secret table name".into()));
        assert_eq!(internal.status().as_u16(), 500);
        assert!(!internal.problem().detail.contains("secret"));
        assert_eq!(ApiError::from(Error::Unauthorized).code(), "invalid_api_key");
        assert_eq!(ApiError::from(Error::NotFound).status().as_u16(), 404);
        let invalid = ApiError::from(Error::Invalid(ValidationError::TypeLength(0)));
        assert_eq!(invalid.status().as_u16(), 422);
        assert_eq!(invalid.problem().field.as_deref(), Some("type"));
        let url =
            ApiError::from(ValidationError::Field { field: "url", reason: "bad port".into() });
        assert_eq!(url.problem().detail, "url: bad port");
    }

    #[test]
    fn unavailable_says_why_without_credentials() {
        let why = "cannot connect to postgres://app:hunter2@db:5432/x: connection refused";
        let err = ApiError::from(Error::Store(StoreError::Unavailable(why.into())));
        assert_eq!(err.status().as_u16(), 503);
        let detail = err.problem().detail;
        assert!(detail.contains("connection refused"), "{detail}");
        assert!(!detail.contains("hunter2") && !detail.contains("db:5432"), "{detail}");
        let full = ApiError::Unavailable("the disk is full: nothing was written (/srv/x)".into());
        let detail = full.problem().detail;
        assert_eq!(detail, "the store is unavailable (the disk is full); retry later");
        let other = ApiError::Unavailable("writer gone at /srv/db".into()).problem().detail;
        assert!(!other.contains("/srv"), "{other}");
        assert_eq!(redact("a://u:p@h/x and b://h2/y c://@h3"), "a://…@h/x and b://h2/y c://…@h3");
        assert_eq!(redact("no url: the disk is full"), "no url: the disk is full");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(6000)), 6);
        assert_eq!(retry_secs(Duration::from_millis(6001)), 7);
    }

    #[test]
    fn responses_carry_problem_json_and_headers() {
        let decision = RateDecision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset: Duration::from_secs(60),
            retry_after: Some(Duration::from_millis(5500)),
        };
        let res = ApiError::RateLimited(decision).into_response();
        assert_eq!(res.status(), 429);
        let h = res.headers();
        assert_eq!(h[CONTENT_TYPE], "application/problem+json");
        assert_eq!(h[RETRY_AFTER], "6");
        assert_eq!(h["x-ratelimit-limit"], "10");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "60");
        let res = ApiError::MethodNotAllowed("GET, POST".into()).into_response();
        assert_eq!(res.headers()[ALLOW], "GET, POST");
    }
}
