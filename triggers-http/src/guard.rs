//! Request-level guards that do not depend on how the API is served: the `Host` check
//! against DNS rebinding, and bearer tokens (admin, metrics).

use std::net::{IpAddr, SocketAddr};

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, Uri};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The addresses of the connection a request arrived on. [`Server`](crate::Server) inserts it
/// into every request's extensions; other ways of serving the API may too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    /// The address the connection was accepted on.
    pub(crate) local: SocketAddr,
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The SHA-256 of a configured token, for [`token_matches`].
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether `given` is the token hashed in `expected`. Compares SHA-256 digests in constant
/// time, so neither content nor length leaks.
pub(crate) fn token_matches(given: Option<&str>, expected: &[u8; 32]) -> bool {
    let Some(given) = given else { return false };
    let digest: [u8; 32] = Sha256::digest(given).into();
    bool::from(digest.ct_eq(expected))
}

/// The host a request is addressed to: the absolute-form URI's, else the `Host` header's,
/// lowercased, without port and brackets. `None` if absent or not text.
fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<(String, Option<u16>)> {
    let text = match uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => headers.get(HOST)?.to_str().ok()?.trim().to_owned(),
    };
    split_host(&text)
}

/// `host[:port]` or `[v6][:port]` into the lowercased host and the port.
fn split_host(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (v6, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    (!host.is_empty()).then_some((host, port))
}

/// Which `Host` values a server without an admin token answers: loopback names and addresses,
/// plus configured extra hosts. A web page on another origin that rebinds its DNS name to
/// 127.0.0.1 still sends its own name as `Host`, so it is refused.
#[derive(Debug, Clone)]
pub(crate) struct HostGuard {
    /// Extra hosts: `(host, Some(port))` matches that port only, `(host, None)` any port.
    extra: Vec<(String, Option<u16>)>,
}

impl HostGuard {
    /// A guard accepting loopback and `allowed` (`host` or `host:port` entries).
    pub(crate) fn new(allowed: &[String]) -> Self {
        Self { extra: allowed.iter().filter_map(|a| split_host(a.trim())).collect() }
    }

    /// Whether the request's host is acceptable.
    pub(crate) fn allows(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        let Some((host, port)) = request_host(uri, headers) else { return false };
        if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.extra.iter().any(|(h, p)| *h == host && (p.is_none() || *p == port))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: http::header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn hosts() {
        let guard = HostGuard::new(&["api.example.test".into(), "box.lan:8080".into()]);
        let uri: Uri = "/api/keys/generate".parse().unwrap();
        let ok = |h: &str| guard.allows(&uri, &with(HOST, h));
        for good in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "api.example.test",
            "API.example.test:443",
            "box.lan:8080",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "box.lan:8081",
            "box.lan",
            "10.0.0.1",
            "[::2]:80",
            "localhost:notaport",
            "",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(!guard.allows(&uri, &HeaderMap::new()), "no Host at all");
        let absolute: Uri = "http://evil.example/api/keys/generate".parse().unwrap();
        assert!(!guard.allows(&absolute, &with(HOST, "127.0.0.1")));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer tok", "bearer tok", "BEARER  tok ", "BeArEr tok"] {
            assert_eq!(bearer(&with(AUTHORIZATION, v)), Some("tok"), "{v}");
        }
        for v in ["Basic tok", "Bearer", "Bearer ", "tok", "Bearertok"] {
            assert_eq!(bearer(&with(AUTHORIZATION, v)), None, "{v}");
        }
        let hash = token_hash("tok");
        assert!(token_matches(Some("tok"), &hash));
        assert!(!token_matches(Some("tok2"), &hash));
        assert!(!token_matches(None, &hash));
    }
}
