//! Integration tests against a real PostgreSQL, one binary. The server comes from
//! `TRIGGERS_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432/postgres`;
//! every test creates its own database. A machine without PostgreSQL skips them, loudly, with
//! `TRIGGERS_SKIP_POSTGRES_TESTS=1`; under `CI` that is refused, so CI never skips them.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod basics;
mod conformance;
mod http_outage;
mod limiter;
mod outage;
mod proxy;
mod races;
mod secrets;
mod support;
mod two_nodes;
