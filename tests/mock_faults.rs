//! Fault injection with rdkafka's MockCluster, in process: request errors, broker down,
//! round-trip delay. Each failure must reach the client as the right 4xx/5xx (never a
//! 2xx) within the ack timeout, be counted by reason, and clear by itself.

mod common;

use common::http::{get, post, Client};
use common::wait_until;
use ingestd::config::{AckMode, Config};
use ingestd::error::FailReason;
use ingestd::exec::server::Server;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One in-process server at a time: each holds io_uring rings in locked memory.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> (MockCluster<'static, DefaultProducerContext>, Server) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 2, 1).unwrap();
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: mock.bootstrap_servers(),
        default_topic: Some("t".into()),
        ack: AckMode::Kafka,
        executors: 1,
        ack_timeout_ms: 1500,
        // Records with an `X-Trace` carry it as a header: those with the same value share
        // one librdkafka header object (kafka/flight.rs).
        forward_headers: vec!["x-trace".into()],
        ..Default::default()
    };
    cfg.validate().unwrap();
    let server = Server::start(cfg).unwrap();
    let t0 = Instant::now();
    while !server.metrics.ready() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    (mock, server)
}

fn failed(s: &Server, r: FailReason) -> u64 {
    s.metrics.kafka.failed[r as usize].load(Ordering::Relaxed)
}

#[test]
fn produce_errors_map_to_status_and_reason() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mock, server) = setup();
    let mut c = Client::connect(server.addr.unwrap()).unwrap();
    assert_eq!(c.request(&post("/", b"ok-1", &[])).unwrap().status, 200);

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let r = c.request(&post("/", b"too-large", &[])).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(failed(&server, FailReason::TooLarge), 1);

    // A partition that does not exist is the client's fault: 400, never 5xx.
    let r = c
        .request(&post("/", b"p9", &[("Kafka-Partition", "9")]))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(failed(&server, FailReason::UnknownPartition), 1);

    assert_eq!(c.request(&post("/", b"ok-2", &[])).unwrap().status, 200);

    // An authorization failure: librdkafka keeps failing the topic until its next
    // metadata refresh, so clients see 503 + Retry-After until then, never a 2xx.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let r = c.request(&post("/", b"denied", &[])).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(failed(&server, FailReason::Broker) >= 1);

    // Errors cleared: back to 200 on the same connection, without a restart.
    wait_until("200 again", Duration::from_secs(30), || {
        let r = c.request(&post("/", b"ok-3", &[])).unwrap();
        assert!(r.status == 200 || r.status == 503, "{}", r.status);
        r.status == 200
    });
    let m = &server.metrics;
    assert!(m.kafka.delivered.load(Ordering::Relaxed) >= 3);
    drop(c);
    server.shutdown();
}

#[test]
fn broker_down_times_out_then_recovers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mock, server) = setup();
    let mut c = Client::connect(server.addr.unwrap()).unwrap();
    assert_eq!(c.request(&post("/", b"before", &[])).unwrap().status, 200);
    mock.broker_down(1).unwrap();
    let t0 = Instant::now();
    let r = c.request(&post("/", b"down", &[])).unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    wait_until("readyz 503", Duration::from_secs(10), || {
        get(server.addr.unwrap(), "/readyz").unwrap().status == 503
    });
    mock.broker_up(1).unwrap();
    wait_until("readyz 200", Duration::from_secs(15), || {
        get(server.addr.unwrap(), "/readyz").unwrap().status == 200
    });
    let mut ok = false;
    for _ in 0..20 {
        let r = c.request(&post("/", b"after", &[])).unwrap();
        if r.status == 200 {
            ok = true;
            break;
        }
        assert!(r.status == 503 || r.status == 504, "{}", r.status);
    }
    assert!(ok, "recovered without restart");
    // The record answered 504 was not confirmed, not lost: it is still delivered, and
    // nothing counts as failed.
    wait_until("queue drained", Duration::from_secs(15), || {
        server.metrics.total(|e| &e.queue_records) == 0
    });
    assert!(server.metrics.total(|e| &e.records_unconfirmed) >= 1);
    assert_eq!(failed(&server, FailReason::Timeout), 0);
    assert_eq!(failed(&server, FailReason::Broker), 0);
    drop(c);
    server.shutdown();
}

