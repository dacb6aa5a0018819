//! Executor-local state: the bounded record queue feeding the Kafka lane, the waiters for
//! ack=kafka requests, and the completion task that applies delivery results. Everything
//! here lives on one executor thread (Rc/RefCell/Cell), never shared across cores.

use crate::config::Config;
use crate::error::{FailReason, HttpError};
use crate::exec::timer;
use crate::http::response::DateLine;
use crate::kafka::lane::{ExecutorLane, HeaderMeta, Opaque, RecordBatch};
use crate::metrics::{bump, ExecStats, Metrics};
use crate::spool::{Feed, Spool, SpoolTicket, Wait};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Outcome of a request that waited: Kafka's acknowledgement, or the spool's.
pub type Acked = Result<Ack, HttpError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// ack=kafka: first and last (partition, offset).
    Kafka((i32, i64), (i32, i64)),
    /// ack=kafka with one waiter per record (REST answers list every record): each
    /// record's (partition, offset) or its own failure, in request order.
    Each(std::rc::Rc<[Delivered]>),
    /// Written to the spool (202), or synced (`durable`, 201); the id of the first
    /// record (executor, sequence).
    Spooled { durable: bool, id: (u8, u64) },
}

/// One record's fate under ack=kafka: where it landed, or why not.
pub type Delivered = Result<(i32, i64), HttpError>;

/// Every record's place, or the first failure among them (for answers that are one
/// status for the whole request: REST v2, plain bodies).
pub fn all_delivered(each: &[Delivered]) -> Result<Vec<(i32, i64)>, HttpError> {
    each.iter().copied().collect()
}

struct Waiter {
    gen: u16,
    /// When the request is answered 504 if Kafka has not acknowledged every record. The
    /// executor's ticker enforces it (no io_uring timer per request).
    deadline: Instant,
    expired: bool,
    /// Its records went to the spool only (the window was full): no report will come, so
    /// it is answered 504 (not confirmed; the records are still delivered).
    orphaned: bool,
    /// The request was answered (504) or its connection went away while records were
    /// still in flight: the slot stays taken until their reports have all come back, so
    /// a late report can never land on a newer request in a reused slot.
    abandoned: bool,
    remaining: u32,
    first: Option<(i32, i64)>,
    last: Option<(i32, i64)>,
    error: Option<FailReason>,
    waker: Option<Waker>,
}

/// Everything one executor owns.
pub struct Exec {
    pub index: u8,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub lane: ExecutorLane,
    pub date: RefCell<DateLine>,
    pub retry_after: &'static str,
    pub shutting_down: Cell<bool>,
    /// This executor's copy of the topics Kafka has.
    pub topics: crate::kafka::topics::TopicView,
    batch: RefCell<RecordBatch>,
    pool: RefCell<Vec<RecordBatch>>,
    /// Batches the lane could not take yet (it is full); retried on the next flush.
    overflow: RefCell<VecDeque<RecordBatch>>,
    queue_bytes: Cell<usize>,
    queue_records: Cell<usize>,
    /// Connection buffer bytes above their initial size (`Budget::take`); with
    /// `queue_bytes` under `memory_max_bytes`.
    buffer_bytes: Cell<usize>,
    flush_scheduled: Cell<bool>,
    flusher: RefCell<Option<Waker>>,
    /// Records pushed to the lane since the Kafka thread was last woken outright, and
    /// whether one of them has a waiter (ack=kafka): see `flush`.
    unwoken: Cell<usize>,
    urgent: Cell<bool>,
    waiters: RefCell<Slab<Waiter>>,
    next_gen: Cell<u16>,
    /// The executor's durable spool, when `spool_dir` is set: records go there first.
    pub spool: Option<Rc<Spool>>,
    /// Admission at the edge: tenants, credentials, budgets (`admit`).
    pub guard: crate::exec::admit::Guard,
    /// The JSON body of the last schema refusal (`HttpError::SchemaRefused`, `NotJson`):
    /// written by the handler, taken by the answer right after.
    pub schema_report: RefCell<Vec<u8>>,
    /// Header lines for the answer of the request just handled (`Replies::set_note`):
    /// how many of its records went to a dead-letter topic. Empty: none.
    pub answer_note: RefCell<Vec<u8>>,
}

