//! The route table and a small matcher: method + path segments, one `{name}` parameter at most
//! (`{id}` for API items, `{file}` for the files of the browser pages).
//!
//! The same table drives dispatch and the OpenAPI document, so the two cannot drift apart.

use http::Method;

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    KeysGenerate,
    KeysShow,
    KeysRotate,
    EventsCreate,
    EventsBatch,
    EventsShow,
    EventsReplay,
    Inbox,
    AckOne,
    AckMany,
    WebhookCreate,
    WebhookList,
    WebhookDelete,
    WebhookRotateSecret,
    QueueStats,
    Health,
    Live,
    Ready,
    Metrics,
    OpenApi,
    WebhookShow,
    WebhookPatch,
    WebhookRecover,
    WebhookAttempts,
    Deliveries,
    Dashboard,
    DashboardFile,
    Docs,
    DocsFile,
}

/// One route the server serves.
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo {
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The path pattern; `{id}` (or `{file}`) stands for one path segment.
    pub path: &'static str,
    pub(crate) route: Route,
    /// Whether `path` has a parameter segment.
    param: bool,
}

const fn r(method: &'static str, path: &'static str, route: Route) -> RouteInfo {
    let bytes = path.as_bytes();
    let mut param = false;
    let mut i = 0;
    while i < bytes.len() {
        param |= bytes[i] == b'{';
        i += 1;
    }
    RouteInfo { method, path, route, param }
}

/// Every route, in documentation order.
static ROUTES: [RouteInfo; 29] = [
    r("POST", "/api/keys/generate", Route::KeysGenerate),
    r("GET", "/api/keys", Route::KeysShow),
    r("POST", "/api/keys/rotate", Route::KeysRotate),
    r("POST", "/api/events", Route::EventsCreate),
    r("POST", "/api/events/batch", Route::EventsBatch),
    r("GET", "/api/events/{id}", Route::EventsShow),
    r("POST", "/api/events/{id}/replay", Route::EventsReplay),
    r("GET", "/api/inbox", Route::Inbox),
    r("POST", "/api/ack/{id}", Route::AckOne),
    r("POST", "/api/ack", Route::AckMany),
    r("POST", "/api/webhook/config", Route::WebhookCreate),
    r("GET", "/api/webhook/config", Route::WebhookList),
    r("DELETE", "/api/webhooks/{id}", Route::WebhookDelete),
    r("POST", "/api/webhooks/{id}/rotate-secret", Route::WebhookRotateSecret),
    r("GET", "/api/queue/stats", Route::QueueStats),
    r("GET", "/health", Route::Health),
    r("GET", "/health/ready", Route::Ready),
    r("GET", "/health/live", Route::Live),
    r("GET", "/metrics", Route::Metrics),
    r("GET", "/openapi.json", Route::OpenApi),
    r("GET", "/api/webhooks/{id}", Route::WebhookShow),
    r("PATCH", "/api/webhooks/{id}", Route::WebhookPatch),
    r("POST", "/api/webhooks/{id}/recover", Route::WebhookRecover),
    r("GET", "/api/webhooks/{id}/attempts", Route::WebhookAttempts),
    r("GET", "/api/deliveries", Route::Deliveries),
    r("GET", "/ui", Route::Dashboard),
    r("GET", "/ui/{file}", Route::DashboardFile),
    r("GET", "/docs", Route::Docs),
    r("GET", "/docs/{file}", Route::DocsFile),
];

/// Every route the server serves: method and path pattern.
pub fn routes() -> &'static [RouteInfo] {
    &ROUTES
}

/// The outcome of matching a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Match<'a> {
    /// A route, and its `{id}` segment if it has one.
    Found(Route, Option<&'a str>),
    /// The path exists but not with this method; the allowed methods, comma separated.
    MethodNotAllowed(String),
    /// No route has this path.
    NotFound,
}

