//! The per-core world: one Glommio executor per core with its own listener (`server`),
//! socket readiness (`poller`), connections (`conn`: its `readbuf`, its ordered `replies`,
//! deadlines in `watch`, timers in `timer`), what each request gets (`route`, then `handler`), and the
//! bounded record queue with memory budget and ack waiters (`local`). Nothing here is
//! shared across cores.

pub mod admit;
pub mod conn;
pub mod handler;
pub mod link;
pub mod local;
pub mod poller;
pub mod proxy;
pub mod readbuf;
pub mod replies;
pub mod restv2;
pub mod restv3;
pub mod route;
pub mod server;
pub mod timer;
pub mod watch;