/// Records after which a push wakes the Kafka thread even from a nap: by then it has a
/// full round of work, and holding more only adds latency.
const WAKE_RECORDS: usize = 256;

/// A reserved place in the queue for one request's records.
pub struct Enqueue<'a> {
    exec: &'a Exec,
    slot: u32,
    gen: u16,
    n: usize,
    i: usize,
}

impl Exec {
    /// An executor with an edge of its own (tests: no other executor shares it).
    pub fn new(
        lane: ExecutorLane,
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        retry_after: &'static str,
        spool: Option<Rc<Spool>>,
    ) -> Rc<Exec> {
        let edge = crate::auth::Edge::new(&cfg).expect("a validated configuration");
        Exec::with_edge(lane, cfg, metrics, retry_after, spool, edge)
    }

    /// An executor sharing `edge` (the policy and the address table) with the others.
    pub fn with_edge(
        lane: ExecutorLane,
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        retry_after: &'static str,
        spool: Option<Rc<Spool>>,
        edge: Arc<crate::auth::Edge>,
    ) -> Rc<Exec> {
        Rc::new(Exec {
            guard: crate::exec::admit::Guard::new(edge, lane.index as usize),
            schema_report: RefCell::new(Vec::new()),
            answer_note: RefCell::new(Vec::new()),
            index: lane.index,
            cfg,
            metrics,
            lane,
            date: RefCell::new(DateLine::new()),
            retry_after,
            shutting_down: Cell::new(false),
            topics: Default::default(),
            batch: RefCell::new(RecordBatch::default()),
            pool: RefCell::new(Vec::new()),
            overflow: RefCell::new(VecDeque::new()),
            queue_bytes: Cell::new(0),
            queue_records: Cell::new(0),
            buffer_bytes: Cell::new(0),
            flush_scheduled: Cell::new(false),
            flusher: RefCell::new(None),
            unwoken: Cell::new(0),
            urgent: Cell::new(false),
            waiters: RefCell::new(Slab::new()),
            next_gen: Cell::new(0),
            spool,
        })
    }

    pub fn stats(&self) -> &ExecStats {
        &self.metrics.execs[self.index as usize]
    }

