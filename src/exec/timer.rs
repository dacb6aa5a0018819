//! The executor's timers, with their deadlines known to the poller.
//!
//! Why not `glommio::timer::sleep` directly: Glommio keeps its timers to itself, so a
//! direct epoll wait (`poller`) had to assume one might be due at any moment and gave up
//! after 1 ms, then slept in the ring: at a paced load (a burst every few ms) that was a
//! timed-out wait, a ring sleep and its wake-up per burst. Every timer of an executor is
//! made here instead (clippy.toml disallows Glommio's), so the poller can block in
//! epoll_wait until the earliest one is due.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

thread_local! {
    /// Deadlines of this thread's pending sleeps, each with a number that tells sleeps
    /// with the same deadline apart.
    static DEADLINES: RefCell<BTreeSet<(Instant, u64)>> = const { RefCell::new(BTreeSet::new()) };
    static NUMBER: Cell<u64> = const { Cell::new(0) };
}

/// Like `glommio::timer::sleep`, on the executor this is called on.
pub fn sleep(d: Duration) -> Sleep {
    #[allow(clippy::disallowed_methods)] // the one place that makes Glommio timers
    let timer = glommio::timer::Timer::new(d);
    // After the Timer: this deadline is never earlier than Glommio's own, so a wait that
    // ends at it finds the timer due.
    let when = Instant::now() + d;
    let key = (when, NUMBER.with(|n| n.replace(n.get() + 1)));
    DEADLINES.with(|t| t.borrow_mut().insert(key));
    Sleep {
        timer,
        key: Some(key),
    }
}

/// The earliest deadline of this thread's pending sleeps.
pub fn next_deadline() -> Option<Instant> {
    DEADLINES.with(|t| t.borrow().first().map(|k| k.0))
}

pub struct Sleep {
    timer: glommio::timer::Timer,
    /// Registered in `DEADLINES` until the sleep ends or is dropped.
    key: Option<(Instant, u64)>,
}

impl Sleep {
    fn forget(&mut self) {
        if let Some(k) = self.key.take() {
            DEADLINES.with(|t| t.borrow_mut().remove(&k));
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => {
                // A finished sleep kept alive must not hold the poller out of its waits.
                self.forget();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_pending_sleeps() {
        glommio::LocalExecutor::default().run(async {
            assert_eq!(next_deadline(), None);
            let t0 = Instant::now();
            let long = sleep(Duration::from_secs(60));
            let mut short = sleep(Duration::from_millis(5));
            let twin = sleep(Duration::from_millis(5));
            let first = next_deadline().unwrap();
            assert!(first >= t0 + Duration::from_millis(5) && first < t0 + Duration::from_secs(1));
            drop(twin);
            // The other sleep with (about) the same deadline still counts.
            assert!(next_deadline().unwrap() < t0 + Duration::from_secs(1));
            (&mut short).await;
            assert!(Instant::now() >= first);
            // Finished (though not dropped), so only the long one is left; dropping it
            // leaves none.
            assert!(next_deadline().unwrap() >= t0 + Duration::from_secs(60));
            drop(long);
            assert_eq!(next_deadline(), None);
        });
    }
}
