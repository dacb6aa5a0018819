//! A real browser as the client: headless Chromium loads a page from another origin (a
//! second port of 127.0.0.1) that posts to ingestd with `fetch` (JSON, so the browser
//! sends a CORS preflight first) and `navigator.sendBeacon` (text/plain, a simple
//! request). Raw-HTTP tests show what ingestd answers; only a browser shows that those
//! answers are the ones a browser accepts. Records are read back from tansu and compared
//! exactly; a page whose origin is not listed must be refused by the browser itself.
//! Needs the Debian package `chromium` (.ci/run installs it).

mod common;

use common::{broker, read_topic, wait_until, Ingestd, Rec};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "chromium";
/// Chromium's start-up plus the page's requests; a few seconds on a 2-core machine.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);

/// Answers GET / with `page` (and GET /token with `token`, as a login endpoint would)
/// and hands every body POSTed to /done to the receiver. One thread per connection:
/// Chromium opens speculative connections that may never send a request, and those must
/// not block the page's own.
fn serve_page(listener: TcpListener, page: String, token: String) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let (page, token, tx) = (page.clone(), token.clone(), tx.clone());
            std::thread::spawn(move || answer(s, &page, &token, &tx));
        }
    });
    rx
}

/// One request per connection (answered with `connection: close`), so no keep-alive
/// bookkeeping is needed.
fn answer(mut s: TcpStream, page: &str, token: &str, done: &mpsc::Sender<String>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, path, body) = loop {
        let Ok(n @ 1..) = s.read(&mut chunk) else {
            return;
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
            continue;
        };
        let len: usize = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .unwrap_or(0);
        if buf.len() >= head + len {
            let body = String::from_utf8_lossy(&buf[head..head + len]).into_owned();
            break (
                req.method.unwrap().to_string(),
                req.path.unwrap().to_string(),
                body,
            );
        }
    };
    let (status, ctype, out) = match (method.as_str(), path.as_str()) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", page),
        ("GET", "/token") => ("200 OK", "text/plain", token),
        ("POST", "/done") => {
            let _ = done.send(body);
            ("200 OK", "text/plain", "thanks")
        }
        _ => ("404 Not Found", "text/plain", "no"),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{out}",
        out.len()
    );
}

/// Headless Chromium in its own process group with a fresh profile; dropping it kills the
/// whole group (renderers, GPU and network processes) and removes the profile, also
/// when an assertion failed.
struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Browser {
    fn open(url: &str, ports: &[u16]) -> Browser {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ingestd-browser-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let spawned = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-crash-reporter",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            // Chromium refuses some ports outright (ERR_UNSAFE_PORT); ephemeral ports are
            // not among them today, but a refused port must not look like a CORS failure.
            .arg(format!("--explicitly-allowed-ports={}", ports.join(",")))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn();
        let child = spawned.unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                e.kind() != ErrorKind::NotFound,
                "`{CHROMIUM}` is not installed: this test needs a real browser, install the \
                 Debian package `chromium` (apt-get install chromium; .ci/run does)"
            );
            panic!("cannot start {CHROMIUM}: {e}")
        });
        Browser { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }

    /// Waits for the page's report, failing early if Chromium died.
    fn wait_report(&mut self, reports: &mpsc::Receiver<String>) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            match reports.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => return serde_json::from_str(&r).expect("report is JSON"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("page server: {e}"),
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "chromium exited ({st}) before the page reported:\n{}",
                    self.log()
                );
            }
            assert!(
                t0.elapsed() < PAGE_DEADLINE,
                "no report from the page within {PAGE_DEADLINE:?}; chromium log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of the child this test started (its pid
        // is the group id, set by process_group(0)).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The page: fetches one at a time (each answer checked), then the beacons, then a fetch
/// to the ingestd that does not list this origin, then the report to /done. Bodies are
/// JSON string literals, so the bytes sent are exactly the test's.
fn page(allowed: &str, denied: &str, fetches: &[(&str, &str)], beacons: &[&str]) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>ingestd browser test</title>
<script>
const allowed = {allowed}, denied = {denied}, fetches = {fetches}, beacons = {beacons};
const post = (url, key, body) => fetch(url, {{method: "POST", body,
  headers: Object.assign({{"Content-Type": "application/json"}}, key ? {{"Kafka-Key": key}} : {{}})}});
async function run() {{
  const r = {{fetch: [], beacon: []}};
  for (const [key, body] of fetches) {{
    try {{
      const a = await post(allowed, key, body);
      r.fetch.push({{status: a.status, type: a.type, body: await a.text()}});
    }} catch (e) {{ r.fetch.push({{error: e.name + ": " + e.message}}); }}
  }}
  for (const b of beacons) r.beacon.push(navigator.sendBeacon(allowed, b));
  try {{
    const a = await post(denied, null, '{{"event":"denied"}}');
    r.denied = {{status: a.status}};
  }} catch (e) {{ r.denied = {{error: e.name}}; }}
  return r;
}}
const report = r => fetch("/done", {{method: "POST", body: JSON.stringify(r)}});
run().then(report, e => report({{crash: String(e)}}));
</script>"#,
        allowed = js(allowed),
        denied = js(denied),
        fetches = js(fetches),
        beacons = js(beacons),
    )
}

