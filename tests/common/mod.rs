//! Test harness: a real tansu broker (started once per test binary unless
//! INGESTD_TEST_BROKER names one), the real ingestd binary, a raw HTTP client, and a
//! reader that consumes a topic from the beginning of every partition.
#![allow(dead_code)]

pub mod http;
pub mod jwt;
pub mod spool;
pub mod tls;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Broker {
    pub addr: String,
    pub pid: u32,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// The shared broker of this test binary.
pub fn broker() -> &'static Broker {
    BROKER.get_or_init(|| {
        if let Ok(addr) = std::env::var("INGESTD_TEST_BROKER") {
            return Broker { addr, pid: 0 };
        }
        start_broker()
    })
}

/// Starts a private tansu broker that dies with this test process.
pub fn start_broker() -> Broker {
    start_broker_on(None)
}

/// Starts a private tansu broker, on `port` if given (to restart one in place).
pub fn start_broker_on(port: Option<u16>) -> Broker {
    let mut args = vec![
        "start".to_string(),
        "--watch".into(),
        std::process::id().to_string(),
    ];
    if let Some(p) = port {
        args.push(p.to_string());
    }
    let out = Command::new(repo().join("tests/tansu.sh"))
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/tansu.sh");
    assert!(out.status.success(), "tansu failed to start");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace();
    let addr = it.next().expect("addr").to_string();
    let pid = it.next().expect("pid").parse().unwrap();
    Broker { addr, pid }
}

static TOPIC_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Broker {
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        assert!(self.pid != 0, "not a private broker");
        // SAFETY: kill(2) on the broker process this test started.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// Creates a topic with exactly this name.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let ok = Command::new(repo().join("tests/tansu.sh"))
            .args(["topic", &self.addr, name, &partitions.to_string()])
            .status()
            .expect("create topic")
            .success();
        assert!(ok, "topic create {name}");
    }

    /// Creates a topic with a name unique to this run.
    pub fn topic(&self, prefix: &str, partitions: u32) -> String {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            TOPIC_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new(repo().join("tests/tansu.sh"))
            .args(["topic", &self.addr, &name, &partitions.to_string()])
            .status()
            .expect("create topic")
            .success();
        assert!(ok, "topic create {name}");
        name
    }
}

/// A running ingestd process.
pub struct Ingestd {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTPS listener's address, when `tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener's address, when `admin_listen` is set (/readyz and /metrics
    /// are there then).
    pub admin_addr: Option<SocketAddr>,
    pub log: PathBuf,
}

static LOG_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The binary under test: this build's, or `INGESTD_TEST_BIN` (to run a test against
/// another build, e.g. the commit before a fix, and see it fail there).
pub fn bin() -> PathBuf {
    std::env::var_os("INGESTD_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ingestd")))
}

impl Ingestd {
    /// Starts the real binary on a free port with `args` and waits for /readyz.
    pub fn start(args: &[&str]) -> Ingestd {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Ingestd {
        let me = Self::spawn(args, env);
        me.wait_ready(Duration::from_secs(20));
        me
    }

    /// Starts without waiting for readiness.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Ingestd {
        Self::spawn_limited(args, env, None)
    }

