//! End-to-end tests of the Triggers API over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod auth;
mod crash;
mod dedup;
mod endpoints;
mod diskfull;
mod flaky;
mod hostile;
mod lifecycle;
mod mounted;
mod openapi;
mod quotas;
mod rate;
mod routes;
mod secrets;
mod support;
mod ui;
mod two_servers;
mod validation;
