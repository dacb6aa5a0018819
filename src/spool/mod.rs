//! The durable spool: per executor, a directory of preallocated segment files that every
//! accepted record is written to before Kafka sees it. `format` is the on-disk layout
//! (pure), `file` a DMA or buffered segment file, `writer` the append path with group
//! commit (202 once written, 201 once synced) and segment allocation, `reader` the replay
//! of records Kafka has not had yet (after a restart, or a backlog larger than the
//! in-memory window) and the trimming of acknowledged segments.
//!
//! Everything here runs on its executor's thread (Rc/RefCell): no cross-core traffic to
//! make a record durable. The Kafka thread credits each acknowledged record to its
//! segment through the delivery opaque's segment tag.

pub mod file;
pub mod format;
mod inline;
mod reader;
mod writer;

use crate::error::HttpError;
use crate::kafka::lane::RecordBatch;
use crate::metrics::{Metrics, SpoolStats};
use file::SegFile;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

pub use writer::{Append, Commit, SpoolTicket};

/// Where spooled records go next: the executor's in-memory window to Kafka.
pub trait Feed {
    /// Takes a batch of spooled records for Kafka if the window has room; gives it back
    /// otherwise (the records stay on disk and are read back later).
    fn offer(&self, batch: RecordBatch) -> Result<(), RecordBatch>;
    /// These ack=kafka waiters' records went to disk only: no report will come for them
    /// (they are answered 504, not confirmed; the records are still delivered).
    fn orphan(&self, waits: &[Wait]);
}

/// An ack=kafka request's records within a commit batch.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub start: u32,
    pub n: u32,
    pub slot: u32,
    pub gen: u16,
}

/// One segment file.
struct Segment {
    /// Unique within this process: the reader's cursor and lookups name a segment by it
    /// (bases are unique only within one executor directory).
    id: u64,
    /// The executor directory it lives in: this executor's own, or one of an executor
    /// that no longer runs (`Spool::open`). Its records' `ingestd-id`s name that executor.
    origin: u8,
    /// Sequence of its first record; its name, and the tie of every batch to this file.
    base: u64,
    /// Delivery reports credit the segment through this tag (`Opaque::spool`); 0 while
    /// it has none (a segment found at start gets one when it is scanned).
    tag: u16,
    path: PathBuf,
    file: Option<Rc<SegFile>>,
    /// Where its intact batches end: written by this process, or found by the scan.
    end: u64,
    /// Damaged ranges the scan found between intact batches: replay steps over them.
    holes: Vec<(u64, u64)>,
    /// No more writes: full, found at start, or an I/O error in it (never append past
    /// a failed write or sync: a restart's scan would have to step over the hole).
    sealed: bool,
    /// Found at start and not scanned yet: `end` and `records` unknown.
    unscanned: bool,
    found_at_start: bool,
    records: u64,
    acked: u64,
    /// Corrupt in the middle: set aside (renamed) instead of reused once trimmed.
    corrupt: bool,
    /// Unix ms of its first record (for the oldest-unacknowledged-age gauge, and the age
    /// at which the writer closes it: `writer::age_roll_in`); 0 while it has none.
    since_ms: u64,
}

/// The prepared (zero-filled or recycled) file the next segment is renamed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spare {
    None,
    Preparing,
    Ready,
    /// Taken by a roll, being renamed to the new segment (on the blocking thread): still
    /// on disk under its name, so a trim must not recycle another segment onto it.
    Installing,
}