    /// Starts without waiting for readiness, with RLIMIT_NOFILE set to `nofile`.
    pub fn spawn_limited(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Ingestd {
        let log = std::env::temp_dir().join(format!(
            "ingestd-test-{}-{}.log",
            std::process::id(),
            LOG_SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let mut cmd = Command::new(bin());
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it only touches the child's limits.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn ingestd");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        // "ingestd listening on ADDR", then " tls TLS_ADDR" and " admin ADMIN_ADDR" when
        // those listeners are on.
        let Some(addrs) = line.trim().strip_prefix("ingestd listening on ") else {
            let _ = child.kill();
            panic!(
                "ingestd did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let mut words = addrs.split(' ');
        let addr = words.next().unwrap().parse().unwrap();
        let (mut tls_addr, mut admin_addr) = (None, None);
        while let (Some(k), Some(a)) = (words.next(), words.next()) {
            match k {
                "tls" => tls_addr = Some(a.parse().unwrap()),
                "admin" => admin_addr = Some(a.parse().unwrap()),
                _ => panic!("listening line: {line:?}"),
            }
        }
        Ingestd {
            child,
            addr,
            tls_addr,
            admin_addr,
            log,
        }
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(r) = http::get(self.admin_addr.unwrap_or(self.addr), "/readyz") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ingestd not ready in {timeout:?}: {}", self.log_text());
    }

    /// CPU time (user+system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// CPU ticks per thread name, to say which thread burned CPU when a check fails.
    pub fn thread_ticks(&self) -> Vec<(String, u64)> {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut out = Vec::new();
        for t in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let Some(i) = stat.rfind(')') else { continue };
            let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
            let ticks = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            out.push((comm.trim().to_string(), ticks));
        }
        out
    }

    /// Voluntary context switches of the threads whose name starts with `prefix`: how
    /// often they slept and woke up again (preemption on a busy machine is not counted).
    /// An idle thread wakes a few times a second; one polling on a timer, hundreds.
    pub fn thread_switches(&self, prefix: &str) -> u64 {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut n = 0;
        for t in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            n += status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        n
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the process ever had (VmHWM): catches a large buffer
    /// that was allocated and freed again before anyone looked.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait for exit (bounded).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit (bounded; killed and a panic past `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("ingestd did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Value of a metric line `name{labels} value`, summed over lines whose name and
    /// labels contain `filter` pieces.
    pub fn metric(&self, name: &str, label_filter: &str) -> f64 {
        metric_sum(&self.metrics_text(), name, label_filter)
    }

    pub fn metrics_text(&self) -> String {
        let r = http::get(self.admin_addr.unwrap_or(self.addr), "/metrics").expect("metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

pub fn metric_sum(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let (n, _) = l.split_once(' ').unwrap_or((l, ""));
            let base = n.split('{').next().unwrap();
            base == name && n.contains(label_filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Ingestd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Each run starts dozens of processes: keep a log only where a test failed.
        if std::thread::panicking() {
            eprintln!("ingestd log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A record read back from the broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

/// Reads every partition of `topic` from the beginning (assigned partitions, no consumer
/// group offsets: tansu's memory store cannot start a fetch mid-batch). Stops when
/// `expect` records arrived and nothing more came for `settle`, or at `timeout`.
/// tansu reports stale high watermarks, so the watermark is not used to stop.
pub fn read_topic(
    broker: &str,
    topic: &str,
    partitions: i32,
    expect: usize,
    settle: Duration,
) -> Vec<Rec> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("ingestd-test-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let timeout = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut last_new = Instant::now();
    while t0.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Rec {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
                last_new = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
        if out.len() >= expect && last_new.elapsed() >= settle {
            break;
        }
    }
    out
}

/// The record whose value is `value` (the test fails when there is none).
pub fn find_value<'a>(recs: &'a [Rec], value: &[u8]) -> &'a Rec {
    recs.iter()
        .find(|r| r.value == value)
        .unwrap_or_else(|| panic!("no record {:?}", String::from_utf8_lossy(value)))
}

/// Polls `f` every 50 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tests that drive the binary's test hooks (`src/faults.rs`) need the build that has
/// them: without it they fail here, saying so, rather than pass without their fault.
pub fn require_fault_injection() {
    if !cfg!(feature = "fault-injection") {
        panic!(
            "this test drives the binary's fault-injection hooks, which only the test build \
             has: run tests/run.sh, or cargo test --features fault-injection"
        );
    }
}

/// ingestd with a config file, the shared broker, a default topic and `executors`.
pub fn start_with_config(
    cfg: &std::path::Path,
    topic: &str,
    executors: &str,
    env: &[(&str, &str)],
) -> Ingestd {
    let b = broker();
    Ingestd::start_env(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--brokers",
            &b.addr,
            "--default-topic",
            topic,
            "--executors",
            executors,
        ],
        env,
    )
}

/// A config file for a test, named after it and this process (in the temp directory).
pub fn temp_config(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ingestd-{name}-{}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}
