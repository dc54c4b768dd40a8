//! Integration tests of the Ingestor and the worker queue over MemoryStore, through the
//! public API only.
#![allow(clippy::unwrap_used, missing_docs)]

mod counting;
mod embed;
mod history;
mod ingestor;
mod worker;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it holds, for at most 10 s of real time (a bound, not a timing
/// assertion: the condition normally holds within milliseconds).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
