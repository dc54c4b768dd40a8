//! Group commit: writer tasks that take the queued insert requests in batches.
//!
//! `insert_events` puts its request into the bounded [`Intake`] (full → `Overloaded`, the
//! backpressure) and awaits the reply. Each of `writers` tasks takes a batch (see
//! [`collect`]: while another writer is writing, it waits until that write is done), writes
//! it ([`crate::insert`]) and answers every waiter after the commit, so one batch is being
//! collected while another commits. A failed batch answers its waiters with the error; the
//! task lives on and serves the next batch. The tasks end once the last
//! [`PgStore`](crate::PgStore) handle is dropped and the queue is empty.
//!
//! Every request of a batch waits for the whole statement, so the queue is fair between
//! organizations ([`Lanes`]): each organization's requests wait in a lane of their own, a
//! batch takes the lanes' requests round-robin within a predicted cost
//! (`PgConfig::batch_budget`), and a request predicted to cost more (a large batch fanning
//! out to many endpoints) is written alone, taking turns with batches of everyone else — and
//! never by two writers at once, so the other writer stays free for everyone else.
//! Predictions come from the time statements took, per event of each organization.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;
use triggers_core::lanes::{Laned, Lanes, Limits, Refused};
use triggers_core::store::{StoreError, StoreResult};
use triggers_core::OrganizationId;

use crate::health::ConnectProbe;
use crate::insert::{self, InsertJob};

/// Limits of one batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchLimits {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_wait: Duration,
}

impl Laned for InsertJob {
    type Key = OrganizationId;

    fn lane(&self) -> OrganizationId {
        self.org
    }

    fn units(&self) -> usize {
        // At least one, so that a request's predicted cost is never nothing.
        self.events.len().max(1)
    }

    fn bytes(&self) -> usize {
        InsertJob::bytes(self)
    }
}

/// The queue between `insert_events` and the writers.
pub(crate) struct Intake {
    state: Mutex<Queued>,
    /// Woken when a request is queued or the queue closes.
    ready: Notify,
}

struct Queued {
    lanes: Lanes<InsertJob>,
    closed: bool,
}

impl Intake {
    /// A queue that holds at most `capacity` requests, with a `budget` of predicted statement
    /// time per batch of several requests.
    pub(crate) fn new(capacity: usize, budget: Duration) -> Self {
        Self {
            state: Mutex::new(Queued { lanes: Lanes::new(capacity, budget), closed: false }),
            ready: Notify::new(),
        }
    }

    /// The queue, also after a panic while it was locked (every change under the lock is a
    /// single step of [`Lanes`]).
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for a writer. `Overloaded` if the queue is full or its organization has
    /// half of it, `Unavailable` once closed.
    pub(crate) fn push(&self, job: InsertJob) -> StoreResult<()> {
        {
            let mut queued = self.lock();
            if queued.closed {
                return Err(StoreError::Unavailable("the insert writers have stopped".into()));
            }
            match queued.lanes.push(job) {
                Ok(()) => {}
                Err((_, Refused::Full)) => {
                    return Err(StoreError::Overloaded("the insert queue is full".into()))
                }
                Err((_, Refused::LaneFull)) => {
                    return Err(StoreError::Overloaded(
                        "the organization's share of the insert queue (half of it) is full".into(),
                    ))
                }
            }
        }
        // One writer is enough to take it (a waiting one, or the next to look: the permit
        // is kept).
        self.ready.notify_one();
        Ok(())
    }

    /// Takes no more requests; the writers end once the queued ones are written.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Records that a statement writing `jobs` took `elapsed`, shared among its
    /// organizations by their events.
    fn record(&self, jobs: &[InsertJob], elapsed: Duration) {
        let mut events: HashMap<OrganizationId, usize> = HashMap::new();
        for job in jobs {
            *events.entry(job.org).or_default() += job.units();
        }
        let total = u32::try_from(events.values().sum::<usize>().max(1)).unwrap_or(u32::MAX);
        let per_event = elapsed / total;
        let mut queued = self.lock();
        for (org, n) in events {
            let share = per_event.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
            queued.lanes.record(&org, n, share);
        }
    }
}

/// Starts `writers` writer tasks on `intake`.
pub(crate) fn spawn(
    writers: usize,
    pool: PgPool,
    intake: Arc<Intake>,
    limits: BatchLimits,
    channel: Arc<str>,
    wake: Arc<Notify>,
    probe: Arc<ConnectProbe>,
) {
    let writing = Arc::new(Writing::default());
    for _ in 0..writers.max(1) {
        let (pool, intake, limits, channel, wake, probe, writing) = (
            pool.clone(),
            intake.clone(),
            limits.clone(),
            channel.clone(),
            wake.clone(),
            probe.clone(),
            writing.clone(),
        );
        tokio::spawn(async move { run(pool, intake, limits, channel, wake, probe, writing).await });
    }
}

/// How many writers are writing a batch (and how many of them a heavy one), and a signal
/// when one is done.
#[derive(Default)]
struct Writing {
    count: AtomicUsize,
    heavy: AtomicUsize,
    done: Notify,
}

