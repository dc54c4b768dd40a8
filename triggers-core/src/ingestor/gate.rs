//! How the organizations share the store's request capacity on this node.
//!
//! The store serves requests from small shared pools (SQLite: a few reader connections;
//! PostgreSQL: the connection pool that writes and claims use too), first come, first served.
//! Without a gate, one organization that keeps many large inbox pages (or acks, or endpoint
//! changes) in flight fills the pool, and every other organization's request queues behind
//! all of them (BENCHMARKS.md measured a small inbox read going from 0.3 ms to 265 ms).
//!
//! [`StoreGate`] lets at most [`IngestorConfig::store_concurrency`](super::IngestorConfig)
//! organization requests reach the store at once. One organization may hold all of these
//! places but one: the last is kept for everyone else, so another organization's request
//! finds a place at once however busy the first one is. Once requests wait, a place that
//! frees goes to the waiting organization with the fewest requests running (ties: the one
//! waiting longest), and each organization's requests keep their order. (With one place,
//! nothing is kept back.) Ingestion does not pass the gate: the stores queue inserts fairly
//! themselves (`triggers_core::lanes`).
//!
//! A place is held until the store is done with the request (`Ingestor::at_store` runs the
//! request's store calls in a task of its own that owns the [`Turn`]), not until the
//! request is dropped: a client that hangs up midway leaves a SQLite read running on the
//! blocking pool, or a query running on the PostgreSQL server, and could otherwise hang up
//! and ask again to keep any number of them running.
//!
//! An organization may have at most [`MAX_WAITING_PER_ORG`] requests waiting: more are
//! refused at once with [`Error::Overloaded`] (HTTP 503 `overloaded` and `Retry-After`),
//! so one organization's flood cannot park an unbounded number of requests (and the
//! connections they hold) behind its own slow ones.
//!
//! The gate holds one small entry per organization with requests running or waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::domain::OrganizationId;
use crate::error::Error;

/// The most requests of one organization that wait for a place at once.
pub(super) const MAX_WAITING_PER_ORG: usize = 64;

/// Shares `places` among organizations; see the module docs.
pub(super) struct StoreGate {
    state: Mutex<State>,
    /// The most places one organization may hold.
    per_org: usize,
}

struct State {
    free: usize,
    /// Requests running per organization (no entry: none).
    running: HashMap<OrganizationId, usize>,
    /// Each waiting organization's requests, oldest first; a sender hands over a place.
    waiting: HashMap<OrganizationId, VecDeque<oneshot::Sender<()>>>,
    /// The waiting organizations, longest waiting first.
    order: VecDeque<OrganizationId>,
}

