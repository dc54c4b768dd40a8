//! Webhook signing cost (Standard Webhooks HMAC-SHA256), the target being ≤ 2 µs for a 1 KiB
//! payload.
//!
//! `cargo bench --bench webhook -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use triggers_core::store::Delivery;
use triggers_core::{DeliveryId, EndpointId, EventId, OrganizationId, Secret, WorkerId};
use triggers_http::webhook::{signature_header, webhook_body, Signer};

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

criterion_group!(benches, signing);
criterion_main!(benches);
