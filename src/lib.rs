//! ingestd: HTTP/1.1 in, one Kafka record per body out.
//!
//! Request path: `server` (executors, accept) -> `poller` (socket readiness) -> `conn`
//! (read, answer in order) -> `http` (pure parsing) -> `route` (what to do) -> `local`
//! (bounded executor queue, waiters) -> `lane` (batched hand-off) -> `kafka` (producer
//! thread, delivery reports).
//! `error` maps every failure to its status code.

pub mod config;
pub mod conn;
pub mod error;
pub mod http;
pub mod kafka;
pub mod lane;
pub mod local;
pub mod metrics;
pub mod notify;
pub mod poller;
pub mod route;
pub mod server;
pub mod sys;
pub mod topics;
pub mod watch;