/// Whether `path` fits `pattern`; the parameter segment if so.
fn fit<'a>(pattern: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut param = None;
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(param),
            (Some(p), Some(seg)) if p.starts_with('{') && !seg.is_empty() => param = Some(seg),
            (Some(p), Some(seg)) if p == seg => {}
            _ => return None,
        }
    }
}

/// Finds the route for `method` and `path` (without the query). A path that a literal route
/// matches is that resource, whatever the parameter routes would say: `POST
/// /api/events/batch` is the batch route, and `GET /api/events/batch` is 405 with `Allow:
/// POST` (`batch` is not an event id). Otherwise the parameter routes decide. `Allow` lists
/// exactly the methods of the routes that decided, so it matches the OpenAPI document.
pub(crate) fn find<'a>(method: &Method, path: &'a str) -> Match<'a> {
    let literal = ROUTES.iter().any(|info| !info.param && info.path == path);
    let mut allowed: Vec<&'static str> = Vec::new();
    for info in &ROUTES {
        let param = match (literal, info.param) {
            (true, false) if info.path == path => None,
            (false, true) => match fit(info.path, path) {
                Some(param) => param,
                None => continue,
            },
            _ => continue,
        };
        if info.method == method.as_str() {
            return Match::Found(info.route, param);
        }
        if !allowed.contains(&info.method) {
            allowed.push(info.method);
        }
    }
    if allowed.is_empty() {
        return Match::NotFound;
    }
    allowed.sort_unstable();
    Match::MethodNotAllowed(allowed.join(", "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_literals_parameters_and_methods() {
        assert_eq!(find(&Method::POST, "/api/events"), Match::Found(Route::EventsCreate, None));
        assert_eq!(
            find(&Method::POST, "/api/events/batch"),
            Match::Found(Route::EventsBatch, None)
        );
        assert_eq!(find(&Method::GET, "/api/events/batch"), Match::MethodNotAllowed("POST".into()));
        assert_eq!(
            find(&Method::POST, "/api/events/abc/replay"),
            Match::Found(Route::EventsReplay, Some("abc"))
        );
        assert_eq!(
            find(&Method::DELETE, "/api/events/batch"),
            Match::MethodNotAllowed("POST".into())
        );
        assert_eq!(
            find(&Method::PUT, "/api/webhook/config"),
            Match::MethodNotAllowed("GET, POST".into())
        );
        assert_eq!(find(&Method::GET, "/api/events/"), Match::NotFound);
        assert_eq!(find(&Method::GET, "/api/events"), Match::MethodNotAllowed("POST".into()));
        assert_eq!(find(&Method::GET, "/api/event"), Match::NotFound);
        assert_eq!(find(&Method::GET, "/health/"), Match::NotFound);
        assert_eq!(find(&Method::GET, ""), Match::NotFound);
        assert_eq!(find(&Method::GET, "/api/events//replay"), Match::NotFound);
        assert_eq!(find(&Method::GET, "/ui"), Match::Found(Route::Dashboard, None));
        assert_eq!(
            find(&Method::GET, "/ui/app.js"),
            Match::Found(Route::DashboardFile, Some("app.js"))
        );
        assert_eq!(find(&Method::GET, "/ui/"), Match::NotFound);
        assert_eq!(find(&Method::GET, "/ui/a/b.js"), Match::NotFound);
        assert_eq!(find(&Method::POST, "/docs"), Match::MethodNotAllowed("GET".into()));
    }

    #[test]
    fn every_route_matches_itself_and_is_unique() {
        for info in routes() {
            let path = info.path.replace("{id}", "x").replace("{file}", "x");
            let method = Method::from_bytes(info.method.as_bytes()).unwrap();
            assert_eq!(
                find(&method, &path),
                Match::Found(info.route, info.path.contains('{').then_some("x"))
            );
            let same = routes().iter().filter(|o| o.method == info.method && o.path == info.path);
            assert_eq!(same.count(), 1, "{} {} listed twice", info.method, info.path);
        }
    }
}
