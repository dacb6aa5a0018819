//! Reading back: the records Kafka has not had yet start at the cold cursor (segments a
//! previous run left, or batches the in-memory window had no room for). One reader task
//! per executor hands them over, in order, as the window frees up; once it reaches the
//! writer's position, new batches go straight to Kafka again. Segments found at start are
//! scanned first (torn tail cut, corruption in the middle quarantined). Acknowledged
//! segments are trimmed here: recycled as the next spare, or removed.

use super::format::{self, Damage, HEADER};
use super::{register, Feed, Spare, Spool, CORRUPT_EXT, SPARE};
use crate::exec::timer;
use crate::metrics::bump;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

/// Bytes read per step (whole batches are handed over; a larger batch is read whole).
const READ_CHUNK: usize = 1 << 20;

/// Tries of a start-up read that fails with an error of the disk (EIO) before its range
/// is given up (`Spool::read_found`); errors of the machine are retried until they pass.
const READ_TRIES: u32 = 5;

/// Errors that say nothing of the data: out of fds or memory, try again.
fn machine_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR | libc::ENOBUFS
        )
    )
}

/// Logs (rate-limited, counted) and waits before the next try: 100 ms, doubling to 5 s.
async fn note_retry(
    sp: &Spool,
    what: &str,
    path: &std::path::Path,
    e: &std::io::Error,
    tries: u32,
) {
    super::io_failed(sp, &format!("{what} ({}, try {tries})", path.display()), e);
    let ms = 100u64.saturating_mul(1 << tries.min(6)).min(5000);
    timer::sleep(std::time::Duration::from_millis(ms)).await;
}

/// Runs `f` until it succeeds: a segment found at start is never skipped for an error
/// of the machine or the file system (EMFILE, ENOMEM, EACCES, EIO on open): replay waits,
/// logging, and the records stay on disk.
async fn retry<T, F, Fut>(sp: &Spool, what: &str, path: &std::path::Path, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tries += 1;
                note_retry(sp, what, path, &e, tries).await;
            }
        }
    }
}

impl Spool {
    /// Task: hands the records at the cold cursor to Kafka, as room frees up.
    pub async fn read_loop(self: Rc<Self>, feed: Rc<dyn Feed>) {
        while (ColdWait(&self)).await {
            if !self.step(&*feed).await {
                // The window is full: wait for Kafka to take records (`kick`).
                (RoomWait(&self, false)).await;
            }
        }
    }

    /// One step of the reader; false when the window refused a batch.
    async fn step(&self, feed: &dyn Feed) -> bool {
        let held = self.st.borrow_mut().held.take();
        if let Some((b, next)) = held {
            match feed.offer(b) {
                Ok(()) => self.advance(next),
                Err(b) => {
                    self.st.borrow_mut().held = Some((b, next));
                    return false;
                }
            }
        }
        let Some((id, mut off)) = self.st.borrow().cold else {
            return true;
        };
        let seg = {
            let mut st = self.st.borrow_mut();
            st.seg(id).map(|g| {
                // Step over a damaged range the scan found.
                if let Some(&(_, to)) = g.holes.iter().find(|&&(from, to)| off >= from && off < to)
                {
                    off = to;
                }
                let limit = g
                    .holes
                    .iter()
                    .map(|&(from, _)| from)
                    .filter(|&f| f > off)
                    .min();
                (
                    g.unscanned,
                    g.end,
                    limit.unwrap_or(g.end).min(g.end),
                    g.sealed,
                    g.file.clone(),
                    g.base,
                )
            })
        };
        let Some((unscanned, end, limit, sealed, file, base)) = seg else {
            self.next_segment(id);
            return true;
        };
        self.advance(off);
        if unscanned {
            self.scan_found(id).await;
            return true;
        }
        if off >= end {
            if sealed {
                self.next_segment(id);
            } else {
                // Caught up with the writer: its next batches go straight to Kafka.
                self.st.borrow_mut().cold = None;
            }
            self.trim();
            return true;
        }
        let Some(file) = file else {
            self.next_segment(id);
            return true;
        };
        let mut len = READ_CHUNK.min((limit - off) as usize);
        let data = loop {
            let data = match file.read_at(off, len).await {
                Ok(d) => d,
                Err(e) => {
                    // A failing read is tried again (the data is still there, or the disk
                    // is gone and writes fail too); it is not the end of the segment.
                    super::io_failed(self, "read", &e);
                    timer::sleep(std::time::Duration::from_millis(100)).await;
                    return true;
                }
            };
            // A batch larger than one read: read it whole.
            match format::read_header(&data, base) {
                Some(h) if h.span() > data.len() && h.span() as u64 <= limit - off => {
                    len = h.span();
                }
                _ => break data,
            }
        };
        let mut pos = 0;
        while pos + HEADER <= data.len() {
            let Some(h) = format::read_header(&data[pos..], base) else {
                self.give_up_on(id, off + pos as u64);
                return true;
            };
            let span = h.span();
            if pos + span > data.len() && pos > 0 {
                break; // read again from here on the next step
            }
            let Some(payload) = format::payload(&data[pos..], &h) else {
                self.give_up_on(id, off + pos as u64);
                return true;
            };
            if !self.hand(feed, id, payload.to_vec(), h, off + (pos + span) as u64) {
                return false;
            }
            pos += span;
        }
        true
    }

