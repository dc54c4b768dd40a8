//! The example server's settings, read from environment variables (SPEC §5) and checked
//! up front: a bad value is a [`SettingsError`] naming the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use triggers_core::domain::sealed::{SecretCipher, SecretKey};
use triggers_core::store::StoreLimits;
use triggers_core::{IngestorConfig, RetryPolicy, TierLimits, WorkerConfig};

use crate::config::ServerConfig;

/// Every variable: name, default, meaning.
pub const VARIABLES: [(&str, &str, &str); 30] = [
    ("TRIGGERS_LISTEN", "127.0.0.1:8080", "address to bind (IP:port)"),
    ("DATABASE_URL", "sqlite://triggers.db", "sqlite://PATH or postgres://…"),
    (
        "TRIGGERS_ADMIN_TOKEN",
        "unset",
        "bearer token for POST /api/keys/generate (required on non-loopback addresses)",
    ),
    (
        "TRIGGERS_TIER_LIMITS",
        "free=10,starter=60,professional=600,enterprise=6000",
        "per-minute limits per tier (`unlimited`: no limit)",
    ),
    ("TRIGGERS_DEDUP_WINDOW", "24h", "dedup window (e.g. 90s, 30m, 24h, 7d)"),
    (
        "TRIGGERS_MAX_BODY",
        "262144",
        "largest event payload in bytes (a request body may be 16 KiB more)",
    ),
    ("TRIGGERS_WORKERS", "64", "concurrent webhook deliveries (0: none, inbox only)"),
    (
        "TRIGGERS_RETRY_SCHEDULE",
        "0s,5s,5m,30m,2h,5h,10h,10h",
        "delays before each delivery attempt",
    ),
    (
        "TRIGGERS_WEBHOOK_ALLOW",
        "unset",
        "CIDRs webhooks may target although private/loopback (e.g. 127.0.0.0/8); \
         others are refused when configured",
    ),
    (
        "TRIGGERS_WEBHOOK_DENY",
        "unset",
        "CIDRs webhooks may never target, global or allowed (e.g. the deployment's own \
         public addresses); refused when configured and at every delivery",
    ),
    (
        "TRIGGERS_WEBHOOK_DNS_SERVERS",
        "unset",
        "DNS servers webhook hosts are looked up at (IP or IP:port, comma-separated); unset: \
         the nameservers of /etc/resolv.conf (/etc/hosts first either way)",
    ),
    (
        "TRIGGERS_WEBHOOK_MAX_CONNECTIONS",
        "512",
        "outbound webhook connections open at once, over every host; a new one closes the \
         idle one used least recently (1 to 100000)",
    ),
    ("RUST_LOG", "info", "log filter"),
    ("TRIGGERS_UI", "on", "serve the dashboard at /ui and the API docs at /docs (on or off)"),
    (
        "TRIGGERS_DB_ACQUIRE_TIMEOUT",
        "2s",
        "PostgreSQL: longest wait for a database connection before a request is answered 503",
    ),
    ("TRIGGERS_MAX_ENDPOINTS", "50", "webhook endpoints per organization (1 to 100000)"),
    (
        "TRIGGERS_MAX_ATTEMPTS_KEPT",
        "100",
        "attempt records kept per event and endpoint (deleted endpoints' count as one's); the \
         oldest are dropped (1 to 100000)",
    ),
    (
        "TRIGGERS_RETENTION",
        "30d",
        "purge delivered and failed events older than this (e.g. 12h, 30d; off: keep all)",
    ),
    (
        "TRIGGERS_MAX_PENDING",
        "7d",
        "pending events an organization may keep: its tier's per-minute limit times the minutes \
         of this duration (7d: 100800 on the free tier); more are refused with 422 \
         limit_exceeded until some are delivered or acknowledged (e.g. 1d; off: no bound)",
    ),
    (
        "TRIGGERS_SECRET_KEY",
        "unset",
        "base64 of 32 random bytes: webhook signing secrets encrypted at rest (openssl rand -base64 32)",
    ),
    (
        "TRIGGERS_SECRET_KEY_OLD",
        "unset",
        "the previous TRIGGERS_SECRET_KEY during a key rotation: still decrypts, re-encrypted at start",
    ),
    (
        "TRIGGERS_RATE_LIMITER",
        "shared on PostgreSQL, local on SQLite",
        "local: per process; shared: one limit across the nodes of a PostgreSQL database",
    ),
    (
        "TRIGGERS_MAX_PAGE_BYTES",
        "4194304",
        "byte budget of one list page (always at least one item)",
    ),
    (
        "TRIGGERS_ALLOWED_HOSTS",
        "unset",
        "extra Host values (host or host:port, comma-separated) served when no admin token is set",
    ),
    (
        "TRIGGERS_METRICS_TOKEN",
        "unset",
        "bearer token for GET /metrics (unset: /metrics is served on loopback binds only)",
    ),
    (
        "TRIGGERS_MAX_CONNECTIONS_PER_PEER",
        "256",
        "connections one client IPv4 address (or IPv6 /64) may hold",
    ),
    (
        "TRIGGERS_ORG_CONCURRENCY",
        "a quarter of TRIGGERS_WORKERS (at least 1)",
        "deliveries one organization may have in flight at once (all nodes)",
    ),
    (
        "TRIGGERS_ENDPOINT_CONCURRENCY",
        "16",
        "deliveries one endpoint may have in flight at once (all nodes; a failing one gets 1)",
    ),
    (
        "TRIGGERS_ENDPOINT_DEFER",
        "1s",
        "how long a delivery to an endpoint at its cap waits before it is tried again",
    ),
    (
        "TRIGGERS_STORE_CONCURRENCY",
        "4",
        "organization requests other than ingestion at the store at once on this node; \
         one organization may hold all but one; lookups of never-seen API keys: half",
    ),
];

