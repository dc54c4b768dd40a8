//! The embedded files of the pages, by name (the last path segment of their URL).

use std::collections::HashMap;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// One embedded file.
pub(super) struct Asset {
    pub(super) name: &'static str,
    pub(super) content_type: &'static str,
    pub(super) body: &'static [u8],
}

impl Asset {
    /// A strong `ETag`: the first 16 bytes of the SHA-256 of the body, computed once for all
    /// files (keyed by the address of the embedded bytes; equal bytes have equal tags anyway).
    pub(super) fn etag(&self) -> &'static str {
        static TAGS: OnceLock<HashMap<usize, String>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            DASHBOARD
                .iter()
                .chain(DOCS)
                .map(|a| (a.body.as_ptr() as usize, digest(a.body)))
                .collect()
        });
        tags.get(&(self.body.as_ptr() as usize)).map_or("\"-\"", String::as_str)
    }
}

fn digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
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
