//! Name lookups for webhook hosts: hickory's asynchronous resolver, behind a small cache of
//! our own, with a time limit.
//!
//! Why not the system's `getaddrinfo` (what `tokio::net::lookup_host` runs): it blocks one of
//! tokio's blocking threads, the pool SQLite's readers use too, until the system resolver gives
//! up, and nothing can cancel it. An organization pointing its endpoints at names whose
//! servers never answer kept threads busy past every attempt's timeout. It also knows no TTL,
//! so every attempt to a named host asked again.
//!
//! Here a lookup holds no thread and ends after `WebhookConfig::connect_timeout` (the attempt
//! then ends as a `Retry`); inside it, each question is asked up to three times, each time for
//! a quarter of the limit, so one lost datagram costs a retry and not the attempt, and a name
//! server that never answers AAAA (or A) still lets the other family's addresses through. An
//! answer is kept until its TTL ends (a day at most), as at most [`MAX_ADDRESSES`] addresses, in one cache of
//! at most [`CACHE_ENTRIES`] names shared by the deliverer's check and the connector: while an
//! answer is fresh, a delivery to that host sends no query, and attempts that find no
//! fresh answer for a name wait for one lookup together. An answer is kept at least
//! [`MIN_TTL`] (a tenant's name server answering with TTL 0 would otherwise be asked at every
//! attempt, through the operator's resolver), and "no such name" is kept too, for its zone's
//! negative TTL within [`MIN_TTL`] ..= [`MAX_NEGATIVE_TTL`] (an endpoint at a missing name
//! would otherwise send a question per delivery of its backlog). "No A or AAAA record" is
//! kept for [`MIN_TTL`] only: it may be one family's answer while the other's failed (the
//! resolver reports whichever came first when both fail). Other failures are not kept: a
//! server failing, refusing or silent may pass. So a
//! name whose servers answer is asked at most about once per [`MIN_TTL`] per node, however
//! many deliveries go to it. What one organization's names can make the server hold is bounded by its share of the
//! delivery workers (one lookup per attempt at a time) and by the cache's size in entries and
//! addresses, whatever its name servers answer (hickory's own cache is off: it counts
//! answers, not bytes, and an answer can hold thousands of records). A trailing dot is
//! dropped before the cache is asked (`hooks.test.` and `hooks.test` are one entry); the URL
//! parser has already lowercased the name.
//!
//! Where the servers come from: `WebhookConfig::dns_servers` (`TRIGGERS_WEBHOOK_DNS_SERVERS`)
//! when set; otherwise the `nameserver`s of the system's `/etc/resolv.conf` (its timeout, if
//! shorter than a quarter of the limit, and its other options where hickory reads them), and
//! 127.0.0.1:53 when it names none or is missing, as the C library does. Names are looked up
//! as written: a webhook host is a public name, so the system's search domains are not
//! appended (they would let a tenant's `db` reach the operator's `db.internal`). `/etc/hosts`
//! is read once, when the deliverer is built, and consulted first: a name it lists gets its
//! addresses only (no query for the other family). `localhost` names never get here (see
//! `PolicyResolver::resolve`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Hosts, Name, TokioResolver};

use super::ssrf::ResolveError;

/// Names whose answers the cache keeps at most (moka's admission and eviction decide which).
/// An organization churning through many names only makes other names be asked again.
pub(crate) const CACHE_ENTRIES: u64 = 4096;

/// Addresses kept (and connected to) per name at most: the first ones of the answer (the
/// family whose answer came first, then the other). With the name itself (≤ 253 bytes) this
/// bounds the cache to a few MiB, whatever a tenant's name servers answer.
pub(crate) const MAX_ADDRESSES: usize = 32;

/// Shortest time an answer is kept, whatever TTL its server gave.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);

/// Longest time an answer is kept (as resolvers cap TTLs: hickory's own cache, a day too).
pub(crate) const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest time "no such name" is kept: a name that was just created is found within this.
pub(crate) const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// The system's resolver configuration, read when the system's servers are used.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the cache keeps for a name, for `ttl` after it was asked.
#[derive(Debug)]
struct Answer {
    /// Its first addresses, or why it has none (fixed words).
    found: Result<Arc<[IpAddr]>, &'static str>,
    ttl: Duration,
}

/// Entries expire when their answer's TTL (as kept) ends.
struct AnswerTtl;

impl moka::Expiry<String, Arc<Answer>> for AnswerTtl {
    fn expire_after_create(
        &self,
        _: &String,
        answer: &Arc<Answer>,
        _: Instant,
    ) -> Option<Duration> {
        Some(answer.ttl)
    }
}

