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
    /// Sequence of its first record; its name, and the tie of every batch to this file.
    base: u64,
    tag: u16,
    path: PathBuf,
    file: Option<Rc<SegFile>>,
    /// Where its intact batches end: written by this process, or found by the scan.
    end: u64,
    /// No more writes: full, or found at start.
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
    pending: writer::Pending,
    segs: VecDeque<Segment>,
    spare: Spare,
    /// Records not handed to Kafka yet start here (segment base, offset): new batches go
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

fn seg_name(base: u64) -> String {
    format!("{base:020}.{SEG_EXT}")
}

impl Spool {
    /// Opens executor `index`'s spool under `root`: lists the segments a previous run
    /// left (they are scanned and replayed by the reader, while new records are served),
    /// keeps a prepared spare, drops a half-prepared one. Only directory reads here.
    pub fn open(
        root: &Path,
        index: u8,
        seg_bytes: u64,
        max_segments: usize,
        pending_max: usize,
        inline_limit: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Rc<Spool>> {
        let dir = root.join(format!("executor-{index}"));
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        let mut max_base = 0;
        let mut spare = Spare::None;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.split('.').next().and_then(|b| b.parse::<u64>().ok());
            match (base, name.rsplit('.').next()) {
                (Some(b), Some(SEG_EXT)) => {
                    found.push(b);
                    max_base = max_base.max(b);
                }
                (Some(b), Some(CORRUPT_EXT)) => max_base = max_base.max(b),
                _ if name == SPARE => spare = Spare::Ready,
                _ if name == SPARE_NEW => std::fs::remove_file(e.path())?,
                _ => {}
            }
        }
        found.sort_unstable();
        // A fresh sequence above every id a previous run may have given (a segment holds
        // fewer records than bytes), and above the clock so a wiped spool does not reuse
        // ids either.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let next_seq = now_ns.max(max_base + seg_bytes);
        let mut st = State {
            next_seq,
            pending: writer::Pending::new(next_seq),
            segs: VecDeque::new(),
            spare,
            cold: found.first().map(|&b| (b, 0)),
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
        for base in &found {
            let tag = st.take_tag();
            st.segs.push_back(Segment {
                base: *base,
                tag,
                path: dir.join(seg_name(*base)),
                file: None,
                end: 0,
                sealed: true,
                unscanned: true,
                found_at_start: true,
                records: 0,
                acked: 0,
                corrupt: false,
                since_ms: unix_ms(),
            });
        }
        if !found.is_empty() {
            tracing::info!(executor = index, segments = found.len(), dir = %dir.display(), "spool: replaying segments a previous run left");
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
            if let Some(g) = st.segs.iter_mut().find(|g| g.tag == tag) {
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
    fn take_tag(&mut self) -> u16 {
        let t = self.next_tag;
        self.next_tag = if t >= crate::kafka::lane::Opaque::SPOOL_MASK {
            1
        } else {
            t + 1
        };
        t
    }

    fn seg(&mut self, base: u64) -> Option<&mut Segment> {
        self.segs.iter_mut().find(|g| g.base == base)
    }
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
