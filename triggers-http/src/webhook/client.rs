//! The pooled HTTP(S) client: hyper-util's legacy client over rustls (ring, webpki roots),
//! with the SSRF-checking resolver and the connection budget ([`Budget`]) under the TLS
//! layer, and a deadline over all of it.
//!
//! Why the deadline: the TCP connect and the DNS lookup have their own timeouts, the TLS
//! handshake has none, and when a pooled connection frees up while a new one is still being
//! made, hyper-util finishes the new one in a background task that no attempt's timeout
//! covers. A receiver that accepts TCP and never answers the handshake would then keep a
//! socket and a task for ever, per connection it was asked for. [`Deadline`] ends every
//! connection attempt after `WebhookConfig::connect_timeout`, wherever it runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::budget::{Budget, Budgeted};
use super::ssrf::PolicyResolver;
use super::{WebhookConfig, WebhookError};

/// The client type the deliverer sends with.
pub(crate) type HttpsClient =
    Client<Deadline<HttpsConnector<Budgeted<HttpConnector<PolicyResolver>>>>, Full<Bytes>>;

/// A connector whose connection attempts fail after `limit`, wherever they are polled.
#[derive(Clone)]
pub(crate) struct Deadline<C> {
    inner: C,
    limit: Duration,
}

/// A connection attempt that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("no connection within {0:?} (DNS, TCP and TLS)")]
pub(crate) struct ConnectTimedOut(Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<http::Uri> for Deadline<C>
where
    C: tower_service::Service<http::Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (attempt, limit) = (self.inner.call(uri), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, attempt).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(ConnectTimedOut(limit).into()),
            }
        })
    }
}

/// Builds the client, resolving new connections' hosts with `resolver` and counting its
/// connections in `budget`. Nothing here touches the network.
pub(crate) fn build(
    config: &WebhookConfig,
    resolver: PolicyResolver,
    budget: Arc<Budget>,
) -> Result<HttpsClient, WebhookError> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    // The TLS layer decides between http and https; this layer only makes TCP connections.
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    // A pooled connection whose peer vanished without a FIN is found out and closed.
    http.set_keepalive(Some(Duration::from_secs(30)));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(WebhookError::Tls)?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Budgeted { inner: http, budget });
    let connector = Deadline { inner: https, limit: config.connect_timeout };

    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::webhook::ssrf::AddressPolicy;

    /// A receiver that accepts TCP and never answers the TLS handshake: the connection
    /// attempt ends after the connect timeout (no other timeout is in play here), and the
    /// socket is closed, instead of both being kept for ever.
    #[tokio::test]
    async fn a_handshake_that_never_ends_is_given_up_at_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = WebhookConfig {
            connect_timeout: Duration::from_millis(200),
            ..WebhookConfig::default()
        };
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let resolver = PolicyResolver::without_dns(policy);
        let client = build(&config, resolver, Budget::new(8)).unwrap();
        let request = http::Request::post(format!("https://127.0.0.1:{port}/hook"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let guard = Duration::from_secs(20);
        let sent = tokio::spawn(async move { client.request(request).await });
        let (mut socket, _) =
            tokio::time::timeout(guard, listener.accept()).await.unwrap().unwrap();
        let failed = tokio::time::timeout(guard, sent).await.expect("still connecting").unwrap();
        let error = failed.expect_err("no TLS server answered");
        assert!(format!("{error:?}").contains("ConnectTimedOut"), "{error:?}");
        // The client hung up: the receiver's read ends (end of stream, or a reset) instead
        // of waiting for bytes that never come.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(guard, socket.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the client kept the socket open");
    }
}
