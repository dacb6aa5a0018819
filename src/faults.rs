//! Fault injection for the test suite, compiled only with the `fault-injection` feature
//! (tests/run.sh builds with it; the Debian package and a plain `cargo build` do not, so
//! no environment variable can turn a fault on in production). Without the feature every
//! function here is a constant the compiler folds away.
//!
//! `INGESTD_TEST_FAULTS` lists the faults, comma-separated, each `point:ERRNO:nth[:count]`:
//! the `nth` call at `point` (counted from 1 over the whole process) and the `count - 1`
//! calls after it (default 1) fail with `ERRNO` (a name such as `EIO`, or a number).
//! Points: `spool_write` (a commit batch's write, before anything is written),
//! `spool_sync` (an fdatasync a commit waits on, before it is issued), `scan_open` and
//! `scan_read` (opening and reading a segment found at start), `scan_short` (a start-up
//! read returns half of what it read: a short read; ERRNO unused).
//! `INGESTD_TEST_CLOCK_SHIFT_S=-3600` shifts the wall clock the spool's record ids start
//! from (a clock stepped back since the last run).
//! Other hooks read their own variables: `INGESTD_TEST_FREEZE_KAFKA_AFTER_MS`,
//! `INGESTD_TEST_PANIC_KAFKA_AFTER_MS` (kafka/thread.rs), `INGESTD_TEST_SPOOL_DIRECT`
//! (spool/file.rs); all go through `env` below.

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    SpoolWrite,
    SpoolSync,
    ScanOpen,
    ScanRead,
    ScanShort,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::Point;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    const POINTS: [(Point, &str); 5] = [
        (Point::SpoolWrite, "spool_write"),
        (Point::SpoolSync, "spool_sync"),
        (Point::ScanOpen, "scan_open"),
        (Point::ScanRead, "scan_read"),
        (Point::ScanShort, "scan_short"),
    ];

    struct Fault {
        point: Point,
        errno: i32,
        first: u64,
        count: u64,
    }

    static CALLS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

    fn faults() -> &'static [Fault] {
        static F: OnceLock<Vec<Fault>> = OnceLock::new();
        F.get_or_init(|| {
            let spec = std::env::var("INGESTD_TEST_FAULTS").unwrap_or_default();
            let f: Vec<Fault> = spec
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    parse(s.trim()).unwrap_or_else(|e| panic!("INGESTD_TEST_FAULTS: {s:?}: {e}"))
                })
                .collect();
            if !f.is_empty() {
                tracing::warn!(faults = %spec, "fault injection armed (test build)");
            }
            f
        })
    }

    fn parse(s: &str) -> Result<Fault, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if !(3..=4).contains(&parts.len()) {
            return Err("want point:ERRNO:nth[:count]".into());
        }
        let point = POINTS
            .iter()
            .find(|(_, n)| *n == parts[0])
            .map(|(p, _)| *p)
            .ok_or("unknown point")?;
        let errno = match parts[1] {
            "EIO" => libc::EIO,
            "ENOSPC" => libc::ENOSPC,
            "ENOMEM" => libc::ENOMEM,
            "EMFILE" => libc::EMFILE,
            "EAGAIN" => libc::EAGAIN,
            "EACCES" => libc::EACCES,
            n => n.parse().map_err(|_| format!("errno {n:?}"))?,
        };
        let first = parts[2].parse().map_err(|_| "nth: a number from 1")?;
        let count = parts
            .get(3)
            .map_or(Ok(1), |c| c.parse())
            .map_err(|_| "count")?;
        if first == 0 {
            return Err("nth counts from 1".into());
        }
        Ok(Fault {
            point,
            errno,
            first,
            count,
        })
    }

    pub fn check(p: Point) -> std::io::Result<()> {
        let f = faults();
        if f.is_empty() {
            return Ok(());
        }
        let n = CALLS[p as usize].fetch_add(1, Ordering::Relaxed) + 1;
        match f
            .iter()
            .find(|f| f.point == p && n >= f.first && n - f.first < f.count)
        {
            Some(f) => {
                tracing::warn!(point = ?p, call = n, errno = f.errno, "injected fault");
                Err(std::io::Error::from_raw_os_error(f.errno))
            }
            None => Ok(()),
        }
    }

    pub fn clock_shift_ns() -> i64 {
        std::env::var("INGESTD_TEST_CLOCK_SHIFT_S")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |s| s.saturating_mul(1_000_000_000))
    }

    pub fn env(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    use super::Point;

    #[inline(always)]
    pub fn check(_: Point) -> std::io::Result<()> {
        Ok(())
    }

    #[inline(always)]
    pub fn clock_shift_ns() -> i64 {
        0
    }

    #[inline(always)]
    pub fn env(_: &str) -> Option<String> {
        None
    }
}

/// Fails this call at `p` if the test build was told to.
#[inline(always)]
pub fn check(p: Point) -> std::io::Result<()> {
    imp::check(p)
}

/// Nanoseconds to add to the wall clock where the spool takes its first record id.
#[inline(always)]
pub fn clock_shift_ns() -> i64 {
    imp::clock_shift_ns()
}

/// A test hook's environment variable; always None outside the test build.
#[inline(always)]
pub fn env(name: &str) -> Option<String> {
    imp::env(name)
}
