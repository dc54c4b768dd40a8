//! `POST /api/webhook/config`, `GET /api/webhook/config`, `DELETE /api/webhooks/{id}`,
//! `POST /api/webhooks/{id}/rotate-secret`.

use http::StatusCode;
use triggers_core::{Deliverer, DeliveryOrdering, EndpointId, EventStore};

use super::{named, path_id};
use crate::app::{App, Ctx, Req, Res};
use crate::body;
use crate::dto::{SecretBody, WebhookConfigRequest, WebhookCreated, WebhookList, WebhookView};
use crate::error::ApiError;
use crate::respond::{empty, json_with};

/// The URL checks of creation (also used when a URL is changed): the shape check of the
/// core (`triggers_core::domain::validate::webhook_url`), then the server's policy.
pub(super) fn validate_url<S, D>(app: &App<S, D>, url: &str) -> Result<(), ApiError> {
    triggers_core::domain::validate::webhook_url(url)?;
    if let Some(policy) = &app.config.webhook_url_policy {
        policy(url).map_err(|reason| ApiError::Invalid { field: "url".into(), reason })?;
    }
    Ok(())
}

pub(super) async fn create<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let bytes = app.read_json(req).await?;
    let request: WebhookConfigRequest = body::parse_object(&bytes)?;
    let invalid = |reason: String| ApiError::Invalid { field: "url".into(), reason };
    let url = match (request.url, request.webhook_url) {
        (Some(_), Some(_)) => {
            return Err(invalid("send one of url and webhook_url (an alias), not both".into()))
        }
        (Some(u), None) | (None, Some(u)) => u,
        (None, None) => return Err(invalid("missing field `url`".into())),
    };
    validate_url(app, &url)?;
    let ordering = match request.ordering.as_deref() {
        None => DeliveryOrdering::Parallel,
        Some(o) => DeliveryOrdering::parse(o)
            .map_err(|reason| ApiError::Invalid { field: "ordering".into(), reason })?,
    };
    let endpoint = app
        .ingestor
        .create_endpoint_with_ordering(&org, &url, request.event_type_filter.as_deref(), ordering)
        .await?;
    tracing::info!(organization_id = %org.id, endpoint_id = %endpoint.id, "webhook created");
    let body = WebhookCreated {
        id: endpoint.id,
        url: &endpoint.url,
        event_type_filter: endpoint.event_type_filter.as_ref().map(|g| g.as_str()),
        secret: endpoint.secret.expose(),
        enabled: endpoint.enabled,
        created_at: endpoint.created_at,
        ordering: endpoint.ordering,
    };
    Ok(json_with(StatusCode::CREATED, &body))
}

pub(super) async fn list<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let endpoints = app.ingestor.endpoints(&org).await?;
    let body = WebhookList { webhooks: endpoints.iter().map(WebhookView::from).collect() };
    Ok(json_with(StatusCode::OK, &body))
}

pub(super) async fn delete<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EndpointId = path_id(id, "webhook")?;
    app.ingestor.delete_endpoint(&org, id).await.map_err(named("webhook"))?;
    tracing::info!(organization_id = %org.id, endpoint_id = %id, "webhook deleted");
    Ok(empty(StatusCode::NO_CONTENT))
}

pub(super) async fn rotate_secret<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EndpointId = path_id(id, "webhook")?;
    let secret = app.ingestor.rotate_endpoint_secret(&org, id).await.map_err(named("webhook"))?;
    tracing::info!(organization_id = %org.id, endpoint_id = %id, "webhook secret rotated");
    Ok(json_with(StatusCode::OK, &SecretBody { secret: secret.expose() }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use triggers_core::domain::validate::webhook_url as check_url;

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("HTTP://127.0.0.1:9000").is_ok());
        assert!(check_url("ftp://example.com").is_err());
        assert!(check_url("inproc://billing").is_err());
        assert!(check_url("/relative").is_err());
        assert!(check_url("example.com").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("not a url").is_err());
    }
}