impl Writing {
    /// Counts the caller as writing (a `heavy` batch if so) until the guard is dropped (also
    /// when the write panics).
    fn start(&self, heavy: bool) -> WritingGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        if heavy {
            self.heavy.fetch_add(1, Ordering::AcqRel);
        }
        WritingGuard { writing: self, heavy }
    }
}

/// See [`Writing::start`].
struct WritingGuard<'a> {
    writing: &'a Writing,
    heavy: bool,
}

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        if self.heavy {
            self.writing.heavy.fetch_sub(1, Ordering::AcqRel);
        }
        self.writing.count.fetch_sub(1, Ordering::AcqRel);
        self.writing.done.notify_waiters();
    }
}

async fn run(
    pool: PgPool,
    intake: Arc<Intake>,
    limits: BatchLimits,
    channel: Arc<str>,
    wake: Arc<Notify>,
    probe: Arc<ConnectProbe>,
    writing: Arc<Writing>,
) {
    while let Some((jobs, guard)) = collect(&intake, &limits, &writing).await {
        let written = insert::write(&pool, &jobs, &channel).await;
        drop(guard);
        intake.record(&jobs, written.busy);
        if written.deliveries {
            crate::listener::fire(&wake);
        }
        for (job, result) in jobs.into_iter().zip(written.results) {
            // A caller that gave up waiting is no reason to stop.
            let _ = job.reply.send(result.map_err(|e| probe.explain(e)));
        }
    }
}

/// The answer to a job that waited for a writer until its deadline.
fn expired() -> StoreError {
    StoreError::Unavailable(format!(
        "{}: the insert waited for a database writer until its deadline; nothing was written",
        crate::error::NO_CONNECTION
    ))
}

