//! Endpoint lifecycle at a real receiver: custom headers, disabling, re-enabling and
//! recovering (signed, same `webhook-id`), and the operational events about it.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use triggers_core::store::{DeliveryQueue, EndpointPatch};
use triggers_core::{EventStatus, InboxQuery, TypeGlob};

use super::e2e::{settle, until, world, World};
use super::support::*;

/// The event types the receiver was sent.
fn types(receiver: &Receiver) -> Vec<String> {
    receiver
        .seen()
        .iter()
        .map(|s| {
            let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            body["type"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn inbox_of(w: &World, glob: &str) -> Vec<serde_json::Value> {
    let query =
        InboxQuery { type_glob: Some(TypeGlob::parse(glob).unwrap()), ..Default::default() };
    let page = w.ingestor.inbox(&w.org, query).await.unwrap();
    page.events.iter().map(|e| serde_json::from_str(e.payload.get()).unwrap()).collect()
}

async fn status_is(w: &World, id: triggers_core::EventId, want: EventStatus) {
    until(&format!("{id} {want:?}"), || async {
        (w.ingestor.event(&w.org, id).await.unwrap().event.status == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_deliveries_are_recovered_signed_with_their_headers() {
    let w = world(&[0, 5], local_config()).await;
    let receiver = Receiver::answering(200).await;
    let ep = w.ingestor.create_endpoint(&w.org, &receiver.url(), Some("order.*")).await.unwrap();
    let headers = vec![("X-Tenant".to_owned(), "acme".to_owned())];
    let set = EndpointPatch { headers: Some(headers), ..EndpointPatch::default() };
    w.ingestor.update_endpoint(&w.org, ep.id, &set).await.unwrap();
    let forbidden = EndpointPatch {
        headers: Some(vec![("Host".to_owned(), "evil.example".to_owned())]),
        ..EndpointPatch::default()
    };
    assert!(w.ingestor.update_endpoint(&w.org, ep.id, &forbidden).await.is_err());

    let first = w.ingest("order.paid").await;
    receiver.wait_for(1).await;
    status_is(&w, first, EventStatus::Delivered).await;
    assert_eq!(receiver.seen()[0].headers["x-tenant"], "acme");

    let off = EndpointPatch { enabled: Some(false), ..EndpointPatch::default() };
    let disabled = w.ingestor.update_endpoint(&w.org, ep.id, &off).await.unwrap();
    assert_eq!(disabled.disabled_reason.as_deref(), Some("disabled by request"));
    let missed = [w.ingest("order.paid").await, w.ingest("order.shipped").await];
    settle().await;
    assert_eq!(receiver.seen().len(), 1, "a disabled endpoint gets nothing");
    for id in missed {
        assert_eq!(w.ingestor.event(&w.org, id).await.unwrap().event.status, EventStatus::Failed);
    }
    assert_eq!(w.ingestor.store().queue_depth().await.unwrap(), 0, "nothing outstanding");
    let announced = inbox_of(&w, "triggers.endpoint.disabled").await;
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0]["endpoint_id"], serde_json::json!(ep.id));
    assert_eq!(announced[0]["reason"], "disabled by request");

    let on = EndpointPatch { enabled: Some(true), ..EndpointPatch::default() };
    w.ingestor.update_endpoint(&w.org, ep.id, &on).await.unwrap();
    assert_eq!(inbox_of(&w, "triggers.endpoint.enabled").await.len(), 1);
    let epoch = chrono::DateTime::UNIX_EPOCH;
    let recovered = w.ingestor.recover(&w.org, ep.id, epoch, None).await.unwrap();
    assert_eq!((recovered.queued, recovered.more), (2, false));
    receiver.wait_for(3).await;
    for id in missed {
        status_is(&w, id, EventStatus::Delivered).await;
    }
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for (req, id) in seen[1..].iter().zip(missed) {
        assert!(verify(ep.secret.expose(), req));
        assert_eq!(req.headers["x-tenant"], "acme");
        assert!(missed.iter().any(|m| req.headers["webhook-id"] == m.to_string().as_str()), "{id}");
    }
    assert!(types(&receiver).iter().all(|t| t.starts_with("order.")), "no operational events");
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_endpoint_is_announced_to_the_others_with_its_reason() {
    let w = world(&[0, 5], local_config()).await;
    let code = Arc::new(AtomicU16::new(410));
    let gone = Receiver::start({
        let code = code.clone();
        move || {
            let code = code.load(Ordering::SeqCst);
            async move { status_response(code) }
        }
    })
    .await;
    let watcher = Receiver::answering(200).await;
    let ep = w.ingestor.create_endpoint(&w.org, &gone.url(), None).await.unwrap();
    let watch = w.ingestor.create_endpoint(&w.org, &watcher.url(), Some("triggers.*")).await;
    let watch = watch.unwrap();
    let id = w.ingest("user.created").await;
    status_is(&w, id, EventStatus::Failed).await;

    watcher.wait_for(1).await;
    let req = &watcher.seen()[0];
    assert!(verify(watch.secret.expose(), req));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["type"], "triggers.endpoint.disabled");
    assert_eq!(body["payload"]["endpoint_id"], serde_json::json!(ep.id));
    assert!(body["payload"]["reason"].as_str().unwrap().contains("410"), "{body}");
    // In the stream too: delivered to the watcher, so listed as delivered.
    let id_of_event = body["id"].as_str().unwrap().parse().unwrap();
    status_is(&w, triggers_core::EventId(id_of_event), EventStatus::Delivered).await;

    // Back in service: re-enable and recover what it missed.
    code.store(200, Ordering::SeqCst);
    let on = EndpointPatch { enabled: Some(true), ..EndpointPatch::default() };
    w.ingestor.update_endpoint(&w.org, ep.id, &on).await.unwrap();
    let recovered = w.ingestor.recover(&w.org, ep.id, chrono::DateTime::UNIX_EPOCH, None).await;
    assert_eq!(recovered.unwrap().queued, 1);
    gone.wait_for(2).await;
    status_is(&w, id, EventStatus::Delivered).await;
    assert_eq!(gone.seen()[1].headers["webhook-id"], id.to_string().as_str());
    assert!(types(&gone).iter().all(|t| t == "user.created"), "never told about itself");
    w.ingestor.shutdown().await;
}
