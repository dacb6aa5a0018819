//! Counters kept per executor (each written only by its own thread, so increments are a
//! plain load+store, no lock prefix) and by the Kafka thread, read at scrape time and
//! rendered in Prometheus text format by `prometheus-client`.

use crate::error::FailReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Status codes ingestd answers with; anything else is counted as "other".
pub const CODES: [u16; 26] = [
    100, 200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 411, 413, 414, 415, 417, 422, 429, 431,
    500, 501, 503, 504, 505, 507, 0,
];

/// fdatasync latency bucket bounds in microseconds.
pub const FSYNC_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 2_000_000,
];

/// One executor's spool (all zero without one).
#[derive(Default)]
pub struct SpoolStats {
    /// Segment files holding records Kafka has not acknowledged, and their bytes in use.
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    /// Unix time (ms) of the oldest segment still holding unacknowledged records; 0: none.
    pub oldest_unix_ms: AtomicU64,
    /// Records read back from disk for Kafka (replay after a restart, or a backlog that
    /// did not fit the in-memory window).
    pub replayed: AtomicU64,
    /// Records still to read back from segments found at start.
    pub replay_left: AtomicU64,
    /// 1 while the file for the first segment of this run is being prepared (zero-filled
    /// and synced: 0.15-0.5 ms per MiB here): /readyz and READY=1 wait for it, or the
    /// first requests would.
    pub preparing_first: AtomicU64,
    pub quarantined: AtomicU64,
    pub write_errors: AtomicU64,
    /// fdatasyncs run on the executor's thread (`spool::inline`), and the times slow ones
    /// sent the next syncs to io_uring for a back-off.
    pub inline_syncs: AtomicU64,
    pub inline_backoffs: AtomicU64,
    pub fsync: [AtomicU64; FSYNC_US.len() + 1],
    pub fsync_sum_us: AtomicU64,
}

impl SpoolStats {
    pub fn fsync_took(&self, micros: u64) {
        let b = FSYNC_US
            .iter()
            .position(|&u| micros <= u)
            .unwrap_or(FSYNC_US.len());
        bump(&self.fsync[b], 1);
        bump(&self.fsync_sum_us, micros);
    }
}

/// Request latency bucket bounds in microseconds (Prometheus wants seconds).
pub const LATENCY_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Increment for a counter with a single writer thread.
#[inline]
pub fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One executor's counters. Aligned so two executors never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct ExecStats {
    pub requests: [AtomicU64; CODES.len()],
    pub records_enqueued: AtomicU64,
    /// Records of ack=kafka requests answered 504: not confirmed yet, still delivered.
    pub records_unconfirmed: AtomicU64,
    pub queue_bytes: AtomicU64,
    pub queue_records: AtomicU64,
    /// Queued record bytes plus connection buffers above their initial size.
    pub memory_bytes: AtomicU64,
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub accept_errors: AtomicU64,
    /// TLS connections that ended before their handshake completed (no certificate the
    /// client trusts, a wrong client certificate, plain HTTP, a client that gave up).
    pub tls_handshake_failures: AtomicU64,
    pub latency: [AtomicU64; LATENCY_US.len() + 1],
    pub latency_sum_us: AtomicU64,
    /// Advanced by the executor's ticker; the watchdog checks it moves.
    pub heartbeat: AtomicU64,
    pub spool: SpoolStats,
}

impl ExecStats {
    #[inline]
    pub fn request(&self, code: u16, micros: u64) {
        let i = CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CODES.len() - 1);
        bump(&self.requests[i], 1);
        let b = LATENCY_US
            .iter()
            .position(|&u| micros <= u)
            .unwrap_or(LATENCY_US.len());
        bump(&self.latency[b], 1);
        bump(&self.latency_sum_us, micros);
    }
}

#[derive(Default)]
pub struct KafkaStats {
    pub delivered: AtomicU64,
    /// Records produced again after librdkafka gave up on them for a passing reason.
    pub retried: AtomicU64,
    pub failed: [AtomicU64; FailReason::ALL.len()],
    pub batches: AtomicU64,
    pub queue_full_waits: AtomicU64,
    pub producer_rebuilds: AtomicU64,
    pub heartbeat: AtomicU64,
    /// Spooled records Kafka rejected for good, written to the dead-letter file.
    pub dead_letters: AtomicU64,
}

