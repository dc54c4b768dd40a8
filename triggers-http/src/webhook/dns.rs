//! Name lookups for webhook hosts: hickory's asynchronous resolver, with a cache and a time
//! limit.
//!
//! Why not the system's `getaddrinfo` (what `tokio::net::lookup_host` runs): it blocks one of
//! tokio's blocking threads, the pool SQLite's readers use too, until the system resolver gives
//! up, and nothing can cancel it. An organization pointing its endpoints at names whose
//! servers never answer kept threads busy past every attempt's timeout. It also knows no TTL,
//! so every attempt to a named host asked again.
//!
//! Here a lookup holds no thread, ends after `WebhookConfig::connect_timeout` (the attempt then
//! ends as a `Retry`), and its answers are kept for their TTL in one LRU cache
//! ([`CACHE_ENTRIES`]) shared by the deliverer's check and the connector: while an answer is
//! fresh, a delivery to that host sends no query. Failed lookups are not kept (a name with no
//! address is, for its negative TTL). What one organization's names can make the server hold
//! is bounded by its share of the delivery workers: one lookup per attempt, at most.
//!
//! Where the servers come from: `WebhookConfig::dns_servers` (`TRIGGERS_WEBHOOK_DNS_SERVERS`)
//! when set; otherwise the system's `/etc/resolv.conf` (servers, search domains, `ndots`,
//! timeouts), and if that cannot be read, 127.0.0.1:53, as the C library does. `/etc/hosts`
//! is read first in both cases, and `localhost` is always loopback (RFC 6761).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::ssrf::ResolveError;

/// Answers (one per name and record type) the cache keeps at most, least recently used first
/// out. An organization churning through many names only makes other names be asked again.
pub(crate) const CACHE_ENTRIES: usize = 4096;

/// The webhook client's resolver. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub(crate) struct Dns {
    resolver: Arc<TokioResolver>,
    limit: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("servers", &self.resolver.config().name_servers().len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Dns {
    /// A resolver asking `servers` (the system's when empty); each lookup ends after `limit`.
    /// Sends nothing yet.
    pub(crate) fn new(servers: &[SocketAddr], limit: Duration) -> Self {
        let (config, mut options) = if servers.is_empty() {
            system()
        } else {
            (ResolverConfig::from_parts(None, Vec::new(), group(servers)), ResolverOpts::default())
        };
        // Every address a name has, so the SSRF check sees all of them (as getaddrinfo did).
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.cache_size = CACHE_ENTRIES;
        options.use_hosts_file = ResolveHosts::Always;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        Self { resolver: Arc::new(resolver), limit }
    }

    /// The addresses of `host`, a DNS name (not an IP literal: those need no lookup).
    pub(crate) async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        match tokio::time::timeout(self.limit, self.resolver.lookup_ip(host)).await {
            Err(_) => Err(ResolveError::TimedOut(self.limit)),
            Ok(Err(err)) if err.is_no_records_found() => Err(ResolveError::NoAddress),
            Ok(Err(err)) => Err(ResolveError::Lookup(err)),
            Ok(Ok(found)) => Ok(found.iter().collect()),
        }
    }
}

/// UDP, and TCP for answers too long for a datagram, to each of `servers`.
fn group(servers: &[SocketAddr]) -> NameServerConfigGroup {
    let mut group = NameServerConfigGroup::with_capacity(servers.len() * 2);
    for &server in servers {
        group.push(NameServerConfig::new(server, Protocol::Udp));
        group.push(NameServerConfig::new(server, Protocol::Tcp));
    }
    group
}

/// The system's configuration, or the C library's fallback when it cannot be read. Never
/// hickory's own default, which names public resolvers.
fn system() -> (ResolverConfig, ResolverOpts) {
    match hickory_resolver::system_conf::read_system_conf() {
        Ok(conf) => conf,
        Err(err) => {
            tracing::warn!(
                error = %err,
                "cannot read the system's DNS configuration; webhook hosts are looked up at \
                 127.0.0.1:53 (set TRIGGERS_WEBHOOK_DNS_SERVERS to choose)"
            );
            let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);
            (ResolverConfig::from_parts(None, Vec::new(), group(&[local])), ResolverOpts::default())
        }
    }
}
