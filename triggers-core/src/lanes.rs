//! Fair intake for a store's group-commit writer: one lane per organization, batches by
//! predicted cost.
//!
//! A store that commits write requests in groups (the SQLite writer thread, the PostgreSQL
//! group-commit writers) makes every request of a group wait for the whole group. Taken in
//! arrival order, one organization's heavy requests — a batch of 1 000 events fanning out to
//! 50 endpoints writes 51 000 rows — make every other organization's requests that queued
//! with them wait for all of them (BENCHMARKS.md measured 0.7 – 2.5 s). [`Lanes`] queues
//! requests by organization and hands out batches so that
//!
//! - a batch takes the lanes' requests round-robin (one request per lane per pass), each lane
//!   in arrival order;
//! - a batch's predicted cost stays within a **budget**, except for a batch of one: a request
//!   predicted to cost more than the budget (a *heavy* one) is only ever written alone, and
//!   only when its lane is at the front of the round;
//! - the front lane goes to the back after every batch it took part in, and so does a lane
//!   whose request turned out heavy ([`Lanes::record`]), so a heavy lane takes turns with
//!   batches of everyone else: another organization's request waits for at most one heavy
//!   request (plus the batch it is written in), whatever the heavy organization queues.
//!
//! Predictions come from what the store measured: [`Lanes::record`] keeps, per lane, a
//! running average of the time per unit (an event, for an insert) its requests took, and a
//! lane not measured yet is predicted by the average over all lanes. A prediction is only a
//! schedule: a wrong one makes one batch slower or one request lonelier, never a wrong write.
//! Lanes remember at most [`REMEMBERED`] averages (then start over), so the memory they hold
//! is bounded by the number of queued requests plus that.
//!
//! The queue is bounded too: [`Lanes::push`] refuses a request once `capacity` requests are
//! queued — the store's backpressure — and once its lane holds half of that, so that one
//! organization filling the queue leaves the other half to everyone else ([`Refused`]).
//!
//! ```
//! use std::time::Duration;
//! use triggers_core::lanes::{Laned, Lanes, Limits};
//!
//! struct Insert { org: u32, events: usize }
//! impl Laned for Insert {
//!     type Key = u32;
//!     fn lane(&self) -> u32 { self.org }
//!     fn units(&self) -> usize { self.events }
//! }
//!
//! let mut lanes = Lanes::new(100, Duration::from_millis(20));
//! // Organization 1's inserts have cost 1 ms per event.
//! lanes.record(&1, 1, Duration::from_millis(1));
//! lanes.push(Insert { org: 1, events: 1000 }).ok();
//! lanes.push(Insert { org: 1, events: 1000 }).ok();
//! lanes.push(Insert { org: 2, events: 1 }).ok();
//! let limits = Limits::default();
//! let first = lanes.next(&limits); // organization 1's first insert, alone (heavy)
//! assert_eq!((first.len(), first[0].org), (1, 1));
//! let second = lanes.next(&limits); // then organization 2, before 1's second insert
//! assert_eq!((second.len(), second[0].org), (1, 2));
//! ```

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

/// A queued request: which lane it belongs to and how big it is.
pub trait Laned {
    /// The lane: the organization, or whatever else the store queues fairly by.
    type Key: Clone + Eq + Hash;
    /// This request's lane.
    fn lane(&self) -> Self::Key;
    /// Its size in the unit its cost is predicted by (events for an insert; 1 for a request
    /// of no particular size).
    fn units(&self) -> usize;
    /// Its bytes, for [`Limits::max_bytes`].
    fn bytes(&self) -> usize {
        0
    }
}

/// What one batch may hold. A batch always takes at least one request when a lane allows it,
/// however big (a request larger than a limit is written alone).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests per batch.
    pub max_requests: usize,
    /// Units per batch (see [`Laned::units`]).
    pub max_units: usize,
    /// Bytes per batch (see [`Laned::bytes`]).
    pub max_bytes: usize,
    /// Whether a heavy request may be taken now (a store with several writers takes at most
    /// one at a time, so that another writer is left for everyone else).
    pub heavy: bool,
}

impl Default for Limits {
    /// No limits, heavy requests allowed.
    fn default() -> Self {
        Self { max_requests: usize::MAX, max_units: usize::MAX, max_bytes: usize::MAX, heavy: true }
    }
}

