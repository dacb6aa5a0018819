//! Whether the fdatasync that 201s wait on runs on the executor's own thread (a plain
//! blocking syscall) or on io_uring's worker threads, and the guard that keeps a slow
//! disk from stalling the executor.
//!
//! Why inline: through io_uring an fdatasync of a buffered file goes to an `iou-wrk`
//! thread, which inherits the executor's pinned CPU. Each sync then wakes it there twice
//! (preempting the executor), waits for Glommio's next ring poll to be submitted and for
//! a later one to be reaped, and the executor sleeps in its ring in between (several
//! syscalls each). Measured at ack=durable, 64 connections, one executor (BENCHMARKS.md,
//! "fdatasync on the executor's thread"): inline, 84k against 70k req/s at 9.4 against
//! 14.6 us of CPU per request; at one connection 6.6k against 4.7k req/s, 55 against 119
//! us. While the executor blocks in fdatasync it serves nobody, but at ack=durable its
//! connections are waiting for that sync anyway.
//!
//! The cost is that a slow sync stalls every connection of the executor, 202s included.
//! So when `SLOW_OF_LAST` of the last `WINDOW` inline syncs took longer than
//! `spool_inline_sync_us`, the following syncs go through io_uring (which overlaps them
//! with serving) for a back-off; then one inline sync probes the disk. A slow probe
//! doubles the back-off up to `MAX_BACKOFF`, a fast one resets it. A disk that stays
//! slow stalls the executor for one sync per back-off. One slow sync alone does not
//! back off: under load here 0.3% of syncs took over 1 ms (journal commits, the
//! hypervisor), and a back-off for each kept half of them on io_uring.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// First back-off after slow inline syncs.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off between two inline probes of a slow disk.
pub const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// Inline syncs looked back on, and how many of them slow make a back-off.
const WINDOW: u32 = 16;
const SLOW_OF_LAST: u32 = 4;

pub struct InlineSync {
    /// Longest inline sync that counts as fast; zero: never inline.
    limit: Duration,
    /// No inline sync before this (after slow ones); the next one is a probe.
    off_until: Cell<Option<Instant>>,
    /// The back-off the next slow probe sets.
    backoff: Cell<Duration>,
    /// One bit per recent inline sync, newest lowest: 1 = slow.
    recent: Cell<u16>,
}

impl InlineSync {
    pub fn new(limit: Duration) -> InlineSync {
        InlineSync {
            limit,
            off_until: Cell::new(None),
            backoff: Cell::new(FIRST_BACKOFF),
            recent: Cell::new(0),
        }
    }

    /// Whether a sync starting at `now` may run inline.
    pub fn allowed(&self, now: Instant) -> bool {
        !self.limit.is_zero() && self.off_until.get().is_none_or(|t| now >= t)
    }

    /// Records how long an inline sync that ended at `now` took. When it makes inline
    /// syncs stop (too many slow ones, or a slow probe), returns the back-off.
    pub fn took(&self, now: Instant, took: Duration) -> Option<Duration> {
        let slow = took > self.limit;
        let probe = self.off_until.get().is_some();
        let recent = (self.recent.get() << 1) | slow as u16;
        if !slow && probe {
            self.off_until.set(None);
            self.backoff.set(FIRST_BACKOFF);
        }
        if !(slow && (probe || recent.count_ones() >= SLOW_OF_LAST)) {
            self.recent.set(recent);
            return None;
        }
        let b = self.backoff.get();
        self.off_until.set(Some(now + b));
        self.backoff.set((b * 2).min(MAX_BACKOFF));
        self.recent.set(0);
        Some(b)
    }
}

const _: () = assert!(WINDOW == u16::BITS && SLOW_OF_LAST <= WINDOW);

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn zero_limit_never_allows_inline() {
        let g = InlineSync::new(Duration::ZERO);
        assert!(!g.allowed(Instant::now()));
    }

    /// Records `n` inline syncs of `took` at `t`; the back-offs they returned.
    fn run(g: &InlineSync, t: Instant, n: usize, took: Duration) -> Vec<Option<u64>> {
        (0..n)
            .map(|_| g.took(t, took).map(|b| b.as_secs()))
            .collect()
    }

    #[test]
    fn slow_syncs_back_off_only_when_four_of_the_last_sixteen_were_slow() {
        let g = InlineSync::new(MS);
        let t = Instant::now();
        assert!(g.allowed(t));
        assert_eq!(
            run(&g, t, 100, MS),
            vec![None; 100],
            "exactly the limit is fast"
        );
        // Three slow ones spread among fast ones: no back-off.
        for _ in 0..3 {
            assert_eq!(g.took(t, 2 * MS), None);
            assert_eq!(run(&g, t, 13, MS), vec![None; 13]);
        }
        assert!(g.allowed(t));
        // Slow ones that drop out of the window do not count.
        assert_eq!(run(&g, t, 3, MS + Duration::from_nanos(1)), vec![None; 3]);
        assert_eq!(run(&g, t, 16, MS), vec![None; 16]);
        assert_eq!(run(&g, t, 3, 2 * MS), vec![None; 3]);
        assert_eq!(g.took(t, MS), None);
        assert!(g.allowed(t));
        // The fourth slow one within sixteen backs off.
        assert_eq!(g.took(t, 2 * MS), Some(FIRST_BACKOFF));
        assert!(!g.allowed(t));
        assert!(!g.allowed(t + FIRST_BACKOFF - Duration::from_nanos(1)));
        assert!(g.allowed(t + FIRST_BACKOFF));
    }

    #[test]
    fn slow_probes_double_the_backoff_up_to_the_cap_and_a_fast_one_resets_it() {
        let g = InlineSync::new(MS);
        let mut t = Instant::now();
        assert_eq!(run(&g, t, 4, 10 * MS), [None, None, None, Some(1)]);
        t += FIRST_BACKOFF;
        let mut seen = Vec::new();
        for _ in 0..9 {
            assert!(g.allowed(t));
            let b = g.took(t, 10 * MS).expect("a slow probe backs off at once");
            seen.push(b.as_secs());
            t += b;
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 64, 64, 64, 64]);
        // A fast probe: inline again, with a fresh window and the first back-off.
        assert_eq!(g.took(t, MS / 2), None);
        assert!(g.allowed(t));
        assert_eq!(run(&g, t, 4, 10 * MS), [None, None, None, Some(1)]);
    }
}
