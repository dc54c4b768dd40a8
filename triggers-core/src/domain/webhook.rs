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

/// A webhook signing secret: `whsec_` followed by base64 of 24–64 random bytes.
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Signing secrets start with this prefix (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

impl Secret {
    /// A new secret of 32 random bytes.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// Wraps a stored secret. It must be `whsec_` + base64 of 24–64 bytes.
    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let raw = s.strip_prefix(SECRET_PREFIX).ok_or("a secret starts with whsec_")?;
        let bytes = STANDARD.decode(raw).map_err(|_| "a secret is whsec_ + base64")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("a secret holds 24 to 64 bytes".to_owned());
        }
        Ok(Self(s))
    }

    /// The secret text (`whsec_…`).
    pub fn expose(&self) -> &str {
        &self.0
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
        glob_match(self.0.as_bytes(), event_type.as_bytes())
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

/// Iterative glob matching with backtracking to the last `*` (linear for our alphabet).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
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
    }

    #[test]
    fn globs_reject_bad_characters_and_escape_for_sql() {
        assert!(TypeGlob::parse("").is_err());
        assert!(TypeGlob::parse("user created").is_err());
        assert!(TypeGlob::parse("a%b").is_err());
        assert_eq!(TypeGlob::parse("a_b.*").unwrap().to_sql_like(), "a\\_b.%");
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
