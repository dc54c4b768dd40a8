//! A server on 127.0.0.1:0 and a client that checks every answer against the OpenAPI document.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use triggers_core::{
    Deliverer, EventStore, FnDeliverer, Ingestor, IngestorConfig, MemoryStore, Outcome,
    RetryPolicy, WorkerConfig,
};
use triggers_http::{Metrics, ServeError, Server, ServerConfig};

/// How to start a test server.
pub struct Options {
    pub ingestor: IngestorConfig,
    pub server: ServerConfig,
}

impl Default for Options {
    fn default() -> Self {
        let ingestor = IngestorConfig {
            retry: RetryPolicy::with_delays(vec![Duration::ZERO; 3]),
            worker: WorkerConfig {
                concurrency: 4,
                poll_interval: Duration::from_millis(20),
                shutdown_grace: Duration::from_secs(1),
                ..WorkerConfig::default()
            },
            ..IngestorConfig::default()
        };
        Self { ingestor, server: ServerConfig::default() }
    }
}

/// A running server. Deliveries go to an in-process deliverer that accepts everything.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// A server over a fresh MemoryStore.
    pub async fn start(opts: Options) -> Self {
        Self::start_on(MemoryStore::new(), opts).await
    }

    /// A server with default options.
    pub async fn default() -> Self {
        Self::start(Options::default()).await
    }

    /// A server over `store`.
    pub async fn start_on<S: EventStore>(store: S, opts: Options) -> Self {
        let deliverer = FnDeliverer::new(|_| async { Outcome::Delivered });
        Self::start_with(store, deliverer, opts).await
    }

    /// A server over `store` delivering with `deliverer`.
    pub async fn start_with<S: EventStore, D: Deliverer>(
        store: S,
        deliverer: D,
        mut opts: Options,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        opts.ingestor.observer = Some(metrics.clone());
        let ingestor = Ingestor::start(store, deliverer, opts.ingestor);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::with_metrics(ingestor, opts.server, metrics);
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self { addr, client: Client::new(addr), stop: Some(stop), task: Some(task) }
    }

    /// Asks for a graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// A new organization's API key.
    pub async fn key(&self, tier: &str) -> String {
        let r = self
            .client
            .send(
                "POST",
                "/api/keys/generate",
                None,
                Some(json!({"organization_name": "acme", "tier": tier})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["api_key"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts a problem+json error with `status` and `code`; returns the body.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), "application/problem+json");
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], status);
        for field in ["type", "title", "detail"] {
            assert!(body[field].is_string(), "{field} missing in {body}");
        }
        body
    }
}

/// A pooled keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct Client {
    base: String,
    /// The path part of `base` (a mount prefix), stripped before checking the OpenAPI document.
    prefix: String,
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_base(format!("http://{addr}"))
    }

    /// A client for an API mounted under a path: `base` is `http://addr/prefix`.
    pub fn with_base(base: String) -> Self {
        let inner = HyperClient::builder(TokioExecutor::new()).build_http();
        let after_scheme = base.split_once("://").map_or(base.as_str(), |(_, rest)| rest);
        let prefix = after_scheme.find('/').map_or("", |i| &after_scheme[i..]).to_owned();
        Self { base, prefix, inner }
    }

    /// Sends `body` as JSON (with `Content-Type: application/json`) and the API key if given.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            b = b.header("x-api-key", key);
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        self.request(b.body(Full::new(body)).unwrap()).await
    }

    /// Sends a request built by the caller (its URI is a path).
    pub async fn request(&self, mut req: Request<Full<Bytes>>) -> Resp {
        let path = req.uri().path().to_owned();
        let path = path.strip_prefix(self.prefix.as_str()).unwrap_or(&path).to_owned();
        let method = req.method().clone();
        if req.uri().host().is_none() {
            let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            *req.uri_mut() = format!("{}{pq}", self.base).parse().unwrap();
        }
        let res = self.inner.request(req).await.expect("request failed");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let resp = Resp { status, headers, body };
        check_documented(&method, &path, &resp);
        resp
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.send("GET", path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.send("POST", path, Some(key), Some(body)).await
    }

    pub async fn post_empty(&self, path: &str, key: &str) -> Resp {
        self.send("POST", path, Some(key), None).await
    }

    /// POSTs JSON; `None` when the connection failed (no panic).
    pub async fn try_post(&self, path: &str, key: &str, body: &Value) -> Option<Resp> {
        let req = Request::post(format!("{}{path}", self.base))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let res = self.inner.request(req).await.ok()?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.ok()?.to_bytes();
        Some(Resp { status, headers, body })
    }

    /// `POST /api/events`; `None` when the connection failed (no panic).
    pub async fn event_quiet(self, key: &str) -> Option<u16> {
        let req = Request::post(format!("{}/api/events", self.base))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"type":"t","payload":1}"#)))
            .unwrap();
        self.inner.request(req).await.ok().map(|r| r.status().as_u16())
    }

    /// `POST /api/events` of a small event.
    pub async fn event(&self, key: &str, event_type: &str, dedup_id: Option<&str>) -> Resp {
        let mut e = json!({"type": event_type, "payload": {"n": 1}});
        if let Some(d) = dedup_id {
            e["dedup_id"] = json!(d);
        }
        self.post("/api/events", key, e).await
    }
}

/// The route pattern `path` is served under, if any.
pub fn pattern_of(method: &Method, path: &str) -> Option<&'static str> {
    let fits = |pattern: &str| {
        let (p, s): (Vec<_>, Vec<_>) = (pattern.split('/').collect(), path.split('/').collect());
        p.len() == s.len()
            && p.iter().zip(&s).all(|(a, b)| a.starts_with('{') && !b.is_empty() || a == b)
    };
    let routes = triggers_http::routes();
    // A path a literal route matches is that route's resource, as in the router: another
    // method there is 405 (undocumented for this check), never the parameter route.
    if routes.iter().any(|r| !r.path.contains('{') && r.path == path) {
        return routes
            .iter()
            .find(|r| r.method == method.as_str() && r.path == path)
            .map(|r| r.path);
    }
    routes.iter().find(|r| r.method == method.as_str() && fits(r.path)).map(|r| r.path)
}

/// Every answer of a served route must be a status the OpenAPI document lists for it.
#[track_caller]
fn check_documented(method: &Method, path: &str, resp: &Resp) {
    static DOC: OnceLock<Value> = OnceLock::new();
    let doc = DOC.get_or_init(triggers_http::openapi_document);
    let Some(pattern) = pattern_of(method, path) else { return };
    let responses = &doc["paths"][pattern][method.as_str().to_ascii_lowercase()]["responses"];
    assert!(
        responses.get(resp.status.to_string()).is_some(),
        "{method} {pattern} answered {} which the OpenAPI document does not list: {}",
        resp.status,
        resp.text()
    );
}