/// Everything /metrics shows and /readyz decides on.
pub struct Metrics {
    pub execs: Vec<ExecStats>,
    pub kafka: KafkaStats,
    /// Broker metadata is known (set by the metadata probe).
    pub broker_ready: AtomicBool,
    /// The Kafka thread's producer can acknowledge now: its idempotent producer id is
    /// assigned (always, without idempotence).
    pub producer_ready: AtomicBool,
    /// The topics that metadata lists (set by the metadata probe).
    pub topics: crate::kafka::topics::KnownTopics,
    /// Every executor has bound its listener.
    pub listening: AtomicBool,
    /// SIGTERM arrived and the drain period runs: still serving, but /readyz says 503 so
    /// load balancers move clients elsewhere first.
    pub draining: AtomicBool,
    /// Per-executor queue limits (`queue_max_bytes`, `queue_max_records`), exported so
    /// alerts on a queue near full need no hard-coded numbers.
    pub queue_limits: [AtomicU64; 3],
    /// A spool is configured.
    pub spooled: AtomicBool,
    /// TLS files loaded again after start (SIGHUP or a change), and attempts that failed
    /// (the certificate in use stays). Written by the reloading threads.
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    /// Tenants, 401s and the address table (`edge_metrics`), once the edge is built.
    pub edge: std::sync::OnceLock<Arc<crate::auth::Edge>>,
}

impl Metrics {
    pub fn new(executors: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            execs: (0..executors).map(|_| ExecStats::default()).collect(),
            kafka: KafkaStats::default(),
            broker_ready: AtomicBool::new(false),
            producer_ready: AtomicBool::new(false),
            topics: Default::default(),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            queue_limits: Default::default(),
            spooled: AtomicBool::new(false),
            tls_reloads: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
            edge: std::sync::OnceLock::new(),
        })
    }

    /// Whether /readyz says 200. With a spool the broker need not be up: the spool
    /// takes the records and they are delivered once it is.
    pub fn ready(&self) -> bool {
        let kafka = self.spooled.load(Relaxed)
            || self.broker_ready.load(Relaxed) && self.producer_ready.load(Relaxed);
        let spools = self.total(|e| &e.spool.preparing_first) == 0;
        self.listening.load(Relaxed) && kafka && spools && !self.draining.load(Relaxed)
    }

    /// Records still to replay from segments found at start, all executors.
    pub fn replay_left(&self) -> u64 {
        self.total(|e| &e.spool.replay_left)
    }

    /// Prometheus text exposition of all metrics.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("format to String");
        out
    }

    pub fn total(&self, f: impl Fn(&ExecStats) -> &AtomicU64) -> u64 {
        self.execs.iter().map(|e| f(e).load(Relaxed)).sum()
    }
}

#[derive(Clone)]
struct Scrape(Arc<Metrics>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Scrape {
    /// One metric family with a value per executor.
    fn per_exec(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        ty: MetricType,
        get: impl Fn(&ExecStats) -> u64,
    ) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(name, help, None, ty)?;
        for (i, e) in self.0.execs.iter().enumerate() {
            let labels = [("executor", i.to_string())];
            let fam = m.encode_family(&labels)?;
            match ty {
                MetricType::Counter => ConstCounter::new(get(e)).encode(fam)?,
                _ => ConstGauge::new(get(e) as i64).encode(fam)?,
            }
        }
        Ok(())
    }
}

