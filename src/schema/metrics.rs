//! Schema metrics (label cardinality = the configured topics): records judged by
//! outcome, each schema's hash and load time, and reloads refused for a schema.

use super::{Schemas, OUTCOMES};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

pub fn encode(s: &Schemas, reload_failures: u64, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    ConstCounter::new(reload_failures).encode(enc.encode_descriptor(
        "ingestd_schema_reload_failures",
        "Reloads refused because a schema file did not load or compile (the schemas in force stayed)",
        None,
        MetricType::Counter,
    )?)?;
    if s.is_empty() {
        return Ok(());
    }
    let mut d = enc.encode_descriptor(
        "ingestd_schema_records",
        "Records of topics with a schema: valid (produced), rejected (invalid, the request refused), dead_lettered (invalid, produced to the dead-letter topic)",
        None,
        MetricType::Counter,
    )?;
    for t in &s.topics {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let labels = [
                ("topic", t.topic.to_string()),
                ("outcome", outcome.to_string()),
            ];
            ConstCounter::new(t.total(i)).encode(d.encode_family(&labels)?)?;
        }
    }
    let schemas = || {
        s.topics.iter().flat_map(|t| {
            [("value", &t.value), ("key", &t.key)]
                .into_iter()
                .filter_map(move |(part, c)| Some((t, part, c.as_ref()?)))
        })
    };
    let mut d = enc.encode_descriptor(
        "ingestd_schema_info",
        "The schema in force per topic and part (value or key): its file and the first 16 hex digits of its SHA-256",
        None,
        MetricType::Gauge,
    )?;
    for (t, part, c) in schemas() {
        let labels = [
            ("topic", t.topic.to_string()),
            ("part", part.to_string()),
            ("file", c.file.display().to_string()),
            ("sha256", c.hash.clone()),
        ];
        ConstGauge::new(1i64).encode(d.encode_family(&labels)?)?;
    }
    let mut d = enc.encode_descriptor(
        "ingestd_schema_loaded_timestamp_seconds",
        "When the schema in force was compiled (Unix time)",
        None,
        MetricType::Gauge,
    )?;
    for (t, part, c) in schemas() {
        let labels = [("topic", t.topic.to_string()), ("part", part.to_string())];
        ConstGauge::new(c.loaded_unix).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}
