//! [`PgStore`]: the pool, the group-commit writers and the listener.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Notify;
use triggers_core::store::{StoreError, StoreResult};

use crate::batcher::{self, BatchLimits, Intake};
use crate::config::PgConfig;
use crate::error::{map, map_migrate, NO_CONNECTION};
use crate::health::ConnectProbe;
use crate::limiter::PgRateLimiter;
use crate::listener::{self, ListenerStats};

/// The migrations embedded in this crate (applied by [`PgStore::connect`] unless
/// [`PgConfig::migrate`] is off).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// An [`EventStore`](triggers_core::EventStore) on PostgreSQL. Cheap to clone: clones share
/// the pool, the group-commit writers and the listener. The background tasks stop when the
/// last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    intake: Arc<Intake>,
    wake: Arc<Notify>,
    listening: bool,
    singles: crate::complete::Singles,
    limits: triggers_core::store::StoreLimits,
    stats: Arc<ListenerStats>,
    listener: Option<tokio::task::JoinHandle<()>>,
    vacuum: Option<tokio::task::JoinHandle<()>>,
    /// Publishes endpoint announcements left in the outbox (`announce.rs`).
    sweep: Option<tokio::task::JoinHandle<()>>,
    /// Folds the pending-event deltas into the counters (`pending.rs`).
    fold: Option<tokio::task::JoinHandle<()>>,
    /// What calls share with `sweep`.
    outbox: Arc<crate::announce::Outbox>,
    probe: Arc<ConnectProbe>,
    acquire_timeout: std::time::Duration,
    /// Whether the database was reached and migrated (see `PgConfig::start_unreachable`).
    ready: Arc<AtomicBool>,
    startup: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writers finish what is queued, then end.
        self.intake.close();
        if let Some(task) = self.startup.take() {
            task.abort();
        }
        if let Some(task) = self.listener.take() {
            task.abort();
        }
        if let Some(task) = self.vacuum.take() {
            task.abort();
        }
        if let Some(task) = self.sweep.take() {
            task.abort();
        }
        if let Some(task) = self.fold.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.inner.pool)
            .field("channel", &self.inner.outbox.channel())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db?…`), applies the migrations (unless
    /// turned off) and starts the writers and the listener. Needs a tokio runtime.
    ///
    /// Errors: `InvalidInput` for a malformed URL, `Unavailable` when the database cannot be
    /// reached (unless [`PgConfig::start_unreachable`]) or refuses the connection (bad
    /// credentials, no such database), with the cause in words; `Corrupt` when it was
    /// migrated by a newer version.
    pub async fn connect(url: &str, config: PgConfig) -> StoreResult<PgStore> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::InvalidInput(
                "database URL: expected postgres://… or postgresql://…".into(),
            ));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidInput(format!("database URL: {e}")))?;
        Self::connect_with(options, config).await
    }

    /// Like [`connect`](Self::connect), with connect options built by the caller (TLS,
    /// search_path, …). `statement_timeout`, `jit` and `application_name` from `config` are
    /// added.
    pub async fn connect_with(options: PgConnectOptions, config: PgConfig) -> StoreResult<PgStore> {
        let mut options = options.application_name(&config.application_name);
        if let Some(timeout) = config.statement_timeout {
            let ms = timeout.as_millis().max(1).to_string();
            options = options.options([("statement_timeout", ms)]);
        }
        if !config.jit {
            options = options.options([("jit", "off")]);
        }
        let probe = Arc::new(ConnectProbe::new(options.clone(), config.acquire_timeout));
        let pool_options = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .test_before_acquire(config.test_before_acquire);
        let (pool, reached) = match pool_options.clone().connect_with(options.clone()).await {
            Ok(pool) => (pool, true),
            // Unreachable (sqlx retried refused connections until the timeout): start anyway.
            Err(e @ (sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)))
                if config.start_unreachable =>
            {
                let error = connect_failure(&probe, map(e)).await;
                tracing::warn!(%error, "starting without the database; not ready until it is reached");
                (pool_options.connect_lazy_with(options.clone()), false)
            }
            Err(e) => return Err(connect_failure(&probe, map(e)).await),
        };
        if reached && config.migrate {
            if let Err(e) = MIGRATOR.run(&pool).await.map_err(map_migrate) {
                return Err(connect_failure(&probe, e).await);
            }
        }
        let ready = Arc::new(AtomicBool::new(reached));
        let startup =
            (!reached).then(|| tokio::spawn(prepare(pool.clone(), config.migrate, ready.clone())));

        let channel: Arc<str> = config.notify_channel.as_str().into();
        let wake = Arc::new(Notify::new());
        let stats = Arc::new(ListenerStats::default());
        let intake = Arc::new(Intake::new(config.channel_capacity, config.batch_budget));
        let limits = BatchLimits {
            max_events: config.batch_max_events.max(1),
            max_bytes: config.batch_max_bytes.max(1),
            max_wait: config.batch_max_wait,
        };
        batcher::spawn(
            config.writers,
            pool.clone(),
            intake.clone(),
            limits,
            channel.clone(),
            wake.clone(),
            probe.clone(),
        );
        let listener = config
            .listen
            .then(|| listener::spawn(options, channel.clone(), wake.clone(), stats.clone()));
        let vacuum = config
            .vacuum_interval
            .filter(|every| !every.is_zero())
            .map(|every| crate::vacuum::spawn(pool.clone(), every));
        // The outbox keeps the channel for the store's calls and its sweep task alike.
        let outbox = Arc::new(crate::announce::Outbox::new(channel));
        let sweep = Some(crate::announce::spawn(pool.clone(), outbox.clone()));
        let fold = Some(crate::pending::spawn(pool.clone(), ready.clone()));
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                intake,
                wake,
                listening: config.listen,
                singles: crate::complete::Singles::default(),
                limits: config.limits,
                stats,
                listener,
                vacuum,
                sweep,
                fold,
                outbox,
                probe,
                acquire_timeout: config.acquire_timeout,
                ready,
                startup,
            }),
        })
    }

    /// Classifies a sqlx error and adds the cause when no connection could be had.
    pub(crate) fn fail(&self, e: sqlx::Error) -> StoreError {
        self.explain(map(e))
    }

    /// Adds the cause to an `Unavailable` error that says no connection could be had.
    pub(crate) fn explain(&self, e: StoreError) -> StoreError {
        self.inner.probe.explain(e)
    }

    /// Whether the database has been reached and migrated since the start.
    pub(crate) fn is_prepared(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Finds out now why connecting fails (or `None`: it works); see `health`.
    pub(crate) async fn connect_cause(&self) -> Option<String> {
        self.inner.probe.probe().await
    }

    /// How long a call waits for a connection (`PgConfig::acquire_timeout`).
    pub(crate) fn acquire_timeout(&self) -> std::time::Duration {
        self.inner.acquire_timeout
    }

    /// The connection pool (for example to run your own queries next to the store's).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A [`PgRateLimiter`] on this store's pool: one exact rate limit across all nodes.
    pub fn rate_limiter(&self) -> PgRateLimiter {
        PgRateLimiter::new(self.inner.pool.clone())
    }

    /// How many `NOTIFY`s the listener has received (for metrics and tests).
    pub fn notifications_received(&self) -> u64 {
        self.inner.stats.notifications.load(Ordering::Relaxed)
    }

    /// How many times the listener has (re)connected and subscribed.
    pub fn listener_connects(&self) -> u64 {
        self.inner.stats.connects.load(Ordering::Relaxed)
    }

    /// Deletes dedup entries created at or before `before` (older than every dedup window
    /// in use), so the table does not grow without bound. Returns how many were removed.
    /// Expired entries are otherwise harmless: they are taken over by the next insert.
    pub async fn purge_dedup(&self, before: triggers_core::Timestamp) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM dedup WHERE created_at <= $1")
            .bind(before)
            .execute(self.pool())
            .await
            .map_err(|e| self.fail(e))?;
        Ok(done.rows_affected())
    }

    pub(crate) fn intake(&self) -> &Intake {
        &self.inner.intake
    }

    pub(crate) fn channel(&self) -> &str {
        self.inner.outbox.channel()
    }

    /// Wakes this node's workers at once (other nodes hear the `NOTIFY`).
    pub(crate) fn fire_local(&self) {
        listener::fire(&self.inner.wake);
    }

    /// The announcement outbox's handle (`announce.rs`).
    pub(crate) fn outbox(&self) -> &crate::announce::Outbox {
        &self.inner.outbox
    }

    pub(crate) fn singles(&self) -> &crate::complete::Singles {
        &self.inner.singles
    }

    pub(crate) fn limits(&self) -> &triggers_core::store::StoreLimits {
        &self.inner.limits
    }

    pub(crate) fn listener_wakeups(&self) -> Option<Arc<Notify>> {
        self.inner.listening.then(|| self.inner.wake.clone())
    }
}

/// The error of a failed connect: when no connection could be had, one direct attempt says
/// why ("connection refused", "database \"x\" does not exist").
async fn connect_failure(probe: &ConnectProbe, e: StoreError) -> StoreError {
    match &e {
        StoreError::Unavailable(message) if message.starts_with(NO_CONNECTION) => {
            match probe.probe().await {
                Some(cause) => StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {}: {cause}",
                    probe.target()
                )),
                None => e,
            }
        }
        _ => e,
    }
}

/// Reaches the database (and migrates it) for a store started without it, trying once a
/// second; sets `ready` when done.
async fn prepare(pool: sqlx::PgPool, migrate: bool, ready: Arc<AtomicBool>) {
    loop {
        let done = if migrate {
            MIGRATOR.run(&pool).await.map_err(map_migrate)
        } else {
            sqlx::query("SELECT 1").execute(&pool).await.map(|_| ()).map_err(map)
        };
        match done {
            Ok(()) => {
                ready.store(true, Ordering::Release);
                tracing::info!("the database is reached and migrated: ready");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "the database is not ready yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
