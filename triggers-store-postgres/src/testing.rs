//! Helpers for this crate's tests and benchmarks: throw-away databases. Not part of the API.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The environment variable naming the PostgreSQL server tests and benchmarks use.
pub const URL_VAR: &str = "TRIGGERS_TEST_POSTGRES_URL";

/// The server used when [`URL_VAR`] is not set: the local PostgreSQL with trust auth.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Set (to anything) to skip the PostgreSQL tests on a machine without a server. Refused
/// under `CI`, where they must run.
pub const SKIP_VAR: &str = "TRIGGERS_SKIP_POSTGRES_TESTS";

/// The server tests and benchmarks use: [`URL_VAR`], or [`DEFAULT_URL`].
pub fn server_url() -> String {
    std::env::var(URL_VAR).ok().filter(|url| !url.is_empty()).unwrap_or_else(|| DEFAULT_URL.into())
}

/// A database created for one test (or benchmark) run.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    admin: PgConnectOptions,
    /// Its name.
    pub name: String,
    /// Options that connect to it.
    pub options: PgConnectOptions,
}

impl TestDatabase {
    /// Creates `triggers_test_<pid>_<random>` on the server `admin_url` points at, after
    /// dropping leftovers of test processes that are gone.
    pub async fn create(admin_url: &str) -> Result<TestDatabase, sqlx::Error> {
        let admin = PgConnectOptions::from_str(admin_url)?.disable_statement_logging();
        let mut conn = PgConnection::connect_with(&admin).await?;
        drop_stale(&mut conn).await;
        let name = format!(
            "triggers_test_{}_{}",
            std::process::id(),
            sqlx::types::Uuid::new_v4().simple()
        );
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        conn.close().await?;
        let options = admin.clone().database(&name);
        Ok(TestDatabase { admin, name, options })
    }

    /// A connection to the server's admin database (for `pg_terminate_backend` and the like).
    pub async fn admin(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.admin).await
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_database(self) -> Result<(), sqlx::Error> {
        let mut conn = self.admin().await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

/// Drops `triggers_test_<pid>_…` databases whose process no longer runs (on this machine).
async fn drop_stale(conn: &mut PgConnection) {
    let names: Vec<String> = match sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'triggers\\_test\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    {
        Ok(names) => names,
        Err(_) => return,
    };
    for name in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| {
            p == std::process::id() || std::path::Path::new(&format!("/proc/{p}")).exists()
        });
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
        }
    }
}

/// For this crate's unit tests: a fresh database and a store on it with `config`, or `None`
/// when [`SKIP_VAR`] is set (refused under `CI`, where the tests must run).
#[cfg(test)]
pub(crate) async fn fresh_store(config: crate::PgConfig) -> Option<(TestDatabase, crate::PgStore)> {
    if std::env::var_os(SKIP_VAR).is_some() {
        assert!(std::env::var_os("CI").is_none(), "{SKIP_VAR} is set, but CI is");
        return None;
    }
    let db = TestDatabase::create(&server_url()).await.expect("a test database");
    let store = crate::PgStore::connect_with(db.options.clone(), config).await.expect("a store");
    Some((db, store))
}

/// For this crate's unit tests: `EXPLAIN {options} ` of `sql` as the store runs it, a
/// prepared statement after its fifth run — with the generic plan PostgreSQL then keeps.
/// `args` are SQL literals for its parameters. (An `EXPLAIN` with bound parameters would
/// show a plan made for those values instead.) Runs on `conn`, inside its transaction if it
/// has one; with `ANALYZE` the statement runs, so roll that transaction back.
#[cfg(test)]
pub(crate) async fn generic_plan(
    conn: &mut PgConnection,
    options: &str,
    sql: &str,
    args: &[String],
) -> String {
    use sqlx::Executor;
    conn.execute("SET plan_cache_mode = force_generic_plan").await.expect("set the plan mode");
    conn.execute(format!("PREPARE generic_plan_check AS {sql}").as_str())
        .await
        .expect("prepare the statement");
    let explain = format!("EXPLAIN {options} EXECUTE generic_plan_check({})", args.join(", "));
    let lines: Vec<String> =
        sqlx::query_scalar(&explain).fetch_all(&mut *conn).await.expect("explain the statement");
    conn.execute("DEALLOCATE generic_plan_check").await.expect("deallocate the statement");
    lines.join("\n")
}

/// A new organization with `n` enabled endpoints that match every event.
#[cfg(test)]
pub(crate) async fn org_with_endpoints(
    store: &crate::PgStore,
    n: usize,
) -> (triggers_core::OrganizationId, Vec<triggers_core::EndpointId>) {
    use sqlx::types::chrono::Utc;
    use triggers_core::store::{EndpointStore, NewEndpoint, OrgStore};
    use triggers_core::{ApiKey, EndpointId, Organization, Secret, Tier};

    let org = Organization::new("acme", Tier::Enterprise, Utc::now());
    store.create_organization(&org, &ApiKey::generate().hash()).await.unwrap();
    let mut endpoints = Vec::new();
    for _ in 0..n {
        let new = NewEndpoint {
            id: EndpointId::new(),
            url: "http://127.0.0.1:9/hook".into(),
            event_type_filter: None,
            secret: Secret::generate(),
            created_at: Utc::now(),
            ordering: Default::default(),
        };
        endpoints.push(store.create_endpoint(org.id, &new).await.unwrap().id);
    }
    (org.id, endpoints)
}
