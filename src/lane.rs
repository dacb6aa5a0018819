//! The two one-way lanes between an executor and the Kafka thread. Records travel to the
//! Kafka thread in batches, delivery results come back in batches: one queue push and at
//! most one wake per batch, never a lock or a cross-thread hop per request.

use crate::error::FailReason;
use glommio::channels::spsc_queue::{self, Consumer, Producer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opaque {
    pub executor: u8,
    pub slot: u32,
    pub gen: u16,
    pub first: bool,
    pub last: bool,
}

impl Opaque {
    const SLOT_BITS: u32 = 24;

    pub fn encode(self) -> usize {
        debug_assert!(self.slot < 1 << Self::SLOT_BITS);
        (self.slot as usize)
            | (self.gen as usize) << 24
            | (self.executor as usize) << 40
            | (self.first as usize) << 48
            | (self.last as usize) << 49
    }

    pub fn decode(v: usize) -> Opaque {
        Opaque {
            slot: (v & ((1 << Self::SLOT_BITS) - 1)) as u32,
            gen: (v >> 24) as u16,
            executor: (v >> 40) as u8,
            first: v >> 48 & 1 == 1,
            last: v >> 49 & 1 == 1,
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
}

impl Completions {
    pub fn is_empty(&self) -> bool {
        self.done.is_empty() && self.released_records == 0 && self.spent.is_empty()
    }
}

/// Wake-up state for the Kafka thread, shared by every executor.
pub struct KafkaWake {
    thread: Mutex<Option<Thread>>,
    /// Set by the Kafka thread just before it parks; executors unpark it when set.
    pub sleeping: AtomicBool,
    /// Set by an executor after each push, so a thread about to park sees new work.
    pending: AtomicBool,
}

impl KafkaWake {
    pub fn new() -> Arc<Self> {
        Arc::new(KafkaWake {
            thread: Mutex::new(None),
            sleeping: AtomicBool::new(false),
            pending: AtomicBool::new(false),
        })
    }

    /// Kafka thread: whether an executor pushed since the last call.
    pub fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    pub fn set_thread(&self, t: Thread) {
        *self.thread.lock().unwrap() = Some(t);
    }

    /// Called once per pushed batch; a lock is taken only when the thread sleeps.
    /// SeqCst pairs with the Kafka thread's `sleeping` store then `take_pending` load:
    /// at least one side sees the other, so no push is left sleeping.
    pub fn wake(&self) {
        self.pending.store(true, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.lock().unwrap().as_ref() {
                t.unpark();
            }
        }
    }
}

/// Wake-up state for one executor's completion task.
#[derive(Default)]
pub struct ExecWake {
    waker: Mutex<Option<Waker>>,
    notified: AtomicBool,
}

impl ExecWake {
    /// Kafka thread: wake the executor's completion task unless a wake is pending.
    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.waker.lock().unwrap().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Executor: clear the flag before draining, so a push after the drain wakes again.
    pub fn begin_drain(&self) {
        self.notified.store(false, Ordering::Release);
    }

    pub fn register(&self, w: &Waker) {
        let mut slot = self.waker.lock().unwrap();
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
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

    #[test]
    fn opaque_round_trip() {
        for o in [
            Opaque {
                executor: 0,
                slot: 0,
                gen: 0,
                first: false,
                last: false,
            },
            Opaque {
                executor: 254,
                slot: (1 << 24) - 1,
                gen: u16::MAX,
                first: true,
                last: false,
            },
            Opaque {
                executor: 7,
                slot: 12345,
                gen: 3,
                first: false,
                last: true,
            },
        ] {
            assert_eq!(Opaque::decode(o.encode()), o);
        }
    }
}