/// A JSON literal for the page's script (serde_json is already ingestd's dependency).
fn js<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn chromium_fetch_and_beacon_from_another_origin_arrive_and_unlisted_origin_is_refused() {
    let b = broker();
    let topic = b.topic("browser", 1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let page_port = listener.local_addr().unwrap().port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let start = |origins: &str| {
        Ingestd::start_env(
            &["--brokers", &b.addr, "--topics", "*", "--executors", "1"],
            &[
                ("INGESTD_CORS_ORIGINS", origins),
                // The browser may not cache preflight answers, so every fetch asks again
                // and the count of preflights says which requests needed one.
                ("INGESTD_CORS_MAX_AGE_SECS", "0"),
                // Each record then carries the page's origin, as the browser sent it.
                ("INGESTD_FORWARD_HEADERS", "origin"),
            ],
        )
    };
    let ing = start(&origin);
    // CORS is on here, but for another origin only: the browser must refuse.
    let other = start("https://shop.example");
    let url = |d: &Ingestd| format!("http://{}/topics/{topic}", d.addr);

    // Kafka-Key is not a CORS-safelisted header: the fetches only go out if the preflight
    // answer allowed it, and the key proves the header arrived.
    let fetches = [
        ("user-1", r#"{"event":"view","n":1}"#),
        ("user-2", r#"{"event":"click","n":2,"text":"größe ✓"}"#),
        ("user-1", r#"{"event":"scroll","n":3,"depth":[0.25,0.5]}"#),
    ];
    let beacons = ["page-hidden n=4", "bye ✓ n=5"];
    let reports = serve_page(
        listener,
        page(&url(&ing), &url(&other), &fetches, &beacons),
        String::new(),
    );

    let t0 = Instant::now();
    let mut browser = Browser::open(
        &format!("{origin}/"),
        &[page_port, ing.addr.port(), other.addr.port()],
    );
    let report = browser.wait_report(&reports);
    eprintln!("page reported after {:?}: {report}", t0.elapsed());

    // Status 202 and type "cors" are only visible to the script when the answer carried
    // Access-Control-Allow-Origin for this origin; otherwise fetch rejects.
    let ok = serde_json::json!({"status": 202, "type": "cors", "body": ""});
    assert_eq!(report["fetch"], serde_json::json!([ok, ok, ok]), "{report}");
    assert_eq!(
        report["beacon"],
        serde_json::json!([true, true]),
        "{report}"
    );
    assert_eq!(
        report["denied"],
        serde_json::json!({"error": "TypeError"}),
        "the browser must refuse a fetch its origin is not allowed: {report}"
    );

    // Beacons are sent after the page moves on: wait for all answers.
    let sent = (fetches.len() + beacons.len()) as f64;
    wait_until("every fetch and beacon answered", PAGE_DEADLINE, || {
        ing.metric("ingestd_http_requests_total", "code=\"202\"") >= sent
    });
    let m = ing.metrics_text();
    let count = |text: &str, code: &str| {
        common::metric_sum(
            text,
            "ingestd_http_requests_total",
            &format!("code=\"{code}\""),
        )
    };
    // The preflight answer is the only 204 here.
    let preflights = |text: &str| count(text, "204");
    assert_eq!(count(&m, "202"), sent, "{m}");
    // One preflight per fetch (Access-Control-Max-Age: 0 forbids reuse) and none for the
    // beacons: text/plain makes them simple requests.
    assert_eq!(preflights(&m), fetches.len() as f64, "{m}");
    // The unlisted one got the preflight and nothing else: the POST never left the browser.
    let m = other.metrics_text();
    assert_eq!(preflights(&m), 1.0, "no preflight to the unlisted: {m}");
    assert_eq!(count(&m, "202"), 0.0, "{m}");
    assert_eq!(
        common::metric_sum(&m, "ingestd_records_enqueued_total", ""),
        0.0,
        "{m}"
    );
    drop(browser);

    // Text, so a mismatch reads as text; the expected values are valid UTF-8, so
    // lossy decoding cannot make a wrong record equal.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut got: Vec<_> = read_topic(
        &b.addr,
        &topic,
        1,
        fetches.len() + beacons.len(),
        Duration::from_secs(1),
    )
    .into_iter()
    .map(|r: Rec| {
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), text(v)))
            .collect();
        (r.key.as_deref().map(text), text(&r.value), headers)
    })
    .collect();
    got.sort();
    let origin_header = vec![("origin".to_string(), origin.clone())];
    let mut want: Vec<_> = fetches
        .iter()
        .map(|(k, v)| (Some(k.to_string()), v.to_string(), origin_header.clone()))
        .chain(
            beacons
                .iter()
                .map(|v| (None, v.to_string(), origin_header.clone())),
        )
        .collect();
    want.sort();
    // Exactly these: nothing lost, nothing twice, nothing from the refused fetch.
    assert_eq!(got, want);
}

