//! What an embedding application relies on: its organization across restarts, no rate limit
//! when it asks for none, transient errors it can retry, workers that stop with the last
//! handle, and a restart that picks up a crashed run's deliveries at once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use triggers_core::store::{ClaimRequest, DeliveryQueue, OrgStore};
use triggers_core::*;

use crate::eventually;

fn config(clock: &ManualClock) -> IngestorConfig {
    IngestorConfig {
        clock: Arc::new(clock.clone()),
        worker: WorkerConfig {
            concurrency: 4,
            poll_interval: Duration::from_millis(5),
            shutdown_grace: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        ..IngestorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_organization_comes_back_after_a_restart() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let id = OrganizationId::named("my-app");

    let first = Ingestor::start(store.clone(), NoDeliverer, config(&clock));
    let org = first.organization_or_create(id, "my-app", Tier::Enterprise).await.unwrap();
    assert_eq!((org.id, org.name.as_str(), org.tier), (id, "my-app", Tier::Enterprise));
    let stored = first.ingest(&org, NewEvent::new("a", &json!(1)).with_dedup_id("d")).await;
    first.shutdown().await;
    drop(first);

    // A new run over the same store: the same organization, so dedup still applies.
    let second = Ingestor::start(store.clone(), NoDeliverer, config(&clock));
    let again = second.organization_or_create(id, "renamed", Tier::Free).await.unwrap();
    assert_eq!(again, org, "an existing organization is returned as stored");
    assert_eq!(second.organization(id).await.unwrap(), org);
    let dup = second.ingest(&org, NewEvent::new("a", &json!(1)).with_dedup_id("d")).await;
    assert!(dup.as_ref().unwrap().duplicate);
    assert_eq!(dup.unwrap().id, stored.unwrap().id);

    // Unknown ids and bad names.
    let unknown = OrganizationId::named("nobody");
    assert!(matches!(second.organization(unknown).await, Err(Error::NotFound)));
    let bad = second.organization_or_create(unknown, " \n ", Tier::Free).await;
    assert!(matches!(bad, Err(Error::Invalid(_))));
    assert_eq!(store.organization(unknown).await.unwrap(), None, "nothing was stored");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_get_or_create_agrees_on_one_organization() {
    let clock = ManualClock::new();
    let ing = Ingestor::start(MemoryStore::new(), NoDeliverer, config(&clock));
    let id = OrganizationId::new();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let ing = ing.clone();
            tokio::spawn(async move {
                ing.organization_or_create(id, &format!("racer {i}"), Tier::Starter).await.unwrap()
            })
        })
        .collect();
    let mut orgs = Vec::new();
    for t in tasks {
        orgs.push(t.await.unwrap());
    }
    assert!(orgs.iter().all(|o| *o == orgs[0]), "every caller got the same organization");
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_tier_never_refuses_and_a_limit_reports_when_to_retry() {
    let clock = ManualClock::new();
    let limits = TierLimits::default().with(Tier::Enterprise, TierLimits::UNLIMITED);
    let ing = Ingestor::start(
        MemoryStore::new(),
        NoDeliverer,
        IngestorConfig { tier_limits: limits, ..config(&clock) },
    );
    let (org, _) = ing.create_organization("big", Tier::Enterprise).await.unwrap();
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let (ing, org) = (ing.clone(), org.clone());
            tokio::spawn(async move { ing.ingest(&org, NewEvent::new("e", &json!(i))).await })
        })
        .collect();
    for t in tasks {
        let ingested = t.await.unwrap().unwrap();
        assert_eq!(ingested.rate, RateDecision::unlimited());
    }
    assert_eq!(ing.stats(&org).await.unwrap().pending, 10_000);
    assert_eq!(ing.rate_status(&org).limit, TierLimits::UNLIMITED);

    // A limited tier on the same Ingestor still limits, and says when to retry.
    let (small, _) = ing.create_organization("small", Tier::Free).await.unwrap();
    for _ in 0..10 {
        ing.ingest(&small, NewEvent::new("e", &json!(1))).await.unwrap();
    }
    let err = ing.ingest(&small, NewEvent::new("e", &json!(1))).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(6)));
    let invalid = ing.ingest(&small, NewEvent::new("bad type", &json!(1))).await.unwrap_err();
    assert!(!invalid.is_transient());
    assert_eq!(invalid.retry_after(), None);
    ing.shutdown().await;
}

