//! systemd notify protocol, end to end: the real binary writes to a real Unix datagram
//! socket named by NOTIFY_SOCKET (what systemd does for Type=notify), against a real tansu
//! broker. Checks READY=1 (only once /readyz says ready), STATUS= lines, WATCHDOG=1 pings
//! that stop when a thread stops making progress, STOPPING=1 and EXTEND_TIMEOUT_USEC=.

mod common;

use common::http::{self, post, Client};
use common::{broker, Ingestd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// WATCHDOG_USEC given to ingestd: pings are due every 200 ms.
const WATCHDOG_USEC: &str = "400000";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The service manager's end: a bound datagram socket, and every line received, with the
/// time it arrived.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    lines: Vec<(Instant, String)>,
}

impl Manager {
    fn bind() -> Manager {
        let path = std::env::temp_dir().join(format!(
            "ingestd-notify-{}-{}.sock",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Manager {
            sock,
            path,
            lines: Vec::new(),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Receives datagrams for up to `wait`, keeping their lines. Returns the new lines.
    fn collect(&mut self, wait: Duration) -> Vec<(Instant, String)> {
        let from = self.lines.len();
        let end = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let at = Instant::now();
                    let text = std::str::from_utf8(&buf[..n]).expect("notify datagram is UTF-8");
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        assert!(line.contains('='), "not KEY=VALUE: {line:?}");
                        self.lines.push((at, line.to_string()));
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        self.lines[from..].to_vec()
    }

    /// Receives until a line equal to `want` arrives; returns its arrival time.
    fn wait_for(&mut self, want: &str, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let new = self.collect(Duration::from_millis(20));
            if let Some((at, _)) = new.iter().find(|(_, l)| l == want) {
                return Some(*at);
            }
        }
        None
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for an exit that a signal already asked for (`Ingestd::stop` would send a
/// second SIGTERM, which means "exit now, without flushing").
fn wait_exit(ing: &mut Ingestd, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = ing.child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < end,
            "ingestd did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(lines: &[(Instant, String)], pred: impl Fn(&str) -> bool) -> usize {
    count_after(lines, None, pred)
}

/// Lines matching `pred` that arrived after `t` (all lines when `t` is `None`).
fn count_after(
    lines: &[(Instant, String)],
    t: Option<Instant>,
    pred: impl Fn(&str) -> bool,
) -> usize {
    lines
        .iter()
        .filter(|(at, l)| t.is_none_or(|t| *at > t) && pred(l))
        .count()
}

/// Starts ingestd against the shared broker with the notify socket and watchdog set.
/// WATCHDOG_PID is set empty unless given, so a value inherited from the test's own
/// environment cannot switch the watchdog off (sd-notify ignores an unparsable one).
fn spawn(m: &Manager, topic: &str, extra_env: &[(&str, &str)]) -> Ingestd {
    let b = broker();
    let mut env = vec![
        ("NOTIFY_SOCKET", m.path()),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
        ("WATCHDOG_PID", ""),
    ];
    env.extend_from_slice(extra_env);
    Ingestd::spawn(
        &[
            "--brokers",
            &b.addr,
            "--default-topic",
            topic,
            "--executors",
            "2",
        ],
        &env,
    )
}

#[test]
fn ready_status_watchdog_then_stopping() {
    let topic = broker().topic("notify", 2);
    let mut m = Manager::bind();
    let mut ing = spawn(&m, &topic, &[]);

    let ready = m.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready.is_some(), "no READY=1: {}", ing.log_text());
    // READY=1 is sent only once the same check as /readyz passes.
    let r = http::get(ing.addr, "/readyz").unwrap();
    assert_eq!(r.status, 200, "READY=1 sent while /readyz is {}", r.status);
    let before: Vec<_> = m.lines.iter().take_while(|(_, l)| l != "READY=1").collect();
    assert!(
        before
            .iter()
            .all(|(_, l)| l.starts_with("STATUS=starting: ")),
        "before READY=1: {before:?}"
    );
    assert!(
        m.lines
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=") && l.contains("req/s")),
        "READY=1 comes with a STATUS= summary: {:?}",
        m.lines
    );

    // Some traffic, so the status line has something to count.
    let mut c = Client::connect(ing.addr).unwrap();
    for i in 0..20 {
        let r = c
            .request(&post("/", format!("n{i}").as_bytes(), &[]))
            .unwrap();
        assert_eq!(r.status, 202);
    }
    let running = m.collect(Duration::from_millis(3000));
    let pings: Vec<Instant> = running
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    // Due every 200 ms: about 15 in 3 s. A loaded CI machine may delay a few.
    assert!(pings.len() >= 6, "WATCHDOG=1 pings in 3 s: {}", pings.len());
    let mut gaps: Vec<u128> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        (120..=320).contains(&median),
        "median ping gap {median} ms, want about half of WATCHDOG_USEC: {gaps:?}"
    );
    let status: Vec<&String> = running
        .iter()
        .filter(|(_, l)| l.starts_with("STATUS="))
        .map(|(_, l)| l)
        .collect();
    assert!(!status.is_empty(), "no STATUS= in 3 s: {running:?}");
    for s in &status {
        assert!(
            s.contains(" req/s, ") && s.contains("records queued") && s.contains("broker up"),
            "{s}"
        );
        assert!(!s.contains('\n'));
    }

    // SIGTERM: STOPPING=1, the stop timeout extended while draining, then exit 0.
    drop(c);
    let t_term = Instant::now();
    ing.signal(libc::SIGTERM);
    let stop = m.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(stop.is_some(), "no STOPPING=1: {}", ing.log_text());
    let status = wait_exit(&mut ing, Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    m.collect(Duration::from_millis(100));
    let after: Vec<_> = m
        .lines
        .iter()
        .filter(|(t, _)| *t >= t_term)
        .cloned()
        .collect();
    let extends: Vec<u64> = after
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("EXTEND_TIMEOUT_USEC={v}"))
        })
        .collect();
    assert!(
        !extends.is_empty(),
        "no EXTEND_TIMEOUT_USEC after STOPPING=1: {after:?}"
    );
    // Bounded by ingestd's own worst case: 2 x shutdown_timeout_ms (10 s) + 5 s.
    assert!(
        extends.iter().all(|&u| u > 0 && u <= 25_000_000),
        "{extends:?}"
    );
    assert_eq!(
        count_after(&m.lines, stop, |l| l == "WATCHDOG=1"),
        0,
        "WATCHDOG=1 after STOPPING=1 (systemd has disarmed the watchdog by then)"
    );
    assert!(
        after
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=stopping: ")),
        "{after:?}"
    );
    assert_eq!(count(&m.lines, |l| l == "READY=1"), 1, "READY=1 sent once");
}

#[test]
fn watchdog_pings_stop_when_the_kafka_thread_freezes() {
    common::require_fault_injection();
    const FREEZE_MS: u64 = 4000;
    let topic = broker().topic("notify-freeze", 1);
    let mut m = Manager::bind();
    let spawned = Instant::now();
    let freeze = FREEZE_MS.to_string();
    let mut ing = spawn(
        &m,
        &topic,
        &[("INGESTD_TEST_FREEZE_KAFKA_AFTER_MS", &freeze)],
    );
    let freeze_at = spawned + Duration::from_millis(FREEZE_MS);
    let ready = m
        .wait_for("READY=1", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no READY=1: {}", ing.log_text()));
    assert!(
        ready + Duration::from_millis(1000) < freeze_at,
        "READY=1 came {:?} after start, too close to the freeze at {FREEZE_MS} ms",
        ready - spawned
    );

    // Collect until well after the freeze.
    let left = (freeze_at + Duration::from_millis(3500)).saturating_duration_since(Instant::now());
    m.collect(left);
    assert!(
        ing.child.try_wait().unwrap().is_none(),
        "ingestd exited: {}",
        ing.log_text()
    );

    let pings: Vec<Instant> = m
        .lines
        .iter()
        .filter(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let before = pings.iter().filter(|&&t| t < freeze_at).count();
    assert!(before >= 3, "pings before the freeze: {before}");
    // The freeze starts FREEZE_MS after the Kafka thread started (a little after spawn);
    // one check interval (200 ms) later the pings must have stopped for good.
    let last = *pings.last().unwrap();
    assert!(
        last < freeze_at + Duration::from_millis(1000),
        "WATCHDOG=1 still sent {:?} after the Kafka thread froze",
        last - freeze_at
    );
    let silent = Instant::now() - last;
    assert!(
        silent >= Duration::from_millis(2500),
        "silent only {silent:?}"
    );
    // The notifier itself is alive: STATUS= lines keep coming while pings are withheld.
    assert!(
        count_after(&m.lines, Some(last), |l| l.starts_with("STATUS=")) >= 1,
        "no STATUS= after the last ping"
    );
    let log = ing.log_text();
    assert!(
        log.contains("withholding WATCHDOG=1") && log.contains("kafka thread"),
        "the stall is logged with the thread's name: {log}"
    );
    // Frozen on purpose: a graceful stop would wait for the Kafka thread forever.
    let _ = ing.child.kill();
}

#[test]
fn no_ready_while_broker_metadata_is_unknown() {
    // A port nobody listens on: executors bind, but broker metadata never arrives.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("127.0.0.1:{port}");
    let mut m = Manager::bind();
    let mut ing = Ingestd::spawn(
        &["--brokers", &nowhere, "--executors", "2"],
        &[
            ("NOTIFY_SOCKET", m.path()),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
            ("WATCHDOG_PID", ""),
        ],
    );
    let lines = m.collect(Duration::from_millis(3000));
    assert_eq!(http::get(ing.addr, "/readyz").unwrap().status, 503);
    assert_eq!(count(&lines, |l| l == "READY=1"), 0, "{lines:?}");
    assert_eq!(count(&lines, |l| l == "WATCHDOG=1"), 0, "{lines:?}");
    assert!(
        lines.iter().any(|(_, l)| l
            == "STATUS=starting: listeners bound, broker metadata waiting, producer id waiting"),
        "{lines:?}"
    );
    ing.signal(libc::SIGTERM);
    assert!(m.wait_for("STOPPING=1", Duration::from_secs(10)).is_some());
    assert!(wait_exit(&mut ing, Duration::from_secs(30)).success());
}

#[test]
fn watchdog_pid_of_another_process_means_no_pings() {
    // sd_watchdog_enabled(3): WATCHDOG_PID names the process that must ping; here it is
    // not ingestd (pid 1), so ingestd must not ping, but still reports READY and STATUS.
    let topic = broker().topic("notify-pid", 1);
    let mut m = Manager::bind();
    let mut ing = spawn(&m, &topic, &[("WATCHDOG_PID", "1")]);
    assert!(m.wait_for("READY=1", Duration::from_secs(20)).is_some());
    let lines = m.collect(Duration::from_millis(1500));
    assert_eq!(count(&lines, |l| l == "WATCHDOG=1"), 0, "{lines:?}");
    assert!(ing.stop(Duration::from_secs(30)).success());
}
