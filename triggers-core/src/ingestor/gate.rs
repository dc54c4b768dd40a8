//! How many of one organization's reads run at once on this node.
//!
//! The store serves reads from a small shared pool (SQLite: a few reader connections;
//! PostgreSQL: the connection pool it shares with writes and claims), first come, first
//! served. Without a bound, one organization that keeps many large inbox pages in flight
//! fills the pool, and every other organization's read queues behind all of them
//! (BENCHMARKS.md measured a small inbox read going from 0.3 ms to 265 ms). [`ReadGate`] lets
//! at most [`IngestorConfig::org_read_concurrency`](super::IngestorConfig) reads of one
//! organization reach the store at once; its further reads wait for their turn in that
//! organization's own queue (first come, first served), where nobody else waits.
//!
//! The gate holds one small entry per organization with reads running or waiting, removed by
//! the last read to finish (a read abandoned while it waited may leave its organization's
//! entry until that organization's next read finishes: at most one per organization).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::OrganizationId;

/// Per-organization read concurrency; see the module docs.
pub(super) struct ReadGate {
    per_org: usize,
    orgs: Mutex<HashMap<OrganizationId, Arc<Semaphore>>>,
}

impl ReadGate {
    /// A gate that lets `per_org` reads of one organization run at once (at least one).
    pub(super) fn new(per_org: usize) -> Self {
        Self { per_org: per_org.max(1), orgs: Mutex::new(HashMap::new()) }
    }

    fn orgs(&self) -> MutexGuard<'_, HashMap<OrganizationId, Arc<Semaphore>>> {
        // Every change under the lock is one map operation: a poisoned map is still whole.
        self.orgs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `org` may run one more read; the read runs while the turn is held.
    pub(super) async fn enter(&self, org: OrganizationId) -> ReadTurn<'_> {
        let slots = self
            .orgs()
            .entry(org)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_org)))
            .clone();
        // The semaphore is never closed, so acquiring cannot fail; if it did, the read would
        // simply run unbounded.
        let permit = slots.clone().acquire_owned().await.ok();
        ReadTurn { gate: self, org, slots, permit }
    }

    /// Organizations with reads running or waiting (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.orgs().len()
    }
}

/// One running read of an organization; see [`ReadGate::enter`].
pub(super) struct ReadTurn<'a> {
    gate: &'a ReadGate,
    org: OrganizationId,
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ReadTurn<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut orgs = self.gate.orgs();
        // Held by the map and this turn only: no other read of the organization runs or
        // waits (one that does holds a clone, taken under this lock).
        if Arc::strong_count(&self.slots) == 2 {
            orgs.remove(&self.org);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use super::*;

    /// Polls `f` once: whether it is still waiting.
    fn waits<F: Future>(f: Pin<&mut F>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    #[tokio::test]
    async fn an_organization_past_its_reads_waits_and_others_do_not() {
        let gate = ReadGate::new(2);
        let (a, b) = (OrganizationId::named("a"), OrganizationId::named("b"));
        let first = gate.enter(a).await;
        let _second = gate.enter(a).await;
        let third = gate.enter(a);
        tokio::pin!(third);
        // `a`'s third read waits (polled once: it is queued, not running) …
        assert!(waits(third.as_mut()));
        // … while `b` reads at once.
        let b_turn = tokio::time::timeout(Duration::from_secs(30), gate.enter(b)).await;
        assert!(b_turn.is_ok());
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(30), third).await.is_ok());
    }

    #[tokio::test]
    async fn an_organization_without_reads_leaves_nothing_behind() {
        let gate = ReadGate::new(1);
        let a = OrganizationId::named("a");
        let one = gate.enter(a).await;
        let two = gate.enter(a);
        tokio::pin!(two);
        assert!(waits(two.as_mut()));
        drop(one);
        let two = two.await;
        assert_eq!(gate.tracked(), 1);
        drop(two);
        assert_eq!(gate.tracked(), 0);
    }
}