#[test]
fn slow_broker_answers_504_at_the_ack_timeout() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mock, server) = setup();
    let mut c = Client::connect(server.addr.unwrap()).unwrap();
    assert_eq!(c.request(&post("/", b"fast", &[])).unwrap().status, 200);
    mock.broker_round_trip_time(1, Duration::from_millis(2500))
        .unwrap();
    let t0 = Instant::now();
    let r = c.request(&post("/", b"slow", &[])).unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_millis(2400));
    // The queued contract is not affected by a slow broker.
    let r = c
        .request(&post("/", b"queued", &[("Kafka-Ack", "queued")]))
        .unwrap();
    assert_eq!(r.status, 202);
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    wait_until("delivered again", Duration::from_secs(15), || {
        c.request(&post("/", b"again", &[]))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
    // The slow record was still delivered later: a 504 means "not confirmed", and the
    // counters say so rather than calling it lost.
    wait_until("queue drained", Duration::from_secs(10), || {
        server.metrics.total(|e| &e.queue_records) == 0
    });
    drop(c);
    server.shutdown();
}

#[test]
fn fatal_producer_error_rebuilds_the_producer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mock, server) = setup();
    // Meanwhile, connections keep records in flight that share a header object: the old
    // producer is purged and dropped with them, and librdkafka must never free the shared
    // object (a double free aborts this process) nor lose a record's header.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let addr = server.addr.unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = Client::connect(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .request(&post("/", b"traced", &[("X-Trace", "shared")]))
                        .unwrap();
                    assert!(r.status == 200 || r.status >= 500, "{}", r.status);
                }
            });
        }
        fatal_then_rebuilt(&mock, &server);
        stop.store(true, Ordering::Relaxed);
    });
    // Every record that reached Kafka, before and after the rebuild, carries exactly the
    // headers it was sent with.
    let recs = common::read_topic(&mock.bootstrap_servers(), "t", 2, 3, Duration::from_secs(1));
    let shared = [("x-trace".to_string(), b"shared".to_vec())];
    let mut traced = 0;
    for r in &recs {
        match &r.value[..] {
            b"traced" | b"after" => {
                traced += 1;
                assert_eq!(r.headers, shared, "{r:?}");
            }
            _ => assert!(r.headers.is_empty(), "{r:?}"),
        }
    }
    assert!(traced > 0, "{recs:?}");
    server.shutdown();
}

fn fatal_then_rebuilt(mock: &MockCluster<'static, DefaultProducerContext>, server: &Server) {
    let mut c = Client::connect(server.addr.unwrap()).unwrap();
    assert_eq!(c.request(&post("/", b"before", &[])).unwrap().status, 200);
    // An out-of-order sequence on the head-of-line request is fatal for an idempotent
    // producer: librdkafka refuses to produce again. ingestd must answer 5xx for the
    // record and rebuild the producer by itself.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    // The record itself is produced again on the rebuilt producer: a 200 if that
    // happens within the ack timeout, else a 5xx (not confirmed), never a 4xx.
    let r = c.request(&post("/", b"fenced", &[])).unwrap();
    assert!(
        r.status == 200 || r.status >= 500,
        "{} {}",
        r.status,
        r.text()
    );
    wait_until("rebuilt", Duration::from_secs(10), || {
        server
            .metrics
            .kafka
            .producer_rebuilds
            .load(Ordering::Relaxed)
            >= 1
    });
    wait_until("200 again", Duration::from_secs(15), || {
        c.request(&post("/", b"after", &[("X-Trace", "shared")]))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
}
