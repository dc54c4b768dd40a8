//! `POST /api/keys/generate`, `GET /api/keys`, `POST /api/keys/rotate`.

use http::StatusCode;
use triggers_core::{Deliverer, EventStore, Tier};

use crate::app::{App, Ctx, Req, Res};
use crate::body;
use crate::dto::{ApiKeyBody, GenerateKey, KeyCreated, KeyInfo, WebhookView};
use crate::error::ApiError;
use crate::respond::json_with;

pub(super) async fn generate<S: EventStore, D: Deliverer>(app: &App<S, D>, req: Req) -> Res {
    app.check_admin(req.headers())?;
    let bytes = app.read_json(req).await?;
    let request: GenerateKey = body::parse_object(&bytes)?;
    let tier = match request.tier.as_deref() {
        None => Tier::Free,
        Some(name) => name
            .parse::<Tier>()
            .map_err(|e| ApiError::Invalid { field: "tier".into(), reason: e.to_string() })?,
    };
    let (org, key) = app.ingestor.create_organization(&request.organization_name, tier).await?;
    tracing::info!(organization_id = %org.id, tier = %org.tier, "organization created");
    let body = KeyCreated {
        api_key: key.expose(),
        organization_id: org.id.to_string(),
        organization_name: &org.name,
        tier: org.tier.as_str(),
        rate_limit_per_minute: app.ingestor.config().tier_limits.per_minute(org.tier),
    };
    Ok(json_with(StatusCode::CREATED, &body))
}

pub(super) async fn show<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let endpoints = app.ingestor.endpoints(&org).await?;
    let body = KeyInfo {
        organization_id: org.id.to_string(),
        organization_name: &org.name,
        tier: org.tier.as_str(),
        rate_limit_per_minute: app.ingestor.config().tier_limits.per_minute(org.tier),
        webhooks: endpoints.iter().map(WebhookView::from).collect(),
    };
    Ok(json_with(StatusCode::OK, &body))
}

pub(super) async fn rotate<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let key = app.ingestor.rotate_key(&org).await?;
    tracing::info!(organization_id = %org.id, "API key rotated");
    Ok(json_with(StatusCode::OK, &ApiKeyBody { api_key: key.expose() }))
}
