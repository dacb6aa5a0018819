//! Budgets: requests or bytes per second with a burst, held across every executor.
//!
//! One shared bucket per tenant and unit, kept as GCRA's theoretical arrival time in one
//! `AtomicU64` (nanoseconds on a process-wide monotonic clock): taking `n` units moves it
//! `n x interval` ahead of max(it, now), allowed while it stays within `burst` of now.
//! One compare-and-swap, no lock, no refill timer.
//!
//! Executors do not touch the shared line per request: each takes a *lease* of units at a
//! time (about 1/64 of a second's budget, at least 1) and spends it locally, so a busy
//! tenant costs one atomic operation per lease, not per request. Unspent leased units go
//! back when the lease is 50 ms old (`Lease::give_back`), so an executor that stops
//! seeing a tenant does not sit on its budget; the rate over any second is then within a
//! lease per executor of the configured one. A request larger than a lease takes its own
//! units straight from the bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static T0: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call: a monotonic clock every executor shares.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `t` on the `now_ns` scale: a request's arrival time, taken once, serves its budgets
/// too (a clock read less per request).
pub fn ns_at(t: Instant) -> u64 {
    t.saturating_duration_since(*T0.get_or_init(Instant::now))
        .as_nanos() as u64
}

/// A shared bucket: `rate` units per second, `burst` units at once.
#[derive(Debug)]
pub struct Bucket {
    /// GCRA's theoretical arrival time, ns (`now_ns`).
    tat: AtomicU64,
    /// ns per unit, as a fraction: `interval_num / UNIT_DEN`.
    interval_num: u64,
    /// ns of credit a full bucket holds (burst x interval).
    burst_ns: u64,
    /// Units one lease takes.
    pub lease: u64,
}

/// Intervals are kept in 1/1024 ns so that byte rates in the GB/s still count.
const UNIT_DEN: u64 = 1024;

impl Bucket {
    /// `rate` units per second (> 0), `burst_secs` of them at once.
    pub fn new(rate: f64, burst_secs: f64) -> Bucket {
        let interval_num = ((1e9 * UNIT_DEN as f64) / rate).max(1.0) as u64;
        let burst = (rate * burst_secs).max(1.0);
        let burst_ns = (burst * interval_num as f64 / UNIT_DEN as f64) as u64;
        Bucket {
            tat: AtomicU64::new(0),
            interval_num,
            burst_ns,
            // 1/64 s of budget, never more than a quarter of the burst.
            lease: ((rate / 64.0).min(burst / 4.0)).max(1.0) as u64,
        }
    }

    fn span(&self, units: u64) -> u64 {
        ((units as u128 * self.interval_num as u128) / UNIT_DEN as u128).min(u64::MAX as u128)
            as u64
    }

    /// Takes `units` now, or says how long until they would fit (the real wait, for
    /// `Retry-After`). A request larger than the whole burst waits until the bucket is
    /// full and then takes it, going into debt: it is never refused for good.
    pub fn take(&self, units: u64, now: u64) -> Result<(), Duration> {
        let span = self.span(units);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let new = base.saturating_add(span);
            // Allowed when the debt after this take stays within the burst; a take larger
            // than the burst is allowed when the bucket is full (nothing owed now).
            let allowed = new - now <= self.burst_ns || base == now;
            if !allowed {
                let wait = (new - now - self.burst_ns).min(base - now);
                return Err(Duration::from_nanos(wait));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(t) => tat = t,
            }
        }
    }

    /// Takes over the state of the bucket this one replaces (a reload): what was spent
    /// stays spent, so a reload is not a fresh burst.
    pub fn carry_over(&self, prev: &Bucket) {
        self.tat
            .store(prev.tat.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Gives `units` taken earlier back (an unspent lease).
    pub fn give_back(&self, units: u64, now: u64) {
        let span = self.span(units);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            // Never below now: credit beyond a full bucket does not exist.
            let new = tat.saturating_sub(span).max(now.min(tat));
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(t) => tat = t,
            }
        }
    }
}

/// An executor's local units of one bucket.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lease {
    left: u64,
    /// When it was taken (`now_ns`).
    since: u64,
}

/// Age after which an unspent lease goes back to its bucket.
const LEASE_TTL_NS: u64 = 50_000_000;

