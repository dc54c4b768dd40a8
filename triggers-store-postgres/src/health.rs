//! Why connections fail, in words: sqlx's pool keeps retrying a refused connection until the
//! acquire timeout and then reports only "pool timed out". [`ConnectProbe`] finds the cause
//! with one direct connection attempt — at most one at a time and one per
//! [`PROBE_INTERVAL`] — and adds it to the store's `Unavailable` errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use triggers_core::StoreError;

use crate::error::{describe, NO_CONNECTION};

/// Least time between two probes.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe's cause is used for this long.
const FRESH: Duration = Duration::from_secs(10);

/// Finds out why the database cannot be connected to; shared by a store's handles.
pub(crate) struct ConnectProbe {
    options: PgConnectOptions,
    /// `host:port/database`, never the user or password.
    target: String,
    timeout: Duration,
    /// The last probe: when, and the cause (`None`: it connected).
    last: Mutex<Option<(Instant, Option<String>)>>,
    running: AtomicBool,
}

impl ConnectProbe {
    pub(crate) fn new(options: PgConnectOptions, timeout: Duration) -> Self {
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        Self { options, target, timeout, last: Mutex::new(None), running: AtomicBool::new(false) }
    }

    /// Where the store connects to (no credentials).
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    fn last(&self) -> Option<(Instant, Option<String>)> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Connects once (bounded by the acquire timeout) and records the outcome; the cause
    /// if it failed. A probe younger than [`PROBE_INTERVAL`] is reused instead.
    pub(crate) async fn probe(&self) -> Option<String> {
        if let Some((at, cause)) = self.last() {
            if at.elapsed() < PROBE_INTERVAL {
                return cause;
            }
        }
        let cause = match tokio::time::timeout(self.timeout, self.options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                None
            }
            Ok(Err(e)) => Some(describe(&e)),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        if let Some(cause) = &cause {
            tracing::warn!(target = %self.target, cause, "cannot connect to PostgreSQL");
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), cause.clone()));
        cause
    }

    /// `e` with the cause added when it says that no connection could be had: the latest
    /// probe's finding ("cannot connect to PostgreSQL at db:5432/app: connection refused").
    /// Starts a probe in the background when the latest is stale.
    pub(crate) fn explain(self: &Arc<Self>, e: StoreError) -> StoreError {
        let StoreError::Unavailable(message) = &e else { return e };
        if !message.starts_with(NO_CONNECTION) {
            return e;
        }
        let last = self.last();
        if !matches!(&last, Some((at, _)) if at.elapsed() < PROBE_INTERVAL) {
            self.probe_in_background();
        }
        match last {
            Some((at, Some(cause))) if at.elapsed() < FRESH => StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {cause} ({message})",
                self.target
            )),
            Some((at, None)) if at.elapsed() < FRESH => StoreError::Unavailable(format!(
                "{message}: PostgreSQL at {} accepts connections, but every pooled connection \
                 stayed busy",
                self.target
            )),
            _ => StoreError::Unavailable(format!("{message} (PostgreSQL at {})", self.target)),
        }
    }

    fn probe_in_background(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            this.probe().await;
            this.running.store(false, Ordering::Release);
        });
    }
}
