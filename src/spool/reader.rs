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
        let Some((base, off)) = self.st.borrow().cold else {
            return true;
        };
        let seg = {
            let mut st = self.st.borrow_mut();
            st.seg(base)
                .map(|g| (g.unscanned, g.end, g.sealed, g.file.clone(), g.path.clone()))
        };
        let Some((unscanned, end, sealed, file, path)) = seg else {
            self.next_segment(base);
            return true;
        };
        if unscanned {
            self.scan_found(base, &path).await;
            return true;
        }
        if off >= end {
            if sealed {
                self.next_segment(base);
            } else {
                // Caught up with the writer: its next batches go straight to Kafka.
                self.st.borrow_mut().cold = None;
            }
            self.trim();
            return true;
        }
        let Some(file) = file else {
            self.next_segment(base);
            return true;
        };
        let mut len = READ_CHUNK.min((end - off) as usize);
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
                Some(h) if h.span() > data.len() && h.span() as u64 <= end - off => {
                    len = h.span();
                }
                _ => break data,
            }
        };
        let mut pos = 0;
        while pos + HEADER <= data.len() {
            let Some(h) = format::read_header(&data[pos..], base) else {
                self.give_up_on(base, off + pos as u64);
                return true;
            };
            let span = h.span();
            if pos + span > data.len() && pos > 0 {
                break; // read again from here on the next step
            }
            let Some(payload) = format::payload(&data[pos..], &h) else {
                self.give_up_on(base, off + pos as u64);
                return true;
            };
            if !self.hand(feed, base, payload.to_vec(), h, off + (pos + span) as u64) {
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
        base: u64,
        payload: Vec<u8>,
        h: format::BatchHead,
        next: u64,
    ) -> bool {
        let (tag, found) = {
            let mut st = self.st.borrow_mut();
            let g = st.seg(base).expect("segment being read");
            (g.tag, g.found_at_start)
        };
        let executor = self.index;
        let batch = format::into_records(payload, h.count, h.first_seq, executor, |_| {
            crate::kafka::lane::Opaque {
                executor,
                spool: tag,
                ..Default::default()
            }
            .encode()
        });
        let Some(batch) = batch else {
            self.give_up_on(base, next);
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

    /// Moves the cursor to the segment after `base`, or hot when there is none.
    fn next_segment(&self, base: u64) {
        let mut st = self.st.borrow_mut();
        let next = st.segs.iter().find(|g| g.base > base).map(|g| g.base);
        st.cold = next.map(|b| (b, 0));
        drop(st);
        self.trim();
    }

    /// A batch this process wrote does not read back (the disk lost it): log, count,
    /// and treat the segment as ending there.
    fn give_up_on(&self, base: u64, at: u64) {
        tracing::error!(
            executor = self.index,
            segment = base,
            offset = at,
            "spool: a batch does not read back; the segment is cut there and quarantined"
        );
        bump(&self.stats().quarantined, 1);
        let mut st = self.st.borrow_mut();
        if let Some(g) = st.seg(base) {
            // What follows is lost; the segment is kept (not trimmed: its count of
            // records stays above what Kafka can acknowledge) until the next start
            // scans it again.
            g.end = at;
            g.corrupt = true;
            g.sealed = true;
        }
        drop(st);
        self.next_segment(base);
    }

    /// Scans a segment a previous run left: keeps every intact batch, cuts a torn tail,
    /// marks one corrupt in the middle for quarantine. Never fails: an unreadable file
    /// is quarantined whole.
    async fn scan_found(&self, base: u64, path: &std::path::Path) {
        let opened = super::file::SegFile::open(path, false, self.direct).await;
        let image = match &opened {
            // The whole file: a previous run may have used another segment size.
            Ok(f) => {
                let size = std::fs::metadata(path).map_or(self.seg_bytes, |m| m.len());
                f.read_at(0, size as usize).await
            }
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        let (file, image) = match (opened, image) {
            (Ok(f), Ok(i)) => (Some(Rc::new(f)), i),
            (_, Err(e)) | (Err(e), _) => {
                tracing::error!(executor = self.index, path = %path.display(), error = %e, "spool: cannot read a segment; quarantined");
                (None, Vec::new())
            }
        };
        let s = format::scan(&image, base);
        let records: u64 = s.batches.iter().map(|(_, h)| h.count as u64).sum();
        match s.damage {
            Damage::None => {}
            Damage::TornTail => {
                tracing::warn!(executor = self.index, path = %path.display(), offset = s.end, records, "spool: cut a torn tail (a write the crash interrupted)")
            }
            Damage::Corrupt => {
                bump(&self.stats().quarantined, 1);
                tracing::error!(executor = self.index, path = %path.display(), offset = s.end, records, "spool: segment corrupt in the middle: records before the damage are replayed, the file is set aside as *.corrupt");
            }
        }
        let unreadable = file.is_none();
        if let Some(g) = self.st.borrow_mut().seg(base) {
            g.unscanned = false;
            g.end = s.end as u64;
            g.records = records;
            g.corrupt = s.damage == Damage::Corrupt || unreadable;
            g.file = file;
        }
        let left = &self.stats().replay_left;
        left.store(left.load(Relaxed) + records, Relaxed);
        self.publish();
    }

    /// Trims every segment Kafka acknowledged completely and the reader has passed:
    /// recycled as the spare (its stale batches name another segment, so they read as
    /// the end of the log), removed, or set aside as `*.corrupt`.
    pub(super) fn trim(&self) {
        loop {
            let mut st = self.st.borrow_mut();
            let cursor = st.cold.map(|(b, _)| b);
            let Some(i) = st
                .segs
                .iter()
                .position(|g| g.trimmable() && cursor.is_none_or(|c| g.base < c))
            else {
                break;
            };
            let g = st.segs.remove(i).unwrap();
            st.full = None;
            let recycle = !g.corrupt && st.spare == Spare::None && g.file.is_some();
            if recycle {
                st.spare = Spare::Ready;
            }
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
        }
        self.publish();
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
