//! The Kafka thread: one plain OS thread owning an rdkafka `BaseProducer`. It drains every
//! executor's lane in batches, hands each record to librdkafka, polls for delivery reports
//! and sends the results back to each executor in batches.

use crate::config::Config;
use crate::error::FailReason;
use crate::kafka::flight;
use crate::kafka::lane::{
    record_cost, Completion, Completions, HeaderMeta, KafkaLane, KafkaWake, Opaque, RecordBatch,
};
use crate::kafka::wake::QueueWake;
use crate::metrics::{bump, Metrics};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::cell::RefCell;
use std::ffi::CStr;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

pub type KafkaProducer = BaseProducer<Ctx>;

/// Delivery results gathered during one `poll`, per executor. Delivery callbacks run on
/// the thread that polls, which is always the Kafka thread: a thread-local needs no lock.
#[derive(Default)]
struct Sink {
    per_exec: Vec<Completions>,
    delivered: u64,
    failed: [u64; FailReason::ALL.len()],
    /// Records librdkafka gave up on for a passing reason (`FailReason::transient`), to be
    /// produced again once `RETRY_BACKOFF` has passed since `retry_since`. They keep
    /// their queue space and their opaque (and so their waiter) meanwhile.
    retry: RecordBatch,
    retry_since: Option<Instant>,
    retried: u64,
    /// Delivery reports served since start, final or not (see `KafkaThread::in_flight`).
    reports: u64,
    /// Of them, reports on records someone waits for (see `KafkaThread::waited_sent`).
    waited_reports: u64,
    /// With a spool: where spooled records Kafka rejects for good are written.
    dead: Option<crate::kafka::deadletter::DeadLetters>,
    dead_letters: u64,
}

/// How long a record that failed for a passing reason waits before it is produced
/// again (librdkafka's own `retry.backoff.ms` default): long enough that a producer
/// that fails every send at once (fatal, being rebuilt) is not spun on.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

thread_local! {
    static SINK: RefCell<Sink> = RefCell::new(Sink::default());
}

impl Sink {
    /// Keeps a record for `KafkaThread::send_retries`. `headers` are (name, value) pairs.
    fn keep<'a>(
        &mut self,
        topic: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        partition: i32,
        opaque: usize,
    ) {
        if self.retry.is_empty() {
            self.retry_since = Some(Instant::now());
        }
        let b = &mut self.retry;
        let h0 = b.headers.len() as u32;
        for (n, v) in headers {
            let (name, value) = (b.put(n), b.put(v));
            b.headers.push(HeaderMeta { name, value });
        }
        let h1 = b.headers.len() as u32;
        b.push_record(topic, key, value, (h0, h1), partition, opaque);
        self.retried += 1;
    }

    /// When the kept records are due to be produced again, if any are kept.
    fn retry_due(&self) -> Option<Instant> {
        self.retry_since.map(|t| t + RETRY_BACKOFF)
    }

    /// A spooled record Kafka rejected for good: written to the dead-letter file so its
    /// segment can be trimmed. Returns whether it was (else it stays in the spool).
    fn bury(&mut self, opaque: usize, d: crate::kafka::deadletter::Dead<'_>) -> bool {
        if Opaque::decode(opaque).spool == 0 {
            return false;
        }
        let buried = self.dead.as_mut().is_some_and(|f| f.write(&d));
        self.dead_letters += buried as u64;
        buried
    }

    /// The final fate of a record: its queue space is released, its waiter (if any)
    /// hears the result, and a spooled record credits its segment when Kafka has it or
    /// it went to the dead-letter file (`buried`). One left at shutdown stays spooled.
    fn record(&mut self, opaque: usize, cost: usize, result: Result<(i32, i64), FailReason>) {
        self.settle(opaque, cost, result, false)
    }

    fn settle(
        &mut self,
        opaque: usize,
        cost: usize,
        result: Result<(i32, i64), FailReason>,
        buried: bool,
    ) {
        let o = Opaque::decode(opaque);
        let Some(c) = self.per_exec.get_mut(o.executor as usize) else {
            return;
        };
        c.released_bytes += cost;
        c.released_records += 1;
        if o.spool != 0 && (result.is_ok() || buried) {
            c.spool_ack(o.spool, 1);
        }
        match result {
            Ok(_) => self.delivered += 1,
            Err(r) => self.failed[r as usize] += 1,
        }
        if o.slot != 0 {
            c.done.push(Completion {
                slot: o.slot,
                gen: o.gen,
                first: o.first,
                last: o.last,
                result,
            });
        }
    }
}

