//! `GET /api/webhooks/{id}/attempts` and `GET /api/deliveries`: delivery history, newest
//! first, cursor-paged.

use chrono::{DateTime, Utc};
use http::StatusCode;
use triggers_core::store::DeliveryStatus;
use triggers_core::{
    AttemptsQuery, Deliverer, DeliveriesQuery, EndpointId, Error, EventStore, ValidationError,
};

use super::{named, path_id};
use crate::app::{App, Ctx, Req, Res};
use crate::body;
use crate::dto::{AttemptsBody, DeliveriesBody, DeliveryView, EndpointAttemptView};
use crate::error::ApiError;
use crate::respond::json_with;

fn bad(name: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidQuery(format!("{name}: {reason}"))
}

fn limit(value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| bad("limit", "must be a whole number from 1 to 1000"))
}

/// The core's refusals of a query's values (a cursor it cannot read) are 400s like the
/// HTTP layer's own.
fn query_error(what: &'static str) -> impl Fn(Error) -> ApiError {
    move |e| match e {
        Error::Invalid(ValidationError::Field { field, reason }) => bad(field, reason),
        other => named(what)(other),
    }
}

/// Parses `status` (`success` | `failure`), `since`, `limit` and `cursor`; anything malformed
/// is 400 `invalid_query`. Unknown parameters are ignored.
fn attempts_query(query: Option<&str>) -> Result<AttemptsQuery, ApiError> {
    let mut q = AttemptsQuery::default();
    for (name, value) in body::query_pairs(query.unwrap_or(""))? {
        match name.as_ref() {
            "status" => {
                q.success = match value.as_ref() {
                    "success" => Some(true),
                    "failure" => Some(false),
                    _ => return Err(bad("status", "must be success or failure")),
                }
            }
            "since" => {
                let at = DateTime::parse_from_rfc3339(&value)
                    .map_err(|e| bad("since", format!("must be an RFC 3339 time ({e})")))?;
                q.since = Some(triggers_core::clock::truncate_micros(at.with_timezone(&Utc)));
            }
            "limit" => q.limit = limit(&value)?,
            "cursor" if !value.is_empty() => q.cursor = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(q)
}

/// Parses `endpoint_id`, `status`, `limit` and `cursor`, like [`attempts_query`].
fn deliveries_query(query: Option<&str>) -> Result<DeliveriesQuery, ApiError> {
    let mut q = DeliveriesQuery::default();
    for (name, value) in body::query_pairs(query.unwrap_or(""))? {
        match name.as_ref() {
            "endpoint_id" => {
                let id =
                    value.parse::<EndpointId>().map_err(|_| bad("endpoint_id", "not a UUID"))?;
                q.endpoint = Some(id);
            }
            "status" => {
                q.status = Some(value.parse::<DeliveryStatus>().map_err(|e| bad("status", e))?)
            }
            "limit" => q.limit = limit(&value)?,
            "cursor" if !value.is_empty() => q.cursor = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(q)
}

pub(super) async fn attempts<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EndpointId = path_id(id, "webhook")?;
    let query = attempts_query(req.uri().query())?;
    let page =
        app.ingestor.endpoint_attempts(&org, id, query).await.map_err(query_error("webhook"))?;
    let body = AttemptsBody {
        attempts: page.attempts.iter().map(EndpointAttemptView::from).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(json_with(StatusCode::OK, &body))
}

pub(super) async fn deliveries<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let query = deliveries_query(req.uri().query())?;
    let page = app.ingestor.deliveries(&org, query).await.map_err(query_error("webhook"))?;
    let body = DeliveriesBody {
        deliveries: page.deliveries.iter().map(DeliveryView::from).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(json_with(StatusCode::OK, &body))
}