/// The webhook client's resolver. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub(crate) struct Dns {
    resolver: Arc<TokioResolver>,
    hosts: Arc<Hosts>,
    cache: moka::future::Cache<String, Arc<Answer>>,
    limit: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("servers", &self.resolver.config().name_servers().len())
            .field("cached", &self.cache.entry_count())
            .field("limit", &self.limit)
            .finish()
    }
}

impl Dns {
    /// A resolver asking `servers` (the system's when empty); each lookup ends after `limit`.
    /// Reads `/etc/hosts` (and `/etc/resolv.conf` for the system's servers); sends nothing.
    pub(crate) fn new(servers: &[SocketAddr], limit: Duration) -> Self {
        Self::with_hosts(servers, limit, Hosts::from_system().unwrap_or_default())
    }

    /// [`new`](Self::new), with `hosts` in place of `/etc/hosts`.
    fn with_hosts(servers: &[SocketAddr], limit: Duration, hosts: Hosts) -> Self {
        let (servers, mut options) =
            if servers.is_empty() { system() } else { (group(servers), ResolverOpts::default()) };
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        // Every address a name has, so the SSRF check sees all of them (as getaddrinfo did);
        // if one family's question fails, the other's addresses are the answer.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = options.timeout.min(limit / 4);
        options.attempts = 2;
        options.cache_size = 0;
        // `/etc/hosts` is read here instead (`pinned_in_hosts`): hickory would ask DNS for the
        // family a hosts entry lacks, and merge its answer into the pinned one.
        options.use_hosts_file = ResolveHosts::Never;
        // Answers up to 1 232 bytes over UDP rather than TCP above 512.
        options.edns0 = true;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        let cache = moka::future::Cache::builder()
            .max_capacity(CACHE_ENTRIES)
            .expire_after(AnswerTtl)
            .build();
        Self { resolver: Arc::new(resolver), hosts: Arc::new(hosts), cache, limit }
    }

    /// The addresses of `host`, a DNS name (not an IP literal: those need no lookup), from
    /// the cache while its answer is fresh; concurrent callers missing it share one lookup.
    pub(crate) async fn lookup(&self, host: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let answer = match self.cache.get(host).await {
            Some(hit) => hit,
            None => {
                // As written (ASCII, which a URL's host is): IDNA rules would refuse names
                // such as `my_hooks.example.com` that resolvers serve.
                let name = Name::from_ascii(host)
                    .map_err(|_| ResolveError::NoAddress("not a DNS name"))?;
                if let Some(pinned) = self.pinned_in_hosts(&name) {
                    return Ok(pinned);
                }
                let asked = self.cache.try_get_with(host.to_owned(), self.ask(name));
                asked.await.map_err(|shared| (*shared).clone())?
            }
        };
        answer.found.clone().map_err(ResolveError::NoAddress)
    }

    /// One lookup of `name` at its servers, within the limit: the answer to keep, or a
    /// failure not to keep.
    async fn ask(&self, name: Name) -> Result<Arc<Answer>, ResolveError> {
        let asked = self.resolver.lookup_ip(name.clone());
        let found = match tokio::time::timeout(self.limit, asked).await {
            Err(_) => return Err(ResolveError::TimedOut(self.limit)),
            Ok(Err(err)) => return self.failure(&name, err).map(Arc::new),
            Ok(Ok(found)) => found,
        };
        let addrs: Arc<[IpAddr]> = found.iter().take(MAX_ADDRESSES).collect();
        if addrs.is_empty() {
            let ttl = MIN_TTL;
            return Ok(Arc::new(Answer { found: Err("no A or AAAA record"), ttl }));
        }
        let ttl = found.valid_until().saturating_duration_since(Instant::now());
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        Ok(Arc::new(Answer { found: Ok(addrs), ttl }))
    }
}

impl Dns {
    /// The addresses `/etc/hosts` gives `name`, if it names it: then they are the whole
    /// answer, as with the C library's `files` before `dns`.
    fn pinned_in_hosts(&self, name: &Name) -> Option<Arc<[IpAddr]>> {
        let of = |kind| self.hosts.lookup_static_host(&Query::query(name.clone(), kind));
        let (a, aaaa) = (of(RecordType::A), of(RecordType::AAAA));
        if a.is_none() && aaaa.is_none() {
            return None;
        }
        let ips = a.iter().chain(aaaa.iter()).flat_map(|found| found.iter());
        Some(ips.filter_map(|rdata| rdata.ip_addr()).take(MAX_ADDRESSES).collect())
    }

