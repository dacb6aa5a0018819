//! ingestd: HTTP/1.1 in, one Kafka record per body out.
//!
//! Request path: `exec::server` (executors, accept) -> `exec::poller` (socket readiness)
//! -> `exec::conn` (read, answer in order) -> `http` (pure parsing) -> `exec::route` (what
//! to do) -> `exec::local` (bounded executor queue, memory budget, waiters) ->
//! `kafka::lane` (batched hand-off) -> `kafka::thread` (producer thread, delivery reports,
//! retries) -> back through `exec::local` to the waiting request.
//! `error` maps every failure to its status code; `sys` holds the raw socket calls.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod config;
pub mod error;
pub mod exec;
pub mod faults;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod notify;
pub mod schema;
pub mod spool;
pub mod sys;
pub mod tls;