impl Scrape {
    fn spool(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        self.per_exec(
            enc,
            "ingestd_spool_segments",
            "Spool segment files in use (the one being written included)",
            g,
            |e| e.spool.segments.load(Relaxed),
        )?;
        self.per_exec(
            enc,
            "ingestd_spool_bytes",
            "Bytes written to the spool segments in use",
            g,
            |e| e.spool.bytes.load(Relaxed),
        )?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.per_exec(
            enc,
            "ingestd_spool_oldest_unacked_age_seconds",
            "Age of the oldest spool segment holding records Kafka has not acknowledged (0: none)",
            g,
            |e| {
                let t = e.spool.oldest_unix_ms.load(Relaxed);
                if t == 0 {
                    0
                } else {
                    now_ms.saturating_sub(t) / 1000
                }
            },
        )?;
        self.per_exec(enc, "ingestd_spool_records_replayed", "Records read back from the spool for Kafka (after a restart, or a backlog beyond the in-memory window)", c, |e| e.spool.replayed.load(Relaxed))?;
        self.per_exec(
            enc,
            "ingestd_spool_replay_left_records",
            "Records still to replay from the segments found at start",
            g,
            |e| e.spool.replay_left.load(Relaxed),
        )?;
        self.per_exec(
            enc,
            "ingestd_spool_quarantined_segments",
            "Segments found corrupt in the middle and set aside (renamed *.corrupt)",
            c,
            |e| e.spool.quarantined.load(Relaxed),
        )?;
        self.per_exec(
            enc,
            "ingestd_spool_write_errors",
            "Spool writes or syncs that failed (answered 507)",
            c,
            |e| e.spool.write_errors.load(Relaxed),
        )?;
        self.per_exec(
            enc,
            "ingestd_spool_inline_syncs",
            "fdatasyncs for 201s run on the executor's own thread (the others go through io_uring)",
            c,
            |e| e.spool.inline_syncs.load(Relaxed),
        )?;
        self.per_exec(
            enc,
            "ingestd_spool_inline_sync_backoffs",
            "Times inline fdatasyncs were slow (4 of the last 16 over spool_inline_sync_us, or a slow probe after a back-off), so syncs went through io_uring for a back-off (1 s, doubling to 64 s)",
            c,
            |e| e.spool.inline_backoffs.load(Relaxed),
        )?;
        let mut d = enc.encode_descriptor(
            "ingestd_spool_fsync_duration_seconds",
            "fdatasync of a spool segment (one per group commit)",
            None,
            MetricType::Histogram,
        )?;
        for (i, e) in self.0.execs.iter().enumerate() {
            let mut count = 0;
            let mut buckets = Vec::with_capacity(FSYNC_US.len() + 1);
            for (b, bound) in FSYNC_US.iter().chain([&u64::MAX]).enumerate() {
                let n = e.spool.fsync[b].load(Relaxed);
                count += n;
                let le = if *bound == u64::MAX {
                    f64::MAX
                } else {
                    *bound as f64 / 1e6
                };
                buckets.push((le, n));
            }
            let sum = e.spool.fsync_sum_us.load(Relaxed) as f64 / 1e6;
            let labels = [("executor", i.to_string())];
            d.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        {
            let mut d = enc.encode_descriptor(
                "ingestd_http_requests",
                "HTTP responses by status code and executor",
                None,
                MetricType::Counter,
            )?;
            for (i, e) in m.execs.iter().enumerate() {
                for (c, code) in CODES.iter().enumerate() {
                    let n = e.requests[c].load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let code = if *code == 0 {
                        "other".to_string()
                    } else {
                        code.to_string()
                    };
                    let labels = [("code", code), ("executor", i.to_string())];
                    ConstCounter::new(n).encode(d.encode_family(&labels)?)?;
                }
            }
        }
        self.per_exec(
            &mut enc,
            "ingestd_records_enqueued",
            "Records accepted into an executor queue",
            MetricType::Counter,
            |e| e.records_enqueued.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_records_unconfirmed",
            "Records of ack=kafka requests answered 504 before Kafka's ack; still delivered",
            MetricType::Counter,
            |e| e.records_unconfirmed.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_queue_bytes",
            "Bytes of records queued or in flight to Kafka",
            MetricType::Gauge,
            |e| e.queue_bytes.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_queue_records",
            "Records queued or in flight to Kafka",
            MetricType::Gauge,
            |e| e.queue_records.load(Relaxed),
        )?;
        for (i, (name, help)) in [
            (
                "ingestd_queue_limit_bytes",
                "queue_max_bytes: the most ingestd_queue_bytes of one executor",
            ),
            (
                "ingestd_queue_limit_records",
                "queue_max_records: the most ingestd_queue_records of one executor",
            ),
            (
                "ingestd_memory_limit_bytes",
                "memory_max_bytes: the most ingestd_memory_bytes of one executor",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let v = m.queue_limits[i].load(Relaxed) as i64;
            ConstGauge::new(v).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        self.per_exec(
            &mut enc,
            "ingestd_memory_bytes",
            "Queued record bytes plus request buffers above 4 KiB per connection (memory_max_bytes budget)",
            MetricType::Gauge,
            |e| e.memory_bytes.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_connections",
            "Open client connections",
            MetricType::Gauge,
            |e| e.connections.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_connections_refused",
            "Connections closed at once (max_connections)",
            MetricType::Counter,
            |e| e.connections_refused.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_accept_errors",
            "accept() failures, e.g. at the fd limit",
            MetricType::Counter,
            |e| e.accept_errors.load(Relaxed),
        )?;
        self.per_exec(
            &mut enc,
            "ingestd_tls_handshake_failures",
            "TLS connections closed before their handshake completed",
            MetricType::Counter,
            |e| e.tls_handshake_failures.load(Relaxed),
        )?;
        {
            let mut d = enc.encode_descriptor(
                "ingestd_request_duration_seconds",
                "Time from complete request head to response",
                None,
                MetricType::Histogram,
            )?;
            for (i, e) in m.execs.iter().enumerate() {
                // The encoder takes per-bucket counts and makes them cumulative itself.
                let mut count = 0;
                let mut buckets = Vec::with_capacity(LATENCY_US.len() + 1);
                for (b, bound) in LATENCY_US.iter().chain([&u64::MAX]).enumerate() {
                    let n = e.latency[b].load(Relaxed);
                    count += n;
                    let le = if *bound == u64::MAX {
                        f64::MAX
                    } else {
                        *bound as f64 / 1e6
                    };
                    buckets.push((le, n));
                }
                let sum = e.latency_sum_us.load(Relaxed) as f64 / 1e6;
                let labels = [("executor", i.to_string())];
                d.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        if m.spooled.load(Relaxed) {
            self.spool(&mut enc)?;
        }
        if let Some(edge) = m.edge.get() {
            crate::auth::metrics::encode(edge, &mut enc)?;
        }
        let k = &m.kafka;
        ConstCounter::new(k.delivered.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_records_delivered",
            "Records acknowledged by Kafka",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(k.retried.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_records_retried",
            "Records produced again after a passing failure (timeout, outage, producer rebuild)",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut d = enc.encode_descriptor(
                "ingestd_records_failed",
                "Records Kafka rejected for good (or left at the shutdown deadline), by reason",
                None,
                MetricType::Counter,
            )?;
            for r in FailReason::ALL {
                let labels = [("reason", r.label().to_string())];
                ConstCounter::new(k.failed[r as usize].load(Relaxed))
                    .encode(d.encode_family(&labels)?)?;
            }
        }
        ConstCounter::new(k.batches.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_kafka_batches",
            "Record batches taken from executors by the Kafka thread",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(k.queue_full_waits.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_kafka_queue_full_waits",
            "Times librdkafka's queue was full and the Kafka thread waited",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(k.producer_rebuilds.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_kafka_producer_rebuilds",
            "Times the producer was rebuilt after a fatal error or a stuck broker session",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(k.dead_letters.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_spool_dead_letters",
            "Spooled records Kafka rejected for good, written to the dead-letter file",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(m.tls_reloads.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_tls_reloads",
            "Times the TLS certificate, key and client CA were loaded again (SIGHUP or a file change)",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(m.tls_reload_failures.load(Relaxed)).encode(enc.encode_descriptor(
            "ingestd_tls_reload_failures",
            "TLS reloads that failed; the certificate already in use is kept",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(m.broker_ready.load(Relaxed) as i64).encode(enc.encode_descriptor(
            "ingestd_broker_up",
            "1 while broker metadata is known",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_every_spool_s_first_segment_file() {
        let m = Metrics::new(2);
        m.listening.store(true, Relaxed);
        m.spooled.store(true, Relaxed);
        assert!(m.ready());
        m.execs[1].spool.preparing_first.store(1, Relaxed);
        assert!(
            !m.ready(),
            "ready while executor 1 prepares its first segment"
        );
        m.execs[1].spool.preparing_first.store(0, Relaxed);
        assert!(m.ready());
        m.draining.store(true, Relaxed);
        assert!(!m.ready());
    }
}