impl StoreGate {
    /// A gate with `places` places (at least one).
    pub(super) fn new(places: usize) -> Self {
        let places = places.max(1);
        let state = State {
            free: places,
            running: HashMap::new(),
            waiting: HashMap::new(),
            order: VecDeque::new(),
        };
        Self { state: Mutex::new(state), per_org: (places - 1).max(1) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is completed before it is released, except by a panic
        // in the standard collections; the state is then as consistent as they left it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a place for one request of `org`; the request runs while the turn is held.
    /// `Overloaded` at once if [`MAX_WAITING_PER_ORG`] of its requests wait already.
    pub(super) async fn enter(self: &Arc<Self>, org: OrganizationId) -> Result<Turn, Error> {
        let rx = {
            let mut s = self.state();
            // Nobody waits and a place is free: take it (what `dispatch` would do) without
            // queueing.
            let running = s.running.get(&org).copied().unwrap_or(0);
            if s.order.is_empty() && s.free > 0 && running < self.per_org {
                s.free -= 1;
                *s.running.entry(org).or_default() += 1;
                return Ok(Turn { gate: self.clone(), org });
            }
            if let Some(queue) = s.waiting.get_mut(&org) {
                // Waiters whose request was dropped leave their sender behind; they do not
                // count.
                queue.retain(|tx| !tx.is_closed());
                if queue.len() >= MAX_WAITING_PER_ORG {
                    return Err(Error::Overloaded(std::time::Duration::from_secs(1)));
                }
            }
            let (tx, rx) = oneshot::channel();
            let queue = s.waiting.entry(org).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                s.order.push_back(org);
            }
            self.dispatch(&mut s);
            rx
        };
        let mut waiting = Waiting { gate: self, org, rx: Some(rx) };
        if let Some(rx) = waiting.rx.as_mut() {
            // Only `dispatch` drops a sender, after a send; a failed send means this
            // receiver had closed, which it does only when dropped. So this is `Ok`.
            let _ = rx.await;
        }
        waiting.rx = None;
        Ok(Turn { gate: self.clone(), org })
    }

    /// A place of `org` freed.
    fn leave(&self, org: OrganizationId) {
        let mut s = self.state();
        if let Some(n) = s.running.get_mut(&org) {
            *n -= 1;
            if *n == 0 {
                s.running.remove(&org);
            }
        }
        s.free += 1;
        self.dispatch(&mut s);
    }

    /// Hands the free places to waiting organizations below their share, the one with the
    /// fewest requests running first.
    fn dispatch(&self, s: &mut State) {
        while s.free > 0 {
            let running = |o: &OrganizationId| s.running.get(o).copied().unwrap_or(0);
            let next = s
                .order
                .iter()
                .enumerate()
                .filter(|(_, o)| running(o) < self.per_org)
                .min_by_key(|(at, o)| (running(o), *at))
                .map(|(at, o)| (at, *o));
            let Some((at, next)) = next else { return };
            let tx = s.waiting.get_mut(&next).and_then(VecDeque::pop_front);
            if s.waiting.get(&next).map_or(true, VecDeque::is_empty) {
                s.waiting.remove(&next);
                s.order.remove(at);
            }
            // A waiter that left (its request was dropped) is skipped.
            if tx.is_some_and(|tx| tx.send(()).is_ok()) {
                s.free -= 1;
                *s.running.entry(next).or_default() += 1;
            }
        }
    }

    /// Organizations with requests running or waiting (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        let s = self.state();
        let mut orgs: std::collections::HashSet<_> = s.running.keys().collect();
        orgs.extend(s.waiting.keys());
        orgs.len()
    }
}

/// A request waiting for a place. Dropped before it got one, it gives back a place handed
/// over in the meantime.
struct Waiting<'a> {
    gate: &'a StoreGate,
    org: OrganizationId,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            // No place is handed over after this; one handed over before is this org's.
            rx.close();
            if rx.try_recv().is_ok() {
                self.gate.leave(self.org);
            }
        }
    }
}

