//! SSRF protection: webhook targets must be public addresses unless explicitly allowed.
//!
//! A target host is resolved by us, and refused if **any** of its addresses is not a global
//! unicast address (loopback, private, link-local, CGNAT, documentation, multicast, …) and not
//! inside the configured allow-list. The same check runs twice per attempt:
//! 1. before the request, in the deliverer, so a refusal becomes a clear `Permanent` outcome
//!    without any connection attempt (and literal IPs, which hyper never resolves, are checked);
//! 2. inside the HTTP connector, as its DNS resolver ([`PolicyResolver`]): the addresses a new
//!    connection is made to are exactly the ones that passed the check, so a DNS answer that
//!    changes between the two (DNS rebinding) cannot slip a private address through.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

use super::dns::Dns;

/// Which addresses webhooks may target: every global unicast address, plus the allow-list,
/// minus the deny-list (which wins over both).
#[derive(Debug, Clone, Default)]
pub(crate) struct AddressPolicy {
    allow: Arc<[IpNet]>,
    deny: Arc<[IpNet]>,
}

/// A target address was refused by the SSRF policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {ip} {}", self.why())]
pub(crate) struct Refused {
    ip: IpAddr,
    /// The kind of non-global address, or `None`: in the deny-list.
    kind: Option<&'static str>,
}

impl Refused {
    fn why(&self) -> String {
        match self.kind {
            Some(kind) => format!("is a {kind} address (not in the webhook allow-list)"),
            None => "is in the webhook deny-list".to_owned(),
        }
    }

    /// Whether the deny-list refused it (rather than its kind).
    pub(crate) fn denied(&self) -> bool {
        self.kind.is_none()
    }
}

/// Resolving a webhook host failed or was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ResolveError {
    /// An address is not allowed.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The lookup failed without an answer (the name's servers could not be reached, or sent
    /// nothing usable). Fixed words: the resolver's own message may name the operator's name
    /// servers (it is logged at debug level instead).
    #[error("dns lookup failed: no usable answer from the name's servers")]
    Lookup,
    /// The lookup found no address, and why (no such name, no A or AAAA record, the name
    /// server failed or refused).
    #[error("dns lookup found no address: {0}")]
    NoAddress(&'static str),
    /// The lookup got no answer in time.
    #[error("dns lookup got no answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl AddressPolicy {
    pub(crate) fn new(allow: Vec<IpNet>) -> Self {
        Self { allow: allow.into(), deny: Arc::new([]) }
    }

    /// The same policy, refusing `deny` too, whatever the allow-list says.
    pub(crate) fn with_deny(self, deny: Vec<IpNet>) -> Self {
        Self { deny: deny.into(), ..self }
    }

    /// The loopback addresses (127.0.0.1, ::1) this policy allows, or the refusal of
    /// 127.0.0.1 when it allows neither.
    pub(crate) fn loopback(&self) -> Result<Vec<IpAddr>, Refused> {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let both = [v4, IpAddr::V6(Ipv6Addr::LOCALHOST)];
        let allowed: Vec<IpAddr> = both.into_iter().filter(|&ip| self.check(ip).is_ok()).collect();
        match self.check(v4) {
            Err(refused) if allowed.is_empty() => Err(refused),
            _ => Ok(allowed),
        }
    }

    /// Ok if `ip` may be targeted.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        // An IPv6 address that carries an IPv4 address (mapped, NAT64, 6to4) reaches that
        // address: the lists apply to it as well, as the kind check does.
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = |list: &[IpNet]| {
            let contains = |ip: IpAddr| list.iter().any(|net| net.contains(&ip));
            contains(ip) || embedded.is_some_and(contains)
        };
        if listed(&self.deny) {
            return Err(Refused { ip, kind: None });
        }
        match non_global_kind(ip) {
            Some(kind) if !listed(&self.allow) => Err(Refused { ip, kind: Some(kind) }),
            _ => Ok(()),
        }
    }
}

