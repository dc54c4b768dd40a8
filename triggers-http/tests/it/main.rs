//! End-to-end tests of the Triggers API over real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod auth;
mod child;
mod compat;
mod crash;
mod dedup;
mod diskfull;
mod edge;
mod endpoints;
mod fair;
mod flaky;
mod history;
mod hostile;
mod lifecycle;
mod mounted;
mod openapi;
mod quotas;
mod rate;
mod receiver;
mod routes;
mod rss;
mod secrets;
mod support;
mod two_servers;
mod ui;
mod validation;
