//! Sets `cfg(pg_tests)` unless `TRIGGERS_SKIP_POSTGRES_TESTS` is set, so the store
//! conformance suite (one generated test per case) is compiled whenever the PostgreSQL tests
//! are meant to run; when they are skipped one test says so (and fails under `CI`). Also
//! rebuilds the crate when a migration file changes.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rerun-if-env-changed=TRIGGERS_SKIP_POSTGRES_TESTS");
    // `sqlx::migrate!` embeds the migration files: a new or edited one must rebuild the crate.
    println!("cargo::rerun-if-changed=migrations");
    if std::env::var_os("TRIGGERS_SKIP_POSTGRES_TESTS").is_none() {
        println!("cargo::rustc-cfg=pg_tests");
    }
}
