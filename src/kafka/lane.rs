//! The two one-way lanes between an executor and the Kafka thread. Records travel to the
//! Kafka thread in batches, delivery results come back in batches: one queue push and at
//! most one wake per batch, never a lock or a cross-thread hop per request.

use crate::error::FailReason;
use glommio::channels::spsc_queue::{self, Consumer, Producer};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::thread::Thread;

/// Fixed per-record overhead counted against the queue byte limit, so that many tiny
/// records cannot exhaust memory below the byte limit.
pub const RECORD_OVERHEAD: usize = 64;

/// What a record costs in the queue; both sides compute it the same way so the executor
/// can release exactly what it reserved.
pub fn record_cost(key: usize, value: usize, headers: usize) -> usize {
    key + value + headers + RECORD_OVERHEAD
}

/// One record inside a batch: ranges into the batch's byte arena.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    pub topic: (u32, u32),
    pub key: Option<(u32, u32)>,
    pub value: (u32, u32),
    /// Range into `RecordBatch::headers`.
    pub headers: (u32, u32),
    pub partition: i32,
    pub opaque: usize,
}

/// A header: name and value ranges into the arena.
#[derive(Debug, Clone, Copy)]
pub struct HeaderMeta {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// Records an executor hands to the Kafka thread in one push. The buffers come back in
/// `Completions::spent` for reuse.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub arena: Vec<u8>,
    pub records: Vec<RecordMeta>,
    pub headers: Vec<HeaderMeta>,
}

impl RecordBatch {
    pub fn clear(&mut self) {
        self.arena.clear();
        self.records.clear();
        self.headers.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Appends bytes to the arena and returns their range.
    pub fn put(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(bytes);
        (start, self.arena.len() as u32)
    }

    pub fn get(&self, r: (u32, u32)) -> &[u8] {
        &self.arena[r.0 as usize..r.1 as usize]
    }

    /// What record `r` of this batch costs in the queue (`record_cost`).
    pub fn cost(&self, r: &RecordMeta) -> usize {
        let len = |x: (u32, u32)| (x.1 - x.0) as usize;
        let headers: usize = self.headers[r.headers.0 as usize..r.headers.1 as usize]
            .iter()
            .map(|h| len(h.name) + len(h.value))
            .sum();
        record_cost(r.key.map_or(0, len), len(r.value), headers)
    }

    /// Appends one record: its bytes into the arena, its metadata to `records`.
    /// `headers` is the range of `self.headers` pushed for it just before.
    pub fn push_record(
        &mut self,
        topic: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        headers: (u32, u32),
        partition: i32,
        opaque: usize,
    ) {
        let topic = self.put(topic);
        let key = key.map(|k| self.put(k));
        let value = self.put(value);
        self.records.push(RecordMeta {
            topic,
            key,
            value,
            headers,
            partition,
            opaque,
        });
    }
}

/// The delivery opaque: which executor, which waiter slot (and its generation), and
/// whether the record is the first/last of its request. Slot 0 means nobody waits.
/// `spool`: the tag of the spool segment holding the record (0: not spooled), which
/// Kafka's acknowledgement credits so the segment can be trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opaque {
    pub executor: u8,
    pub slot: u32,
    pub gen: u16,
    pub first: bool,
    pub last: bool,
    pub spool: u16,
}

impl Opaque {
    const SLOT_BITS: u32 = 24;
    /// Spool segment tags are 13 bits (1..8191; 0 = not spooled).
    pub const SPOOL_MASK: u16 = (1 << 13) - 1;

    pub fn encode(self) -> usize {
        debug_assert!(self.slot < 1 << Self::SLOT_BITS);
        (self.slot as usize)
            | (self.gen as usize) << 24
            | (self.executor as usize) << 40
            | (self.first as usize) << 48
            | (self.last as usize) << 49
            | ((self.spool & Self::SPOOL_MASK) as usize) << 50
    }

    pub fn decode(v: usize) -> Opaque {
        Opaque {
            slot: (v & ((1 << Self::SLOT_BITS) - 1)) as u32,
            gen: (v >> 24) as u16,
            executor: (v >> 40) as u8,
            first: v >> 48 & 1 == 1,
            last: v >> 49 & 1 == 1,
            spool: (v >> 50) as u16 & Self::SPOOL_MASK,
        }
    }
}

