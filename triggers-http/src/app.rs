//! One request, start to finish: route, authenticate, run the handler, map errors, add the
//! rate-limit headers, count and log.

#[cfg(test)]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use triggers_core::{Deliverer, EventStore, Ingestor, Organization, RateDecision};

use crate::config::{AdminPolicy, ServerConfig};
use crate::error::ApiError;
use crate::guard::{self, ConnInfo, HostGuard};
use crate::handlers;
use crate::metrics::Metrics;
use crate::respond::{self, Body};
use crate::router::{self, Match};

/// What every request shares.
pub(crate) struct App<S, D> {
    pub(crate) ingestor: Ingestor<S, D>,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    admin: AdminGate,
    /// `GET /openapi.json` for this mount (its `servers` entry names the base path).
    openapi: Bytes,
    metrics_token_hash: Option<[u8; 32]>,
    /// Set when anyone may create organizations (no admin token): see [`HostGuard`].
    host_guard: Option<HostGuard>,
}

/// Who may call `POST /api/keys/generate`, as checked per request.
enum AdminGate {
    Open,
    Token([u8; 32]),
    Closed,
}

/// Per-request state the handlers fill in for the response headers.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    /// The authenticated organization, if the route needs one.
    pub(crate) org: Option<Organization>,
    /// The limiter decision this request was charged with (ingest routes).
    pub(crate) rate: Option<RateDecision>,
}

/// Any request body, boxed: hyper's own, axum's, or another tower stack's.
pub(crate) type ReqBody = UnsyncBoxBody<Bytes, crate::service::BodyError>;
/// The request as handlers see it: its parts and the not-yet-read body.
pub(crate) type Req = Request<ReqBody>;
/// What handlers return.
pub(crate) type Res = Result<Response<Body>, ApiError>;

impl<S: EventStore, D: Deliverer> App<S, D> {
    /// `admin` is the explicit policy; a token in `config.admin_token` makes `Open` strict.
    pub(crate) fn new(
        ingestor: Ingestor<S, D>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
        admin: &AdminPolicy,
        base_path: &str,
    ) -> Self {
        let admin = match (admin, config.admin_token.as_deref()) {
            (AdminPolicy::Token(t), _) => AdminGate::Token(guard::token_hash(t)),
            (AdminPolicy::Open, Some(t)) => AdminGate::Token(guard::token_hash(t)),
            (AdminPolicy::Open, None) => AdminGate::Open,
            (AdminPolicy::Closed, _) => AdminGate::Closed,
        };
        let openapi = if base_path.is_empty() {
            crate::openapi::document_bytes()
        } else {
            Bytes::from(crate::openapi::document_at(base_path).to_string())
        };
        let metrics_token_hash = config.metrics_token.as_deref().map(guard::token_hash);
        // Without an admin token anyone who reaches the API may mint keys: then only loopback
        // (and explicitly allowed) `Host`s are served, so a web page on another origin cannot
        // do it through a developer's browser (DNS rebinding).
        let host_guard =
            matches!(admin, AdminGate::Open).then(|| HostGuard::new(&config.allowed_hosts));
        Self { ingestor, config, metrics, admin, openapi, metrics_token_hash, host_guard }
    }

    /// The OpenAPI document of this mount.
    pub(crate) fn openapi(&self) -> Bytes {
        self.openapi.clone()
    }

