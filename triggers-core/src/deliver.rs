//! The [`Deliverer`] trait, and in-process deliverers for embedding applications.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::store::Delivery;

/// What became of one attempt to deliver one event to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target accepted the event.
    Delivered,
    /// The attempt failed but may succeed later. `after` is the target's own hint (for
    /// example `Retry-After`), honoured within the retry policy's bounds.
    Retry {
        /// The target's hint of when to retry.
        after: Option<Duration>,
        /// A short description for the attempt record.
        reason: String,
    },
    /// The attempt failed and retrying cannot help: the delivery fails now.
    Permanent(String),
    /// The target is gone for good (HTTP 410): the delivery fails and the endpoint is disabled.
    Gone(String),
    /// Not attempted: the deliverer held the delivery back (for example, its endpoint is at its
    /// concurrency cap or rate). The worker gives it back to the queue, due again `after`
    /// from now, with nothing recorded and no attempt used up — so a busy endpoint never burns
    /// through a delivery's retries.
    Deferred {
        /// How long the delivery waits before it is due again.
        after: Duration,
        /// Why, for the worker's debug log.
        reason: String,
    },
}

/// One attempt's outcome plus what the target answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The outcome.
    pub outcome: Outcome,
    /// The HTTP status the target answered, if any.
    pub status_code: Option<u16>,
}

impl From<Outcome> for Attempt {
    fn from(outcome: Outcome) -> Self {
        Self { outcome, status_code: None }
    }
}

/// Delivers one event to one target.
///
/// Contract:
/// - Called by the worker queue with a leased [`Delivery`]; the same delivery may be passed
///   again later (at-least-once): after a `Retry`, after a crash that lost the lease, or after
///   a replay. `delivery.event_id` stays the same, so receivers can deduplicate on it.
/// - Must finish well within the lease (the worker enforces its own timeout and treats it as
///   `Retry`); must not panic (a panic is caught and treated as `Retry`).
/// - Must not retry internally: report `Retry` and let the schedule decide.
#[async_trait]
pub trait Deliverer: Send + Sync + 'static {
    /// Makes one attempt.
    async fn deliver(&self, delivery: &Delivery) -> Attempt;
}

#[async_trait]
impl<D: Deliverer + ?Sized> Deliverer for Arc<D> {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        (**self).deliver(delivery).await
    }
}

/// A deliverer that delivers nothing: every attempt is retried in an hour. For stores used
/// only as an inbox (no endpoints) or for tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeliverer;

#[async_trait]
impl Deliverer for NoDeliverer {
    async fn deliver(&self, _delivery: &Delivery) -> Attempt {
        Outcome::Retry {
            after: Some(Duration::from_secs(3600)),
            reason: "no deliverer configured".into(),
        }
        .into()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A deliverer backed by an async closure: events are consumed in-process, no HTTP.
///
/// ```
/// use triggers_core::{FnDeliverer, Outcome};
/// let d = FnDeliverer::new(|delivery| async move {
///     tracing::info!(event = %delivery.event_id, "got it");
///     Outcome::Delivered
/// });
/// # let _ = d;
/// ```
pub struct FnDeliverer {
    f: Box<dyn Fn(Delivery) -> BoxFuture + Send + Sync>,
}

impl FnDeliverer {
    /// Wraps `f`. It receives its own copy of each delivery.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        Self { f: Box::new(move |d| Box::pin(f(d))) }
    }
}

impl std::fmt::Debug for FnDeliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnDeliverer")
    }
}

#[async_trait]
impl Deliverer for FnDeliverer {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        (self.f)(delivery.clone()).await.into()
    }
}

/// A delivery handed to an in-process consumer through a channel; the consumer answers with
/// [`respond`](Self::respond). Dropping it unanswered counts as `Retry`.
#[derive(Debug)]
pub struct Handoff {
    /// The delivery.
    pub delivery: Delivery,
    reply: oneshot::Sender<Outcome>,
}

impl Handoff {
    /// Reports the outcome back to the worker.
    pub fn respond(self, outcome: Outcome) {
        // The worker may have timed out and gone; then the outcome no longer matters.
        let _ = self.reply.send(outcome);
    }
}

/// A deliverer that hands deliveries to a consumer task through a bounded channel.
///
/// ```
/// # async fn demo() {
/// let (deliverer, mut rx) = triggers_core::ChannelDeliverer::new(64);
/// tokio::spawn(async move {
///     while let Some(handoff) = rx.recv().await {
///         // … process handoff.delivery …
///         handoff.respond(triggers_core::Outcome::Delivered);
///     }
/// });
/// # drop(deliverer);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ChannelDeliverer {
    tx: mpsc::Sender<Handoff>,
}

impl ChannelDeliverer {
    /// A deliverer and the receiving end, with room for `capacity` waiting deliveries.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Handoff>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }
}

#[async_trait]
impl Deliverer for ChannelDeliverer {
    async fn deliver(&self, delivery: &Delivery) -> Attempt {
        let (reply, answer) = oneshot::channel();
        let handoff = Handoff { delivery: delivery.clone(), reply };
        if self.tx.send(handoff).await.is_err() {
            return Outcome::Retry { after: None, reason: "consumer channel closed".into() }.into();
        }
        match answer.await {
            Ok(outcome) => outcome.into(),
            Err(_) => {
                Outcome::Retry { after: None, reason: "consumer dropped the delivery".into() }
                    .into()
            }
        }
    }
}