/// Why `ip` is not a global unicast address, or `None` if it is one.
pub(crate) fn non_global_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let kind = match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_broadcast() => "broadcast",
        (0, ..) => "this-network",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay",
        (198, 18..=19, _) => "benchmarking",
        // Azure's WireServer (host agent and platform DNS) answers every VM at this global
        // address; no receiver of ours is there. (The other clouds' metadata services sit
        // in link-local or shared space, refused above.)
        _ if ip == Ipv4Addr::new(168, 63, 129, 16) => "cloud platform service",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    };
    Some(kind)
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Addresses that embed an IPv4 address are as good as that address.
    if let Some(v4) = embedded_v4(ip) {
        return v4_kind(v4);
    }
    let kind = match seg[0] {
        0xff00..=0xffff => "multicast",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xfc00..=0xfdff => "unique-local (private)",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        // IETF protocol assignments 2001::/23, including Teredo 2001::/32.
        0x2001 if seg[1] < 0x0200 => "IETF protocol",
        0x3fff if seg[1] < 0x1000 => "documentation",
        // Outside 2000::/3 nothing is global unicast (IPv4-compatible ::/96, 64:ff9b:1::/48,
        // discard-only 100::/64, …).
        s if !(0x2000..=0x3fff).contains(&s) => "reserved",
        _ => return None,
    };
    Some(kind)
}

/// The IPv4 address an IPv6 address carries and reaches: IPv4-mapped `::ffff:0:0/96`, the
/// NAT64 well-known prefix `64:ff9b::/96`, or 6to4 `2002::/16` (the next 32 bits).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(v4(seg[6], seg[7]))
    } else if seg[0] == 0x2002 {
        Some(v4(seg[1], seg[2]))
    } else {
        None
    }
}

/// The checking resolver: looks a host up ([`Dns`]) and fails with a refusal unless every
/// address passes the [`AddressPolicy`]. The deliverer's check before each attempt and the
/// connector (as its DNS resolver) use one, so they share one cache.
#[derive(Debug, Clone)]
pub(crate) struct PolicyResolver {
    policy: AddressPolicy,
    dns: Dns,
}

impl PolicyResolver {
    pub(crate) fn new(policy: AddressPolicy, dns: Dns) -> Self {
        Self { policy, dns }
    }

    /// Resolves `host` (a DNS name or an IP literal, IPv6 with or without brackets) and checks
    /// every address: one refused address refuses the host. Port 0 is fine when only the
    /// addresses matter.
    ///
    /// `localhost` and `*.localhost` (RFC 6761) are loopback without a query: 127.0.0.1 and
    /// ::1, whichever the policy allows (both loopback, so either reaches the same host); the
    /// host is refused when it allows neither. So `TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8` is
    /// enough for `http://localhost:…`, as [`WebhookConfig::url_policy`] tells at
    /// configuration.
    ///
    /// [`WebhookConfig::url_policy`]: super::WebhookConfig::url_policy
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Some(ip) = ip_literal(host) {
            self.policy.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if is_localhost(host) {
            let ips = self.policy.loopback()?;
            return Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect());
        }
        let ips = self.dns.lookup(host).await?;
        for &ip in ips.iter() {
            self.policy.check(ip)?;
        }
        Ok(ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect())
    }
}

/// Whether `host` is `localhost` or a name under it (RFC 6761: always loopback), in any case,
/// with or without a trailing dot.
pub(crate) fn is_localhost(host: &str) -> bool {
    // Without allocating: it runs before every named host's cache lookup.
    const NAME: &str = "localhost";
    let host = host.strip_suffix('.').unwrap_or(host);
    let Some(at) = host.len().checked_sub(NAME.len()) else { return false };
    let ends = host.get(at..).is_some_and(|tail| tail.eq_ignore_ascii_case(NAME));
    ends && (at == 0 || host.as_bytes()[at - 1] == b'.')
}

/// The address `host` spells, if it is an IP literal: also the IPv4 forms resolvers (and the
/// URL standard) read as addresses, `127.1`, `2130706433`, `0x7f.0.0.1`, which are not
/// names to look up.
pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let numeric = |c: char| c.is_ascii_hexdigit() || matches!(c, '.' | 'x' | 'X');
    if !host.chars().all(numeric) {
        return None;
    }
    match url::Host::parse(host) {
        Ok(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        _ => None,
    }
}

#[cfg(test)]
impl PolicyResolver {
    /// For tests: `policy`, with a DNS server that is never there (a closed port on
    /// loopback), so only IP literals and `localhost` resolve and no query leaves the host.
    pub(crate) fn without_dns(policy: AddressPolicy) -> Self {
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
        Self::new(policy, Dns::new(&[nowhere], std::time::Duration::from_secs(30)))
    }
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The connector sets the real port afterwards.
            this.resolve(name.as_str(), 0).await.map(Vec::into_iter)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tower_service::Service;

