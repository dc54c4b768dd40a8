//! [`ServerConfig`]: limits, timeouts and the admin token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Checks a webhook URL when an endpoint is created; `Err` carries the reason (422).
pub type UrlPolicy = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Who may create organizations over HTTP (`POST /api/keys/generate`). A mounted
/// [`ApiService`](crate::ApiService) takes it explicitly, because it cannot see which
/// address its requests arrive on.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminPolicy {
    /// Only callers sending `Authorization: Bearer <token>`.
    Token(String),
    /// Anyone who can reach the API. Only for an API reachable from loopback alone.
    Open,
    /// Nobody: 403 `key_generation_disabled`. The embedding application creates its
    /// organizations in process (`Ingestor::organization_or_create`) and hands out keys
    /// (`Ingestor::rotate_key`).
    Closed,
}

impl fmt::Debug for AdminPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Token(_) => "Token(<set>)",
            Self::Open => "Open",
            Self::Closed => "Closed",
        })
    }
}

/// What a request body may hold beyond the largest payload: the envelope of `POST
/// /api/events` (type, dedup id, field names) or of a batch. With the default payload limit
/// of 256 KiB, bodies of up to 272 KiB are read, so a payload of exactly the documented limit
/// is accepted.
pub const BODY_ENVELOPE: usize = 16 * 1024;

/// How the HTTP server runs. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request body in bytes (default 256 KiB + [`BODY_ENVELOPE`]); larger bodies get
    /// 413 as soon as the limit is crossed while reading.
    pub max_body: usize,
    /// How long a client may take to send a request's headers (default 10 s). Hyper starts
    /// this timer whenever it waits for a request, so it also closes keep-alive connections
    /// that stay idle this long.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body (default 30 s; 408 after).
    pub body_read_timeout: Duration,
    /// Most connections served at once (default 1024). Over the cap the server first closes
    /// the longest-idle keep-alive connection, then a new connection waits up to
    /// `connection_wait` for a free slot, then is closed.
    pub max_connections: usize,
    /// See `max_connections` (default 100 ms).
    pub connection_wait: Duration,
    /// On shutdown, how long in-flight requests get to finish (default 10 s).
    pub shutdown_timeout: Duration,
    /// When set, `POST /api/keys/generate` needs `Authorization: Bearer <token>`. Required
    /// when [`Server`](crate::Server) listens on a non-loopback address. A mounted
    /// [`ApiService`](crate::ApiService) takes its policy from `ServiceConfig::admin`.
    pub admin_token: Option<String>,
    /// An extra check of webhook URLs at creation (after the built-in one,
    /// `triggers_core::domain::validate::webhook_url`: `http` or `https`, a host, a port in
    /// 1–65535, no userinfo, at most 2048 bytes). The deliverer enforces its own rules again at delivery time.
    pub webhook_url_policy: Option<UrlPolicy>,
    /// Serve the dashboard (`GET /ui`) and the API docs (`GET /docs`) (default `true`);
    /// when `false` those routes answer 404 `route_not_found`.
    pub ui: bool,
    /// Extra `Host` values (`host` for any port, or `host:port`) served when no admin token
    /// is set; loopback names and addresses are always served. Without an admin token any
    /// other `Host` is refused with 421, so a web page on another origin cannot use a
    /// developer's browser (DNS rebinding) to mint keys. Ignored when an admin token is set.
    pub allowed_hosts: Vec<String>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`. When unset, `/metrics`
    /// is served only on connections accepted on a loopback address (403 otherwise).
    pub metrics_token: Option<String>,
    /// Most connections one peer IP address may hold at once (default 256); more are closed
    /// at once.
    pub max_connections_per_peer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body: triggers_core::domain::validate::DEFAULT_MAX_PAYLOAD + BODY_ENVELOPE,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            connection_wait: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            admin_token: None,
            webhook_url_policy: None,
            ui: true,
            allowed_hosts: Vec::new(),
            metrics_token: None,
            max_connections_per_peer: 256,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_body", &self.max_body)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("connection_wait", &self.connection_wait)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("webhook_url_policy", &self.webhook_url_policy.is_some())
            .field("ui", &self.ui)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<set>"))
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .finish()
    }
}