/// Where rate limits are kept (`TRIGGERS_RATE_LIMITER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimiterKind {
    /// In the process: exact for one process; N processes allow up to N times the limit.
    Local,
    /// In the database, taken in small chunks per node: one limit across every node.
    Shared,
}

/// Where events are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl Database {
    /// A description without credentials, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("SQLite at {}", path.display()),
            Self::Postgres(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                let host = host.split('?').next().unwrap_or(host);
                format!("PostgreSQL at {host}")
            }
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A setting has a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct SettingsError {
    /// The variable's name.
    pub var: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The server's settings. `Debug` hides the admin token and database credentials.
#[derive(Clone)]
pub struct Settings {
    /// `TRIGGERS_LISTEN`.
    pub listen: SocketAddr,
    /// `DATABASE_URL`.
    pub database: Database,
    /// `TRIGGERS_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `TRIGGERS_TIER_LIMITS`.
    pub tier_limits: TierLimits,
    /// `TRIGGERS_DEDUP_WINDOW`.
    pub dedup_window: Duration,
    /// `TRIGGERS_MAX_BODY`.
    pub max_body: usize,
    /// `TRIGGERS_WORKERS`.
    pub workers: usize,
    /// `TRIGGERS_RETRY_SCHEDULE`.
    pub retry: RetryPolicy,
    /// `TRIGGERS_WEBHOOK_ALLOW`.
    pub webhook_allow: Vec<IpNet>,
    /// `TRIGGERS_WEBHOOK_DENY`.
    pub webhook_deny: Vec<IpNet>,
    /// `TRIGGERS_WEBHOOK_DNS_SERVERS` (empty: the system's).
    pub webhook_dns_servers: Vec<std::net::SocketAddr>,
    /// `RUST_LOG`.
    pub log_filter: String,
    /// `TRIGGERS_UI`.
    pub ui: bool,
    /// `TRIGGERS_DB_ACQUIRE_TIMEOUT`.
    pub db_acquire_timeout: Duration,
    /// `TRIGGERS_MAX_ENDPOINTS` and `TRIGGERS_MAX_ATTEMPTS_KEPT`: give them to the store.
    pub store_limits: StoreLimits,
    /// `TRIGGERS_RETENTION`; `None` for `off`.
    pub retention: Option<Duration>,
    /// `TRIGGERS_MAX_PENDING`; `None` for `off`.
    pub max_pending: Option<Duration>,
    /// `TRIGGERS_SECRET_KEY` (and `TRIGGERS_SECRET_KEY_OLD`).
    pub secret_cipher: Option<Arc<SecretCipher>>,
    /// `TRIGGERS_RATE_LIMITER`.
    pub rate_limiter: RateLimiterKind,
    /// `TRIGGERS_MAX_PAGE_BYTES`.
    pub max_page_bytes: u64,
    /// `TRIGGERS_ALLOWED_HOSTS`.
    pub allowed_hosts: Vec<String>,
    /// `TRIGGERS_METRICS_TOKEN`.
    pub metrics_token: Option<String>,
    /// `TRIGGERS_MAX_CONNECTIONS_PER_PEER`.
    pub max_connections_per_peer: usize,
    /// `TRIGGERS_ORG_CONCURRENCY`; `None`: a quarter of the workers (at least 1).
    pub org_concurrency: Option<usize>,
    /// `TRIGGERS_ENDPOINT_CONCURRENCY`.
    pub endpoint_concurrency: usize,
    /// `TRIGGERS_ENDPOINT_DEFER`.
    pub endpoint_defer: Duration,
    /// `TRIGGERS_WEBHOOK_MAX_CONNECTIONS`.
    pub webhook_max_connections: usize,
    /// `TRIGGERS_STORE_CONCURRENCY`.
    pub store_concurrency: usize,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("database", &self.database)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("tier_limits", &self.tier_limits)
            .field("dedup_window", &self.dedup_window)
            .field("max_body", &self.max_body)
            .field("workers", &self.workers)
            .field("retry", &self.retry)
            .field("webhook_allow", &self.webhook_allow)
            .field("webhook_deny", &self.webhook_deny)
            .field("webhook_dns_servers", &self.webhook_dns_servers)
            .field("log_filter", &self.log_filter)
            .field("ui", &self.ui)
            .field("db_acquire_timeout", &self.db_acquire_timeout)
            .field("store_limits", &self.store_limits)
            .field("retention", &self.retention)
            .field("max_pending", &self.max_pending)
            .field("secret_cipher", &self.secret_cipher)
            .field("rate_limiter", &self.rate_limiter)
            .field("max_page_bytes", &self.max_page_bytes)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<set>"))
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field("org_concurrency", &self.org_concurrency)
            .field("endpoint_concurrency", &self.endpoint_concurrency)
            .field("store_concurrency", &self.store_concurrency)
            .field("endpoint_defer", &self.endpoint_defer)
            .field("webhook_max_connections", &self.webhook_max_connections)
            .finish()
    }
}

