#![doc = include_str!("../README.md")]

mod announce;
mod batcher;
mod complete;
mod config;
mod error;
mod events;
mod handover;
mod health;
mod history;
mod insert;
mod lifecycle;
mod limiter;
mod listener;
mod orgs;
mod pending;
mod queue;
mod retention;
mod rows;
mod store;
#[doc(hidden)]
pub mod testing;
mod vacuum;

pub use config::PgConfig;
pub use limiter::PgRateLimiter;
pub use store::{PgStore, MIGRATOR};

/// The sqlx this crate is built on, for callers that build their own connect options.
pub use sqlx;
