//! End to end: events ingested through the [`Ingestor`], delivered by its workers with the
//! [`WebhookDeliverer`] to receivers on 127.0.0.1, over a [`MemoryStore`] and a
//! [`ManualClock`] (retries come due when the test moves the clock, never by sleeping).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use triggers_core::store::{ClaimRequest, DeliveryQueue};
use triggers_core::{
    Clock, Deliverer, EventDetail, EventId, EventStatus, Ingestor, IngestorConfig, ManualClock,
    MemoryStore, NewEvent, Organization, Outcome, RetryPolicy, Tier, WorkerConfig, WorkerId,
};
use triggers_http::{WebhookConfig, WebhookDeliverer};

use super::support::*;

pub(super) type TestIngestor = Ingestor<MemoryStore, WebhookDeliverer>;

pub(super) struct World {
    pub(super) ingestor: TestIngestor,
    pub(super) clock: ManualClock,
    pub(super) org: Organization,
}

fn config(clock: &ManualClock, delays: &[u64], workers: usize) -> IngestorConfig {
    IngestorConfig {
        clock: Arc::new(clock.clone()),
        retry: RetryPolicy {
            delays: delays.iter().map(|&s| Duration::from_secs(s)).collect(),
            jitter: 0.0,
            max_hint: Duration::from_secs(3600),
        },
        worker: WorkerConfig {
            concurrency: workers,
            poll_interval: Duration::from_millis(5),
            shutdown_grace: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        ..IngestorConfig::default()
    }
}

/// An ingestor with 8 workers, the retry schedule `delays` (seconds, no jitter) and `webhook`.
pub(super) async fn world(delays: &[u64], webhook: WebhookConfig) -> World {
    let clock = ManualClock::new();
    let deliverer = WebhookDeliverer::new(webhook).unwrap();
    let ingestor = Ingestor::start(MemoryStore::new(), deliverer, config(&clock, delays, 8));
    let (org, _key) = ingestor.create_organization("acme", Tier::Enterprise).await.unwrap();
    World { ingestor, clock, org }
}

impl World {
    pub(super) async fn ingest(&self, event_type: &str) -> EventId {
        let event = NewEvent::new(event_type, &serde_json::json!({"n": 1}));
        self.ingestor.ingest(&self.org, event).await.unwrap().id
    }

    /// Waits (up to 20 s of real time) until the event has `n` attempts recorded.
    pub(super) async fn attempts(&self, id: EventId, n: usize) -> EventDetail {
        until(&format!("{n} attempts"), || async {
            let detail = self.ingestor.event(&self.org, id).await.unwrap();
            (detail.attempts.len() >= n).then_some(detail)
        })
        .await
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

/// Polls `probe` until it yields a value; panics after 20 s of real time.
pub(super) async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A receiver answering 500 to the first `k` requests and 200 after.
async fn failing_first(k: usize) -> Receiver {
    let n = Arc::new(AtomicUsize::new(0));
    Receiver::start(move || {
        let n = n.clone();
        async move { status_response(if n.fetch_add(1, Ordering::SeqCst) < k { 500 } else { 200 }) }
    })
    .await
}

/// Lets the workers run for a moment: long enough for many polls, so a delivery that is due
/// would very likely have been made. Only used to check that nothing happens.
pub(super) async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_endpoint_defers_deliveries_without_using_up_their_attempts() {
    // The second attempt would only come an hour later: a busy endpoint must not cost one.
    let webhook = WebhookConfig {
        endpoint_concurrency: 1,
        endpoint_wait: Duration::from_millis(20),
        ..local_config()
    };
    let w = world(&[0, 3600], webhook).await;
    let (receiver, gate) = Receiver::gated().await;
    let endpoint = w.ingestor.create_endpoint(&w.org, &receiver.url(), None).await.unwrap();
    let ids =
        [w.ingest("order.paid").await, w.ingest("order.paid").await, w.ingest("order.paid").await];

    receiver.wait_for(1).await;
    settle().await;
    assert_eq!(receiver.seen().len(), 1, "the cap holds the others back");
    gate.add_permits(3);
    settle().await;
    assert_eq!(receiver.seen().len(), 1, "the others were deferred by 1 s, not retried at once");

    w.advance(1);
    for id in ids {
        let d = w.attempts(id, 1).await;
        until("delivered", || async {
            let d = w.ingestor.event(&w.org, id).await.unwrap();
            (d.event.status == EventStatus::Delivered).then_some(())
        })
        .await;
        let d = w.ingestor.event(&w.org, d.event.id).await.unwrap();
        assert_eq!(d.attempts.len(), 1, "one recorded attempt, the successful one: {d:?}");
        assert_eq!((d.attempts[0].status_code, d.attempts[0].error.as_deref()), (Some(200), None));
    }
    for req in receiver.seen() {
        assert!(verify(endpoint.secret.expose(), &req));
    }
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_is_delivered_at_the_scheduled_times() {
    let w = world(&[0, 5, 300, 1800], local_config()).await;
    let receiver = failing_first(2).await;
    let endpoint = w.ingestor.create_endpoint(&w.org, &receiver.url(), None).await.unwrap();
    let t0 = w.clock.now();
    let id = w.ingest("user.created").await;

    let d = w.attempts(id, 1).await;
    assert_eq!((d.attempts[0].at, d.attempts[0].status_code), (t0, Some(500)));
    w.advance(4);
    settle().await;
    assert_eq!(receiver.seen().len(), 1, "not due before 5 s");

    w.advance(1);
    let d = w.attempts(id, 2).await;
    assert_eq!((d.attempts[1].at, d.attempts[1].status_code), (w.clock.now(), Some(500)));
    assert_eq!(d.event.status, EventStatus::Pending);

    w.advance(300);
    let d = w.attempts(id, 3).await;
    let t3 = t0 + chrono::Duration::seconds(305);
    assert_eq!((d.attempts[2].at, d.attempts[2].status_code), (t3, Some(200)));
    assert_eq!(d.attempts[2].error, None);
    assert_eq!(d.event.status, EventStatus::Delivered);
    assert_eq!(d.event.delivered_at, Some(t3));

    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for req in &seen {
        assert_eq!(req.headers["webhook-id"], id.to_string().as_str(), "same id on every try");
        assert!(verify(endpoint.secret.expose(), req));
    }
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_500_fails_after_the_schedule_and_replay_delivers_again() {
    let w = world(&[0, 1, 1], local_config()).await;
    let receiver = failing_first(3).await;
    w.ingestor.create_endpoint(&w.org, &receiver.url(), None).await.unwrap();
    let id = w.ingest("user.created").await;

    w.attempts(id, 1).await;
    w.advance(1);
    w.attempts(id, 2).await;
    w.advance(1);
    let d = w.attempts(id, 3).await;
    assert_eq!(d.event.status, EventStatus::Failed);
    assert!(d.attempts.iter().all(|a| a.status_code == Some(500)));
    assert_eq!(d.attempts[2].error.as_deref(), Some("HTTP 500"));
    w.advance(3600);
    settle().await;
    assert_eq!(receiver.seen().len(), 3, "no attempt after the last");

    // The receiver is fixed now (it answers 200 from the 4th request on): replay.
    assert_eq!(w.ingestor.replay(&w.org, id).await.unwrap().status, EventStatus::Pending);
    let d = w.attempts(id, 4).await;
    assert_eq!(d.attempts[3].status_code, Some(200));
    assert_eq!(d.event.status, EventStatus::Delivered);
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() {
    let w = world(&[0, 5], local_config()).await;
    let receiver = Receiver::answering(410).await;
    let endpoint = w.ingestor.create_endpoint(&w.org, &receiver.url(), None).await.unwrap();
    let id = w.ingest("user.created").await;

    let d = w.attempts(id, 1).await;
    assert_eq!(d.attempts[0].status_code, Some(410));
    assert_eq!(d.event.status, EventStatus::Failed);
    let endpoints = w.ingestor.endpoints(&w.org).await.unwrap();
    assert_eq!(endpoints[0].id, endpoint.id);
    assert!(!endpoints[0].enabled);
    assert!(endpoints[0].disabled_reason.as_deref().unwrap().contains("410"));

    w.ingest("user.created").await;
    w.advance(60);
    settle().await;
    assert_eq!(receiver.seen().len(), 1, "a disabled endpoint gets nothing more");
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_times_out_and_the_retry_succeeds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let slow_once = Receiver::start(move || {
        let calls = calls.clone();
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            status_response(200)
        }
    })
    .await;
    let webhook = WebhookConfig { timeout: Duration::from_millis(200), ..local_config() };
    let w = world(&[0, 5], webhook).await;
    w.ingestor.create_endpoint(&w.org, &slow_once.url(), None).await.unwrap();
    let id = w.ingest("user.created").await;

    let d = w.attempts(id, 1).await;
    assert_eq!(d.attempts[0].status_code, None);
    assert_eq!(d.attempts[0].error.as_deref(), Some("timed out after 200ms"));
    w.advance(5);
    let d = w.attempts(id, 2).await;
    assert_eq!(d.event.status, EventStatus::Delivered);
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_recorded_not_followed_and_private_targets_refused() {
    let w = world(&[0, 5], local_config()).await;
    let target = Receiver::answering(200).await;
    let location = target.url();
    let redirecting = Receiver::start(move || {
        let location = location.clone();
        async move {
            let mut response = status_response(301);
            response.headers_mut().insert("location", location.parse().unwrap());
            response
        }
    })
    .await;
    w.ingestor.create_endpoint(&w.org, &redirecting.url(), Some("user.*")).await.unwrap();
    w.ingestor.create_endpoint(&w.org, "http://10.0.0.1/hook", Some("order.*")).await.unwrap();

    let redirected = w.ingest("user.created").await;
    let d = w.attempts(redirected, 1).await;
    assert_eq!(d.attempts[0].status_code, Some(301));
    assert!(d.attempts[0].error.as_deref().unwrap().contains("redirect not followed"));
    assert!(target.seen().is_empty());

    let refused = w.ingest("order.paid").await;
    let d = w.attempts(refused, 1).await;
    assert_eq!(d.event.status, EventStatus::Failed, "a refused target is a permanent failure");
    let error = d.attempts[0].error.as_deref().unwrap();
    assert!(error.starts_with("refused: 10.0.0.1 is a private address"), "{error}");
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_both_sign_until_the_grace_period_ends() {
    let w = world(&[0], local_config()).await;
    let receiver = Receiver::answering(200).await;
    let endpoint = w.ingestor.create_endpoint(&w.org, &receiver.url(), None).await.unwrap();
    let new_secret = w.ingestor.rotate_endpoint_secret(&w.org, endpoint.id).await.unwrap();

    let id = w.ingest("user.created").await;
    w.attempts(id, 1).await;
    let req = &receiver.seen()[0];
    let sigs = req.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    assert!(verify(new_secret.expose(), req));
    assert!(verify(endpoint.secret.expose(), req), "the old secret still verifies");

    w.advance(24 * 3600 + 1);
    let id = w.ingest("user.created").await;
    w.attempts(id, 1).await;
    let req = &receiver.seen()[1];
    assert_eq!(req.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 1);
    assert!(verify(new_secret.expose(), req));
    assert!(!verify(endpoint.secret.expose(), req), "the grace period is over");
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_follows_filters_and_a_hanging_endpoint_delays_no_other() {
    let w = world(&[0, 5], local_config()).await;
    let (users, all, orders) = (
        Receiver::answering(200).await,
        Receiver::answering(200).await,
        Receiver::answering(200).await,
    );
    let hanging = Receiver::start(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        status_response(200)
    })
    .await;
    let e_users = w.ingestor.create_endpoint(&w.org, &users.url(), Some("user.*")).await.unwrap();
    let e_all = w.ingestor.create_endpoint(&w.org, &all.url(), None).await.unwrap();
    w.ingestor.create_endpoint(&w.org, &orders.url(), Some("order.*")).await.unwrap();
    w.ingestor.create_endpoint(&w.org, &hanging.url(), Some("user.*")).await.unwrap();

    let id = w.ingest("user.created").await;
    let d = w.attempts(id, 2).await;
    let mut reached: Vec<_> = d.attempts.iter().map(|a| (a.endpoint_id, a.status_code)).collect();
    reached.sort();
    let mut expected = vec![(e_users.id, Some(200)), (e_all.id, Some(200))];
    expected.sort();
    assert_eq!(reached, expected, "both delivered while the hanging one is still in flight");
    hanging.wait_for(1).await;
    assert_eq!(d.event.status, EventStatus::Pending, "one delivery is still outstanding");
    assert!(orders.seen().is_empty(), "the filter order.* does not match user.created");
    assert!(verify(e_users.secret.expose(), &users.seen()[0]));
    assert!(verify(e_all.secret.expose(), &all.seen()[0]));

    let order = w.ingest("order.paid").await;
    w.attempts(order, 2).await;
    assert_eq!((users.seen().len(), all.seen().len(), orders.seen().len()), (1, 2, 1));
    w.ingestor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_delivery_is_replaced_after_its_lease() {
    let clock = ManualClock::new();
    let store = MemoryStore::new();
    let deliverer = WebhookDeliverer::new(local_config()).unwrap();
    let receiver = Receiver::answering(200).await;
    // Set up without workers.
    let front = Ingestor::start(store.clone(), deliverer.clone(), config(&clock, &[0, 5], 0));
    let (org, _) = front.create_organization("acme", Tier::Enterprise).await.unwrap();
    front.create_endpoint(&org, &receiver.url(), None).await.unwrap();
    let id = front.ingest(&org, NewEvent::new("user.created", &serde_json::json!({}))).await;
    let id = id.unwrap().id;

    // A worker claims the delivery, sends it, and dies before recording the outcome.
    let lease = Duration::from_secs(60);
    let claim = ClaimRequest::new(WorkerId::new(), 10, lease, clock.now());
    let claimed = store.claim(claim).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(deliverer.deliver(&claimed[0]).await.outcome, Outcome::Delivered);
    drop(claimed);

    // Workers on the same store leave it alone while the lease runs ...
    let workers = Ingestor::start(store.clone(), deliverer, config(&clock, &[0, 5], 4));
    settle().await;
    assert_eq!(receiver.seen().len(), 1);
    // ... and deliver it again once it has expired: at least once, same webhook-id.
    clock.advance(lease + Duration::from_secs(1));
    let d = until("redelivery", || async {
        let d = workers.event(&org, id).await.unwrap();
        (d.event.status == EventStatus::Delivered).then_some(d)
    })
    .await;
    assert_eq!(d.attempts.len(), 1, "only the surviving worker recorded an attempt");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["webhook-id"], seen[1].headers["webhook-id"]);
    assert_eq!(seen[1].headers["webhook-id"], id.to_string().as_str());
    workers.shutdown().await;
    front.shutdown().await;
}