fn bad(var: &'static str, value: &str, expected: impl fmt::Display) -> SettingsError {
    SettingsError { var, message: format!("invalid value {value:?}: {expected}") }
}

impl Settings {
    /// Reads the process environment. A variable that is not valid UTF-8 is an error.
    pub fn from_env() -> Result<Self, SettingsError> {
        let mut map = HashMap::new();
        for (var, _, _) in VARIABLES {
            match std::env::var(var) {
                Ok(v) => {
                    map.insert(var.to_owned(), v);
                }
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SettingsError { var, message: "is not valid UTF-8".into() })
                }
            }
        }
        Self::from_env_map(&map)
    }

    /// Reads settings from `vars` (name → value); missing or empty variables take their
    /// defaults. Other names are ignored.
    pub fn from_env_map(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        const LISTEN: &str = "TRIGGERS_LISTEN";
        let listen_text = get(LISTEN).unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| bad(LISTEN, listen_text, "expected IP:port, e.g. 127.0.0.1:8080"))?;

        const DB: &str = "DATABASE_URL";
        let db_text = get(DB).unwrap_or("sqlite://triggers.db");
        let database = if let Some(path) = db_text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad(
                    DB,
                    db_text,
                    "sqlite:// needs a file path, e.g. sqlite://triggers.db",
                ));
            }
            Database::Sqlite(PathBuf::from(path))
        } else if db_text.starts_with("postgres://") || db_text.starts_with("postgresql://") {
            Database::Postgres(db_text.to_owned())
        } else {
            let shown = Database::Postgres(db_text.to_owned()).describe();
            return Err(SettingsError {
                var: DB,
                message: format!(
                    "unsupported URL ({shown}): expected sqlite://PATH or postgres://…"
                ),
            });
        };

        let admin_token = get("TRIGGERS_ADMIN_TOKEN").map(str::to_owned);
        if admin_token.is_none() && !listen.ip().is_loopback() {
            return Err(SettingsError {
                var: "TRIGGERS_ADMIN_TOKEN",
                message: format!(
                    "must be set when TRIGGERS_LISTEN is not a loopback address ({listen})"
                ),
            });
        }

        const TIERS: &str = "TRIGGERS_TIER_LIMITS";
        let tier_limits = match get(TIERS) {
            None => TierLimits::default(),
            Some(v) => {
                v.parse().map_err(|e| SettingsError { var: TIERS, message: format!("{e}") })?
            }
        };

        const DEDUP: &str = "TRIGGERS_DEDUP_WINDOW";
        let dedup_window = match get(DEDUP) {
            None => Duration::from_secs(24 * 3600),
            Some(v) => triggers_core::retry::parse_duration(v)
                .ok_or_else(|| bad(DEDUP, v, "expected a duration such as 90s, 30m, 24h or 7d"))?,
        };

        const BODY: &str = "TRIGGERS_MAX_BODY";
        let max_body = match get(BODY) {
            None => 262_144,
            Some(v) => {
                v.parse::<usize>().ok().filter(|n| (64..=1 << 30).contains(n)).ok_or_else(|| {
                    bad(BODY, v, "expected a number of bytes from 64 to 1073741824")
                })?
            }
        };

        const WORKERS: &str = "TRIGGERS_WORKERS";
        let workers = match get(WORKERS) {
            None => WorkerConfig::default().concurrency,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 100_000)
                .ok_or_else(|| bad(WORKERS, v, "expected a whole number from 0 to 100000"))?,
        };

        const RETRY: &str = "TRIGGERS_RETRY_SCHEDULE";
        let retry = match get(RETRY) {
            None => RetryPolicy::default(),
            Some(v) => {
                v.parse().map_err(|e| SettingsError { var: RETRY, message: format!("{e}") })?
            }
        };

        let networks = |var: &'static str| -> Result<Vec<IpNet>, SettingsError> {
            match get(var) {
                None => Ok(Vec::new()),
                Some(v) => v
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse::<IpNet>()
                            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| {
                                bad(var, p, "expected CIDRs such as 127.0.0.0/8,10.0.0.0/8")
                            })
                    })
                    .collect(),
            }
        };
        let webhook_allow = networks("TRIGGERS_WEBHOOK_ALLOW")?;
        let webhook_deny = networks("TRIGGERS_WEBHOOK_DENY")?;
        const DNS: &str = "TRIGGERS_WEBHOOK_DNS_SERVERS";
        let webhook_dns_servers = match get(DNS) {
            None => Vec::new(),
            Some(v) => crate::WebhookConfig::parse_dns_servers(v).map_err(|err| match err {
                crate::webhook::WebhookError::DnsServer(entry) => bad(
                    DNS,
                    &entry,
                    "expected IP addresses, with or without a port, such as 10.0.0.2,[fd00::53]:5353",
                ),
                other => bad(DNS, v, other),
            })?,
        };

        let log_filter = get("RUST_LOG").unwrap_or("info").to_owned();

        const UI: &str = "TRIGGERS_UI";
        let ui = match get(UI).map(str::to_ascii_lowercase).as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(_) => return Err(bad(UI, get(UI).unwrap_or(""), "expected on or off")),
        };

        const ACQUIRE: &str = "TRIGGERS_DB_ACQUIRE_TIMEOUT";
        let db_acquire_timeout = match get(ACQUIRE) {
            None => Duration::from_secs(2),
            Some(v) => triggers_core::retry::parse_duration(v)
                .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(300)).contains(d))
                .ok_or_else(|| bad(ACQUIRE, v, "expected a duration from 1s to 5m, e.g. 2s"))?,
        };

        let count = |var: &'static str, default: u32| match get(var) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| bad(var, v, "expected a whole number from 1 to 100000")),
        };
        // A duration of at least `min`, or `off` (None); `default` when unset.
        let duration_or_off =
            |var: &'static str, default: Duration, min: Duration, hint| match get(var) {
                None => Ok(Some(default)),
                Some(v) if v.eq_ignore_ascii_case("off") => Ok(None),
                Some(v) => triggers_core::retry::parse_duration(v)
                    .filter(|d| *d >= min)
                    .map(Some)
                    .ok_or_else(|| bad(var, v, hint)),
            };
        let retention = duration_or_off(
            "TRIGGERS_RETENTION",
            Duration::from_secs(30 * 24 * 3600),
            Duration::from_secs(1),
            "expected a duration of at least 1s (e.g. 30d) or off",
        )?;
        let max_pending = duration_or_off(
            "TRIGGERS_MAX_PENDING",
            triggers_core::DEFAULT_MAX_PENDING,
            Duration::from_secs(60),
            "expected a duration of at least 1m (e.g. 7d) or off",
        )?;

        let key = |var: &'static str| {
            get(var)
                .map(|v| {
                    SecretKey::from_base64(v).map_err(|e| SettingsError {
                        var,
                        message: format!("{e} (e.g. from `openssl rand -base64 32`)"),
                    })
                })
                .transpose()
        };
        let secret_cipher = match (key("TRIGGERS_SECRET_KEY")?, key("TRIGGERS_SECRET_KEY_OLD")?) {
            (Some(current), old) => Some(Arc::new(SecretCipher::new(current, old))),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(SettingsError {
                    var: "TRIGGERS_SECRET_KEY_OLD",
                    message: "needs TRIGGERS_SECRET_KEY (the new key) as well".into(),
                })
            }
        };

        // Shared is the default on PostgreSQL, where several nodes may serve one database;
        // a SQLite file is served by one process, whose local limiter is already exact.
        const LIMITER: &str = "TRIGGERS_RATE_LIMITER";
        let rate_limiter = match (get(LIMITER), &database) {
            (None, Database::Postgres(_)) => RateLimiterKind::Shared,
            (None, Database::Sqlite(_)) => RateLimiterKind::Local,
            (Some(v), _) if v.eq_ignore_ascii_case("local") => RateLimiterKind::Local,
            (Some(v), Database::Postgres(_)) if v.eq_ignore_ascii_case("shared") => {
                RateLimiterKind::Shared
            }
            (Some(v), Database::Sqlite(_)) if v.eq_ignore_ascii_case("shared") => {
                return Err(bad(
                    LIMITER,
                    v,
                    "shared needs PostgreSQL; one process serves a SQLite file and its local \
                     limiter is exact",
                ))
            }
            (Some(v), _) => return Err(bad(LIMITER, v, "expected local or shared")),
        };

        let store_limits = StoreLimits {
            max_endpoints: count("TRIGGERS_MAX_ENDPOINTS", StoreLimits::DEFAULT_MAX_ENDPOINTS)?,
            max_attempts_kept: count(
                "TRIGGERS_MAX_ATTEMPTS_KEPT",
                StoreLimits::DEFAULT_MAX_ATTEMPTS_KEPT,
            )?,
        };

        const PAGE: &str = "TRIGGERS_MAX_PAGE_BYTES";
        let max_page_bytes = match get(PAGE) {
            None => triggers_core::store::DEFAULT_MAX_PAGE_BYTES,
            Some(v) => {
                v.parse::<u64>().ok().filter(|n| (1024..=1 << 32).contains(n)).ok_or_else(|| {
                    bad(PAGE, v, "expected a number of bytes from 1024 to 4294967296")
                })?
            }
        };

        const HOSTS: &str = "TRIGGERS_ALLOWED_HOSTS";
        let allowed_hosts = match get(HOSTS) {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| {
                    let ok = h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    });
                    if ok {
                        Ok(h.to_owned())
                    } else {
                        Err(bad(HOSTS, h, "expected host names such as api.example.com:8080"))
                    }
                })
                .collect::<Result<_, _>>()?,
        };

        let metrics_token = get("TRIGGERS_METRICS_TOKEN").map(str::to_owned);

        const PER_PEER: &str = "TRIGGERS_MAX_CONNECTIONS_PER_PEER";
        let max_connections_per_peer = match get(PER_PEER) {
            None => 256,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| bad(PER_PEER, v, "expected a whole number from 1 to 1000000"))?,
        };

        let count = |var: &'static str| -> Result<Option<usize>, SettingsError> {
            get(var)
                .map(|v| {
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or_else(|| bad(var, v, "expected a whole number from 1 to 100000"))
                })
                .transpose()
        };
        let org_concurrency = count("TRIGGERS_ORG_CONCURRENCY")?;
        let webhook_max_connections = count("TRIGGERS_WEBHOOK_MAX_CONNECTIONS")?
            .unwrap_or(crate::WebhookConfig::default().max_connections);
        let endpoint_concurrency = count("TRIGGERS_ENDPOINT_CONCURRENCY")?
            .unwrap_or(WorkerConfig::default().endpoint_concurrency);
        let store_concurrency = count("TRIGGERS_STORE_CONCURRENCY")?
            .unwrap_or(IngestorConfig::default().store_concurrency);
        const DEFER: &str = "TRIGGERS_ENDPOINT_DEFER";
        let endpoint_defer = match get(DEFER) {
            None => Duration::from_secs(1),
            Some(v) => triggers_core::retry::parse_duration(v)
                .filter(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_secs(3600))
                .ok_or_else(|| bad(DEFER, v, "expected a duration from 10ms to 1h, e.g. 1s"))?,
        };

        Ok(Self {
            listen,
            database,
            admin_token,
            tier_limits,
            dedup_window,
            max_body,
            workers,
            retry,
            webhook_allow,
            webhook_deny,
            webhook_dns_servers,
            log_filter,
            ui,
            db_acquire_timeout,
            store_limits,
            retention,
            max_pending,
            secret_cipher,
            rate_limiter,
            max_page_bytes,
            allowed_hosts,
            metrics_token,
            max_connections_per_peer,
            org_concurrency,
            endpoint_concurrency,
            endpoint_defer,
            webhook_max_connections,
            store_concurrency,
        })
    }

    /// The `--help` text: usage and every variable with its default.
    pub fn help() -> String {
        let mut s = String::from(
            "Serves the Triggers API over HTTP.\n\nUsage: server [--help]\n\n\
             Settings (environment variables):\n",
        );
        // One column for the names, as wide as the longest.
        let width = VARIABLES.iter().map(|(name, _, _)| name.len()).max().unwrap_or(0);
        for (name, default, meaning) in VARIABLES {
            s.push_str(&format!(
                "  {name:<width$} {meaning}\n  {:<width$} default: {default}\n",
                ""
            ));
        }
        s
    }

    /// The Ingestor configuration these settings describe.
    pub fn ingestor_config(&self) -> IngestorConfig {
        let defaults = IngestorConfig::default();
        IngestorConfig {
            tier_limits: self.tier_limits,
            dedup_window: self.dedup_window,
            // The documented limit is the payload's; the body may add the envelope.
            max_payload: self.max_body,
            retry: self.retry.clone(),
            worker: WorkerConfig {
                concurrency: self.workers,
                org_concurrency: self.org_concurrency,
                endpoint_concurrency: self.endpoint_concurrency,
                ..defaults.worker.clone()
            },
            retention: self.retention,
            max_pending: self.max_pending,
            secret_cipher: self.secret_cipher.clone(),
            // Often enough that little piles up between passes; dedup entries past their
            // window are purged even when events are kept.
            purge_interval: Some(
                self.retention
                    .map_or(Duration::from_secs(60), |r| r / 10)
                    .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            ),
            max_page_bytes: self.max_page_bytes,
            store_concurrency: self.store_concurrency,
            ..defaults
        }
    }

    /// The HTTP server configuration these settings describe.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_body: self.max_body + crate::config::BODY_ENVELOPE,
            // Refuse at configuration what the deliverer would refuse at every delivery.
            webhook_url_policy: Some(self.webhook_config().url_policy()),
            admin_token: self.admin_token.clone(),
            ui: self.ui,
            allowed_hosts: self.allowed_hosts.clone(),
            metrics_token: self.metrics_token.clone(),
            max_connections_per_peer: self.max_connections_per_peer,
            ..ServerConfig::default()
        }
    }

    /// The webhook deliverer configuration these settings describe.
    pub fn webhook_config(&self) -> crate::WebhookConfig {
        crate::WebhookConfig {
            allow: self.webhook_allow.clone(),
            deny: self.webhook_deny.clone(),
            dns_servers: self.webhook_dns_servers.clone(),
            endpoint_concurrency: self.endpoint_concurrency,
            endpoint_defer: self.endpoint_defer,
            max_connections: self.webhook_max_connections,
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Settings::from_env_map(&map)
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.database, Database::Sqlite("triggers.db".into()));
        assert_eq!(s.admin_token, None);
        assert_eq!(s.tier_limits, TierLimits::default());
        assert_eq!(s.dedup_window, Duration::from_secs(86400));
        assert_eq!(s.max_body, 262_144);
        assert_eq!(s.ingestor_config().max_payload, 262_144);
        assert_eq!(s.server_config().max_body, 262_144 + 16 * 1024, "the envelope on top");
        let policy = s.server_config().webhook_url_policy.unwrap();
        assert!(policy("http://localhost:8080/hook").is_err(), "loopback refused by default");
        assert_eq!(s.workers, 64);
        assert_eq!(s.retry, RetryPolicy::default());
        assert!(s.webhook_allow.is_empty() && s.webhook_deny.is_empty());
        assert_eq!(s.log_filter, "info");
        assert!(s.ui && s.server_config().ui);
        assert!(s.secret_cipher.is_none());
        assert_eq!(s.rate_limiter, RateLimiterKind::Local, "SQLite");
        assert_eq!(s.ingestor_config().max_payload, 262_144);
        assert_eq!(s.ingestor_config().max_pending, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(s.store_limits, StoreLimits { max_endpoints: 50, max_attempts_kept: 100 });
        assert_eq!(s.retention, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(s.ingestor_config().purge_interval, Some(Duration::from_secs(60)));
        assert_eq!(s.max_page_bytes, 4_194_304);
        assert_eq!(s.ingestor_config().max_page_bytes, 4_194_304);
        assert!(s.allowed_hosts.is_empty());
        assert_eq!(s.metrics_token, None);
        assert_eq!(s.max_connections_per_peer, 256);
        assert_eq!(s.server_config().max_connections_per_peer, 256);
        assert_eq!(s.org_concurrency, None);
        assert_eq!(s.ingestor_config().worker.effective_org_concurrency(), 16, "64 / 4");
        assert_eq!(s.ingestor_config().worker.endpoint_concurrency, 16);
        assert_eq!(s.webhook_config().endpoint_concurrency, 16);
        assert_eq!(s.webhook_config().endpoint_defer, Duration::from_secs(1));
        assert_eq!(s.webhook_config().max_connections, 512);
    }

    #[test]
    fn fairness_settings_reach_the_workers_and_the_deliverer() {
        let s = parse(&[
            ("TRIGGERS_WORKERS", "8"),
            ("TRIGGERS_ORG_CONCURRENCY", "3"),
            ("TRIGGERS_ENDPOINT_CONCURRENCY", "2"),
            ("TRIGGERS_ENDPOINT_DEFER", "250ms"),
            ("TRIGGERS_STORE_CONCURRENCY", "5"),
            ("TRIGGERS_WEBHOOK_MAX_CONNECTIONS", "40"),
        ])
        .unwrap();
        assert_eq!(s.webhook_config().max_connections, 40);
        assert_eq!(s.ingestor_config().store_concurrency, 5);
        let worker = s.ingestor_config().worker;
        assert_eq!((worker.effective_org_concurrency(), worker.endpoint_concurrency), (3, 2));
        assert_eq!(s.webhook_config().endpoint_concurrency, 2);
        assert_eq!(s.webhook_config().endpoint_defer, Duration::from_millis(250));
        let s = parse(&[("TRIGGERS_WORKERS", "2")]).unwrap();
        assert_eq!(s.ingestor_config().worker.effective_org_concurrency(), 1, "at least one");
        let var = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().var;
        assert_eq!(var(&[("TRIGGERS_ORG_CONCURRENCY", "0")]), "TRIGGERS_ORG_CONCURRENCY");
        assert_eq!(var(&[("TRIGGERS_ENDPOINT_CONCURRENCY", "x")]), "TRIGGERS_ENDPOINT_CONCURRENCY");
        assert_eq!(var(&[("TRIGGERS_ENDPOINT_DEFER", "1ms")]), "TRIGGERS_ENDPOINT_DEFER");
        assert_eq!(var(&[("TRIGGERS_ENDPOINT_DEFER", "soon")]), "TRIGGERS_ENDPOINT_DEFER");
        let outbound = "TRIGGERS_WEBHOOK_MAX_CONNECTIONS";
        assert_eq!(var(&[(outbound, "0")]), outbound);
        assert_eq!(var(&[(outbound, "lots")]), outbound);
        let store = "TRIGGERS_STORE_CONCURRENCY";
        assert_eq!(var(&[(store, "0")]), store);
        assert_eq!(var(&[(store, "many")]), store);
        assert_eq!(parse(&[]).unwrap().ingestor_config().store_concurrency, 4);
    }

    #[test]
    fn parses_every_variable() {
        let s = parse(&[
            ("TRIGGERS_LISTEN", "0.0.0.0:9000"),
            ("DATABASE_URL", "postgres://u:pw@db:5432/triggers"),
            ("TRIGGERS_ADMIN_TOKEN", "s3cret"),
            ("TRIGGERS_TIER_LIMITS", "free=5,enterprise=100000"),
            ("TRIGGERS_DEDUP_WINDOW", "1h"),
            ("TRIGGERS_MAX_BODY", "1024"),
            ("TRIGGERS_WORKERS", "0"),
            ("TRIGGERS_RETRY_SCHEDULE", "0s,1s"),
            ("TRIGGERS_WEBHOOK_ALLOW", "127.0.0.0/8, ::1"),
            ("TRIGGERS_WEBHOOK_DENY", "198.51.99.0/24"),
            ("TRIGGERS_WEBHOOK_DNS_SERVERS", "127.0.0.1:5353, ::1"),
            ("RUST_LOG", "debug"),
            ("TRIGGERS_UI", "OFF"),
            ("TRIGGERS_MAX_ENDPOINTS", "3"),
            ("TRIGGERS_MAX_ATTEMPTS_KEPT", "7"),
            ("TRIGGERS_RETENTION", "5s"),
            ("TRIGGERS_MAX_PENDING", "2h"),
            ("TRIGGERS_MAX_PAGE_BYTES", "65536"),
            ("TRIGGERS_ALLOWED_HOSTS", "dev.example.test, box.lan:8080"),
            ("TRIGGERS_METRICS_TOKEN", "m3trics"),
            ("TRIGGERS_MAX_CONNECTIONS_PER_PEER", "8"),
        ])
        .unwrap();
        assert_eq!(s.store_limits, StoreLimits { max_endpoints: 3, max_attempts_kept: 7 });
        assert_eq!(s.retention, Some(Duration::from_secs(5)));
        assert_eq!(s.ingestor_config().retention, Some(Duration::from_secs(5)));
        assert_eq!(s.ingestor_config().purge_interval, Some(Duration::from_secs(1)));
        let off = parse(&[("TRIGGERS_RETENTION", "off")]).unwrap();
        assert_eq!((off.retention, off.ingestor_config().retention), (None, None));
        assert_eq!(s.ingestor_config().max_pending, Some(Duration::from_secs(7200)));
        let off = parse(&[("TRIGGERS_MAX_PENDING", "OFF")]).unwrap();
        assert_eq!((off.max_pending, off.ingestor_config().max_pending), (None, None));
        assert_eq!(s.rate_limiter, RateLimiterKind::Shared, "the default on PostgreSQL");
        let pg = "postgres://u@db/t";
        let local = parse(&[("DATABASE_URL", pg), ("TRIGGERS_RATE_LIMITER", "local")]).unwrap();
        assert_eq!(local.rate_limiter, RateLimiterKind::Local);
        assert_eq!(s.ingestor_config().max_page_bytes, 65_536);
        assert_eq!(s.server_config().allowed_hosts, ["dev.example.test", "box.lan:8080"]);
        assert_eq!(s.server_config().metrics_token.as_deref(), Some("m3trics"));
        assert!(!format!("{s:?}").contains("m3trics"));
        assert_eq!(s.server_config().max_connections_per_peer, 8);
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.database.describe(), "PostgreSQL at db:5432/triggers");
        assert!(!format!("{s:?}").contains("pw"));
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.tier_limits.per_minute(triggers_core::Tier::Enterprise), 100_000);
        assert_eq!(s.dedup_window, Duration::from_secs(3600));
        assert_eq!(s.max_body, 1024);
        assert_eq!(s.ingestor_config().worker.concurrency, 0);
        assert_eq!(s.retry.max_attempts(), 2);
        assert_eq!(s.webhook_allow.len(), 2);
        assert_eq!(s.webhook_config().allow, s.webhook_allow);
        assert_eq!(s.webhook_config().deny, s.webhook_deny);
        assert_eq!(s.webhook_deny, vec!["198.51.99.0/24".parse::<IpNet>().unwrap()]);
        let dns: Vec<std::net::SocketAddr> =
            vec!["127.0.0.1:5353".parse().unwrap(), "[::1]:53".parse().unwrap()];
        assert_eq!((&s.webhook_dns_servers, &s.webhook_config().dns_servers), (&dns, &dns));
        assert!(parse(&[]).unwrap().webhook_config().dns_servers.is_empty(), "the system's");
        assert_eq!(s.server_config().admin_token.as_deref(), Some("s3cret"));
        assert!(!s.ui && !s.server_config().ui);
        let sqlite = parse(&[("DATABASE_URL", "sqlite:///var/lib/t.db")]).unwrap();
        assert_eq!(sqlite.database, Database::Sqlite("/var/lib/t.db".into()));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let var = |pairs: &[(&str, &str)]| parse(pairs).unwrap_err().var;
        assert_eq!(var(&[("TRIGGERS_LISTEN", "localhost")]), "TRIGGERS_LISTEN");
        assert_eq!(var(&[("DATABASE_URL", "mysql://x")]), "DATABASE_URL");
        assert_eq!(var(&[("DATABASE_URL", "sqlite://")]), "DATABASE_URL");
        assert_eq!(var(&[("TRIGGERS_LISTEN", "0.0.0.0:80")]), "TRIGGERS_ADMIN_TOKEN");
        assert_eq!(var(&[("TRIGGERS_TIER_LIMITS", "gold=1")]), "TRIGGERS_TIER_LIMITS");
        assert_eq!(var(&[("TRIGGERS_DEDUP_WINDOW", "soon")]), "TRIGGERS_DEDUP_WINDOW");
        assert_eq!(var(&[("TRIGGERS_MAX_BODY", "-1")]), "TRIGGERS_MAX_BODY");
        assert_eq!(var(&[("TRIGGERS_MAX_BODY", "10")]), "TRIGGERS_MAX_BODY");
        assert_eq!(var(&[("TRIGGERS_WORKERS", "many")]), "TRIGGERS_WORKERS");
        assert_eq!(var(&[("TRIGGERS_RETRY_SCHEDULE", "5x")]), "TRIGGERS_RETRY_SCHEDULE");
        assert_eq!(var(&[("TRIGGERS_WEBHOOK_ALLOW", "10.0.0.0/33")]), "TRIGGERS_WEBHOOK_ALLOW");
        assert_eq!(var(&[("TRIGGERS_WEBHOOK_DENY", "me")]), "TRIGGERS_WEBHOOK_DENY");
        let dns = parse(&[("TRIGGERS_WEBHOOK_DNS_SERVERS", "10.0.0.2, dns.internal")]).unwrap_err();
        assert_eq!(dns.var, "TRIGGERS_WEBHOOK_DNS_SERVERS");
        assert!(dns.to_string().contains("\"dns.internal\""), "{dns}");
        assert_eq!(var(&[("TRIGGERS_UI", "yes")]), "TRIGGERS_UI");
        assert_eq!(var(&[("TRIGGERS_MAX_ENDPOINTS", "0")]), "TRIGGERS_MAX_ENDPOINTS");
        assert_eq!(var(&[("TRIGGERS_MAX_ATTEMPTS_KEPT", "lots")]), "TRIGGERS_MAX_ATTEMPTS_KEPT");
        assert_eq!(var(&[("TRIGGERS_RETENTION", "forever")]), "TRIGGERS_RETENTION");
        assert_eq!(var(&[("TRIGGERS_RETENTION", "0s")]), "TRIGGERS_RETENTION");
        assert_eq!(var(&[("TRIGGERS_MAX_PENDING", "59s")]), "TRIGGERS_MAX_PENDING");
        assert_eq!(var(&[("TRIGGERS_MAX_PENDING", "never")]), "TRIGGERS_MAX_PENDING");
        assert_eq!(var(&[("TRIGGERS_SECRET_KEY", "c2hvcnQ=")]), "TRIGGERS_SECRET_KEY");
        assert_eq!(var(&[("TRIGGERS_RATE_LIMITER", "shared")]), "TRIGGERS_RATE_LIMITER");
        assert_eq!(var(&[("TRIGGERS_RATE_LIMITER", "global")]), "TRIGGERS_RATE_LIMITER");
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(var(&[("TRIGGERS_SECRET_KEY_OLD", key)]), "TRIGGERS_SECRET_KEY_OLD");
        let both = parse(&[("TRIGGERS_SECRET_KEY", key), ("TRIGGERS_SECRET_KEY_OLD", key)]);
        let cipher = both.unwrap().ingestor_config().secret_cipher.unwrap();
        assert_eq!(cipher.key_id().len(), 8);
        assert!(!format!("{:?}", parse(&[("TRIGGERS_SECRET_KEY", key)]).unwrap()).contains(key));
        assert_eq!(var(&[("TRIGGERS_MAX_PAGE_BYTES", "10")]), "TRIGGERS_MAX_PAGE_BYTES");
        assert_eq!(var(&[("TRIGGERS_ALLOWED_HOSTS", "a b")]), "TRIGGERS_ALLOWED_HOSTS");
        assert_eq!(
            var(&[("TRIGGERS_MAX_CONNECTIONS_PER_PEER", "0")]),
            "TRIGGERS_MAX_CONNECTIONS_PER_PEER"
        );
        let e = parse(&[("TRIGGERS_MAX_BODY", "abc")]).unwrap_err();
        assert_eq!(e.to_string(), "TRIGGERS_MAX_BODY: invalid value \"abc\": expected a number of bytes from 64 to 1073741824");
        let e = parse(&[("DATABASE_URL", "mysql://root:pw@h/db")]).unwrap_err();
        assert!(!e.to_string().contains("pw"));
    }

    #[test]
    fn help_lists_every_variable() {
        let help = Settings::help();
        for (name, default, _) in VARIABLES {
            assert!(help.contains(name) && help.contains(default), "{name}");
        }
    }

    #[test]
    fn help_aligns_every_description_in_one_column() {
        let help = Settings::help();
        let columns: std::collections::BTreeSet<usize> = help
            .lines()
            .filter(|line| line.starts_with("  "))
            .map(|line| {
                let text = line.trim_start();
                let indent = line.len() - text.len();
                if text.starts_with("default:") {
                    return indent; // the line under a description
                }
                let after_name = text.find(' ').unwrap_or(text.len());
                let gap = text[after_name..].len() - text[after_name..].trim_start().len();
                indent + after_name + gap
            })
            .collect();
        assert_eq!(columns.len(), 1, "descriptions start at columns {columns:?}:\n{help}");
    }
}
