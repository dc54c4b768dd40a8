//! Webhook delivery over HTTP(S): the signed [`WebhookDeliverer`].
//!
//! Each attempt is one `POST` of the JSON body `{"id","type","created_at","payload"}` to the
//! endpoint's URL, signed as Standard Webhooks prescribe (`webhook-id` = the event id,
//! `webhook-timestamp` = the unix time of the attempt, `webhook-signature` = one `v1,…` per
//! valid secret). What the answer means:
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx within the total timeout | `Delivered` |
//! | 410 | `Gone` (the worker disables the endpoint) |
//! | 429, 502, 503, 504 | `Retry`, with `Retry-After` (seconds or HTTP-date) as the hint |
//! | any other status, 3xx included (redirects are never followed) | `Retry` on the schedule |
//! | timeout, connection or TLS error, DNS failure (no answer within `connect_timeout`, no address) | `Retry` |
//! | endpoint at its concurrency cap or rate for longer than `endpoint_wait` | `Deferred`: back to the queue for `endpoint_defer` (cap, default 1 s) or until the rate allows, no attempt used up |
//! | target address refused by the SSRF policy, invalid URL, scheme not http(s), no secret | `Permanent` |
//!
//! Reasons are short (≤ 200 bytes) and never contain secrets; nothing here logs headers.
//! The signing timestamp is the system's wall clock (receivers compare it with theirs), not
//! the ingestor's injectable clock.
//!
//! ```no_run
//! # fn demo() -> Result<(), triggers_http::webhook::WebhookError> {
//! use triggers_http::{WebhookConfig, WebhookDeliverer};
//! let deliverer = WebhookDeliverer::new(WebhookConfig {
//!     allow: vec!["127.0.0.0/8".parse().unwrap()], // local development only
//!     ..WebhookConfig::default()
//! })?;
//! # let _ = deliverer; Ok(()) }
//! ```

mod budget;
mod client;
mod deliverer;
mod dns;
mod limit;
mod outcome;
mod sign;
mod ssrf;

use std::time::Duration;

use ipnet::IpNet;

pub use deliverer::WebhookDeliverer;
pub use sign::{signature_header, webhook_body, Signer};

/// Settings of the [`WebhookDeliverer`].
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Time allowed to establish a connection: the DNS lookup, TCP connect and TLS handshake
    /// together (default 5 s). It also bounds a connection the pool finishes in the
    /// background after the attempt that started it took another one.
    pub connect_timeout: Duration,
    /// Time allowed for a whole attempt: DNS, connect, TLS, request and response (default 15 s).
    pub timeout: Duration,
    /// Idle connections kept per host (default 32).
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept (default 90 s).
    pub pool_idle_timeout: Duration,
    /// Outbound connections open at once at most, over every host (default 512,
    /// `TRIGGERS_WEBHOOK_MAX_CONNECTIONS`). A new one over it closes the idle connection used
    /// least recently (never one carrying a request); when every one carries a request, the
    /// attempt is deferred by `endpoint_defer` (no attempt used up).
    /// The pool's own limits are per host, so without this one an organization pointing its
    /// endpoints at many hosts or ports could make the process hold idle sockets until it
    /// runs out of file descriptors. Give it at least the number of workers.
    pub max_connections: usize,
    /// The `User-Agent` header (default `triggers-webhooks/<version>`).
    pub user_agent: String,
    /// At most this much of a response body is read (to reuse the connection); a longer body
    /// is dropped with its connection (default 64 KiB).
    pub max_response_body: usize,
    /// Networks that may be targeted although they are private, loopback or otherwise not
    /// global (default none). For tests and local development, e.g. `127.0.0.0/8`.
    pub allow: Vec<IpNet>,
    /// Networks that may never be targeted, global or allowed alike (default none,
    /// `TRIGGERS_WEBHOOK_DENY`): the deployment's own public addresses, or a neighbouring
    /// service on a global address that tenants must not reach.
    pub deny: Vec<IpNet>,
    /// DNS servers webhook hosts are looked up at (default none: the `nameserver`s of the
    /// system's `/etc/resolv.conf`; `TRIGGERS_WEBHOOK_DNS_SERVERS`). `/etc/hosts`, read when
    /// the deliverer is built, is consulted first either way; names are looked up as written
    /// (no search domains). A lookup has `connect_timeout`, and its answers are cached for
    /// their TTL (at least a second; "no such name" for at most 30 s); see
    /// [`WebhookConfig::parse_dns_servers`].
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Deliveries in flight to one endpoint at most (default 16).
    pub endpoint_concurrency: usize,
    /// Deliveries per second to one endpoint at most, with bursts of one second's worth
    /// (default none).
    pub endpoint_rate: Option<f64>,
    /// How long a delivery waits for its endpoint's concurrency or rate before giving its
    /// worker back with `Retry` (default 100 ms).
    pub endpoint_wait: Duration,
    /// How long a delivery that found its endpoint at the concurrency cap (for longer than
    /// `endpoint_wait`) goes back to the queue for; no attempt is used up (default 1 s,
    /// `TRIGGERS_ENDPOINT_DEFER`). The store's claim already keeps an endpoint within its cap
    /// across nodes; this is the node's own safety net.
    pub endpoint_defer: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            pool_max_idle_per_host: 32,
            pool_idle_timeout: Duration::from_secs(90),
            max_connections: 512,
            user_agent: concat!("triggers-webhooks/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_response_body: 64 * 1024,
            allow: Vec::new(),
            deny: Vec::new(),
            dns_servers: Vec::new(),
            endpoint_concurrency: 16,
            endpoint_rate: None,
            endpoint_wait: Duration::from_millis(100),
            endpoint_defer: Duration::from_secs(1),
        }
    }
}

