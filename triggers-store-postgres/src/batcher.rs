//! Group commit: writer tasks that drain the intake channel in batches.
//!
//! `insert_events` puts its request into a bounded channel (full → `Overloaded`, the
//! backpressure) and awaits the reply. Each of `writers` tasks takes the channel's receiver
//! in turn, collects requests until the batch holds `batch_max_events` events or
//! `batch_max_bytes` payload bytes or `batch_max_wait` has passed since the first, releases
//! the receiver (so the next writer collects while this one writes), writes the batch
//! ([`crate::insert`]) and answers every waiter after the commit. A failed batch answers its
//! waiters with the error; the task lives on and serves the next batch. The tasks end when
//! the last [`PgStore`](crate::PgStore) handle is dropped (the channel closes).

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    for _ in 0..writers.max(1) {
        let (pool, rx, limits, channel, wake, probe) = (
            pool.clone(),
            rx.clone(),
            limits.clone(),
            channel.clone(),
            wake.clone(),
            probe.clone(),
        );
        tokio::spawn(async move { run(pool, rx, limits, channel, wake, probe).await });
    }
}

async fn run(
    pool: PgPool,
    rx: Arc<Mutex<mpsc::Receiver<InsertJob>>>,
    limits: BatchLimits,
    channel: Arc<str>,
    wake: Arc<Notify>,
    probe: Arc<ConnectProbe>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            match collect(&mut rx, &limits).await {
                Some(jobs) => jobs,
                None => return,
            }
        };
        let written = insert::write(&pool, &jobs, &channel).await;
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

/// Waits for one request, then takes more until a limit is reached. `None`: the channel is
/// closed and empty.
async fn collect(
    rx: &mut mpsc::Receiver<InsertJob>,
    limits: &BatchLimits,
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
    let deadline = Instant::now() + limits.max_wait;
    while events < limits.max_events && bytes < limits.max_bytes {
        match rx.try_recv() {
            Ok(job) if job.deadline <= tokio::time::Instant::now() => {
                let _ = job.reply.send(Err(expired()));
            }
            Ok(job) => {
                events += job.events.len();
                bytes += job.bytes();
                jobs.push(job);
            }
            Err(TryRecvError::Empty) if Instant::now() < deadline => {
                // Sub-millisecond waits are below the timer's resolution: yield instead.
                tokio::task::yield_now().await;
            }
            Err(_) => break,
        }
    }
    Some(jobs)
}
