//! Validation of client input, with precise error values.

use super::event::{EventRecord, NewEvent};
use super::json::{nested_deeper_than, MAX_PAYLOAD_DEPTH};
use super::EventId;
use crate::clock::Timestamp;

/// Longest event type, in characters.
pub const MAX_TYPE_LEN: usize = 255;
/// Longest dedup id, in characters.
pub const MAX_DEDUP_ID_LEN: usize = 255;
/// Default largest payload, in bytes of JSON text.
pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;
/// Longest endpoint URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Why an event (or other input) was refused. The HTTP layer turns these into 422s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// `type` is empty or longer than 255 characters.
    #[error("type must have 1 to {MAX_TYPE_LEN} characters (got {0})")]
    TypeLength(usize),
    /// `type` contains a character outside `[A-Za-z0-9._:-]`.
    #[error("type may only contain A-Z a-z 0-9 . _ : - (found {0:?})")]
    TypeCharacter(char),
    /// The payload's JSON text is larger than allowed.
    #[error("payload is {size} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The payload nests arrays and objects deeper than allowed.
    #[error("payload nests deeper than {max} levels")]
    PayloadTooDeep {
        /// The limit.
        max: usize,
    },
    /// `dedup_id` is empty or longer than 255 characters.
    #[error("dedup_id must have 1 to {MAX_DEDUP_ID_LEN} characters (got {0})")]
    DedupIdLength(usize),
    /// `dedup_id` contains a control character.
    #[error("dedup_id may not contain control characters")]
    DedupIdCharacter,
    /// Some other field is invalid.
    #[error("{field}: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ValidationError {
    /// The name of the offending field.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TypeLength(_) | Self::TypeCharacter(_) => "type",
            Self::PayloadTooLarge { .. } | Self::PayloadTooDeep { .. } => "payload",
            Self::DedupIdLength(_) | Self::DedupIdCharacter => "dedup_id",
            Self::Field { field, .. } => field,
        }
    }
}

/// Whether `c` may appear in an event type.
pub fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Checks an event type.
pub fn validate_type(t: &str) -> Result<(), ValidationError> {
    // Valid types are ASCII, so byte length equals character count for them.
    if t.is_empty() || t.len() > MAX_TYPE_LEN {
        return Err(ValidationError::TypeLength(t.chars().count()));
    }
    match t.chars().find(|&c| !is_type_char(c)) {
        Some(c) => Err(ValidationError::TypeCharacter(c)),
        None => Ok(()),
    }
}

/// Checks a dedup id: 1–255 characters, no control characters.
pub fn validate_dedup_id(d: &str) -> Result<(), ValidationError> {
    let n = d.chars().count();
    if n == 0 || n > MAX_DEDUP_ID_LEN {
        return Err(ValidationError::DedupIdLength(n));
    }
    if d.chars().any(char::is_control) {
        return Err(ValidationError::DedupIdCharacter);
    }
    Ok(())
}

/// Validates `event` and turns it into a record with a fresh UUID v7 id and `now` as its time.
pub fn validate_event(
    event: NewEvent,
    max_payload: usize,
    now: Timestamp,
) -> Result<EventRecord, ValidationError> {
    validate_type(&event.event_type)?;
    let size = event.payload.get().len();
    if size > max_payload {
        return Err(ValidationError::PayloadTooLarge { size, max: max_payload });
    }
    if nested_deeper_than(event.payload.get().as_bytes(), MAX_PAYLOAD_DEPTH) {
        return Err(ValidationError::PayloadTooDeep { max: MAX_PAYLOAD_DEPTH });
    }
    if let Some(d) = &event.dedup_id {
        validate_dedup_id(d)?;
    }
    Ok(EventRecord {
        id: EventId::new(),
        event_type: event.event_type,
        payload: event.payload,
        dedup_id: event.dedup_id,
        created_at: now,
        exclude_endpoint: None,
    })
}

/// Checks the shape of a webhook URL: `http` or `https`, then the rules of [`endpoint_url`].
/// The one check for every way a webhook URL is configured (create, update).
pub fn webhook_url(url: &str) -> Result<(), ValidationError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(url_error("must be an http:// or https:// URL"));
    }
    endpoint_url(url)
}

