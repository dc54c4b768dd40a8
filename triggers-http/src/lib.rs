//! Triggers over HTTP: the API server on hyper, and the signed webhook [`WebhookDeliverer`].
//!
//! The [`Server`] serves the Triggers API (SPEC §5) for any [`Ingestor`](triggers_core::Ingestor):
//! a small router without a web framework, `X-API-Key` authentication through the Ingestor's
//! cached key lookup, rate-limit headers on every authenticated response, RFC 9457 problem
//! documents for every error, Prometheus metrics and an OpenAPI 3.1 document; in a browser, a
//! dashboard at `/ui` and interactive API docs at `/docs` (`ServerConfig::ui`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use triggers_core::{Ingestor, IngestorConfig, MemoryStore};
//! use triggers_http::{Metrics, Server, ServerConfig, WebhookConfig, WebhookDeliverer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Arc::new(Metrics::new());
//! let config = IngestorConfig { observer: Some(metrics.clone()), ..IngestorConfig::default() };
//! let deliverer = WebhookDeliverer::new(WebhookConfig::default())?;
//! let ingestor = Ingestor::start(MemoryStore::new(), deliverer, config);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::with_metrics(ingestor, ServerConfig::default(), metrics)
//!     .serve(listener, triggers_http::shutdown_signal())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! To serve the API inside another application (axum's `Router::nest_service`, or any
//! tower/hyper server) use [`ApiService`] instead: the same API as a `Clone` tower
//! `Service`, with an explicit [`AdminPolicy`]. `Server` is a connection loop around it.
//!
//! Decisions worth knowing:
//! - A malformed id in a path is answered like an unknown one: 404 `not_found`. In
//!   `POST /api/ack` a malformed id is listed under `not_found`.
//! - Inbox pages list events oldest first (ascending UUID v7 id) without their attempts;
//!   `GET /api/events/{id}` has the attempts.
//! - The request body limit (`ServerConfig::max_body`) applies to every route, batches
//!   included; it is enforced while reading.
//! - Unknown JSON fields and unknown query parameters are ignored; a repeated query parameter
//!   is 400.

#![recursion_limit = "256"]

mod app;
mod body;
mod config;
mod conns;
mod dto;
mod error;
mod guard;
mod handlers;
pub mod logging;
mod metrics;
mod openapi;
mod panic;
mod respond;
mod router;
mod server;
mod service;
pub mod settings;
mod ui;
pub mod webhook;

pub use config::{AdminPolicy, ServerConfig, UrlPolicy, BODY_ENVELOPE};
pub use metrics::Metrics;
pub use router::{routes, RouteInfo};
pub use server::{shutdown_signal, ServeError, Server};
pub use service::{service, ApiService, BoxError, ResponseBody, ServiceConfig};
pub use settings::Settings;
pub use webhook::{WebhookConfig, WebhookDeliverer};

/// The `prometheus-client` version [`Metrics::register_into`] takes a registry of.
pub use prometheus_client;

/// The OpenAPI 3.1 document served at `GET /openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}