/// The fate of one record someone waits for.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub slot: u32,
    pub gen: u16,
    pub first: bool,
    pub last: bool,
    pub result: Result<(i32, i64), FailReason>,
}

/// Results the Kafka thread hands back to one executor in one push.
#[derive(Debug, Default)]
pub struct Completions {
    pub done: Vec<Completion>,
    /// Queue bytes and records to release (every record, waited for or not).
    pub released_bytes: usize,
    pub released_records: usize,
    pub spent: Vec<RecordBatch>,
    /// Spooled records Kafka acknowledged (or that went to the dead-letter file), per
    /// segment tag: (tag, records).
    pub spool_acks: Vec<(u16, u32)>,
}

impl Completions {
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
            && self.released_records == 0
            && self.spent.is_empty()
            && self.spool_acks.is_empty()
    }

    /// Credits `n` spooled records to the segment `tag`.
    pub fn spool_ack(&mut self, tag: u16, n: u32) {
        match self.spool_acks.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, m)) => *m += n,
            None => self.spool_acks.push((tag, n)),
        }
    }

    /// Moves `other`'s results into this one.
    pub fn absorb(&mut self, other: &mut Completions) {
        self.done.append(&mut other.done);
        self.released_bytes += std::mem::take(&mut other.released_bytes);
        self.released_records += std::mem::take(&mut other.released_records);
        for (t, n) in std::mem::take(&mut other.spool_acks) {
            self.spool_ack(t, n);
        }
    }
}

/// How the Kafka thread is waiting, if it is (`KafkaWake::state`).
const AWAKE: u8 = 0;
/// A short timed park while records are in flight: it wakes itself within `handoff_ms`,
/// so routine pushes and delivery reports need not wake it.
const NAPPING: u8 = 1;
/// Parked until woken (only a safety-net timeout).
const SLEEPING: u8 = 2;

/// Wake-up state for the Kafka thread, shared by every executor.
///
/// Waking a parked thread costs a futex call and a context switch on both sides; at one
/// connection a wake per push and another per delivery report cost 12 us per request.
/// So while records are in flight the thread naps for `handoff_ms` between rounds, and
/// executors and librdkafka's delivery reports only `nudge` it: a nudge wakes it from a
/// real sleep, never from a nap. Records someone waits for (ack=kafka), their reports,
/// a full batch and a backlog still `wake` it at once.
pub struct KafkaWake {
    thread: Mutex<Option<Thread>>,
    /// AWAKE, NAPPING or SLEEPING; set by the Kafka thread before it parks.
    state: AtomicU8,
    /// Set by an executor after each push, so a thread about to park sees new work.
    pending: AtomicBool,
    /// Set by the Kafka thread while records someone waits for (ack=kafka) are in
    /// flight: only then must a delivery report end its nap (`report`).
    waited: AtomicBool,
}

impl KafkaWake {
    pub fn new() -> Arc<Self> {
        Arc::new(KafkaWake {
            thread: Mutex::new(None),
            state: AtomicU8::new(AWAKE),
            pending: AtomicBool::new(false),
            waited: AtomicBool::new(false),
        })
    }

    /// Kafka thread: whether an executor pushed since the last call.
    pub fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    pub fn set_thread(&self, t: Thread) {
        *self.thread.lock().unwrap() = Some(t);
    }

    /// Kafka thread: about to park, napping (wakes itself soon) or sleeping. Returns
    /// false when work arrived meanwhile and it must not park. SeqCst pairs with the
    /// executors' `pending` store then `state` load: at least one side sees the other.
    pub fn begin_park(&self, nap: bool) -> bool {
        self.state
            .store(if nap { NAPPING } else { SLEEPING }, Ordering::SeqCst);
        !self.take_pending()
    }

    /// Kafka thread: awake again (woken, timed out, or did not park).
    pub fn end_park(&self) {
        self.state.store(AWAKE, Ordering::SeqCst);
    }

    /// Wakes the thread however it waits. A lock is taken only when it is parked.
    pub fn wake(&self) {
        self.announce(NAPPING);
    }

    /// Announces a push; wakes the thread only from a sleep, not from a nap (it comes
    /// back within `handoff_ms` and finds the push).
    pub fn nudge(&self) {
        self.announce(SLEEPING);
    }

