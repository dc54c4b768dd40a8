//! The pooled HTTP(S) client: hyper-util's legacy client over rustls (ring, webpki roots),
//! with the SSRF-checking resolver under the TLS layer.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ssrf::{AddressPolicy, PolicyResolver};
use super::{WebhookConfig, WebhookError};

/// The client type the deliverer sends with.
pub(crate) type HttpsClient = Client<HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// Builds the client. Nothing here touches the network.
pub(crate) fn build(
    config: &WebhookConfig,
    policy: AddressPolicy,
) -> Result<HttpsClient, WebhookError> {
    let mut http = HttpConnector::new_with_resolver(PolicyResolver::new(policy));
    // The TLS layer decides between http and https; this layer only makes TCP connections.
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(WebhookError::Tls)?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