    /// Reserves queue space for `n` records costing `cost` bytes, and a waiter (answered
    /// by `deadline`) when the caller wants Kafka's acknowledgement. Fails with 503 when
    /// the queue is full, or the memory budget is. `moving`: budget bytes of the caller's
    /// buffer that hold these records now and are given back right after (the body moves
    /// into the queue), so they are not counted twice.
    pub fn reserve(
        &self,
        n: usize,
        cost: usize,
        wait: Option<Instant>,
        moving: usize,
    ) -> Result<Enqueue<'_>, HttpError> {
        self.room(n, cost, moving)?;
        self.take_room(n, cost);
        let (slot, gen) = wait.map_or((0, 0), |d| self.add_waiter(n, d));
        bump(&self.stats().records_enqueued, n as u64);
        Ok(Enqueue {
            exec: self,
            slot,
            gen,
            n,
            i: 0,
        })
    }

    /// Whether the queue and the memory budget can take `n` more records of `cost` bytes
    /// (`moving`: budget bytes the caller gives back right after).
    fn room(&self, n: usize, cost: usize, moving: usize) -> Result<(), HttpError> {
        let bytes = self.queue_bytes.get() + cost;
        let records = self.queue_records.get() + n;
        if bytes > self.cfg.queue_max_bytes || records > self.cfg.queue_max_records {
            return Err(HttpError::QueueFull);
        }
        if bytes + self.buffer_bytes.get().saturating_sub(moving) > self.cfg.memory_max_bytes {
            return Err(HttpError::MemoryFull);
        }
        Ok(())
    }

    fn take_room(&self, n: usize, cost: usize) {
        self.queue_bytes.set(self.queue_bytes.get() + cost);
        self.queue_records.set(self.queue_records.get() + n);
        self.publish_queue();
    }

    /// A waiter for `n` records' delivery reports, answered by `deadline`: (slot, gen).
    pub fn add_waiter(&self, n: usize, deadline: Instant) -> (u32, u16) {
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        let key = self.waiters.borrow_mut().insert(Waiter {
            gen,
            deadline,
            expired: false,
            orphaned: false,
            abandoned: false,
            remaining: n as u32,
            first: None,
            last: None,
            error: None,
            waker: None,
        });
        (key as u32 + 1, gen)
    }

    /// Frees a waiter whose records never reached Kafka (their spool write failed).
    fn cancel_waiter(&self, (slot, gen): (u32, u16)) {
        let mut w = self.waiters.borrow_mut();
        if w.get(slot as usize - 1).is_some_and(|x| x.gen == gen) {
            w.remove(slot as usize - 1);
        }
    }

    fn publish_queue(&self) {
        let s = self.stats();
        s.memory_bytes.store(
            (self.queue_bytes.get() + self.buffer_bytes.get()) as u64,
            Relaxed,
        );
        s.queue_bytes.store(self.queue_bytes.get() as u64, Relaxed);
        s.queue_records
            .store(self.queue_records.get() as u64, Relaxed);
    }

    fn schedule_flush(&self) {
        if !self.flush_scheduled.replace(true) {
            if let Some(w) = self.flusher.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Hands the records gathered since the last flush to the Kafka thread in one push.
    /// Waking the thread outright is kept for pushes that need it soon: a record someone
    /// waits for (ack=kafka), `WAKE_RECORDS` gathered, a backlog, a full lane, shutdown.
    /// Otherwise a nudge: it ends the thread's sleep but not its short nap under load.
    fn flush(&self) {
        let mut overflow = self.overflow.borrow_mut();
        let mut batch = self.batch.borrow_mut();
        if !batch.is_empty() {
            let fresh = self.pool.borrow_mut().pop().unwrap_or_default();
            overflow.push_back(std::mem::replace(&mut *batch, fresh));
        }
        let mut pushed = 0;
        while let Some(b) = overflow.pop_front() {
            let n = b.records.len();
            if let Some(b) = self.lane.to_kafka.try_push(b) {
                overflow.push_front(b);
                break;
            }
            pushed += n;
        }
        if pushed == 0 && overflow.is_empty() {
            return;
        }
        let unwoken = self.unwoken.get() + pushed;
        // A backlog (more than 1/8 of the queue undelivered) means the Kafka side is the
        // limit: then every push wakes it, as a nap would leave it idle with work waiting.
        let backlog = self.queue_records.get() > self.cfg.queue_max_records / 8;
        if self.urgent.get()
            || unwoken >= WAKE_RECORDS
            || backlog
            || !overflow.is_empty()
            || self.shutting_down.get()
        {
            self.lane.kafka.wake();
            self.unwoken.set(0);
            self.urgent.set(false);
        } else {
            self.lane.kafka.nudge();
            self.unwoken.set(unwoken);
        }
    }

    /// Task: flushes once per scheduler round, after every ready connection task has
    /// added its records, so one push carries many requests.
    pub async fn flusher(self: Rc<Self>) {
        loop {
            FlushWait(&self).await;
            futures_lite::future::yield_now().await;
            self.flush_scheduled.set(false);
            self.flush();
            if !self.overflow.borrow().is_empty() {
                // The lane is full: the Kafka thread is behind. Try again shortly.
                timer::sleep(std::time::Duration::from_millis(1)).await;
                self.flush_scheduled.set(true);
            }
        }
    }

    /// Task: applies delivery results pushed by the Kafka thread.
    pub async fn completer(self: Rc<Self>) {
        loop {
            CompletionWait(&self).await;
        }
    }

    fn apply(&self, c: crate::kafka::lane::Completions) {
        self.queue_bytes
            .set(self.queue_bytes.get().saturating_sub(c.released_bytes));
        self.queue_records
            .set(self.queue_records.get().saturating_sub(c.released_records));
        self.publish_queue();
        if let Some(sp) = &self.spool {
            for (tag, n) in &c.spool_acks {
                sp.acked(*tag, *n);
            }
            if c.released_records > 0 {
                sp.kick();
            }
        }
        let mut pool = self.pool.borrow_mut();
        for mut b in c.spent {
            if pool.len() < 8 && b.arena.capacity() <= 4 << 20 {
                b.clear();
                pool.push(b);
            }
        }
        let mut waiters = self.waiters.borrow_mut();
        for d in c.done {
            let Some(w) = waiters.get_mut(d.slot as usize - 1) else {
                continue;
            };
            if w.gen != d.gen {
                continue; // the request timed out and its slot was reused
            }
            match d.result {
                Ok(po) => {
                    if d.first {
                        w.first = Some(po);
                    }
                    if d.last {
                        w.last = Some(po);
                    }
                }
                Err(r) => w.error = Some(r),
            }
            w.remaining = w.remaining.saturating_sub(1);
            if w.remaining == 0 {
                if w.abandoned {
                    waiters.remove(d.slot as usize - 1);
                } else if let Some(k) = w.waker.take() {
                    k.wake();
                }
            }
        }
    }

    /// Executor exit: hands the records still gathered here (answered 202 or waited for)
    /// to the Kafka thread, which keeps running until every executor has exited. Only if
    /// the lane stays full past `within` are the rest counted and logged as not
    /// delivered, never dropped in silence.
    pub async fn hand_over(&self, within: std::time::Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.flush();
            let left: usize = self.overflow.borrow().iter().map(|b| b.records.len()).sum();
            if left == 0 {
                return;
            }
            if Instant::now() >= deadline {
                if self.spool.is_some() {
                    // Nothing is lost: every record is in the spool for the next start.
                    tracing::info!(
                        records = left,
                        executor = self.index,
                        "shutdown deadline reached: records stay in the spool for the next start"
                    );
                } else {
                    self.metrics.kafka.failed[FailReason::Shutdown as usize]
                        .fetch_add(left as u64, Relaxed);
                    tracing::error!(
                        records = left,
                        executor = self.index,
                        "shutdown deadline reached: records not handed to the kafka thread"
                    );
                }
                return;
            }
            timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

impl Exec {
    /// Shutdown with a spool: waits (by `deadline`) until Kafka reported on every record
    /// handed over, so the acknowledged segments can be trimmed before exit.
    pub async fn settle_in_flight(&self, deadline: Instant) {
        while self.queue_records.get() > 0 && Instant::now() < deadline {
            timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Records read from or written to the spool enter the in-memory window to Kafka here,
/// within the same queue and memory limits as records without a spool.
impl Feed for Exec {
    fn offer(&self, batch: RecordBatch) -> Result<(), RecordBatch> {
        let n = batch.records.len();
        let cost = batch.records.iter().map(|r| batch.cost(r)).sum();
        // An empty window takes any batch, so one larger than the limits still moves.
        if self.room(n, cost, 0).is_err() && self.queue_records.get() > 0 {
            return Err(batch);
        }
        self.take_room(n, cost);
        if batch
            .records
            .iter()
            .any(|r| Opaque::decode(r.opaque).slot != 0)
        {
            self.urgent.set(true);
        }
        self.overflow.borrow_mut().push_back(batch);
        self.schedule_flush();
        Ok(())
    }

    fn orphan(&self, waits: &[Wait]) {
        let mut ws = self.waiters.borrow_mut();
        for w in waits {
            if let Some(x) = ws.get_mut(w.slot as usize - 1).filter(|x| x.gen == w.gen) {
                x.orphaned = true;
                x.remaining = 0;
                if let Some(k) = x.waker.take() {
                    k.wake();
                }
            }
        }
    }
}

/// Connection buffers draw on the executor's memory budget, which queued records share.
impl crate::exec::readbuf::Budget for Exec {
    fn take(&self, n: usize) -> bool {
        let used = self.buffer_bytes.get() + self.queue_bytes.get();
        if used + n > self.cfg.memory_max_bytes {
            return false;
        }
        self.buffer_bytes.set(self.buffer_bytes.get() + n);
        self.publish_queue();
        true
    }

    fn give(&self, n: usize) {
        self.buffer_bytes
            .set(self.buffer_bytes.get().saturating_sub(n));
        self.publish_queue();
    }
}

impl Enqueue<'_> {
    /// Adds one record of the request. `headers` are (name, value) pairs.
    pub fn push<'h>(
        &mut self,
        topic: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        partition: i32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) {
        let (first, last) = (self.i == 0, self.i + 1 == self.n);
        let opaque = self.opaque((self.slot, self.gen), first, last);
        self.push_as(opaque, topic, key, value, partition, headers);
    }

    fn opaque(&self, (slot, gen): (u32, u16), first: bool, last: bool) -> Opaque {
        Opaque {
            executor: self.exec.index,
            slot,
            gen,
            first,
            last,
            spool: 0,
        }
    }

    /// Adds one record that has a waiter of its own (`Exec::add_waiter(1, ..)`).
    pub fn push_waited<'h>(
        &mut self,
        waiter: (u32, u16),
        topic: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        partition: i32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) {
        let opaque = self.opaque(waiter, true, true);
        self.push_as(opaque, topic, key, value, partition, headers);
    }

    fn push_as<'h>(
        &mut self,
        opaque: Opaque,
        topic: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        partition: i32,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    ) {
        let mut b = self.exec.batch.borrow_mut();
        let h0 = b.headers.len() as u32;
        for (n, v) in headers {
            let name = b.put(n);
            let value = b.put(v);
            b.headers.push(HeaderMeta { name, value });
        }
        let h1 = b.headers.len() as u32;
        b.push_record(topic, key, value, (h0, h1), partition, opaque.encode());
        if opaque.slot != 0 {
            self.exec.urgent.set(true);
        }
        self.i += 1;
        drop(b);
        self.exec.schedule_flush();
    }

    /// The waiter for this request (ack=kafka), to await after all records are pushed.
    pub fn ticket(&self) -> Option<Ticket> {
        (self.slot != 0).then_some(Ticket {
            kafka: Some(KafkaTicket {
                slot: self.slot,
                gen: self.gen,
            }),
            each: Vec::new(),
            spool: None,
        })
    }
}

/// What an answer waits for: its spool commit (written or synced), then Kafka's
/// acknowledgement (ack=kafka).
#[derive(Clone)]
pub struct Ticket {
    kafka: Option<KafkaTicket>,
    /// One waiter per record, in request order (instead of `kafka`).
    each: Vec<KafkaTicket>,
    spool: Option<SpoolTicket>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ticket({:?}, spooled: {})",
            self.kafka,
            self.spool.is_some()
        )
    }
}

