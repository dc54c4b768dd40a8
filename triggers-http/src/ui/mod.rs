//! The browser pages: the dashboard at `GET /ui` and the interactive API docs at `GET /docs`.
//!
//! Every file is embedded in the binary (`include_bytes!`), so the pages work offline and no
//! request leaves their origin. The dashboard is plain HTML, CSS and JavaScript modules
//! without a build step (`assets/ui/`); the docs render `/openapi.json` with a vendored
//! Swagger UI (`assets/docs/vendor/`, refreshed by `assets/docs/vendor/refresh.sh`; cargo
//! never runs npm).
//!
//! Every page and asset carries a strict Content-Security-Policy (scripts and styles only from
//! the server itself: no inline script, no `eval`), `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer` and `frame-ancestors 'none'`. Only `/docs` allows inline
//! `style` attributes, which Swagger UI sets while rendering; its scripts stay as strict as
//! the dashboard's. The dashboard also requires Trusted Types
//! (`require-trusted-types-for 'script'`): it writes text and properties only, and the
//! browser refuses any HTML sink (`innerHTML` and the like) a later change might add.
//!
//! `ServerConfig::ui = false` (`TRIGGERS_UI=off`) answers every page route with 404
//! `route_not_found`, as if it did not exist.

mod assets;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, ETAG, IF_NONE_MATCH,
};
use http::{Response, StatusCode};

use crate::error::ApiError;
use crate::respond::{empty, with_body, Body};
use assets::Asset;

/// Which page a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    /// The dashboard, `/ui`.
    Dashboard,
    /// The API docs, `/docs`.
    Docs,
}

/// The dashboard's policy: nothing inline, nothing from elsewhere, API calls to itself only.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'";

/// The docs' policy: as strict for scripts; Swagger UI sets `style` attributes and inlines
/// SVG icons as `data:` images.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Serves `file` of `page` (`None`: the page itself). Unknown files are 404 `not_found`.
/// Each file has an `ETag` (a digest of its bytes); a matching `If-None-Match` gets 304
/// without a body, so a browser revalidates the 1.7 MB docs bundle instead of fetching it.
pub(crate) fn serve(
    enabled: bool,
    page: Page,
    file: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    if !enabled {
        return Err(ApiError::RouteNotFound);
    }
    let list = match page {
        Page::Dashboard => assets::DASHBOARD,
        Page::Docs => assets::DOCS,
    };
    let name = file.unwrap_or("index.html");
    let asset: &Asset = list.iter().find(|a| a.name == name).ok_or(ApiError::NotFound("file"))?;
    let etag = asset.etag();
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut res = if fresh {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        with_body(StatusCode::OK, asset.content_type, Bytes::from_static(asset.body))
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        res.headers_mut().insert(ETAG, value);
    }
    let csp = match page {
        Page::Dashboard => DASHBOARD_CSP,
        Page::Docs => DOCS_CSP,
    };
    let headers = res.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    // For browsers that predate frame-ancestors.
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    // Revalidate each time: a new server version serves new files under the same names.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}
