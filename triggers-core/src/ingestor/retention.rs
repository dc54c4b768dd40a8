//! The purge task: retention of finished events and of dedup entries past their window.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Inner;
use crate::clock::{self, Timestamp};
use crate::store::{EventStore, StoreResult};

/// Rows per purge batch: one short store write each.
const BATCH: u32 = 500;

/// Purges every `every`, until the Ingestor is gone.
pub(super) fn spawn<S: EventStore>(inner: Weak<Inner<S>>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            if let Err(e) = purge_once(&inner).await {
                tracing::warn!(error = %e, "purge failed; retrying at the next tick");
            }
        }
    });
}

/// One pass: finished events past the retention, then dedup entries past the window.
async fn purge_once<S: EventStore>(inner: &Arc<Inner<S>>) -> StoreResult<()> {
    let now = inner.config.clock.now();
    let store = &inner.store;
    let mut events = 0;
    if let Some(age) = inner.config.retention {
        let before = ago(now, age);
        events = drain(|| store.purge_finished_batch(before, BATCH)).await?;
    }
    let before = ago(now, inner.config.dedup_window);
    let dedup_ids = drain(|| store.purge_dedup_batch(before, BATCH)).await?;
    if events + dedup_ids > 0 {
        tracing::info!(events, dedup_ids, "purged");
    }
    Ok(())
}

/// Runs `batch` until it deletes less than a full batch; yields between batches.
async fn drain<F, Fut>(mut batch: F) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < u64::from(BATCH) {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

fn ago(now: Timestamp, age: Duration) -> Timestamp {
    clock::from_micros(
        now.timestamp_micros().saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX)),
    )
}