/// Producer context: routes delivery reports into the sink and logs client errors.
#[derive(Default)]
pub struct Ctx {
    /// While a broker is down librdkafka reports the same failure many times a second:
    /// warnings and errors are logged at most once per interval, with a count of the rest.
    limiter: Mutex<RateLimit>,
    /// The Kafka thread's producer: where to say whether it can acknowledge now.
    metrics: Option<Arc<Metrics>>,
}

#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl Ctx {
    const LOG_INTERVAL: Duration = Duration::from_secs(5);

    /// Whether to log now, and how many lines were dropped since the last one.
    fn admit(&self) -> Option<u64> {
        let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if l.last.is_some_and(|t| t.elapsed() < Self::LOG_INTERVAL) {
            l.suppressed += 1;
            return None;
        }
        l.last = Some(Instant::now());
        Some(std::mem::take(&mut l.suppressed))
    }
}

/// librdkafka's debug line for every state change of the idempotent producer (context
/// `eos`, facility IDEMPSTATE): "[thrd:main]: Idempotent producer state change Init ->
/// RequestPID".
const IDEMP_STATE: &str = "Idempotent producer state change ";

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        // Until its producer id is assigned an idempotent producer holds every record (the
        // first one waited about a second): readiness waits for "-> Assigned".
        if let (Some(m), "IDEMPSTATE") = (&self.metrics, fac) {
            // The message starts with the thread ("[thrd:main]: ").
            let change = msg.find(IDEMP_STATE).map(|i| &msg[i + IDEMP_STATE.len()..]);
            if let Some((_, to)) = change.and_then(|c| c.split_once(" -> ")) {
                m.producer_ready.store(to == "Assigned", Ordering::Release);
            }
        }
        match level {
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac} {msg}"),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                info!(target: "librdkafka", "{fac} {msg}")
            }
            _ => {
                if let Some(suppressed) = self.admit() {
                    warn!(target: "librdkafka", suppressed, "{fac} {msg}");
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports transient broker errors here; it retries by itself.
        if let Some(suppressed) = self.admit() {
            warn!(%error, reason, suppressed, "kafka client error");
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, key: usize) {
        // A panic must not unwind into rdkafka's report loop: the event's messages not yet
        // served would be destroyed with the header objects they share (kafka/flight.rs),
        // under records still in flight.
        let served =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.report(result, key)));
        if served.is_err() {
            error!("panic while serving a delivery report: aborting");
            std::process::abort();
        }
    }
}

impl Ctx {
    /// One delivery report: the record's fate to its executor, its header object back.
    fn report(&self, result: &DeliveryResult<'_>, key: usize) {
        let msg_ptr = match result {
            Ok(m) | Err((_, m)) => m.ptr(),
        };
        let Some(f) = flight::land(key) else {
            error!(key, "delivery report for a record not in flight");
            // SAFETY: this report's message, served on this thread.
            unsafe { flight::release(msg_ptr, None) };
            return;
        };
        let opaque = f.opaque;
        let waited = Opaque::decode(opaque).slot != 0;
        SINK.with(|s| {
            let mut s = s.borrow_mut();
            s.reports += 1;
            s.waited_reports += u64::from(waited);
        });
        let (msg, res) = match result {
            Ok(m) => (m, Ok((m.partition(), m.offset()))),
            Err((KafkaError::MessageProduction(code), m)) if FailReason::transient(*code) => {
                let headers = m.headers();
                let headers = headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .map(|h| (h.key.as_bytes(), h.value.unwrap_or(&[])));
                SINK.with(|s| {
                    s.borrow_mut().keep(
                        m.topic().as_bytes(),
                        m.key(),
                        m.payload().unwrap_or(&[]),
                        headers,
                        m.partition(),
                        opaque,
                    )
                });
                // SAFETY: this report's message, served on this thread; its headers were
                // copied by `keep`.
                unsafe { flight::release(msg_ptr, Some(&f)) };
                return;
            }
            Err((KafkaError::MessageProduction(code), m)) => (m, Err(FailReason::from_code(*code))),
            Err((_, m)) => (m, Err(FailReason::Broker)),
        };
        let mut buried = false;
        if let (Err(r), true) = (res, Opaque::decode(opaque).spool != 0) {
            let headers = msg.headers();
            let headers = headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| (h.key.as_bytes(), h.value.unwrap_or(&[])))
                .collect();
            let dead = crate::kafka::deadletter::Dead {
                topic: msg.topic().as_bytes(),
                partition: msg.partition(),
                key: msg.key(),
                value: msg.payload().unwrap_or(&[]),
                headers,
                reason: r.label(),
            };
            buried = SINK.with(|s| s.borrow_mut().bury(opaque, dead));
        }
        SINK.with(|s| s.borrow_mut().settle(opaque, f.cost, res, buried));
        // SAFETY: this report's message, served on this thread; nothing reads its
        // headers after this.
        unsafe { flight::release(msg_ptr, Some(&f)) };
    }
}

