//! Building responses: JSON bodies, rate-limit headers, timestamps.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::{Serialize, Serializer};
use triggers_core::{RateDecision, Timestamp};

/// The body type of every response.
pub(crate) type Body = Full<Bytes>;

/// `X-RateLimit-Limit`.
pub(crate) static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub(crate) static X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the full allowance is back.
pub(crate) static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A response with `status` and `value` serialised as `application/json`.
pub(crate) fn json_with<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(status, "application/json", Bytes::from(bytes)),
        Err(e) => {
            // Only non-string map keys or failing Serialize impls can get here: none of ours.
            tracing::error!(error = %e, "serialising a response failed");
            let body = Bytes::from_static(
                br#"{"type":"urn:triggers:problem:internal_error","title":"Internal error","status":500,"detail":"an internal error occurred; it has been logged","code":"internal_error"}"#,
            );
            with_body(StatusCode::INTERNAL_SERVER_ERROR, "application/problem+json", body)
        }
    }
}

/// Like [`json_with`], serialising into a buffer reserved for `size_hint` bytes up front, so a
/// large body (an inbox page) is not copied again and again while its buffer grows.
pub(crate) fn json_sized<T: Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
    size_hint: usize,
) -> Response<Body> {
    let mut buf = Vec::with_capacity(size_hint);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => with_body(status, "application/json", Bytes::from(buf)),
        Err(_) => json_with(status, value),
    }
}

/// A response with a body of the given content type.
pub(crate) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// A response without a body.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    res
}

/// `Cache-Control: no-store` (unless the answer set its own: the dashboard's files) and
/// `X-Content-Type-Options: nosniff`. Answers differ per API key on one URL: no shared cache
/// (a proxy "caching everything") may hand one organization's answer to another, and no
/// browser keeps an organization's events on disk.
pub(crate) fn never_stored(headers: &mut HeaderMap) {
    headers.entry(http::header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(http::header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
}

/// Sets `X-RateLimit-Limit`, `-Remaining` and `-Reset` (whole seconds, rounded up).
pub(crate) fn rate_headers(headers: &mut HeaderMap, d: &RateDecision) {
    let reset = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(d.limit));
    headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(d.remaining));
    headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
}

/// Serialises a timestamp as RFC 3339 UTC with microseconds: `2024-05-01T12:00:00.123456Z`.
pub(crate) fn rfc3339<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 27];
    match format_rfc3339(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        // Years outside 0..=9999 cannot occur for stored timestamps; fall back anyway.
        None => s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
    }
}

/// Formats without chrono's format-string machinery (this is on every response's path).
fn format_rfc3339<'a>(t: &Timestamp, buf: &'a mut [u8; 27]) -> Option<&'a str> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let micros = t.nanosecond() % 1_000_000_000 / 1000;
    let mut put = |at: usize, digits: usize, mut v: u32| {
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 6, micros);
    for (at, sep) in
        [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')]
    {
        buf[at] = sep;
    }
    std::str::from_utf8(buf).ok()
}

/// [`rfc3339`] for an optional timestamp (`null` when absent).
pub(crate) fn rfc3339_opt<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[derive(Serialize)]
    struct T {
        #[serde(serialize_with = "rfc3339")]
        at: Timestamp,
        #[serde(serialize_with = "rfc3339_opt")]
        none: Option<Timestamp>,
    }

    #[test]
    fn fast_formatting_matches_chrono() {
        for (secs, nanos) in
            [(0, 0), (1_700_000_000, 5_000), (253_402_300_799, 999_999_000), (951_782_400, 1)]
        {
            let t = chrono::Utc.timestamp_opt(secs, nanos).unwrap();
            let mut buf = [0u8; 27];
            let fast = format_rfc3339(&t, &mut buf).unwrap().to_owned();
            assert_eq!(fast, t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_micros() {
        let at = chrono::Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap();
        let json = serde_json::to_string(&T { at, none: None }).unwrap();
        assert_eq!(json, r#"{"at":"2023-11-14T22:13:20.123456Z","none":null}"#);
        let parsed = chrono::DateTime::parse_from_rfc3339("2023-11-14T22:13:20.123456Z").unwrap();
        assert_eq!(parsed, at);
    }
}