/// Waits for requests and takes the next batch (see the module docs), counted as being
/// written until the returned guard is dropped. While another writer is writing its batch,
/// this one leaves the requests queued until that write is done, `max_wait` has passed since
/// it first saw one, or a batch's worth of events is queued: requests arriving meanwhile
/// would queue for the database anyway, and one statement for all of them is cheaper than
/// several. When no other batch is being written, what is queued is taken at once — waiting
/// would only add latency. A heavy request is not taken while another writer writes one.
/// Nothing spins: the waits are on the queue, the other writer's signal and a timer. Requests
/// past their deadline are answered without being written. `None`: the queue is closed and
/// empty.
async fn collect<'w>(
    intake: &Intake,
    limits: &BatchLimits,
    writing: &'w Writing,
) -> Option<(Vec<InsertJob>, WritingGuard<'w>)> {
    let mut until: Option<Instant> = None;
    loop {
        // Registered before the state is read, so a change in between still wakes the wait.
        let arrived = intake.ready.notified();
        let done = writing.done.notified();
        tokio::pin!(arrived, done);
        arrived.as_mut().enable();
        done.as_mut().enable();
        // Until when to wait for more requests (`None`: for a change only).
        let mut collecting = None;
        let taken = {
            let mut queued = intake.lock();
            if queued.lanes.is_empty() {
                if queued.closed {
                    return None;
                }
                until = None;
                None
            } else {
                let now = Instant::now();
                let first = *until.get_or_insert(now + limits.max_wait);
                let others = writing.count.load(Ordering::Acquire);
                if others > 0 && now < first && queued.lanes.units() < limits.max_events {
                    collecting = Some(first);
                    None
                } else {
                    let take = Limits {
                        max_requests: usize::MAX,
                        max_units: limits.max_events,
                        max_bytes: limits.max_bytes,
                        heavy: writing.heavy.load(Ordering::Acquire) == 0,
                    };
                    let jobs = queued.lanes.next(&take);
                    let heavy = match jobs.as_slice() {
                        [one] => queued.lanes.is_heavy(one),
                        _ => false,
                    };
                    // Counted under the lock, so another writer never sees this batch as
                    // neither queued nor being written. Empty: only heavy requests are
                    // queued and another writer writes one.
                    (!jobs.is_empty()).then(|| (jobs, writing.start(heavy)))
                }
            }
        };
        if let Some((jobs, guard)) = taken {
            let now = Instant::now();
            let (live, late): (Vec<_>, Vec<_>) =
                jobs.into_iter().partition(|job| job.deadline > now);
            for job in late {
                // Its caller waited for a writer as long as it may.
                let _ = job.reply.send(Err(expired()));
            }
            if !live.is_empty() {
                return Some((live, guard));
            }
            continue;
        }
        let timer = async {
            match collecting {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut arrived => {}
            () = &mut done => {}
            () = timer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triggers_core::{Clock, SystemClock};

    fn job_of(org: &str) -> InsertJob {
        InsertJob {
            org: OrganizationId::named(org),
            events: Vec::new(),
            window: Duration::ZERO,
            now: SystemClock.now(),
            deadline: Instant::now() + Duration::from_secs(600),
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    fn job() -> InsertJob {
        job_of("acme")
    }

    fn limits(max_wait: Duration) -> BatchLimits {
        BatchLimits { max_events: 100, max_bytes: 1 << 20, max_wait }
    }

    const BUDGET: Duration = Duration::from_millis(20);

    /// A generous bound for waits that must end long before it (never a speed assertion).
    const SOON: Duration = Duration::from_secs(30);

    /// A queue with one request queued.
    fn one_queued() -> Intake {
        let intake = Intake::new(8, BUDGET);
        intake.push(job()).unwrap();
        intake
    }

    /// [`collect`] with `max_wait`; it must end within [`SOON`].
    async fn collect_soon(
        intake: &Intake,
        max_wait: Duration,
        writing: &Writing,
    ) -> Vec<InsertJob> {
        let limits = limits(max_wait);
        let collected = tokio::time::timeout(SOON, collect(intake, &limits, writing));
        collected.await.unwrap().unwrap().0
    }

    #[tokio::test]
    async fn with_no_batch_being_written_what_is_queued_is_written_at_once() {
        let intake = one_queued();
        let writing = Writing::default();
        // A wait of an hour would outlast the bound: collecting must not wait at all.
        assert_eq!(collect_soon(&intake, Duration::from_secs(3600), &writing).await.len(), 1);
    }

    #[tokio::test]
    async fn while_another_batch_is_written_requests_are_collected_until_it_is_done() {
        let intake = one_queued();
        let writing = Writing::default();
        let other = writing.start(false);
        let collected = collect_soon(&intake, Duration::from_secs(3600), &writing);
        let meanwhile = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            intake.push(job()).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            intake.push(job()).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(other);
        };
        let (jobs, ()) = tokio::join!(collected, meanwhile);
        assert_eq!(jobs.len(), 3, "the requests sent during the other write join");
    }

    #[tokio::test]
    async fn collecting_ends_after_max_wait_even_if_the_other_write_does_not() {
        let intake = one_queued();
        let writing = Writing::default();
        let _stuck = writing.start(false);
        assert_eq!(collect_soon(&intake, Duration::from_millis(20), &writing).await.len(), 1);
    }

    #[tokio::test]
    async fn a_heavy_request_waits_while_another_writer_writes_one_and_others_go_on() {
        let intake = Intake::new(8, BUDGET);
        // Organization `big`'s statements took 1 s per event: its next request is heavy.
        intake.record(&[job_of("big")], Duration::from_secs(1));
        intake.record(&[job_of("small")], Duration::from_millis(1));
        intake.push(job_of("big")).unwrap();
        intake.push(job_of("small")).unwrap();
        let writing = Writing::default();
        let other_heavy = writing.start(true);
        let first = collect_soon(&intake, Duration::ZERO, &writing).await;
        assert_eq!(
            first.iter().map(|j| j.org).collect::<Vec<_>>(),
            [OrganizationId::named("small")]
        );
        // Only the heavy request is left: it waits for the other heavy write to end.
        let limits = limits(Duration::ZERO);
        let waiting =
            tokio::time::timeout(Duration::from_millis(100), collect(&intake, &limits, &writing));
        assert!(waiting.await.is_err(), "a second heavy write must not start");
        drop(other_heavy);
        let second = collect_soon(&intake, Duration::ZERO, &writing).await;
        assert_eq!(
            second.iter().map(|j| j.org).collect::<Vec<_>>(),
            [OrganizationId::named("big")]
        );
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_without_being_written() {
        let intake = Intake::new(8, BUDGET);
        let (reply, answer) = tokio::sync::oneshot::channel();
        intake.push(InsertJob { deadline: Instant::now(), reply, ..job() }).unwrap();
        intake.push(job_of("other")).unwrap();
        let writing = Writing::default();
        let jobs = collect_soon(&intake, Duration::ZERO, &writing).await;
        assert_eq!(
            jobs.iter().map(|j| j.org).collect::<Vec<_>>(),
            [OrganizationId::named("other")]
        );
        assert!(matches!(answer.await.unwrap(), Err(StoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_closed_queue_is_written_out_then_ends_collecting() {
        let intake = one_queued();
        intake.close();
        assert!(matches!(intake.push(job()), Err(StoreError::Unavailable(_))));
        let writing = Writing::default();
        assert_eq!(collect_soon(&intake, Duration::ZERO, &writing).await.len(), 1);
        let limits = limits(Duration::ZERO);
        assert!(tokio::time::timeout(SOON, collect(&intake, &limits, &writing))
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn one_organization_fills_half_the_queue_and_a_full_queue_is_overloaded() {
        let intake = Intake::new(2, BUDGET);
        intake.push(job_of("a")).unwrap();
        let share = intake.push(job_of("a"));
        assert!(matches!(share, Err(StoreError::Overloaded(m)) if m.contains("share")));
        intake.push(job_of("b")).unwrap();
        let full = intake.push(job_of("c"));
        assert!(matches!(full, Err(StoreError::Overloaded(m)) if m.contains("queue is full")));
    }
}
