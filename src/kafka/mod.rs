//! The one Kafka thread and what it talks through: `lane` (batches from and results to
//! each executor, and the thread's wake-up), `thread` (the producer loop, delivery
//! reports, retries, shutdown phases), `wake` (librdkafka's queue callback), `probe`
//! (broker metadata: readiness, known topics), `topics` (topic names and the topics
//! Kafka has) and `deadletter` (spooled records Kafka rejected for good).

pub mod deadletter;
pub mod flight;
pub mod lane;
pub mod probe;
pub mod thread;
pub mod topics;
pub mod wake;

pub use probe::probe_metadata;
pub use thread::{create_producer, KafkaProducer, KafkaShared, KafkaThread};
