//! The Triggers API mounted inside an existing axum application, under `/triggers`, beside
//! the application's own routes — one listener, one process.
//!
//! The application owns its organization (the same one on every run, found by a stable
//! name) and hands out its API key; nobody can create organizations over HTTP
//! (`AdminPolicy::Closed`), whatever address the app listens on. Events are consumed
//! in process.
//!
//! ```text
//! cargo run --example axum_embed
//! curl -s localhost:3000/hello
//! curl -s -X POST localhost:3000/triggers/api/events -H "X-API-Key: $KEY" \
//!   -H 'Content-Type: application/json' -d '{"type": "user.created", "payload": {"id": 1}}'
//! curl -s localhost:3000/triggers/openapi.json   # "servers": [{"url": "/triggers"}]
//! ```

use std::sync::Arc;

use axum::routing::get;
use triggers::http::{AdminPolicy, ApiService, Metrics, ServiceConfig};
use triggers::sqlite::{SqliteConfig, SqliteStore};
use triggers::{FnDeliverer, Ingestor, IngestorConfig, OrganizationId, Outcome, Tier};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let store = SqliteStore::open("axum-embed.db", SqliteConfig::default())?;
    let deliverer = FnDeliverer::new(|delivery| async move {
        tracing::info!(event = %delivery.event_id, r#type = %delivery.event_type, "consumed");
        Outcome::Delivered
    });
    // One set of metrics for the API and the delivery workers.
    let metrics = Arc::new(Metrics::new());
    let config = IngestorConfig { observer: Some(metrics.clone()), ..IngestorConfig::default() };
    let ingestor = Ingestor::start(store, deliverer, config);

    // The app's organization: the same on every run. Deliveries to in-process consumers go
    // to an `inproc://` endpoint (created once).
    let org = ingestor
        .organization_or_create(OrganizationId::named("my-app"), "my-app", Tier::Enterprise)
        .await?;
    if ingestor.endpoints(&org).await?.is_empty() {
        ingestor.create_endpoint(&org, "inproc://consumer", None).await?;
    }
    let key = ingestor.rotate_key(&org).await?;
    println!("KEY={}", key.expose());

    let api = ApiService::new(
        ingestor.clone(),
        ServiceConfig {
            metrics: Some(metrics),
            ..ServiceConfig::new(AdminPolicy::Closed).base_path("/triggers")
        },
    );
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello from the app\n" }))
        .nest_service("/triggers", api);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(triggers::http::shutdown_signal()).await?;
    // The clean way to stop: in-flight deliveries finish or are released.
    ingestor.shutdown().await;
    Ok(())
}
