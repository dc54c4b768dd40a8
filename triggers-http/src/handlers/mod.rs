//! The route handlers, one module per resource.

mod events;
mod history;
mod idempotency;
mod inbox;
mod keys;
mod lifecycle;
mod ops;
mod webhooks;

use std::str::FromStr;

use triggers_core::{Deliverer, EventStore};

use crate::app::{App, Ctx, Req, Res};
use crate::error::ApiError;
use crate::router::Route;
use crate::ui::{self, Page};

/// Runs the handler of `route`.
pub(crate) async fn dispatch<S: EventStore, D: Deliverer>(
    app: &App<S, D>,
    ctx: &mut Ctx,
    route: Route,
    id: Option<&str>,
    req: Req,
) -> Res {
    let id = id.unwrap_or("");
    match route {
        Route::KeysGenerate => keys::generate(app, req).await,
        Route::KeysShow => keys::show(app, ctx, req).await,
        Route::KeysRotate => keys::rotate(app, ctx, req).await,
        Route::EventsCreate => events::create(app, ctx, req).await,
        Route::EventsBatch => events::batch(app, ctx, req).await,
        Route::EventsShow => events::show(app, ctx, req, id).await,
        Route::EventsReplay => events::replay(app, ctx, req, id).await,
        Route::Inbox => inbox::list(app, ctx, req).await,
        Route::AckOne => inbox::ack_one(app, ctx, req, id).await,
        Route::AckMany => inbox::ack_many(app, ctx, req).await,
        Route::WebhookCreate => webhooks::create(app, ctx, req).await,
        Route::WebhookList => webhooks::list(app, ctx, req).await,
        Route::WebhookDelete => webhooks::delete(app, ctx, req, id).await,
        Route::WebhookRotateSecret => webhooks::rotate_secret(app, ctx, req, id).await,
        Route::QueueStats => ops::stats(app, ctx, req).await,
        Route::Health | Route::Live => Ok(ops::health(app)),
        Route::Ready => ops::ready(app).await,
        Route::Metrics => ops::metrics(app, req).await,
        Route::OpenApi => Ok(ops::openapi(app)),
        Route::WebhookShow => lifecycle::show(app, ctx, req, id).await,
        Route::WebhookPatch => lifecycle::patch(app, ctx, req, id).await,
        Route::WebhookRecover => lifecycle::recover(app, ctx, req, id).await,
        Route::WebhookAttempts => history::attempts(app, ctx, req, id).await,
        Route::Deliveries => history::deliveries(app, ctx, req).await,
        Route::Dashboard => ui::serve(app.config.ui, Page::Dashboard, None, req.headers()),
        Route::DashboardFile => ui::serve(app.config.ui, Page::Dashboard, Some(id), req.headers()),
        Route::Docs => ui::serve(app.config.ui, Page::Docs, None, req.headers()),
        Route::DocsFile => ui::serve(app.config.ui, Page::Docs, Some(id), req.headers()),
    }
}

/// Parses an id from the path. A malformed id names nothing, so it is 404 like an unknown one.
pub(crate) fn path_id<T: FromStr>(id: &str, what: &'static str) -> Result<T, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(what))
}

/// Maps a core error, naming what was not found.
pub(crate) fn named(what: &'static str) -> impl Fn(triggers_core::Error) -> ApiError {
    move |e| match e {
        triggers_core::Error::NotFound => ApiError::NotFound(what),
        other => other.into(),
    }
}