    /// Offers one batch read back; false (and held) when the window has no room.
    fn hand(
        &self,
        feed: &dyn Feed,
        id: u64,
        payload: Vec<u8>,
        h: format::BatchHead,
        next: u64,
    ) -> bool {
        let (tag, origin, found) = {
            let mut st = self.st.borrow_mut();
            let g = st.seg(id).expect("segment being read");
            (g.tag, g.origin, g.found_at_start)
        };
        let executor = self.index;
        // Ids name the executor that wrote the record (`origin`), reports come back here.
        let batch = format::into_records(payload, h.count, h.first_seq, origin, |_| {
            crate::kafka::lane::Opaque {
                executor,
                spool: tag,
                ..Default::default()
            }
            .encode()
        });
        let Some(batch) = batch else {
            self.give_up_on(id, next);
            return true;
        };
        let s = self.stats();
        bump(&s.replayed, h.count as u64);
        if found {
            s.replay_left.store(
                s.replay_left.load(Relaxed).saturating_sub(h.count as u64),
                Relaxed,
            );
        }
        match feed.offer(batch) {
            Ok(()) => {
                self.advance(next);
                true
            }
            Err(b) => {
                self.st.borrow_mut().held = Some((b, next));
                false
            }
        }
    }

    fn advance(&self, next: u64) {
        if let Some((_, off)) = self.st.borrow_mut().cold.as_mut() {
            *off = next;
        }
    }

    /// Moves the cursor to the segment after `id` (in the order the reader replays:
    /// found ones, then this run's), or hot when there is none. A cursor whose segment is
    /// gone (never expected: trims stay behind the cursor) starts over at the first
    /// segment: records may go twice, none is skipped.
    fn next_segment(&self, id: u64) {
        let mut st = self.st.borrow_mut();
        let next = match st.segs.iter().position(|g| g.id == id) {
            Some(i) => st.segs.get(i + 1),
            None => st.segs.front(),
        };
        st.cold = next.map(|g| (g.id, 0));
        drop(st);
        self.trim();
    }

    /// A batch this process wrote does not read back (the disk lost it): log, count,
    /// and treat the segment as ending there. It is kept (its count of records stays
    /// above what Kafka can acknowledge, so it is never trimmed) until the next start,
    /// whose scan keeps every intact batch after the damage.
    fn give_up_on(&self, id: u64, at: u64) {
        tracing::error!(
            executor = self.index,
            segment = id,
            offset = at,
            "spool: a batch does not read back; the segment is cut there and kept for the next start's scan"
        );
        bump(&self.stats().quarantined, 1);
        let mut st = self.st.borrow_mut();
        if let Some(g) = st.seg(id) {
            g.end = at;
            g.corrupt = true;
            g.sealed = true;
        }
        drop(st);
        self.next_segment(id);
    }

