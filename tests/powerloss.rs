//! Power loss, modelled: the spool lives on powerfs (tests/powerfs), a FUSE file system
//! that keeps every write in memory until `fsync`/`fdatasync` and every directory entry
//! until the directory is synced, and drops the rest on command. The cut is what a real
//! power cut does to a running process: stop it (SIGSTOP), drop everything unsynced
//! (optionally keeping some of it, torn), kill it; its in-flight I/O never lands. Then a
//! restart on what survived, with the broker back: every record answered 201 must be in
//! Kafka (202s and unanswered requests may be lost; nobody promised them a sync).
//!
//! Needs FUSE (`/dev/fuse`, Debian's `fuse3`; tests/deps.sh installs it) and root.

mod common;
mod powerfs;

use common::http::{post, Client};
use common::spool::*;
use common::{read_topic, start_broker, wait_until, Broker, Ingestd};
use powerfs::{Cut, Op, PowerFs, Trigger};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Small segments, so that rolls happen under load (a segment must hold 4 of the largest
/// requests: hence the smaller body limit).
const ENV: [(&str, &str); 3] = [
    ("INGESTD_SPOOL_SEGMENT_BYTES", "1048576"),
    ("INGESTD_SPOOL_MAX_BYTES", "67108864"),
    ("INGESTD_MAX_BODY_BYTES", "65536"),
];

/// The spool directory on `fs`: not created here, so that ingestd's own creation of it
/// (and of `executor-N`) must be durable too.
fn spool_on(fs: &PowerFs) -> PathBuf {
    fs.path().join("spool")
}

fn start_on(b: &Broker, topic: &str, dir: &Path, executors: &str) -> Ingestd {
    start(&b.addr, topic, dir, &["--executors", executors], &ENV)
}

/// The power cut, now: stop, drop what is unsynced (`mode`), kill.
fn cut_now(fs: &PowerFs, mut ing: Ingestd, mode: Cut) {
    let pid = ing.child.id();
    ing.signal(libc::SIGSTOP);
    fs.cut(pid, mode);
    ing.signal(libc::SIGKILL);
    ing.wait_exit(Duration::from_secs(30));
}

/// A cut a trigger made (the process is stopped and cut already): kill it.
fn kill_after_trigger(fs: &PowerFs, mut ing: Ingestd, what: &str) {
    let pid = fs
        .wait_fired(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{what}: the trigger never fired; {:?}", fs.stats()));
    assert_eq!(
        pid,
        ing.child.id(),
        "{what}: the trigger stopped another process"
    );
    ing.signal(libc::SIGKILL);
    ing.wait_exit(Duration::from_secs(30));
}

/// Load of unique 1 KiB values from 8 connections, half ack=durable, half ack=queued.
fn mixed_load(ing: &Ingestd, tag: &str) -> (Arc<AtomicBool>, std::thread::JoinHandle<Seen>) {
    let stop = Arc::new(AtomicBool::new(false));
    let h = padded_load(
        ing.addr,
        tag.into(),
        8,
        &["durable", "queued"],
        stop.clone(),
        1000,
    );
    (stop, h)
}

fn n(seen: &Seen, code: u16) -> usize {
    seen.values().filter(|(s, _)| *s == code).count()
}

/// Restarts on what survived, the broker back, and checks every 201 of `seen` is in
/// Kafka; returns the number of records read.
fn restart_and_check(b: &Broker, topic: &str, dir: &Path, seen: &Seen, what: &str) -> usize {
    b.signal(libc::SIGCONT);
    let ing = start_on(b, topic, dir, "2");
    wait_drained(&ing, Duration::from_secs(120));
    let recs = read_topic(&b.addr, topic, 2, n(seen, 201), Duration::from_secs(3));
    let dups = check_answered(seen, &[201], &recs);
    eprintln!(
        "{what}: {} answered 201 (and {} 202) before the cut, every 201 in Kafka; {} read, {dups} duplicates, replayed {}",
        n(seen, 201),
        n(seen, 202),
        recs.len(),
        ing.metric("ingestd_spool_records_replayed_total", "")
    );
    recs.len()
}

#[test]
fn every_201_survives_a_power_cut_under_load() {
    let b = start_broker();
    for (i, mode) in [
        Cut::DropAll,
        Cut::Torn { seed: 7 },
        Cut::TornPrefix { seed: 11 },
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("cut{i}");
        b.create_topic(&topic, 2);
        let fs = PowerFs::mount_temp();
        let dir = spool_on(&fs);
        let ing = start_on(&b, &topic, &dir, "2");
        // The broker away: every record lives only in the spool.
        b.signal(libc::SIGSTOP);
        let (stop, h) = mixed_load(&ing, &format!("m{i}"));
        // Enough 1 KiB records for rolls of the 1 MiB segments.
        wait_until("2,000 answers 201", Duration::from_secs(120), || {
            ing.metric("ingestd_http_requests_total", "code=\"201\"") >= 2000.0
        });
        cut_now(&fs, ing, mode);
        stop.store(true, Ordering::Relaxed);
        let seen = h.join().unwrap();
        eprintln!("{mode:?}: {:?}", fs.stats());
        restart_and_check(&b, &topic, &dir, &seen, &format!("{mode:?}"));
    }
    b.signal(libc::SIGTERM);
}

#[test]
fn a_power_cut_during_a_segment_roll_loses_no_201() {
    let b = start_broker();
    // Under load (the first segment's start is behind), the next segment installed, and
    // the next directory sync (a roll's, after its rename): cut as the request arrives,
    // before it is applied.
    for (i, op, nth, suffix) in [(0, Op::Rename, 1, Some(".seg")), (1, Op::FsyncDir, 1, None)] {
        let topic = format!("roll{i}");
        b.create_topic(&topic, 2);
        let fs = PowerFs::mount_temp();
        let dir = spool_on(&fs);
        let ing = start_on(&b, &topic, &dir, "1");
        b.signal(libc::SIGSTOP);
        let (stop, h) = mixed_load(&ing, &format!("r{i}"));
        wait_until("200 answers 201", Duration::from_secs(60), || {
            ing.metric("ingestd_http_requests_total", "code=\"201\"") >= 200.0
        });
        fs.arm(Trigger {
            op,
            nth,
            name_suffix: suffix.map(String::from),
            mode: Cut::Torn { seed: 3 + i },
        });
        kill_after_trigger(&fs, ing, &format!("{op:?} #{nth}"));
        stop.store(true, Ordering::Relaxed);
        let seen = h.join().unwrap();
        assert!(n(&seen, 201) > 0, "{op:?}: no 201 before the cut");
        eprintln!("cut at {op:?} #{nth}: {:?}", fs.stats());
        restart_and_check(&b, &topic, &dir, &seen, &format!("cut at {op:?} #{nth}"));
    }
    b.signal(libc::SIGTERM);
}

#[test]
fn a_power_cut_during_replay_loses_no_201() {
    let b = start_broker();
    b.create_topic("replay", 2);
    let fs = PowerFs::mount_temp();
    let dir = spool_on(&fs);
    let ing = start_on(&b, "replay", &dir, "1");
    b.signal(libc::SIGSTOP);
    let (stop, h) = mixed_load(&ing, "p");
    wait_until("3,000 answers 201", Duration::from_secs(120), || {
        ing.metric("ingestd_http_requests_total", "code=\"201\"") >= 3000.0
    });
    cut_now(&fs, ing, Cut::DropAll);
    stop.store(true, Ordering::Relaxed);
    let seen = h.join().unwrap();
    // Back with the broker: the replay reads the segments; cut again in the middle of it
    // (the 20th read: past the first segment's scan and hand-over, so records went to
    // Kafka and segments may have been trimmed, unsynced).
    b.signal(libc::SIGCONT);
    fs.arm(Trigger {
        op: Op::Read,
        nth: 20,
        name_suffix: Some(".seg".into()),
        mode: Cut::Torn { seed: 5 },
    });
    let ing = start_on(&b, "replay", &dir, "1");
    kill_after_trigger(&fs, ing, "replay read #20");
    eprintln!("cut during replay: {:?}", fs.stats());
    restart_and_check(&b, "replay", &dir, &seen, "cut during replay");
    b.signal(libc::SIGTERM);
}

#[test]
fn a_dead_letter_survives_a_power_cut() {
    // A record Kafka rejects for good goes to dead-letters.ndjson, and its segment is
    // trimmed: from then on the file is its only copy, so the file's name must be as
    // durable as its lines.
    let b = common::broker();
    let topic = b.topic("powerdead", 1);
    let fs = PowerFs::mount_temp();
    let dir = spool_on(&fs);
    let ing = start_on(b, &topic, &dir, "1");
    let mut c = Client::connect(ing.addr).unwrap();
    let r = c
        .request(&post(
            &format!("/topics/{topic}"),
            b"no-such-partition",
            &[("Kafka-Partition", "7")],
        ))
        .unwrap();
    assert_eq!(r.status, 202);
    wait_until("dead-lettered", Duration::from_secs(20), || {
        ing.metric("ingestd_spool_dead_letters_total", "") == 1.0
    });
    // Rolls a second apart (while Kafka keeps up) trim the segment that held it and
    // install the recycled file under a new name, syncing the directory: the record is
    // durably gone from the segments.
    let syncs = fs.stats().fsyncdirs;
    let mut i = 0;
    wait_until(
        "three more directory syncs",
        Duration::from_secs(30),
        || {
            i += 1;
            let r = c
                .request(&post(
                    &format!("/topics/{topic}"),
                    format!("later{i}").as_bytes(),
                    &[],
                ))
                .unwrap();
            assert_eq!(r.status, 202);
            std::thread::sleep(Duration::from_millis(100));
            fs.stats().fsyncdirs >= syncs + 3
        },
    );
    drop(c);
    cut_now(&fs, ing, Cut::DropAll);
    let ing = start_on(b, &topic, &dir, "1");
    wait_drained(&ing, Duration::from_secs(60));
    let text = std::fs::read_to_string(dir.join("dead-letters.ndjson")).unwrap_or_default();
    assert!(
        text.contains(r#""value":"no-such-partition""#),
        "the dead letter did not survive the cut: {text:?}"
    );
}

#[test]
fn a_failed_sync_then_a_power_cut_loses_no_201() {
    // A writeback error: one fdatasync of a segment fails and the kernel drops the data it
    // should have written (marked clean, never retried). Kept appending to that file, the
    // later syncs succeed over the hole, and after the cut the scan met the hole before
    // the later batches (their 201s were lost, before segments were sealed on errors).
    let b = start_broker();
    b.create_topic("syncfail", 2);
    let fs = PowerFs::mount_temp();
    let dir = spool_on(&fs);
    let ing = start_on(&b, "syncfail", &dir, "1");
    b.signal(libc::SIGSTOP);
    let (stop, h) = mixed_load(&ing, "f");
    wait_until("200 answers 201", Duration::from_secs(60), || {
        ing.metric("ingestd_http_requests_total", "code=\"201\"") >= 200.0
    });
    fs.fail_fsync(1, Some(".seg"));
    wait_until("the sync failed", Duration::from_secs(60), || {
        fs.stats().sync_failures == 1
    });
    let before = ing.metric("ingestd_http_requests_total", "code=\"201\"");
    wait_until("500 more answers 201", Duration::from_secs(60), || {
        ing.metric("ingestd_http_requests_total", "code=\"201\"") >= before + 500.0
    });
    cut_now(&fs, ing, Cut::DropAll);
    stop.store(true, Ordering::Relaxed);
    let seen = h.join().unwrap();
    assert!(n(&seen, 507) > 0, "the failed sync answered no 507");
    eprintln!("failed sync, then cut: {:?}", fs.stats());
    restart_and_check(&b, "syncfail", &dir, &seen, "failed sync, then cut");
    b.signal(libc::SIGTERM);
}