impl Ticket {
    /// A spooled request's ticket; `kafka`: its ack=kafka waiter (`Exec::add_waiter`).
    pub fn spooled(spool: SpoolTicket, kafka: Option<(u32, u16)>) -> Ticket {
        Ticket {
            kafka: kafka.map(|(slot, gen)| KafkaTicket { slot, gen }),
            each: Vec::new(),
            spool: Some(spool),
        }
    }

    /// A ticket with one waiter per record (`Exec::add_waiter(1, ..)` each), after the
    /// spool commit if there is one.
    pub fn each(spool: Option<SpoolTicket>, waiters: &[(u32, u16)]) -> Ticket {
        Ticket {
            kafka: None,
            each: waiters
                .iter()
                .map(|&(slot, gen)| KafkaTicket { slot, gen })
                .collect(),
            spool,
        }
    }
}

/// Identifies the waiter of an ack=kafka request.
#[derive(Debug, Clone, Copy)]
struct KafkaTicket {
    slot: u32,
    gen: u16,
}

impl Exec {
    /// Waits for the ticket's spool commit, then for every record's delivery report, or
    /// its deadline.
    pub async fn wait(&self, t: Ticket) -> Acked {
        if let Some(s) = &t.spool {
            if let Err(e) = s.settled().await {
                for k in t.kafka.iter().chain(&t.each) {
                    self.cancel_waiter((k.slot, k.gen));
                }
                return Err(e);
            }
        }
        if !t.each.is_empty() {
            // Every slot is freed however this ends, as with one waiter.
            let _guards: Vec<_> = t
                .each
                .iter()
                .map(|&t| TicketGuard { exec: self, t })
                .collect();
            // Each record's own outcome: one that failed does not take the others' with
            // it (a v3 stream reports each record).
            let mut each = Vec::with_capacity(t.each.len());
            for &k in &t.each {
                each.push(AckWait { exec: self, t: k }.await.map(|(po, _)| po));
            }
            return Ok(Ack::Each(each.into()));
        }
        let Some(t) = t.kafka else {
            let s = t.spool.as_ref().expect("a ticket waits for something");
            return Ok(Ack::Spooled {
                durable: s.durable,
                id: s.id,
            });
        };
        let _guard = TicketGuard { exec: self, t };
        AckWait { exec: self, t }
            .await
            .map(|(f, l)| Ack::Kafka(f, l))
    }

