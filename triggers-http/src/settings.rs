//! The example server's settings, read from environment variables (SPEC §5) and checked
//! up front: a bad value is a [`SettingsError`] naming the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use triggers_core::{IngestorConfig, RetryPolicy, TierLimits, WorkerConfig};

use crate::config::ServerConfig;

/// Every variable: name, default, meaning.
pub const VARIABLES: [(&str, &str, &str); 13] = [
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
        "per-minute limits per tier",
    ),
    ("TRIGGERS_DEDUP_WINDOW", "24h", "dedup window (e.g. 90s, 30m, 24h, 7d)"),
    ("TRIGGERS_MAX_BODY", "262144", "request body limit in bytes"),
    ("TRIGGERS_WORKERS", "64", "concurrent webhook deliveries (0: none, inbox only)"),
    (
        "TRIGGERS_RETRY_SCHEDULE",
        "0s,5s,5m,30m,2h,5h,10h,10h",
        "delays before each delivery attempt",
    ),
    (
        "TRIGGERS_WEBHOOK_ALLOW",
        "unset",
        "CIDRs webhooks may target although private/loopback (e.g. 127.0.0.0/8)",
    ),
    ("RUST_LOG", "info", "log filter"),
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
];

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
    /// `RUST_LOG`.
    pub log_filter: String,
    /// `TRIGGERS_ORG_CONCURRENCY`; `None`: a quarter of the workers (at least 1).
    pub org_concurrency: Option<usize>,
    /// `TRIGGERS_ENDPOINT_CONCURRENCY`.
    pub endpoint_concurrency: usize,
    /// `TRIGGERS_ENDPOINT_DEFER`.
    pub endpoint_defer: Duration,
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
            .field("log_filter", &self.log_filter)
            .field("org_concurrency", &self.org_concurrency)
            .field("endpoint_concurrency", &self.endpoint_concurrency)
            .field("endpoint_defer", &self.endpoint_defer)
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

        const ALLOW: &str = "TRIGGERS_WEBHOOK_ALLOW";
        let webhook_allow = match get(ALLOW) {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| bad(ALLOW, p, "expected CIDRs such as 127.0.0.0/8,10.0.0.0/8"))
                })
                .collect::<Result<_, _>>()?,
        };

        let log_filter = get("RUST_LOG").unwrap_or("info").to_owned();

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
        let endpoint_concurrency = count("TRIGGERS_ENDPOINT_CONCURRENCY")?
            .unwrap_or(WorkerConfig::default().endpoint_concurrency);
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
            log_filter,
            org_concurrency,
            endpoint_concurrency,
            endpoint_defer,
        })
    }

    /// The `--help` text: usage and every variable with its default.
    pub fn help() -> String {
        let mut s = String::from(
            "Serves the Triggers API over HTTP.\n\nUsage: server [--help]\n\n\
             Settings (environment variables):\n",
        );
        for (name, default, meaning) in VARIABLES {
            s.push_str(&format!("  {name:<24} {meaning}\n  {:<24} default: {default}\n", ""));
        }
        s
    }

    /// The Ingestor configuration these settings describe.
    pub fn ingestor_config(&self) -> IngestorConfig {
        let defaults = IngestorConfig::default();
        IngestorConfig {
            tier_limits: self.tier_limits,
            dedup_window: self.dedup_window,
            // The body limit is the real limit; a payload is always smaller than its body.
            max_payload: self.max_body,
            retry: self.retry.clone(),
            worker: WorkerConfig {
                concurrency: self.workers,
                org_concurrency: self.org_concurrency,
                endpoint_concurrency: self.endpoint_concurrency,
                ..defaults.worker.clone()
            },
            ..defaults
        }
    }

    /// The HTTP server configuration these settings describe.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_body: self.max_body,
            admin_token: self.admin_token.clone(),
            ..ServerConfig::default()
        }
    }

    /// The webhook deliverer configuration these settings describe.
    pub fn webhook_config(&self) -> crate::WebhookConfig {
        crate::WebhookConfig {
            allow: self.webhook_allow.clone(),
            endpoint_concurrency: self.endpoint_concurrency,
            endpoint_defer: self.endpoint_defer,
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
        assert_eq!(s.workers, 64);
        assert_eq!(s.retry, RetryPolicy::default());
        assert!(s.webhook_allow.is_empty());
        assert_eq!(s.log_filter, "info");
        assert_eq!(s.ingestor_config().max_payload, 262_144);
        assert_eq!(s.org_concurrency, None);
        assert_eq!(s.ingestor_config().worker.effective_org_concurrency(), 16, "64 / 4");
        assert_eq!(s.ingestor_config().worker.endpoint_concurrency, 16);
        assert_eq!(s.webhook_config().endpoint_concurrency, 16);
        assert_eq!(s.webhook_config().endpoint_defer, Duration::from_secs(1));
    }

    #[test]
    fn fairness_settings_reach_the_workers_and_the_deliverer() {
        let s = parse(&[
            ("TRIGGERS_WORKERS", "8"),
            ("TRIGGERS_ORG_CONCURRENCY", "3"),
            ("TRIGGERS_ENDPOINT_CONCURRENCY", "2"),
            ("TRIGGERS_ENDPOINT_DEFER", "250ms"),
        ])
        .unwrap();
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
            ("RUST_LOG", "debug"),
        ])
        .unwrap();
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
        assert_eq!(s.server_config().admin_token.as_deref(), Some("s3cret"));
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
}
