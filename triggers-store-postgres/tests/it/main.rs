//! Integration tests against a real PostgreSQL, one binary. The server comes from
//! `TRIGGERS_TEST_POSTGRES_URL` (for example `postgres://postgres@127.0.0.1:5432/postgres`);
//! every test creates its own database. Without the variable each test says it was skipped,
//! unless `CI` is set: then it fails, so CI can never skip them silently.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod basics;
mod conformance;
mod limiter;
mod outage;
mod proxy;
mod races;
mod support;
mod two_nodes;