    /// Kafka thread: whether records someone waits for are in flight. Set before such a
    /// record is handed to librdkafka, so its report never finds it unset.
    pub fn set_waited(&self, on: bool) {
        if self.waited.load(Ordering::Relaxed) != on {
            self.waited.store(on, Ordering::SeqCst);
        }
    }

    /// librdkafka queued an event (a delivery report, an error): it wakes the thread at
    /// once while someone waits for a report; otherwise it is only a nudge, and a napping
    /// thread serves it when the nap ends, with every other report of that interval.
    pub fn report(&self) {
        if self.waited.load(Ordering::SeqCst) {
            self.wake();
        } else {
            self.nudge();
        }
    }

    /// Marks work pending, and unparks the thread if it waits at `from` or deeper
    /// (SLEEPING > NAPPING > AWAKE). While it is awake this is one load, no lock.
    fn announce(&self, from: u8) {
        self.pending.store(true, Ordering::SeqCst);
        let woke = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s >= from).then_some(AWAKE)
            })
            .is_ok();
        if woke {
            if let Some(t) = self.thread.lock().unwrap().as_ref() {
                t.unpark();
            }
        }
    }

    #[cfg(test)]
    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Tests of the executors' side: whether the last push woke a napping thread.
    #[cfg(test)]
    pub(crate) fn woken_from_nap(&self) -> bool {
        self.state() == AWAKE
    }
}

/// Wake-up state for one executor's completion task.
///
/// The wake goes through the task's Glommio waker, which reaches an executor asleep in
/// its ring. An executor that blocks in epoll_wait instead (`Poller`'s direct wait) is
/// not listening there: while it does, `direct` is set and the wake also signals `efd`,
/// which that epoll set watches.
#[derive(Default)]
pub struct ExecWake {
    waker: Mutex<Option<Waker>>,
    notified: AtomicBool,
    direct: AtomicBool,
    /// Owned here, not by the executor, so that a late wake after the executor exited
    /// can never write to a reused fd number.
    efd: OnceLock<OwnedFd>,
}

impl ExecWake {
    /// Kafka thread: wake the executor's completion task unless a wake is pending.
    pub fn wake(&self) {
        // SeqCst pairs with `begin_direct`: either this sees `direct`, or the executor
        // sees `notified` and does not block.
        if !self.notified.swap(true, Ordering::SeqCst) {
            if let Some(w) = self.waker.lock().unwrap().as_ref() {
                w.wake_by_ref();
            }
            if self.direct.load(Ordering::SeqCst) {
                if let Some(fd) = self.efd.get() {
                    crate::sys::eventfd_signal(fd.as_raw_fd());
                }
            }
        }
    }

    /// Executor: clear the flag before draining, so a push after the drain wakes again.
    pub fn begin_drain(&self) {
        self.notified.store(false, Ordering::SeqCst);
    }

    pub fn register(&self, w: &Waker) {
        let mut slot = self.waker.lock().unwrap();
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }

    /// Executor: the eventfd its epoll set watches for wakes during a direct wait
    /// (created once).
    pub fn eventfd(&self) -> std::io::Result<RawFd> {
        if self.efd.get().is_none() {
            let _ = self.efd.set(crate::sys::eventfd()?);
        }
        Ok(self.efd.get().expect("set above").as_raw_fd())
    }

