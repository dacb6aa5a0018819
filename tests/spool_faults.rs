//! The spool's promise under faults a SIGKILL test cannot show, driven through the
//! binary's fault-injection hooks (`src/faults.rs`, test build only) against a real tansu
//! broker: a restart with fewer executors, a failed write, a failed sync, start-up reads
//! that fail or come up short, a clock stepped back. Each time: every record answered
//! 201 is in Kafka afterwards, with the id its answer gave.

mod common;

use common::http::{post, Client};
use common::spool::*;
use common::{read_topic, start_broker, wait_until, Broker, Ingestd};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `.seg` files in `executor-N` of the spool.
fn seg_files(dir: &Path, n: usize) -> Vec<String> {
    std::fs::read_dir(dir.join(format!("executor-{n}")))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg"))
                .collect()
        })
        .unwrap_or_default()
}

/// 201s from `conns` connections with the broker stopped, until `want` arrived; then
/// SIGKILL. Returns what the load saw, and the log.
fn durable_then_kill(ing: Ingestd, tag: &str, conns: usize, want: f64) -> (Seen, String) {
    let stop = Arc::new(AtomicBool::new(false));
    let h = load(ing.addr, tag.into(), conns, &["durable"], stop.clone());
    wait_until(
        "201s with the broker stopped",
        Duration::from_secs(60),
        || ing.metric("ingestd_http_requests_total", "code=\"201\"") >= want,
    );
    ing.signal(libc::SIGKILL);
    let seen = h.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let log = ing.log_text();
    drop(ing);
    (seen, log)
}

/// Restarts on the spool with the broker back, waits until it replayed and drained, and
/// checks every 201 is in Kafka; returns the restarted ingestd.
fn restart_and_check(
    b: &Broker,
    topic: &str,
    partitions: i32,
    dir: &Path,
    extra: &[&str],
    seen: &Seen,
) -> Ingestd {
    b.signal(libc::SIGCONT);
    let ing = start(&b.addr, topic, dir, extra, &[]);
    wait_drained(&ing, Duration::from_secs(120));
    let n201 = seen.values().filter(|(s, _)| *s == 201).count();
    let recs = read_topic(&b.addr, topic, partitions, n201, Duration::from_secs(3));
    let dups = check_answered(seen, &[201], &recs);
    eprintln!(
        "{topic}: {n201} answered 201, all in Kafka ({} read, {dups} duplicates)",
        recs.len()
    );
    ing
}

fn count(seen: &Seen, code: u16) -> usize {
    seen.values().filter(|(s, _)| *s == code).count()
}

