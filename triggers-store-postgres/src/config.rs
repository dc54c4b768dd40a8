//! Settings of a [`PgStore`](crate::PgStore).

use std::time::Duration;

use triggers_core::store::StoreLimits;

/// How a [`PgStore`](crate::PgStore) connects, batches and wakes workers.
///
/// ```
/// use std::time::Duration;
/// let config = triggers_store_postgres::PgConfig {
///     max_connections: 32,
///     statement_timeout: Some(Duration::from_secs(10)),
///     ..Default::default()
/// };
/// assert!(config.migrate);
/// ```
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Most connections the pool opens (the `LISTEN` connection is extra). Default 16.
    pub max_connections: u32,
    /// Connections kept open while idle. Default 0.
    pub min_connections: u32,
    /// How long a call waits for a connection before failing with `Unavailable` (HTTP 503
    /// with `Retry-After`), also while the database is unreachable; an insert waits no
    /// longer than this in all, including its retries. The error names the cause
    /// ("connection refused", "database \"x\" does not exist"). Default 2 s.
    pub acquire_timeout: Duration,
    /// `statement_timeout` of every connection (sent in the startup packet); a statement that
    /// runs longer is cancelled and the call fails with `Unavailable`. `None` keeps the
    /// server's setting. Default 30 s.
    pub statement_timeout: Option<Duration>,
    /// Let the server JIT-compile this store's statements. Default `false`: every connection
    /// is opened with `jit = off`. The store's statements are short; when a stale estimate
    /// of the busy queue table lifts a claim's cost above `jit_above_cost`, compiling it
    /// takes ≈ 100 ms, which cut claim + complete throughput by a factor of three to four.
    pub jit: bool,
    /// Apply the embedded migrations on connect (under sqlx's advisory lock, so nodes that
    /// start together are safe). Default `true`; turn off when migrations are run separately.
    pub migrate: bool,
    /// Group commit: most events written in one batch. Default 2000.
    pub batch_max_events: usize,
    /// Group commit: most payload bytes written in one batch. Default 8 MiB.
    pub batch_max_bytes: usize,
    /// Group commit: how long a writer keeps collecting requests after the first one while
    /// another writer's batch is being written (it writes as soon as that write is done, and
    /// at once when no other batch is being written). Zero writes whatever is queued at once.
    /// Default 200 µs.
    pub batch_max_wait: Duration,
    /// Group commit: the predicted statement time a batch of several requests stays within;
    /// a request predicted to take longer is written alone. Every request of a batch waits
    /// for the whole statement, so this bounds how long one organization's inserts can make
    /// another's wait: requests queue per organization, a batch takes them round-robin, an
    /// organization whose requests are written alone takes turns with batches of everyone
    /// else, and never on two writers at once. Predictions are the measured statement time
    /// per event of each organization's recent batches. Default 20 ms.
    pub batch_budget: Duration,
    /// Group commit: writer tasks, each writing one batch at a time on its own connection,
    /// so one batch is being collected while another commits. Default 2.
    pub writers: usize,
    /// Group commit: insert requests that may wait for a writer; when full, inserts fail at
    /// once with `Overloaded` (HTTP 503). One organization may hold half of the places;
    /// past that its own inserts fail so. Default 4096.
    pub channel_capacity: usize,
    /// The `LISTEN`/`NOTIFY` channel name. Nodes sharing a database must use the same one.
    /// Default `triggers_deliveries`.
    pub notify_channel: String,
    /// Run the `LISTEN` task that feeds [`wakeups`](triggers_core::store::DeliveryQueue::wakeups).
    /// Default `true`.
    pub listen: bool,
    /// The `application_name` the connections report (visible in `pg_stat_activity`).
    pub application_name: String,
    /// Ping a pooled connection before handing it out, so a connection the server dropped
    /// while it was idle is replaced instead of failing one call with `Unavailable`. Costs
    /// one round trip per call. Default `true`.
    pub test_before_acquire: bool,
    /// Start even when the database cannot be reached (connection refused, no answer):
    /// `connect` then returns a store whose calls fail with `Unavailable` (and whose `ping`
    /// names the cause) until a background task, trying once a second, has reached the
    /// database and applied the migrations. Errors the database itself sends (bad
    /// credentials, no such database, a newer schema) still fail `connect`: they need an
    /// operator. Default `false`.
    pub start_unreachable: bool,
    /// The per-organization bounds the store keeps (most endpoints, attempts kept per event
    /// and endpoint). Default [`StoreLimits::default`].
    pub limits: StoreLimits,
    /// How often the store checks whether the delivery queue's table needs a vacuum, and
    /// vacuums it if so (more than 2 000 dead row versions and a fifth of its live rows).
    /// Autovacuum comes at most once a minute by default, and every delivery leaves dead row
    /// versions that the next claims step over. `None` leaves the table to autovacuum.
    /// Default 1 s.
    pub vacuum_interval: Option<Duration>,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Some(Duration::from_secs(30)),
            jit: false,
            migrate: true,
            batch_max_events: 2000,
            batch_max_bytes: 8 << 20,
            batch_max_wait: Duration::from_micros(200),
            batch_budget: Duration::from_millis(20),
            writers: 2,
            channel_capacity: 4096,
            notify_channel: "triggers_deliveries".to_owned(),
            listen: true,
            application_name: "triggers".to_owned(),
            test_before_acquire: true,
            start_unreachable: false,
            limits: StoreLimits::default(),
            vacuum_interval: Some(Duration::from_secs(1)),
        }
    }
}