    /// Resolves once `wait(t)` would answer at once. Unlike `wait` it gives nothing up
    /// when dropped (it frees no slot and counts nothing), so it can race a read: a
    /// REST v3 stream writes each report as soon as it is known while it reads on.
    pub async fn ready(&self, t: &Ticket) {
        if let Some(s) = &t.spool {
            if s.settled().await.is_err() {
                return;
            }
        }
        for &k in t.kafka.iter().chain(&t.each) {
            Settled { exec: self, t: k }.await;
        }
    }

    /// Ticker: answers the waits whose deadline passed (504).
    pub fn expire_waiters(&self, now: Instant) {
        for (_, w) in self.waiters.borrow_mut().iter_mut() {
            if !w.expired && !w.abandoned && w.remaining > 0 && w.deadline <= now {
                w.expired = true;
                if let Some(k) = w.waker.take() {
                    k.wake();
                }
            }
        }
    }
}

/// Frees the waiter slot however the wait ends (answered, timed out, connection dropped).
struct TicketGuard<'a> {
    exec: &'a Exec,
    t: KafkaTicket,
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        let mut w = self.exec.waiters.borrow_mut();
        let key = self.t.slot as usize - 1;
        match w.get_mut(key) {
            Some(x) if x.gen == self.t.gen && x.remaining == 0 => {
                w.remove(key);
            }
            Some(x) if x.gen == self.t.gen => {
                // Records still in flight: the last report frees the slot (see `apply`).
                x.abandoned = true;
                x.waker = None;
            }
            _ => {}
        }
    }
}

