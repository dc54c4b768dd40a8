//! `GET /api/webhooks/{id}`, `PATCH /api/webhooks/{id}`, `POST /api/webhooks/{id}/recover`.

use chrono::{DateTime, Utc};
use http::StatusCode;
use triggers_core::store::EndpointPatch;
use triggers_core::{Deliverer, DeliveryOrdering, EndpointId, EventStore, Timestamp, TypeGlob};

use super::{named, path_id};
use crate::app::{App, Ctx, Req, Res};
use crate::body;
use crate::dto::{RecoverBody, RecoverRequest, WebhookPatch, WebhookView};
use crate::error::ApiError;
use crate::respond::json_with;

pub(super) async fn show<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EndpointId = path_id(id, "webhook")?;
    let endpoint = app.ingestor.endpoint(&org, id).await.map_err(named("webhook"))?;
    Ok(json_with(StatusCode::OK, &WebhookView::from(&endpoint)))
}

pub(super) async fn patch<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EndpointId = path_id(id, "webhook")?;
    let bytes = app.read_json(req).await?;
    let request: WebhookPatch = body::parse_object(&bytes)?;
    if let Some(url) = &request.url {
        // Exactly the checks of creation.
        super::webhooks::validate_url(app, url)?;
    }
    let filter =
        match request.event_type_filter {
            None => None,
            Some(None) => Some(None),
            Some(Some(f)) => Some(Some(TypeGlob::parse(&f).map_err(|reason| {
                ApiError::Invalid { field: "event_type_filter".into(), reason }
            })?)),
        };
    let ordering = match request.ordering {
        None => None,
        Some(value) => Some(
            value
                .ok_or_else(|| "must be \"parallel\" or \"fifo\", not null".to_owned())
                .and_then(|o| DeliveryOrdering::parse(&o))
                .map_err(|reason| ApiError::Invalid { field: "ordering".into(), reason })?,
        ),
    };
    let patch = EndpointPatch {
        url: request.url,
        event_type_filter: filter,
        enabled: request.enabled,
        description: request.description,
        headers: request.headers.map(|h| h.unwrap_or_default().into_iter().collect()),
        rate_limit: request.rate_limit.map(|o| o.map(|n| n.0)),
        concurrency: request.concurrency.map(|o| o.map(|n| n.0)),
        ordering,
    };
    let endpoint =
        app.ingestor.update_endpoint(&org, id, &patch).await.map_err(named("webhook"))?;
    tracing::info!(organization_id = %org.id, endpoint_id = %id, "webhook updated");
    Ok(json_with(StatusCode::OK, &WebhookView::from(&endpoint)))
}

fn timestamp(field: &'static str, text: &str) -> Result<Timestamp, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| triggers_core::clock::truncate_micros(t.with_timezone(&Utc)))
        .map_err(|e| ApiError::Invalid {
            field: field.into(),
            reason: format!("must be an RFC 3339 time ({e})"),
        })
}

pub(super) async fn recover<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EndpointId = path_id(id, "webhook")?;
    let bytes = app.read_json(req).await?;
    let request: RecoverRequest = body::parse_object(&bytes)?;
    let since = timestamp("since", &request.since)?;
    let until = request.until.as_deref().map(|u| timestamp("until", u)).transpose()?;
    let recovered = app.ingestor.recover(&org, id, since, until).await.map_err(named("webhook"))?;
    tracing::info!(organization_id = %org.id, endpoint_id = %id, queued = recovered.queued,
        "webhook deliveries recovered");
    let body = RecoverBody { queued: recovered.queued, more: recovered.more };
    Ok(json_with(StatusCode::ACCEPTED, &body))
}