    /// Serves one request. Never fails: every error becomes a problem response.
    pub(crate) async fn handle(&self, req: Req) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        // A cheap clone (the URI shares the request's buffer), so the path can be borrowed
        // for routing and logging while the handler owns the request.
        let uri = req.uri().clone();
        let path = uri.path();
        let mut ctx = Ctx::default();
        let host_ok = self.host_guard.as_ref().map_or(true, |g| g.allows(&uri, req.headers()));
        let result = match router::find(&method, path) {
            // Before anything else, so a rebinding page learns nothing about routes either.
            _ if !host_ok => Err(ApiError::HostNotAllowed),
            Match::Found(route, id) => handlers::dispatch(self, &mut ctx, route, id, req).await,
            Match::MethodNotAllowed(allow) => Err(ApiError::MethodNotAllowed(allow)),
            Match::NotFound => Err(ApiError::RouteNotFound),
        };
        let mut res = result.unwrap_or_else(ApiError::into_response);
        respond::never_stored(res.headers_mut());
        if let Some(org) = &ctx.org {
            let headers = res.headers_mut();
            if !headers.contains_key(&respond::X_RATELIMIT_LIMIT) {
                let decision = ctx.rate.unwrap_or_else(|| self.ingestor.rate_status(org));
                respond::rate_headers(headers, &decision);
            }
        }
        let status = res.status().as_u16();
        self.metrics.response(status);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // The path as the client sent it, up to the first `LOGGED_PATH` bytes: a request
        // line may carry 64 KiB, and unauthenticated requests are logged too.
        let path = logged_path(path);
        if status >= 500 {
            tracing::warn!(target: "triggers_http::access", %method, %path, status, latency_us);
        } else {
            tracing::info!(target: "triggers_http::access", %method, %path, status, latency_us);
        }
        res
    }

    /// The organization of the request's `X-API-Key`; remembered in `ctx` for the headers.
    pub(crate) async fn auth(
        &self,
        headers: &HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Organization, ApiError> {
        let key = headers.get("x-api-key").ok_or(ApiError::MissingApiKey)?;
        let key = key.to_str().map_err(|_| ApiError::InvalidApiKey)?;
        if key.is_empty() {
            return Err(ApiError::MissingApiKey);
        }
        let org = self.ingestor.authenticate(key).await?;
        ctx.org = Some(org.clone());
        Ok(org)
    }

    /// Checks the admin policy: `Authorization: Bearer <admin token>` (scheme in any case)
    /// when a token is set, compared as SHA-256 digests in constant time.
    pub(crate) fn check_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let expected = match &self.admin {
            AdminGate::Open => return Ok(()),
            AdminGate::Closed => return Err(ApiError::KeyGenerationDisabled),
            AdminGate::Token(hash) => hash,
        };
        if guard::token_matches(guard::bearer(headers), expected) {
            Ok(())
        } else {
            Err(ApiError::InvalidAdminToken)
        }
    }

    /// Who may read `/metrics`: with a metrics token, whoever sends it as a bearer token;
    /// without one, only connections accepted on a loopback address (a request that does not
    /// say where it arrived is refused).
    pub(crate) fn check_metrics(&self, req: &Req) -> Result<(), ApiError> {
        self.metrics_access(req.headers(), req.extensions().get::<ConnInfo>())
    }

    fn metrics_access(&self, headers: &HeaderMap, conn: Option<&ConnInfo>) -> Result<(), ApiError> {
        match &self.metrics_token_hash {
            Some(expected) if guard::token_matches(guard::bearer(headers), expected) => Ok(()),
            Some(_) => Err(ApiError::InvalidMetricsToken),
            None => match conn {
                Some(conn) if conn.local.ip().is_loopback() => Ok(()),
                _ => Err(ApiError::MetricsForbidden),
            },
        }
    }

    /// Checks the Content-Type, then reads the body within the size limit and timeout.
    pub(crate) async fn read_json(&self, req: Req) -> Result<Bytes, ApiError> {
        crate::body::check_headers(req.headers(), self.config.max_body)?;
        crate::body::read(req.into_body(), self.config.max_body, self.config.body_read_timeout)
            .await
    }
}

/// How much of a request's path the access log keeps.
const LOGGED_PATH: usize = 256;

/// `path` cut to at most [`LOGGED_PATH`] bytes (at a character boundary), marked with `…`
/// when cut.
fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= LOGGED_PATH {
        return path.into();
    }
    let mut end = LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end]).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_keeps_a_paths_first_256_bytes() {
        assert_eq!(logged_path("/api/inbox"), "/api/inbox");
        let long = format!("/{}", "é".repeat(300));
        let kept = logged_path(&long);
        assert!(kept.len() <= LOGGED_PATH + '…'.len_utf8() && kept.ends_with('…'), "{kept}");
        assert!(long.starts_with(kept.trim_end_matches('…')));
    }
    use http::header::{HeaderValue, AUTHORIZATION};
    use triggers_core::{IngestorConfig, MemoryStore, NoDeliverer};

    fn app(metrics_token: Option<&str>) -> App<MemoryStore, NoDeliverer> {
        let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
        let config = ServerConfig {
            metrics_token: metrics_token.map(str::to_owned),
            ..ServerConfig::default()
        };
        App::new(ingestor, config, Arc::new(Metrics::new()), &AdminPolicy::Open, "")
    }

    #[tokio::test]
    async fn metrics_without_a_token_are_served_on_loopback_binds_only() {
        let app = app(None);
        let none = HeaderMap::new();
        let on = |ip: &str| ConnInfo { local: SocketAddr::new(ip.parse().unwrap(), 8080) };
        assert!(app.metrics_access(&none, Some(&on("127.0.0.1"))).is_ok());
        assert!(app.metrics_access(&none, Some(&on("::1"))).is_ok());
        for ip in ["0.0.0.0", "10.1.2.3", "::"] {
            let e = app.metrics_access(&none, Some(&on(ip))).unwrap_err();
            assert_eq!(e.code(), "metrics_forbidden", "{ip}");
        }
        let e = app.metrics_access(&none, None).unwrap_err();
        assert_eq!(e.code(), "metrics_forbidden", "unknown bind: refused");
    }

    #[tokio::test]
    async fn with_a_token_any_bind_needs_it() {
        let app = app(Some("m3trics"));
        let public = ConnInfo { local: "10.1.2.3:8080".parse().unwrap() };
        let mut headers = HeaderMap::new();
        let e = app.metrics_access(&headers, Some(&public)).unwrap_err();
        assert_eq!(e.code(), "invalid_metrics_token");
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer m3trics"));
        assert!(app.metrics_access(&headers, Some(&public)).is_ok());
        assert!(app.metrics_access(&headers, None).is_ok());
    }
}