impl WebhookConfig {
    /// Parses an allow-list such as `127.0.0.0/8, ::1/128` (comma- or space-separated CIDRs;
    /// a bare address means just that address), as in `TRIGGERS_WEBHOOK_ALLOW` — and a
    /// deny-list (`TRIGGERS_WEBHOOK_DENY`), written the same way.
    ///
    /// ```
    /// let allow = triggers_http::WebhookConfig::parse_allow("127.0.0.0/8, ::1").unwrap();
    /// assert_eq!(allow.len(), 2);
    /// assert!(triggers_http::WebhookConfig::parse_allow("localhost").is_err());
    /// ```
    pub fn parse_allow(s: &str) -> Result<Vec<IpNet>, WebhookError> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| WebhookError::AllowList(part.to_owned()))
            })
            .collect()
    }

    /// Parses a list of DNS servers such as `10.0.0.2, [fd00::53]:5353` (comma- or
    /// space-separated; an address without a port means port 53), as in
    /// `TRIGGERS_WEBHOOK_DNS_SERVERS`.
    ///
    /// ```
    /// use triggers_http::WebhookConfig;
    /// let servers = WebhookConfig::parse_dns_servers("10.0.0.2, 127.0.0.1:5353 ::1 [fd00::53]")
    ///     .unwrap();
    /// assert_eq!(servers[0], "10.0.0.2:53".parse().unwrap());
    /// assert_eq!(servers[1], "127.0.0.1:5353".parse().unwrap());
    /// assert_eq!(servers[2], "[::1]:53".parse().unwrap());
    /// assert_eq!(servers[3], "[fd00::53]:53".parse().unwrap());
    /// assert!(WebhookConfig::parse_dns_servers("dns.example.com").is_err());
    /// ```
    pub fn parse_dns_servers(s: &str) -> Result<Vec<std::net::SocketAddr>, WebhookError> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(|p| {
                let bare = p.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(p);
                p.parse::<std::net::SocketAddr>()
                    .or_else(|_| bare.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| WebhookError::DnsServer(p.to_owned()))
            })
            .collect()
    }

    /// The check a server runs when a webhook is configured (`ServerConfig::webhook_url_policy`):
    /// a target this deliverer's SSRF policy is sure to refuse is refused at once (422) rather
    /// than accepted and then failed on every delivery. That is a host that is an IP address
    /// in [`deny`](Self::deny), or outside the global unicast range and not in
    /// [`allow`](Self::allow), or `localhost` / `*.localhost` (loopback, RFC 6761: delivered
    /// to 127.0.0.1 or ::1, whichever is allowed) when neither is allowed. IPv4
    /// addresses are read the way resolvers read them (`127.1`, `2130706433`, `0x7f.0.0.1`
    /// are all 127.0.0.1), and a trailing dot changes nothing. Other names are not resolved
    /// here — configuring a webhook makes no DNS query — and are checked at each delivery,
    /// where DNS answers can change anyway.
    ///
    /// ```
    /// use triggers_http::WebhookConfig;
    /// let strict = WebhookConfig::default().url_policy();
    /// assert!(strict("http://localhost:8888/hook").unwrap_err().contains("TRIGGERS_WEBHOOK_ALLOW"));
    /// assert!(strict("http://10.1.2.3/hook").is_err());
    /// assert!(strict("http://2130706433/hook").is_err()); // 127.0.0.1
    /// assert!(strict("http://127.1/hook").is_err());
    /// assert!(strict("http://localhost./hook").is_err());
    /// assert!(strict("https://123.example.com/in").is_ok());
    /// assert!(strict("https://hooks.example.com/in").is_ok());
    /// let local = WebhookConfig { allow: WebhookConfig::parse_allow("127.0.0.0/8").unwrap(), ..Default::default() };
    /// assert!(local.url_policy()("http://localhost:8888/hook").is_ok());
    /// let fenced = WebhookConfig { deny: WebhookConfig::parse_allow("198.51.99.0/24").unwrap(), ..Default::default() };
    /// assert!(fenced.url_policy()("https://198.51.99.7/hook").unwrap_err().contains("TRIGGERS_WEBHOOK_DENY"));
    /// assert!(fenced.url_policy()("https://198.51.98.7/hook").is_ok());
    /// ```
    pub fn url_policy(&self) -> crate::UrlPolicy {
        let policy = ssrf::AddressPolicy::new(self.allow.clone()).with_deny(self.deny.clone());
        std::sync::Arc::new(move |url: &str| {
            let target = deliverer::parse_target(url)?;
            let host = target.host();
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let checked = if let Some(ip) = ssrf::ip_literal(host) {
                policy.check(ip)
            } else if ssrf::is_localhost(host) {
                policy.loopback().map(drop)
            } else {
                return Ok(());
            };
            checked.map_err(|refused| {
                if refused.denied() {
                    format!(
                        "{refused}: the server setting TRIGGERS_WEBHOOK_DENY \
                         (WebhookConfig::deny) refuses it as a webhook target"
                    )
                } else {
                    format!(
                        "{refused}: deliveries to it would all fail; the server setting \
                         TRIGGERS_WEBHOOK_ALLOW (WebhookConfig::allow) opens such addresses"
                    )
                }
            })
        })
    }
}

/// The deliverer could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The TLS client configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// The user agent is not a valid header value.
    #[error("invalid user agent")]
    UserAgent,
    /// An allow-list entry is neither a CIDR nor an IP address.
    #[error("invalid webhook allow-list entry {0:?}: expected a CIDR such as 127.0.0.0/8")]
    AllowList(String),
    /// A DNS server entry is neither an IP address nor an IP address with a port.
    #[error("invalid DNS server {0:?}: expected an IP address, with or without a port")]
    DnsServer(String),
}
