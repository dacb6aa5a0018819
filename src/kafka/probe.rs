//! The metadata probe: its own thread and client, asking the broker for metadata every
//! second. Says whether the broker answers (/readyz, READY=1) and which topics exist
//! (`KnownTopics`: unknown topics are answered 404 at once).

use super::thread::KafkaProducer;
use crate::metrics::Metrics;
use rdkafka::producer::Producer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Probes broker metadata every second so /readyz (and READY=1) reflect whether the
/// broker answers, and publishes the topics it lists (unknown topics get 404 at once).
/// Runs on its own thread: a metadata request may block for seconds.
pub fn probe_metadata(producer: KafkaProducer, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    let mut was_ready = false;
    while !stop.load(Ordering::Acquire) {
        let res = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2));
        let ready = match &res {
            Ok(md) => !md.brokers().is_empty(),
            Err(_) => false,
        };
        if let (true, Ok(md)) = (ready, &res) {
            // A topic with a passing error (no leader yet) exists all the same.
            let unknown = rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            let names = md.topics().iter().filter(|t| t.error() != Some(unknown));
            // Cached by librdkafka from the metadata answer just received: no request.
            let cluster = producer
                .client()
                .fetch_cluster_id(Duration::from_millis(100));
            metrics.topics.publish(
                names.map(|t| t.name().as_bytes().into()).collect(),
                cluster.as_deref(),
            );
        }
        metrics.broker_ready.store(ready, Ordering::Release);
        if ready != was_ready {
            match res {
                Ok(md) => info!(brokers = md.brokers().len(), "kafka metadata available"),
                Err(e) => warn!(error = %e, "kafka metadata unavailable"),
            }
            was_ready = ready;
        }
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
