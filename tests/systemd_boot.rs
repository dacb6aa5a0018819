//! The packaged unit and config under the real systemd: systemd boots as PID 1 of private
//! namespaces (tests/systemd-boot.sh: overlay root, its own cgroup, network and PID
//! namespaces), the test installs what the Debian package installs (the binary under test
//! as /usr/bin/ingestd, both units under /usr/lib/systemd/system, packaging/ingestd.toml
//! as /etc/ingestd/ingestd.toml, the `ingestd` user by running packaging/debian/postinst),
//! and a tansu broker runs in the namespaces' network on 127.0.0.1:9092, the packaged
//! config's broker address, so the config is used unchanged. Then, through `systemctl`:
//! READY=1 with and without a spool while the broker is down, STATUS=, limits and CPU
//! affinity from drop-ins (the CPU drop-ins exactly as the units' comments show them), the
//! produce path, reload, the watchdog, a flushing stop, and one template instance.
//!
//! The test talks to ingestd and the broker from threads that joined the namespaces'
//! network (setns), and reads /proc of the service through systemd's root.
//!
//! Needs root, `unshare`/`nsenter`/`pivot_root` (Debian `util-linux`) and systemd (Debian
//! `systemd`); tests/deps.sh installs them. Without them the test fails, naming the package.
//! About 20 s.

mod common;

use common::http::{post, Client, Response};
use common::{read_topic, repo};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where ingestd listens and the broker is, inside the namespaces' network: the packaged
/// config's own addresses.
const HTTP: &str = "127.0.0.1:8080";
const BROKER: &str = "127.0.0.1:9092";
/// The packaged config's `default_topic`.
const TOPIC: &str = "events";
const PARTITIONS: i32 = 2;
/// WatchdogSec= of the test drop-in (the unit's 20 s would make the test slow).
const WATCHDOG_SECS: u64 = 3;
/// TimeoutStartSec= of the spool-less start while the broker is down.
const NOSPOOL_START_SECS: u64 = 5;
/// Generous bound for anything that should take a second or two.
const LONG: Duration = Duration::from_secs(60);

const DROPINS: &str = "etc/systemd/system/ingestd.service.d";

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The tansu binary tests/tansu.sh builds (into ~/.cache once).
fn tansu() -> PathBuf {
    let ok = Command::new(repo().join("tests/tansu.sh"))
        .arg("install")
        .status()
        .expect("run tests/tansu.sh install")
        .success();
    assert!(ok, "tests/tansu.sh install failed");
    let cache = std::env::var_os("TANSU_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/ingestd/tansu-0.6.0")
        },
        PathBuf::from,
    );
    cache.join("bin/tansu")
}

/// A booted systemd and what the test started beside it. Dropping it (also when an
/// assertion failed) powers systemd off, stops the broker and removes the cgroups; the
/// mounts live in systemd's mount namespace only and go with it.
struct Boot {
    dir: PathBuf,
    /// tests/systemd-boot.sh, which became `unshare` (systemd is its child).
    script: Child,
    /// systemd, as the host sees it.
    pid: u32,
    broker: Option<Child>,
    done: bool,
}

