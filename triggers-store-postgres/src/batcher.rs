//! Group commit: writer tasks that drain the intake channel in batches.
//!
//! `insert_events` puts its request into a bounded channel (full → `Overloaded`, the
//! backpressure) and awaits the reply. Each of `writers` tasks takes the channel's receiver
//! in turn, collects requests (see [`collect`]: while another writer is writing, until that
//! write is done), releases the receiver (so the next writer collects while this one writes),
//! writes the batch ([`crate::insert`]) and answers every waiter after the commit. A failed
//! batch answers its waiters with the error; the task lives on and serves the next batch. The
//! tasks end when the last [`PgStore`](crate::PgStore) handle is dropped (the channel closes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, Mutex, Notify};

use crate::health::ConnectProbe;
use crate::insert::{self, InsertJob};

/// Limits of one batch.
#[derive(Debug, Clone)]
pub(crate) struct BatchLimits {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_wait: Duration,
}

/// Starts `writers` writer tasks on `rx`.
pub(crate) fn spawn(
    writers: usize,
    pool: PgPool,
    rx: mpsc::Receiver<InsertJob>,
    limits: BatchLimits,
    channel: Arc<str>,
    wake: Arc<Notify>,
    probe: Arc<ConnectProbe>,
) {
    let rx = Arc::new(Mutex::new(rx));
    let writing = Arc::new(Writing::default());
    for _ in 0..writers.max(1) {
        let (pool, rx, limits, channel, wake, probe, writing) = (
            pool.clone(),
            rx.clone(),
            limits.clone(),
            channel.clone(),
            wake.clone(),
            probe.clone(),
            writing.clone(),
        );
        tokio::spawn(async move { run(pool, rx, limits, channel, wake, probe, writing).await });
    }
}

/// How many writers are writing a batch, and a signal when one is done.
#[derive(Default)]
struct Writing {
    count: AtomicUsize,
    done: Notify,
}

impl Writing {
    /// Counts the caller as writing until the guard is dropped (also when the write panics).
    fn start(&self) -> WritingGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        WritingGuard(self)
    }
}

/// See [`Writing::start`].
struct WritingGuard<'a>(&'a Writing);

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

async fn run(
    pool: PgPool,
    rx: Arc<Mutex<mpsc::Receiver<InsertJob>>>,
    limits: BatchLimits,
    channel: Arc<str>,
    wake: Arc<Notify>,
    probe: Arc<ConnectProbe>,
    writing: Arc<Writing>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            match collect(&mut rx, &limits, &writing).await {
                Some(jobs) => jobs,
                None => return,
            }
        };
        let guard = writing.start();
        let written = insert::write(&pool, &jobs, &channel).await;
        drop(guard);
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
fn expired() -> triggers_core::StoreError {
    triggers_core::StoreError::Unavailable(format!(
        "{}: the insert waited for a database writer until its deadline; nothing was written",
        crate::error::NO_CONNECTION
    ))
}

/// Waits for one request, then takes whatever else is queued, up to the batch limits. While
/// another writer is writing its batch, this one keeps collecting until that write is done
/// or `max_wait` has passed since the first request (zero: never waits): requests arriving
/// meanwhile would queue for the database anyway, and one statement for all of them is
/// cheaper than several. When no other batch is being written, what is queued is written at
/// once — waiting would only add latency. Nothing spins: the waits are on the channel, the
/// other writer's signal and a timer. `None`: the channel is closed and empty.
async fn collect(
    rx: &mut mpsc::Receiver<InsertJob>,
    limits: &BatchLimits,
    writing: &Writing,
) -> Option<Vec<InsertJob>> {
    let first = loop {
        let job = rx.recv().await?;
        if job.deadline > tokio::time::Instant::now() {
            break job;
        }
        // Its caller waited for a writer as long as it may: answer without writing it.
        let _ = job.reply.send(Err(expired()));
    };
    let mut events = first.events.len();
    let mut bytes = first.bytes();
    let mut jobs = vec![first];
    // The timer is the runtime's (1 ms granularity): it only ends a wait in which nothing
    // arrives. While requests keep arriving, `until` ends it on time.
    let until = tokio::time::Instant::now() + limits.max_wait;
    let timer = tokio::time::sleep_until(until);
    tokio::pin!(timer);
    while events < limits.max_events && bytes < limits.max_bytes {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // Registered before the count is read, so a write ending in between still
                // wakes this wait.
                let done = writing.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if writing.count.load(Ordering::Acquire) == 0
                    || tokio::time::Instant::now() >= until
                {
                    break;
                }
                tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                    () = &mut done => break,
                    () = &mut timer => break,
                }
            }
        };
        if job.deadline <= tokio::time::Instant::now() {
            let _ = job.reply.send(Err(expired()));
            continue;
        }
        events += job.events.len();
        bytes += job.bytes();
        jobs.push(job);
    }
    Some(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use triggers_core::{Clock, OrganizationId, SystemClock};

    fn job() -> InsertJob {
        InsertJob {
            org: OrganizationId::named("acme"),
            events: Vec::new(),
            window: Duration::ZERO,
            now: SystemClock.now(),
            deadline: tokio::time::Instant::now() + Duration::from_secs(600),
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    fn limits(max_wait: Duration) -> BatchLimits {
        BatchLimits { max_events: 100, max_bytes: 1 << 20, max_wait }
    }

    /// A generous bound for waits that must end long before it (never a speed assertion).
    const SOON: Duration = Duration::from_secs(30);

    /// A channel with one request queued. Keep the sender: a closed channel ends collecting.
    fn one_queued() -> (mpsc::Sender<InsertJob>, mpsc::Receiver<InsertJob>) {
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(job()).unwrap();
        (tx, rx)
    }

    /// [`collect`] with `max_wait`; it must end within [`SOON`].
    async fn collect_soon(
        rx: &mut mpsc::Receiver<InsertJob>,
        max_wait: Duration,
        writing: &Writing,
    ) -> Vec<InsertJob> {
        let limits = limits(max_wait);
        tokio::time::timeout(SOON, collect(rx, &limits, writing)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn with_no_batch_being_written_what_is_queued_is_written_at_once() {
        let (_tx, mut rx) = one_queued();
        let writing = Writing::default();
        // A wait of an hour would outlast the bound: collecting must not wait at all.
        assert_eq!(collect_soon(&mut rx, Duration::from_secs(3600), &writing).await.len(), 1);
    }

    #[tokio::test]
    async fn while_another_batch_is_written_requests_are_collected_until_it_is_done() {
        let (tx, mut rx) = one_queued();
        let writing = Writing::default();
        let other = writing.start();
        let collected = collect_soon(&mut rx, Duration::from_secs(3600), &writing);
        let meanwhile = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(job()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(job()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(other);
        };
        let (jobs, ()) = tokio::join!(collected, meanwhile);
        assert_eq!(jobs.len(), 3, "the requests sent during the other write join");
    }

    #[tokio::test]
    async fn collecting_ends_after_max_wait_even_if_the_other_write_does_not() {
        let (_tx, mut rx) = one_queued();
        let writing = Writing::default();
        let _stuck = writing.start();
        assert_eq!(collect_soon(&mut rx, Duration::from_millis(20), &writing).await.len(), 1);
    }
}