#[test]
fn a_restart_with_fewer_executors_replays_every_executor_directory() {
    let b = start_broker();
    b.create_topic("fewer", 2);
    let dir = spool_dir("fewer");
    let ing = start(&b.addr, "fewer", &dir, &["--executors", "2"], &[]);
    b.signal(libc::SIGSTOP);
    // 16 connections: SO_REUSEPORT spreads them over both executors.
    let (seen, _) = durable_then_kill(ing, "x", 16, 2000.0);
    assert!(
        !seg_files(&dir, 1).is_empty(),
        "executor 1 wrote nothing: the test needs records in both directories"
    );
    let ids: BTreeSet<String> = seen
        .values()
        .filter_map(|(_, id)| id.as_ref()?.split('-').next().map(String::from))
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["0".into(), "1".into()]),
        "ids of both executors"
    );
    // The host came back with one CPU (or `executors` was lowered).
    let mut ing = restart_and_check(&b, "fewer", 2, &dir, &["--executors", "1"], &seen);
    assert!(
        ing.log_text().contains("an executor that no longer runs"),
        "{}",
        ing.log_text()
    );
    // Fully acknowledged: executor 1's segments and spare are gone; its directory keeps
    // the id lease (ids stay unique if it runs again).
    wait_until("executor-1 emptied", Duration::from_secs(30), || {
        seg_files(&dir, 1).is_empty() && !dir.join("executor-1/spare").exists()
    });
    assert!(dir.join("executor-1/next-id").exists());
    assert!(ing.stop(Duration::from_secs(30)).success());
    // Two executors again: nothing left to replay, and executor 1 works.
    let ing = start(&b.addr, "fewer", &dir, &["--executors", "2"], &[]);
    assert_eq!(ing.metric("ingestd_spool_records_replayed_total", ""), 0.0);
    let mut c = Client::connect(ing.addr).unwrap();
    let r = c
        .request(&post("/", b"again", &[("Kafka-Ack", "durable")]))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    drop(ing);
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `fault` (a spool write or sync failing with EIO) under ack=durable load with the
/// broker stopped: its requests get 507, later ones 201 in a new segment; SIGKILL, then
/// every 201 must be in Kafka after a restart, and the segment it happened in is not
/// taken for damage.
fn fault_ends_its_segment(topic: &str, fault: &str) {
    common::require_fault_injection();
    let b = start_broker();
    b.create_topic(topic, 1);
    let dir = spool_dir(topic);
    let env = [("INGESTD_TEST_FAULTS", fault)];
    let ing = start(&b.addr, topic, &dir, &["--executors", "1"], &env);
    b.signal(libc::SIGSTOP);
    let (seen, text) = durable_then_kill(ing, topic, 8, 1500.0);
    assert!(count(&seen, 507) > 0, "{fault}: answered no 507");
    let statuses: BTreeSet<u16> = seen.values().map(|(s, _)| *s).collect();
    assert!(
        statuses.iter().all(|s| [0, 201, 507].contains(s)),
        "{statuses:?}"
    );
    let segs = seg_files(&dir, 0).len();
    // First the promise, then how it is kept.
    let ing = restart_and_check(&b, topic, 1, &dir, &["--executors", "1"], &seen);
    assert!(
        text.contains("no more writes to a segment after an I/O error"),
        "{text}"
    );
    assert!(segs >= 2, "{fault}: no new segment after the failure");
    assert_eq!(
        ing.metric("ingestd_spool_quarantined_segments_total", ""),
        0.0,
        "{fault}: an I/O error must not look like damage"
    );
    drop(ing);
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_write_ends_its_segment_and_no_later_201_is_lost() {
    // The 30th commit batch's write fails. Before segments were sealed on errors, the
    // next batch went to the same offset with a gap in its sequence: the restart's scan
    // stopped there and every 201 after it was lost (1,474 in one run).
    fault_ends_its_segment("wfail", "spool_write:EIO:30");
}

#[test]
fn a_failed_sync_answers_507_and_ends_its_segment() {
    // The 30th fdatasync fails (its data still in the page cache here: the power-loss
    // half of this is tests/powerloss.rs, a_failed_sync_then_a_power_cut_loses_no_201).
    fault_ends_its_segment("sfail", "spool_sync:EIO:30");
}

#[test]
fn start_up_read_errors_are_retried_and_never_quarantine_a_segment() {
    common::require_fault_injection();
    // Out of fds at the first open, out of memory at the first read, a passing EIO on
    // the next two reads, then a short read: each is retried, none loses a 201.
    let faults = "scan_open:EMFILE:1,scan_read:ENOMEM:1,scan_read:EIO:2:2,scan_short:EIO:4";
    let b = start_broker();
    b.create_topic("rfail", 1);
    let dir = spool_dir("rfail");
    let ing = start(&b.addr, "rfail", &dir, &["--executors", "1"], &[]);
    b.signal(libc::SIGSTOP);
    let (seen, _) = durable_then_kill(ing, "r", 8, 1500.0);
    b.signal(libc::SIGCONT);
    let ing = start(
        &b.addr,
        "rfail",
        &dir,
        &["--executors", "1"],
        &[("INGESTD_TEST_FAULTS", faults)],
    );
    wait_drained(&ing, Duration::from_secs(120));
    let n201 = count(&seen, 201);
    let recs = read_topic(&b.addr, "rfail", 1, n201, Duration::from_secs(3));
    check_answered(&seen, &[201], &recs);
    let log = ing.log_text();
    for want in ["ScanOpen", "ScanRead", "ScanShort"] {
        assert!(
            log.contains(&format!("point={want}")),
            "fault {want} did not fire: {log}"
        );
    }
    assert_eq!(
        ing.metric("ingestd_spool_quarantined_segments_total", ""),
        0.0,
        "{log}"
    );
    eprintln!("read faults at start: {n201} answered 201, all in Kafka");
    drop(ing);
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sequence numbers of `n` 201 answers (`"id":"E-SEQ"`), one request at a time.
fn durable_ids(ing: &Ingestd, tag: &str, n: usize) -> Vec<u64> {
    let mut c = Client::connect(ing.addr).unwrap();
    (0..n)
        .map(|i| {
            let r = c
                .request(&post(
                    "/",
                    format!("{tag}{i}").as_bytes(),
                    &[("Kafka-Ack", "durable")],
                ))
                .unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
            let t = r.text();
            let id = t.split('"').nth(3).unwrap().to_string();
            id.rsplit('-').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn record_ids_stay_unique_when_the_clock_steps_back() {
    common::require_fault_injection();
    let b = common::broker();
    let topic = b.topic("clock", 1);
    let dir = spool_dir("clock");
    let mut ing = start(&b.addr, &topic, &dir, &["--executors", "1"], &[]);
    let first = durable_ids(&ing, "a", 50);
    // A clean stop: Kafka has everything, every segment is trimmed.
    assert!(ing.stop(Duration::from_secs(30)).success());
    assert!(seg_files(&dir, 0).is_empty());
    // The clock went back a day (NTP step, a VM restored from a snapshot).
    let env = [("INGESTD_TEST_CLOCK_SHIFT_S", "-86400")];
    let ing = start(&b.addr, &topic, &dir, &["--executors", "1"], &env);
    let second = durable_ids(&ing, "b", 50);
    let top = *first.iter().max().unwrap();
    assert!(
        second.iter().all(|&s| s > top),
        "ids repeat after the clock stepped back: first run up to {top}, second from {}",
        second.iter().min().unwrap()
    );
    drop(ing);
    let _ = std::fs::remove_dir_all(&dir);
}
