//! Prometheus against ingestd: the shipped alert rules
//! (packaging/prometheus/ingestd-alerts.yml) pass `promtool check rules` and their unit
//! tests, and a real Prometheus scrapes a real ingestd (with a spool, after answers of
//! several kinds): the target is up, every series of /metrics arrives as sent, promtool's
//! linter finds nothing wrong with the text, every metric the rules name is exported,
//! and the rules evaluate without errors against that data (and raise nothing).
//!
//! Needs `prometheus` and `promtool` from Debian's `prometheus` package (tests/deps.sh
//! installs it); without them the tests fail, they never skip.

mod common;

use common::http::{post, Client};
use common::{broker, repo, Ingestd};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RULES: &str = "packaging/prometheus/ingestd-alerts.yml";
const RULE_TESTS: &str = "packaging/prometheus/ingestd-alerts.test.yml";

/// A binary of Debian's `prometheus` package, from PATH. Missing: the test fails.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: it comes with the Debian package `prometheus` \
                 (tests/deps.sh installs it when tests/run.sh runs as root; or: \
                 apt-get install --no-install-recommends prometheus)"
            )
        })
}

fn show(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The alert names of the shipped rules file, in file order.
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(RULES)).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool");
    let n = alert_names().len();
    assert!(n >= 10, "only {n} alerts found in {RULES}");

    let out = Command::new(&promtool)
        .args(["check", "rules", RULES])
        .current_dir(repo())
        .output()
        .expect("run promtool");
    eprintln!("promtool check rules {RULES}:\n{}", show(&out));
    assert!(out.status.success(), "promtool check rules failed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("SUCCESS: {n} rules found")),
        "promtool did not find the {n} alerts of {RULES}"
    );

    // rule_files in the test file are relative to it.
    let dir = repo().join(RULE_TESTS);
    let out = Command::new(&promtool)
        .args(["test", "rules", dir.file_name().unwrap().to_str().unwrap()])
        .current_dir(dir.parent().unwrap())
        .output()
        .expect("run promtool");
    eprintln!("promtool test rules {RULE_TESTS}:\n{}", show(&out));
    assert!(out.status.success(), "promtool test rules failed");
}

/// Each alert of the rules file has a unit test where it fires and one where it does not
/// (`exp_alerts: []`), so a new rule cannot ship untested.
#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let tests = std::fs::read_to_string(repo().join(RULE_TESTS)).unwrap();
    let lines: Vec<&str> = tests
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for (i, l) in lines.iter().enumerate() {
        let Some(name) = l.strip_prefix("alertname:") else {
            continue;
        };
        let next = lines.get(i + 1).copied().unwrap_or("");
        match next {
            "exp_alerts: []" => quiet.insert(name.trim().to_string()),
            "exp_alerts:" => fires.insert(name.trim().to_string()),
            other => panic!("after `alertname: {name}` expected exp_alerts, got {other:?}"),
        };
    }
    for a in alert_names() {
        assert!(fires.contains(&a), "{a}: no unit test where it fires");
        assert!(quiet.contains(&a), "{a}: no unit test where it stays quiet");
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ingestd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over HTTP/1.0 (so the answer is never chunked), read to the end.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Percent-encoding for a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns Ok; fails with its last Err after `timeout`.
fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if t0.elapsed() > timeout => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A Prometheus server scraping one ingestd every second, with the shipped rules loaded.
/// Dropping it stops it (SIGTERM, then SIGKILL) and removes its data.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// Its configuration, data and log; removed after it stopped.
    _dir: Option<TempDir>,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: ingestd\n    static_configs:\n      - targets: ['{target}']\n",
                repo().join(RULES).display()
            ),
        )
        .unwrap();
        let log = dir.0.join("prometheus.log");
        // A free port can be taken by someone else before Prometheus binds it: try again.
        for attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn prometheus");
            let mut p = Prometheus {
                child,
                addr,
                log: log.clone(),
                _dir: None,
            };
            let t0 = Instant::now();
            loop {
                if let Some(st) = p.child.try_wait().unwrap() {
                    let text = p.log_text();
                    if text.contains("address already in use") && attempt < 4 {
                        break;
                    }
                    panic!("prometheus exited at start ({st}):\n{text}");
                }
                if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                    p._dir = Some(dir);
                    return p;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "prometheus not ready in 120 s:\n{}",
                    p.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `data` of a successful API answer.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.addr, path).map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("GET {path}: {status} {body}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let d = self.api(&format!("/api/v1/query?query={}", enc(q)))?;
        Ok(d["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("prometheus log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
}

/// One sample line of the text format: `name{labels} value`, labels sorted, `le`
/// normalized as a number (Prometheus 3 rewrites `le="1"` as `le="1.0"`).
type Series = (String, BTreeMap<String, String>);

fn norm_le(v: &str) -> String {
    match v {
        "+Inf" => "+Inf".into(),
        _ => v.parse::<f64>().map_or(v.to_string(), |f| f.to_string()),
    }
}

fn parse_sample(line: &str) -> Series {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("not a sample line: {line:?}"),
    };
    let mut labels = BTreeMap::new();
    if let Some(rest) = rest.strip_prefix('{') {
        let mut chars = rest.chars();
        loop {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            let key = key.trim_start_matches(',').trim().to_string();
            if key.is_empty() || key.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "label {key} of {line:?}");
            let mut val = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => val.push('\n'),
                        Some(c) => val.push(c),
                        None => break,
                    },
                    '"' => break,
                    c => val.push(c),
                }
            }
            let val = if key == "le" { norm_le(&val) } else { val };
            labels.insert(key, val);
            let rest: String = chars.clone().collect();
            if rest.starts_with('}') {
                break;
            }
        }
    }
    (name.to_string(), labels)
}

