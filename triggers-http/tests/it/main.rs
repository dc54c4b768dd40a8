//! End-to-end tests of the Triggers API over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod auth;
mod crash;
mod dedup;
mod fair;
mod flaky;
mod hostile;
mod lifecycle;
mod openapi;
mod rate;
mod routes;
mod support;
mod validation;
