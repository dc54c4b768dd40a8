//! Retention: purging old delivered events and old dedup ids.
//!
//! Nothing is purged automatically unless asked: call [`SqliteStore::purge`] periodically (for
//! example hourly) or start [`SqliteStore::spawn_purge_task`] — or let the Ingestor's purge
//! task do it through [`Retention`](triggers_core::store::Retention) (`IngestorConfig::
//! retention` and `purge_interval`; the example server does), which also purges `failed`
//! events. Each batch of
//! [`SqliteConfig::purge_batch`](crate::SqliteConfig::purge_batch) rows is one small write
//! request, group-committed like any other, so ingestion keeps flowing while a purge runs.

use std::time::Duration;

use triggers_core::clock::SharedClock;
use triggers_core::store::StoreResult;
use triggers_core::Timestamp;

use crate::codec::{duration_micros, micros};
use crate::ops::purge;
use crate::SqliteStore;

/// What one [`SqliteStore::purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Delivered events deleted (with their attempt records).
    pub events: u64,
    /// Dedup ids forgotten.
    pub dedup_ids: u64,
}

impl SqliteStore {
    /// Deletes every `delivered` event created before `older_than`, with its attempt records
    /// and any webhook deliveries still outstanding for it, in batches of `batch` events (each
    /// its own short write). Pending and failed events are never purged. Returns the number
    /// of events deleted.
    pub async fn purge_delivered(&self, older_than: Timestamp, batch: u32) -> StoreResult<u64> {
        let (cutoff, batch) = (micros(older_than), batch.max(1));
        let mut total = 0;
        loop {
            let n = self.write(move |c| purge::delivered_batch(c, cutoff, batch)).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Forgets dedup ids recorded before `older_than`, in batches. After this, an event with
    /// such a dedup id is stored as new. Returns the number forgotten.
    pub async fn purge_dedup(&self, older_than: Timestamp, batch: u32) -> StoreResult<u64> {
        let (cutoff, batch) = (micros(older_than), batch.max(1));
        let mut total = 0;
        loop {
            let (n, more) = self.write(move |c| purge::dedup_batch(c, cutoff, batch)).await?;
            total += n;
            if !more {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Applies the configured retention as of `now`: delivered events older than
    /// [`retention`](crate::SqliteConfig::retention) (if set) and dedup ids older than
    /// [`dedup_retention`](crate::SqliteConfig::dedup_retention).
    pub async fn purge(&self, now: Timestamp) -> StoreResult<PurgeReport> {
        let config = self.config();
        let batch = config.purge_batch;
        let before = |age: Duration| {
            triggers_core::clock::from_micros(micros(now).saturating_sub(duration_micros(age)))
        };
        let mut report = PurgeReport::default();
        if let Some(age) = config.retention {
            report.events = self.purge_delivered(before(age), batch).await?;
        }
        report.dedup_ids = self.purge_dedup(before(config.dedup_retention), batch).await?;
        if report != PurgeReport::default() {
            tracing::info!(events = report.events, dedup_ids = report.dedup_ids, "sqlite purge");
        }
        Ok(report)
    }

    /// Runs [`purge`](Self::purge) every `every` on the current tokio runtime, reading the
    /// time from `clock`, until the returned handle is aborted. Failures are logged and
    /// retried at the next tick. The task holds a clone of the store.
    pub fn spawn_purge_task(
        &self,
        clock: SharedClock,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = store.purge(clock.now()).await {
                    tracing::warn!(error = %e, "sqlite purge failed; retrying at the next tick");
                }
            }
        })
    }
}
