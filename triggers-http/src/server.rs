//! The [`Server`]: accepting connections (with a cap), HTTP/1.1 with timeouts, and graceful
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use triggers_core::{Deliverer, EventStore, Ingestor};

use crate::app::App;
use crate::config::{AdminPolicy, ServerConfig};
use crate::conns::{ConnGuard, ConnTable};
use crate::guard::ConnInfo;
use crate::metrics::Metrics;
use crate::service::{box_body, respond, ApiService};

/// Why [`Server::serve`] did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener is on a non-loopback address and no admin token is configured: anyone
    /// who can reach it could create organizations.
    #[error(
        "refusing to serve on non-loopback address {0} without an admin token \
         (set TRIGGERS_ADMIN_TOKEN / ServerConfig::admin_token)"
    )]
    AdminTokenRequired(SocketAddr),
    /// The listener failed.
    #[error("listener error: {0}")]
    Io(#[from] std::io::Error),
    /// Sealing the stored webhook secrets at start failed (see
    /// [`Ingestor::seal_stored_secrets`]).
    #[error("cannot seal the stored webhook secrets: {0}")]
    SealSecrets(#[source] triggers_core::Error),
}

/// The Triggers API over HTTP/1.1, generic over the store and deliverer of its [`Ingestor`]:
/// a connection loop around an [`ApiService`] (mount that one to serve the API inside
/// another application).
///
/// ```no_run
/// use triggers_core::{Ingestor, IngestorConfig, MemoryStore, NoDeliverer};
/// use triggers_http::{Server, ServerConfig};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// Server::new(ingestor, ServerConfig::default())
///     .serve(listener, triggers_http::shutdown_signal())
///     .await?;
/// # Ok(()) }
/// ```
///
/// HTTP/1.1 only: hyper-util's HTTP/2 auto-detection has no timeout while it sniffs the
/// first bytes, which a slow client could abuse; put a TLS/HTTP-2 terminator in front if you
/// need HTTP/2.
pub struct Server<S, D> {
    app: Arc<App<S, D>>,
}

impl<S, D> From<Server<S, D>> for ApiService<S, D> {
    fn from(server: Server<S, D>) -> Self {
        ApiService { app: server.app }
    }
}

impl<S: EventStore, D: Deliverer> Server<S, D> {
    /// A server for `ingestor`, with its own [`Metrics`] (which then count no deliveries; use
    /// [`with_metrics`](Self::with_metrics) and `IngestorConfig::observer` for those).
    pub fn new(ingestor: Ingestor<S, D>, config: ServerConfig) -> Self {
        Self::with_metrics(ingestor, config, Arc::new(Metrics::new()))
    }

    /// A server for `ingestor` that serves `metrics` (pass the same `Arc` as the Ingestor's
    /// `observer` to count deliveries).
    pub fn with_metrics(
        ingestor: Ingestor<S, D>,
        config: ServerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        // The server sees its listener, so it can enforce what a mounted service cannot:
        // no admin token, no non-loopback address (checked in `serve`).
        let admin = match &config.admin_token {
            Some(token) => AdminPolicy::Token(token.clone()),
            None => AdminPolicy::Open,
        };
        Self { app: Arc::new(App::new(ingestor, config, metrics, &admin, "")) }
    }

    /// Serves connections from `listener` until `shutdown` completes. Then it stops
    /// accepting, lets in-flight requests finish (idle keep-alive connections close at once)
    /// for up to `shutdown_timeout`, drops what is left, and shuts the Ingestor's delivery
    /// workers down (in-flight deliveries finish or are released). Returns `Ok` after a clean
    /// shutdown.
    ///
    /// Refuses to start on a non-loopback address without an admin token.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        let config = &self.app.config;
        if config.admin_token.is_none() && !addr.ip().is_loopback() {
            return Err(ServeError::AdminTokenRequired(addr));
        }
        // Secrets at rest: seal what is stored in plaintext (or under the old key) before
        // serving, or say once that they stay in plaintext.
        let ingestor = &self.app.ingestor;
        match &ingestor.config().secret_cipher {
            Some(cipher) => {
                let sealed =
                    ingestor.seal_stored_secrets().await.map_err(ServeError::SealSecrets)?;
                tracing::info!(
                    sealed,
                    key_id = cipher.key_id(),
                    "webhook secrets are encrypted at rest"
                );
            }
            None => tracing::warn!(
                "TRIGGERS_SECRET_KEY is not set: webhook signing secrets are stored in plaintext"
            ),
        }
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let table = ConnTable::new(config.max_connections_per_peer);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            while conns.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(entry) = table.admit(peer.ip()) else {
                self.app.metrics.rejected_connection();
                tracing::debug!(%peer, "per-peer connection cap reached; closing a new connection");
                continue;
            };
            let Some(permit) = self.slot(&permits, &table).await else {
                self.app.metrics.rejected_connection();
                tracing::debug!("connection cap reached; closing a new connection");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = serve_connection(self.app.clone(), stream, (permit, entry), stop_rx.clone());
            conns.spawn(conn);
        }
        drop(listener);
        tracing::info!(in_flight = conns.len(), "shutting down: draining connections");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = conns.len(), "shutdown timeout: dropping remaining connections");
            conns.shutdown().await;
        }
        self.app.ingestor.shutdown().await;
        tracing::info!("server stopped");
        Ok(())
    }

    /// A connection slot: at once if free; else the longest-idle connection is asked to close
    /// and the slot it frees (or any other) is waited for up to `connection_wait`.
    async fn slot(
        &self,
        permits: &Arc<Semaphore>,
        table: &ConnTable,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = permits.clone().try_acquire_owned() {
            return Some(p);
        }
        if table.evict_idle() {
            tracing::debug!("connection cap reached; closing the longest-idle connection");
        }
        let wait = self.app.config.connection_wait;
        tokio::time::timeout(wait, permits.clone().acquire_owned()).await.ok()?.ok()
    }
}

/// Serves one connection until it closes, or until shutdown (or eviction while idle) asks it
/// to finish gracefully. `slot` (the global permit and the table entry) is held until then.
async fn serve_connection<S: EventStore, D: Deliverer>(
    app: Arc<App<S, D>>,
    stream: TcpStream,
    slot: (OwnedSemaphorePermit, ConnGuard),
    mut stop: watch::Receiver<bool>,
) {
    let entry = Arc::new(slot.1);
    app.metrics.connection(1);
    let conn_info = stream.local_addr().ok().map(|local| ConnInfo { local });
    let service = {
        let app = app.clone();
        let entry = entry.clone();
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            // Where the connection arrived: `/metrics` without a token is served on loopback
            // binds only.
            if let Some(info) = conn_info {
                req.extensions_mut().insert(info);
            }
            let busy = entry.busy();
            let res = respond(app.clone(), req.map(box_body));
            async move {
                let _busy = busy;
                Ok::<_, Infallible>(res.await)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            // Idle at the global cap: make room (an in-progress request still finishes).
            () = entry.state.evict.notified(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
    app.metrics.connection(-1);
    drop(slot.0);
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
