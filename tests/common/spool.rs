//! Helpers of the spool tests (tests/spool.rs, tests/spool_faults.rs, tests/powerloss.rs):
//! load with unique values, the check that every answered record is in Kafka with its
//! `ingestd-id`, and starting ingestd on a spool directory.

use super::http::{post, Client};
use super::{wait_until, Ingestd, Rec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn spool_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ingestd-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// What the load saw: value -> (status, id from a 201's body).
pub type Seen = BTreeMap<String, (u16, Option<String>)>;

/// Load from `conns` keep-alive connections with unique values (`tag` prefixes them) until
/// `stop` or the server goes away; connection `w` uses `acks[w % acks.len()]`.
pub fn load(
    addr: SocketAddr,
    tag: String,
    conns: usize,
    acks: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    padded_load(addr, tag, conns, acks, stop, 0)
}

/// `load` with values padded to at least `pad` bytes.
pub fn padded_load(
    addr: SocketAddr,
    tag: String,
    conns: usize,
    acks: &'static [&'static str],
    stop: Arc<AtomicBool>,
    pad: usize,
) -> std::thread::JoinHandle<Seen> {
    let pad = "_".repeat(pad);
    std::thread::spawn(move || {
        let workers: Vec<_> = (0..conns)
            .map(|w| {
                let (stop, tag, pad) = (stop.clone(), tag.clone(), pad.clone());
                std::thread::spawn(move || {
                    let mut seen = Seen::new();
                    let ack = acks[w % acks.len()];
                    let mut i = 0;
                    'outer: while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = Client::connect(addr) else {
                            // The server is gone (killed): this round's load is over.
                            return seen;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            let v = format!("{tag}-w{w}-{i}{pad}");
                            i += 1;
                            let req = post("/", v.as_bytes(), &[("Kafka-Ack", ack)]);
                            // Sent, answer unknown (0) until one arrives.
                            seen.insert(v.clone(), (0, None));
                            match c.request(&req) {
                                Ok(r) => {
                                    let id = (r.status == 201).then(|| {
                                        let t = r.text();
                                        t.split('"').nth(3).unwrap_or_default().to_string()
                                    });
                                    seen.insert(v, (r.status, id));
                                }
                                Err(_) => continue 'outer,
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut all = Seen::new();
        for w in workers {
            all.extend(w.join().unwrap());
        }
        all
    })
}

pub fn id_of(r: &Rec) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| k == "ingestd-id")
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

/// Checks every answered record is in `recs` (values answered `codes`); returns the
/// number of duplicate copies found.
pub fn check_answered(seen: &Seen, codes: &[u16], recs: &[Rec]) -> usize {
    let mut by_value: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for r in recs {
        by_value
            .entry(String::from_utf8(r.value.clone()).unwrap())
            .or_default()
            .push(id_of(r));
    }
    let mut missing = Vec::new();
    for (v, (status, id)) in seen {
        if !codes.contains(status) {
            continue;
        }
        match by_value.get(v) {
            None => missing.push(v.clone()),
            Some(ids) => {
                assert!(ids.iter().all(Option::is_some), "{v}: no ingestd-id header");
                if let Some(id) = id {
                    assert!(
                        ids.iter().all(|i| i.as_deref() == Some(id)),
                        "{v}: answered id {id}, found {ids:?}"
                    );
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} answered {codes:?} but not in Kafka, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let phantom: Vec<_> = by_value
        .keys()
        .filter(|v| !seen.contains_key(*v))
        .take(5)
        .collect();
    assert!(phantom.is_empty(), "records nobody sent: {phantom:?}");
    by_value.values().map(|ids| ids.len() - 1).sum()
}

pub fn start(
    broker: &str,
    topic: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Ingestd {
    let mut args = vec![
        "--brokers",
        broker,
        "--default-topic",
        topic,
        "--spool-dir",
        dir.to_str().unwrap(),
    ];
    if !extra.contains(&"--executors") {
        args.extend_from_slice(&["--executors", "2"]);
    }
    args.extend_from_slice(extra);
    Ingestd::start_env(&args, env)
}

/// Waits until the spool replayed what it found and Kafka acknowledged everything.
pub fn wait_drained(ing: &Ingestd, within: Duration) {
    wait_until("spool replayed and queue drained", within, || {
        let m = ing.metrics_text();
        super::metric_sum(&m, "ingestd_spool_replay_left_records", "") == 0.0
            && super::metric_sum(&m, "ingestd_queue_records", "") == 0.0
    });
}

/// A tiny deterministic generator for the kill moments (seed printed on failure).
pub fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}
