//! How an HTTP answer (or the lack of one) becomes an [`Outcome`].

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use triggers_core::Outcome;

use super::budget::BudgetFull;
use super::ssrf::{Refused, ResolveError};

/// Reasons stored with an attempt are at most this long.
pub(crate) const MAX_REASON: usize = 200;

/// The outcome of a response with `status`:
/// 2xx → delivered; 410 → gone; 429/502/503/504 → retry, honouring `Retry-After`;
/// anything else (3xx included: redirects are not followed) → retry on the schedule.
pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap, now: DateTime<Utc>) -> Outcome {
    let code = status.as_u16();
    match code {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone("HTTP 410 Gone".into()),
        429 | 502 | 503 | 504 => {
            let after = retry_after(headers, now);
            let reason = match after {
                Some(d) => format!("HTTP {code} (Retry-After {}s)", d.as_secs()),
                None => format!("HTTP {code}"),
            };
            Outcome::Retry { after, reason }
        }
        300..=399 => {
            Outcome::Retry { after: None, reason: format!("HTTP {code}: redirect not followed") }
        }
        _ => Outcome::Retry { after: None, reason: format!("HTTP {code}") },
    }
}

/// `Retry-After` as a wait: delay-seconds, or an HTTP-date (IMF-fixdate, RFC 850 and asctime
/// forms are not accepted). A date in the past or an unparsable value gives `None`.
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    (at - now).to_std().ok().filter(|d| !d.is_zero())
}

/// The outcome of a request that got no usable response.
///
/// A connection the budget could not make room for (every outbound connection waits for an
/// answer) is the server's shortage, not the receiver's fault: `Deferred` by `defer`, no
/// attempt used up and the endpoint not marked failing.
pub(crate) fn from_client_error(
    err: &hyper_util::client::legacy::Error,
    defer: Duration,
) -> Outcome {
    if let Some(full) = find::<BudgetFull>(err) {
        return Outcome::Deferred { after: defer, reason: full.to_string() };
    }
    if let Some(refused) = find::<Refused>(err) {
        return Outcome::Permanent(short(refused.to_string()));
    }
    if let Some(ResolveError::Refused(refused)) = find::<ResolveError>(err) {
        return Outcome::Permanent(short(refused.to_string()));
    }
    let reason = if let Some(resolve) = find::<ResolveError>(err) {
        resolve.to_string()
    } else if let Some(io) = find::<io::Error>(err) {
        let what = match io.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
            io::ErrorKind::TimedOut => "connect timed out".to_owned(),
            _ => io.to_string(),
        };
        if err.is_connect() {
            format!("connection failed: {what}")
        } else {
            what
        }
    } else {
        chain(err)
    };
    Outcome::Retry { after: None, reason: short(reason) }
}

/// The first error of type `T` in `err`'s source chain (including `err` itself).
fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// `err` and its sources joined with ": ".
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Cuts `reason` to at most [`MAX_REASON`] bytes (ending in `…`) at a character boundary.
pub(crate) fn short(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON - '…'.len_utf8();
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn outcome(code: u16, retry_after: Option<&str>) -> Outcome {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        from_status(StatusCode::from_u16(code).unwrap(), &headers, Utc::now())
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(outcome(200, None), Outcome::Delivered);
        assert_eq!(outcome(204, None), Outcome::Delivered);
        assert!(matches!(outcome(410, None), Outcome::Gone(_)));
        for code in [301, 302, 307, 308] {
            assert!(matches!(outcome(code, Some("5")), Outcome::Retry { after: None, .. }));
        }
        for code in [400, 401, 404, 500, 501] {
            assert!(matches!(outcome(code, Some("5")), Outcome::Retry { after: None, .. }));
        }
        for code in [429, 502, 503, 504] {
            assert_eq!(
                outcome(code, Some("7")),
                Outcome::Retry {
                    after: Some(Duration::from_secs(7)),
                    reason: format!("HTTP {code} (Retry-After 7s)")
                }
            );
            assert!(matches!(outcome(code, None), Outcome::Retry { after: None, .. }));
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().to_utc();
        let mut h = HeaderMap::new();
        let mut at = |v: &str| {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(at(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(at("Wed, 21 Oct 2015 07:30:00 GMT"), Some(Duration::from_secs(120)));
        assert_eq!(at("Wed, 21 Oct 2015 07:00:00 GMT"), None, "in the past");
        assert_eq!(at("soon"), None);
        assert_eq!(at("-5"), None);
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(300);
        let cut = short(long);
        assert!(cut.len() <= MAX_REASON);
        assert!(cut.ends_with('…'));
        assert_eq!(short("ok".into()), "ok");
    }
}
