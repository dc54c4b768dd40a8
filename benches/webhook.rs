//! Webhook signing cost (Standard Webhooks HMAC-SHA256), the target being ≤ 2 µs for a 1 KiB
//! payload; and whole deliveries (sign, POST, read the answer) to a hyper receiver on
//! 127.0.0.1 over pooled connections, one at a time and 64 at once.
//!
//! `cargo bench --bench webhook -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use triggers_core::store::Delivery;
use triggers_core::Deliverer;
use triggers_core::{DeliveryId, EndpointId, EventId, OrganizationId, Secret, WorkerId};
use triggers_http::webhook::{signature_header, webhook_body, Signer};
use triggers_http::{WebhookConfig, WebhookDeliverer};

/// A JSON object of exactly `len` bytes.
fn payload(len: usize) -> String {
    let filler = len - r#"{"data":""}"#.len();
    format!(r#"{{"data":"{}"}}"#, "x".repeat(filler))
}

fn delivery(payload: &str, secrets: Vec<Secret>) -> Delivery {
    Delivery {
        id: DeliveryId::new(),
        attempt: 1,
        lease_owner: WorkerId::new(),
        lease_expires_at: chrono::Utc::now(),
        event_id: EventId::new(),
        organization_id: OrganizationId::new(),
        event_type: "user.created".into(),
        payload: RawValue::from_string(payload.to_owned()).unwrap(),
        created_at: chrono::Utc::now(),
        endpoint_id: EndpointId::new(),
        url: "https://example.invalid/hook".into(),
        secrets,
        endpoint_failing_since: None,
        headers: Vec::new(),
        endpoint_rate_limit: None,
        endpoint_concurrency: None,
    }
}

fn signing(c: &mut Criterion) {
    let secret = Secret::generate();
    let id = EventId::new().to_string();
    let ts = 1_700_000_000;
    let body = payload(1024);
    assert_eq!(body.len(), 1024);

    let mut group = c.benchmark_group("webhook_sign_1KiB");
    group.throughput(Throughput::Bytes(1024));
    let signer = Signer::new(&secret);
    group.bench_function("signer_prepared_key", |b| {
        b.iter(|| signer.sign(black_box(&id), black_box(ts), black_box(body.as_bytes())))
    });
    // What the deliverer does per attempt: decode the whsec_ secret, key HMAC, sign.
    let one = [secret.clone()];
    group.bench_function("header_one_secret", |b| {
        b.iter(|| signature_header(black_box(&one), black_box(&id), ts, body.as_bytes()))
    });
    let two = [secret, Secret::generate()];
    group.bench_function("header_two_secrets_rotation", |b| {
        b.iter(|| signature_header(black_box(&two), black_box(&id), ts, body.as_bytes()))
    });
    group.finish();

    let mut group = c.benchmark_group("webhook_body_1KiB");
    group.throughput(Throughput::Bytes(1024));
    let d = delivery(&body, vec![]);
    group.bench_function("serialise", |b| b.iter(|| webhook_body(black_box(&d))));
    group.finish();
}

/// A receiver on 127.0.0.1 that reads each body and answers 200.
async fn receiver() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn delivering(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let addr = rt.block_on(receiver());
    let deliverer = WebhookDeliverer::new(WebhookConfig {
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        endpoint_concurrency: 64,
        pool_max_idle_per_host: 64,
        ..WebhookConfig::default()
    })
    .unwrap();
    let mut d = delivery(&payload(1024), vec![Secret::generate()]);
    d.url = format!("http://{addr}/hook");

    let mut group = c.benchmark_group("webhook_deliver_loopback_1KiB");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(deliverer.deliver(&d).await.status_code == Some(200)) })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_concurrent", |b| {
        b.to_async(&rt).iter(|| async {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let (deliverer, d) = (deliverer.clone(), d.clone());
                set.spawn(async move { deliverer.deliver(&d).await });
            }
            while let Some(attempt) = set.join_next().await {
                assert_eq!(attempt.unwrap().status_code, Some(200));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, signing, delivering);
criterion_main!(benches);