struct State {
    next_seq: u64,
    /// Record ids below this are promised to this run: the bound is on disk (`LEASE`),
    /// so the next run starts above it whatever its clock says.
    lease: u64,
    /// The next segment's `id`.
    next_id: u64,
    pending: writer::Pending,
    segs: VecDeque<Segment>,
    spare: Spare,
    /// Records not handed to Kafka yet start here (segment id, offset): new batches go
    /// to disk only until the reader has caught up. None: hot, batches go straight on.
    cold: Option<(u64, u64)>,
    /// A batch the window refused, and the offset after it.
    held: Option<(RecordBatch, u64)>,
    next_tag: u16,
    /// A segment could not be allocated (quota or disk): since when, and the 507 a
    /// request gets until one is trimmed or `writer::FULL_RETRY` has passed.
    full: Option<(Instant, HttpError)>,
    stopping: bool,
    last_sync: Instant,
    /// Written data no sync has covered yet (a sync covers the writes before its start).
    unsynced: bool,
    /// Writes so far: a sync clears `unsynced` only if no write came after its start.
    writes: u64,
    /// fdatasyncs in flight, all segments.
    syncs: usize,
    /// A batch taken from `pending` is being written (or its segment rolled), or the
    /// writer closes a quiet segment (`writer::on_quiet`).
    writing: bool,
    /// Written batches with 201s waiting, for the next sync to start.
    to_sync: Vec<Rc<writer::Commit>>,
}

pub struct Spool {
    pub index: u8,
    /// `spool_dir`: the executor directories' parent.
    root: PathBuf,
    /// This executor's own directory.
    dir: PathBuf,
    seg_bytes: u64,
    max_segments: usize,
    /// Most payload bytes gathered while the previous commit is written (503 above).
    pending_max: usize,
    metrics: Arc<Metrics>,
    st: RefCell<State>,
    writer: RefCell<Option<Waker>>,
    reader: RefCell<Option<Waker>>,
    /// O_DIRECT writes (`file::direct_io_ok`), else buffered.
    direct: bool,
    /// Whether a 201's sync runs on this thread (`inline`).
    inline: inline::InlineSync,
}