/// Why [`Lanes::push`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `capacity` requests.
    Full,
    /// The request's lane holds half of `capacity`: its organization's share.
    LaneFull,
}

/// How many lanes' cost averages are remembered before they are all forgotten.
pub const REMEMBERED: usize = 4096;

/// Requests queued by lane; see the [module docs](self).
pub struct Lanes<J: Laned> {
    lanes: HashMap<J::Key, VecDeque<J>>,
    /// The lanes with queued requests, in turn order.
    order: VecDeque<J::Key>,
    len: usize,
    units: usize,
    capacity: usize,
    /// The predicted cost a batch of several requests stays within; a request predicted to
    /// cost more is heavy.
    budget: Duration,
    costs: Costs<J::Key>,
}

impl<J: Laned> Lanes<J> {
    /// An empty queue that holds at most `capacity` requests (at least one), with a `budget`
    /// of predicted cost per batch of several requests.
    pub fn new(capacity: usize, budget: Duration) -> Self {
        Self {
            lanes: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            units: 0,
            capacity: capacity.max(1),
            budget,
            costs: Costs { lanes: HashMap::new(), all: 0 },
        }
    }

    /// How many requests are queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no request is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many units are queued (the store may take a batch early once a batch's worth is).
    pub fn units(&self) -> usize {
        self.units
    }

    /// Queues `request` at the end of its lane; gives it back if `capacity` requests are
    /// queued already, or half of that (rounded up) in its lane.
    pub fn push(&mut self, request: J) -> Result<(), (J, Refused)> {
        if self.len >= self.capacity {
            return Err((request, Refused::Full));
        }
        let key = request.lane();
        let lane = self.lanes.entry(key.clone()).or_default();
        if lane.len() >= self.capacity.div_ceil(2) {
            return Err((request, Refused::LaneFull));
        }
        if lane.is_empty() {
            self.order.push_back(key);
        }
        self.units = self.units.saturating_add(request.units());
        lane.push_back(request);
        self.len += 1;
        Ok(())
    }

    /// The predicted cost of `request` (see [`record`](Self::record)).
    pub fn predict(&self, request: &J) -> Duration {
        self.costs.predict(&request.lane(), request.units())
    }

    /// Whether `request` is predicted to cost more than the budget (and so is written alone).
    pub fn is_heavy(&self, request: &J) -> bool {
        self.predict(request) > self.budget
    }

    /// Takes the next batch (see the [module docs](self)); empty if nothing is queued or
    /// only heavy requests are and `limits.heavy` is false.
    pub fn next(&mut self, limits: &Limits) -> Vec<J> {
        let mut batch = Vec::new();
        let (mut units, mut bytes, mut cost) = (0usize, 0usize, Duration::ZERO);
        let mut front_took_part = false;
        // The positions in `order` of the lanes that may still give a request this batch: a
        // lane whose head does not fit gives nothing more (its requests stay in order).
        let mut open: Vec<usize> = (0..self.order.len()).collect();
        while !open.is_empty() && batch.len() < limits.max_requests {
            open.retain(|&i| {
                if batch.len() >= limits.max_requests {
                    return false;
                }
                let Some(lane) = self.lanes.get_mut(&self.order[i]) else { return false };
                let Some(head) = lane.front() else { return false };
                let (u, b) = (head.units(), head.bytes());
                let c = self.costs.predict(&self.order[i], u);
                let fits = if batch.is_empty() {
                    // A heavy request starts a batch only from the front, when allowed.
                    c <= self.budget || (limits.heavy && i == 0)
                } else {
                    cost + c <= self.budget
                        && units.saturating_add(u) <= limits.max_units
                        && bytes.saturating_add(b) <= limits.max_bytes
                };
                if !fits {
                    return false;
                }
                if let Some(request) = lane.pop_front() {
                    batch.push(request);
                }
                (units, bytes, cost) = (units.saturating_add(u), bytes.saturating_add(b), cost + c);
                front_took_part |= i == 0;
                !lane.is_empty()
            });
        }
        self.len -= batch.len();
        self.units = self.units.saturating_sub(units);
        if front_took_part {
            self.order.rotate_left(1);
        }
        let lanes = &mut self.lanes;
        self.order.retain(|key| match lanes.get(key) {
            Some(lane) if !lane.is_empty() => true,
            _ => {
                lanes.remove(key);
                false
            }
        });
        batch
    }

