//! Reading request bodies (Content-Type, size limit while reading, timeout), parsing JSON
//! objects, and parsing query strings.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::error::Category;
use triggers_core::domain::json::{nested_deeper_than, MAX_BODY_DEPTH};

use crate::error::ApiError;

/// Whether `content_type` is `application/json`, optionally with `charset=utf-8`.
pub(crate) fn is_json(content_type: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(content_type) else { return false };
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        Some(_) => true,
        None => param.trim().is_empty(),
    })
}

/// Checks the Content-Type and the declared length before anything is read.
pub(crate) fn check_headers(headers: &HeaderMap, max: usize) -> Result<(), ApiError> {
    match headers.get(CONTENT_TYPE) {
        Some(ct) if is_json(ct.as_bytes()) => {}
        _ => return Err(ApiError::UnsupportedMediaType),
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::BodyTooLarge(max));
    }
    Ok(())
}

/// Reads the whole body, refusing it as soon as more than `max` bytes arrived (nothing beyond
/// the limit is buffered) or when it takes longer than `timeout`.
pub(crate) async fn read<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge(max))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a request body failed");
            Err(ApiError::BadBody)
        }
    }
}

/// Parses a JSON object into `T`: syntax errors (also truncation, invalid UTF-8 and nesting
/// deeper than 128 levels anywhere, raw values included) are 400 `malformed_json`, a non-object is 400
/// `not_an_object`, and a missing or mistyped field is 422 `invalid_field`.
pub(crate) fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Raw values (payloads, batch items) skip serde_json's depth check: check every body
    // first, without recursion.
    if nested_deeper_than(bytes, MAX_BODY_DEPTH) {
        return Err(ApiError::MalformedJson(format!(
            "nesting deeper than {MAX_BODY_DEPTH} levels"
        )));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) => ApiError::NotAnObject,
            Err(e) => ApiError::MalformedJson(e.to_string()),
        });
    }
    serde_json::from_slice(bytes).map_err(json_error)
}

/// Like [`parse_object`], for text already known to be JSON (a batch item).
pub(crate) fn parse_item<T: DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    if !text.starts_with('{') {
        return Err(ApiError::Invalid {
            field: "events".into(),
            reason: "each event must be a JSON object".into(),
        });
    }
    serde_json::from_str(text).map_err(json_error)
}

fn json_error(e: serde_json::Error) -> ApiError {
    match e.classify() {
        Category::Data => {
            let msg = e.to_string();
            let field = msg
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
                .map_or("body", |(name, _)| name);
            ApiError::Invalid { field: field.to_owned(), reason: msg }
        }
        Category::Syntax | Category::Eof => ApiError::MalformedJson(e.to_string()),
        Category::Io => ApiError::BadBody,
    }
}

/// One decoded `name=value` query parameter.
pub(crate) type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// At most this many parameters in one query string: no route takes more than a handful, and
/// the check for repeated names compares each with those before it.
pub(crate) const MAX_QUERY_PARAMS: usize = 32;

/// The `name=value` pairs of a query string, percent-decoded (`+` is a space). Each name may
/// appear once; a malformed escape, non-UTF-8 text, a repeated name or more than
/// [`MAX_QUERY_PARAMS`] parameters is 400 `invalid_query`.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<Pair<'_>>, ApiError> {
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_QUERY_PARAMS {
            return Err(ApiError::InvalidQuery(format!(
                "a query string holds at most {MAX_QUERY_PARAMS} parameters"
            )));
        }
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::InvalidQuery(format!("parameter {name:?} is given twice")));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn decode(s: &str) -> Result<Cow<'_, str>, ApiError> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let bad = || ApiError::InvalidQuery("the query string has a malformed percent escape".into());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| ApiError::InvalidQuery("the query string is not UTF-8".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"Application/JSON; charset=UTF-8"));
        assert!(is_json(b"application/json;charset=\"utf-8\""));
        assert!(!is_json(b"application/json; charset=latin1"));
        assert!(!is_json(b"text/plain"));
        assert!(!is_json(b"application/jsonx"));
        assert!(!is_json(b"application/x-www-form-urlencoded"));
        assert!(!is_json(b"\xff"));
    }

    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[allow(dead_code)]
        a: u32,
    }

    #[test]
    fn json_errors_are_classified() {
        assert!(parse_object::<T>(br#" {"a": 1}"#).is_ok());
        let code = |b: &[u8]| parse_object::<T>(b).unwrap_err().code();
        assert_eq!(code(b"[1]"), "not_an_object");
        assert_eq!(code(b"\"x\""), "not_an_object");
        assert_eq!(code(b""), "malformed_json");
        assert_eq!(code(br#"{"a": 1"#), "malformed_json");
        assert_eq!(code(b"{\"a\": \"\xff\"}"), "malformed_json");
        assert_eq!(code(&vec![b'['; 100_000]), "malformed_json");
        #[derive(Debug, serde::Deserialize)]
        struct Raw {
            #[allow(dead_code)]
            a: Box<serde_json::value::RawValue>,
        }
        let nested = format!("{{\"a\":{}}}", "[".repeat(100_000));
        let e = parse_object::<Raw>(nested.as_bytes()).unwrap_err();
        assert_eq!(e.code(), "malformed_json", "{e:?}");
        match parse_object::<T>(b"{}").unwrap_err() {
            ApiError::Invalid { field, .. } => assert_eq!(field, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(code(br#"{"a": "x"}"#), "invalid_field");
        // Closed nesting inside a raw value: serde_json alone would accept it.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
        let e = parse_object::<Raw>(deep.as_bytes()).unwrap_err();
        assert_eq!(e.code(), "malformed_json", "{e:?}");
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(127), "]".repeat(127));
        assert!(parse_object::<Raw>(ok.as_bytes()).is_ok());
    }

    #[test]
    fn queries_decode_and_refuse_repeats() {
        let q = query_pairs("type=user.%2A&limit=5&cursor=&x+y=a+b").unwrap();
        let get = |n: &str| q.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_ref());
        assert_eq!(get("type"), Some("user.*"));
        assert_eq!(get("limit"), Some("5"));
        assert_eq!(get("cursor"), Some(""));
        assert_eq!(get("x y"), Some("a b"));
        assert!(query_pairs("a=%zz").is_err());
        assert!(query_pairs("a=%2").is_err());
        assert!(query_pairs("a=%ff").is_err());
        assert!(query_pairs("a=1&a=2").is_err());
        let most: Vec<String> = (0..MAX_QUERY_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(query_pairs(&most.join("&")).unwrap().len(), MAX_QUERY_PARAMS);
        assert!(query_pairs(&format!("{}&more=1", most.join("&"))).is_err());
    }
}