/// The producer of the Kafka thread (`ready`: the metrics where it says whether it can
/// acknowledge now), or (None) the metadata probe's client, which never produces and so
/// needs no idempotent producer id.
pub fn create_producer(
    cfg: &Config,
    bootstrap: &str,
    ready: Option<&Arc<Metrics>>,
) -> Result<KafkaProducer, String> {
    let mut cc = ClientConfig::new();
    let props = cfg.kafka_properties();
    let idempotent = props
        .iter()
        .any(|(k, v)| k == "enable.idempotence" && v == "true");
    for (k, v) in props {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", bootstrap);
    let mut ctx = Ctx::default();
    match ready {
        None => {
            cc.set("enable.idempotence", "false");
        }
        Some(m) if idempotent => {
            // The idempotent producer's state changes arrive as `eos` debug lines (a few
            // per producer id; librdkafka has no other public signal for them).
            let debug = match cc.get("debug") {
                Some(d) if d.split(',').any(|c| c == "eos" || c == "all") => d.to_string(),
                Some(d) if !d.is_empty() => format!("{d},eos"),
                _ => "eos".to_string(),
            };
            cc.set("debug", debug);
            // rdkafka derives librdkafka's log level from the `log` crate (info here),
            // which would drop these debug lines before they reach `Ctx::log`.
            cc.set_log_level(RDKafkaLogLevel::Debug);
            m.producer_ready.store(false, Ordering::Release);
            ctx.metrics = Some(m.clone());
        }
        Some(m) => m.producer_ready.store(true, Ordering::Release),
    }
    cc.create_with_context(ctx)
        .map_err(|e| format!("kafka producer: {e}"))
}

/// State shared between the Kafka thread and the rest of the process.
pub struct KafkaShared {
    pub wake: Arc<KafkaWake>,
    /// Set after every executor has stopped: drain, flush, exit.
    pub stop: AtomicBool,
}

pub struct KafkaThread {
    /// Declared before `producer`: it must be dropped first.
    queue_wake: Option<QueueWake>,
    /// Dropped only through `retire` (see `Drop`): its records point at shared header
    /// objects that librdkafka must never free.
    producer: ManuallyDrop<KafkaProducer>,
    cfg: Arc<Config>,
    bootstrap: String,
    lanes: Vec<KafkaLane>,
    metrics: Arc<Metrics>,
    shared: Arc<KafkaShared>,
    flush_timeout: Duration,
    /// Results that could not be pushed because a lane was full; retried each loop.
    backlog: Vec<Completions>,
    /// Failure counters at the last aggregate log line.
    logged_failures: [u64; FailReason::ALL.len()],
    last_log: Instant,
    /// Last time a record was delivered, or nothing was in flight, or the broker did not
    /// answer (see `check_health`).
    last_progress: Instant,
    /// Records librdkafka accepted since start (see `in_flight`).
    sent: u64,
    /// Of them, records someone waits for (ack=kafka): while any is in flight, delivery
    /// reports wake this thread at once (`KafkaWake::report`).
    waited_sent: u64,
    /// The nap while records are in flight (`handoff_ms`).
    handoff: Duration,
    phase: Phase,
    next_health_check: Instant,
    /// Records taken from the lanes since `window_start`; at the end of each
    /// `BUSY_WINDOW` they decide whether the thread naps or sleeps when idle (`busy`).
    window_start: Instant,
    window_records: usize,
    busy: bool,
    /// `send_batch`'s buffer for a topic's C string.
    topic_c: Vec<u8>,
}

/// The thread naps (see `KafkaWake`) once records arrive at 64 per ms or more: there the
/// nap's timed wake-ups are far fewer than the executors' wakes would be (one per
/// scheduler round). Below it napping saves little and slowed one connection (~16
/// records per ms; perf/ab.sh against the old wake-per-round: threshold 8 gave 16.9k ->
/// 13.5k req/s, 32 gave 16.4k -> 15.6k, 64 gives 16.1k -> 17.4k, i.e. no loss).
const BUSY_WINDOW: Duration = Duration::from_millis(1);
const BUSY_RECORDS: usize = 64;

impl KafkaThread {
    pub fn new(
        cfg: Arc<Config>,
        bootstrap: String,
        lanes: Vec<KafkaLane>,
        metrics: Arc<Metrics>,
        shared: Arc<KafkaShared>,
    ) -> Result<Self, String> {
        let n = lanes.len();
        let producer = create_producer(&cfg, &bootstrap, Some(&metrics))?;
        let handoff = Duration::from_millis(cfg.handoff_ms);
        Ok(KafkaThread {
            queue_wake: Some(QueueWake::enable(&producer, shared.wake.clone())),
            producer: ManuallyDrop::new(producer),
            flush_timeout: Duration::from_millis(cfg.shutdown_timeout_ms),
            cfg,
            bootstrap,
            lanes,
            metrics,
            shared,
            backlog: (0..n).map(|_| Completions::default()).collect(),
            logged_failures: [0; FailReason::ALL.len()],
            last_log: Instant::now(),
            last_progress: Instant::now(),
            sent: 0,
            waited_sent: 0,
            handoff,
            phase: Phase::Running,
            next_health_check: Instant::now(),
            window_start: Instant::now(),
            window_records: 0,
            busy: false,
            topic_c: Vec::new(),
        })
    }

    pub fn run(mut self) {
        SINK.with(|s| {
            let mut s = s.borrow_mut();
            s.per_exec = (0..self.lanes.len())
                .map(|_| Completions::default())
                .collect();
            s.dead = self
                .cfg
                .spool_dir
                .as_deref()
                .map(crate::kafka::deadletter::DeadLetters::new);
        });
        flight::set_sharing(may_share_headers(&self.cfg));
        info!("kafka thread started");
        // TEST HOOK (tests/notify.rs, watchdog test; `fault-injection` builds only):
        // INGESTD_TEST_FREEZE_KAFKA_AFTER_MS=N makes this thread stop making progress N ms
        // after it started, so the systemd watchdog pings must stop. Read once; costs one
        // branch per loop when unset. INGESTD_TEST_PANIC_KAFKA_AFTER_MS=N
        // (tests/faults.rs) panics it instead.
        let test_at = |var| {
            crate::faults::env(var)
                .and_then(|v| v.parse().ok())
                .map(|ms| Instant::now() + Duration::from_millis(ms))
        };
        let freeze_at = test_at("INGESTD_TEST_FREEZE_KAFKA_AFTER_MS");
        let panic_at = test_at("INGESTD_TEST_PANIC_KAFKA_AFTER_MS");
        loop {
            if freeze_at.is_some_and(|t| Instant::now() >= t) {
                warn!("INGESTD_TEST_FREEZE_KAFKA_AFTER_MS: kafka thread frozen (test hook)");
                loop {
                    std::thread::park();
                }
            }
            if panic_at.is_some_and(|t| Instant::now() >= t) {
                panic!("INGESTD_TEST_PANIC_KAFKA_AFTER_MS: kafka thread panics (test hook)");
            }
            let stopping = self.observe_stop();
            let mut work = self.drain_lanes();
            self.producer.poll(Duration::ZERO);
            work |= self.send_retries();
            work |= self.dispatch();
            let waited_reports = SINK.with(|s| s.borrow().waited_reports);
            self.shared
                .wake
                .set_waited(self.waited_sent > waited_reports);
            bump(&self.metrics.kafka.heartbeat, 1);
            self.log_failures();
            self.check_health();
            if stopping && !work {
                break;
            }
            if !work {
                self.idle();
            }
        }
        self.flush();
    }

    /// Moves to `Phase::Stopping` once the stop flag is set; whether stopping.
    fn observe_stop(&mut self) -> bool {
        if matches!(self.phase, Phase::Running) && self.shared.stop.load(Ordering::Acquire) {
            self.phase = Phase::Stopping {
                deadline: Instant::now() + self.flush_timeout,
            };
        }
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// Stopping, and the flush deadline has passed.
    fn out_of_time(&mut self) -> bool {
        self.observe_stop();
        matches!(self.phase, Phase::Stopping { deadline } if Instant::now() >= deadline)
    }

    /// Takes every batch the executors pushed and hands its records to librdkafka.
    fn drain_lanes(&mut self) -> bool {
        let mut work = false;
        for i in 0..self.lanes.len() {
            while let Some(batch) = self.lanes[i].from_exec.try_pop() {
                work = true;
                self.window_records += batch.records.len();
                bump(&self.metrics.kafka.batches, 1);
                self.send_batch(&batch);
                self.backlog[i].spent.push(batch);
            }
        }
        work
    }

    fn send_batch(&mut self, b: &RecordBatch) {
        // The topic as a C string, built in a buffer kept across batches.
        let mut topic_c = std::mem::take(&mut self.topic_c);
        for r in &b.records {
            let topic = b.get(r.topic);
            let value = b.get(r.value);
            let key = r.key.map(|k| b.get(k));
            let hs = &b.headers[r.headers.0 as usize..r.headers.1 as usize];
            let pairs = hs.iter().map(|h| (b.get(h.name), b.get(h.value)));
            let hcost: usize = pairs.clone().map(|(n, v)| n.len() + v.len()).sum();
            let cost = record_cost(key.map_or(0, <[u8]>::len), value.len(), hcost);
            let waited = Opaque::decode(r.opaque).slot != 0;
            if waited {
                self.shared.wake.set_waited(true);
            }
            topic_c.clear();
            topic_c.extend_from_slice(topic);
            topic_c.push(0);
            let boarding = flight::board(r.opaque, cost, pairs.clone());
            loop {
                let code = match CStr::from_bytes_with_nul(&topic_c) {
                    Ok(t) => produce(&self.producer, t, r.partition, key, value, &boarding),
                    // A NUL inside the name would name another topic in C.
                    Err(_) => RDKafkaErrorCode::InvalidArgument,
                };
                match code {
                    RDKafkaErrorCode::NoError => {
                        self.sent += 1;
                        self.waited_sent += u64::from(waited);
                        break;
                    }
                    RDKafkaErrorCode::QueueFull if self.out_of_time() => {
                        // Shutting down and out of time: no more waiting for room.
                        flight::unboard(boarding);
                        SINK.with(|s| {
                            s.borrow_mut()
                                .record(r.opaque, cost, Err(FailReason::Shutdown))
                        });
                        break;
                    }
                    RDKafkaErrorCode::QueueFull => {
                        // Backpressure, not an error: let librdkafka deliver, then retry.
                        bump(&self.metrics.kafka.queue_full_waits, 1);
                        // Still making progress: keep the watchdog's heartbeat moving.
                        bump(&self.metrics.kafka.heartbeat, 1);
                        self.producer.poll(Duration::from_millis(5));
                        self.dispatch();
                    }
                    code if FailReason::transient(code) => {
                        flight::unboard(boarding);
                        SINK.with(|s| {
                            s.borrow_mut()
                                .keep(topic, key, value, pairs, r.partition, r.opaque)
                        });
                        break;
                    }
                    code => {
                        flight::unboard(boarding);
                        let reason = FailReason::from_code(code);
                        debug!(?code, topic = %String::from_utf8_lossy(topic), "record rejected by librdkafka");
                        let dead = crate::kafka::deadletter::Dead {
                            topic,
                            partition: r.partition,
                            key,
                            value,
                            headers: pairs.collect(),
                            reason: reason.label(),
                        };
                        SINK.with(|s| {
                            let mut s = s.borrow_mut();
                            let buried = s.bury(r.opaque, dead);
                            s.settle(r.opaque, cost, Err(reason), buried)
                        });
                        break;
                    }
                }
            }
        }
        self.topic_c = topic_c;
    }

    /// Produces again the records kept after a passing failure, once they are due.
    fn send_retries(&mut self) -> bool {
        let due = SINK.with(|s| s.borrow().retry_due().is_some_and(|t| Instant::now() >= t));
        if !due {
            return false;
        }
        let batch = SINK.with(|s| {
            let mut s = s.borrow_mut();
            s.retry_since = None;
            std::mem::take(&mut s.retry)
        });
        self.send_batch(&batch);
        true
    }

    /// Records handed to librdkafka whose delivery report has not been served yet. Exact,
    /// unlike `in_flight_count` (librdkafka's out-queue length also counts log and error
    /// events waiting in the main queue).
    fn in_flight(&self) -> u64 {
        self.sent - SINK.with(|s| s.borrow().reports)
    }

    /// Records kept for another try.
    fn retrying(&self) -> usize {
        SINK.with(|s| s.borrow().retry.records.len())
    }

    /// Pushes gathered results to their executors, one push and one wake per executor.
    /// Once stopping, the executors have exited: their results are dropped (the counters
    /// still count them), so a lane nobody reads any more cannot keep this thread busy.
    fn dispatch(&mut self) -> bool {
        let mut any = false;
        SINK.with(|s| {
            let mut s = s.borrow_mut();
            let k = &self.metrics.kafka;
            if s.delivered > 0 {
                self.last_progress = Instant::now();
            }
            bump(&k.retried, std::mem::take(&mut s.retried));
            bump(&k.dead_letters, std::mem::take(&mut s.dead_letters));
            bump(&k.delivered, std::mem::take(&mut s.delivered));
            for (i, n) in std::mem::take(&mut s.failed).into_iter().enumerate() {
                bump(&k.failed[i], n);
            }
            for (i, c) in s.per_exec.iter_mut().enumerate() {
                self.backlog[i].absorb(c);
            }
        });
        let gone = matches!(self.phase, Phase::Stopping { .. });
        for (i, lane) in self.lanes.iter().enumerate() {
            if gone {
                self.backlog[i] = Completions::default();
            }
            if self.backlog[i].is_empty() {
                continue;
            }
            any = true;
            let c = std::mem::take(&mut self.backlog[i]);
            match lane.to_exec.try_push(c) {
                None => lane.wake.wake(),
                Some(c) => self.backlog[i] = c,
            }
        }
        any
    }

    /// Failed records are logged in aggregate, at most every 10 s, never per record.
    fn log_failures(&mut self) {
        if self.last_log.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_log = Instant::now();
        let now: [u64; FailReason::ALL.len()] =
            std::array::from_fn(|i| self.metrics.kafka.failed[i].load(Ordering::Relaxed));
        if now != self.logged_failures {
            let delta: Vec<String> = FailReason::ALL
                .iter()
                .filter(|r| now[**r as usize] > self.logged_failures[**r as usize])
                .map(|r| {
                    format!(
                        "{}={}",
                        r.label(),
                        now[*r as usize] - self.logged_failures[*r as usize]
                    )
                })
                .collect();
            warn!(failed = %delta.join(","), "records not delivered in the last interval");
            self.logged_failures = now;
        }
    }

    /// Rebuilds the producer when librdkafka cannot recover by itself: it reported a fatal
    /// error, or records stay in flight without a single delivery for 4x `ack_timeout_ms`
    /// while the broker answers metadata requests (seen when a broker lost the idempotent
    /// producer's state and librdkafka bumps its epoch forever). The old producer's
    /// records come back purged, a passing failure: they are produced again on the new one.
    fn check_health(&mut self) {
        let now = Instant::now();
        if now < self.next_health_check {
            return;
        }
        self.next_health_check = now + Duration::from_secs(1);
        // A fatal error arrives as an ordinary error event; librdkafka remembers it here.
        let fatal = self.producer.client().fatal_error();
        // Time without progress counts only while records wait and the broker answers: an
        // outage is librdkafka's to ride out, not a reason to start over.
        if self.in_flight() == 0 || !self.metrics.broker_ready.load(Ordering::Acquire) {
            self.last_progress = now;
        }
        let stuck_after = Duration::from_millis(self.cfg.ack_timeout_ms.max(1000) * 4);
        let stuck = self.last_progress.elapsed() > stuck_after;
        if fatal.is_none() && !stuck {
            return;
        }
        let detail = fatal.map(|(c, m)| format!("fatal error {c:?}: {m}"));
        error!(
            detail = detail
                .as_deref()
                .unwrap_or("records time out while the broker answers"),
            in_flight = self.in_flight(),
            "rebuilding the kafka producer"
        );
        match create_producer(&self.cfg, &self.bootstrap, Some(&self.metrics)) {
            Ok(p) => {
                // The old producer's purged records come back as passing failures and
                // are produced again on the new one.
                self.queue_wake = None;
                retire(std::mem::replace(&mut *self.producer, p));
                self.queue_wake = Some(QueueWake::enable(&self.producer, self.shared.wake.clone()));
                self.dispatch();
                bump(&self.metrics.kafka.producer_rebuilds, 1);
            }
            Err(e) => error!(error = %e, "cannot rebuild the kafka producer"),
        }
        self.last_progress = Instant::now();
    }

    /// Nothing to do: wait for a delivery report, or until an executor pushes. While
    /// records are in flight or keep coming (`busy`) this is a nap of `handoff_ms` that
    /// routine pushes and reports do not interrupt; otherwise a sleep that any push ends.
    fn idle(&mut self) {
        // Sleep until an executor pushes or librdkafka queues an event (`QueueWake` unparks
        // us from its thread). Not `producer.poll(timeout)`: it would not see executor
        // pushes, and rdkafka turns the last sub-millisecond of a deadline into a 0 ms poll
        // and spins. The sleep's timeout is only a safety net.
        if self.queue_wake.as_ref().is_some_and(QueueWake::pending) {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= BUSY_WINDOW {
            self.busy = self.window_records >= BUSY_RECORDS;
            self.window_records = 0;
            self.window_start = now;
        }
        let w = &self.shared.wake;
        // While records are in flight, a nap: pushes and reports of that interval are
        // served together when it ends, and librdkafka gets them as one batch (one
        // produce request instead of one per burst). Only an idle thread sleeps.
        let nap = self.busy || self.in_flight() > 0;
        let mut timeout = if nap {
            self.handoff
        } else {
            Duration::from_millis(100)
        };
        if let Some(t) = SINK.with(|s| s.borrow().retry_due()) {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if w.begin_park(nap)
            && !self.shared.stop.load(Ordering::Acquire)
            && !self.queue_wake.as_ref().is_some_and(QueueWake::pending)
        {
            std::thread::park_timeout(timeout);
        }
        w.end_park();
    }

    /// Shutdown: every executor has stopped and its lanes are drained; deliver what is in
    /// flight (and what waits for another try) within the deadline. What is left then,
    /// with what could not be handed over in time, is counted and logged.
    fn flush(&mut self) {
        self.observe_stop();
        let left = |t: &Self| t.in_flight() + t.retrying() as u64;
        info!(
            records = left(self),
            timeout_ms = self.flush_timeout.as_millis() as u64,
            "flushing kafka producer"
        );
        while left(self) > 0 && !self.out_of_time() {
            self.producer.poll(Duration::from_millis(20));
            self.send_retries();
            self.dispatch();
        }
        let metrics = self.metrics.clone();
        let failed = &metrics.kafka.failed[FailReason::Shutdown as usize];
        bump(failed, left(self));
        self.dispatch();
        let lost = failed.load(Ordering::Relaxed);
        if lost > 0 {
            error!(
                records = lost,
                "shutdown deadline reached: records not delivered"
            );
        } else {
            info!("kafka producer flushed");
        }
    }
}

/// Whether records with the same headers may share one header object (kafka/flight.rs):
/// not when librdkafka plugins are loaded, as an interceptor may add to a record's headers.
fn may_share_headers(cfg: &Config) -> bool {
    !cfg.kafka_properties()
        .iter()
        .any(|(k, v)| k == "plugin.library.paths" && !v.trim().is_empty())
}

/// Drops a producer once every record it holds has had its delivery report: purges what
/// it holds and serves the reports (a purged record comes back as a passing failure).
/// Records without a report would be destroyed by librdkafka with the header objects
/// they share (`flight`): if any are still out after the wait, the producer is leaked
/// instead (its threads and memory, once, on a path that should never be taken).
fn retire(p: KafkaProducer) {
    p.purge(PurgeConfig::default().queue().inflight());
    let until = Instant::now() + Duration::from_secs(5);
    while flight::in_flight() > 0 && Instant::now() < until {
        p.poll(Duration::from_millis(10));
    }
    match flight::in_flight() {
        0 => drop(p),
        n => {
            error!(
                records = n,
                "the kafka producer kept records without a delivery report: leaking it"
            );
            std::mem::forget(p);
            // Their fate is unknown: not confirmed (a spooled one stays spooled), and
            // their queue space comes back.
            SINK.with(|s| {
                let mut s = s.borrow_mut();
                for f in flight::abandon() {
                    s.record(f.opaque, f.cost, Err(FailReason::Broker));
                }
            });
        }
    }
}

impl Drop for KafkaThread {
    fn drop(&mut self) {
        // The queue wake first (it points into the producer), then the producer.
        self.queue_wake = None;
        // SAFETY: `producer` is not used again: this is the thread's drop.
        retire(unsafe { ManuallyDrop::take(&mut self.producer) });
    }
}

/// Hands one record to librdkafka: what `BaseProducer::send` does, with the topic's C
/// string and the header object given (rdkafka's `OwnedHeaders` cannot wrap a shared one)
/// and the flight's key as the opaque. librdkafka copies the value and key, and owns the
/// header object once it accepts the record.
fn produce(
    producer: &KafkaProducer,
    topic: &CStr,
    partition: i32,
    key: Option<&[u8]>,
    value: &[u8],
    b: &flight::Boarding,
) -> RDKafkaErrorCode {
    use rdkafka::bindings::rd_kafka_vtype_t::*;
    let (key_ptr, key_len) = key.map_or((std::ptr::null_mut(), 0), |k| {
        (k.as_ptr() as *mut std::ffi::c_void, k.len())
    });
    // SAFETY: the same arguments `BaseProducer::send` passes, all valid for the call:
    // the producer's live handle, a NUL-terminated topic, slices librdkafka copies
    // (RD_KAFKA_MSG_F_COPY), an opaque it only hands back, and a header object of ours
    // (or null) whose ownership passes only on success.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_producev(
            producer.client().native_ptr(),
            RD_KAFKA_VTYPE_TOPIC,
            topic.as_ptr(),
            RD_KAFKA_VTYPE_PARTITION,
            if partition >= 0 { partition } else { -1 },
            RD_KAFKA_VTYPE_MSGFLAGS,
            rdkafka::bindings::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            value.as_ptr() as *mut std::ffi::c_void,
            value.len(),
            RD_KAFKA_VTYPE_KEY,
            key_ptr,
            key_len,
            RD_KAFKA_VTYPE_OPAQUE,
            b.key as *mut std::ffi::c_void,
            RD_KAFKA_VTYPE_HEADERS,
            b.headers,
            RD_KAFKA_VTYPE_END,
        )
    };
    err.into()
}

/// Where the Kafka thread is in its life; with the executors' `Exec::hand_over` the one
/// owner of "never a 2xx, then lost" at shutdown.
enum Phase {
    /// Executors run: take their batches, produce, hand results back.
    Running,
    /// Every executor has exited and handed over what it held: drain the lanes and flush
    /// librdkafka by `deadline`, no longer handing results back (nobody reads them), and
    /// no longer waiting for room in librdkafka's queue past it.
    Stopping { deadline: Instant },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::lane::make_lane;
    use rdkafka::mocking::MockCluster;

    #[test]
    fn header_objects_are_not_shared_with_plugins_loaded() {
        let mut cfg = Config::default();
        assert!(may_share_headers(&cfg));
        cfg.kafka.insert(
            "plugin.library.paths".into(),
            "monitoring-interceptor".into(),
        );
        assert!(!may_share_headers(&cfg));
        cfg.kafka.insert("plugin.library.paths".into(), " ".into());
        assert!(may_share_headers(&cfg));
    }

    /// Once stopping, the executors have exited: a result for a lane nobody drains any
    /// more (and that is full) is not work, so the thread flushes and exits instead of
    /// retrying the push forever.
    #[test]
    fn exits_when_stopped_although_an_exited_executors_lane_is_full() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let cfg = Arc::new(Config {
            shutdown_timeout_ms: 1000,
            ..Default::default()
        });
        let wake = KafkaWake::new();
        let (_exec_end, kafka_end) = make_lane(0, wake.clone());
        while kafka_end.to_exec.try_push(Completions::default()).is_none() {}
        let shared = Arc::new(KafkaShared {
            wake,
            stop: AtomicBool::new(true),
        });
        let bootstrap = mock.bootstrap_servers();
        let mut kt =
            KafkaThread::new(cfg, bootstrap, vec![kafka_end], Metrics::new(1), shared).unwrap();
        // A result still waiting for that lane.
        kt.backlog[0].released_records = 1;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            kt.run();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the kafka thread did not exit");
    }
}
