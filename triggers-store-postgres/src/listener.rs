//! Wake-ups across nodes: a task that `LISTEN`s on the notify channel and fires a
//! [`Notify`] for every notification, reconnecting with backoff when the connection drops.
//!
//! Notifications sent while the listener is disconnected are lost, so the task also fires
//! the `Notify` after every (re)connect: workers then look at the queue once, and their
//! polling interval covers anything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;

/// Shortest and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Wakes every waiting worker, and the next one to wait if none is waiting now.
pub(crate) fn fire(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

/// Counters of the listener task.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    pub(crate) notifications: AtomicU64,
    pub(crate) connects: AtomicU64,
}

/// Starts the listener task. It runs until aborted.
pub(crate) fn spawn(
    options: PgConnectOptions,
    channel: Arc<str>,
    notify: Arc<Notify>,
    stats: Arc<ListenerStats>,
) -> tokio::task::JoinHandle<()> {
    // A pool of one connection that is only used to (re)connect the listener.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            match listen(&pool, &channel, &notify, &stats, &mut backoff).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "LISTEN connection lost"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// Connects, listens and forwards notifications until an error.
async fn listen(
    pool: &sqlx::PgPool,
    channel: &str,
    notify: &Notify,
    stats: &ListenerStats,
    backoff: &mut Duration,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    *backoff = BACKOFF_MIN;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(channel, "listening for delivery wake-ups");
    fire(notify);
    loop {
        match listener.try_recv().await? {
            Some(_) => {
                stats.notifications.fetch_add(1, Ordering::Relaxed);
            }
            // The connection dropped and was re-established (and re-subscribed) by sqlx.
            None => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(channel, "LISTEN connection re-established");
            }
        }
        fire(notify);
    }
}
