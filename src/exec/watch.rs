//! Coarse per-connection deadlines, checked by the executor's 100 ms ticker. Arming an
//! io_uring timeout around every read (and cancelling it when data arrives) dominated a
//! naive Glommio server's profile; a deadline in a Cell costs nothing per read. When a
//! deadline passes, the ticker shuts the socket's read side down, the pending read returns
//! 0, and the connection sees `expired` and answers 408 (or closes, when idle).

use crate::sys;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::time::Instant;

pub struct Watch {
    fd: RawFd,
    deadline: Cell<Option<Instant>>,
    /// The armed read waits for a new request (close it at shutdown).
    idle: Cell<bool>,
    /// The deadline is a write's: a client that stops reading our answers.
    write: Cell<bool>,
    expired: Cell<bool>,
}

impl Watch {
    /// `fd` must stay open while the watch is registered (the connection removes it from
    /// the registry before dropping its stream).
    pub fn new(fd: RawFd) -> Watch {
        Watch {
            fd,
            deadline: Cell::new(None),
            idle: Cell::new(false),
            write: Cell::new(false),
            expired: Cell::new(false),
        }
    }

    /// Before a read: it must complete by `deadline`.
    pub fn arm(&self, deadline: Instant, idle: bool) {
        self.deadline.set(Some(deadline));
        self.idle.set(idle);
    }

    /// Before waiting for a full send buffer to drain: it must by `deadline`.
    pub fn arm_write(&self, deadline: Instant) {
        self.deadline.set(Some(deadline));
        self.write.set(true);
    }

    /// After a read or write: no deadline while the request is processed.
    pub fn disarm(&self) {
        self.deadline.set(None);
        self.idle.set(false);
        self.write.set(false);
    }

    /// Whether the read ended because its deadline passed.
    pub fn take_expired(&self) -> bool {
        self.expired.replace(false)
    }

    /// Shutdown deadline: ends the connection's pending read or write at once.
    pub fn close(&self) {
        sys::shutdown_both(self.fd);
    }

    /// Ticker: ends reads whose deadline passed, and idle reads at shutdown.
    pub fn check(&self, now: Instant, shutting_down: bool) {
        let late = self.deadline.get().is_some_and(|d| d <= now);
        if late {
            self.expired.set(true);
        }
        if late && self.write.get() {
            // Nothing more can be sent: fail the write and close.
            self.deadline.set(None);
            sys::shutdown_both(self.fd);
        } else if late || (shutting_down && self.idle.get()) {
            self.deadline.set(None);
            sys::shutdown_read(self.fd);
        }
    }
}
