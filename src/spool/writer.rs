//! The append path: requests add their records to the pending commit batch; one writer
//! task per executor writes each batch at the next block of the current segment, then
//! (when a request asked for `durable`, or a second passed) `fdatasync`s it. Everything
//! that arrived while the previous write and sync ran goes in the next batch: the group
//! commit. A batch is handed to Kafka once written, from memory when the in-memory window
//! has room, else read back from disk later (`reader`).

use super::format::{self, HEADER};
use super::{file::SegFile, SPARE, SPARE_NEW};
use super::{io_failed, register, seg_name, unix_ms, wake, Feed, Segment, Spare, Spool, Wait};
use crate::error::HttpError;
use crate::exec::timer;
use crate::kafka::lane::Opaque;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long a full spool answers 507 before a request tries a new segment again.
const FULL_RETRY: Duration = Duration::from_secs(1);

/// Age after which the only segment is closed for trimming (see `age_roll_in`).
const ROLL_AFTER_MS: u64 = 1000;

/// Records appended since the last commit started.
pub(super) struct Pending {
    pub(super) payload: Vec<u8>,
    pub(super) first_seq: u64,
    pub(super) count: u32,
    commit: Rc<Commit>,
    durable: bool,
    waits: Vec<Wait>,
}

impl Pending {
    pub(super) fn new(first_seq: u64) -> Pending {
        Pending::with_capacity(first_seq, 0, 0)
    }

    /// `bytes`: the last batch's payload, about what the next one takes (one allocation
    /// instead of one per doubling as the records arrive); `waiters`: the requests that
    /// waited on it, the same for its waker list.
    fn with_capacity(first_seq: u64, bytes: usize, waiters: usize) -> Pending {
        Pending {
            payload: Vec::with_capacity(bytes),
            first_seq,
            count: 0,
            commit: Rc::new(Commit::with_waiters(waiters)),
            durable: false,
            waits: Vec::new(),
        }
    }
}

/// How far a commit batch got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Open,
    Written,
    Synced,
    Failed(HttpError),
}

/// One commit batch, shared by the requests in it.
pub struct Commit {
    stage: Cell<Stage>,
    wakers: RefCell<Vec<Waker>>,
    /// 201s wait for its sync (else it is synced for 202s after a second, or at a roll):
    /// only such a sync may run inline (`inline`).
    durable: Cell<bool>,
}

impl Default for Commit {
    fn default() -> Self {
        Commit::with_waiters(0)
    }
}

impl Commit {
    /// Room for `n` requests' wakers at once (one allocation per batch, not one per
    /// doubling as its requests wait).
    fn with_waiters(n: usize) -> Commit {
        Commit {
            stage: Cell::new(Stage::Open),
            wakers: RefCell::new(Vec::with_capacity(n)),
            durable: Cell::new(false),
        }
    }

    fn set(&self, s: Stage) {
        self.stage.set(s);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// What a request waits on: its commit batch written (202) or synced (201).
#[derive(Clone)]
pub struct SpoolTicket {
    commit: Rc<Commit>,
    pub durable: bool,
    /// The id of the request's first record (`ingestd-id`: executor, sequence); the rest
    /// follow in sequence.
    pub id: (u8, u64),
}

impl SpoolTicket {
    /// Resolves once the batch is on disk as the request asked, or failed (507).
    pub fn settled(&self) -> impl Future<Output = Result<(), HttpError>> + '_ {
        Settled(self)
    }
}

struct Settled<'a>(&'a SpoolTicket);