/// A deliverer that counts its calls and reports each event id on a channel.
fn counting() -> (Arc<FnDeliverer>, Arc<AtomicU32>, tokio::sync::mpsc::UnboundedReceiver<EventId>) {
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let c = calls.clone();
    let deliverer = FnDeliverer::new(move |d: Delivery| {
        c.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(d.event_id);
        async { Outcome::Delivered }
    });
    (Arc::new(deliverer), calls, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_when_the_last_handle_drops() {
    let clock = ManualClock::new();
    let (deliverer, _calls, mut seen) = counting();
    let ing = Ingestor::start(MemoryStore::new(), deliverer.clone(), config(&clock));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    ing.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = ing.ingest(&org, NewEvent::new("e", &json!(1))).await.unwrap().id;
    assert_eq!(seen.recv().await, Some(id), "the workers run while a handle lives");
    let clone = ing.clone();
    drop(ing);
    assert!(Arc::strong_count(&deliverer) > 1, "a clone keeps the workers running");
    drop(clone);
    // The workers hold the only other reference to the deliverer: it goes once they stop.
    eventually("the workers have stopped", || {
        let n = Arc::strong_count(&deliverer);
        async move { n == 1 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_stable_node_id_delivers_a_crashed_runs_work_at_once() {
    // The clock never moves: a lease left by the "crashed" run never expires on its own.
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new());
    let node = WorkerId::new();
    let inbox_only = WorkerConfig { concurrency: 0, ..WorkerConfig::default() };
    let setup = Ingestor::start(
        store.clone(),
        NoDeliverer,
        IngestorConfig { worker: inbox_only, ..config(&clock) },
    );
    let (org, _) = setup.create_organization("acme", Tier::Enterprise).await.unwrap();
    setup.create_endpoint(&org, "inproc://x", None).await.unwrap();
    let id = setup.ingest(&org, NewEvent::new("e", &json!(1))).await.unwrap().id;
    // The crashed run: it claimed the delivery under the node's id and died.
    let req = ClaimRequest::new(node, 10, Duration::from_secs(60), clock.now());
    assert_eq!(store.claim(req).await.unwrap().len(), 1);

    let (deliverer, _, mut seen) = counting();
    let other = WorkerConfig { node_id: Some(WorkerId::new()), ..config(&clock).worker };
    let stranger = Ingestor::start(
        store.clone(),
        deliverer.clone(),
        IngestorConfig { worker: other, ..config(&clock) },
    );
    stranger.shutdown().await;
    assert!(seen.try_recv().is_err(), "another node's id does not take the live lease");

    let worker = WorkerConfig { node_id: Some(node), ..config(&clock).worker };
    let restarted =
        Ingestor::start(store.clone(), deliverer, IngestorConfig { worker, ..config(&clock) });
    let got = tokio::time::timeout(Duration::from_secs(10), seen.recv()).await;
    assert_eq!(got.unwrap(), Some(id), "delivered without waiting for the lease");
    eventually("the event is delivered", || {
        let (ing, org) = (restarted.clone(), org.clone());
        async move { ing.event(&org, id).await.unwrap().event.status == EventStatus::Delivered }
    })
    .await;
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_deliverer_picks_the_deliverer_by_url_scheme() {
    let clock = ManualClock::new();
    let (inproc, _, mut seen) = counting();
    let (webhooks, webhook_calls, _webhook_seen) = counting();
    let deliverer = RoutingDeliverer::new().route("INPROC", inproc).webhooks(webhooks);
    let ing = Ingestor::start(MemoryStore::new(), deliverer, config(&clock));
    let (org, _) = ing.create_organization("acme", Tier::Enterprise).await.unwrap();
    let local = ing.create_endpoint(&org, "inproc://audit", Some("audit.*")).await.unwrap();
    let hook =
        ing.create_endpoint(&org, "https://example.invalid/h", Some("hook.*")).await.unwrap();
    let ftp = ing.create_endpoint(&org, "ftp://files/x", Some("file.*")).await.unwrap();

    let a = ing.ingest(&org, NewEvent::new("audit.login", &json!(1))).await.unwrap().id;
    assert_eq!(seen.recv().await, Some(a), "inproc:// went to the in-process consumer");
    let h = ing.ingest(&org, NewEvent::new("hook.x", &json!(1))).await.unwrap().id;
    let f = ing.ingest(&org, NewEvent::new("file.x", &json!(1))).await.unwrap().id;
    for (id, status) in [(a, EventStatus::Delivered), (h, EventStatus::Delivered)] {
        eventually("delivered", || {
            let (ing, org) = (ing.clone(), org.clone());
            async move { ing.event(&org, id).await.unwrap().event.status == status }
        })
        .await;
    }
    assert_eq!(webhook_calls.load(Ordering::SeqCst), 1, "https:// went to the webhook deliverer");
    eventually("the ftp:// event failed", || {
        let (ing, org) = (ing.clone(), org.clone());
        async move { ing.event(&org, f).await.unwrap().event.status == EventStatus::Failed }
    })
    .await;
    let attempts = ing.event(&org, f).await.unwrap().attempts;
    assert_eq!(attempts.len(), 1, "not retried");
    assert_eq!(attempts[0].endpoint_id, ftp.id);
    let error = attempts[0].error.clone().unwrap();
    assert!(error.contains("\"ftp\""), "{error}");
    let _ = (local, hook);
    ing.shutdown().await;
}
