//! The store conformance kit, unchanged, over PostgreSQL: one fresh database per case.
//!
//! The cases are compiled unless `TRIGGERS_SKIP_POSTGRES_TESTS` is set at build time (see
//! `build.rs`); then one test reports them as skipped (and fails under `CI`).

#[cfg(pg_tests)]
async fn fresh_store() -> triggers_store_postgres::PgStore {
    let db = crate::support::database("conformance")
        .await
        .expect("the PostgreSQL tests were not skipped at build time");
    // The database outlives the case; the next test process drops it (see `testing`).
    crate::support::connect(&db, crate::support::config()).await
}

#[cfg(pg_tests)]
triggers_core::store_conformance_tests!(fresh_store);

#[cfg(not(pg_tests))]
#[test]
fn conformance_suite() {
    // Panics under CI, prints SKIPPED otherwise.
    let _ = crate::support::server_url("conformance_suite (the store conformance kit)");
}
