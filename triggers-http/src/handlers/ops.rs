//! `GET /api/queue/stats`, `/health`, `/health/live`, `/health/ready`, `/metrics`,
//! `/openapi.json`.

use bytes::Bytes;
use http::{Response, StatusCode};
use triggers_core::{Deliverer, EventStore};

use crate::app::{App, Ctx, Req, Res};
use crate::dto::{StatsBody, StatusOk};
use crate::error::ApiError;
use crate::respond::{json_with, with_body, Body};

pub(super) async fn stats<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let stats = app.ingestor.stats(&org).await?;
    Ok(json_with(StatusCode::OK, &StatsBody::from(stats)))
}

/// `{status: "ok", timestamp}`: the process is up (`/health`, `/health/live`, and a ready
/// `/health/ready`).
pub(super) fn health<S: EventStore, D: Deliverer>(app: &App<S, D>) -> Response<Body> {
    let timestamp = app.ingestor.config().clock.now();
    json_with(StatusCode::OK, &StatusOk { status: "ok", timestamp })
}

/// A store round trip; any failure is 503 `store_unavailable`.
pub(super) async fn ready<S: EventStore, D: Deliverer>(app: &App<S, D>) -> Res {
    match app.ingestor.ready().await {
        Ok(()) => Ok(health(app)),
        Err(e) => {
            let cause = match e {
                triggers_core::Error::Store(triggers_core::StoreError::Unavailable(why)) => why,
                other => other.to_string(),
            };
            tracing::warn!(error = %crate::error::redact(&cause), "readiness check failed");
            Err(ApiError::Unavailable(cause))
        }
    }
}

pub(super) async fn metrics<S: EventStore, D: Deliverer>(app: &App<S, D>, req: Req) -> Res {
    app.check_metrics(&req)?;
    app.metrics.read_store(&app.ingestor).await;
    let text = app.metrics.encode();
    Ok(with_body(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Bytes::from(text),
    ))
}

pub(super) fn openapi<S: EventStore, D: Deliverer>(app: &App<S, D>) -> Response<Body> {
    with_body(StatusCode::OK, "application/json", app.openapi())
}
