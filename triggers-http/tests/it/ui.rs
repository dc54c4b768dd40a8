//! The browser pages over real sockets: served from the binary with their security headers,
//! every file they reference is served, unknown files are 404, and `ui: false` hides them.
//! (What the pages do in a browser is tested by tests/browser, which .ci/run runs.)

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use triggers_http::ServerConfig;

use crate::support::{Options, Resp, TestServer};

/// The paths of the `src`/`href`/`import` references in a text file (same-origin ones).
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["src=\"", "href=\"", "from \"./"] {
        for part in text.split(marker).skip(1) {
            let target = &part[..part.find('"').unwrap()];
            out.push(if marker == "from \"./" { format!("./{target}") } else { target.to_owned() });
        }
    }
    out
}

#[track_caller]
fn assert_secure(r: &Resp, page: &str) {
    let csp = r.header("content-security-policy");
    let script_src = csp.split(';').map(str::trim).find(|d| d.starts_with("script-src")).unwrap();
    assert_eq!(script_src, "script-src 'self'", "{page}: {csp}");
    assert!(csp.contains("default-src 'none'"), "{page}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
    assert!(csp.contains("connect-src 'self'"), "{page}: {csp}");
    assert!(!csp.contains("unsafe-eval"), "{page}: {csp}");
    assert_eq!(r.header("x-content-type-options"), "nosniff", "{page}");
    assert_eq!(r.header("referrer-policy"), "no-referrer", "{page}");
    assert_eq!(r.header("x-frame-options"), "DENY", "{page}");
}

#[tokio::test]
async fn pages_and_their_files_are_served_with_a_strict_policy() {
    let server = TestServer::default().await;
    let c = &server.client;
    for (page, dir) in [("/ui", "/ui/"), ("/docs", "/docs/")] {
        let r = c.send("GET", page, None, None).await;
        assert_eq!(r.status, 200, "{page}");
        assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
        assert_secure(&r, page);
        let html = r.text();
        for tag in html.split("<script").skip(1) {
            let tag = &tag[..tag.find('>').unwrap()];
            assert!(tag.contains("src=\"/"), "{page}: inline script <script{tag}>");
        }
        let handler = html.split_whitespace().any(|w| w.starts_with("on") && w.contains('='));
        assert!(!handler, "{page}: inline event handler");
        let mut queue: Vec<String> = references(&html);
        let mut seen = Vec::new();
        while let Some(target) = queue.pop() {
            let path = match target.strip_prefix("./") {
                Some(rel) => format!("{dir}{rel}"),
                None => target.clone(),
            };
            if !path.starts_with(dir) || seen.contains(&path) {
                continue; // links to the other page or to /openapi.json
            }
            let f = c.send("GET", &path, None, None).await;
            assert_eq!(f.status, 200, "{page} references {path}, which is not served");
            assert_secure(&f, &path);
            let kind = f.header("content-type").to_owned();
            assert!(
                (path.ends_with(".js") && kind.starts_with("text/javascript"))
                    || (path.ends_with(".css") && kind.starts_with("text/css")),
                "{path}: {kind}"
            );
            if path.ends_with(".js") {
                if !path.contains("swagger") {
                    for sink in
                        ["innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "document.write"]
                    {
                        assert!(!f.text().contains(sink), "{path} uses {sink}");
                    }
                }
                queue.extend(references(&f.text()));
            }
            seen.push(path);
        }
        assert!(seen.len() >= 2, "{page}: {seen:?}");
    }
    // The docs' style attributes are the only relaxation.
    let docs = c.send("GET", "/docs", None, None).await;
    assert!(docs.header("content-security-policy").contains("style-src 'self' 'unsafe-inline'"));
    let ui = c.send("GET", "/ui", None, None).await;
    assert!(ui.header("content-security-policy").contains("style-src 'self';"));

    // Revalidation: the same ETag gets 304 without a body; a stale one the file again.
    let bundle = c.send("GET", "/docs/swagger-ui-bundle.js", None, None).await;
    let etag = bundle.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let revalidate = |tag: &str| {
        Request::get("/docs/swagger-ui-bundle.js")
            .header("if-none-match", tag)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = c.request(revalidate(&etag)).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);
    assert_secure(&r, "304");
    let r = c.request(revalidate("\"stale\"")).await;
    assert_eq!((r.status, r.body.len()), (200, bundle.body.len()));
    assert_ne!(c.send("GET", "/ui/app.js", None, None).await.header("etag"), etag);

    c.send("GET", "/ui/nope.js", None, None).await.problem(404, "not_found");
    c.send("GET", "/ui/..%2Fsrc%2Flib.rs", None, None).await.problem(404, "not_found");
    c.send("GET", "/ui/", None, None).await.problem(404, "route_not_found");
    c.send("GET", "/ui/a/app.js", None, None).await.problem(404, "route_not_found");
    c.send("POST", "/ui", None, None).await.problem(405, "method_not_allowed");
    c.send("GET", "/docs/app.js", None, None).await.problem(404, "not_found");
}

#[tokio::test]
async fn ui_off_hides_the_pages() {
    let server = TestServer::start(Options {
        server: ServerConfig { ui: false, ..ServerConfig::default() },
        ..Options::default()
    })
    .await;
    let c = &server.client;
    for path in ["/ui", "/ui/app.js", "/docs", "/docs/swagger-ui-bundle.js"] {
        c.send("GET", path, None, None).await.problem(404, "route_not_found");
    }
    // The API and its document are still there.
    assert_eq!(c.send("GET", "/openapi.json", None, None).await.status, 200);
}