    /// Executor, about to block in epoll_wait: from now on wakes also signal the
    /// eventfd. False if a wake is already pending (then it must not block).
    pub fn begin_direct(&self) -> bool {
        self.direct.store(true, Ordering::SeqCst);
        if self.notified.load(Ordering::SeqCst) {
            self.direct.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn end_direct(&self) {
        self.direct.store(false, Ordering::SeqCst);
    }

    /// Tests: the executor is blocked in a direct wait now.
    #[cfg(test)]
    pub(crate) fn in_direct_wait(&self) -> bool {
        self.direct.load(Ordering::SeqCst)
    }

    /// Executor thread, on the eventfd's event: reset it and deliver the wake.
    pub fn take_signal(&self) {
        if let Some(fd) = self.efd.get() {
            crate::sys::eventfd_drain(fd.as_raw_fd());
        }
        self.wake_here();
    }

    /// Executor thread: wake the completion task here (a local wake, no hop through
    /// Glommio's foreign queue, which it only reads when it passes through its ring).
    pub fn wake_here(&self) {
        if let Some(w) = self.waker.lock().unwrap().as_ref() {
            w.wake_by_ref();
        }
    }
}

/// The executor's ends of its lanes.
pub struct ExecutorLane {
    pub index: u8,
    pub to_kafka: Producer<RecordBatch>,
    pub from_kafka: Consumer<Completions>,
    pub wake: Arc<ExecWake>,
    pub kafka: Arc<KafkaWake>,
}

/// The Kafka thread's ends of one executor's lanes.
pub struct KafkaLane {
    pub from_exec: Consumer<RecordBatch>,
    pub to_exec: Producer<Completions>,
    pub wake: Arc<ExecWake>,
}

/// Capacity of each lane in batches. Queue bytes/records are bounded per executor
/// separately; this only needs to exceed the batches in flight.
const LANE_CAPACITY: usize = 4096;

pub fn make_lane(index: u8, kafka: Arc<KafkaWake>) -> (ExecutorLane, KafkaLane) {
    let (tx, rx) = spsc_queue::make(LANE_CAPACITY);
    let (ctx, crx) = spsc_queue::make(LANE_CAPACITY);
    let wake = Arc::new(ExecWake::default());
    (
        ExecutorLane {
            index,
            to_kafka: tx,
            from_kafka: crx,
            wake: wake.clone(),
            kafka,
        },
        KafkaLane {
            from_exec: rx,
            to_exec: ctx,
            wake,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// A stand-in Kafka thread: parks once (napping or sleeping, for up to `timeout`)
    /// and reports when it came back.
    fn parked_thread(w: &Arc<KafkaWake>, nap: bool, timeout: Duration) -> Arc<AtomicUsize> {
        let back = Arc::new(AtomicUsize::new(0));
        let (w2, back2) = (w.clone(), back.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            rx.recv().unwrap();
            if w2.begin_park(nap) {
                std::thread::park_timeout(timeout);
            }
            w2.end_park();
            back2.store(1, Ordering::SeqCst);
        });
        w.set_thread(t.thread().clone());
        tx.send(()).unwrap();
        let expect = if nap { NAPPING } else { SLEEPING };
        let t0 = Instant::now();
        while w.state() != expect {
            assert!(t0.elapsed() < Duration::from_secs(5), "thread never parked");
            std::thread::yield_now();
        }
        back
    }

    fn wait_back(back: &AtomicUsize, within: Duration) -> bool {
        let t0 = Instant::now();
        while back.load(Ordering::SeqCst) == 0 {
            if t0.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_nudge_ends_a_sleep() {
        let w = KafkaWake::new();
        let back = parked_thread(&w, false, Duration::from_secs(30));
        w.nudge();
        assert!(
            wait_back(&back, Duration::from_secs(5)),
            "nudge did not wake a sleeper"
        );
    }

    #[test]
    fn a_nudge_leaves_a_nap_alone_but_a_wake_ends_it() {
        let w = KafkaWake::new();
        let back = parked_thread(&w, true, Duration::from_secs(30));
        w.nudge();
        // The nudge only announced work: still napping, and the push is pending for it.
        assert!(!wait_back(&back, Duration::from_millis(100)));
        assert_eq!(w.state(), NAPPING);
        w.wake();
        assert!(
            wait_back(&back, Duration::from_secs(5)),
            "wake did not end the nap"
        );
        assert!(w.take_pending(), "the pushes stay announced");
    }

    #[test]
    fn a_push_before_parking_cancels_the_park() {
        let w = KafkaWake::new();
        w.nudge();
        assert!(!w.begin_park(false), "must not park with work announced");
        w.end_park();
        assert!(w.begin_park(true), "nothing pending any more");
        w.end_park();
        assert_eq!(w.state(), AWAKE);
    }

    #[test]
    fn opaque_round_trip() {
        for o in [
            Opaque {
                executor: 0,
                slot: 0,
                gen: 0,
                first: false,
                last: false,
                spool: 0,
            },
            Opaque {
                executor: 254,
                slot: (1 << 24) - 1,
                gen: u16::MAX,
                first: true,
                last: false,
                spool: Opaque::SPOOL_MASK,
            },
            Opaque {
                executor: 7,
                slot: 12345,
                gen: 3,
                first: false,
                last: true,
                spool: 17,
            },
        ] {
            assert_eq!(Opaque::decode(o.encode()), o);
        }
    }
}
