//! The endpoints whose announcements a call could not move out of the outbox
//! (`announce.rs`), kept per organization for this node's sweep task, each organization with
//! its own retry time.
//!
//! An organization handed over for the first time is due at once; one whose move failed (a
//! lock it keeps held) is due again after a pause that doubles, up to [`MAX_PAUSE`], while
//! its moves keep failing, and a hand-over meanwhile does not make it due sooner. The task
//! takes organizations never tried before those it tries again. So one organization that
//! keeps its endpoints locked costs the task one short lock wait per retry, at growing
//! intervals, and delays no other organization's announcements by more than that.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::types::Uuid;

/// The first pause before an organization whose move failed is tried again.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// The longest pause between two tries of one organization.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Most endpoints kept at once, all organizations together: past that, hand-overs are
/// dropped here and the periodic sweep finds their rows, which stay in the table.
const MAX_ENDPOINTS: usize = 10_000;

/// The handed-over endpoints, by organization.
#[derive(Debug, Default)]
pub(crate) struct Handed {
    orgs: HashMap<Uuid, Pending>,
    endpoints: usize,
}

#[derive(Debug)]
struct Pending {
    endpoints: HashSet<Uuid>,
    /// `None`: never tried, due at once.
    due: Option<Instant>,
    /// The pause after the next failed try.
    pause: Duration,
}

/// One organization's endpoints taken to be moved, with the pause that follows if it fails.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) org: Uuid,
    pub(crate) endpoints: Vec<Uuid>,
    pause: Duration,
}

impl Handed {
    /// Keeps `org`'s `endpoints`; due at once unless the organization waits for a retry.
    pub(crate) fn add(&mut self, org: Uuid, endpoints: impl IntoIterator<Item = Uuid>) {
        if self.endpoints >= MAX_ENDPOINTS {
            tracing::debug!(
                "too many announcements handed over; the periodic sweep moves the rest"
            );
            return;
        }
        let pending = self.orgs.entry(org).or_insert_with(|| Pending {
            endpoints: HashSet::new(),
            due: None,
            pause: FIRST_PAUSE,
        });
        for endpoint in endpoints {
            if self.endpoints >= MAX_ENDPOINTS {
                tracing::debug!(
                    "too many announcements handed over; the periodic sweep moves the rest"
                );
                break;
            }
            if pending.endpoints.insert(endpoint) {
                self.endpoints += 1;
            }
        }
    }

    /// Takes the organizations due at `now`: those never tried first, then by due time.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Batch> {
        let mut due: Vec<(Option<Instant>, Uuid)> = self
            .orgs
            .iter()
            .filter(|(_, p)| p.due.map_or(true, |at| at <= now))
            .map(|(org, p)| (p.due, *org))
            .collect();
        due.sort_unstable();
        due.into_iter()
            .filter_map(|(_, org)| {
                let pending = self.orgs.remove(&org)?;
                self.endpoints -= pending.endpoints.len();
                let endpoints = pending.endpoints.into_iter().collect();
                Some(Batch { org, endpoints, pause: pending.pause })
            })
            .collect()
    }

    /// `batch`'s move failed at `now` for `left` of its endpoints: they (with whatever was
    /// handed over for the organization meanwhile) are due again after its pause, and the
    /// pause after that is twice as long.
    pub(crate) fn failed(
        &mut self,
        batch: Batch,
        left: impl IntoIterator<Item = Uuid>,
        now: Instant,
    ) {
        self.add(batch.org, left);
        if let Some(pending) = self.orgs.get_mut(&batch.org) {
            pending.due = Some(now + batch.pause);
            pending.pause = (batch.pause * 2).min(MAX_PAUSE);
        }
    }

    /// When the next organization is due (`None`: nothing is kept).
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.orgs.values().map(|p| p.due.unwrap_or(now)).min()
    }

    /// The organizations waiting for a retry: the periodic sweep passes them by.
    pub(crate) fn waiting(&self) -> Vec<Uuid> {
        self.orgs.iter().filter(|(_, p)| p.due.is_some()).map(|(org, _)| *org).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_failed_organization_waits_a_doubling_pause_and_new_ones_go_first() {
        let t0 = Instant::now();
        let mut handed = Handed::default();
        handed.add(ids(1), [ids(10), ids(11)]);
        let mut first = handed.due(t0);
        assert_eq!(first.len(), 1);
        first[0].endpoints.sort();
        assert_eq!(first[0].endpoints, [ids(10), ids(11)]);
        // Held: one endpoint was moved, one was not.
        handed.failed(first.remove(0), [ids(11)], t0);
        assert!(handed.due(t0).is_empty(), "not due again at once");
        // A hand-over meanwhile does not make it due sooner; a new organization is due.
        handed.add(ids(1), [ids(12)]);
        handed.add(ids(2), [ids(20)]);
        assert_eq!(handed.waiting(), [ids(1)]);
        let now = handed.due(t0);
        assert_eq!(now.iter().map(|b| b.org).collect::<Vec<_>>(), [ids(2)]);
        assert_eq!(handed.next_due(t0), Some(t0 + FIRST_PAUSE));
        // Due after its pause, with both endpoints; failing again doubles the pause.
        let mut again = handed.due(t0 + FIRST_PAUSE);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].endpoints.len(), 2);
        let at = t0 + FIRST_PAUSE;
        let left = again[0].endpoints.clone();
        handed.failed(again.remove(0), left, at);
        assert_eq!(handed.next_due(at), Some(at + FIRST_PAUSE * 2));
        // Never past the longest pause.
        let mut at = at;
        for _ in 0..10 {
            at = handed.next_due(at).unwrap();
            let batch = handed.due(at).remove(0);
            let left = batch.endpoints.clone();
            handed.failed(batch, left, at);
        }
        assert_eq!(handed.next_due(at), Some(at + MAX_PAUSE));
    }

    #[test]
    fn organizations_never_tried_are_taken_before_retries() {
        let t0 = Instant::now();
        let mut handed = Handed::default();
        handed.add(ids(1), [ids(10)]);
        let batch = handed.due(t0).remove(0);
        handed.failed(batch, [ids(10)], t0);
        handed.add(ids(2), [ids(20)]);
        let order: Vec<Uuid> = handed.due(t0 + MAX_PAUSE).iter().map(|b| b.org).collect();
        assert_eq!(order, [ids(2), ids(1)]);
        assert_eq!(handed.next_due(t0), None, "nothing kept");
    }

    #[test]
    fn at_most_max_endpoints_are_kept() {
        let mut handed = Handed::default();
        handed.add(ids(1), (0..MAX_ENDPOINTS as u128 + 5).map(ids));
        handed.add(ids(2), [ids(u128::MAX)]);
        let kept: usize = handed.due(Instant::now()).iter().map(|b| b.endpoints.len()).sum();
        assert_eq!(kept, MAX_ENDPOINTS);
        assert_eq!(handed.endpoints, 0);
    }
}
