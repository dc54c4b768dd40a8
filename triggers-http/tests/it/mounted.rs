//! The API as a tower Service mounted in an axum app beside the app's own routes, and
//! served by plain hyper: same answers as `Server`, an explicit admin policy, and an OpenAPI
//! document that names the mount path.

use std::convert::Infallible;
use std::sync::Arc;

use axum::routing::get;
use serde_json::json;
use triggers_core::{
    FnDeliverer, Ingestor, IngestorConfig, MemoryStore, NoDeliverer, OrganizationId, Outcome, Tier,
};
use triggers_http::{AdminPolicy, ApiService, Metrics, ServiceConfig};

use crate::support::Client;

/// Serves `router` on 127.0.0.1:0; returns its address.
async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_mounted_in_axum_serves_beside_the_apps_routes() {
    let metrics = Arc::new(Metrics::new());
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let deliverer = FnDeliverer::new(move |d| {
        let _ = tx.send(d.event_id);
        async { Outcome::Delivered }
    });
    let config = IngestorConfig { observer: Some(metrics.clone()), ..IngestorConfig::default() };
    let ingestor = Ingestor::start(MemoryStore::new(), deliverer, config);
    let org = ingestor
        .organization_or_create(OrganizationId::named("my-app"), "my-app", Tier::Enterprise)
        .await
        .unwrap();
    let key = ingestor.rotate_key(&org).await.unwrap();
    ingestor.create_endpoint(&org, "inproc://audit", None).await.unwrap();

    let api = ApiService::new(
        ingestor.clone(),
        ServiceConfig {
            metrics: Some(metrics.clone()),
            ..ServiceConfig::new(AdminPolicy::Closed).base_path("/triggers/")
        },
    );
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .nest_service("/triggers", api);
    let addr = serve(app).await;

    // The app's own route still answers.
    let c = Client::new(addr);
    let hello = c.send("GET", "/hello", None, None).await;
    assert_eq!((hello.status, hello.text().as_str()), (200, "hello from the app"));

    let api = Client::with_base(format!("http://{addr}/triggers"));
    let key = key.expose();
    let r = api.event(key, "user.created", Some("u-1")).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit"), "6000");
    let id: triggers_core::EventId = r.json()["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(delivered.recv().await, Some(id), "delivered by the embedded Ingestor");
    let dup = api.event(key, "user.created", Some("u-1")).await;
    assert_eq!((dup.status, dup.json()["id"].as_str()), (200, Some(id.to_string().as_str())));

    // Errors are the API's own problem documents, also for bad input under the mount.
    api.send("POST", "/api/events", Some(key), Some(json!([1])))
        .await
        .problem(400, "not_an_object");
    api.send("GET", "/api/nope", Some(key), None).await.problem(404, "route_not_found");
    api.send("POST", "/api/events", Some("trg_nope"), Some(json!({"type": "a", "payload": 1})))
        .await
        .problem(401, "invalid_api_key");
    // The admin policy is explicit: Closed refuses key generation whatever the address.
    let body = json!({"organization_name": "intruder", "tier": "enterprise"});
    api.send("POST", "/api/keys/generate", None, Some(body))
        .await
        .problem(403, "key_generation_disabled");
    let stats = api.get("/api/queue/stats", key).await.json();
    assert_eq!(stats["pending"].as_u64().unwrap() + stats["delivered"].as_u64().unwrap(), 1);

    // The OpenAPI document advertises the mount path; /metrics counts what the API served.
    let doc = api.send("GET", "/openapi.json", None, None).await.json();
    assert_eq!(doc["servers"], json!([{ "url": "/triggers" }]));
    assert!(doc["paths"]["/api/events"].is_object());
    // A mounted service cannot see the listener, so without a metrics token its /metrics is
    // refused (the app exposes the same metrics through its own registry instead).
    api.send("GET", "/metrics", None, None).await.problem(403, "metrics_forbidden");
    let mut registry = triggers_http::prometheus_client::registry::Registry::default();
    metrics.register_into(&mut registry);
    let mut text = String::new();
    triggers_http::prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("triggers_http_responses_total{status=\"403\"} 2"), "{text}");
    ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_policies_are_explicit() {
    let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
    let token =
        ApiService::new(ingestor.clone(), ServiceConfig::new(AdminPolicy::Token("s3cret".into())));
    let open = ApiService::new(ingestor.clone(), ServiceConfig::new(AdminPolicy::Open));
    let app = axum::Router::new().nest_service("/t", token).nest_service("/o", open);
    let addr = serve(app).await;
    let body = json!({"organization_name": "acme"});

    let t = Client::with_base(format!("http://{addr}/t"));
    t.send("POST", "/api/keys/generate", None, Some(body.clone()))
        .await
        .problem(401, "invalid_admin_token");
    let req = http::Request::post(format!("http://{addr}/t/api/keys/generate"))
        .header("authorization", "Bearer s3cret")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    assert_eq!(t.request(req).await.status, 201);
    let doc = t.send("GET", "/openapi.json", None, None).await.json();
    assert_eq!(doc["servers"], json!([{ "url": "/" }]), "no base path given");

    let o = Client::with_base(format!("http://{addr}/o"));
    let r = o.send("POST", "/api/keys/generate", None, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_plain_hyper_too() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;

    let ingestor = Ingestor::start(MemoryStore::new(), NoDeliverer, IngestorConfig::default());
    let api = ApiService::new(ingestor.clone(), ServiceConfig::new(AdminPolicy::Open));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let api = api.clone();
            let svc = hyper::service::service_fn(move |req| {
                let answer = api.handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let c = Client::new(addr);
    let r = c
        .send("POST", "/api/keys/generate", None, Some(json!({"organization_name": "acme"})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["api_key"].as_str().unwrap().to_owned();
    assert_eq!(c.event(&key, "a", None).await.status, 202);
    ingestor.shutdown().await;
}
