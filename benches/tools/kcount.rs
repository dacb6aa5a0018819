//! Counts the records in a topic, independently of ingestd's own counters.
//!
//!   cargo run --release --example kcount -- BROKERS TOPIC [IDLE_MS] [--print]
//!
//! Assigns every partition from the beginning (no consumer group: tansu 0.6.0 cannot serve
//! a fetch that starts mid-batch) and reads until no record has arrived for IDLE_MS
//! (default 3000). It does not stop at the high watermark: tansu reports stale ones.
//! Prints one JSON line: {"topic":..,"records":N,"partitions":[n0,n1,..],"bytes":B}.
//! With `--print`, first one line per record: `partition offset key value` (key `-` when
//! there is none; bytes that are not UTF-8 are shown as U+FFFD).

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let print = args.iter().any(|a| a == "--print");
    args.retain(|a| a != "--print");
    if args.len() < 2 {
        eprintln!("usage: kcount BROKERS TOPIC [IDLE_MS] [--print]");
        std::process::exit(2);
    }
    let (brokers, topic) = (&args[0], &args[1]);
    let idle = Duration::from_millis(args.get(2).map_or(3000, |s| s.parse().expect("IDLE_MS")));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Required by librdkafka even without subscribe(); nothing is committed.
        .set("group.id", "ingestd-kcount")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .expect("consumer");

    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        eprintln!("kcount: topic {topic} has no partitions");
        std::process::exit(1);
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");

    let mut per = vec![0u64; parts.iter().max().map_or(0, |&m| m as usize + 1)];
    let mut bytes = 0u64;
    let mut last = Instant::now();
    while last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                per[m.partition() as usize] += 1;
                if print {
                    let key = m.key().map(String::from_utf8_lossy);
                    let value = m.payload().map(String::from_utf8_lossy);
                    println!(
                        "{} {} {} {}",
                        m.partition(),
                        m.offset(),
                        key.as_deref().unwrap_or("-"),
                        value.as_deref().unwrap_or("")
                    );
                }
                bytes += m.payload_len() as u64;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => eprintln!("kcount: {e}"),
        }
    }
    let total: u64 = per.iter().sum();
    let list: Vec<String> = per.iter().map(u64::to_string).collect();
    println!(
        "{{\"topic\":\"{topic}\",\"records\":{total},\"partitions\":[{}],\"bytes\":{bytes}}}",
        list.join(",")
    );
}
