//! Sets `cfg(pg_tests)` when `TRIGGERS_TEST_POSTGRES_URL` is set, so the store conformance
//! suite (one generated test per case) is compiled only when PostgreSQL is there to run it;
//! without it a single test reports the suite as skipped (or fails under `CI`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(pg_tests)");
    println!("cargo::rerun-if-env-changed=TRIGGERS_TEST_POSTGRES_URL");
    if std::env::var_os("TRIGGERS_TEST_POSTGRES_URL").is_some() {
        println!("cargo::rustc-cfg=pg_tests");
    }
}