/// One request of an organization at the store; see [`StoreGate::enter`]. It owns its
/// place, so it can move into the task that does the request's store work.
pub(super) struct Turn {
    gate: Arc<StoreGate>,
    org: OrganizationId,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.gate.leave(self.org);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    use super::*;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(self: Arc<Self>) {}
    }

    /// Polls `f` once: its output, if it is done.
    fn poll_once<F: Future>(f: Pin<&mut F>) -> Option<F::Output> {
        let waker = Waker::from(Arc::new(NoWake));
        match f.poll(&mut Context::from_waker(&waker)) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    /// Polls `f` once: whether it is still waiting (a turn it got is given back at once).
    fn waits<F: Future>(f: Pin<&mut F>) -> bool {
        poll_once(f).is_none()
    }

    fn org(name: &str) -> OrganizationId {
        OrganizationId::named(name)
    }

    #[tokio::test]
    async fn one_organization_may_hold_every_place_but_one() {
        let gate = Arc::new(StoreGate::new(3));
        let _turns = [gate.enter(org("a")).await, gate.enter(org("a")).await];
        let a3 = gate.enter(org("a"));
        tokio::pin!(a3);
        assert!(waits(a3.as_mut()), "the last place is kept for the others");
        let b1 = gate.enter(org("b"));
        tokio::pin!(b1);
        assert!(matches!(poll_once(b1.as_mut()), Some(Ok(_))), "another gets it at once");
    }

    #[tokio::test]
    async fn a_freed_place_goes_to_the_organization_with_the_fewest_running() {
        let gate = Arc::new(StoreGate::new(3));
        let a1 = gate.enter(org("a")).await;
        let _a2 = gate.enter(org("a")).await;
        let _b1 = gate.enter(org("b")).await;
        let (a3, b2, c1) = (gate.enter(org("a")), gate.enter(org("b")), gate.enter(org("c")));
        tokio::pin!(a3, b2, c1);
        assert!(waits(a3.as_mut()) && waits(b2.as_mut()) && waits(c1.as_mut()));
        drop(a1);
        // `a` and `b` waited longer, but have requests running and `c` none.
        let _c1 = poll_once(c1.as_mut()).expect("c got the place").unwrap();
        assert!(waits(a3.as_mut()) && waits(b2.as_mut()));
    }

    #[tokio::test]
    async fn with_one_place_nothing_is_kept_back() {
        let gate = Arc::new(StoreGate::new(1));
        let a1 = gate.enter(org("a"));
        tokio::pin!(a1);
        assert!(matches!(poll_once(a1.as_mut()), Some(Ok(_))));
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_passes_its_place_on() {
        let gate = Arc::new(StoreGate::new(1));
        let a1 = gate.enter(org("a")).await;
        {
            let b1 = gate.enter(org("b"));
            tokio::pin!(b1);
            assert!(waits(b1.as_mut()));
            // `b1` is dropped while it waits.
        }
        let c1 = gate.enter(org("c"));
        tokio::pin!(c1);
        assert!(waits(c1.as_mut()));
        drop(a1);
        assert!(!waits(c1.as_mut()), "the place skipped the waiter that left");
    }

    #[tokio::test]
    async fn a_place_handed_to_a_waiter_that_then_leaves_is_not_lost() {
        let gate = Arc::new(StoreGate::new(1));
        let a1 = gate.enter(org("a")).await;
        let b1 = gate.enter(org("b"));
        let mut b1 = Box::pin(b1);
        assert!(waits(b1.as_mut()));
        let c1 = gate.enter(org("c"));
        tokio::pin!(c1);
        assert!(waits(c1.as_mut()));
        drop(a1); // handed to `b1`, which has not looked yet …
        drop(b1); // … and leaves: the place goes on to `c1`.
        assert!(!waits(c1.as_mut()));
    }

    #[tokio::test]
    async fn an_organization_without_requests_leaves_nothing_behind() {
        let gate = Arc::new(StoreGate::new(1));
        let one = gate.enter(org("a")).await;
        let two = gate.enter(org("a"));
        tokio::pin!(two);
        assert!(waits(two.as_mut()));
        assert_eq!(gate.tracked(), 1);
        drop(one);
        let two = two.await;
        drop(two);
        assert_eq!(gate.tracked(), 0);
        assert_eq!(gate.state().free, 1);
    }

    #[tokio::test]
    async fn an_organization_waits_with_at_most_its_share_of_requests() {
        let gate = Arc::new(StoreGate::new(2));
        let _a1 = gate.enter(org("a")).await.unwrap();
        let mut waiting: Vec<_> =
            (0..MAX_WAITING_PER_ORG).map(|_| Box::pin(gate.enter(org("a")))).collect();
        assert!(waiting.iter_mut().all(|w| waits(w.as_mut())));
        let refused = gate.enter(org("a"));
        tokio::pin!(refused);
        let refused = poll_once(refused.as_mut());
        assert!(matches!(refused, Some(Err(Error::Overloaded(_)))), "one more is refused at once");
        // Another organization is not: it takes the place kept for the others.
        let b1 = gate.enter(org("b"));
        tokio::pin!(b1);
        assert!(matches!(poll_once(b1.as_mut()), Some(Ok(_))));
        // A waiter that gives up makes room for another.
        waiting.pop();
        let again = gate.enter(org("a"));
        tokio::pin!(again);
        assert!(waits(again.as_mut()), "waits, not refused");
    }
}