impl Spool {
    /// Whether the spool has work in flight: syncs, a segment roll, a spare being
    /// prepared, the reader at work. The poller then sleeps in the ring, not in a
    /// direct epoll wait (`poller::Poller::run`), which neither an fdatasync's
    /// completion, nor the spool's short timers (a free sync handle, a spare), nor the
    /// blocking thread's end of a roll's rename and directory fsync end.
    pub fn ring_busy(&self) -> bool {
        let st = self.st.borrow();
        st.syncs > 0
            || st.writing
            || !st.to_sync.is_empty()
            || st.spare == Spare::Preparing
            || st.cold.is_some()
            || st.held.is_some()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const SEG_EXT: &str = "seg";
const SPARE: &str = "spare";
const SPARE_NEW: &str = "spare.new";
const CORRUPT_EXT: &str = "corrupt";
/// The record-id lease of an executor directory (`State::lease`), and its temporary.
const LEASE: &str = "next-id";
const LEASE_NEW: &str = "next-id.new";
/// How many record ids one lease covers (at a million records a second, 12 days; it is
/// renewed at a roll long before it runs out).
const LEASE_SPAN: u64 = 1 << 40;

fn seg_name(base: u64) -> String {
    format!("{base:020}.{SEG_EXT}")
}

fn exec_dir(root: &Path, index: usize) -> PathBuf {
    root.join(format!("executor-{index}"))
}

/// What an executor directory holds.
#[derive(Default)]
struct Listing {
    /// Segments: base, and when the file was last written (Unix ms; its records are at
    /// least about that old, for the oldest-unacknowledged-age gauge).
    segs: Vec<(u64, u64)>,
    /// Above every record id its segments (and quarantined ones) may hold.
    id_bound: u64,
    spare: bool,
}

/// Lists an executor directory; drops a half-prepared spare (`SPARE_NEW`), which never
/// holds records.
fn list(dir: &Path, seg_bytes: u64) -> std::io::Result<Listing> {
    let mut l = Listing::default();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.split('.').next().and_then(|b| b.parse::<u64>().ok());
        // A segment holds fewer records than bytes (of its size then, or now).
        let bound = |b: u64| {
            let size = e.metadata().map_or(0, |m| m.len());
            b.saturating_add(size.max(seg_bytes))
        };
        match (base, name.rsplit('.').next()) {
            (Some(b), Some(SEG_EXT)) => {
                l.id_bound = l.id_bound.max(bound(b));
                let written = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or_else(unix_ms, |d| d.as_millis() as u64);
                l.segs.push((b, written));
            }
            (Some(b), Some(CORRUPT_EXT)) => l.id_bound = l.id_bound.max(bound(b)),
            _ if name == SPARE => l.spare = true,
            _ if name == SPARE_NEW || name == LEASE_NEW => std::fs::remove_file(e.path())?,
            _ => {}
        }
    }
    l.segs.sort_unstable();
    Ok(l)
}

/// The directories of executors that no longer run whose segments executor `index` of
/// `executors` replays: `executor-K` for every K >= executors with K % executors ==
/// index (a host that came back with fewer CPUs, or `executors` lowered).
fn orphans(root: &Path, index: usize, executors: usize) -> Vec<(u8, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<(u8, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let k: usize = name.strip_prefix("executor-")?.parse().ok()?;
            let mine = k >= executors && k % executors.max(1) == index && k <= u8::MAX as usize;
            mine.then(|| (k as u8, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Reads a directory's record-id lease (None if there is none or it does not parse: the
/// other bounds then apply).
fn read_lease(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(LEASE)).ok()?;
    let v = text.trim().parse().ok();
    if v.is_none() {
        tracing::warn!(dir = %dir.display(), "spool: the record-id lease does not parse; ids start from the clock and the segments found");
    }
    v
}

/// Writes the lease durably (temporary, sync, rename); the caller syncs the directory.
fn write_lease(dir: &Path, upto: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(LEASE_NEW);
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{upto}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(LEASE))
}

impl Spool {
    /// Opens executor `index`'s spool under `root` (`executors` run now): lists the
    /// segments a previous run left in its directory and in the directories of executors
    /// that no longer run (`orphans`: they are scanned and replayed by the reader, while
    /// new records are served, and removed once Kafka has every record), keeps a
    /// prepared spare, drops a half-prepared one, and renews the record-id lease. Only
    /// directory reads and a few small synced writes here.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        root: &Path,
        index: u8,
        executors: usize,
        seg_bytes: u64,
        max_segments: usize,
        pending_max: usize,
        inline_limit: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Rc<Spool>> {
        let dir = exec_dir(root, index as usize);
        crate::sys::create_dir_synced(&dir)?;
        let own = list(&dir, seg_bytes)?;
        // (origin, path, base, last written)
        let mut found: Vec<(u8, PathBuf, u64, u64)> = Vec::new();
        for (k, odir) in orphans(root, index as usize, executors) {
            match list(&odir, seg_bytes) {
                Ok(l) if !l.segs.is_empty() => {
                    tracing::warn!(executor = index, from = %odir.display(), segments = l.segs.len(), "spool: replaying the segments of an executor that no longer runs (fewer executors than the run that wrote them)");
                    found.extend(
                        l.segs
                            .iter()
                            .map(|&(b, t)| (k, odir.join(seg_name(b)), b, t)),
                    );
                }
                // Nothing to replay: its prepared spare holds no record, only disk.
                Ok(l) if l.spare => {
                    let _ = std::fs::remove_file(odir.join(SPARE));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(executor = index, dir = %odir.display(), error = %e, "spool: cannot list the directory of an executor that no longer runs; its records stay there for a later start");
                }
            }
        }
        found.extend(
            own.segs
                .iter()
                .map(|&(b, t)| (index, dir.join(seg_name(b)), b, t)),
        );
        // A fresh sequence above every id a previous run may have given: above its lease,
        // the segments it left, and the clock (a wiped spool does not reuse ids either).
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            .saturating_add_signed(crate::faults::clock_shift_ns());
        let next_seq = now_ns.max(own.id_bound).max(read_lease(&dir).unwrap_or(0));
        let lease = next_seq.saturating_add(LEASE_SPAN.max(4 * seg_bytes));
        write_lease(&dir, lease).and_then(|()| crate::sys::sync_dir(&dir))?;
        let mut st = State {
            next_seq,
            lease,
            next_id: 0,
            pending: writer::Pending::new(next_seq),
            segs: VecDeque::new(),
            spare: if own.spare { Spare::Ready } else { Spare::None },
            cold: None,
            held: None,
            next_tag: 1,
            full: None,
            stopping: false,
            last_sync: Instant::now(),
            unsynced: false,
            writes: 0,
            syncs: 0,
            writing: false,
            to_sync: Vec::new(),
        };
        for (origin, path, base, written) in found {
            let id = st.take_id();
            st.segs.push_back(Segment {
                id,
                origin,
                base,
                tag: 0,
                path,
                file: None,
                end: 0,
                holes: Vec::new(),
                sealed: true,
                unscanned: true,
                found_at_start: true,
                records: 0,
                acked: 0,
                corrupt: false,
                // Its first record is older than its last write: the best bound left.
                since_ms: written,
            });
        }
        st.cold = st.segs.front().map(|g| (g.id, 0));
        if !st.segs.is_empty() {
            tracing::info!(executor = index, segments = st.segs.len(), dir = %dir.display(), "spool: replaying segments a previous run left");
        }
        // Readiness (/readyz, READY=1) waits for the first segment's file, which the
        // executor starts preparing right after this (`prepare_spare`), so the first
        // requests do not wait for its zero fill (150-470 ms for 16 MiB here). Set here,
        // before the executor reports it started, so no /readyz can come before it.
        metrics.execs[index as usize]
            .spool
            .preparing_first
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let direct = file::direct_io_ok(&dir);
        if index == 0 {
            tracing::info!(
                dir = %dir.display(),
                direct,
                "spool: {}",
                if direct {
                    "O_DIRECT writes (the device has polled queues)"
                } else {
                    "buffered writes, fdatasync for durability (the device has no polled queues: Glommio's DMA path would spin)"
                }
            );
        }
        let sp = Rc::new(Spool {
            direct,
            inline: inline::InlineSync::new(inline_limit),
            index,
            root: root.to_path_buf(),
            dir,
            seg_bytes,
            max_segments,
            pending_max,
            metrics,
            st: RefCell::new(st),
            writer: RefCell::new(None),
            reader: RefCell::new(None),
        });
        sp.publish();
        Ok(sp)
    }

    fn stats(&self) -> &SpoolStats {
        &self.metrics.execs[self.index as usize].spool
    }

    /// Refreshes the gauges.
    fn publish(&self) {
        let st = self.st.borrow();
        let s = self.stats();
        s.segments.store(st.segs.len() as u64, Relaxed);
        s.bytes
            .store(st.segs.iter().map(|g| g.end).sum::<u64>(), Relaxed);
        let oldest = st
            .segs
            .iter()
            .find(|g| g.unscanned || g.acked < g.records)
            .map_or(0, |g| g.since_ms);
        s.oldest_unix_ms.store(oldest, Relaxed);
    }

    /// Kafka has (or the dead-letter file has) `n` more records of the segment `tag`.
    pub fn acked(&self, tag: u16, n: u32) {
        {
            let mut st = self.st.borrow_mut();
            if let Some(g) = st.segs.iter_mut().find(|g| g.tag == tag && tag != 0) {
                g.acked += n as u64;
            }
        }
        self.trim();
    }

    /// The window to Kafka has room again: the reader may go on.
    pub fn kick(&self) {
        if self.st.borrow().cold.is_some() {
            wake(&self.reader);
        }
    }

    /// Shutdown: no new appends; the writer finishes what was appended, the reader
    /// stops handing records over (they stay on disk for the next start).
    pub fn stop(&self) {
        self.st.borrow_mut().stopping = true;
        wake(&self.writer);
        wake(&self.reader);
    }

    /// Whether everything appended has been written.
    pub fn written(&self) -> bool {
        let st = self.st.borrow();
        st.pending.count == 0 && !st.writing && st.syncs == 0 && st.to_sync.is_empty()
    }

    /// Shutdown, after Kafka's last reports: seals the segment being written and trims
    /// every segment Kafka acknowledged completely, so a clean restart replays nothing.
    pub fn close(&self) {
        if let Some(g) = self.st.borrow_mut().segs.back_mut() {
            g.sealed = true;
        }
        self.trim();
        let left: u64 = self
            .st
            .borrow()
            .segs
            .iter()
            .map(|g| g.records.saturating_sub(g.acked))
            .sum();
        if left > 0 {
            tracing::info!(
                executor = self.index,
                records = left,
                "spool: records Kafka has not acknowledged stay on disk for the next start"
            );
        }
    }
}

impl Segment {
    fn trimmable(&self) -> bool {
        self.sealed && !self.unscanned && self.acked >= self.records
    }
}

impl State {
    /// A tag no live segment holds (acks credit segments by tag: a tag handed out twice
    /// would credit one segment's records to the other, which could then be trimmed
    /// before Kafka has them). None when every tag is taken.
    fn take_tag(&mut self) -> Option<u16> {
        let t = free_tag(self.segs.iter().map(|g| g.tag), self.next_tag)?;
        self.next_tag = t % crate::kafka::lane::Opaque::SPOOL_MASK + 1;
        Some(t)
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn seg(&mut self, id: u64) -> Option<&mut Segment> {
        self.segs.iter_mut().find(|g| g.id == id)
    }
}

/// The first tag from `from` on (1..=SPOOL_MASK, wrapping; 0 means none) not in `used`.
fn free_tag(used: impl Iterator<Item = u16>, from: u16) -> Option<u16> {
    const MAX: u16 = crate::kafka::lane::Opaque::SPOOL_MASK;
    let mut taken = vec![false; MAX as usize + 1];
    for t in used {
        taken[(t & MAX) as usize] = true;
    }
    let from = from.clamp(1, MAX);
    (from..=MAX).chain(1..from).find(|&t| !taken[t as usize])
}

fn wake(w: &RefCell<Option<Waker>>) {
    let w = w.borrow_mut().take();
    if let Some(w) = w {
        w.wake();
    }
}

fn register(w: &RefCell<Option<Waker>>, cx: &std::task::Context<'_>) {
    let mut w = w.borrow_mut();
    if !w.as_ref().is_some_and(|x| x.will_wake(cx.waker())) {
        *w = Some(cx.waker().clone());
    }
}

/// A write or sync failure: counted and logged (at most every 10 s per executor).
fn io_failed(sp: &Spool, what: &str, e: &std::io::Error) {
    crate::metrics::bump(&sp.stats().write_errors, 1);
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let due = LAST.with(|l| {
        let due = l.get().is_none_or(|t| t.elapsed().as_secs() >= 10);
        if due {
            l.set(Some(Instant::now()));
        }
        due
    });
    if due {
        tracing::error!(executor = sp.index, error = %e, "spool: {what} failed (a failed write or sync is answered 507)");
    }
}

#[cfg(test)]
mod tests {
    use super::free_tag;
    use crate::kafka::lane::Opaque;

    #[test]
    fn a_tag_held_by_a_live_segment_is_never_handed_out_again() {
        const MAX: u16 = Opaque::SPOOL_MASK;
        // One segment stuck on tag 5 while 8,191 others come and go: the wrap skips it.
        let mut next = 1;
        let mut live: Vec<u16> = vec![5];
        for _ in 0..3 * MAX as usize {
            let t = free_tag(live.iter().copied(), next).unwrap();
            assert_ne!(t, 5);
            assert_ne!(t, 0);
            next = t % MAX + 1;
            // The segment before is trimmed, this one goes live.
            live.truncate(1);
            live.push(t);
        }
        assert_eq!(free_tag([MAX].into_iter(), MAX), Some(1));
        // Every tag taken: none.
        assert_eq!(free_tag(1..=MAX, 1), None);
        assert_eq!(free_tag((1..=MAX).filter(|&t| t != 77), 100), Some(77));
    }
}
