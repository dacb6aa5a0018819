//! The edge's metrics: per tenant (label cardinality = the configured tenants), the 401s
//! by reason, policy reloads, and the per-address table's occupancy.

use super::{Edge, REFUSED_LABELS};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering::Relaxed;

pub fn encode(edge: &Edge, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    let policy = edge.policies.current();
    let counter = MetricType::Counter;
    if !policy.tenants.is_empty() {
        type Field = fn(&super::TenantCounters) -> &std::sync::atomic::AtomicU64;
        let per_tenant: [(&str, &str, Field); 2] = [
            (
                "ingestd_tenant_requests",
                "Produce requests admitted, by tenant",
                |c| &c.requests,
            ),
            (
                "ingestd_tenant_bytes",
                "Request body bytes admitted, by tenant",
                |c| &c.bytes,
            ),
        ];
        for (name, help, f) in per_tenant {
            let mut d = enc.encode_descriptor(name, help, None, counter)?;
            for t in &policy.tenants {
                let labels = [("tenant", t.name.to_string())];
                ConstCounter::new(t.stats.sum(f)).encode(d.encode_family(&labels)?)?;
            }
        }
        let mut d = enc.encode_descriptor(
            "ingestd_tenant_refused",
            "Requests of a tenant refused: 403 (topic or contract outside its scope), 413 (its max_body_bytes), 429 (a budget)",
            None,
            counter,
        )?;
        for t in &policy.tenants {
            for (code, n) in [
                ("403", t.stats.sum(|c| &c.forbidden)),
                ("413", t.stats.sum(|c| &c.too_large)),
                ("429", t.stats.sum(|c| &c.limited)),
            ] {
                let labels = [("tenant", t.name.to_string()), ("code", code.to_string())];
                ConstCounter::new(n).encode(d.encode_family(&labels)?)?;
            }
        }
    }
    {
        let mut d = enc.encode_descriptor(
            "ingestd_auth_refused",
            "Requests answered 401, by reason",
            None,
            counter,
        )?;
        for (i, label) in REFUSED_LABELS.iter().enumerate() {
            let labels = [("reason", label.to_string())];
            ConstCounter::new(edge.refused[i].load(Relaxed)).encode(d.encode_family(&labels)?)?;
        }
    }
    {
        let mut d = enc.encode_descriptor(
            "ingestd_proxy_refused",
            "Connections closed for a missing or malformed PROXY protocol header (proxy_protocol = true), by reason",
            None,
            counter,
        )?;
        for (i, label) in super::PROXY_LABELS.iter().enumerate() {
            let labels = [("reason", label.to_string())];
            ConstCounter::new(edge.proxy_refused[i].load(Relaxed))
                .encode(d.encode_family(&labels)?)?;
        }
    }
    let p = &edge.policies;
    ConstCounter::new(p.reloads.load(Relaxed)).encode(enc.encode_descriptor(
        "ingestd_auth_reloads",
        "Tenants, tokens and JWT keys loaded again (SIGHUP)",
        None,
        counter,
    )?)?;
    ConstCounter::new(p.reload_failures.load(Relaxed)).encode(enc.encode_descriptor(
        "ingestd_auth_reload_failures",
        "Reloads refused because the configuration was invalid (the policy in force stayed)",
        None,
        counter,
    )?)?;
    crate::schema::metrics::encode(&policy.schemas, p.schema_reload_failures.load(Relaxed), enc)?;
    if let Some(a) = &edge.addrs {
        ConstGauge::new(a.in_use(super::budget::now_ns()) as i64).encode(
            enc.encode_descriptor(
                "ingestd_address_table_entries",
                "Client addresses the per-address table tracks now",
                None,
                MetricType::Gauge,
            )?,
        )?;
        ConstGauge::new(a.capacity() as i64).encode(enc.encode_descriptor(
            "ingestd_address_table_capacity",
            "Slots of the per-address table (its memory bound)",
            None,
            MetricType::Gauge,
        )?)?;
    }
    Ok(())
}
