//! How many records/s the single Kafka thread sustains on its own (issue 5).
//!
//!   cargo run --release --example kafka_sat -- BROKERS TOPIC [SECONDS] [BODY] [LANES]
//!   benches/kafka_thread.sh          # starts tansu and runs this against it
//!
//! Feeder threads stand in for executors: each fills `RecordBatch`es of 64 records (random
//! letters) as the executors' flusher does and pushes them into its lane, keeping as many records in
//! flight as an executor's default queue allows (`queue_max_records`). The real
//! `KafkaThread` hands them to librdkafka and sends completions back, exactly as in the
//! daemon; no HTTP, no sockets of ours. After a warm-up it samples the delivered counter and
//! the CPU time of each thread (from /proc/self/task) for SECONDS, then stops, flushes and
//! checks that every record pushed was delivered (exit 1 otherwise).
//! Prints one JSON line with records/s and CPU microseconds per record per thread group.

use ingestd::config::Config;
use ingestd::kafka::lane::{make_lane, ExecutorLane, Opaque, RecordBatch};
use ingestd::kafka::{KafkaShared, KafkaThread};
use ingestd::metrics::Metrics;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Records per pushed batch: what one executor loop iteration hands over under load.
const BATCH: usize = 64;

/// Wakes a parked feeder thread when its completions arrive.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: kafka_sat BROKERS|embedded TOPIC [SECONDS] [BODY] [LANES]");
        std::process::exit(2);
    }
    let arg = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().expect("number"));
    let (seconds, body, lanes) = (arg(2, 10), arg(3, 256) as usize, arg(4, 1) as usize);

    let mut cfg = Config {
        brokers: args[0].clone(),
        default_topic: Some(args[1].clone()),
        executors: lanes,
        ..Config::default()
    };
    // The mock cluster lives in this process; it creates the topic itself.
    let _mock = (cfg.brokers == "embedded").then(|| {
        let m = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
        m.create_topic(&args[1], 4, 1).expect("mock topic");
        cfg.brokers = m.bootstrap_servers();
        m
    });
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new(lanes);
    let shared = Arc::new(KafkaShared {
        wake: ingestd::kafka::lane::KafkaWake::new(),
        stop: AtomicBool::new(false),
    });
    let (mut exec_lanes, mut kafka_lanes) = (Vec::new(), Vec::new());
    for i in 0..lanes {
        let (e, k) = make_lane(i as u8, shared.wake.clone());
        exec_lanes.push(e);
        kafka_lanes.push(k);
    }
    let kt = KafkaThread::new(
        cfg.clone(),
        cfg.brokers.clone(),
        kafka_lanes,
        metrics.clone(),
        shared.clone(),
    )
    .expect("producer");
    let kafka = std::thread::Builder::new()
        .name("ingestd-kafka".into())
        .spawn(move || kt.run())
        .unwrap();
    shared.wake.set_thread(kafka.thread().clone());

    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let feeders: Vec<_> = exec_lanes
        .into_iter()
        .map(|lane| {
            let (stop, pushed, topic) = (stop.clone(), pushed.clone(), args[1].clone());
            let limit = cfg.queue_max_records;
            std::thread::Builder::new()
                .name(format!("feeder-{}", lane.index))
                .spawn(move || feed(lane, &topic, body, limit, &stop, &pushed))
                .unwrap()
        })
        .collect();

    // Warm-up: connection, producer id, first batches.
    std::thread::sleep(Duration::from_secs(2));
    let (d0, c0, t0) = (delivered(&metrics), thread_cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (d1, c1, wall) = (delivered(&metrics), thread_cpu(), t0.elapsed());

    stop.store(true, Ordering::Release);
    for f in feeders {
        f.join().unwrap();
    }
    shared.stop.store(true, Ordering::Release);
    shared.wake.wake();
    kafka.join().unwrap();

    let records = d1 - d0;
    let rate = records as f64 / wall.as_secs_f64();
    let mut groups: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, ticks) in &c1 {
        let before = c0.get(name).copied().unwrap_or(0);
        let group = if name.starts_with("rdk:") {
            "librdkafka"
        } else if name.starts_with("feeder") {
            "feeders"
        } else if name == "ingestd-kafka" {
            "kafka_thread"
        } else {
            "other"
        };
        *groups.entry(group).or_default() += (ticks - before) as f64 / clk_tck();
    }
    let us_per = |g: &str| groups.get(g).copied().unwrap_or(0.0) * 1e6 / records.max(1) as f64;
    let cores = |g: &str| groups.get(g).copied().unwrap_or(0.0) / wall.as_secs_f64();
    let total = pushed.load(Ordering::Acquire);
    let done = delivered(&metrics);
    let failed: u64 = metrics
        .kafka
        .failed
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum();
    println!(
        "{{\"records_per_s\":{rate:.0},\"body\":{body},\"lanes\":{lanes},\"seconds\":{:.1},\
         \"kafka_thread_us_per_record\":{:.3},\"kafka_thread_cores\":{:.2},\
         \"librdkafka_us_per_record\":{:.3},\"librdkafka_cores\":{:.2},\
         \"feeders_cores\":{:.2},\"batches\":{},\"queue_full_waits\":{},\
         \"pushed\":{total},\"delivered\":{done},\"failed\":{failed}}}",
        wall.as_secs_f64(),
        us_per("kafka_thread"),
        cores("kafka_thread"),
        us_per("librdkafka"),
        cores("librdkafka"),
        cores("feeders"),
        metrics.kafka.batches.load(Ordering::Relaxed),
        metrics.kafka.queue_full_waits.load(Ordering::Relaxed),
    );
    if done != total || failed != 0 {
        eprintln!("kafka_sat: pushed {total} records, delivered {done}, failed {failed}");
        std::process::exit(1);
    }
}