    /// Scans a segment a previous run left: keeps every intact batch, steps over damage,
    /// cuts a torn tail; a segment damaged in the middle is quarantined once replayed.
    /// Read errors never make it skip a segment (`read_found`).
    async fn scan_found(&self, id: u64) {
        let Some((base, path)) = self
            .st
            .borrow_mut()
            .seg(id)
            .map(|g| (g.base, g.path.clone()))
        else {
            return;
        };
        let (file, image, unreadable) = self.read_found(&path).await;
        let s = format::scan(&image, base);
        let records: u64 = s.batches.iter().map(|(_, h)| h.count as u64).sum();
        match s.damage {
            Damage::None => {}
            Damage::TornTail => {
                tracing::warn!(executor = self.index, path = %path.display(), offset = s.end, records, "spool: cut a torn tail (a write the crash interrupted)")
            }
            Damage::Corrupt => {
                tracing::error!(executor = self.index, path = %path.display(), holes = ?s.holes, records, "spool: segment damaged in the middle: every intact batch is replayed, the damaged ranges are stepped over, and the file is set aside as *.corrupt once replayed");
            }
        }
        if s.damage == Damage::Corrupt || unreadable {
            bump(&self.stats().quarantined, 1);
        }
        // Acks credit the segment by tag: it needs one before its records go out.
        let tag = loop {
            if let Some(t) = self.st.borrow_mut().take_tag() {
                break t;
            }
            timer::sleep(std::time::Duration::from_millis(100)).await;
        };
        if let Some(g) = self.st.borrow_mut().seg(id) {
            g.tag = tag;
            g.unscanned = false;
            g.end = s.end as u64;
            g.holes = s.holes.iter().map(|&(a, b)| (a as u64, b as u64)).collect();
            g.records = records;
            g.corrupt = s.damage == Damage::Corrupt || unreadable;
            g.file = Some(Rc::new(file));
        }
        let left = &self.stats().replay_left;
        left.store(left.load(Relaxed) + records, Relaxed);
        self.publish();
    }

    /// Opens and reads a segment found at start, whole (a previous run may have used
    /// another segment size), checking the length read against the file's size. Errors
    /// are retried and never taken for the data's: those of the machine (EMFILE, ENOMEM,
    /// EAGAIN: a 16 MiB read may not get its memory) until they pass, others (EIO) a few
    /// times per 1 MiB range; a range that still does not read is zero-filled, which the
    /// scan steps over as damage (true: the segment is quarantined once replayed). The
    /// reader waits here meanwhile: later segments are not replayed out of order.
    async fn read_found(&self, path: &std::path::Path) -> (super::file::SegFile, Vec<u8>, bool) {
        let file = retry(self, "open a segment found at start", path, || async {
            crate::faults::check(crate::faults::Point::ScanOpen)?;
            super::file::SegFile::open(path, false, self.direct).await
        })
        .await;
        let size = retry(self, "size a segment found at start", path, || async {
            std::fs::metadata(path).map(|m| m.len())
        })
        .await;
        let mut image = Vec::with_capacity(size as usize);
        let mut unreadable = false;
        let mut short = 0;
        while (image.len() as u64) < size {
            let pos = image.len() as u64;
            let len = READ_CHUNK.min((size - pos) as usize);
            let mut failures = 0;
            let got = loop {
                let r = match crate::faults::check(crate::faults::Point::ScanRead) {
                    Ok(()) => file.read_at(pos, len).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(mut d) => {
                        if crate::faults::check(crate::faults::Point::ScanShort).is_err() {
                            d.truncate(d.len() / 2);
                        }
                        break Some(d);
                    }
                    Err(e) if machine_error(&e) => {
                        failures += 1;
                        note_retry(self, "read a segment found at start", path, &e, failures).await
                    }
                    Err(e) if failures < READ_TRIES => {
                        failures += 1;
                        note_retry(self, "read a segment found at start", path, &e, failures).await
                    }
                    Err(e) => {
                        tracing::error!(executor = self.index, path = %path.display(), offset = pos, len, error = %e, "spool: a range of a segment does not read after {READ_TRIES} tries: zero-filled, its batches are lost, the rest is replayed and the file quarantined");
                        break None;
                    }
                }
            };
            match got {
                Some(d) if d.is_empty() => {
                    // The file ends before its size said (it shrank, or the read came up
                    // short at the end): try again, then take what is there.
                    short += 1;
                    if short > READ_TRIES {
                        tracing::error!(executor = self.index, path = %path.display(), read = pos, size, "spool: a segment reads shorter than its size; scanned as far as it reads");
                        break;
                    }
                    note_retry(
                        self,
                        "read a segment found at start",
                        path,
                        &std::io::Error::other("short read at the end"),
                        short,
                    )
                    .await;
                }
                // A short read is not the end: the rest is read from where it stopped.
                Some(d) => image.extend_from_slice(&d),
                None => {
                    unreadable = true;
                    image.resize(image.len() + len, 0);
                }
            }
        }
        (file, image, unreadable)
    }