impl Future for Settled<'_> {
    type Output = Result<(), HttpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let t = self.0;
        match (t.commit.stage.get(), t.durable) {
            (Stage::Failed(e), _) => Poll::Ready(Err(e)),
            (Stage::Synced, _) | (Stage::Written, false) => Poll::Ready(Ok(())),
            _ => {
                // Polled again by the same task (a REST v3 stream checks its oldest
                // group on every pass): one waker, not one per poll.
                let mut w = t.commit.wakers.borrow_mut();
                if !w.iter().any(|k| k.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// One request's records being added to the pending batch.
pub struct Append<'a> {
    sp: &'a Spool,
    start: u32,
    first_seq: u64,
}

impl Spool {
    /// Starts appending a request of about `bytes` payload bytes: 507 while the spool is
    /// full, 503 while the pending batch is (the disk is behind).
    pub fn begin(&self, bytes: usize) -> Result<Append<'_>, HttpError> {
        let mut st = self.st.borrow_mut();
        if st.stopping {
            return Err(HttpError::ShuttingDown);
        }
        if let Some((at, e)) = st.full {
            // A trim clears `full`; a disk that filled up (ENOSPC) may free space
            // without one, so a request now and then tries a new segment again: the
            // spool recovers by itself once space frees. Until then it gets its 507
            // from the failed roll (its batch is refused whole, nothing half-written).
            if at.elapsed() < FULL_RETRY {
                return Err(e);
            }
            st.full = None;
        }
        if st.pending.count > 0 && st.pending.payload.len() + bytes > self.pending_max {
            return Err(HttpError::QueueFull);
        }
        Ok(Append {
            sp: self,
            start: st.pending.count,
            first_seq: st.next_seq,
        })
    }

    /// Task: writes and syncs the commit batches, until stopped with nothing pending.
    pub async fn write_loop(self: Rc<Self>, feed: Rc<dyn Feed>) {
        loop {
            // Written but unsynced data (202s only) is also synced after a quiet second,
            // and a segment due to close by age is closed while nothing is waiting.
            let (unsynced, roll) = {
                let st = self.st.borrow();
                (st.unsynced, age_roll_in(&st))
            };
            let quiet = roll
                .into_iter()
                .chain(unsynced.then_some(1000))
                .min()
                .map(Duration::from_millis);
            let next = match quiet {
                Some(d) => {
                    let tick = async {
                        timer::sleep(d).await;
                        None
                    };
                    futures_lite::future::or(async { Some(PendingWait(&self).await) }, tick).await
                }
                None => Some(PendingWait(&self).await),
            };
            match next {
                Some(Some(p)) => {
                    self.commit(p, &*feed).await;
                    self.st.borrow_mut().writing = false;
                }
                // Stopped, with nothing left to write.
                Some(None) => return,
                None => self.on_quiet().await,
            }
        }
    }

    /// Nothing arrived for a while: close a segment that is due by age (its last sync
    /// included), else sync what 202s left unsynced.
    async fn on_quiet(self: &Rc<Self>) {
        let roll = {
            let mut st = self.st.borrow_mut();
            // A few ms of slack: the age is wall-clock time, the timer's is monotonic.
            let aged = age_roll_in(&st).is_some_and(|ms| ms <= 5);
            let due = aged && st.pending.count == 0 && !st.stopping;
            // Held like a commit: the poller sleeps in the ring, where the blocking
            // thread's completion arrives (`Spool::ring_busy`).
            st.writing |= due;
            due.then_some(st.next_seq)
        };
        match roll {
            // Here rather than at the next batch, which would wait for the rename and the
            // directory's fsync (10-15 ms measured for the first 201 after a quiet second).
            // An error is the next batch's to meet: it rolls again.
            Some(base) => {
                let _ = self.roll(base).await;
                self.st.borrow_mut().writing = false;
            }
            None if self.st.borrow().unsynced => self.sync_quiet().await,
            None => {}
        }
    }

    /// Syncs the current segment after a quiet second with unsynced writes.
    async fn sync_quiet(self: &Rc<Self>) {
        let Some(file) = self.st.borrow().segs.back().and_then(|g| g.file.clone()) else {
            return;
        };
        // A batch nobody waits on: it makes `start_sync` sync (it only syncs for
        // waiting batches), through the same handles as every other sync.
        let nobody = Rc::new(Commit::default());
        self.st.borrow_mut().to_sync.push(nobody);
        self.start_sync(file);
    }

    /// Starts an fdatasync of `file` (the current segment) for the batches in `to_sync`,
    /// on a free sync handle; with none free, the sync that ends next starts it. So the
    /// batches written while one sync runs get the next sync, which overlaps it: a 201
    /// waits for about one sync after its write, not for the one in progress and then
    /// its own (the group commit is pipelined, up to `SYNC_HANDLES` deep).
    fn start_sync(self: &Rc<Self>, file: Rc<SegFile>) {
        if self.st.borrow().to_sync.is_empty() {
            return;
        }
        // Inline syncs never overlap (each blocks the thread): the one under way takes
        // what is written meanwhile, or starts the next sync when it ends.
        if self.st.borrow().syncs > 0 && self.inline.allowed(Instant::now()) {
            return;
        }
        let Some(h) = file.take_handle() else {
            return;
        };
        let batch = std::mem::take(&mut self.st.borrow_mut().to_sync);
        self.spawn_sync(file, h, batch);
    }

    /// Syncs `file` through handle `h`, then settles `batch`; then starts the current
    /// segment's next sync, for the batches written meanwhile.
    fn spawn_sync(self: &Rc<Self>, file: Rc<SegFile>, h: usize, batch: Vec<Rc<Commit>>) {
        self.st.borrow_mut().syncs += 1;
        let sp = self.clone();
        glommio::spawn_local(crate::exec::poller::counted(async move {
            let mut batch = batch;
            let inline = batch.iter().any(|c| c.durable.get()) && sp.inline.allowed(Instant::now());
            if inline {
                // The executor blocks in this sync: first let every ready connection add
                // its records and the writer write them, so that this sync covers them
                // (or give up after a few yields: a steady stream never goes quiet).
                crate::exec::poller::others_quiescent().await;
                // Only batches written to this file: after a roll meanwhile, `to_sync`
                // holds the new segment's, which this sync does not cover (they get the
                // new segment's sync when this one ends).
                let mut st = sp.st.borrow_mut();
                let current = st.segs.back().and_then(|g| g.file.as_ref());
                if current.is_some_and(|f| Rc::ptr_eq(f, &file)) {
                    batch.append(&mut st.to_sync);
                }
            }
            let ok = sp.sync(&file, h, inline).await;
            file.release(h);
            {
                let mut st = sp.st.borrow_mut();
                st.syncs -= 1;
                if !ok {
                    // A writeback error is reported once per open file: this sync may
                    // have taken the error for pages of batches written while it ran,
                    // whose own sync on this handle would then succeed. They fail too.
                    batch.append(&mut st.to_sync);
                }
            }
            if !ok {
                // The kernel may have dropped the pages that failed (marked clean, never
                // written): later syncs of this file would succeed over a hole. Like
                // PostgreSQL and etcd, never trust the file again: no more appends to
                // it (the next batch starts a new segment).
                let id = sp
                    .st
                    .borrow()
                    .segs
                    .iter()
                    .find(|g| g.file.as_ref().is_some_and(|f| Rc::ptr_eq(f, &file)))
                    .map(|g| g.id);
                if let Some(id) = id {
                    sp.seal_after_error(id);
                }
            }
            let stage = if ok {
                Stage::Synced
            } else {
                Stage::Failed(HttpError::SpoolFailed)
            };
            for c in batch {
                c.set(stage);
            }
            let current = sp.st.borrow().segs.back().and_then(|g| g.file.clone());
            if let Some(f) = current {
                sp.start_sync(f);
            }
        }))
        .detach();
    }

    /// The last sync of a segment being closed, for what 202s left unsynced and the 201s
    /// waiting: in the background, once one of its handles is free, so the write loop
    /// goes on in the next segment meanwhile (waiting for it stalled every 202 for the
    /// flush of a second of writes: 9-10 ms at p99).
    fn sync_sealed(self: &Rc<Self>, file: Rc<SegFile>, batch: Vec<Rc<Commit>>) {
        let sp = self.clone();
        sp.st.borrow_mut().syncs += 1;
        glommio::spawn_local(crate::exec::poller::counted(async move {
            let h = loop {
                match file.take_handle() {
                    Some(h) => break h,
                    None => timer::sleep(Duration::from_micros(100)).await,
                }
            };
            sp.st.borrow_mut().syncs -= 1;
            sp.spawn_sync(file, h, batch);
        }))
        .detach();
    }

    /// Ends segment `id` after a write or sync failed in it: sealed, so the next batch
    /// rolls to a new segment (and the roll gives this one its last sync). Its intact
    /// batches are replayed and trimmed as usual.
    fn seal_after_error(&self, id: u64) {
        let mut st = self.st.borrow_mut();
        if let Some(g) = st.seg(id) {
            if !g.sealed {
                g.sealed = true;
                tracing::warn!(executor = self.index, segment = %g.path.display(), "spool: no more writes to a segment after an I/O error in it; the next batch starts a new segment");
            }
        }
    }

    /// fdatasync of `file` through sync handle `h`, on this thread if `inline` (see
    /// `inline`), timed and counted; whether it worked (failures are logged).
    async fn sync(&self, file: &SegFile, h: usize, inline: bool) -> bool {
        let t0 = Instant::now();
        let writes = self.st.borrow().writes;
        let r = match crate::faults::check(crate::faults::Point::SpoolSync) {
            Err(e) => Err(e),
            Ok(()) if inline => file.fdatasync_blocking(h),
            Ok(()) => file.fdatasync_on(h).await,
        };
        let took = t0.elapsed();
        if inline {
            self.inline_took(took);
        }
        self.stats().fsync_took(took.as_micros() as u64);
        let mut st = self.st.borrow_mut();
        // `unsynced` and `last_sync` are the current segment's: a closed segment's last
        // sync says nothing of the new one. Writes that completed after this sync
        // started are not covered by it either.
        let current = st
            .segs
            .back()
            .and_then(|g| g.file.as_deref())
            .is_some_and(|f| std::ptr::eq(f, file));
        if current {
            st.last_sync = Instant::now();
            if r.is_ok() && st.writes == writes {
                st.unsynced = false;
            }
        }
        drop(st);
        if let Err(e) = &r {
            io_failed(self, "fdatasync", e);
        }
        r.is_ok()
    }

    /// Counts an inline sync; when slow ones make the next syncs go to io_uring for a
    /// back-off, logs it (the disk is slower than `spool_inline_sync_us` expects).
    fn inline_took(&self, took: Duration) {
        let stats = self.stats();
        crate::metrics::bump(&stats.inline_syncs, 1);
        if let Some(off) = self.inline.took(Instant::now(), took) {
            crate::metrics::bump(&stats.inline_backoffs, 1);
            tracing::warn!(
                executor = self.index,
                took_us = took.as_micros() as u64,
                backoff_s = off.as_secs(),
                "spool: fdatasyncs on the executor's thread are slower than spool_inline_sync_us; syncs go through io_uring for the back-off"
            );
        }
    }

    async fn commit(self: &Rc<Self>, p: Pending, feed: &dyn Feed) {
        let span = format::padded(HEADER + p.payload.len()) as u64;
        let room = {
            let st = self.st.borrow();
            let aged = age_roll_in(&st) == Some(0);
            st.segs
                .back()
                .filter(|g| !g.sealed)
                .is_some_and(|g| g.end + span <= self.seg_bytes && !aged)
        };
        if !room {
            if let Err(e) = self.roll(p.first_seq).await {
                feed.orphan(&p.waits);
                p.commit.set(Stage::Failed(e));
                return;
            }
        }
        let (file, id, base, tag, off) = {
            let st = self.st.borrow();
            let g = st.segs.back().expect("a segment after roll");
            (g.file.clone().expect("open"), g.id, g.base, g.tag, g.end)
        };
        let head = format::header(base, p.first_seq, p.count, &p.payload);
        let w = match crate::faults::check(crate::faults::Point::SpoolWrite) {
            Ok(()) => {
                file.write_with(span as usize, off, |buf| {
                    buf[..HEADER].copy_from_slice(&head);
                    buf[HEADER..HEADER + p.payload.len()].copy_from_slice(&p.payload);
                    buf[HEADER + p.payload.len()..].fill(0);
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = w {
            io_failed(self, "write", &e);
            // Part of the batch may be on disk, and its sequence numbers are spent: the
            // segment ends here (the next batch starts a new one), so nothing is ever
            // written, synced and answered 201 behind a hole.
            self.seal_after_error(id);
            feed.orphan(&p.waits);
            p.commit.set(Stage::Failed(HttpError::SpoolFailed));
            return;
        }
        let hot = {
            let mut st = self.st.borrow_mut();
            let g = st.seg(id).expect("the segment written");
            g.end += span;
            g.records += p.count as u64;
            if g.since_ms == 0 {
                g.since_ms = unix_ms();
            }
            st.unsynced = true;
            st.writes += 1;
            st.cold.is_none() && !st.stopping
        };
        self.publish();
        p.commit.set(Stage::Written);
        let Pending {
            payload,
            first_seq,
            count,
            commit,
            durable,
            waits,
        } = p;
        let mut handed = false;
        if hot {
            let batch = format::into_records(payload, count, first_seq, self.index, |i| {
                opaque(self.index, tag, &waits, i)
            });
            handed = batch.is_some_and(|b| feed.offer(b).is_ok());
        }
        if !handed {
            // The window is full (or the reader is behind): the batch stays on disk only.
            feed.orphan(&waits);
            let mut st = self.st.borrow_mut();
            if st.cold.is_none() {
                st.cold = Some((id, off));
            }
            drop(st);
            wake(&self.reader);
        }
        let due = self.st.borrow().last_sync.elapsed() >= Duration::from_secs(1);
        if durable || due {
            // The write loop goes on with the next batch while this one is synced.
            commit.durable.set(durable);
            self.st.borrow_mut().to_sync.push(commit);
            self.start_sync(file);
        }
    }

    /// Starts a new segment at `base` (the first sequence of the batch about to be
    /// written) from the prepared spare, or a file preallocated now. 507 at the quota.
    async fn roll(self: &Rc<Self>, base: u64) -> Result<(), HttpError> {
        // Syncs cover one segment: the one closed now gets its last in the background.
        let old = {
            let mut st = self.st.borrow_mut();
            let unsynced = st.unsynced || !st.to_sync.is_empty();
            st.unsynced = false;
            let batch = std::mem::take(&mut st.to_sync);
            let file = st.segs.back_mut().and_then(|g| {
                g.sealed = true;
                g.file.clone().filter(|_| unsynced)
            });
            file.map(|f| (f, batch))
        };
        if let Some((f, batch)) = old {
            self.sync_sealed(f, batch);
        }
        // Thousands of segments held by records Kafka has not acknowledged, every tag
        // taken: full until some are trimmed.
        let tags = self
            .st
            .borrow()
            .segs
            .iter()
            .map(|g| g.tag)
            .collect::<Vec<_>>();
        if super::free_tag(tags.into_iter(), 1).is_none() {
            self.st.borrow_mut().full = Some((Instant::now(), HttpError::SpoolFull));
            return Err(HttpError::SpoolFull);
        }
        // A spare being prepared (zero-filled, or a trimmed segment being renamed).
        while self.st.borrow().spare == Spare::Preparing {
            timer::sleep(Duration::from_millis(1)).await;
        }
        let path = self.dir.join(seg_name(base));
        let spare = self.st.borrow().spare == Spare::Ready;
        if !spare {
            // Room for a new file. With a spare, the trim comes after it is taken, so
            // that a segment trimmed now is recycled as the next spare, not deleted.
            self.trim();
        }
        // Every record id this segment can hold must be below the lease on disk before a
        // batch is written to it: renewed here, in the same directory sync as the rename.
        let lease = {
            let st = self.st.borrow();
            let span = super::LEASE_SPAN.max(4 * self.seg_bytes);
            (base.saturating_add(2 * self.seg_bytes) > st.lease).then(|| base.saturating_add(span))
        };
        let r = if spare {
            self.st.borrow_mut().spare = Spare::Installing;
            let r = install(self.dir.join(SPARE), path.clone(), lease).await;
            self.st.borrow_mut().spare = Spare::None;
            r
        } else if self.files() < self.max_segments {
            match prepare(&self.dir.join(SPARE_NEW), self.seg_bytes, self.direct).await {
                Ok(()) => install(self.dir.join(SPARE_NEW), path.clone(), lease).await,
                Err(e) => Err(e),
            }
        } else {
            self.st.borrow_mut().full = Some((Instant::now(), HttpError::SpoolFull));
            return Err(HttpError::SpoolFull);
        };
        if let (Ok(()), Some(l)) = (&r, lease) {
            self.st.borrow_mut().lease = l;
        }
        let opened = match r {
            Ok(()) => SegFile::open(&path, false, self.direct).await,
            Err(e) => Err(e),
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                io_failed(self, "new segment", &e);
                let disk = e.raw_os_error() == Some(libc::ENOSPC);
                self.st.borrow_mut().full = disk.then(|| (Instant::now(), HttpError::SpoolFailed));
                return Err(HttpError::SpoolFailed);
            }
        };
        self.trim();
        let tag = self.st.borrow_mut().take_tag();
        let Some(tag) = tag else {
            // The reader took the last free tag while this roll waited (checked at its
            // start): the file goes (empty; if a crash brings it back, a scan finds
            // nothing in it) and this batch gets its 507.
            self.st.borrow_mut().full = Some((Instant::now(), HttpError::SpoolFull));
            file.close().await;
            let _ = std::fs::remove_file(&path);
            return Err(HttpError::SpoolFull);
        };
        {
            let mut st = self.st.borrow_mut();
            let id = st.take_id();
            st.segs.push_back(Segment {
                id,
                origin: self.index,
                base,
                tag,
                path,
                file: Some(Rc::new(file)),
                end: 0,
                holes: Vec::new(),
                sealed: false,
                unscanned: false,
                found_at_start: false,
                records: 0,
                acked: 0,
                corrupt: false,
                since_ms: 0,
            });
        }
        self.publish();
        self.prepare_spare();
        Ok(())
    }

    /// Segment files counted against the quota: live segments in this executor's own
    /// directory and the spare (those of an executor that no longer runs only drain).
    fn files(&self) -> usize {
        let st = self.st.borrow();
        let own = st.segs.iter().filter(|g| g.origin == self.index).count();
        own + (st.spare != Spare::None) as usize
    }

    /// Prepares the next segment's file in the background, if the quota allows, so a
    /// roll seldom waits for a zero fill. The first call (at the executor's start) also
    /// ends the readiness hold `Spool::open` set, once the file is ready or cannot be
    /// made now.
    pub fn prepare_spare(self: &Rc<Self>) {
        {
            let st = self.st.borrow();
            // While Kafka keeps up, the segment just closed is trimmed in moments and
            // recycled as the spare: zero-filling another would only cost disk bandwidth.
            let sealed = st.segs.iter().filter(|g| g.sealed).count();
            let recycling_soon = st.cold.is_none() && sealed == 1;
            if st.spare != Spare::None || recycling_soon {
                self.stats().preparing_first.store(0, Relaxed);
                return;
            }
        }
        if self.files() >= self.max_segments {
            self.stats().preparing_first.store(0, Relaxed);
            return;
        }
        self.st.borrow_mut().spare = Spare::Preparing;
        let sp = self.clone();
        glommio::spawn_local(crate::exec::poller::counted(async move {
            let r = prepare(&sp.dir.join(SPARE_NEW), sp.seg_bytes, sp.direct)
                .await
                .and_then(|()| std::fs::rename(sp.dir.join(SPARE_NEW), sp.dir.join(SPARE)));
            if let Err(e) = &r {
                tracing::warn!(executor = sp.index, error = %e, "spool: cannot prepare the next segment");
            }
            sp.st.borrow_mut().spare = if r.is_ok() { Spare::Ready } else { Spare::None };
            sp.stats().preparing_first.store(0, Relaxed);
        }))
        .detach();
    }
}

/// While Kafka keeps up (one segment, a spare ready), the segment is closed a second after
/// its first write so it can be trimmed soon: a crash then replays (duplicates) about a
/// second of records, not a whole segment, and the trimmed segment becomes the next spare
/// (no zero fill). The milliseconds left until then; None when no age limit applies.
fn age_roll_in(st: &super::State) -> Option<u64> {
    if st.segs.len() != 1 || st.spare != Spare::Ready {
        return None;
    }
    let g = st.segs.back().filter(|g| !g.sealed && g.since_ms != 0)?;
    Some(ROLL_AFTER_MS.saturating_sub(unix_ms().saturating_sub(g.since_ms)))
}

/// The delivery opaque of record `i` of a batch in segment `tag`.
fn opaque(executor: u8, tag: u16, waits: &[Wait], i: usize) -> usize {
    let i = i as u32;
    let w = waits.iter().find(|w| i >= w.start && i < w.start + w.n);
    Opaque {
        executor,
        slot: w.map_or(0, |w| w.slot),
        gen: w.map_or(0, |w| w.gen),
        first: w.is_some_and(|w| i == w.start),
        last: w.is_some_and(|w| i + 1 == w.start + w.n),
        spool: tag,
    }
    .encode()
}

/// Writes a zero-filled file of `bytes` and syncs it: a later sync of a write into it
/// only flushes data (measured: 0.17 ms for 4 KiB, against 3.8 ms when the file grows).
async fn prepare(path: &std::path::Path, bytes: u64, direct: bool) -> std::io::Result<()> {
    let f = SegFile::open(path, true, direct).await?;
    const CHUNK: usize = 1 << 20;
    let mut off = 0;
    while off < bytes {
        let n = CHUNK.min((bytes - off) as usize);
        f.write_with(n, off, |b| b.fill(0)).await?;
        off += n as u64;
    }
    f.fdatasync().await?;
    f.close().await;
    Ok(())
}

/// Renames `from` to `to` in the same directory (and renews the record-id lease there
/// to `lease`, if given) and fsyncs it (so a crash cannot take the new name back), on
/// glommio's blocking thread: the directory fsync commits the filesystem journal, 0.4-1.6
/// ms measured under load once per roll, which in place would stall every connection of
/// this executor. The write loop waits (its batch needs the file); requests go on being
/// parsed and appended to the next batch.
async fn install(
    from: std::path::PathBuf,
    to: std::path::PathBuf,
    lease: Option<u64>,
) -> std::io::Result<()> {
    glommio::executor()
        .spawn_blocking(move || {
            let dir = to.parent().expect("a segment path has a directory");
            if let Some(l) = lease {
                super::write_lease(dir, l)?;
            }
            std::fs::rename(&from, &to)?;
            crate::sys::sync_dir(dir)
        })
        .await
}

impl Append<'_> {
    /// Adds one record.
    pub fn push<'h>(
        &mut self,
        topic: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        partition: i32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    ) {
        let mut st = self.sp.st.borrow_mut();
        if st.pending.count == 0 {
            st.pending.first_seq = st.next_seq;
        }
        format::push_record(
            &mut st.pending.payload,
            topic,
            key,
            value,
            partition,
            headers,
        );
        st.pending.count += 1;
        st.next_seq += 1;
    }

    /// Ends the request: what it waits on (its ack=kafka waiter, if any, rides along).
    pub fn finish(self, durable: bool, wait: Option<(u32, u16)>) -> SpoolTicket {
        let n = self.sp.st.borrow().pending.count - self.start;
        self.finish_waits(durable, wait.map(|w| (0, n, w)).into_iter())
    }

    /// Ends a request whose records each have a waiter of their own (in order).
    pub fn finish_each(self, durable: bool, waits: &[(u32, u16)]) -> SpoolTicket {
        let each = waits.iter().enumerate().map(|(i, &w)| (i as u32, 1, w));
        self.finish_waits(durable, each)
    }

    /// `waits`: (first record, relative to the request; records; waiter).
    fn finish_waits(
        self,
        durable: bool,
        waits: impl Iterator<Item = (u32, u32, (u32, u16))>,
    ) -> SpoolTicket {
        let mut st = self.sp.st.borrow_mut();
        for (at, n, (slot, gen)) in waits {
            st.pending.waits.push(Wait {
                start: self.start + at,
                n,
                slot,
                gen,
            });
        }
        st.pending.durable |= durable;
        let t = SpoolTicket {
            commit: st.pending.commit.clone(),
            durable,
            id: (self.sp.index, self.first_seq),
        };
        drop(st);
        wake(&self.sp.writer);
        t
    }
}

/// Resolves with the pending batch once it has records; None once stopped with nothing
/// left to write.
struct PendingWait<'a>(&'a Spool);

impl Future for PendingWait<'_> {
    type Output = Option<Pending>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Pending>> {
        let sp = self.0;
        let mut st = sp.st.borrow_mut();
        if st.pending.count > 0 {
            // Sized like this batch (bytes, and the requests waiting on it: one waker
            // each, not one per record): the next one is usually alike.
            let next = Pending::with_capacity(
                st.next_seq,
                st.pending.payload.len().min(1 << 20),
                st.pending.commit.wakers.borrow().len().min(1024),
            );
            st.writing = true;
            return Poll::Ready(Some(std::mem::replace(&mut st.pending, next)));
        }
        if st.stopping {
            return Poll::Ready(None);
        }
        drop(st);
        register(&sp.writer, cx);
        Poll::Pending
    }
}