    /// What a failed lookup tells the organization, in fixed words: "no such name", to keep
    /// for the zone's negative TTL (within [`MIN_TTL`] ..= [`MAX_NEGATIVE_TTL`]); "no A or
    /// AAAA record", to keep for [`MIN_TTL`] (it may be one family's answer while the
    /// other's failed); or a failure that may pass. NXDOMAIN is about the name, whatever the
    /// record type. The resolver's own message may name the operator's name servers; it goes
    /// to the debug log.
    fn failure(
        &self,
        name: &Name,
        err: hickory_resolver::ResolveError,
    ) -> Result<Answer, ResolveError> {
        tracing::debug!(host = %name, error = %err, "webhook host lookup failed");
        let Some(kind) = err.proto().map(|p| p.kind()) else { return Err(ResolveError::Lookup) };
        let (response_code, negative_ttl) = match kind {
            // Every try timed out: within the limit, as the tries fit in it.
            ProtoErrorKind::Timeout => return Err(ResolveError::TimedOut(self.limit)),
            ProtoErrorKind::NoRecordsFound { response_code, negative_ttl, .. } => {
                (*response_code, *negative_ttl)
            }
            _ => return Err(ResolveError::Lookup),
        };
        let why = match response_code {
            ResponseCode::NXDomain => "no such name",
            ResponseCode::NoError => "no A or AAAA record",
            ResponseCode::ServFail => "the name's servers failed",
            ResponseCode::Refused => "the name server refused",
            _ => "the name server answered with an error",
        };
        let ttl = match response_code {
            ResponseCode::NXDomain => Duration::from_secs(negative_ttl.unwrap_or(0).into()),
            ResponseCode::NoError => MIN_TTL,
            _ => return Err(ResolveError::NoAddress(why)),
        };
        Ok(Answer { found: Err(why), ttl: ttl.clamp(MIN_TTL, MAX_NEGATIVE_TTL) })
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

/// The system's name servers and options; never hickory's default servers, which are public
/// resolvers. When hickory cannot parse the file (an option it does not know makes it refuse
/// the whole file), its `nameserver` lines are read here, with default options.
fn system() -> (NameServerConfigGroup, ResolverOpts) {
    if let Ok((config, options)) = hickory_resolver::system_conf::read_system_conf() {
        if !config.name_servers().is_empty() {
            return (config.name_servers().to_vec().into(), options);
        }
    }
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let mut servers = nameservers(&text);
    if servers.is_empty() {
        tracing::warn!(
            "{RESOLV_CONF} names no usable name server; webhook hosts are looked up at \
             127.0.0.1:53 (set TRIGGERS_WEBHOOK_DNS_SERVERS to choose)"
        );
        servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
    }
    (group(&servers), ResolverOpts::default())
}

/// The `nameserver` lines of a resolv.conf text, on port 53 (an IPv6 zone is dropped).
fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_are_read_when_hickory_refuses_the_file() {
        let text = "# generated\nsearch corp.internal\nnameserver 10.0.0.2\n\
                    options strict-error\nnameserver fe80::1%eth0\nnameserver nonsense\n";
        let servers = nameservers(text);
        assert_eq!(servers, ["10.0.0.2:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
        assert!(nameservers("").is_empty());
    }

    /// A name `/etc/hosts` lists gets its addresses only: no question goes out, not even for
    /// the family the file does not give.
    #[tokio::test]
    async fn a_name_in_the_hosts_file_is_answered_without_a_query() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut hosts = Hosts::default();
        hosts.read_hosts_conf("127.0.0.7 pinned.test\n".as_bytes()).unwrap();
        let dns = Dns::with_hosts(&[server.local_addr().unwrap()], Duration::from_secs(2), hosts);
        let found = dns.lookup("pinned.test").await.unwrap();
        assert_eq!(&*found, &[IpAddr::from([127, 0, 0, 7])]);
        // Any question would have arrived by now (the lookup waited for no answer).
        let mut buf = [0u8; 512];
        assert!(server.try_recv(&mut buf).is_err(), "a question was sent");
        // Names it does not list are asked for.
        let asked = tokio::spawn(async move { dns.lookup("other.test").await });
        let question = tokio::time::timeout(Duration::from_secs(5), server.recv(&mut buf)).await;
        assert!(question.is_ok(), "no question for a name outside the hosts file");
        asked.abort();
    }
}