impl Lease {
    /// Spends `units` of `b`: from the lease while it lasts, else a new lease (or the
    /// bucket itself for a request larger than a lease). Err: the wait until it fits.
    pub fn spend(&mut self, b: &Bucket, units: u64, now: u64) -> Result<(), Duration> {
        if self.left > 0 && now.saturating_sub(self.since) > LEASE_TTL_NS {
            self.give_back(b, now);
        }
        if units <= self.left {
            self.left -= units;
            return Ok(());
        }
        if units > b.lease {
            return b.take(units, now);
        }
        // The rest of the old lease first, then a new one for the remainder.
        let need = units - self.left;
        match b.take(b.lease, now) {
            Ok(()) => {
                self.left = self.left + b.lease - units;
                self.since = now;
                Ok(())
            }
            // Not a whole lease left in the bucket: exactly what this request needs.
            Err(_) => b.take(need, now).map(|()| self.left = 0),
        }
    }

    /// Puts `units` spent from this lease back into it (a request refused after its
    /// units were taken).
    pub fn refund(&mut self, units: u64) {
        self.left += units;
    }

    /// Returns what is left of the lease to the bucket.
    pub fn give_back(&mut self, b: &Bucket, now: u64) {
        if self.left > 0 {
            b.give_back(self.left, now);
            self.left = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_gives_its_burst_then_the_rate() {
        let b = Bucket::new(100.0, 1.0);
        let t0 = 10 * S;
        let taken = (0..1000).filter(|_| b.take(1, t0).is_ok()).count();
        assert_eq!(taken, 100, "the burst");
        // The wait for the next one is one interval (10 ms).
        let w = b.take(1, t0).unwrap_err();
        assert!((9..=10).contains(&w.as_millis()), "{w:?}");
        // A second later: 100 more, not more.
        let taken = (0..1000).filter(|_| b.take(1, t0 + S).is_ok()).count();
        assert_eq!(taken, 100);
    }

    #[test]
    fn the_rate_holds_over_ten_seconds_at_any_pace() {
        for (rate, step_ns) in [(1000.0, 100_000), (1000.0, 7_000_000), (1e6, 1000)] {
            let b = Bucket::new(rate, 1.0);
            let (mut t, mut ok) = (S, 0u64);
            while t < 11 * S {
                if b.take(1, t).is_ok() {
                    ok += 1;
                }
                t += step_ns;
            }
            let want = rate * 10.0 + rate; // 10 s and one burst
            let offered = (10 * S / step_ns) as f64;
            let want = want.min(offered);
            assert!(
                (ok as f64 - want).abs() <= want * 0.02,
                "rate {rate} step {step_ns}: {ok} of {want}"
            );
        }
    }

    #[test]
    fn a_take_larger_than_the_burst_waits_for_a_full_bucket_then_goes_into_debt() {
        let b = Bucket::new(1000.0, 1.0);
        assert!(b.take(5000, S).is_ok(), "full bucket: into debt");
        let w = b.take(1, S).unwrap_err();
        // 5000 units at 1000/s: 4 s beyond the burst until one more fits.
        assert!((3990..=4001).contains(&w.as_millis()), "{w:?}");
    }

    #[test]
    fn leases_spend_locally_and_give_back_what_they_did_not_spend() {
        let b = Bucket::new(1000.0, 1.0);
        assert_eq!(b.lease, 15);
        let mut l = Lease::default();
        let t = S;
        l.spend(&b, 1, t).unwrap();
        assert_eq!(l.left, 14, "one lease taken, one unit spent");
        // Others drain the bucket meanwhile.
        let drained = (0..2000).filter(|_| b.take(1, t).is_ok()).count();
        assert_eq!(drained, 985);
        // 60 ms later (60 units refilled) the stale lease gives its 14 back before a new
        // one of 15 is taken: 59 left for the others, not 45.
        let t2 = t + 60_000_000;
        l.spend(&b, 1, t2).unwrap();
        assert_eq!(l.left, 14);
        let after = (0..2000).filter(|_| b.take(1, t2).is_ok()).count();
        assert!((58..=60).contains(&after), "{after}");
        // A request larger than a lease goes to the bucket itself.
        let mut big = Lease::default();
        assert!(big.spend(&b, 100, t2 + S).is_ok());
        assert_eq!(big.left, 0);
    }

    #[test]
    fn two_threads_share_one_rate_within_ten_percent() {
        // Executors as threads, each with its own lease, hammering one bucket for 1 s of
        // a synthetic clock: together they get the rate, not twice it.
        let b = std::sync::Arc::new(Bucket::new(1000.0, 0.1));
        let start = 5 * S;
        let hs: Vec<_> = (0..2)
            .map(|k| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut l = Lease::default();
                    let mut ok = 0;
                    let mut t = start + k * 333;
                    while t < start + 10 * S {
                        if l.spend(&b, 1, t).is_ok() {
                            ok += 1;
                        }
                        t += 50_000;
                    }
                    ok
                })
            })
            .collect();
        let ok: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert!((9_900..=10_300).contains(&ok), "{ok} in 10 s at 1000/s");
    }
}
