//! One request, start to finish: route, authenticate, run the handler, map errors, add the
//! rate-limit headers, count and log.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use triggers_core::{Deliverer, EventStore, Ingestor, Organization, RateDecision};

use crate::config::{AdminPolicy, ServerConfig};
use crate::error::ApiError;
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
        let hash = |t: &str| Sha256::digest(t).into();
        let admin = match (admin, config.admin_token.as_deref()) {
            (AdminPolicy::Token(t), _) => AdminGate::Token(hash(t)),
            (AdminPolicy::Open, Some(t)) => AdminGate::Token(hash(t)),
            (AdminPolicy::Open, None) => AdminGate::Open,
            (AdminPolicy::Closed, _) => AdminGate::Closed,
        };
        let openapi = if base_path.is_empty() {
            crate::openapi::document_bytes()
        } else {
            Bytes::from(crate::openapi::document_at(base_path).to_string())
        };
        Self { ingestor, config, metrics, admin, openapi }
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
        let result = match router::find(&method, path) {
            Match::Found(route, id) => handlers::dispatch(self, &mut ctx, route, id, req).await,
            Match::MethodNotAllowed(allow) => Err(ApiError::MethodNotAllowed(allow)),
            Match::NotFound => Err(ApiError::RouteNotFound),
        };
        let mut res = result.unwrap_or_else(ApiError::into_response);
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

    /// Checks the admin policy: `Authorization: Bearer <admin token>` when a token is set.
    /// Compares SHA-256 digests in constant time, so neither content nor length leaks.
    pub(crate) fn check_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let expected = match &self.admin {
            AdminGate::Open => return Ok(()),
            AdminGate::Closed => return Err(ApiError::KeyGenerationDisabled),
            AdminGate::Token(hash) => hash,
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(ApiError::InvalidAdminToken)?;
        let digest: [u8; 32] = Sha256::digest(given).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ApiError::InvalidAdminToken)
        }
    }

    /// Checks the Content-Type, then reads the body within the size limit and timeout.
    pub(crate) async fn read_json(&self, req: Req) -> Result<Bytes, ApiError> {
        crate::body::check_headers(req.headers(), self.config.max_body)?;
        crate::body::read(req.into_body(), self.config.max_body, self.config.body_read_timeout)
            .await
    }
}