/// A page that must not hold a shared secret: it gets a short-lived JWT from its own
/// origin (a login endpoint) and posts with it, CORS preflight and all. Without the token
/// the browser shows the page a 401 (the CORS headers are on error answers too).
#[test]
fn chromium_page_posts_with_a_jwt_it_fetched_and_is_401_without() {
    let b = broker();
    let topic = b.topic("browser-jwt", 1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let page_port = listener.local_addr().unwrap().port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let jwks = common::repo().join("tests/data/jwt/jwks.json");
    let cfg = std::env::temp_dir().join(format!("ingestd-browser-jwt-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            r#"
            cors_origins = ["{origin}"]
            [tenants.web]
            topics = ["{topic}"]
            [jwt]
            jwks_file = "{}"
            [[jwt.issuers]]
            issuer = "https://login.test"
            audiences = ["ingestd"]
            tenant = "web"
            "#,
            jwks.display()
        ),
    )
    .unwrap();
    let ing = Ingestd::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--brokers",
        &b.addr,
        "--executors",
        "1",
    ]);
    let claims = serde_json::json!({
        "iss": "https://login.test", "aud": "ingestd", "exp": common::jwt::now() + 300,
    });
    let token = common::jwt::sign("es256-a", &claims);
    let url = format!("http://{}/topics/{topic}", ing.addr);
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>ingestd jwt</title>
<script>
const url = {url};
async function run() {{
  const token = await (await fetch("/token")).text();
  const send = (auth, body) => fetch(url, {{method: "POST", body,
    headers: Object.assign({{"Content-Type": "application/json"}}, auth ? {{"Authorization": "Bearer " + auth}} : {{}})}});
  const r = {{}};
  const a = await send(token, '{{"event":"with-jwt"}}');
  r.with = {{status: a.status, type: a.type}};
  const b = await send(null, '{{"event":"without"}}');
  r.without = {{status: b.status, type: b.type, body: await b.text()}};
  return r;
}}
const report = r => fetch("/done", {{method: "POST", body: JSON.stringify(r)}});
run().then(report, e => report({{crash: String(e)}}));
</script>"#,
        url = js(&url),
    );
    let reports = serve_page(listener, page, token);
    let mut browser = Browser::open(&format!("{origin}/"), &[page_port, ing.addr.port()]);
    let report = browser.wait_report(&reports);
    drop(browser);
    assert_eq!(
        report["with"],
        serde_json::json!({"status": 202, "type": "cors"}),
        "{report}"
    );
    assert_eq!(report["without"]["status"], 401, "{report}");
    assert_eq!(report["without"]["type"], "cors", "{report}");
    let recs = read_topic(&b.addr, &topic, 1, 1, Duration::from_secs(2));
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].value, br#"{"event":"with-jwt"}"#);
    assert!(recs[0]
        .headers
        .iter()
        .any(|(k, v)| k == "ingestd-tenant" && v == b"web"));
    let _ = std::fs::remove_file(&cfg);
}
