//! The durable spool against a real tansu broker: SIGKILL under load and while the broker
//! is stopped, an outage longer than the in-memory queue, the quota, a corrupt segment,
//! shutdown. The invariant: every record answered 201 (synced) or 202 (written to the
//! spool) is in Kafka after a restart, with its `ingestd-id` header; duplicates from
//! replay are counted, never a loss.

mod common;

use common::http::{ack_p50, post, Client};
use common::spool::*;
use common::{read_topic, start_broker, wait_until};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn sigkill_under_load_loses_no_durable_record() {
    let b = start_broker();
    b.create_topic("kill", 2);
    let dir = spool_dir("kill");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill moments seed {seed}");
    let mut seen = Seen::new();
    for round in 0..6 {
        let ing = start(&b.addr, "kill", &dir, &[], &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let h = load(ing.addr, format!("r{round}"), 8, &["durable"], stop.clone());
        if round == 5 {
            // The last run is not killed: it replays and drains.
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::Relaxed);
            seen.extend(h.join().unwrap());
            wait_drained(&ing, Duration::from_secs(60));
            break;
        }
        // Kill at a random moment 0.2..1.5 s into the load, once some 201s came back.
        wait_until("load running", Duration::from_secs(20), || {
            ing.metric("ingestd_http_requests_total", "code=\"201\"") >= 10.0
        });
        std::thread::sleep(Duration::from_millis(200 + next(&mut seed) % 1300));
        ing.signal(libc::SIGKILL);
        let got = h.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let n201 = got.values().filter(|(s, _)| *s == 201).count();
        eprintln!("round {round}: {n201} answered 201 before SIGKILL");
        assert!(n201 > 0);
        seen.extend(got);
        drop(ing);
    }
    let durable: usize = seen.values().filter(|(s, _)| *s == 201).count();
    let recs = read_topic(&b.addr, "kill", 2, durable, Duration::from_secs(3));
    let dups = check_answered(&seen, &[201], &recs);
    let other: BTreeSet<u16> = seen.values().map(|(s, _)| *s).collect();
    eprintln!(
        "sigkill x5: {durable} answered 201, all found in Kafka; {} records read, {dups} duplicates from replay; statuses {other:?}",
        recs.len()
    );
    // 0: sent, no answer before the kill.
    assert!(other.iter().all(|s| [0, 201, 503].contains(s)), "{other:?}");
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_while_the_broker_is_stopped_then_everything_arrives() {
    // Buffered segment files (this machine's default), then Glommio DMA files.
    // The DMA run forces the DMA path through a test hook.
    common::require_fault_injection();
    for direct in [false, true] {
        broker_stopped_then_sigkill(direct);
    }
}

fn broker_stopped_then_sigkill(direct: bool) {
    let env: &[(&str, &str)] = if direct {
        &[("INGESTD_TEST_SPOOL_DIRECT", "1")]
    } else {
        &[]
    };
    let b = start_broker();
    b.create_topic("stopped", 2);
    let dir = spool_dir(if direct { "stopped-dma" } else { "stopped" });
    let ing = start(&b.addr, "stopped", &dir, &[], env);
    assert!(
        ing.log_text().contains(if direct {
            "O_DIRECT writes"
        } else {
            "buffered writes"
        }),
        "{}",
        ing.log_text()
    );
    b.signal(libc::SIGSTOP);
    let stop = Arc::new(AtomicBool::new(false));
    let h = load(
        ing.addr,
        "s".into(),
        8,
        &["durable", "queued"],
        stop.clone(),
    );
    wait_until(
        "201s and 202s with the broker stopped",
        Duration::from_secs(20),
        || {
            let m = ing.metrics_text();
            common::metric_sum(&m, "ingestd_http_requests_total", "code=\"201\"") >= 200.0
                && common::metric_sum(&m, "ingestd_http_requests_total", "code=\"202\"") >= 200.0
        },
    );
    ing.signal(libc::SIGKILL);
    let seen = h.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    drop(ing);
    // Restart on the same spool with the broker still stopped: it starts and is ready
    // (the spool takes records), then the broker comes back.
    let ing = start(&b.addr, "stopped", &dir, &[], env);
    b.signal(libc::SIGCONT);
    wait_drained(&ing, Duration::from_secs(90));
    let n = |c| seen.values().filter(|(s, _)| *s == c).count();
    let recs = read_topic(
        &b.addr,
        "stopped",
        2,
        n(201) + n(202),
        Duration::from_secs(3),
    );
    let dups = check_answered(&seen, &[201, 202], &recs);
    eprintln!(
        "broker stopped + SIGKILL (direct {direct}): {} answered 201, {} answered 202, all found; {dups} duplicates; replayed {}",
        n(201),
        n(202),
        ing.metric("ingestd_spool_records_replayed_total", "")
    );
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn answers_come_at_once_with_the_longest_direct_wait() {
    // With a spool the idle executor still blocks in epoll_wait for up to
    // `direct_wait_ms` before it sleeps in its ring, but not while the spool has work in
    // flight: a 201 waits for an fdatasync that completes on the ring, which does not end
    // such a wait. An answer that waited for the next wake from outside (the Kafka
    // thread's hand-off, also 100 ms here) would take ~95 ms; it did, when the poller
    // looked at the spool only before its idle check. The pause lets the executor go
    // idle before each request.
    let b = common::broker();
    let topic = b.topic("spool-direct", 1);
    let dir = spool_dir("direct");
    let env = [
        ("INGESTD_DIRECT_WAIT_MS", "100"),
        ("INGESTD_HANDOFF_MS", "100"),
    ];
    let ing = start(&b.addr, &topic, &dir, &["--executors", "1"], &env);
    // Ready (`start` waits for /readyz) only once the first segment's file is prepared,
    // so the first 201 does not wait for its zero fill.
    assert!(
        dir.join("executor-0/spare").exists(),
        "ready before the first segment's file was prepared"
    );
    let pause = Duration::from_millis(5);
    let durable = ack_p50(ing.addr, "d", 20, pause, "durable", 201);
    let queued = ack_p50(ing.addr, "q", 20, pause, "queued", 202);
    assert!(
        durable < Duration::from_millis(50),
        "ack=durable p50 {durable:?}"
    );
    assert!(
        queued < Duration::from_millis(50),
        "ack=queued p50 {queued:?}"
    );
    let recs = read_topic(&b.addr, &topic, 1, 40, Duration::from_secs(3));
    let values: BTreeSet<Vec<u8>> = recs.into_iter().map(|r| r.value).collect();
    for v in (0..20).flat_map(|i| [format!("d{i}"), format!("q{i}")]) {
        assert!(values.contains(v.as_bytes()), "{v} missing");
    }
    drop(ing);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `.seg` names (first sequences) in executor 0's spool directory.
fn segments(dir: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(dir.join("executor-0"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect()
}

#[test]
fn a_quiet_segment_is_closed_before_the_next_request_comes() {
    // While Kafka keeps up a segment is closed a second after its first write (so a crash
    // replays about a second). The close (rename of the spare, fsync of the directory) now
    // happens in the quiet time after the last batch, not in front of the next request's
    // batch, whose 201 waited for it (10-15 ms measured on a busy filesystem).
    let b = common::broker();
    let topic = b.topic("spool-quiet-roll", 1);
    let dir = spool_dir("quiet-roll");
    let ing = start(&b.addr, &topic, &dir, &["--executors", "1"], &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    let ask = |c: &mut Client, body: &[u8]| {
        let r = c
            .request(&post("/", body, &[("Kafka-Ack", "durable")]))
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.text();
        let seq: u64 = id
            .trim()
            .trim_end_matches("\"}")
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        seq
    };
    let first = ask(&mut c, b"before");
    let before = segments(&dir);
    assert!(
        before.iter().any(|&base| base <= first),
        "{first} in none of {before:?}"
    );
    let ino = |p: PathBuf| std::fs::metadata(p).map(|m| m.ino()).ok();
    let old = ino(dir.join(format!(
        "executor-0/{:020}.seg",
        before.iter().max().unwrap()
    )));
    // No request meanwhile: the writer closes the segment by itself.
    wait_until(
        "a new segment after a quiet second, the old one trimmed once Kafka has its record",
        Duration::from_secs(20),
        || {
            let now = segments(&dir);
            !now.is_empty() && now.iter().all(|&base| base > first)
        },
    );
    let after = segments(&dir);
    // The closed segment's file is the next spare: recycled, not deleted and replaced by
    // a zero fill of another 16 MiB (the roll trimmed before it took the spare).
    wait_until(
        "the old segment recycled as the spare",
        Duration::from_secs(10),
        || ino(dir.join("executor-0/spare")) == old,
    );
    // Closed once, not again and again: the new segment has no write yet, so no age.
    let cpu0 = ing.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = ing.cpu_time() - cpu0;
    assert_eq!(segments(&dir), after, "an empty segment was closed again");
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU in 2 s with nothing to do"
    );
    let second = ask(&mut c, b"after");
    let newest = *after.iter().max().unwrap();
    assert!(second >= newest, "{second} written before segment {newest}");
    let recs = read_topic(&b.addr, &topic, 1, 2, Duration::from_secs(3));
    let values: BTreeSet<Vec<u8>> = recs.into_iter().map(|r| r.value).collect();
    assert!(
        values.contains(&b"before"[..]) && values.contains(&b"after"[..]),
        "{values:?}"
    );
    drop(ing);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_outage_longer_than_the_memory_queue_is_held_on_disk() {
    let b = start_broker();
    b.create_topic("long", 1);
    let dir = spool_dir("long");
    // An in-memory window of 500 records; 20,000 arrive during the outage.
    let env = [("INGESTD_QUEUE_MAX_RECORDS", "500")];
    let ing = start(&b.addr, "long", &dir, &["--executors", "1"], &env);
    b.signal(libc::SIGSTOP);
    let stop = Arc::new(AtomicBool::new(false));
    // 1 KiB values: 15,000 of them held in RAM would add ~15 MiB, far above the margin.
    let h = padded_load(ing.addr, "o".into(), 8, &["queued"], stop.clone(), 1024);
    wait_until("5,000 accepted", Duration::from_secs(60), || {
        ing.metric("ingestd_http_requests_total", "code=\"202\"") >= 5000.0
    });
    let rss0 = ing.rss_kib();
    wait_until("20,000 accepted", Duration::from_secs(120), || {
        ing.metric("ingestd_http_requests_total", "code=\"202\"") >= 20000.0
    });
    let rss1 = ing.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let seen = h.join().unwrap();
    let queued = ing.metric("ingestd_queue_records", "");
    assert!(queued <= 500.0, "in-memory window bounded: {queued}");
    // 15,000 more records (~15 MiB of bodies) went to disk, not to RAM.
    assert!(rss1 < rss0 + 4096, "RSS grew from {rss0} KiB to {rss1} KiB");
    b.signal(libc::SIGCONT);
    wait_drained(&ing, Duration::from_secs(120));
    let ok = seen.values().filter(|(s, _)| *s == 202).count();
    let recs = read_topic(&b.addr, "long", 1, ok, Duration::from_secs(3));
    let dups = check_answered(&seen, &[202], &recs);
    let statuses: BTreeSet<u16> = seen.values().map(|(s, _)| *s).collect();
    eprintln!(
        "outage: {ok} answered 202 with a 500-record window, RSS {rss0} -> {rss1} KiB, replayed from disk {}, {dups} duplicates, statuses {statuses:?}",
        ing.metric("ingestd_spool_records_replayed_total", "")
    );
    assert_eq!(
        statuses,
        BTreeSet::from([202]),
        "no 503 while the spool has room"
    );
    assert_eq!(dups, 0);
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends 8 KiB ack=durable records (values `{tag}{i:05}-xxx...`) until the first 507,
/// which must carry `Retry-After: 1` and `reason`; every answer before it is a 201.
/// Returns how many were accepted.
fn durable_until_507(c: &mut Client, seen: &mut Seen, tag: &str, reason: &str) -> usize {
    for i in 0..2000 {
        let v = format!("{tag}{i:05}-{}", "x".repeat(8000));
        let r = c
            .request(&post("/", v.as_bytes(), &[("Kafka-Ack", "durable")]))
            .unwrap();
        seen.insert(v, (r.status, None));
        if r.status == 507 {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert!(r.text().contains(reason), "{}", r.text());
            return i;
        }
        assert_eq!(r.status, 201, "{}", r.text());
    }
    panic!("no 507 after 2000 records of 8 KiB");
}

#[test]
fn quota_full_answers_507_then_recovers_when_kafka_drains() {
    let b = start_broker();
    b.create_topic("quota", 1);
    let dir = spool_dir("quota");
    // 4 segments of 1 MiB for the one executor.
    let env = [
        ("INGESTD_SPOOL_SEGMENT_BYTES", "1048576"),
        ("INGESTD_SPOOL_MAX_BYTES", "4194304"),
        ("INGESTD_MAX_BODY_BYTES", "65536"),
    ];
    let ing = start(&b.addr, "quota", &dir, &["--executors", "1"], &env);
    b.signal(libc::SIGSTOP);
    let mut c = Client::connect(ing.addr).unwrap();
    let mut seen = Seen::new();
    let at = durable_until_507(&mut c, &mut seen, "q", "spool full");
    // 4 MiB of quota, 8 KiB records (a block of padding each at most): between 3 and 4
    // segments' worth were accepted.
    assert!((300..=520).contains(&at), "first 507 after {at} records");
    let again = c
        .request(&post("/", b"more", &[("Kafka-Ack", "queued")]))
        .unwrap();
    assert_eq!(again.status, 507, "still full while Kafka is away");
    seen.insert("more".into(), (507, None));
    b.signal(libc::SIGCONT);
    let mut n = 0;
    wait_until(
        "2xx again once Kafka drained the spool",
        Duration::from_secs(60),
        || {
            n += 1;
            let v = format!("after-{n}");
            let r = c.request(&post("/", v.as_bytes(), &[])).unwrap();
            seen.insert(v, (r.status, None));
            r.status == 202
        },
    );
    wait_drained(&ing, Duration::from_secs(60));
    let ok = seen.values().filter(|(s, _)| *s == 201).count();
    let recs = read_topic(&b.addr, "quota", 1, ok, Duration::from_secs(3));
    check_answered(&seen, &[201], &recs);
    eprintln!("quota 4 MiB: {ok} records of 8 KiB answered 201, then 507; 2xx again after the broker returned");
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs of `mib` MiB mounted on `dir` (this suite runs as root, as `.ci/run` does),
/// unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(st.success(), "mount -t tmpfs on {dir:?} (needs root)");
        Tmpfs(dir.to_path_buf())
    }

    fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0);
        v.f_bavail as u64 * v.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_answers_507_then_recovers_when_space_frees_without_kafka() {
    // The disk fills up (ENOSPC, far below the quota) while Kafka is away: 507 with
    // Retry-After. Then space frees on the disk, not by a trim (the broker is still
    // stopped): 2xx again by itself. Every 201 arrives once the broker is back.
    let b = start_broker();
    b.create_topic("enospc", 1);
    let dir = spool_dir("enospc");
    let fs = Tmpfs::mount(&dir, 16);
    let env = [
        ("INGESTD_SPOOL_SEGMENT_BYTES", "1048576"),
        ("INGESTD_SPOOL_MAX_BYTES", "67108864"),
        ("INGESTD_MAX_BODY_BYTES", "65536"),
    ];
    let ing = start(&b.addr, "enospc", &dir, &["--executors", "1"], &env);
    // Leave about 4 MiB to the spool (it holds a segment and a spare already).
    let filler = dir.join("filler");
    let keep = 4 << 20;
    let fill = fs.free_bytes().saturating_sub(keep) as usize;
    std::fs::write(&filler, vec![1u8; fill]).unwrap();
    b.signal(libc::SIGSTOP);
    let mut c = Client::connect(ing.addr).unwrap();
    let mut seen = Seen::new();
    let at = durable_until_507(&mut c, &mut seen, "e", "disk full");
    // 8 KiB records, one batch each here (12 KiB with its header and padding), about 85
    // a segment: the 4 MiB left hold a few segments' worth.
    assert!((100..=1000).contains(&at), "first 507 after {at} records");
    std::fs::remove_file(&filler).unwrap();
    let mut n = 0;
    wait_until(
        "2xx again once the disk has room, the broker still stopped",
        Duration::from_secs(20),
        || {
            n += 1;
            let v = format!("room-{n}-{}", "y".repeat(8000));
            let r = c
                .request(&post("/", v.as_bytes(), &[("Kafka-Ack", "durable")]))
                .unwrap();
            assert!(matches!(r.status, 201 | 507), "{} {}", r.status, r.text());
            seen.insert(v, (r.status, None));
            r.status == 201
        },
    );
    b.signal(libc::SIGCONT);
    wait_drained(&ing, Duration::from_secs(60));
    let ok = seen.values().filter(|(s, _)| *s == 201).count();
    let recs = read_topic(&b.addr, "enospc", 1, ok, Duration::from_secs(3));
    check_answered(&seen, &[201], &recs);
    eprintln!("tmpfs 16 MiB: {at} records of 8 KiB answered 201, then 507; 201 again {n} tries after space freed");
    drop(ing);
    b.signal(libc::SIGTERM);
    drop(fs);
}

#[test]
fn sigterm_leaves_undelivered_records_in_the_spool_for_the_next_start() {
    let b = start_broker();
    b.create_topic("term", 1);
    let dir = spool_dir("term");
    let env = [("INGESTD_SHUTDOWN_TIMEOUT_MS", "1000")];
    let mut ing = start(&b.addr, "term", &dir, &["--executors", "1"], &env);
    b.signal(libc::SIGSTOP);
    let mut c = Client::connect(ing.addr).unwrap();
    let mut seen = Seen::new();
    for i in 0..300 {
        let v = format!("t{i}");
        let ack = if i % 2 == 0 { "durable" } else { "queued" };
        let r = c
            .request(&post("/", v.as_bytes(), &[("Kafka-Ack", ack)]))
            .unwrap();
        assert!([201, 202].contains(&r.status), "{}", r.status);
        seen.insert(v, (r.status, None));
    }
    drop(c);
    let t0 = Instant::now();
    let st = ing.stop(Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    let log = ing.log_text();
    assert!(log.contains("stay on disk for the next start"), "{log}");
    eprintln!("SIGTERM with the broker stopped took {:?}", t0.elapsed());
    b.signal(libc::SIGCONT);
    let ing = start(&b.addr, "term", &dir, &["--executors", "1"], &[]);
    wait_drained(&ing, Duration::from_secs(60));
    let recs = read_topic(&b.addr, "term", 1, 300, Duration::from_secs(3));
    let dups = check_answered(&seen, &[201, 202], &recs);
    eprintln!("300 records left in the spool at SIGTERM, all delivered after the restart ({dups} duplicates)");
    // A clean stop with Kafka up trims everything: the next start replays nothing.
    let mut ing = ing;
    assert!(ing.stop(Duration::from_secs(30)).success());
    let segs: Vec<_> = std::fs::read_dir(dir.join("executor-0"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert!(
        segs.is_empty(),
        "segments left after a clean stop: {segs:?}"
    );
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_segment_is_quarantined_and_its_intact_records_replayed() {
    let b = start_broker();
    b.create_topic("corrupt", 1);
    let dir = spool_dir("corrupt");
    let ing = start(&b.addr, "corrupt", &dir, &["--executors", "1"], &[]);
    b.signal(libc::SIGSTOP);
    let mut c = Client::connect(ing.addr).unwrap();
    let mut seen = Seen::new();
    // One commit batch per request (each waits for its sync).
    for i in 0..40 {
        let v = format!("c{i:02}-{}", "y".repeat(5000));
        let r = c
            .request(&post("/", v.as_bytes(), &[("Kafka-Ack", "durable")]))
            .unwrap();
        assert_eq!(r.status, 201);
        seen.insert(v, (r.status, None));
    }
    ing.signal(libc::SIGKILL);
    drop(ing);
    let exec_dir = dir.join("executor-0");
    let seg = std::fs::read_dir(&exec_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    // Each 5 KiB record is a batch of two blocks: flip a byte inside the 21st.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20 * 8192 + 100] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    b.signal(libc::SIGCONT);
    let ing = start(&b.addr, "corrupt", &dir, &["--executors", "1"], &[]);
    wait_drained(&ing, Duration::from_secs(60));
    wait_until("quarantined", Duration::from_secs(20), || {
        ing.metric("ingestd_spool_quarantined_segments_total", "") == 1.0
            && std::fs::read_dir(&exec_dir)
                .unwrap()
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "corrupt"))
    });
    let recs = read_topic(&b.addr, "corrupt", 1, 39, Duration::from_secs(3));
    let found: BTreeSet<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.value[..3].to_vec()).unwrap())
        .collect();
    // Every intact batch, before and after the damaged one: one damaged batch loses its
    // own record, never the 19 synced after it (it lost them all before 2026-12).
    let want: BTreeSet<String> = (0..40)
        .filter(|&i| i != 20)
        .map(|i| format!("c{i:02}"))
        .collect();
    assert_eq!(found, want, "every record but the damaged one");
    assert!(ing.log_text().contains("damaged in the middle"));
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_kafka_rejects_for_good_goes_to_the_dead_letter_file() {
    let b = start_broker();
    b.create_topic("dead", 1);
    let dir = spool_dir("dead");
    let ing = start(&b.addr, "dead", &dir, &["--executors", "1"], &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    // Partition 7 of a one-partition topic: librdkafka rejects it for good, after the 202.
    let r = c
        .request(&post(
            "/",
            b"no-such-partition",
            &[("Kafka-Partition", "7")],
        ))
        .unwrap();
    assert_eq!(r.status, 202);
    let ok = c.request(&post("/", b"fine", &[])).unwrap();
    assert_eq!(ok.status, 202);
    wait_until("dead-lettered", Duration::from_secs(20), || {
        ing.metric("ingestd_spool_dead_letters_total", "") == 1.0
    });
    let text = std::fs::read_to_string(dir.join("dead-letters.ndjson")).unwrap();
    assert!(
        text.contains(r#""reason":"unknown_partition","topic":"dead","partition":7"#)
            && text.contains(r#""value":"no-such-partition""#)
            && text.contains(r#""ingestd-id":"0-"#),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
    // Both records are settled (one in Kafka, one buried): a clean stop trims the spool.
    wait_drained(&ing, Duration::from_secs(20));
    let mut ing = ing;
    assert!(ing.stop(Duration::from_secs(30)).success());
    let left: Vec<_> = std::fs::read_dir(dir.join("executor-0"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let recs = read_topic(&b.addr, "dead", 1, 1, Duration::from_secs(2));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].value, b"fine");
    b.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn syncs_run_inline_on_a_fast_disk_and_go_through_io_uring_on_a_slow_one() {
    // `spool_inline_sync_us`: the default runs the syncs of 201s on the executor's own
    // thread; 1 us makes every inline sync "slow", so after 4 of them syncs go through
    // io_uring for the back-off (1 s, then 2 s: one probe in this test's few seconds);
    // 0 never syncs inline. Each way every 201 is in Kafka.
    let b = common::broker();
    for (limit, tag) in [(None, "inline"), (Some("1"), "slow"), (Some("0"), "ring")] {
        let topic = b.topic(&format!("spool-sync-{tag}"), 1);
        let dir = spool_dir(tag);
        let env: Vec<(&str, &str)> = limit
            .map(|v| ("INGESTD_SPOOL_INLINE_SYNC_US", v))
            .into_iter()
            .collect();
        let ing = start(&b.addr, &topic, &dir, &["--executors", "1"], &env);
        let stop = Arc::new(AtomicBool::new(false));
        let h = load(ing.addr, tag.into(), 8, &["durable"], stop.clone());
        wait_until("1000 answers 201", Duration::from_secs(30), || {
            ing.metric("ingestd_http_requests_total", "code=\"201\"") >= 1000.0
        });
        stop.store(true, Ordering::Relaxed);
        let seen = h.join().unwrap();
        let m = ing.metrics_text();
        let inline = common::metric_sum(&m, "ingestd_spool_inline_syncs_total", "");
        let backoffs = common::metric_sum(&m, "ingestd_spool_inline_sync_backoffs_total", "");
        let syncs = common::metric_sum(&m, "ingestd_spool_fsync_duration_seconds_count", "");
        let n201 = seen.values().filter(|(s, _)| *s == 201).count();
        eprintln!(
            "{tag}: {n201} answered 201; {syncs} syncs, {inline} inline, {backoffs} back-offs"
        );
        assert!(n201 >= 1000);
        match limit {
            // This machine's disk syncs well under 2 ms; however slow a CI disk, the
            // first syncs run inline before any back-off.
            None => assert!(inline >= 4.0, "{inline} inline syncs"),
            Some("1") => {
                // Every inline sync is slow: 4, then one probe per back-off.
                assert!((1.0..=4.0).contains(&backoffs), "{backoffs} back-offs");
                assert_eq!(inline, 3.0 + backoffs, "inline syncs");
                assert!(syncs > inline + 10.0, "{syncs} syncs, {inline} inline");
                assert!(
                    ing.log_text()
                        .contains("syncs go through io_uring for the back-off"),
                    "{}",
                    ing.log_text()
                );
            }
            _ => assert_eq!((inline, backoffs), (0.0, 0.0)),
        }
        let recs = read_topic(&b.addr, &topic, 1, n201, Duration::from_secs(3));
        check_answered(&seen, &[201], &recs);
        drop(ing);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