struct AckWait<'a> {
    exec: &'a Exec,
    t: KafkaTicket,
}

type Offsets = Result<((i32, i64), (i32, i64)), HttpError>;

impl Future for AckWait<'_> {
    type Output = Offsets;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Offsets> {
        let mut waiters = self.exec.waiters.borrow_mut();
        let Some(w) = waiters
            .get_mut(self.t.slot as usize - 1)
            .filter(|w| w.gen == self.t.gen)
        else {
            return Poll::Ready(Err(HttpError::AckTimeout));
        };
        if w.orphaned {
            bump(&self.exec.stats().records_unconfirmed, 1);
            return Poll::Ready(Err(HttpError::AckTimeout));
        }
        if w.remaining > 0 {
            if w.expired {
                // Not confirmed: the records are still being delivered.
                bump(&self.exec.stats().records_unconfirmed, w.remaining as u64);
                return Poll::Ready(Err(HttpError::AckTimeout));
            }
            w.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(match (w.error, w.first, w.last) {
            (Some(r), _, _) => Err(HttpError::Delivery(r)),
            (None, Some(f), Some(l)) => Ok((f, l)),
            _ => Err(HttpError::Delivery(FailReason::Broker)),
        })
    }
}

/// `AckWait` without its side effects: ready once the waiter is settled either way.
struct Settled<'a> {
    exec: &'a Exec,
    t: KafkaTicket,
}