/// One stand-in executor: keeps up to `limit` records in flight, in batches of `BATCH`.
fn feed(
    lane: ExecutorLane,
    topic: &str,
    body: usize,
    limit: usize,
    stop: &AtomicBool,
    n: &AtomicU64,
) {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    lane.wake.register(&waker);
    // Random letters, a different window per record: lz4 gets ~25% off, not the 99% that
    // one repeated body would give, so compression and broker bytes are not flattered.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ lane.index as u64;
    let noise: Vec<u8> = (0..(1 << 20) + body)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect();
    let mut at = 0usize;
    let mut spare: Vec<RecordBatch> = Vec::new();
    let mut in_flight = 0usize;
    let opaque = Opaque {
        executor: lane.index,
        slot: 0, // nobody waits: the ack=queued path
        gen: 0,
        first: true,
        last: true,
        spool: 0,
    }
    .encode();
    loop {
        lane.wake.begin_drain();
        while let Some(c) = lane.from_kafka.try_pop() {
            in_flight -= c.released_records;
            spare.extend(c.spent);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        if in_flight + BATCH > limit {
            // Full, as an executor answering 503 would be: wait for completions.
            std::thread::park_timeout(Duration::from_millis(10));
            continue;
        }
        let mut b = spare.pop().unwrap_or_default();
        b.clear();
        for _ in 0..BATCH {
            at = (at + 4099) % (1 << 20);
            b.push_record(
                topic.as_bytes(),
                None,
                &noise[at..at + body],
                (0, 0),
                -1,
                opaque,
            );
        }
        if lane.to_kafka.try_push(b).is_some() {
            std::thread::yield_now();
            continue;
        }
        lane.kafka.wake();
        in_flight += BATCH;
        n.fetch_add(BATCH as u64, Ordering::AcqRel);
    }
}

fn delivered(m: &Metrics) -> u64 {
    m.kafka.delivered.load(Ordering::Relaxed)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime+stime ticks of every thread of this process, by thread name (summed per name).
fn thread_cpu() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[l + 1..r].to_string();
        let f: Vec<&str> = stat[r + 2..].split(' ').collect();
        let ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        *out.entry(name).or_default() += ticks;
    }
    out
}
