//! [`ApiService`]: the Triggers API as a `Clone` tower [`Service`], to mount inside another
//! application (axum's `Router::nest_service`, or any hyper/tower server).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower_service::Service;
use triggers_core::{Deliverer, EventStore, Ingestor};

use crate::app::{App, Req, ReqBody};
use crate::config::{AdminPolicy, ServerConfig};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::panic::CatchPanic;

/// Any error, boxed: what a request body's error must convert into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body's read error, boxed. A named type (not `BoxError` itself) keeps the
/// handlers' futures provably `Send`, which rustc cannot show through a boxed trait object's
/// erased lifetime.
#[derive(Debug)]
pub(crate) struct BodyError(BoxError);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The body of every response of the API: the whole JSON (or Prometheus text) in one chunk.
pub type ResponseBody = http_body_util::Full<Bytes>;

/// How a mounted [`ApiService`] behaves. The admin policy has no default: say who may create
/// organizations.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Who may call `POST /api/keys/generate`. If `limits.admin_token` is also set, `Open`
    /// acts as `Token` with that token.
    pub admin: AdminPolicy,
    /// The path prefix clients use to reach the API, e.g. `"/triggers"` (default `""`: the
    /// root). It is what `GET /openapi.json` advertises as its server URL. The service
    /// routes on the path it receives: a router that nests it (axum's `nest_service`)
    /// strips the prefix first; mounted without such a router, serve it at the root.
    pub base_path: String,
    /// Body size limit, body read timeout and webhook URL policy. The connection settings
    /// (`header_read_timeout`, `max_connections`, `connection_wait`, `shutdown_timeout`)
    /// belong to whoever accepts the connections: they apply only to [`Server`](crate::Server).
    pub limits: ServerConfig,
    /// The metrics `GET /metrics` serves (default: a fresh set; pass the Ingestor's
    /// `observer` to count deliveries, or [`Metrics::register_into`] an existing registry).
    pub metrics: Option<Arc<Metrics>>,
}

impl ServiceConfig {
    /// The documented defaults, with the given admin policy.
    pub fn new(admin: AdminPolicy) -> Self {
        Self { admin, base_path: String::new(), limits: ServerConfig::default(), metrics: None }
    }

    /// Sets [`base_path`](Self::base_path) (a trailing `/` is dropped).
    pub fn base_path(mut self, path: &str) -> Self {
        self.base_path = path.trim_end_matches('/').to_owned();
        self
    }
}

/// The Triggers API as a tower [`Service`]: `Clone` (clones share one instance), generic over
/// the request body, never failing (`Error = Infallible`: every error is a problem response).
///
/// It serves exactly what [`Server`](crate::Server) serves — [`Server`](crate::Server) is a
/// connection loop around it — minus the connection handling, which belongs to the server
/// that mounts it (its connection caps, header timeouts and TLS apply).
///
/// ```
/// use triggers_core::{Ingestor, IngestorConfig, MemoryStore, NoDeliverer};
/// use triggers_http::{AdminPolicy, ApiService, ServiceConfig};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
/// let api = ApiService::new(ingestor, ServiceConfig::new(AdminPolicy::Closed).base_path("/triggers"));
/// // e.g. axum::Router::new().nest_service("/triggers", api)
/// # let _ = api;
/// # }
/// ```
pub struct ApiService<S, D> {
    pub(crate) app: Arc<App<S, D>>,
}

impl<S, D> Clone for ApiService<S, D> {
    fn clone(&self) -> Self {
        Self { app: self.app.clone() }
    }
}

impl<S, D> fmt::Debug for ApiService<S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiService").field("config", &self.app.config).finish_non_exhaustive()
    }
}

/// The API over `ingestor`, as a tower [`Service`]; see [`ApiService`].
pub fn service<S: EventStore, D: Deliverer>(
    ingestor: Ingestor<S, D>,
    config: ServiceConfig,
) -> ApiService<S, D> {
    ApiService::new(ingestor, config)
}

impl<S: EventStore, D: Deliverer> ApiService<S, D> {
    /// The API over `ingestor`. The Ingestor keeps running when the service is dropped: shut
    /// it down with [`Ingestor::shutdown`].
    pub fn new(ingestor: Ingestor<S, D>, config: ServiceConfig) -> Self {
        let metrics = config.metrics.unwrap_or_else(|| Arc::new(Metrics::new()));
        let app = App::new(ingestor, config.limits, metrics, &config.admin, &config.base_path);
        Self { app: Arc::new(app) }
    }

    /// The Ingestor it serves.
    pub fn ingestor(&self) -> &Ingestor<S, D> {
        &self.app.ingestor
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.app.metrics
    }

    /// Reads the store's gauges (`triggers_queue_depth`, `triggers_announcements_*`) from
    /// the store — what serving `GET /metrics` does — for an application that scrapes the
    /// metrics through its own registry ([`Metrics::register_into`]). On a store error a
    /// gauge keeps its value.
    pub async fn refresh_metrics(&self) {
        self.app.metrics.read_store(&self.app.ingestor).await;
    }

    /// Answers one request (what [`Service::call`] does, without `&mut self`).
    pub fn handle<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        respond(self.app.clone(), req.map(box_body))
    }
}

/// Boxes any request body into the one type the handlers read.
pub(crate) fn box_body<B>(body: B) -> ReqBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e: B::Error| BodyError(e.into())).boxed_unsync()
}

/// Runs `App::handle`; a panic costs this one request a 500, not the connection or process.
pub(crate) async fn respond<S: EventStore, D: Deliverer>(
    app: Arc<App<S, D>>,
    req: Req,
) -> Response<ResponseBody> {
    match CatchPanic(Box::pin(app.handle(req))).await {
        Ok(res) => res,
        Err(()) => {
            tracing::error!("a request handler panicked");
            app.metrics.response(500);
            let mut res = ApiError::Internal.into_response();
            crate::respond::never_stored(res.headers_mut());
            res
        }
    }
}

impl<S, D, B> Service<Request<B>> for ApiService<S, D>
where
    S: EventStore,
    D: Deliverer,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    /// Always ready: back-pressure is the store's (503 `overloaded`) and the mounting
    /// server's connection cap.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let res = self.handle(req);
        Box::pin(async move { Ok(res.await) })
    }
}
