//! `POST /api/events`, `POST /api/events/batch`, `GET /api/events/{id}`,
//! `POST /api/events/{id}/replay`.

use std::time::Instant;

use http::StatusCode;
use triggers_core::{Deliverer, Error, EventId, EventStore, NewEvent, ValidationError};

use super::{idempotency, named, path_id};
use crate::app::{App, Ctx, Req, Res};
use crate::body;
use crate::dto::{Accepted, AttemptView, Batch, BatchItem, BatchResults, EventView, IdStatus};
use crate::error::ApiError;
use crate::respond::{json_sized, json_with};

/// The metrics label of a failed ingest call.
fn failure_outcome(e: &Error) -> &'static str {
    match e {
        Error::Invalid(_) => "invalid",
        Error::RateLimited(_) => "rate_limited",
        Error::Overloaded(_) => "overloaded",
        _ => "error",
    }
}

pub(super) async fn create<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let key = idempotency::key(req.headers())?;
    let bytes = app.read_json(req).await?;
    let mut event: NewEvent = body::parse_object(&bytes).inspect_err(|_| {
        app.metrics.ingested("invalid", 1);
    })?;
    let keyed = key.and_then(|key| idempotency::apply(&mut event, key));
    let started = Instant::now();
    let result = app.ingestor.ingest(&org, event).await;
    app.metrics.ingest_latency("single", started.elapsed());
    match result {
        Ok(ingested) => {
            ctx.rate = Some(ingested.rate);
            if let (true, Some(keyed)) = (ingested.duplicate, &keyed) {
                if !idempotency::same_event(app, &org, ingested.id, keyed).await? {
                    app.metrics.ingested("invalid", 1);
                    return Err(ApiError::IdempotencyKeyReused);
                }
            }
            let (status, outcome) = if ingested.duplicate {
                (StatusCode::OK, "duplicate")
            } else {
                (StatusCode::ACCEPTED, "accepted")
            };
            app.metrics.ingested(outcome, 1);
            Ok(json_with(status, &Accepted::from(ingested)))
        }
        Err(e) => {
            app.metrics.ingested(failure_outcome(&e), 1);
            Err(e.into())
        }
    }
}

pub(super) async fn batch<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let key = idempotency::batch_key(req.headers())?;
    let bytes = app.read_json(req).await?;
    let batch: Batch = body::parse_object(&bytes)?;
    let n = batch.events.len();
    let max = app.ingestor.config().max_batch;
    if n == 0 || n > max {
        return Err(ValidationError::Field {
            field: "events",
            reason: format!("a batch holds 1 to {max} events (got {n})"),
        }
        .into());
    }
    // Parse each item on its own, so one bad item does not sink the others.
    let mut slots: Vec<Option<ApiError>> = Vec::with_capacity(n);
    let mut valid: Vec<NewEvent> = Vec::with_capacity(n);
    // Per valid item: what to compare if its key-given dedup id finds an original.
    let mut keyed: Vec<idempotency::Keyed> = Vec::with_capacity(n);
    for (index, raw) in batch.events.iter().enumerate() {
        let parsed = body::parse_item::<NewEvent>(raw.get()).map(|mut event| {
            let given = key.as_deref().and_then(|key| {
                idempotency::apply(&mut event, idempotency::batch_dedup(key, index))
            });
            (event, given)
        });
        match parsed {
            Ok((event, given)) => {
                valid.push(event);
                keyed.push(given);
                slots.push(None);
            }
            Err(e) => slots.push(Some(e)),
        }
    }
    let mut keyed = keyed.into_iter();
    let mut ingested = if valid.is_empty() {
        Vec::new().into_iter()
    } else {
        let count = valid.len() as u64;
        let started = Instant::now();
        let result = app.ingestor.ingest_batch(&org, valid).await;
        app.metrics.ingest_latency("batch", started.elapsed());
        let done = result.inspect_err(|e| app.metrics.ingested(failure_outcome(e), count))?;
        ctx.rate = Some(done.rate);
        done.results.into_iter()
    };
    let mut results = Vec::with_capacity(n);
    for slot in slots {
        let item = match slot {
            Some(parse_error) => Err(parse_error),
            None => {
                let given = keyed.next().flatten();
                match ingested.next() {
                    Some(Ok(i)) => match (&given, i.duplicate) {
                        (Some(given), true)
                            if !idempotency::same_event(app, &org, i.id, given).await? =>
                        {
                            Err(ApiError::IdempotencyKeyReused)
                        }
                        _ => Ok(i),
                    },
                    Some(Err(v)) => Err(ApiError::from(v)),
                    None => Err(ApiError::Internal),
                }
            }
        };
        results.push(match item {
            Ok(i) => {
                app.metrics.ingested(if i.duplicate { "duplicate" } else { "accepted" }, 1);
                BatchItem::Ok(Accepted::from(i))
            }
            Err(e) => {
                let outcome = if matches!(e, ApiError::Internal) { "error" } else { "invalid" };
                app.metrics.ingested(outcome, 1);
                BatchItem::Err { error: e.problem() }
            }
        });
    }
    // ≈ 170 bytes per accepted item: reserved up front rather than grown a dozen times.
    Ok(json_sized(StatusCode::OK, &BatchResults { results }, 64 + n * 192))
}

pub(super) async fn show<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EventId = path_id(id, "event")?;
    let detail = app.ingestor.event(&org, id).await.map_err(named("event"))?;
    let mut view = EventView::of(&detail.event);
    view.attempts = Some(detail.attempts.iter().map(AttemptView::from).collect());
    Ok(json_with(StatusCode::OK, &view))
}

pub(super) async fn replay<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    req: Req,
    id: &str,
) -> Res {
    let org = app.auth(req.headers(), ctx).await?;
    let id: EventId = path_id(id, "event")?;
    let replayed = app.ingestor.replay(&org, id).await.map_err(named("event"))?;
    ctx.rate = Some(replayed.rate);
    Ok(json_with(StatusCode::ACCEPTED, &IdStatus { id, status: replayed.status }))
}