    /// Trims every segment Kafka acknowledged completely and the reader has passed:
    /// recycled as the spare (its stale batches name another segment, so they read as
    /// the end of the log), removed, or set aside as `*.corrupt`.
    pub(super) fn trim(&self) {
        loop {
            let mut st = self.st.borrow_mut();
            // Only segments the reader has passed: before the cursor's, in replay order.
            let cursor = st
                .cold
                .map(|(id, _)| st.segs.iter().position(|g| g.id == id).unwrap_or(0));
            let Some(i) = st
                .segs
                .iter()
                .enumerate()
                .position(|(i, g)| g.trimmable() && cursor.is_none_or(|c| i < c))
            else {
                break;
            };
            let g = st.segs.remove(i).unwrap();
            st.full = None;
            let own = g.origin == self.index;
            let recycle = own && !g.corrupt && st.spare == Spare::None && g.file.is_some();
            if recycle {
                st.spare = Spare::Ready;
            }
            let last_of_origin = !own && !st.segs.iter().any(|s| s.origin == g.origin);
            drop(st);
            let r = if g.corrupt {
                let to = g.path.with_extension(CORRUPT_EXT);
                std::fs::rename(&g.path, to)
            } else if recycle {
                std::fs::rename(&g.path, self.dir.join(SPARE))
            } else {
                std::fs::remove_file(&g.path)
            };
            if let Err(e) = r {
                tracing::warn!(executor = self.index, path = %g.path.display(), error = %e, "spool: cannot trim a segment");
                if recycle {
                    self.st.borrow_mut().spare = Spare::None;
                }
            }
            if last_of_origin {
                self.retire(g.origin);
            }
        }
        self.publish();
    }

    /// Every record an executor that no longer runs left behind is in Kafka: its spare
    /// goes. The directory stays with its record-id lease (a few bytes), so that ids stay
    /// unique if that executor runs again, whatever the clock says then.
    fn retire(&self, origin: u8) {
        let dir = super::exec_dir(&self.root, origin as usize);
        for f in [SPARE, super::SPARE_NEW] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        tracing::info!(executor = self.index, dir = %dir.display(), "spool: replayed everything an executor that no longer runs left behind");
    }
}

/// Resolves true when there are records at the cold cursor to hand over; false once the
/// spool stops.
struct ColdWait<'a>(&'a Spool);

impl Future for ColdWait<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let st = self.0.st.borrow();
        if st.stopping {
            return Poll::Ready(false);
        }
        if st.cold.is_some() {
            return Poll::Ready(true);
        }
        drop(st);
        register(&self.0.reader, cx);
        Poll::Pending
    }
}

/// Resolves at the next `kick` (room in the window) or stop.
struct RoomWait<'a>(&'a Spool, bool);

impl Future for RoomWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.1 || self.0.st.borrow().stopping {
            return Poll::Ready(());
        }
        self.1 = true;
        register(&self.0.reader, cx);
        Poll::Pending
    }
}