/// Checks the shape of an endpoint URL of any scheme (in-process deliverers may use their
/// own, e.g. `inproc://billing`): at most 2048 bytes of printable ASCII without white space
/// or backslashes, `scheme://host[:port]…` with a non-empty host, no user name or password,
/// and a port (when given) from 1 to 65535. Only syntax: whether the target is reachable or
/// allowed is the deliverer's business.
pub fn endpoint_url(url: &str) -> Result<(), ValidationError> {
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(url_error(&format!("must have 1 to {MAX_URL_LEN} bytes (got {})", url.len())));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err(url_error(
            "may only contain printable ASCII without spaces or backslashes \
             (percent-encode the rest; use punycode for host names)",
        ));
    }
    let Some((_, rest)) = url.split_once("://") else {
        return Err(url_error("must be an absolute URL: scheme://host…"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(url_error("may not contain a user name or password"));
    }
    let parsed = url::Url::parse(url).map_err(|e| match e {
        url::ParseError::InvalidPort => url_error("port must be a number from 1 to 65535"),
        other => url_error(&format!("is not a valid URL ({other})")),
    })?;
    // `http:///x` parses (the URL standard skips the empty authority); refuse it here.
    let host_text = authority.split(':').next().unwrap_or("");
    if host_text.is_empty() || parsed.host_str().map_or(true, str::is_empty) {
        return Err(url_error("must name a host"));
    }
    // The URL parser drops a scheme's default port and allows an empty one: read the text.
    match port_text(authority) {
        Some(text) => match text.parse::<u16>() {
            Ok(p) if p >= 1 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err(url_error("port must be a number from 1 to 65535")),
        },
        None => Ok(()),
    }
}

/// The port part of `host[:port]` / `[v6][:port]`, if a colon introduces one.
fn port_text(authority: &str) -> Option<&str> {
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => authority.find(':').map_or("", |i| &authority[i..]),
    };
    after_host.strip_prefix(':')
}

fn url_error(reason: &str) -> ValidationError {
    ValidationError::Field { field: "url", reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use serde_json::json;

    fn check(e: NewEvent) -> Result<EventRecord, ValidationError> {
        validate_event(e, 64, SystemClock.now())
    }

    #[test]
    fn accepts_valid_events() {
        let r = check(NewEvent::new("user.created:v1_x-y", &json!({"a": 1})).with_dedup_id("k"))
            .unwrap();
        assert_eq!(r.event_type, "user.created:v1_x-y");
        assert_eq!(r.id.0.get_version_num(), 7);
        assert!(check(NewEvent::new("t".repeat(255), &json!(null))).is_ok());
    }

    #[test]
    fn rejects_bad_types() {
        assert_eq!(
            check(NewEvent::new("", &json!(1))).unwrap_err(),
            ValidationError::TypeLength(0)
        );
        assert_eq!(
            check(NewEvent::new("t".repeat(256), &json!(1))).unwrap_err(),
            ValidationError::TypeLength(256)
        );
        assert_eq!(
            check(NewEvent::new("user created", &json!(1))).unwrap_err(),
            ValidationError::TypeCharacter(' ')
        );
        assert_eq!(
            check(NewEvent::new("ünïcode", &json!(1))).unwrap_err(),
            ValidationError::TypeCharacter('ü')
        );
    }

    #[test]
    fn rejects_large_payloads_and_bad_dedup_ids() {
        let big = json!("x".repeat(100));
        assert!(matches!(
            check(NewEvent::new("t", &big)).unwrap_err(),
            ValidationError::PayloadTooLarge { max: 64, .. }
        ));
        assert_eq!(
            check(NewEvent::new("t", &json!(1)).with_dedup_id("")).unwrap_err(),
            ValidationError::DedupIdLength(0)
        );
        assert_eq!(
            check(NewEvent::new("t", &json!(1)).with_dedup_id("d".repeat(256))).unwrap_err(),
            ValidationError::DedupIdLength(256)
        );
        assert_eq!(
            check(NewEvent::new("t", &json!(1)).with_dedup_id("a\nb")).unwrap_err(),
            ValidationError::DedupIdCharacter
        );
        assert_eq!(ValidationError::DedupIdCharacter.field(), "dedup_id");
    }

    #[test]
    fn webhook_urls_have_a_strict_shape() {
        for good in [
            "http://127.0.0.1:9000/hook",
            "https://example.com",
            "HTTPS://example.com:443/a?b=c#d",
            "http://[::1]:8080/x",
            "http://h:1/",
            "http://h:65535",
        ] {
            assert_eq!(webhook_url(good), Ok(()), "{good}");
        }
        let long = format!("http://h/{}", "a".repeat(2048));
        for bad in [
            "",
            "ftp://example.com/",
            "example.com/hook",
            "http:/example.com",
            "http://",
            "http:///path",
            "http://example.com:99999/",
            "http://example.com:0/",
            "http://example.com:/",
            "http://example.com:8o/",
            "http://[::1]:70000/",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "http://exa mple.com/",
            "http://example.com/\n",
            "http:\\\\example.com/",
            "http://bücher.de/",
            long.as_str(),
        ] {
            let e = webhook_url(bad).map(|()| bad).unwrap_err();
            assert_eq!(e.field(), "url", "{bad}");
        }
        assert_eq!(endpoint_url("inproc://billing"), Ok(()));
        assert!(webhook_url("inproc://billing").is_err());
        assert!(endpoint_url("inproc://a:99999").is_err());
    }

    #[test]
    fn deep_payloads_are_refused() {
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        let raw = |s: &str| serde_json::value::RawValue::from_string(s.to_owned()).unwrap();
        let event = |p: &str| NewEvent { event_type: "t".into(), payload: raw(p), dedup_id: None };
        assert!(validate_event(event(&ok), 1 << 20, SystemClock.now()).is_ok());
        let e = validate_event(event(&deep), 1 << 20, SystemClock.now()).unwrap_err();
        assert_eq!(e, ValidationError::PayloadTooDeep { max: 100 });
        assert_eq!(e.field(), "payload");
    }
}
