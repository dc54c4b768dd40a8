//! The webhook deliverer against real HTTP receivers on 127.0.0.1, directly and end to end
//! through the Ingestor's workers (`e2e`).
//!
//! Signatures are checked by an independent verifier written here from the Standard Webhooks
//! specification (HMAC-SHA256 over `"{id}.{timestamp}.{body}"`), not by our signer. No test
//! contacts anything but 127.0.0.1; literal private addresses are used only to check that
//! they are refused before any connection is made.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "webhook/dns.rs"]
mod dns;
#[path = "webhook/e2e.rs"]
mod e2e;
#[path = "webhook/lifecycle.rs"]
mod lifecycle;
#[path = "webhook/support.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::net::TcpListener;
use triggers_core::{Attempt, Deliverer, EndpointId, Outcome, Secret};
use triggers_http::{WebhookConfig, WebhookDeliverer};

use support::*;

// ---------------------------------------------------------------------------------------------
// Signing and shape.

#[tokio::test]
async fn a_delivery_is_signed_verifiably_with_the_documented_shape() {
    let receiver = Receiver::answering(200).await;
    let secret = Secret::generate();
    let d = delivery(&receiver.url(), vec![secret.clone()]);

    let attempt = deliverer(local_config()).deliver(&d).await;
    assert_eq!(attempt, Attempt { outcome: Outcome::Delivered, status_code: Some(200) });

    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/hook");
    assert!(verify(secret.expose(), req), "signature must verify");
    assert!(!verify(Secret::generate().expose(), req), "another secret must not verify");
    let header = |name: &str| req.headers.get(name).unwrap().to_str().unwrap();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("webhook-id"), d.event_id.to_string());
    assert!(header("user-agent").starts_with("triggers-webhooks/"));
    assert_eq!(header("webhook-signature").split(' ').count(), 1);
    assert!(req.headers.get("location").is_none());

    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(body["id"], d.event_id.to_string());
    assert_eq!(body["type"], "user.created");
    assert_eq!(body["created_at"], "2024-05-06T07:08:09.123456Z");
    assert_eq!(body["payload"], serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap());
    let text = std::str::from_utf8(&req.body).unwrap();
    assert!(text.contains(&format!(r#""payload":{PAYLOAD}"#)), "payload embedded verbatim");
}

#[tokio::test]
async fn during_rotation_each_secret_has_its_own_valid_signature() {
    let receiver = Receiver::answering(204).await;
    let (current, previous) = (Secret::generate(), Secret::generate());
    let d = delivery(&receiver.url(), vec![current.clone(), previous.clone()]);

    let attempt = deliverer(local_config()).deliver(&d).await;
    assert_eq!(attempt.outcome, Outcome::Delivered);

    let req = &receiver.seen()[0];
    let get = |name: &str| req.headers.get(name).unwrap().to_str().unwrap().to_owned();
    let (id, ts, header) = (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"));
    let sigs: Vec<&str> = header.split(' ').collect();
    assert_eq!(sigs.len(), 2, "{header}");
    assert!(signature_valid(current.expose(), &id, &ts, &req.body, sigs[0]), "current first");
    assert!(signature_valid(previous.expose(), &id, &ts, &req.body, sigs[1]));
    assert!(!signature_valid(previous.expose(), &id, &ts, &req.body, sigs[0]));
    // A receiver that knows only one of the two secrets accepts the request.
    assert!(verify(current.expose(), req));
    assert!(verify(previous.expose(), req));
}

/// A secret that cannot sign (sealed, which the Ingestor opens before it gets here) is
/// never replaced by an empty key, which anyone could forge: nothing is sent, and the attempt
/// is retried.
#[tokio::test]
async fn a_secret_that_cannot_sign_sends_nothing() {
    let receiver = Receiver::answering(200).await;
    let sealed = Secret::parse("tsec1:k1:c2VhbGVk").unwrap();
    let d = delivery(&receiver.url(), vec![Secret::generate(), sealed]);
    let attempt = deliverer(local_config()).deliver(&d).await;
    assert!(
        matches!(&attempt.outcome, Outcome::Retry { reason, .. } if reason.contains("signing secret")),
        "{attempt:?}"
    );
    assert_eq!(attempt.status_code, None);
    assert!(receiver.seen().is_empty(), "a request was sent");
}

// ---------------------------------------------------------------------------------------------
// What answers mean.

#[tokio::test]
async fn statuses_become_outcomes() {
    let d = deliverer(local_config());
    let secret = vec![Secret::generate()];

    let r500 = Receiver::answering(500).await;
    let a = d.deliver(&delivery(&r500.url(), secret.clone())).await;
    assert_eq!(a.status_code, Some(500));
    assert!(matches!(a.outcome, Outcome::Retry { after: None, .. }), "{a:?}");

    let r503 = Receiver::start(|| async {
        Response::builder().status(503).header("retry-after", "7").body(Full::default()).unwrap()
    })
    .await;
    let a = d.deliver(&delivery(&r503.url(), secret.clone())).await;
    assert_eq!(a.status_code, Some(503));
    assert!(
        matches!(a.outcome, Outcome::Retry { after: Some(after), .. } if after == Duration::from_secs(7)),
        "{a:?}"
    );

    let r410 = Receiver::answering(410).await;
    let a = d.deliver(&delivery(&r410.url(), secret.clone())).await;
    assert_eq!(a.status_code, Some(410));
    assert!(matches!(a.outcome, Outcome::Gone(_)), "{a:?}");

    let r201 = Receiver::answering(201).await;
    let a = d.deliver(&delivery(&r201.url(), secret)).await;
    assert_eq!(a, Attempt { outcome: Outcome::Delivered, status_code: Some(201) });
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Receiver::answering(200).await;
    let location = target.url();
    let redirecting = Receiver::start(move || {
        let location = location.clone();
        async move {
            Response::builder()
                .status(302)
                .header("location", location)
                .body(Full::default())
                .unwrap()
        }
    })
    .await;

    let a = deliverer(local_config())
        .deliver(&delivery(&redirecting.url(), vec![Secret::generate()]))
        .await;
    assert_eq!(a.status_code, Some(302));
    assert!(retry_reason(&a).contains("redirect"), "{a:?}");
    assert_eq!(redirecting.seen().len(), 1);
    assert!(target.seen().is_empty(), "the Location target must not be requested");
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let slow = Receiver::start(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        status_response(200)
    })
    .await;
    let config = WebhookConfig { timeout: Duration::from_millis(300), ..local_config() };

    let a = deliverer(config).deliver(&delivery(&slow.url(), vec![Secret::generate()])).await;
    assert_eq!(a.status_code, None);
    assert!(retry_reason(&a).contains("timed out"), "{a:?}");
    assert_eq!(slow.seen().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let a = deliverer(local_config())
        .deliver(&delivery(&format!("http://{addr}/"), vec![Secret::generate()]))
        .await;
    assert_eq!(a.status_code, None);
    assert!(retry_reason(&a).contains("refused"), "{a:?}");
}

#[tokio::test]
async fn bad_urls_fail_permanently() {
    let d = deliverer(local_config());
    for url in ["ftp://127.0.0.1/", "not a url", "/relative/only"] {
        let a = d.deliver(&delivery(url, vec![Secret::generate()])).await;
        assert!(!permanent_reason(&a).is_empty(), "{url}");
    }
    let receiver = Receiver::answering(200).await;
    let a = d.deliver(&delivery(&receiver.url(), vec![])).await;
    assert!(permanent_reason(&a).contains("secret"));
    assert!(receiver.seen().is_empty());
}

#[tokio::test]
async fn a_long_response_body_is_not_a_problem() {
    let chatty = Receiver::start(|| async {
        Response::builder().status(200).body(Full::new(Bytes::from(vec![b'x'; 1 << 20]))).unwrap()
    })
    .await;
    let config = WebhookConfig { max_response_body: 1024, ..local_config() };
    let d = deliverer(config);
    for _ in 0..3 {
        let a = d.deliver(&delivery(&chatty.url(), vec![Secret::generate()])).await;
        assert_eq!(a.outcome, Outcome::Delivered);
    }
    assert_eq!(chatty.seen().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// SSRF.

#[tokio::test]
async fn loopback_needs_the_allow_list() {
    let receiver = Receiver::answering(200).await;
    let closed = deliverer(WebhookConfig::default());

    let a = closed.deliver(&delivery(&receiver.url(), vec![Secret::generate()])).await;
    assert!(permanent_reason(&a).contains("127.0.0.1 is a loopback address"), "{a:?}");
    // A name is resolved and checked too.
    let by_name = format!("http://localhost:{}/hook", receiver.addr.port());
    let a = closed.deliver(&delivery(&by_name, vec![Secret::generate()])).await;
    assert!(permanent_reason(&a).contains("loopback"), "{a:?}");
    assert!(receiver.seen().is_empty(), "nothing may reach a refused target");

    // With the allow-list, the same name goes through the checking resolver and connects.
    let open = deliverer(WebhookConfig {
        allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        ..WebhookConfig::default()
    });
    let a = open.deliver(&delivery(&by_name, vec![Secret::generate()])).await;
    assert_eq!(a.outcome, Outcome::Delivered);
    assert_eq!(receiver.seen().len(), 1);
}

/// The deny-list wins over the allow-list, for a literal and for a name that resolves into
/// it, and nothing reaches the denied receiver; an allowed neighbour still is delivered to.
#[tokio::test]
async fn the_deny_list_refuses_before_any_connection() {
    let receiver = Receiver::answering(200).await;
    let d = deliverer(WebhookConfig {
        allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        deny: vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()],
        ..WebhookConfig::default()
    });
    let a = d.deliver(&delivery(&receiver.url(), vec![Secret::generate()])).await;
    assert!(permanent_reason(&a).contains("127.0.0.1 is in the webhook deny-list"), "{a:?}");
    let by_name = format!("http://localhost:{}/hook", receiver.addr.port());
    let a = d.deliver(&delivery(&by_name, vec![Secret::generate()])).await;
    assert!(permanent_reason(&a).contains("deny-list"), "{a:?}");
    assert!(receiver.seen().is_empty(), "nothing may reach a denied target");

    let neighbour = Receiver::answering_on("127.0.0.2", 200).await;
    let a = d.deliver(&delivery(&neighbour.url(), vec![Secret::generate()])).await;
    assert_eq!(a.outcome, Outcome::Delivered);
}

#[tokio::test]
async fn private_literals_are_refused_before_any_connection() {
    // Long timeouts: had a connection been attempted, the outcome would be a (late) Retry.
    let d = deliverer(WebhookConfig {
        connect_timeout: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        ..local_config()
    });
    for (url, kind) in [
        ("http://10.0.0.1/", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[fd00::1]:8080/", "unique-local"),
    ] {
        let a = d.deliver(&delivery(url, vec![Secret::generate()])).await;
        assert_eq!(a.status_code, None);
        let reason = permanent_reason(&a);
        assert!(reason.starts_with("refused:") && reason.contains(kind), "{url}: {reason}");
    }
}

// ---------------------------------------------------------------------------------------------
// Per-endpoint concurrency.

#[tokio::test]
async fn a_busy_endpoint_does_not_hold_up_others() {
    let (blocking, gate) = Receiver::gated().await;
    let fast = Receiver::answering(200).await;
    let d = deliverer(WebhookConfig {
        endpoint_concurrency: 2,
        endpoint_wait: Duration::from_millis(50),
        ..local_config()
    });

    let slow_endpoint = EndpointId::new();
    let to_slow = |d: &WebhookDeliverer| {
        let d = d.clone();
        let mut delivery = delivery(&blocking.url(), vec![Secret::generate()]);
        delivery.endpoint_id = slow_endpoint;
        tokio::spawn(async move { d.deliver(&delivery).await })
    };
    let first = to_slow(&d);
    let second = to_slow(&d);
    blocking.wait_for(2).await;

    let third = to_slow(&d).await.unwrap();
    assert!(
        matches!(&third.outcome, Outcome::Deferred { after, .. } if *after == Duration::from_secs(1)),
        "not attempted, deferred: {third:?}"
    );
    assert_eq!(blocking.seen().len(), 2, "the third never left");

    let other = d.deliver(&delivery(&fast.url(), vec![Secret::generate()])).await;
    assert_eq!(other.outcome, Outcome::Delivered, "another endpoint proceeds");

    gate.add_permits(2);
    assert_eq!(first.await.unwrap().outcome, Outcome::Delivered);
    assert_eq!(second.await.unwrap().outcome, Outcome::Delivered);
    let again = to_slow(&d);
    gate.add_permits(1);
    assert_eq!(again.await.unwrap().outcome, Outcome::Delivered, "permits come back");
}

/// With every outbound connection the budget allows waiting for an answer, a delivery to
/// another host is deferred (no attempt used up, the endpoint not blamed) instead of opening
/// one more socket; once the answer came, that connection is idle and makes room.
#[tokio::test]
async fn a_full_connection_budget_defers_deliveries_to_other_hosts() {
    let (slow, gate) = Receiver::gated().await;
    let other = Receiver::answering(200).await;
    let d = deliverer(WebhookConfig { max_connections: 1, ..local_config() });

    let waiting = {
        let (d, delivery) = (d.clone(), delivery(&slow.url(), vec![Secret::generate()]));
        tokio::spawn(async move { d.deliver(&delivery).await })
    };
    slow.wait_for(1).await;
    let deferred = d.deliver(&delivery(&other.url(), vec![Secret::generate()])).await;
    assert!(
        matches!(&deferred.outcome, Outcome::Deferred { after, reason }
            if *after == Duration::from_secs(1) && reason.contains("TRIGGERS_WEBHOOK_MAX_CONNECTIONS")),
        "{deferred:?}"
    );
    assert!(other.seen().is_empty(), "nothing was sent");

    gate.add_permits(1);
    assert_eq!(waiting.await.unwrap().outcome, Outcome::Delivered);
    let later = d.deliver(&delivery(&other.url(), vec![Secret::generate()])).await;
    assert_eq!(later.outcome, Outcome::Delivered, "the idle connection made room");
}

#[tokio::test]
async fn https_targets_go_through_tls() {
    // A plain-HTTP receiver cannot complete a TLS handshake: the https path is taken (and its
    // failure is a retry), without falling back to plain HTTP.
    let plain = Receiver::answering(200).await;
    let url = format!("https://{}/hook", plain.addr);
    let a = deliverer(local_config()).deliver(&delivery(&url, vec![Secret::generate()])).await;
    assert_eq!(a.status_code, None);
    assert!(!retry_reason(&a).is_empty(), "{a:?}");
    assert!(plain.seen().is_empty(), "no HTTP request was made in the clear");
}
