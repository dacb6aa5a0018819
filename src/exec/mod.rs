//! The per-core world: one Glommio executor per core with its own listener (`server`),
//! socket readiness (`poller`), connections (`conn`, deadlines in `watch`), request
//! routing (`route`) and bounded record queue with ack waiters (`local`). Nothing here is
//! shared across cores.

pub mod conn;
pub mod local;
pub mod poller;
pub mod route;
pub mod server;
pub mod watch;