impl Boot {
    fn start() -> Boot {
        let check = run(Command::new(repo().join("tests/systemd-boot.sh")).arg("check"));
        assert!(
            check.status.success(),
            "tools missing for booting systemd: {}",
            text(&check)
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "booting systemd in namespaces needs root"
        );
        let dir = std::env::temp_dir().join(format!("ingestd-boot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = File::create(dir.join("boot.log")).unwrap();
        let mut cmd = Command::new(repo().join("tests/systemd-boot.sh"));
        cmd.arg("boot")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. If this test process dies without running
        // Drop, unshare gets SIGKILL, and its --kill-child takes systemd's namespace down.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let script = cmd.spawn().expect("spawn tests/systemd-boot.sh");
        let mut boot = Boot {
            dir,
            script,
            pid: 0,
            broker: None,
            done: false,
        };
        let t0 = Instant::now();
        boot.pid = loop {
            if let Ok(s) = std::fs::read_to_string(boot.dir.join("pid")) {
                if let Ok(p) = s.trim().parse() {
                    break p;
                }
            }
            if let Ok(Some(st)) = boot.script.try_wait() {
                panic!(
                    "tests/systemd-boot.sh exited ({st}) before systemd started:\n{}",
                    boot.boot_log()
                );
            }
            assert!(
                t0.elapsed() < LONG,
                "systemd did not start:\n{}",
                boot.boot_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut last = String::new();
        while !matches!(last.as_str(), "running" | "degraded") {
            assert!(
                t0.elapsed() < LONG,
                "systemd did not finish booting within {LONG:?}: is-system-running says {last:?}\n{}",
                boot.boot_log()
            );
            std::thread::sleep(Duration::from_millis(100));
            last = text(&boot.ctl(&["is-system-running"])).trim().to_string();
        }
        if last == "degraded" {
            // Not the test's business, but worth seeing when something else fails.
            eprintln!(
                "systemd booted degraded:\n{}",
                text(&boot.ctl(&["--failed", "--no-pager"]))
            );
        }
        eprintln!("systemd booted as pid {} in {:?}", boot.pid, t0.elapsed());
        boot
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default()
    }

    /// A path inside systemd's root file system (the overlay), as the host reaches it.
    fn root(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(path.trim_start_matches('/'))
    }

    fn write(&self, path: &str, contents: &[u8]) {
        let p = self.root(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// A command run inside every namespace of systemd, bounded by `limit`.
    fn exec(&self, limit: Duration, args: &[&str]) -> Output {
        let out = run(Command::new("timeout")
            .args(["--kill-after=5", &limit.as_secs().to_string()])
            .args(["nsenter", "-t", &self.pid.to_string(), "-a", "--"])
            .args(args));
        assert_ne!(
            out.status.code(),
            Some(124),
            "`{}` did not return within {limit:?}",
            args.join(" ")
        );
        out
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut a = vec!["systemctl"];
        a.extend_from_slice(args);
        self.exec(LONG, &a)
    }

    /// `systemctl ARGS`, which must succeed.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "systemctl {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            text(&out),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn prop(&self, name: &str) -> String {
        self.prop_of("ingestd", name)
    }

    fn prop_of(&self, unit: &str, name: &str) -> String {
        text(&self.ctl(&["show", "-p", name, "--value", unit]))
            .trim()
            .to_string()
    }

    fn main_pid(&self) -> u32 {
        self.prop("MainPID").parse().expect("MainPID is a number")
    }

    /// Name and Cpus_allowed_list of every thread of a process (by its PID in systemd's
    /// PID namespace) that does not pin itself: not an executor, nor an io_uring worker
    /// (those follow their executor's ring).
    fn unpinned_threads(&self, pid: u32) -> Vec<(String, String)> {
        let mut threads = Vec::new();
        for t in std::fs::read_dir(self.root(&format!("proc/{pid}/task"))).unwrap() {
            let t = t.unwrap().path();
            let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            let comm = comm.trim().to_string();
            if comm.starts_with("ingestd-exec") || comm.starts_with("iou-") {
                continue;
            }
            let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap_or("?")
                .trim()
                .to_string();
            threads.push((comm, cpus));
        }
        assert!(
            threads.iter().any(|(n, _)| n == "ingestd-kafka"),
            "no ingestd-kafka thread in process {pid}: {threads:?}"
        );
        threads
    }

    fn active(&self) -> String {
        text(&self.ctl(&["is-active", "ingestd"]))
            .trim()
            .to_string()
    }

    fn journal(&self) -> String {
        let out = self.exec(
            LONG,
            &[
                "journalctl",
                "-u",
                "ingestd",
                "--no-pager",
                "-o",
                "cat",
                "-n",
                "60",
            ],
        );
        format!(
            "journal of ingestd.service (last 60 lines):\n{}",
            text(&out)
        )
    }

    /// Runs `f` on a thread inside systemd's network namespace (setns changes the calling
    /// thread only; threads it starts, such as librdkafka's, inherit it).
    fn in_net<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(format!("/proc/{}/ns/net", self.pid)).expect("network namespace");
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace fd; it moves this thread only.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// One HTTP request to ingestd, inside the namespaces' network.
    fn http(&self, request: Vec<u8>) -> std::io::Result<Response> {
        self.in_net(move || Client::connect(HTTP.parse().unwrap())?.request(&request))
    }

    fn get(&self, path: &str) -> std::io::Result<Response> {
        self.http(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes())
    }

    fn post(&self, body: &str, ack: &str) -> Response {
        let req = post("/", body.as_bytes(), &[("Kafka-Ack", ack)]);
        self.http(req)
            .unwrap_or_else(|e| panic!("POST / (Kafka-Ack: {ack}): {e}"))
    }

    /// Starts tansu on BROKER in the namespaces' network (its own PID and mount namespaces
    /// are the host's: the test stops it by PID) and creates the topic.
    fn start_broker(&mut self) {
        let bin = tansu();
        let net = format!("--net=/proc/{}/ns/net", self.pid);
        let url = format!("tcp://{BROKER}");
        let log = File::create(self.dir.join("tansu.log")).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.args([net.as_str(), "--"])
            .arg(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the broker dies with this test's thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.broker = Some(cmd.spawn().expect("start tansu with nsenter"));
        let t0 = Instant::now();
        while !self.in_net(|| std::net::TcpStream::connect(BROKER).is_ok()) {
            if let Some(Ok(Some(st))) = self.broker.as_mut().map(Child::try_wait) {
                panic!(
                    "tansu exited ({st}):\n{}",
                    std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
                );
            }
            assert!(t0.elapsed() < LONG, "tansu not listening on {BROKER}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = run(Command::new("nsenter")
            .args([net.as_str(), "--"])
            .arg(&bin)
            .args(["topic", "create", "--broker", &url, "--partitions"])
            .arg(PARTITIONS.to_string())
            .arg(TOPIC));
        assert!(out.status.success(), "create topic {TOPIC}: {}", text(&out));
    }

    /// Every value on TOPIC, read from the beginning once `expect` values are there.
    fn topic_values(&self, expect: usize) -> Vec<String> {
        self.in_net(move || {
            read_topic(
                BROKER,
                TOPIC,
                PARTITIONS,
                expect,
                Duration::from_millis(300),
            )
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect()
        })
    }

    /// Powers systemd off, stops the broker, removes the cgroups and the directory;
    /// returns what did not go as it should.
    fn shutdown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if std::mem::replace(&mut self.done, true) {
            return problems;
        }
        // systemd first, while the broker still answers: ingestd stops as it would on a
        // host, and its flush does not wait for a broker that is gone.
        if self.pid != 0 && matches!(self.script.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the systemd this test booted: unshare (the script) has
            // not exited, so it has not reaped its child, and the PID is still systemd's.
            unsafe { libc::kill(self.pid as i32, libc::SIGRTMIN() + 4) };
        }
        if !wait_child(&mut self.script, Duration::from_secs(60)) {
            problems.push(format!(
                "systemd (pid {}) did not power off within 60 s (killed)",
                self.pid
            ));
            // SAFETY: as above; SIGKILL on PID 1 of the namespace ends every process in it.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            if !wait_child(&mut self.script, Duration::from_secs(10)) {
                let _ = self.script.kill();
                let _ = self.script.wait();
            }
        }
        if let Some(mut b) = self.broker.take() {
            // SAFETY: kill(2) on the broker this test started and has not reaped.
            unsafe {
                libc::kill(b.id() as i32, libc::SIGCONT);
                libc::kill(b.id() as i32, libc::SIGTERM);
            }
            if !wait_child(&mut b, Duration::from_secs(10)) {
                problems.push("tansu ignored SIGTERM for 10 s (killed)".into());
                let _ = b.kill();
                let _ = b.wait();
            }
        }
        let out = run(Command::new(repo().join("tests/systemd-boot.sh"))
            .arg("cleanup")
            .arg(&self.dir));
        if !out.status.success() || !out.stderr.is_empty() {
            problems.push(format!("cgroup cleanup: {}", text(&out)));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.to_string_lossy().into_owned();
        if let Some(m) = mounts.lines().find(|l| l.contains(&dir)) {
            problems.push(format!("still mounted on the host: {m}"));
        }
        if Path::new(&format!("/proc/{}", self.pid)).exists() && self.pid != 0 {
            problems.push(format!("a process {} is still there", self.pid));
        }
        if std::thread::panicking() {
            eprintln!(
                "kept for a look: {} (boot.log, tansu.log)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        problems
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if std::thread::panicking() && self.pid != 0 {
            eprintln!("{}", text(&self.ctl(&["status", "--no-pager", "ingestd"])));
            eprintln!("{}", self.journal());
        }
        for p in self.shutdown() {
            eprintln!("cleanup: {p}");
        }
    }
}

/// Waits for a child to exit; false on timeout.
fn wait_child(c: &mut Child, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, why: impl Fn() -> String) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The drop-in a unit's comment shows for CPU placement (the `Key=Value` comment lines
/// after the line `header` picks), its CPU lists replaced by CPU 1: what an operator
/// following the comment writes.
fn documented_cpu_dropin(unit: &str, header: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| header(l))
        .unwrap_or_else(|| panic!("systemd/{unit}: no commented drop-in example"));
    let mut out = String::from("[Service]\n");
    for l in &lines[start + 1..] {
        let Some((k, v)) = l
            .strip_prefix("#   ")
            .and_then(|b| b.trim().split_once('='))
        else {
            break;
        };
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            break;
        }
        let v = if matches!(k, "CPUAffinity" | "AllowedCPUs") && !v.is_empty() {
            "1"
        } else {
            v
        };
        out.push_str(&format!("{k}={v}\n"));
    }
    assert!(
        out.contains("CPUAffinity=1"),
        "systemd/{unit}: the drop-in example sets no CPUAffinity=:\n{out}"
    );
    out
}

/// (soft, hard) of one row of /proc/PID/limits; None for "unlimited".
fn limit(limits: &str, row: &str) -> (Option<u64>, Option<u64>) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("{row} in {limits}"));
    let mut f = line[row.len()..].split_whitespace().map(|v| v.parse().ok());
    (f.next().flatten(), f.next().flatten())
}

#[test]
fn packaged_unit_under_real_systemd() {
    let t0 = Instant::now();
    let mut boot = Boot::start();
    let phase = |what: &str| eprintln!("[{:>5.1} s] {what}", t0.elapsed().as_secs_f64());

    // --- Install as the package does --------------------------------------------------
    let bin = std::fs::read(env!("CARGO_BIN_EXE_ingestd")).unwrap();
    boot.write("usr/bin/ingestd", &bin);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        boot.root("usr/bin/ingestd"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for unit in ["ingestd.service", "ingestd@.service"] {
        let text = std::fs::read(repo().join("systemd").join(unit)).unwrap();
        boot.write(&format!("usr/lib/systemd/system/{unit}"), &text);
    }
    let config = std::fs::read(repo().join("packaging/ingestd.toml")).unwrap();
    boot.write("etc/ingestd/ingestd.toml", &config);
    let postinst = std::fs::read(repo().join("packaging/debian/postinst")).unwrap();
    boot.write("tmp/ingestd.postinst", &postinst);
    let out = boot.exec(LONG, &["sh", "-e", "/tmp/ingestd.postinst", "configure"]);
    assert!(out.status.success(), "postinst configure: {}", text(&out));
    let out = boot.exec(
        LONG,
        &["stat", "-c", "%U:%G %a", "/etc/ingestd/ingestd.toml"],
    );
    assert_eq!(
        text(&out).trim(),
        "root:ingestd 640",
        "the postinst makes the config root:ingestd 0640"
    );

    // Limits below this machine's caps (without CAP_SYS_RESOURCE systemd cannot raise a
    // hard limit: the unit's own values would be clamped), a short watchdog, no cores.
    let caps = std::fs::read_to_string(format!("/proc/{}/limits", boot.pid)).unwrap();
    let nofile_cap = limit(&caps, "Max open files").1.unwrap_or(u64::MAX);
    let memlock_cap = limit(&caps, "Max locked memory").1.unwrap_or(u64::MAX);
    let nofile = (nofile_cap / 2).min(8192);
    let memlock = (memlock_cap / 2).min(4 << 20);
    assert!(
        nofile >= 1024 && memlock >= 1 << 20,
        "this machine's hard limits are too low to run ingestd (open files {nofile_cap}, \
         locked memory {memlock_cap}); run the test from tests/run.sh (ulimit -l unlimited)"
    );
    boot.write(
        &format!("{DROPINS}/10-test.conf"),
        format!(
            "[Service]\nWatchdogSec={WATCHDOG_SECS}s\nLimitNOFILE={nofile}\n\
             LimitMEMLOCK={memlock}\nLimitCORE=0\n"
        )
        .as_bytes(),
    );
    let cpu_dropin = documented_cpu_dropin("ingestd.service", |l| l.trim_end() == "#   [Service]");
    boot.write(&format!("{DROPINS}/20-cpu.conf"), cpu_dropin.as_bytes());
    // First without a spool, the broker down: READY=1 waits for the broker, so the start
    // times out (and is not restarted, so that its result stays to be read).
    let nospool = format!("{DROPINS}/30-nospool.conf");
    boot.write(
        &nospool,
        format!(
            "[Service]\nEnvironment=INGESTD_SPOOL_DIR=\nTimeoutStartSec={NOSPOOL_START_SECS}s\n\
             Restart=no\n"
        )
        .as_bytes(),
    );
    boot.ctl_ok(&["daemon-reload"]);
    phase("installed");

    // --- No spool, broker down: the start does not succeed ----------------------------
    let s = Instant::now();
    let out = boot.ctl(&["start", "ingestd"]);
    let took = s.elapsed();
    let result = boot.prop("Result");
    assert!(
        !out.status.success() && result == "timeout",
        "without a spool and with the broker down, `systemctl start` must fail by \
         TimeoutStartSec={NOSPOOL_START_SECS}s (READY=1 waits for broker metadata); it \
         returned {} after {took:?}, Result={result}: {}\n{}",
        out.status,
        text(&out),
        boot.journal()
    );
    assert!(
        took >= Duration::from_secs(NOSPOOL_START_SECS - 1),
        "the spool-less start failed after {took:?}, before its timeout: {}",
        boot.journal()
    );
    std::fs::remove_file(boot.root(&nospool)).unwrap();
    boot.ctl_ok(&["daemon-reload"]);
    boot.ctl_ok(&["reset-failed", "ingestd"]);
    phase("spool-less start timed out with the broker down");

    // --- Packaged config (spool on), broker down: start succeeds, after READY=1 -------
    let s = Instant::now();
    boot.ctl_ok(&["start", "ingestd"]);
    let took = s.elapsed();
    // Asked the moment start returned, once each: no waiting.
    let state = boot.active();
    let ready = boot.get("/readyz");
    assert_eq!(
        state, "active",
        "`systemctl start` returned ({took:?}) before the unit was active (READY=1)"
    );
    let ready = ready.unwrap_or_else(|e| {
        panic!("GET /readyz right after `systemctl start` returned: {e}; READY=1 came too early")
    });
    assert_eq!(
        ready.status,
        200,
        "GET /readyz right after `systemctl start` returned: {}",
        ready.text()
    );
    let status = boot.prop("StatusText");
    assert!(
        status.contains("broker DOWN"),
        "STATUS= after a start with the broker down: {status}"
    );
    // The spool takes records while the broker is away: that is why READY=1 did not wait.
    let durable = boot.post("outage-durable", "durable");
    assert_eq!(
        durable.status,
        201,
        "ack=durable, broker down: {}",
        durable.text()
    );
    let queued = boot.post("outage-queued", "queued");
    assert_eq!(
        queued.status,
        202,
        "ack=queued, broker down: {}",
        queued.text()
    );
    phase(&format!("started with the broker down in {took:?}"));

    // --- The broker comes up -----------------------------------------------------------
    boot.start_broker();
    wait_for(
        "STATUS= says `broker up` once the broker runs",
        LONG,
        || boot.prop("StatusText").contains("broker up"),
        || boot.prop("StatusText"),
    );
    phase("broker up");

    // --- systemctl status shows ingestd's STATUS= line ---------------------------------
    let status_text = boot.prop("StatusText");
    let status = text(&boot.ctl(&["status", "--no-pager", "ingestd"]));
    let line = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("Status: \""))
        .unwrap_or_else(|| panic!("`systemctl status ingestd` has no Status: line:\n{status}"));
    for part in [
        " req/s, ",
        " records queued, ",
        " connections, broker ",
        " delivered, ",
        " failed",
        ", spool ",
    ] {
        assert!(
            line.contains(part),
            "`systemctl status` Status: line is not ingestd's STATUS= ({part:?} missing): \
             {line}\n(StatusText: {status_text})"
        );
    }

    // --- Limits and CPU placement from the drop-ins ------------------------------------
    let pid = boot.main_pid();
    let proc_dir = boot.root(&format!("proc/{pid}"));
    let limits = std::fs::read_to_string(proc_dir.join("limits")).unwrap();
    assert_eq!(
        limit(&limits, "Max open files"),
        (Some(nofile), Some(nofile)),
        "LimitNOFILE={nofile} from the drop-in is not in force:\n{limits}"
    );
    assert_eq!(
        limit(&limits, "Max locked memory"),
        (Some(memlock), Some(memlock)),
        "LimitMEMLOCK={memlock} from the drop-in is not in force:\n{limits}"
    );
    let unpinned = boot.unpinned_threads(pid);
    assert!(
        unpinned.iter().all(|(_, c)| c == "1"),
        "the drop-in documented in systemd/ingestd.service (CPU list set to 1):\n{cpu_dropin}\
         does not narrow the unpinned threads to CPU 1: {unpinned:?}"
    );
    phase("limits and CPU affinity in force");

    // --- The produce path --------------------------------------------------------------
    let acked = boot.post("acked-by-kafka", "kafka");
    assert_eq!(acked.status, 200, "ack=kafka: {}", acked.text());
    let values = boot.topic_values(3);
    for v in ["outage-durable", "outage-queued", "acked-by-kafka"] {
        assert!(
            values.iter().any(|x| x == v),
            "{v:?} is not on topic {TOPIC}: {values:?}"
        );
    }
    phase("records in the broker");

    // --- Reload keeps the process --------------------------------------------------------
    boot.ctl_ok(&["reload", "ingestd"]);
    assert_eq!(
        boot.main_pid(),
        pid,
        "`systemctl reload ingestd` replaced the main process"
    );
    assert_eq!(boot.active(), "active", "after reload");
    wait_for(
        "ingestd logs the SIGHUP of `systemctl reload`",
        LONG,
        || {
            boot.journal()
                .contains("SIGHUP: tenants, tokens, JWT keys and schemas reloaded")
        },
        || boot.journal(),
    );
    phase("reload kept the main process");

    // --- The watchdog: a stopped process is aborted and restarted -----------------------
    let s = Instant::now();
    boot.ctl_ok(&["kill", "-s", "SIGSTOP", "ingestd"]);
    let mut new_pid = 0;
    wait_for(
        "systemd aborts the stopped ingestd (WatchdogSec) and restarts it",
        LONG,
        || {
            new_pid = boot.main_pid();
            new_pid != 0 && new_pid != pid && boot.active() == "active"
        },
        || format!("{}\n{}", boot.prop("ActiveState"), boot.journal()),
    );
    let took = s.elapsed();
    let journal = boot.journal();
    assert!(
        journal.contains("Watchdog timeout") && journal.contains("status=6/ABRT"),
        "the restart after SIGSTOP was not the watchdog's SIGABRT:\n{journal}"
    );
    assert!(
        took >= Duration::from_secs(WATCHDOG_SECS),
        "restarted {took:?} after SIGSTOP, before WatchdogSec={WATCHDOG_SECS}s"
    );
    assert_eq!(boot.prop("NRestarts"), "1", "one restart, by the watchdog");
    phase(&format!(
        "watchdog: pid {pid} aborted, pid {new_pid} active {took:?} after SIGSTOP"
    ));

    // --- Stop flushes and exits 0 ------------------------------------------------------
    let last = boot.post("queued-before-stop", "queued");
    assert_eq!(
        last.status,
        202,
        "ack=queued before the stop: {}",
        last.text()
    );
    boot.ctl_ok(&["stop", "ingestd"]);
    let show = boot.ctl_ok(&["show", "-p", "ExecMainStatus,Result", "ingestd"]);
    let mut show: Vec<&str> = show.lines().collect();
    show.sort();
    assert_eq!(
        show,
        ["ExecMainStatus=0", "Result=success"],
        "`systemctl stop ingestd`: exit status and result\n{}",
        boot.journal()
    );
    let values = boot.topic_values(4);
    assert!(
        values.iter().any(|v| v == "queued-before-stop"),
        "the ack=queued record sent right before `systemctl stop` is not in the broker \
         after the stop (not flushed): {values:?}\n{}",
        boot.journal()
    );
    phase("stopped: exit 0, flushed");

    // --- The template: an instance with its own config and the documented drop-in -----
    let instance = "ingestd@edge-a";
    let config = String::from_utf8(config).unwrap();
    let packaged_spool = r#"spool_dir = "/var/lib/ingestd/spool""#;
    assert_eq!(
        config.matches(packaged_spool).count(),
        1,
        "{packaged_spool}"
    );
    let config = config.replace(
        packaged_spool,
        r#"spool_dir = "/var/lib/ingestd/edge-a/spool""#,
    );
    boot.write("etc/ingestd/edge-a.toml", config.as_bytes());
    let instance_dropin = documented_cpu_dropin("ingestd@.service", |l| {
        l.contains("systemctl edit ingestd@edge-a") && l.trim_end().ends_with("[Service]")
    });
    boot.write(
        "etc/systemd/system/ingestd@edge-a.service.d/override.conf",
        instance_dropin.as_bytes(),
    );
    boot.write(
        "etc/systemd/system/ingestd@edge-a.service.d/10-test.conf",
        format!("[Service]\nLimitNOFILE={nofile}\nLimitMEMLOCK={memlock}\nLimitCORE=0\n")
            .as_bytes(),
    );
    boot.ctl_ok(&["daemon-reload"]);
    boot.ctl_ok(&["start", instance]);
    assert_eq!(
        text(&boot.ctl(&["is-active", instance])).trim(),
        "active",
        "{instance} after start"
    );
    let ready = boot.get("/readyz").map(|r| r.status);
    assert_eq!(ready.ok(), Some(200), "{instance}: GET /readyz after start");
    let ipid: u32 = boot.prop_of(instance, "MainPID").parse().unwrap();
    let unpinned = boot.unpinned_threads(ipid);
    assert!(
        unpinned.iter().all(|(_, c)| c == "1"),
        "the drop-in documented in systemd/ingestd@.service (CPU lists set to 1):\n\
         {instance_dropin}does not narrow the unpinned threads to CPU 1: {unpinned:?}"
    );
    let out = boot.exec(LONG, &["stat", "-c", "%U", "/var/lib/ingestd/edge-a/spool"]);
    assert_eq!(
        text(&out).trim(),
        "ingestd",
        "{instance}: its spool in its StateDirectory=ingestd/%i"
    );
    let rec = boot.post("instance-record", "queued");
    assert_eq!(rec.status, 202, "{instance}: {}", rec.text());
    boot.ctl_ok(&["stop", instance]);
    let show = boot.ctl_ok(&["show", "-p", "ExecMainStatus,Result", instance]);
    let mut show: Vec<&str> = show.lines().collect();
    show.sort();
    assert_eq!(
        show,
        ["ExecMainStatus=0", "Result=success"],
        "{instance} stop"
    );
    let values = boot.topic_values(5);
    assert!(
        values.iter().any(|v| v == "instance-record"),
        "{instance}: its record is not in the broker after the stop: {values:?}"
    );
    phase("template instance: drop-in, StateDirectory, stop");

    let problems = boot.shutdown();
    assert!(problems.is_empty(), "cleanup: {problems:#?}");
    phase("powered off, cleaned up");
    let _ = std::io::stderr().flush();
}
