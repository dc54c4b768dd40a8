//! Webhook endpoints (delivery targets), their signing secrets and type filters.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use serde::Serialize;

use super::{EndpointId, OrganizationId};
use crate::clock::Timestamp;

/// A delivery target of an organization. Each enabled endpoint whose filter matches an
/// event's type gets its own delivery of that event (fan-out).
///
/// `url` is opaque to the core: the HTTP `WebhookDeliverer` wants `http(s)://…`, an in-process
/// deliverer may use any scheme it likes (for example `inproc://billing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's id.
    pub id: EndpointId,
    /// The owning organization.
    pub organization_id: OrganizationId,
    /// Where deliveries go.
    pub url: String,
    /// Which event types it receives; `None` means all.
    pub event_type_filter: Option<TypeGlob>,
    /// The current signing secret (`whsec_…`).
    pub secret: Secret,
    /// Whether deliveries are made. Disabled endpoints get no new deliveries.
    pub enabled: bool,
    /// Why the endpoint was disabled (for example "410 Gone").
    pub disabled_reason: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// A free-text note of the organization (at most 1024 characters).
    pub description: Option<String>,
    /// Static headers sent with every delivery, in order (see [`check_headers`]).
    pub headers: Vec<(String, String)>,
    /// Deliveries per second to this endpoint at most; `None`: the deliverer's default.
    pub rate_limit: Option<u32>,
    /// Deliveries in flight to this endpoint at most; `None`: the deliverer's default. A
    /// deliverer may cap it further.
    pub concurrency: Option<u32>,
    /// Whether its deliveries go out in parallel or strictly one after another in event order.
    pub ordering: DeliveryOrdering,
}

/// How an endpoint's deliveries are scheduled.
///
/// - `Parallel` (the default): deliveries are claimed as they come due, several at once (up
///   to the endpoint's concurrency), so a retry does not hold back later events.
/// - `Fifo`: strictly in event order. Delivery *n + 1* is not attempted before delivery *n*
///   succeeded or finally failed; while *n* waits for a retry, the line waits with it. At
///   most one delivery of the endpoint is in flight, across every node sharing the store.
///   "Event order" is the order in which the store queued the deliveries (an event stored
///   after another one returned is later; events of one batch keep their batch order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryOrdering {
    /// As they come due, several at once.
    #[default]
    Parallel,
    /// One at a time, in event order.
    Fifo,
}

impl DeliveryOrdering {
    /// The wire name: `parallel` or `fifo`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parallel => "parallel",
            Self::Fifo => "fifo",
        }
    }

    /// Parses the wire name (exactly `parallel` or `fifo`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "parallel" => Ok(Self::Parallel),
            "fifo" => Ok(Self::Fifo),
            _ => Err("must be \"parallel\" or \"fifo\"".to_owned()),
        }
    }
}

/// The `disabled_reason` of an endpoint its organization disabled.
pub const DISABLED_BY_REQUEST: &str = "disabled by request";

/// The failure reason of a delivery recorded for an event that matched a disabled endpoint.
pub const ENDPOINT_DISABLED: &str = "endpoint_disabled";

/// At most this many custom headers per endpoint.
pub const MAX_HEADERS: usize = 20;

/// Headers the deliverer sets itself; an endpoint may not set them (case-insensitive).
pub const RESERVED_HEADERS: [&str; 10] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
    "te",
];

/// Checks custom delivery headers: at most [`MAX_HEADERS`]; each name 1–256 characters of
/// HTTP token syntax (RFC 9110 `tchar`), not reserved ([`RESERVED_HEADERS`]) and not given
/// twice; each value at most 4096 characters of visible ASCII, space or tab (no control
/// characters, so no header injection), without leading or trailing white space.
pub fn check_headers(headers: &[(String, String)]) -> Result<(), String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!("at most {MAX_HEADERS} headers (got {})", headers.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
        if name.is_empty() || name.len() > 256 || !name.bytes().all(token) {
            return Err(format!("header name {name:?} is not a valid HTTP token"));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(format!("header {name:?} is set by the server and cannot be set"));
        }
        if !seen.insert(lower) {
            return Err(format!("header {name:?} is given twice"));
        }
        let visible = |c: u8| c == b' ' || c == b'\t' || (0x21..0x7f).contains(&c);
        if value.len() > 4096 || !value.bytes().all(visible) || value.trim() != value {
            return Err(format!(
                "the value of header {name:?} must have at most 4096 visible ASCII characters \
                 (spaces inside only) and no control characters"
            ));
        }
    }
    Ok(())
}

