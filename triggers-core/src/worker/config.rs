//! Worker queue settings.

use std::time::Duration;

/// How the delivery workers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// How many deliveries may be in progress at once (0: no workers).
    pub concurrency: usize,
    /// Most deliveries claimed in one store call.
    pub claim_batch: u32,
    /// How long a claim is ours. Must exceed `delivery_timeout`: a worker that dies loses its
    /// deliveries to another after this long.
    pub lease: Duration,
    /// How often to look for due work when nothing wakes the workers (retries coming due,
    /// expired leases, other nodes' events without store wake-ups).
    pub poll_interval: Duration,
    /// Longest a single attempt may take before it counts as failed (retry).
    pub delivery_timeout: Duration,
    /// An endpoint failing without a success for this long is disabled (default 5 days).
    pub disable_after: Duration,
    /// On shutdown, how long in-flight deliveries get to finish before they are released.
    pub shutdown_grace: Duration,
    /// A lease-owner id that stays the same across restarts of this node (default `None`:
    /// the store's [`node_id`](crate::store::DeliveryQueue::node_id) — the SQLite store
    /// keeps one in its file — else a fresh id per run). With a stable id the workers end
    /// that id's leftover leases at start-up, so deliveries a crashed run held go out at
    /// once instead of after `lease`. Give each node its own id, and run at most one
    /// Ingestor with workers per id at a time: a second one would take over the first's
    /// deliveries (a duplicate attempt, never a lost one).
    pub node_id: Option<crate::domain::WorkerId>,
    /// Most deliveries one organization may have in flight at once, counted over every node
    /// sharing the store (see `DeliveryQueue::claim`). `None`: its fair share, a quarter of
    /// `concurrency` (at least 1), so no fewer than four organizations with slow endpoints
    /// are needed to occupy every worker of a node.
    pub org_concurrency: Option<usize>,
    /// Most deliveries one parallel endpoint may have in flight at once (all nodes); an
    /// endpoint's own, lower `concurrency` takes precedence, a failing endpoint gets one
    /// (circuit breaker), a FIFO endpoint always one.
    pub endpoint_concurrency: usize,
    /// Least time between a claim that took fewer deliveries than it asked for and the next
    /// claim that a wake-up (new events) starts (default 2 ms). A wake-up after a longer
    /// pause claims at once, so an idle system starts a new event's delivery without delay;
    /// completions and the claims made with them are never held back. Under a steady stream
    /// of events for endpoints at their caps, each wake-up would otherwise cost the store a
    /// claim that finds nothing (measured: ≈ 650 such claims per second on SQLite at 8 000
    /// events/s to one endpoint).
    pub wake_coalesce: Duration,
}

impl WorkerConfig {
    /// The per-organization cap in effect: `org_concurrency`, or the fair share.
    pub fn effective_org_concurrency(&self) -> usize {
        self.org_concurrency.unwrap_or(self.concurrency / 4).max(1)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            claim_batch: 128,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            delivery_timeout: Duration::from_secs(30),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            shutdown_grace: Duration::from_secs(10),
            node_id: None,
            org_concurrency: None,
            endpoint_concurrency: 16,
            wake_coalesce: Duration::from_millis(2),
        }
    }
}
