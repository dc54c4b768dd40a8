//! The embedded files of the pages, by name (the last path segment of their URL).

/// One embedded file.
pub(super) struct Asset {
    pub(super) name: &'static str,
    pub(super) content_type: &'static str,
    pub(super) body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($dir:literal, $name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $dir, "/", $name)),
        }
    };
}

/// `/ui` (`index.html`) and `/ui/{file}`.
pub(super) static DASHBOARD: &[Asset] = &[
    asset!("ui", "index.html", HTML),
    asset!("ui", "style.css", CSS),
    asset!("ui", "app.js", JS),
    asset!("ui", "api.js", JS),
    asset!("ui", "dom.js", JS),
    asset!("ui", "overview.js", JS),
    asset!("ui", "events.js", JS),
    asset!("ui", "endpoints.js", JS),
];

/// `/docs` (`index.html`) and `/docs/{file}`: the vendored Swagger UI and its start script.
pub(super) static DOCS: &[Asset] = &[
    asset!("docs", "index.html", HTML),
    asset!("docs", "docs.js", JS),
    asset!("docs", "docs.css", CSS),
    Asset {
        name: "swagger-ui-bundle.js",
        content_type: JS,
        body: include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/docs/vendor/swagger-ui-bundle.js"
        )),
    },
    Asset {
        name: "swagger-ui.css",
        content_type: CSS,
        body: include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/docs/vendor/swagger-ui.css"
        )),
    },
];