/// A webhook signing secret: `whsec_` followed by base64 of 24–64 random bytes — or, as
/// stored when secrets are encrypted at rest, its sealed form `tsec1:…` (see
/// [`SecretCipher`](super::sealed::SecretCipher)), which must be opened before signing.
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Signing secrets start with this prefix (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// Sealed (encrypted) secrets start with this prefix.
pub const SEALED_PREFIX: &str = "tsec1:";

impl Secret {
    /// A new secret of 32 random bytes.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// Wraps a stored secret. It must be `whsec_` + base64 of 24–64 bytes, or a sealed
    /// secret (`tsec1:<key id>:<base64>`, checked when it is opened).
    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        if let Some(rest) = s.strip_prefix(SEALED_PREFIX) {
            let (id, blob) = rest.split_once(':').ok_or("a sealed secret is tsec1:<key id>:…")?;
            if id.is_empty() || STANDARD.decode(blob).is_err() {
                return Err("a sealed secret is tsec1:<key id>:<base64>".to_owned());
            }
            return Ok(Self(s));
        }
        let raw = s.strip_prefix(SECRET_PREFIX).ok_or("a secret starts with whsec_")?;
        let bytes = STANDARD.decode(raw).map_err(|_| "a secret is whsec_ + base64")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("a secret holds 24 to 64 bytes".to_owned());
        }
        Ok(Self(s))
    }

    /// The secret text (`whsec_…`, or `tsec1:…` when sealed).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is the sealed (encrypted) form, which cannot sign.
    pub fn is_sealed(&self) -> bool {
        self.0.starts_with(SEALED_PREFIX)
    }

    pub(crate) fn from_sealed(text: String) -> Self {
        Self(text)
    }

    /// The key bytes used for HMAC (the base64-decoded part after `whsec_`).
    pub fn key_bytes(&self) -> Vec<u8> {
        let raw = self.0.strip_prefix(SECRET_PREFIX).unwrap_or(&self.0);
        STANDARD.decode(raw).unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// A glob over event types: `*` matches any run of characters (also none), everything else
/// matches itself. `*` matches every type, `user.*` matches `user.created`.
///
/// ```
/// use triggers_core::TypeGlob;
/// let g = TypeGlob::parse("user.*").unwrap();
/// assert!(g.matches("user.created"));
/// assert!(!g.matches("order.created"));
/// assert_eq!(g.to_sql_like(), "user.%");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TypeGlob(String);

impl TypeGlob {
    /// Parses a glob: 1–255 characters of `[A-Za-z0-9._:-]` and `*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 255 {
            return Err("a type filter has 1 to 255 characters".to_owned());
        }
        if let Some(c) = s.chars().find(|&c| c != '*' && !super::validate::is_type_char(c)) {
            return Err(format!(
                "a type filter may not contain {c:?}; allowed: A-Z a-z 0-9 . _ : - *"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The glob text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        glob_match(&self.0, event_type)
    }

    /// The equivalent SQL `LIKE` pattern, to be used with `ESCAPE '\'` and case-sensitive
    /// matching: `*` becomes `%`, and `_`, `%`, `\` are escaped.
    pub fn to_sql_like(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 4);
        for c in self.0.chars() {
            match c {
                '*' => out.push('%'),
                '_' | '%' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
    }
}

impl fmt::Display for TypeGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` matches `pattern` (`*`: any run of characters, also none). Linear in
/// both lengths: the part before the first `*` must start `text`, the part after the last
/// must end it, and the pieces between are found left to right, each at its first place
/// after the one before (the leftmost place leaves the most room for the rest), by the
/// standard library's two-way substring search. Backtracking to the last `*` instead took
/// up to 255 × 255 steps for one crafted filter and type, and a write matches every event
/// of a batch against every endpoint's filter (inside SQLite's one writer).
fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else { return pattern == text };
    if tail.is_empty() {
        // One `*`, at the end (`user.*`, `*`): the common filters.
        return text.starts_with(head);
    }
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    if text.len() < head.len() + last.len() || !text.starts_with(head) || !text.ends_with(last) {
        return false;
    }
    // Both ends matched whole pieces of `text`, so these are character boundaries.
    let mut rest = &text[head.len()..text.len() - last.len()];
    for piece in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_stars() {
        let m = |g: &str, t: &str| TypeGlob::parse(g).unwrap().matches(t);
        assert!(m("*", "anything.at:all"));
        assert!(m("user.*", "user.created"));
        assert!(m("user.*", "user."));
        assert!(!m("user.*", "user"));
        assert!(m("*.created", "order.created"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(!m("User.*", "user.created"), "matching is case-sensitive");
        assert!(m("a*a", "aa") && !m("a*a", "a"), "the two ends do not overlap");
        assert!(m("**", "") && m("a**b", "ab") && !m("*a*", "bbb"));
    }

    /// The old matcher (backtracking to the last `*`): right, but quadratic.
    fn backtracking(pattern: &[u8], text: &[u8]) -> bool {
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && pattern[p] == b'*' {
                star = Some((p, t));
                p += 1;
            } else if p < pattern.len() && pattern[p] == text[t] {
                p += 1;
                t += 1;
            } else if let Some((sp, st)) = star {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }

    /// Every pattern over `a`, `b` and `*` up to 6 characters against every text over `a`
    /// and `b` up to 7: the same answers as the backtracking matcher.
    #[test]
    fn the_linear_matcher_answers_like_backtracking() {
        fn all(alphabet: &[u8], up_to: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..up_to {
                let next: Vec<String> = last
                    .iter()
                    .flat_map(|s| alphabet.iter().map(move |&c| format!("{s}{}", c as char)))
                    .collect();
                out.extend(next.iter().cloned());
                last = next;
            }
            out
        }
        let texts = all(b"ab", 7);
        for pattern in all(b"ab*", 6) {
            for text in &texts {
                assert_eq!(
                    glob_match(&pattern, text),
                    backtracking(pattern.as_bytes(), text.as_bytes()),
                    "{pattern:?} against {text:?}"
                );
            }
        }
    }

    /// Filters crafted for a backtracking matcher's worst case are answered right (their
    /// cost: `cargo bench --bench core -- type_glob`, BENCHMARKS.md).
    #[test]
    fn crafted_filters_are_answered_right() {
        let filter = format!("*{}b", "a".repeat(253));
        let glob = TypeGlob::parse(&filter).unwrap();
        assert!(!glob.matches(&"a".repeat(255)));
        assert!(glob.matches(&format!("{}b", "a".repeat(254))));
        let middle = format!("*{}*b*", "a".repeat(100));
        assert!(!TypeGlob::parse(&middle).unwrap().matches(&"a".repeat(255)));
    }

    #[test]
    fn globs_reject_bad_characters_and_escape_for_sql() {
        assert!(TypeGlob::parse("").is_err());
        assert!(TypeGlob::parse("user created").is_err());
        assert!(TypeGlob::parse("a%b").is_err());
        assert_eq!(TypeGlob::parse("a_b.*").unwrap().to_sql_like(), "a\\_b.%");
    }

    #[test]
    fn headers_are_tokens_with_clean_values_and_not_reserved() {
        let h = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
        assert!(check_headers(&h("X-Tenant", "acme 1")).is_ok());
        assert!(check_headers(&h("Authorization", "Bearer abc")).is_ok());
        assert!(check_headers(&h("Bad Name", "x")).is_err());
        assert!(check_headers(&h("", "x")).is_err());
        assert!(check_headers(&h("X-A", "a\r\nX-Evil: 1")).is_err());
        assert!(check_headers(&h("X-A", "caf\u{e9}")).is_err());
        assert!(check_headers(&h("X-A", " padded")).is_err());
        for reserved in ["Host", "content-length", "Webhook-Signature", "Connection"] {
            assert!(check_headers(&h(reserved, "x")).is_err(), "{reserved}");
        }
        let twice = vec![("X-A".to_owned(), "1".to_owned()), ("x-a".to_owned(), "2".to_owned())];
        assert!(check_headers(&twice).is_err());
        let many: Vec<_> = (0..21).map(|i| (format!("X-{i}"), "v".to_owned())).collect();
        assert!(check_headers(&many).is_err());
        assert!(check_headers(&many[..20]).is_ok());
    }

    #[test]
    fn secrets_are_whsec_and_roundtrip() {
        let s = Secret::generate();
        assert!(s.expose().starts_with(SECRET_PREFIX));
        assert_eq!(s.key_bytes().len(), 32);
        assert_eq!(Secret::parse(s.expose()).unwrap(), s);
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
        assert!(Secret::parse("nope").is_err());
        assert_eq!(format!("{s:?}"), "Secret(whsec_…)");
    }
}
