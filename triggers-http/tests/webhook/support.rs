//! Shared test support: a recording HTTP receiver on 127.0.0.1, an independent Standard
//! Webhooks verifier, and delivery builders.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use triggers_core::store::Delivery;
use triggers_core::{
    Attempt, DeliveryId, EndpointId, EventId, OrganizationId, Outcome, Secret, WorkerId,
};
use triggers_http::{WebhookConfig, WebhookDeliverer};

// ---------------------------------------------------------------------------------------------
// A test receiver: a hyper server on 127.0.0.1:0 that records every request.

#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    pub(crate) arrived: Arc<Notify>,
}

impl Receiver {
    /// Starts a receiver whose answer to each request comes from `reply`.
    pub(crate) async fn start<F, Fut>(reply: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Self::start_on("127.0.0.1", reply).await
    }

    /// [`start`](Self::start) on the loopback address `ip` (any of 127.0.0.0/8 on Linux).
    pub(crate) async fn start_on<F, Fut>(ip: &str, reply: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let reply = Arc::new(reply);
        let (seen2, arrived2) = (seen.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (seen, arrived, reply) = (seen2.clone(), arrived2.clone(), reply.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, arrived, reply) = (seen.clone(), arrived.clone(), reply.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push(Seen {
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                        });
                        arrived.notify_waiters();
                        Ok::<_, Infallible>(reply().await)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, arrived }
    }

    /// A receiver that always answers `status`.
    pub(crate) async fn answering(status: u16) -> Self {
        Self::start(move || async move { status_response(status) }).await
    }

    /// A receiver that answers 200 to each request only once the returned gate gives it a
    /// permit (`add_permits`): requests wait at the receiver until the test lets them through.
    pub(crate) async fn gated() -> (Self, Arc<tokio::sync::Semaphore>) {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = gate.clone();
        let receiver = Self::start(move || {
            let gate = held.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                status_response(200)
            }
        })
        .await;
        (receiver, gate)
    }

    /// [`answering`](Self::answering) on the loopback address `ip`.
    pub(crate) async fn answering_on(ip: &str, status: u16) -> Self {
        Self::start_on(ip, move || async move { status_response(status) }).await
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived.
    pub(crate) async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.arrived.notified();
            if self.seen.lock().unwrap().len() >= n {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) fn status_response(status: u16) -> Response<Full<Bytes>> {
    Response::builder().status(status).body(Full::new(Bytes::new())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// An independent Standard Webhooks verifier.

/// Whether `signature` (`v1,<base64>`) is the HMAC-SHA256 of `"{id}.{ts}.{body}"` under the
/// base64-decoded `whsec_` secret.
pub(crate) fn signature_valid(
    secret: &str,
    id: &str,
    ts: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let Some(("v1", b64)) = signature.split_once(',') else { return false };
    let Ok(expected) = STANDARD.decode(b64) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Verifies a request the way a receiver would: any listed signature valid, timestamp within
/// five minutes of now.
pub(crate) fn verify(secret: &str, seen: &Seen) -> bool {
    let header = |name: &str| seen.headers.get(name).unwrap().to_str().unwrap().to_owned();
    let (id, ts, sigs) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let age = chrono::Utc::now().timestamp() - ts.parse::<i64>().unwrap();
    age.abs() <= 300 && sigs.split(' ').any(|s| signature_valid(secret, &id, &ts, &seen.body, s))
}

// ---------------------------------------------------------------------------------------------
// Helpers.

pub(crate) const PAYLOAD: &str = r#"{ "user" : {"id": 7, "name":"Ada"},  "n": 1.50 }"#;

pub(crate) fn delivery(url: &str, secrets: Vec<Secret>) -> Delivery {
    Delivery {
        id: DeliveryId::new(),
        attempt: 1,
        lease_owner: WorkerId::new(),
        lease_expires_at: chrono::Utc::now(),
        event_id: EventId::new(),
        organization_id: OrganizationId::new(),
        event_type: "user.created".into(),
        payload: RawValue::from_string(PAYLOAD.to_owned()).unwrap(),
        created_at: chrono::DateTime::parse_from_rfc3339("2024-05-06T07:08:09.123456Z")
            .unwrap()
            .to_utc(),
        endpoint_id: EndpointId::new(),
        url: url.to_owned(),
        secrets,
        endpoint_failing_since: None,
        headers: Vec::new(),
        endpoint_rate_limit: None,
        endpoint_concurrency: None,
    }
}

pub(crate) fn local_config() -> WebhookConfig {
    WebhookConfig { allow: vec!["127.0.0.0/8".parse().unwrap()], ..WebhookConfig::default() }
}

pub(crate) fn deliverer(config: WebhookConfig) -> WebhookDeliverer {
    WebhookDeliverer::new(config).unwrap()
}

pub(crate) fn retry_reason(attempt: &Attempt) -> &str {
    match &attempt.outcome {
        Outcome::Retry { reason, .. } => reason,
        other => panic!("expected Retry, got {other:?}"),
    }
}

pub(crate) fn permanent_reason(attempt: &Attempt) -> &str {
    match &attempt.outcome {
        Outcome::Permanent(reason) => reason,
        other => panic!("expected Permanent, got {other:?}"),
    }
}