impl Future for Settled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut waiters = self.exec.waiters.borrow_mut();
        match waiters
            .get_mut(self.t.slot as usize - 1)
            .filter(|w| w.gen == self.t.gen)
        {
            Some(w) if !w.orphaned && !w.expired && w.remaining > 0 => {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

struct FlushWait<'a>(&'a Exec);

impl Future for FlushWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.flush_scheduled.get() {
            return Poll::Ready(());
        }
        let mut f = self.0.flusher.borrow_mut();
        if !f.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *f = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Resolves after draining at least one result batch; registers for the Kafka thread's
/// wake otherwise.
struct CompletionWait<'a>(&'a Exec);

impl Future for CompletionWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let lane = &self.0.lane;
        lane.wake.register(cx.waker());
        lane.wake.begin_drain();
        let mut any = false;
        while let Some(c) = lane.from_kafka.try_pop() {
            self.0.apply(c);
            any = true;
        }
        if any {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::lane::{make_lane, KafkaLane, KafkaWake};
    use std::time::Duration;

    /// An executor whose Kafka thread is napping (state only: nothing parks here).
    fn napping_exec() -> (Rc<Exec>, Arc<KafkaWake>, KafkaLane) {
        let wake = KafkaWake::new();
        let (lane, kafka_end) = make_lane(0, wake.clone());
        let exec = Exec::new(
            lane,
            Arc::new(Config::default()),
            Metrics::new(1),
            "1",
            None,
        );
        assert!(wake.begin_park(true));
        (exec, wake, kafka_end)
    }

    fn push(exec: &Exec, n: usize, wait: Option<Instant>) {
        let mut q = exec.reserve(n, n * 100, wait, 0).unwrap();
        for _ in 0..n {
            q.push(b"t", None, b"v", -1, std::iter::empty());
        }
    }

    #[test]
    fn routine_pushes_leave_a_napping_kafka_thread_alone() {
        let (exec, wake, _kafka) = napping_exec();
        push(&exec, 3, None);
        exec.flush();
        assert!(!wake.woken_from_nap());
        assert!(
            wake.take_pending(),
            "the push is announced for the nap's end"
        );
        push(&exec, WAKE_RECORDS - 4, None);
        exec.flush();
        assert!(!wake.woken_from_nap(), "below WAKE_RECORDS in all");
        push(&exec, 1, None);
        exec.flush();
        assert!(wake.woken_from_nap(), "WAKE_RECORDS gathered");
    }

    fn poll_wait(exec: &Exec, t: Ticket) -> Poll<Acked> {
        let mut f = std::pin::pin!(exec.wait(t));
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    /// The report of one record of `t`'s request, delivered at (0, offset).
    fn report(t: &Ticket, offset: i64) -> crate::kafka::lane::Completions {
        let k = t.kafka.unwrap();
        crate::kafka::lane::Completions {
            done: vec![crate::kafka::lane::Completion {
                slot: k.slot,
                gen: k.gen,
                first: true,
                last: true,
                result: Ok((0, offset)),
            }],
            ..Default::default()
        }
    }

    fn waiter(exec: &Exec, deadline: Instant) -> Ticket {
        let mut q = exec.reserve(1, 100, Some(deadline), 0).unwrap();
        q.push(b"t", None, b"v", -1, std::iter::empty());
        q.ticket().unwrap()
    }

    #[test]
    fn a_late_report_never_answers_a_newer_request() {
        let (exec, _wake, _kafka) = napping_exec();
        let far = Instant::now() + Duration::from_secs(600);
        // A: answered 504 while its record is still in flight (librdkafka retries it).
        let a = waiter(&exec, Instant::now());
        exec.expire_waiters(Instant::now());
        assert!(matches!(
            poll_wait(&exec, a.clone()),
            Poll::Ready(Err(HttpError::AckTimeout))
        ));
        // 65,535 requests answered since: enough to wrap a 16-bit generation counter.
        for i in 0..u16::MAX as i64 {
            let t = waiter(&exec, far);
            exec.apply(report(&t, i));
            assert!(matches!(poll_wait(&exec, t), Poll::Ready(Ok(_))));
        }
        let c = waiter(&exec, far);
        let mut wait_c = std::pin::pin!(exec.wait(c.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait_c.as_mut().poll(&mut cx).is_pending());
        // A's report arrives late: it must not answer C with A's offset.
        exec.apply(report(&a, 999_999));
        assert!(
            wait_c.as_mut().poll(&mut cx).is_pending(),
            "C was answered by A's delivery report"
        );
        exec.apply(report(&c, 7));
        assert!(matches!(
            wait_c.as_mut().poll(&mut cx),
            Poll::Ready(Ok(Ack::Kafka((0, 7), (0, 7))))
        ));
        assert_eq!(exec.waiters.borrow().len(), 0, "every slot freed");
    }

    /// At exit an executor hands what it still holds to the Kafka thread; what the lane
    /// cannot take by the deadline is counted as failed (shutdown), never dropped silently.
    #[test]
    fn exit_hands_over_or_counts_every_record() {
        for drained in [false, true] {
            let (exec, _wake, kafka) = napping_exec();
            // Fill the lane (nobody takes from it yet), then some more into the overflow.
            while exec.overflow.borrow().is_empty() {
                push(&exec, 1, None);
                exec.flush();
            }
            push(&exec, 2, None);
            let held: usize = exec
                .overflow
                .borrow()
                .iter()
                .map(|b| b.records.len())
                .sum::<usize>()
                + exec.batch.borrow().records.len();
            let total = exec.stats().records_enqueued.load(Relaxed) as usize;
            let taker = drained.then(|| {
                std::thread::spawn(move || {
                    let mut n = 0;
                    let t0 = Instant::now();
                    while n < total && t0.elapsed() < Duration::from_secs(5) {
                        match kafka.from_exec.try_pop() {
                            Some(b) => n += b.records.len(),
                            None => std::thread::yield_now(),
                        }
                    }
                    n
                })
            });
            let within = Duration::from_millis(if drained { 3000 } else { 50 });
            let exec2 = exec.clone();
            glommio::LocalExecutor::default().run(async move { exec2.hand_over(within).await });
            let failed = exec.metrics.kafka.failed[FailReason::Shutdown as usize].load(Relaxed);
            if drained {
                assert_eq!(failed, 0, "everything handed over");
                assert_eq!(taker.unwrap().join().unwrap(), total);
            } else {
                assert_eq!(failed as usize, held, "what the full lane could not take");
            }
        }
    }

    #[test]
    fn a_record_someone_waits_for_wakes_the_kafka_thread() {
        let (exec, wake, _kafka) = napping_exec();
        push(&exec, 1, Some(Instant::now() + Duration::from_secs(5)));
        exec.flush();
        assert!(wake.woken_from_nap());
    }

    #[test]
    fn a_backlog_wakes_the_kafka_thread_on_every_push() {
        let (exec, wake, _kafka) = napping_exec();
        // Undelivered records above 1/8 of the queue: the Kafka side is behind.
        let many = exec.cfg.queue_max_records / 8 + 1;
        let _reserved = exec.reserve(many, many * 100, None, 0).unwrap();
        push(&exec, 1, None);
        exec.flush();
        assert!(wake.woken_from_nap());
    }
}
