//! The [`WebhookDeliverer`]: one signed POST per attempt.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::capture_connection;
use triggers_core::store::Delivery;
use triggers_core::{Attempt, Deliverer, Outcome};

use super::budget;
use super::client::{self, HttpsClient};
use super::dns::Dns;
use super::limit::{Busy, EndpointLimits, Own};
use super::outcome::{self, short};
use super::sign::{signature_header, webhook_body};
use super::ssrf::{AddressPolicy, PolicyResolver, ResolveError};
use super::{WebhookConfig, WebhookError};

/// Delivers events to webhook endpoints over HTTP(S), signed with Standard Webhooks.
///
/// Cheap to clone (one pooled client inside). See the [module docs](super) for what each
/// answer means.
#[derive(Debug, Clone)]
pub struct WebhookDeliverer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: WebhookConfig,
    client: HttpsClient,
    resolver: PolicyResolver,
    limits: EndpointLimits,
    user_agent: HeaderValue,
}

/// A URL the deliverer can send to.
#[derive(Debug)]
pub(super) struct Target {
    uri: Uri,
    host: String,
    port: u16,
}

impl Target {
    /// The host as written in the URL (an IPv6 literal keeps its brackets).
    pub(super) fn host(&self) -> &str {
        &self.host
    }
}

impl WebhookDeliverer {
    /// A deliverer with `config`. Makes no connection yet.
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        let policy = AddressPolicy::new(config.allow.clone()).with_deny(config.deny.clone());
        let resolver =
            PolicyResolver::new(policy, Dns::new(&config.dns_servers, config.connect_timeout));
        let budget = super::budget::Budget::new(config.max_connections);
        let client = client::build(&config, resolver.clone(), budget)?;
        let limits = EndpointLimits::new(
            config.endpoint_concurrency,
            config.endpoint_rate,
            config.endpoint_wait,
        );
        let user_agent =
            HeaderValue::from_str(&config.user_agent).map_err(|_| WebhookError::UserAgent)?;
        Ok(Self { inner: Arc::new(Inner { config, client, resolver, limits, user_agent }) })
    }

    /// The configuration in use.
    pub fn config(&self) -> &WebhookConfig {
        &self.inner.config
    }
}

#[async_trait]
impl Deliverer for WebhookDeliverer {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        let attempt = self.inner.deliver(delivery).await;
        tracing::debug!(
            event = %delivery.event_id,
            endpoint = %delivery.endpoint_id,
            attempt = delivery.attempt,
            status = attempt.status_code,
            outcome = ?attempt.outcome,
            "webhook attempt"
        );
        attempt
    }
}

impl Inner {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        let target = match parse_target(&delivery.url) {
            Ok(target) => target,
            Err(reason) => return Outcome::Permanent(reason).into(),
        };
        if delivery.secrets.is_empty() {
            return Outcome::Permanent("endpoint has no signing secret".into()).into();
        }
        let own =
            Own { concurrency: delivery.endpoint_concurrency, rate: delivery.endpoint_rate_limit };
        let _pass = match self.limits.acquire(delivery.endpoint_id, own).await {
            Ok(pass) => pass,
            Err(Busy::Concurrency) => {
                return Outcome::Deferred {
                    after: self.config.endpoint_defer,
                    reason: "endpoint at its concurrency cap".into(),
                }
                .into()
            }
            Err(Busy::Rate(wait)) => {
                return Outcome::Deferred {
                    after: wait,
                    reason: "endpoint at its delivery rate".into(),
                }
                .into()
            }
        };
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.attempt(delivery, target)).await {
            Ok(attempt) => attempt,
            Err(_) => {
                Outcome::Retry { after: None, reason: format!("timed out after {timeout:?}") }
                    .into()
            }
        }
    }

    /// Checks the target's addresses, sends, and reads (a bounded part of) the answer.
    async fn attempt(&self, delivery: &Delivery, target: Target) -> Attempt {
        // Never sign with a key that is not there: a sealed secret (the Ingestor opens them
        // before they get here) or one that does not decode would sign with an empty key,
        // which anyone can forge. Retried like the Ingestor's own unsealing failures.
        if delivery.secrets.iter().any(|s| s.is_sealed() || s.key_bytes().is_empty()) {
            let reason = "signing secret unavailable (sealed or not decodable)".to_owned();
            return Outcome::Retry { after: None, reason }.into();
        }
        // Answered from the cache while the name's answer is fresh; the connector asks the
        // same resolver for a new connection, and checks again what it connects to.
        match self.resolver.resolve(&target.host, target.port).await {
            Ok(_) => {}
            Err(ResolveError::Refused(refused)) => {
                return Outcome::Permanent(short(refused.to_string())).into()
            }
            Err(err) => {
                return Outcome::Retry { after: None, reason: short(err.to_string()) }.into()
            }
        }

        let body = webhook_body(delivery);
        let msg_id = delivery.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature_header(&delivery.secrets, &msg_id, timestamp, &body);
        let mut request = Request::builder().method(Method::POST).uri(target.uri);
        // The endpoint's own headers first (validated when set; any that do not parse are
        // skipped), then ours, which they can never replace.
        for (name, value) in &delivery.headers {
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                (Ok(name), Ok(value)) => request = request.header(name, value),
                _ => {
                    tracing::warn!(endpoint_id = %delivery.endpoint_id, "skipping an invalid custom header")
                }
            }
        }
        let request = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, self.user_agent.clone())
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)));
        let mut request = match request {
            Ok(request) => request,
            Err(err) => return Outcome::Permanent(short(format!("invalid request: {err}"))).into(),
        };

        // The connection is marked in use from the moment the pool hands it out until the
        // answer is read: the connection budget never closes it meanwhile.
        let mut captured = capture_connection(&mut request);
        let (sent, _in_use) = budget::send(self.client.request(request), &mut captured).await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return outcome::from_client_error(&err, self.config.endpoint_defer).into(),
        };
        let status = response.status();
        let outcome = outcome::from_status(status, response.headers(), chrono::Utc::now());
        drain(response.into_body(), self.config.max_response_body).await;
        Attempt { outcome, status_code: Some(status.as_u16()) }
    }
}

/// Reads up to `limit` bytes of the body so the connection can go back to the pool; a longer
/// body (or a broken one) is dropped, closing its connection. The content is not used.
async fn drain(mut body: Incoming, limit: usize) {
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len());
                    if read > limit {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// Parses an endpoint URL: absolute, http or https, with a host.
pub(super) fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|_| "invalid URL".to_owned())?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        Some(other) => {
            return Err(short(format!("unsupported URL scheme {other:?}: use http or https")))
        }
        None => return Err("invalid URL: not absolute".to_owned()),
    };
    let host = match uri.host() {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => return Err("invalid URL: no host".to_owned()),
    };
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(Target { uri, host, port })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_with_a_host_are_targets() {
        let t = parse_target("https://example.com/hook?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("example.com", 443));
        let t = parse_target("http://[::1]:8080/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 8080));
        assert_eq!(parse_target("http://10.0.0.1").unwrap().port, 80);
        assert!(parse_target("ftp://example.com/").unwrap_err().contains("scheme"));
        assert!(parse_target("inproc://billing").unwrap_err().contains("scheme"));
        assert!(parse_target("/relative").is_err());
        assert!(parse_target("not a url").is_err());
        assert!(parse_target("").is_err());
    }
}
