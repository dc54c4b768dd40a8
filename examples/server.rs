//! The Triggers API server.
//!
//! ```text
//! cargo run --release --example server                       # SQLite at ./triggers.db, 127.0.0.1:8080
//! DATABASE_URL=postgres://… cargo run --release --features postgres --example server
//! cargo run --release --example server -- --help             # every setting
//! ```
//!
//! Settings come only from the environment variables of SPEC §5 (see `--help`); a bad value
//! is a one-line error naming the variable, and exit status 2. PostgreSQL support is compiled
//! in with the `postgres` feature (it pulls in sqlx); without it, a `postgres://` URL is
//! refused with exit status 2 and a hint to rebuild.
//!
//! SIGINT or SIGTERM shut the server down gracefully: it stops accepting, finishes in-flight
//! requests, stops the delivery workers (in-flight deliveries finish or are released) and
//! exits 0.

/// mimalloc instead of the system allocator: the request path, the delivery client and the
/// SQLite writer allocate and free many small buffers across threads, where glibc's malloc
/// spent ≈ 3.5 % of the writer's time (`malloc_consolidate`, `_int_malloc`, `free`). Measured:
/// server CPU per delivered event −8 %, end-to-end deliveries +4 %, 64-connection ingest and
/// batch ingest +2 – 9 %, for ≈ 15 MiB more resident memory (BENCHMARKS.md, "Issue #17,
/// seventh sitting"). Only this binary: an application embedding the library picks its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
#[cfg(feature = "postgres")]
use triggers::http::settings::RateLimiterKind;
use triggers::http::settings::{Database, Settings};
use triggers::http::{shutdown_signal, Metrics, Server, WebhookDeliverer};
use triggers::sqlite::{SqliteConfig, SqliteStore};
#[cfg(feature = "postgres")]
use triggers::ChunkedLimiter;
use triggers::{EventStore, Ingestor, SharedRateLimiter};

/// Exit status for bad settings or usage.
const BAD_SETTINGS: u8 = 2;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{}", Settings::help());
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("error: unknown argument {other:?}; settings come from the environment (see --help)");
            return ExitCode::from(BAD_SETTINGS);
        }
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(BAD_SETTINGS);
        }
    };
    // Log lines that cannot be written (a full disk) are dropped and counted, never a panic.
    if let Err(e) = triggers::http::logging::init(&settings.log_filter) {
        eprintln!("error: RUST_LOG: {e}");
        return ExitCode::from(BAD_SETTINGS);
    }
    if matches!(settings.database, Database::Postgres(_)) && !cfg!(feature = "postgres") {
        eprintln!(
            "error: DATABASE_URL: postgres:// needs the server built with the postgres feature: \
             cargo run --release --features postgres --example server"
        );
        return ExitCode::from(BAD_SETTINGS);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on TRIGGERS_LISTEN={}: {e}", settings.listen))?;
    match &settings.database {
        Database::Sqlite(path) => {
            let config = SqliteConfig { limits: settings.store_limits, ..SqliteConfig::default() };
            let store = SqliteStore::open(path, config)
                .map_err(|e| format!("cannot open the SQLite database {}: {e}", path.display()))?;
            // Retention (TRIGGERS_RETENTION) and dedup purging run in the Ingestor, as on
            // PostgreSQL.
            serve(store, &settings, listener, None).await
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            use triggers::postgres::{PgConfig, PgStore};
            // An unreachable database at start: serve, not ready, until it is reached.
            let config = PgConfig {
                acquire_timeout: settings.db_acquire_timeout,
                start_unreachable: true,
                limits: settings.store_limits,
                ..PgConfig::default()
            };
            let store = PgStore::connect(url, config)
                .await
                .map_err(|e| format!("DATABASE_URL ({}): {e}", settings.database.describe()))?;
            let shared: Option<Arc<dyn SharedRateLimiter>> = match settings.rate_limiter {
                RateLimiterKind::Shared => {
                    Some(Arc::new(ChunkedLimiter::new(store.rate_limiter())))
                }
                RateLimiterKind::Local => None,
            };
            serve(store, &settings, listener, shared).await
        }
        #[cfg(not(feature = "postgres"))]
        Database::Postgres(_) => Err("built without the postgres feature".into()),
    }
}

/// Serves the API over `store` until SIGINT or SIGTERM.
async fn serve<S: EventStore>(
    store: S,
    settings: &Settings,
    listener: TcpListener,
    shared_limiter: Option<Arc<dyn SharedRateLimiter>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::new());
    let mut config = settings.ingestor_config();
    config.observer = Some(metrics.clone());
    config.shared_limiter = shared_limiter;
    let deliverer = WebhookDeliverer::new(settings.webhook_config())?;
    let ingestor = Ingestor::start(store, deliverer, config);
    let addr = listener.local_addr()?;
    // Not `println!`: it panics when stdout cannot be written (a full disk).
    let _ = writeln!(
        std::io::stdout(),
        "triggers: listening on http://{addr} (store: {}; {} delivery workers)",
        settings.database.describe(),
        settings.workers
    );
    Server::with_metrics(ingestor, settings.server_config(), metrics)
        .serve(listener, shutdown_signal())
        .await?;
    Ok(())
}