    /// Records that requests of lane `key` with `units` units in all took `elapsed`: the
    /// lane's cost per unit becomes the average of its previous value and this one. A lane
    /// that took more than the budget (a heavy request predicted light, written with
    /// others) goes to the back of the round, as if it had been written alone.
    pub fn record(&mut self, key: &J::Key, units: usize, elapsed: Duration) {
        self.costs.record(key, units, elapsed);
        if elapsed > self.budget {
            if let Some(at) = self.order.iter().position(|k| k == key) {
                if let Some(lane) = self.order.remove(at) {
                    self.order.push_back(lane);
                }
            }
        }
    }
}

/// Running averages of the cost per unit, per lane and over all lanes, in nanoseconds.
struct Costs<K> {
    lanes: HashMap<K, u64>,
    all: u64,
}

impl<K: Clone + Eq + Hash> Costs<K> {
    fn predict(&self, key: &K, units: usize) -> Duration {
        let per_unit = self.lanes.get(key).copied().unwrap_or(self.all);
        Duration::from_nanos(per_unit.saturating_mul(u64::try_from(units).unwrap_or(u64::MAX)))
    }

    fn record(&mut self, key: &K, units: usize, elapsed: Duration) {
        let units = u128::try_from(units.max(1)).unwrap_or(u128::MAX);
        let sample = u64::try_from(elapsed.as_nanos() / units).unwrap_or(u64::MAX);
        if self.lanes.len() >= REMEMBERED && !self.lanes.contains_key(key) {
            self.lanes.clear();
        }
        let average = |old: u64| old / 2 + sample / 2;
        self.lanes.entry(key.clone()).and_modify(|c| *c = average(*c)).or_insert(sample);
        self.all = if self.all == 0 { sample } else { average(self.all) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct R {
        org: u32,
        n: usize,
        seq: u32,
    }

    impl Laned for R {
        type Key = u32;
        fn lane(&self) -> u32 {
            self.org
        }
        fn units(&self) -> usize {
            self.n
        }
        fn bytes(&self) -> usize {
            self.n * 10
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> Limits {
        Limits::default()
    }

    fn lanes(capacity: usize) -> Lanes<R> {
        Lanes::new(capacity, 20 * MS)
    }

    /// `(org, seq)` of each request of a batch.
    fn ids(batch: &[R]) -> Vec<(u32, u32)> {
        batch.iter().map(|r| (r.org, r.seq)).collect()
    }

    fn queue(lanes: &mut Lanes<R>, requests: &[(u32, usize)]) {
        for (seq, &(org, n)) in requests.iter().enumerate() {
            lanes.push(R { org, n, seq: seq as u32 }).unwrap();
        }
    }

    #[test]
    fn light_requests_of_all_lanes_go_together_round_robin() {
        let mut lanes = lanes(100);
        queue(&mut lanes, &[(1, 1), (1, 1), (1, 1), (2, 1), (3, 1)]);
        let limits = Limits { max_requests: 4, ..limits() };
        assert_eq!(ids(&lanes.next(&limits)), [(1, 0), (2, 3), (3, 4), (1, 1)]);
        assert_eq!(ids(&lanes.next(&limits)), [(1, 2)]);
        assert!(lanes.is_empty() && lanes.next(&limits).is_empty());
    }

    #[test]
    fn a_heavy_lane_takes_turns_with_everyone_else() {
        let mut lanes = lanes(100);
        lanes.record(&1, 1, MS); // organization 1: 1 ms per event
        queue(&mut lanes, &[(1, 100), (1, 100), (1, 100), (2, 1), (2, 1), (3, 1)]);
        // Heavy and at the front: alone.
        assert_eq!(ids(&lanes.next(&limits())), [(1, 0)]);
        // Then the others, without organization 1's next heavy request.
        assert_eq!(ids(&lanes.next(&limits())), [(2, 3), (3, 5), (2, 4)]);
        lanes.push(R { org: 3, n: 1, seq: 6 }).unwrap();
        assert_eq!(ids(&lanes.next(&limits())), [(1, 1)]);
        assert_eq!(ids(&lanes.next(&limits())), [(3, 6)]);
        assert_eq!(ids(&lanes.next(&limits())), [(1, 2)]);
    }

    #[test]
    fn a_batch_stays_within_the_budget_and_a_lane_keeps_its_order() {
        let mut lanes = lanes(100);
        lanes.record(&1, 1, MS);
        lanes.record(&2, 1, MS);
        // 8 + 8 ms fit; organization 1's 10 ms does not, nor (in order) its 1 ms after it.
        queue(&mut lanes, &[(1, 8), (2, 8), (1, 10), (1, 1), (2, 4)]);
        assert_eq!(ids(&lanes.next(&limits())), [(1, 0), (2, 1), (2, 4)]);
        assert_eq!(ids(&lanes.next(&limits())), [(1, 2), (1, 3)]);
    }

    #[test]
    fn without_heavy_allowed_heavy_requests_wait_and_keep_their_turn() {
        let mut lanes = lanes(100);
        lanes.record(&1, 1, MS);
        queue(&mut lanes, &[(1, 100), (2, 1)]);
        let no_heavy = Limits { heavy: false, ..limits() };
        assert_eq!(ids(&lanes.next(&no_heavy)), [(2, 1)]);
        assert!(lanes.next(&no_heavy).is_empty(), "only heavy work is left");
        lanes.push(R { org: 2, n: 1, seq: 2 }).unwrap();
        // Organization 1 stayed at the front: it goes first once heavy work is allowed.
        assert_eq!(ids(&lanes.next(&limits())), [(1, 0)]);
    }

    #[test]
    fn unit_and_byte_limits_end_a_batch_but_never_refuse_its_first_request() {
        let mut lanes = lanes(100);
        queue(&mut lanes, &[(1, 50), (2, 30), (3, 30)]);
        let limits = Limits { max_units: 40, ..limits() };
        assert_eq!(ids(&lanes.next(&limits)), [(1, 0)]);
        assert_eq!(ids(&lanes.next(&limits)), [(2, 1)]);
        let limits = Limits { max_bytes: 300, ..limits };
        assert_eq!(ids(&lanes.next(&limits)), [(3, 2)]);
    }

    #[test]
    fn a_lane_whose_request_turned_out_heavy_goes_to_the_back() {
        let mut lanes = lanes(100);
        queue(&mut lanes, &[(1, 1), (2, 1000), (2, 1000), (1, 1)]);
        // Nothing measured yet: both lanes' requests go together.
        let three = Limits { max_requests: 3, ..limits() };
        assert_eq!(ids(&lanes.next(&three)), [(1, 0), (2, 1), (1, 3)]);
        lanes.push(R { org: 1, n: 1, seq: 4 }).unwrap();
        // Organization 2's request took 1 s: organization 1's next one goes first.
        lanes.record(&2, 1000, 1000 * MS);
        assert_eq!(ids(&lanes.next(&limits())), [(1, 4)]);
        assert_eq!(ids(&lanes.next(&limits())), [(2, 2)]);
    }

    #[test]
    fn a_lane_never_measured_is_predicted_by_the_average_of_all() {
        let mut lanes = lanes(100);
        lanes.record(&1, 10, 10 * MS);
        assert_eq!(lanes.predict(&R { org: 9, n: 30, seq: 0 }), 30 * MS);
        lanes.record(&9, 30, 90 * MS);
        assert_eq!(lanes.predict(&R { org: 9, n: 1, seq: 0 }), 3 * MS);
        lanes.record(&9, 1, MS);
        assert_eq!(lanes.predict(&R { org: 9, n: 1, seq: 0 }), 2 * MS, "the average of 3 and 1");
    }

    #[test]
    fn a_full_queue_gives_the_request_back() {
        let mut lanes = lanes(2);
        queue(&mut lanes, &[(1, 1), (2, 1)]);
        let (refused, why) = lanes.push(R { org: 3, n: 1, seq: 9 }).unwrap_err();
        assert_eq!((refused.seq, why, lanes.len(), lanes.units()), (9, Refused::Full, 2, 2));
        lanes.next(&limits());
        assert!(lanes.push(refused).is_ok());
    }

    #[test]
    fn one_lane_holds_at_most_half_the_queue() {
        let mut lanes = lanes(5);
        queue(&mut lanes, &[(1, 1), (1, 1), (1, 1)]);
        let (_, why) = lanes.push(R { org: 1, n: 1, seq: 9 }).unwrap_err();
        assert_eq!((why, lanes.len()), (Refused::LaneFull, 3));
        // The rest is everyone else's.
        queue(&mut lanes, &[(2, 1), (3, 1)]);
        assert_eq!(lanes.len(), 5);
    }
}