    fn refused(ip: &str) -> bool {
        AddressPolicy::default().check(ip.parse().unwrap()).is_err()
    }

    #[test]
    fn non_global_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "168.63.129.16",
            "::ffff:168.63.129.16",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "::a00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn global_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2a00:1450::1",
        ] {
            assert!(!refused(ip), "{ip} should pass");
        }
    }

    #[test]
    fn the_allow_list_opens_ranges_also_for_mapped_addresses() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        let err = policy.check("10.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused: 10.0.0.1 is a private address (not in the webhook allow-list)"
        );
    }

    #[test]
    fn the_deny_list_wins_over_the_allow_list_and_over_global_addresses() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])
            .with_deny(vec!["127.0.0.2/32".parse().unwrap(), "203.0.114.0/24".parse().unwrap()]);
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        // Also as NAT64 (64:ff9b::cb00:7207) and 6to4 (2002:cb00:7207::1) addresses.
        for ip in [
            "127.0.0.2",
            "::ffff:127.0.0.2",
            "203.0.114.7",
            "::ffff:203.0.114.7",
            "64:ff9b::cb00:7207",
            "2002:cb00:7207::1",
        ] {
            let err = policy.check(ip.parse().unwrap()).unwrap_err();
            assert!(err.denied(), "{ip}");
            assert_eq!(err.to_string(), format!("refused: {ip} is in the webhook deny-list"));
        }
        assert!(policy.check("203.0.115.7".parse().unwrap()).is_ok(), "a global neighbour");
    }

    fn resolver(policy: AddressPolicy) -> PolicyResolver {
        PolicyResolver::without_dns(policy)
    }

    #[tokio::test]
    async fn literals_are_checked_without_lookup_and_brackets_are_stripped() {
        let closed = resolver(AddressPolicy::default());
        assert!(matches!(closed.resolve("10.0.0.1", 80).await, Err(ResolveError::Refused(_))));
        assert!(matches!(closed.resolve("[::1]", 80).await, Err(ResolveError::Refused(_))));
        let open = resolver(AddressPolicy::new(vec!["::1/128".parse().unwrap()]));
        let addrs = open.resolve("[::1]", 8080).await.unwrap();
        assert_eq!(addrs, vec!["[::1]:8080".parse().unwrap()]);
    }

    #[test]
    fn localhost_names_and_numeric_ipv4_forms_are_recognised() {
        for host in ["localhost", "LocalHost.", "api.localhost", "a.b.LOCALHOST."] {
            assert!(is_localhost(host), "{host}");
        }
        for host in ["localhost.example.com", "notlocalhost", "localhost..", "xlocalhost"] {
            assert!(!is_localhost(host), "{host}");
        }
        let v4 = |s: &str| ip_literal(s).map(|ip| ip.to_string());
        assert_eq!(v4("127.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("2130706433").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("0x7f.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("::1").as_deref(), Some("::1"));
        assert_eq!(v4("deadbeef.example"), None);
        assert_eq!(v4("hooks.example.com"), None);
    }

    /// Loopback names resolve without a query to the loopback addresses the policy allows.
    #[tokio::test]
    async fn localhost_is_whichever_loopback_address_is_allowed() {
        let v4_only = resolver(AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]));
        let addrs = v4_only.resolve("localhost", 80).await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap()]);
        let both = resolver(AddressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]));
        assert_eq!(both.resolve("api.localhost.", 80).await.unwrap().len(), 2);
        let fenced = resolver(
            AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
                .with_deny(vec!["127.0.0.1/32".parse().unwrap()]),
        );
        assert_eq!(
            fenced.resolve("localhost", 80).await.unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        let err = resolver(AddressPolicy::default()).resolve("localhost", 80).await.unwrap_err();
        assert!(err.to_string().contains("127.0.0.1 is a loopback address"), "{err}");
        // Numeric IPv4 forms are addresses, not names.
        let addrs = v4_only.resolve("127.1", 80).await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn the_connector_resolver_refuses_names_that_resolve_privately() {
        // `localhost` resolves locally (RFC 6761, no query) to loopback addresses only.
        let mut closed = resolver(AddressPolicy::default());
        let err = closed.call(Name::from_str("localhost").unwrap()).await.unwrap_err();
        assert!(matches!(err, ResolveError::Refused(_)), "{err}");

        let open =
            AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let addrs: Vec<_> =
            resolver(open).call(Name::from_str("localhost").unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