/// The sample lines of an OpenMetrics text (no comments, no `# EOF`).
fn samples(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_sample)
        .collect()
}

fn show_series((name, labels): &Series) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// The ingestd series Prometheus stored for the job (target labels and Prometheus's own
/// scrape series left out).
fn stored_series(p: &Prometheus) -> Result<BTreeSet<Series>, String> {
    let d = p.api(&format!(
        "/api/v1/series?match[]={}",
        enc(r#"{job="ingestd"}"#)
    ))?;
    let own = [
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    ];
    let mut out = BTreeSet::new();
    for s in d.as_array().cloned().unwrap_or_default() {
        let mut name = String::new();
        let mut labels = BTreeMap::new();
        for (k, v) in s.as_object().unwrap() {
            let v = v.as_str().unwrap().to_string();
            match k.as_str() {
                "__name__" => name = v,
                "job" | "instance" => {}
                "le" => {
                    labels.insert(k.clone(), norm_le(&v));
                }
                _ => {
                    labels.insert(k.clone(), v);
                }
            }
        }
        if !own.contains(&name.as_str()) {
            out.insert((name, labels));
        }
    }
    Ok(out)
}

/// The `ingestd_*` words of a text: metric names in rule expressions, annotations and
/// comments.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ingestd_") {
        let start = i + at;
        let word_before =
            start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if !word_before {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Sends answers of several kinds; returns how many records were accepted.
fn send_requests(addr: SocketAddr) -> usize {
    let mut c = Client::connect(addr).unwrap();
    let mut records = 0;
    for (ack, status) in [("queued", 202), ("durable", 201), ("kafka", 200)] {
        let body = format!("{{\"ack\":\"{ack}\"}}");
        let r = c
            .request(&post("/", body.as_bytes(), &[("Kafka-Ack", ack)]))
            .unwrap();
        assert_eq!(r.status, status, "Kafka-Ack: {ack}: {}", r.text());
        records += 1;
    }
    let r = c
        .request(&post(
            "/",
            b"{\"line\":1}\n{\"line\":2}\n",
            &[("Content-Type", "application/x-ndjson")],
        ))
        .unwrap();
    assert_eq!(r.status, 202, "NDJSON: {}", r.text());
    records += 2;
    for (req, status) in [
        ("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        ("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        ("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 404),
        (
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        (
            "POST / HTTP/1.1\r\nHost: t\r\nKafka-Ack: maybe\r\nContent-Length: 0\r\n\r\n",
            400,
        ),
    ] {
        let r = c.request(req.as_bytes()).unwrap();
        assert_eq!(r.status, status, "{req:?}: {}", r.text());
    }
    // Larger than max_body_bytes: refused on its head (only the head is sent, so the
    // close that follows cannot reset the connection under an unread body).
    let mut c = Client::connect(addr).unwrap();
    let r = c
        .request(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    records
}

#[test]
fn prometheus_scrapes_ingestd_and_evaluates_the_alert_rules() {
    let t_start = Instant::now();
    let promtool = tool("promtool");
    tool("prometheus");
    let b = broker();
    let topic = b.topic("prom", 1);
    let spool = TempDir::new("prom-spool");
    let ing = Ingestd::start_env(
        &[
            "--brokers",
            &b.addr,
            "--default-topic",
            &topic,
            "--executors",
            "2",
            "--spool-dir",
            spool.0.to_str().unwrap(),
        ],
        &[
            // Small segments: less to preallocate on a slow disk.
            ("INGESTD_SPOOL_SEGMENT_BYTES", "1048576"),
            ("INGESTD_SPOOL_MAX_BYTES", "16777216"),
            ("INGESTD_MAX_BODY_BYTES", "65536"),
        ],
    );
    // With a spool /readyz does not wait for the broker; ack=kafka below does.
    poll("broker metadata", Duration::from_secs(60), || {
        let up = ing.metric("ingestd_broker_up", "");
        (up == 1.0)
            .then_some(())
            .ok_or(format!("ingestd_broker_up {up}"))
    });
    let records = send_requests(ing.addr);
    poll("records delivered", Duration::from_secs(60), || {
        let n = ing.metric("ingestd_records_delivered_total", "");
        (n >= records as f64)
            .then_some(())
            .ok_or(format!("{n} of {records}"))
    });

    let prom = Prometheus::start(ing.addr);
    eprintln!(
        "prometheus on {} scraping ingestd on {}",
        prom.addr, ing.addr
    );

    // 1. The target is up, and its last scrape had no error.
    let target = poll("target up", Duration::from_secs(60), || {
        let d = prom.api("/api/v1/targets?state=active")?;
        let t = d["activeTargets"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["labels"]["job"] == "ingestd"))
            .cloned()
            .ok_or(format!("no ingestd target: {d}"))?;
        (t["health"] == "up" && t["lastError"] == "")
            .then_some(t.clone())
            .ok_or(format!("{t}"))
    });
    eprintln!(
        "target {} health {} lastError {:?} scrapeUrl {}",
        target["labels"]["instance"], target["health"], target["lastError"], target["scrapeUrl"]
    );

    // 2. Every series of the text is stored as sent (name, labels), and nothing else.
    let text = ing.metrics_text();
    assert!(
        text.contains("ingestd_spool_bytes{"),
        "no spool metrics with spool_dir set:\n{text}"
    );
    let sent: BTreeSet<Series> = samples(&text).into_iter().collect();
    assert_eq!(
        sent.len(),
        samples(&text).len(),
        "a series appears twice in /metrics:\n{text}"
    );
    poll(
        "every series of /metrics in Prometheus",
        Duration::from_secs(60),
        || {
            let stored = stored_series(&prom)?;
            let missing: Vec<String> = sent.difference(&stored).map(show_series).collect();
            missing
                .is_empty()
                .then_some(())
                .ok_or(format!("not in Prometheus: {missing:#?}"))
        },
    );
    let stored = stored_series(&prom).unwrap();
    // Series only ever appear (a status code's on its first answer), so what Prometheus
    // stored from earlier scrapes is all in a text taken now.
    let later: BTreeSet<Series> = samples(&ing.metrics_text()).into_iter().collect();
    let extra: Vec<String> = stored.difference(&later).map(show_series).collect();
    assert!(
        extra.is_empty(),
        "Prometheus has series ingestd does not show: {extra:#?}"
    );
    eprintln!(
        "{} series in /metrics, all stored by Prometheus as sent",
        sent.len()
    );

    // 3. scrape_samples_scraped = the sample lines of /metrics (the set of series stops
    //    growing once each executor answered a scrape).
    let n = poll(
        "scrape_samples_scraped = sample lines of /metrics",
        Duration::from_secs(60),
        || {
            let before = samples(&ing.metrics_text()).len();
            let r = prom.query(r#"scrape_samples_scraped{job="ingestd"}"#)?;
            let scraped: f64 = r
                .first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|v| v.parse().ok())
                .ok_or(format!("no scrape_samples_scraped: {r:?}"))?;
            let after = samples(&ing.metrics_text()).len();
            (before == after && scraped == after as f64)
                .then_some(after)
                .ok_or(format!("scraped {scraped}, text {before} then {after}"))
        },
    );
    eprintln!("scrape_samples_scraped = {n} = sample lines of /metrics");

    // 4. promtool's linter. Errors (text it cannot parse) fail. promtool 2.42 lints with
    //    the classic text parser, which does not know that an OpenMetrics counter family
    //    `x` (HELP and TYPE lines) has its sample named `x_total`: it reports "no help
    //    text" for every counter. That one lint is accepted where the OpenMetrics HELP
    //    and TYPE counter lines exist; any other lint fails the test (a metric without
    //    help, a bad name or unit suffix, a counter without _total would all show here).
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("promtool check metrics:\n{}", show(&out));
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(3),
        "promtool check metrics: errors, not only lints:\n{}",
        show(&out)
    );
    let lints =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut explained = 0;
    for l in lints.lines().filter(|l| !l.trim().is_empty()) {
        let ok = l.strip_suffix(" no help text").is_some_and(|name| {
            name.strip_suffix("_total").is_some_and(|family| {
                text.contains(&format!("# HELP {family} "))
                    && text.contains(&format!("# TYPE {family} counter\n"))
            })
        });
        assert!(ok, "promtool check metrics: {l}");
        explained += 1;
    }
    assert_eq!(
        code == Some(3),
        explained > 0,
        "lint exit status without lint lines"
    );
    eprintln!(
        "promtool check metrics: no errors; {explained} \"no help text\" lints, one per \
         OpenMetrics counter (promtool's classic-format parser), accepted"
    );

    // 5. Every ingestd metric the rules name (expressions, annotations, comments) is in
    //    /metrics: a renamed metric fails here.
    let rules_text = std::fs::read_to_string(repo().join(RULES)).unwrap();
    let used = metric_words(&rules_text);
    let exported: BTreeSet<String> = sent.iter().map(|(n, _)| n.clone()).collect();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules name metrics ingestd does not export: {unknown:?}\nexported: {exported:#?}"
    );
    assert!(used.len() >= 15, "only {used:?} found in {RULES}");
    eprintln!("all {} metrics named in the rules are exported", used.len());

    // 6. The rules, loaded by this Prometheus, evaluate without errors on this data: two
    //    evaluations after every series was stored, then every rule's health is "ok".
    let names = alert_names();
    let group_eval = || -> Result<String, String> {
        let d = prom.api("/api/v1/rules")?;
        let g = &d["groups"][0];
        Ok(g["lastEvaluation"].as_str().unwrap_or("").to_string())
    };
    let mut seen = BTreeSet::new();
    seen.insert(group_eval().unwrap());
    poll("two rule evaluations", Duration::from_secs(60), || {
        seen.insert(group_eval()?);
        (seen.len() >= 3)
            .then_some(())
            .ok_or(format!("evaluations seen: {seen:?}"))
    });
    let d = prom.api("/api/v1/rules").unwrap();
    let rules: Vec<Value> = d["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let loaded: Vec<String> = rules
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(loaded, names, "rules Prometheus loaded");
    for r in &rules {
        assert_eq!(r["type"], "alerting", "{r}");
        assert!(
            r["health"] == "ok" && r["lastError"].as_str().unwrap_or("").is_empty(),
            "rule {} does not evaluate: health {}, error {}\n{}",
            r["name"],
            r["health"],
            r["lastError"],
            r["query"]
        );
    }
    eprintln!(
        "{} rules loaded, every one evaluates with health ok",
        rules.len()
    );

    // 7. A healthy ingestd raises nothing: no rule misreads healthy data. Exempt are the
    //    alerts whose condition a slow machine or the shared test broker can make true
    //    for a moment (a scrape over its 1 s timeout, a slow fdatasync, a broker
    //    hiccup); those can only be pending here anyway, or say the broker's trouble.
    let exempt = [
        "IngestdDown",
        "IngestdSpoolSyncSlow",
        "IngestdBrokerDown",
        "IngestdProducerRebuilt",
        "IngestdKafkaAckTimeouts",
    ];
    let d = prom.api("/api/v1/alerts").unwrap();
    for a in d["alerts"].as_array().unwrap() {
        eprintln!("active alert: {a}");
        let name = a["labels"]["alertname"].as_str().unwrap_or("");
        assert!(
            exempt.contains(&name),
            "a healthy ingestd raised {name}: {a}"
        );
    }
    eprintln!("took {:?}", t_start.elapsed());
}

#[test]
fn the_sample_parser_reads_labels_and_normalizes_le() {
    let (n, l) = parse_sample(r#"a_bucket{executor="0",le="1.0"} 3"#);
    assert_eq!(n, "a_bucket");
    assert_eq!(l["executor"], "0");
    assert_eq!(l["le"], "1");
    let (n, l) = parse_sample(r#"b{x="q\"}",y=""} 1"#);
    assert_eq!(n, "b");
    assert_eq!(l["x"], "q\"}");
    assert_eq!(l["y"], "");
    let (n, l) = parse_sample("c_total 7");
    assert_eq!((n.as_str(), l.len()), ("c_total", 0));
    assert_eq!(
        metric_words("expr: rate(ingestd_a_total[5m]) / ingestd_b # xingestd_c"),
        ["ingestd_a_total", "ingestd_b"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}
