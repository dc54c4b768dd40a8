//! `GET /api/inbox`, `POST /api/ack/{id}`, `POST /api/ack`.

use std::collections::HashSet;

use http::StatusCode;
use triggers_core::store::page_item_size;
use triggers_core::{Cursor, Deliverer, EventId, EventStatus, EventStore, InboxQuery, TypeGlob};

use super::{named, path_id};
use crate::app::{App, Ctx, Req, Res};
use crate::body;
use crate::dto::{AckMany, AckManyBody, EventView, IdStatus, InboxBody};
use crate::error::ApiError;
use crate::respond::{json_sized, json_with};

/// Parses `status` (`all` for every status), `type`, `limit` and `cursor`; anything
/// malformed is 400 `invalid_query`. `offset` and `page` (offset paging, which this API does
/// not have) are 400 naming `cursor`, so a client that pages that way stops at once instead of
/// reading page one forever. Other unknown parameters are ignored.
fn inbox_query(query: Option<&str>) -> Result<InboxQuery, ApiError> {
    let mut q = InboxQuery::default();
    for (name, value) in body::query_pairs(query.unwrap_or(""))? {
        match name.as_ref() {
            "status" if value == "all" => q.status = None,
            "status" => {
                let status = value
                    .parse::<EventStatus>()
                    .map_err(|e| ApiError::InvalidQuery(format!("status: {e}, or all")))?;
                q.status = Some(status);
            }
            "offset" | "page" => {
                return Err(ApiError::InvalidQuery(format!(
                    "{name}: this API pages with `cursor`: pass each page's next_cursor as \
                     cursor to get the next one"
                )));
            }
            "type" => {
                let glob = TypeGlob::parse(&value)
                    .map_err(|e| ApiError::InvalidQuery(format!("type: {e}")))?;
                q.type_glob = Some(glob);
            }
            "limit" => {
                q.limit = value.parse::<u32>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(
                    || {
                        ApiError::InvalidQuery(
                            "limit: must be a whole number from 1 to 1000".into(),
                        )
                    },
                )?;
            }
            "cursor" if !value.is_empty() => {
                Cursor::decode(&value)
                    .map_err(|_| ApiError::InvalidQuery("cursor: invalid cursor".into()))?;
                q.cursor = Some(value.into_owned());
            }
            _ => {}
        }
    }
    Ok(q)
}

pub(super) async fn list<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let query = inbox_query(req.uri().query())?;
    // The page is bounded in bytes by the store (IngestorConfig::max_page_bytes); it is
    // serialised once, into a buffer of about its final size, and the events are dropped
    // right after.
    let page = app.ingestor.inbox(&org, query).await?;
    let size_hint: u64 = page
        .events
        .iter()
        .map(|e| page_item_size(&e.event_type, e.payload.get(), e.dedup_id.as_deref()))
        .sum();
    let body = InboxBody {
        events: page.events.iter().map(EventView::of).collect(),
        next_cursor: page.next_cursor,
    };
    let size_hint = usize::try_from(size_hint).unwrap_or(usize::MAX).min(1 << 30) + 64;
    Ok(json_sized(StatusCode::OK, &body, size_hint))
}

pub(super) async fn ack_one<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EventId = path_id(id, "event")?;
    app.ingestor.ack(&org, id).await.map_err(named("event"))?;
    Ok(json_with(StatusCode::OK, &IdStatus { id, status: EventStatus::Delivered }))
}

pub(super) async fn ack_many<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let bytes = app.read_json(req).await?;
    let request: AckMany = body::parse_object(&bytes)?;
    let max = app.ingestor.config().max_batch;
    if request.ids.len() > max {
        return Err(ApiError::Invalid {
            field: "ids".into(),
            reason: format!("at most {max} ids (got {})", request.ids.len()),
        });
    }
    let parsed: Vec<Option<EventId>> = request.ids.iter().map(|s| s.parse().ok()).collect();
    let ids: Vec<EventId> = parsed.iter().flatten().copied().collect();
    let outcome = app.ingestor.ack_many(&org, &ids).await?;
    let acknowledged: HashSet<EventId> = outcome.acknowledged.into_iter().collect();
    let mut body = AckManyBody { acknowledged: Vec::new(), not_found: Vec::new() };
    for (text, id) in request.ids.iter().zip(&parsed) {
        match id {
            Some(id) if acknowledged.contains(id) => body.acknowledged.push(text),
            _ => body.not_found.push(text),
        }
    }
    Ok(json_with(StatusCode::OK, &body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn inbox_queries() {
        let q = inbox_query(None).unwrap();
        assert_eq!(q, InboxQuery::default());
        let cursor = Cursor::encode(EventId::new());
        let q = inbox_query(Some(&format!("status=failed&type=user.*&limit=5&cursor={cursor}")))
            .unwrap();
        assert_eq!(q.status, Some(EventStatus::Failed));
        assert_eq!(inbox_query(Some("status=all")).unwrap().status, None);
        assert_eq!(q.type_glob.unwrap().as_str(), "user.*");
        assert_eq!(q.limit, 5);
        assert_eq!(q.cursor.as_deref(), Some(cursor.as_str()));
        for bad in [
            "status=done",
            "limit=0",
            "limit=1001",
            "limit=x",
            "type=a%20b",
            "cursor=zz",
            "offset=100",
            "page=2",
        ] {
            assert_eq!(inbox_query(Some(bad)).unwrap_err().code(), "invalid_query", "{bad}");
        }
    }
}
