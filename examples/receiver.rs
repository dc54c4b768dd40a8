//! A webhook receiver for trying `triggers` out locally: listens on 127.0.0.1, answers every
//! POST with 200, and prints one line per delivery — its `webhook-id`, whether the Standard
//! Webhooks signature verifies, and the body.
//!
//! ```text
//! WEBHOOK_SECRET=whsec_… cargo run --example receiver            # 127.0.0.1:9000
//! cargo run --example receiver -- 127.0.0.1:9100                 # another port
//! ```
//!
//! `WEBHOOK_SECRET` is the secret `POST /api/webhook/config` returned; without it signatures
//! are shown as unchecked. The server only delivers to loopback addresses when started with
//! `TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8`.

#[path = "support/standard_webhooks.rs"]
mod standard_webhooks;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".into());
    let key = match std::env::var("WEBHOOK_SECRET") {
        Ok(secret) => Some(standard_webhooks::secret_key(&secret)?),
        Err(_) => None,
    };
    let key = Arc::new(key);
    let listener = TcpListener::bind(&listen).await?;
    println!("receiver: listening on http://{}/ (Ctrl-C stops)", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let key = key.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let key = key.clone();
                async move { Ok::<_, Infallible>(receive(req, key.as_deref()).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn receive(req: Request<Incoming>, key: Option<&[u8]>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    let (id, ts, signatures) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let signature = match key {
        Some(key) if standard_webhooks::verify(key, &id, &ts, &body, &signatures) => "valid",
        Some(_) => "INVALID",
        None => "unchecked (set WEBHOOK_SECRET)",
    };
    println!(
        "POST {path} webhook-id={id} signature={signature} body={}",
        String::from_utf8_lossy(&body)
    );
    Response::new(Full::new(Bytes::new()))
}
