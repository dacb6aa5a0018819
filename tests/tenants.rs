//! Tenants on the open internet, end to end against tansu: scoped tokens (403 outside the
//! scope, naming the topic), the tenant header every record carries (a forged one is
//! dropped), budgets held across executors and connections (429 with the real wait),
//! SIGHUP reloads, the admin listener, connection lifetimes and per-address limits.

mod common;

use common::http::{get, post, Client, Response};
use common::{broker, read_topic, wait_until, Ingestd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(cfg: &std::path::Path, topic: &str, executors: &str, env: &[(&str, &str)]) -> Ingestd {
    common::start_with_config(cfg, topic, executors, env)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn send(c: &mut Client, path: &str, body: &[u8], h: &[(&str, &str)]) -> Response {
    c.request(&post(path, body, h)).unwrap()
}

#[test]
fn a_tenant_writes_its_topics_and_gets_403_for_others_with_its_name_on_every_record() {
    let b = broker();
    let orders = b.topic("orders", 1);
    let logs = b.topic("logs.app", 1);
    let other = b.topic("other", 1);
    let cfg = common::temp_config(
        "scope",
        &format!(
            r#"
            forward_headers = ["x-trace", "ingestd-tenantx"]
            [tenants.acme]
            tokens = ["acme-secret"]
            topics = ["{orders}", "logs.app-*"]
            acks = ["queued"]
            max_body_bytes = 100
            [tenants.other]
            tokens = ["other-secret"]
            topics = ["{other}"]
            "#
        ),
    );
    let ing = start(&cfg, &orders, "1", &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    let acme = bearer("acme-secret");
    // Its own topics, exact and by prefix; a forged tenant header is dropped.
    let r = send(
        &mut c,
        &format!("/topics/{orders}"),
        b"o1",
        &[
            ("Authorization", &acme),
            ("ingestd-tenant", "evil"),
            ("X-Trace", "t1"),
        ],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = send(
        &mut c,
        &format!("/topics/{logs}"),
        b"l1",
        &[("Authorization", &acme)],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    // Another tenant's topic: 403 naming the topic and the tenant, the connection kept.
    let r = send(
        &mut c,
        &format!("/topics/{other}"),
        b"x",
        &[("Authorization", &acme)],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let body = r.text();
    assert!(
        body.contains(&format!("\"topic\":\"{other}\"")) && body.contains("\"tenant\":\"acme\""),
        "{body}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    // A contract it may not ask for: 403; a body over its own limit: 413.
    let r = send(
        &mut c,
        &format!("/topics/{orders}"),
        b"x",
        &[("Authorization", &acme), ("Kafka-Ack", "kafka")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("Kafka-Ack"), "{}", r.text());
    let r = send(
        &mut c,
        &format!("/topics/{orders}"),
        &[b'x'; 101],
        &[("Authorization", &acme)],
    );
    assert_eq!(r.status, 413, "{}", r.text());
    let mut c = Client::connect(ing.addr).unwrap();
    // No token, a wrong one: 401.
    assert_eq!(
        send(&mut c, &format!("/topics/{orders}"), b"x", &[]).status,
        401
    );
    let r = send(
        &mut c,
        &format!("/topics/{orders}"),
        b"x",
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    // The other tenant writes its own.
    let r = send(
        &mut c,
        &format!("/topics/{other}"),
        b"t1",
        &[("Authorization", &bearer("other-secret"))],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    // Kafka holds exactly the admitted records, each with its tenant's name.
    let recs = read_topic(&b.addr, &orders, 1, 1, Duration::from_secs(2));
    assert_eq!(recs.len(), 1, "{recs:?}");
    let tenant: Vec<_> = recs[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "ingestd-tenant")
        .collect();
    assert_eq!(tenant.len(), 1, "{:?}", recs[0].headers);
    assert_eq!(tenant[0].1, b"acme");
    assert!(recs[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-trace" && v == b"t1"));
    let recs = read_topic(&b.addr, &other, 1, 1, Duration::from_secs(2));
    assert_eq!(recs.len(), 1);
    assert!(recs[0]
        .headers
        .iter()
        .any(|(k, v)| k == "ingestd-tenant" && v == b"other"));
    assert_eq!(
        read_topic(&b.addr, &logs, 1, 1, Duration::from_secs(2)).len(),
        1
    );
    // Metrics per tenant.
    let m = ing.metrics_text();
    assert_eq!(
        common::metric_sum(&m, "ingestd_tenant_requests_total", "tenant=\"acme\""),
        2.0,
        "{m}"
    );
    assert_eq!(
        common::metric_sum(
            &m,
            "ingestd_tenant_refused_total",
            "tenant=\"acme\",code=\"403\""
        ),
        2.0
    );
    assert_eq!(
        common::metric_sum(
            &m,
            "ingestd_tenant_refused_total",
            "tenant=\"acme\",code=\"413\""
        ),
        1.0
    );
    assert_eq!(
        common::metric_sum(&m, "ingestd_auth_refused_total", "reason=\"missing\""),
        1.0
    );
    assert_eq!(
        common::metric_sum(&m, "ingestd_auth_refused_total", "reason=\"unknown_token\""),
        1.0
    );
    let _ = std::fs::remove_file(&cfg);
}

/// Load from `conns` connections with `token` and `body`, for `secs`: the 2xx count.
fn hammer(
    addr: std::net::SocketAddr,
    conns: usize,
    token: &str,
    body: Vec<u8>,
    secs: f64,
) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..conns)
        .map(|_| {
            let (ok, limited, stop) = (ok.clone(), limited.clone(), stop.clone());
            let req = post("/", &body, &[("Authorization", &bearer(token))]);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.request(&req).unwrap();
                    match r.status {
                        202 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            let n = limited.fetch_add(1, Ordering::Relaxed);
                            // Back off as a client would, briefly: the test is about the
                            // server's budget, not about how fast 429s can be made.
                            std::thread::sleep(Duration::from_millis(if n % 2 == 0 {
                                1
                            } else {
                                3
                            }));
                            n
                        }
                        s => panic!("{s} {}", r.text()),
                    };
                }
            })
        })
        .collect();
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed))
}

/// 1,000 requests/s and 1 MB/s, each held within 10% over 10 s, by two tenants loaded at
/// once, with `executors` executors and 1 and then 64 connections each.
fn rates_hold(executors: &str) {
    let b = broker();
    let topic = b.topic(&format!("rates{executors}"), 2);
    let cfg = common::temp_config(
        &format!("rates{executors}"),
        &format!(
            r#"
            [tenants.req]
            tokens = ["req-token"]
            topics = ["{topic}"]
            requests_per_sec = 1000
            burst_secs = 0.1
            [tenants.bytes]
            tokens = ["bytes-token"]
            topics = ["{topic}"]
            bytes_per_sec = 1000000
            burst_secs = 0.1
            # The burst (100 KB) must hold the largest body the tenant may send.
            max_body_bytes = 65536
            "#
        ),
    );
    let ing = start(&cfg, &topic, executors, &[]);
    const SECS: f64 = 10.0;
    for conns in [1, 64] {
        let a = ing.addr;
        let r = std::thread::spawn(move || hammer(a, conns, "req-token", b"r".to_vec(), SECS));
        let by =
            std::thread::spawn(move || hammer(a, conns, "bytes-token", vec![b'b'; 10_000], SECS));
        let (req_ok, req_429) = r.join().unwrap();
        let (bytes_ok, bytes_429) = by.join().unwrap();
        let bytes = bytes_ok * 10_000;
        eprintln!(
            "executors {executors}, {conns} conns: {req_ok} requests in {SECS} s ({req_429} x 429), {bytes} bytes ({bytes_429} x 429)"
        );
        // The rate over the window plus the initial burst (0.1 s of it).
        let want_req = 1000.0 * (SECS + 0.1);
        let want_bytes = 1e6 * (SECS + 0.1);
        assert!(
            (req_ok as f64 - want_req).abs() <= 0.1 * want_req,
            "requests: {req_ok}, want {want_req} +-10% ({executors} executors, {conns} conns)"
        );
        assert!(
            (bytes as f64 - want_bytes).abs() <= 0.1 * want_bytes,
            "bytes: {bytes}, want {want_bytes} +-10% ({executors} executors, {conns} conns)"
        );
        assert!(req_429 > 0 && bytes_429 > 0, "the budgets never refused");
        // Let the buckets fill up again before the next round.
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn budgets_hold_within_ten_percent_with_one_executor() {
    rates_hold("1");
}

#[test]
fn budgets_hold_within_ten_percent_with_two_executors() {
    rates_hold("2");
}

#[test]
fn over_budget_is_429_with_the_real_wait_and_nothing_is_produced() {
    let b = broker();
    let topic = b.topic("wait", 1);
    let cfg = common::temp_config(
        "wait",
        &format!(
            r#"
            [tenants.slow]
            tokens = ["slow"]
            topics = ["{topic}"]
            requests_per_sec = 0.5
            burst_secs = 2
            "#
        ),
    );
    let ing = start(&cfg, &topic, "1", &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    let h = [("Authorization", "Bearer slow")];
    assert_eq!(send(&mut c, "/", b"first", &h).status, 202);
    let t0 = Instant::now();
    let r = send(&mut c, "/", b"refused", &h);
    assert_eq!(r.status, 429, "{}", r.text());
    // 0.5/s: the next one fits 2 s after the first.
    let ms = r.json_i64("retry_after_ms");
    assert!((1800..=2000).contains(&ms), "{ms} {}", r.text());
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(r.text().contains("\"tenant\":\"slow\""));
    // The connection stays; a retry before the wait is refused again, after it passes.
    std::thread::sleep(
        Duration::from_millis(ms as u64)
            .saturating_sub(t0.elapsed())
            .saturating_sub(Duration::from_millis(300)),
    );
    assert_eq!(send(&mut c, "/", b"early", &h).status, 429);
    wait_until("the wait is over", Duration::from_secs(5), || {
        t0.elapsed() >= Duration::from_millis(ms as u64 + 20)
    });
    assert_eq!(send(&mut c, "/", b"second", &h).status, 202);
    let recs = read_topic(&b.addr, &topic, 1, 2, Duration::from_secs(2));
    let values: Vec<_> = recs.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        values,
        vec![b"first".to_vec(), b"second".to_vec()],
        "nothing of a refused request"
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn sighup_reloads_tenants_and_a_removed_token_is_401_on_an_open_connection() {
    let b = broker();
    let topic = b.topic("reload", 1);
    let body = |tokens: &str| {
        format!(
            r#"
            [tenants.acme]
            tokens = [{tokens}]
            topics = ["{topic}"]
            "#
        )
    };
    let cfg = common::temp_config("reload", &body(r#""old-1""#));
    let ing = start(&cfg, &topic, "2", &[]);
    // Load with the old token on several connections while the tokens rotate.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs: Vec<_> = (0..4)
        .map(|w| {
            let (stop, answered, addr) = (stop.clone(), answered.clone(), ing.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let v = format!("w{w}-{i}");
                    i += 1;
                    let token = if i % 2 == 0 { "old-1" } else { "new-1" };
                    let r = c
                        .request(&post(
                            "/",
                            v.as_bytes(),
                            &[("Authorization", &bearer(token))],
                        ))
                        .unwrap();
                    if r.status == 202 {
                        answered.lock().unwrap().push(v);
                    } else {
                        assert_eq!(r.status, 401, "{}", r.text());
                    }
                }
            })
        })
        .collect();
    let mut c = Client::connect(ing.addr).unwrap();
    let old = [("Authorization", "Bearer old-1")];
    let new = [("Authorization", "Bearer new-1")];
    assert_eq!(send(&mut c, "/", b"a", &old).status, 202);
    assert_eq!(send(&mut c, "/", b"b", &new).status, 401);
    // Rotation: both for a while.
    std::fs::write(&cfg, body(r#""old-1", "new-1""#)).unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("reload 1", Duration::from_secs(10), || {
        ing.metric("ingestd_auth_reloads_total", "") >= 1.0
    });
    assert_eq!(send(&mut c, "/", b"c", &new).status, 202);
    assert_eq!(send(&mut c, "/", b"d", &old).status, 202);
    // The old one removed: 401 at once, on this same open connection.
    std::fs::write(&cfg, body(r#""new-1""#)).unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("reload 2", Duration::from_secs(10), || {
        ing.metric("ingestd_auth_reloads_total", "") >= 2.0
    });
    assert_eq!(send(&mut c, "/", b"e", &old).status, 401);
    assert_eq!(send(&mut c, "/", b"f", &new).status, 202);
    // An invalid file keeps the policy in force, says why, and counts it.
    std::fs::write(&cfg, "[tenants.acme]\ntokens = [\"x\"]\nbogus = 1\n").unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("reload refused", Duration::from_secs(10), || {
        ing.metric("ingestd_auth_reload_failures_total", "") >= 1.0
    });
    assert_eq!(send(&mut c, "/", b"g", &new).status, 202);
    assert_eq!(
        send(&mut c, "/", b"h", &[("Authorization", "Bearer x")]).status,
        401
    );
    assert!(
        ing.log_text().contains("the configuration is invalid"),
        "{}",
        ing.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    // Nothing answered 202 is lost across the reloads.
    let mut want = answered.lock().unwrap().clone();
    want.extend(["a", "c", "d", "f", "g"].map(String::from));
    let recs = read_topic(&b.addr, &topic, 1, want.len(), Duration::from_secs(3));
    let got: std::collections::BTreeSet<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    let missing: Vec<_> = want.iter().filter(|v| !got.contains(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} answered 202 but not in Kafka: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "reload under load: {} records answered 202, all in Kafka",
        want.len()
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn the_admin_listener_has_the_pages_and_the_public_one_does_not() {
    let b = broker();
    let topic = b.topic("admin", 1);
    let cfg = common::temp_config("admin", "admin_listen = \"127.0.0.1:0\"\n");
    let ing = start(&cfg, &topic, "2", &[]);
    let admin = ing.admin_addr.expect("admin address");
    for p in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(ing.addr, p).unwrap().status, 404, "public {p}");
        assert_eq!(get(admin, p).unwrap().status, 200, "admin {p}");
    }
    let mut c = Client::connect(admin).unwrap();
    assert_eq!(
        send(&mut c, "/", b"x", &[]).status,
        404,
        "no produce on the admin port"
    );
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(send(&mut c, "/", b"x", &[]).status, 202);
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn connections_end_after_their_request_count_and_age() {
    let topic = broker().topic("lifetime", 1);
    let cfg = common::temp_config("lifetime", "max_requests_per_connection = 3\n");
    let ing = start(&cfg, &topic, "1", &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    for i in 1..=3 {
        let r = send(&mut c, "/", b"x", &[]);
        assert_eq!(r.status, 202);
        assert_eq!(
            r.header("connection") == Some("close"),
            i == 3,
            "request {i}"
        );
    }
    assert!(
        c.closed(Duration::from_secs(5)),
        "closed after the third answer"
    );
    drop(ing);
    // Age: the first answer after 1 s (less up to 10% jitter) says close.
    std::fs::write(&cfg, "max_connection_age_ms = 1000\n").unwrap();
    let ing = start(&cfg, &topic, "1", &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    let t0 = Instant::now();
    assert_eq!(send(&mut c, "/", b"x", &[]).header("connection"), None);
    loop {
        let r = send(&mut c, "/", b"x", &[]);
        if r.header("connection") == Some("close") {
            let age = t0.elapsed();
            assert!(age >= Duration::from_millis(890), "closed at {age:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn per_address_limits_answer_429() {
    let topic = broker().topic("addr", 1);
    let cfg = common::temp_config(
        "addr",
        &format!(
            r#"
            max_connections_per_address = 2
            address_requests_per_sec = 5
            address_burst = 5
            [tenants.web]
            anonymous = true
            topics = ["{topic}"]
            [tenants.app]
            tokens = ["app"]
            topics = ["{topic}"]
            "#
        ),
    );
    let ing = start(&cfg, &topic, "2", &[]);
    let mut a = Client::connect(ing.addr).unwrap();
    let mut b = Client::connect(ing.addr).unwrap();
    assert_eq!(send(&mut a, "/", b"x", &[]).status, 202);
    assert_eq!(send(&mut b, "/", b"x", &[]).status, 202);
    // The third connection from this address: 429, then closed.
    let mut c = Client::connect(ing.addr).unwrap();
    let r = send(&mut c, "/", b"x", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    drop(b);
    // Its slot is counted out: a new one is fine again.
    wait_until("a connection slot frees", Duration::from_secs(5), || {
        let mut d = Client::connect(ing.addr).unwrap();
        d.request(&post("/", b"y", &[("Authorization", "Bearer app")]))
            .unwrap()
            .status
            == 202
    });
    // Anonymous requests: 5 at once per address, then 429 (the two above counted).
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&mut a, "/", b"z", &[]).status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // An authenticated tenant is not held to the anonymous per-address rate.
    for _ in 0..10 {
        assert_eq!(
            send(&mut a, "/", b"t", &[("Authorization", "Bearer app")]).status,
            202
        );
    }
    let m = ing.metrics_text();
    assert!(
        common::metric_sum(&m, "ingestd_address_table_entries", "") >= 1.0,
        "{m}"
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn an_empty_tenant_header_puts_none_in_the_records() {
    let b = broker();
    let topic = b.topic("nohdr", 1);
    let cfg = common::temp_config(
        "nohdr",
        &format!(
            "tenant_header = \"\"\n[tenants.acme]\ntokens = [\"t\"]\ntopics = [\"{topic}\"]\n"
        ),
    );
    let ing = start(&cfg, &topic, "1", &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    let r = send(&mut c, "/", b"plain", &[("Authorization", "Bearer t")]);
    assert_eq!(r.status, 202, "{}", r.text());
    let recs = read_topic(&b.addr, &topic, 1, 1, Duration::from_secs(2));
    assert_eq!(recs.len(), 1);
    assert!(recs[0].headers.is_empty(), "{:?}", recs[0].headers);
    let _ = std::fs::remove_file(&cfg);
}

/// The Kafka thread shares librdkafka header objects by content (kafka/flight.rs): many
/// tenants interleaved over many connections and both executors, with a forwarded header
/// that gives each pair of requests a set of its own (a set is shared from its second
/// sighting; 1,600 such sets make the index start over while objects of old sets are in
/// flight). Every record must carry exactly its own request's headers: a shared object
/// with another tenant's name would be a forged tenant.
#[test]
fn interleaved_tenants_each_get_their_own_headers_on_every_record() {
    let b = broker();
    let topic = b.topic("mixed", 4);
    let tenants = 8;
    let mut text = String::from("forward_headers = [\"x-trace\"]\n");
    for t in 0..tenants {
        text += &format!("[tenants.t{t}]\ntokens = [\"tok-{t}\"]\ntopics = [\"{topic}\"]\n");
    }
    let cfg = common::temp_config("mixed", &text);
    let ing = start(&cfg, &topic, "2", &[]);
    let (conns, each) = (16, 300);
    std::thread::scope(|s| {
        for c in 0..conns {
            let addr = ing.addr;
            let topic = &topic;
            s.spawn(move || {
                let mut cl = Client::connect(addr).unwrap();
                for i in 0..each {
                    // Two requests in a row share a header set; tenants change from one
                    // pair to the next on one connection too.
                    let j = i / 2;
                    let t = (c + j) % tenants;
                    let body = format!("t{t}:{c}:{j}:{i}");
                    let auth = bearer(&format!("tok-{t}"));
                    let trace = format!("{c}-{j}");
                    let mut h = vec![("Authorization", auth.as_str())];
                    if j % 3 != 0 {
                        h.push(("X-Trace", &trace));
                    }
                    let r = send(&mut cl, &format!("/topics/{topic}"), body.as_bytes(), &h);
                    assert_eq!(r.status, 202, "{}", r.text());
                }
            });
        }
    });
    let recs = read_topic(&b.addr, &topic, 4, conns * each, Duration::from_secs(2));
    assert_eq!(recs.len(), conns * each);
    for r in &recs {
        let body = String::from_utf8(r.value.clone()).unwrap();
        let mut parts = body.split(':');
        let (t, c, j) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
        );
        let mut want = vec![("ingestd-tenant".to_string(), t.as_bytes().to_vec())];
        if j % 3 != 0 {
            want.push(("x-trace".to_string(), format!("{c}-{j}").into_bytes()));
        }
        let mut got = r.headers.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "record {body}");
    }
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn an_error_after_a_produce_request_on_the_same_connection_does_not_crash() {
    // A 401 keeps the connection; the next bytes are a malformed head, whose error answer
    // must not reuse the previous request's topic (it once sliced the new, shorter buffer:
    // a panic, and the process aborted).
    let b = broker();
    let topic = b.topic("events", 1);
    let cfg = common::temp_config(
        "crash",
        &format!("[tenants.a]\ntokens = [\"t\"]\ntopics = [\"{topic}\"]\n"),
    );
    let ing = start(&cfg, &topic, "1", &[]);
    let mut c = Client::connect(ing.addr).unwrap();
    let long = format!("/topics/{topic}");
    assert_eq!(send(&mut c, &long, b"", &[]).status, 401);
    c.send(b"\r\x00").unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(
        send(&mut c, &long, b"alive", &[("Authorization", "Bearer t")]).status,
        202
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_reload_while_a_body_arrives_never_produces_it_under_another_tenant() {
    // Tenant indexes follow the names' order: adding "beta" moves "zeta" along. A request
    // admitted as zeta whose body completes after the reload must not be produced under
    // the index's new owner: it is answered 503 (retry), and nothing is produced.
    let b = broker();
    let zeta_topic = b.topic("zeta", 1);
    let body = |extra: &str| {
        format!(
            "{extra}[tenants.acme]\ntokens = [\"a\"]\ntopics = [\"{zeta_topic}\"]\n[tenants.zeta]\ntokens = [\"z\"]\ntopics = [\"{zeta_topic}\"]\n"
        )
    };
    let cfg = common::temp_config("midbody", &body(""));
    let ing = start(&cfg, &zeta_topic, "1", &[]);
    let mut slow = Client::connect(ing.addr).unwrap();
    slow.send(
        format!(
            "POST /topics/{zeta_topic} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer z\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    // Admitted (the head is in: its tenant's request counter moved); now the reload.
    wait_until("admitted", Duration::from_secs(10), || {
        ing.metric("ingestd_tenant_requests_total", "tenant=\"zeta\"") >= 1.0
    });
    std::fs::write(
        &cfg,
        body(&format!(
            "[tenants.beta]\ntokens = [\"b\"]\ntopics = [\"{zeta_topic}\"]\n"
        )),
    )
    .unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("reloaded", Duration::from_secs(10), || {
        ing.metric("ingestd_auth_reloads_total", "") >= 1.0
    });
    // Another request on the same executor takes the new policy in.
    let mut other = Client::connect(ing.addr).unwrap();
    assert_eq!(
        send(&mut other, "/", b"x", &[("Authorization", "Bearer a")]).status,
        202
    );
    slow.send(b"0\r\n\r\n").unwrap();
    let r = slow.read().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let recs = read_topic(&b.addr, &zeta_topic, 1, 1, Duration::from_secs(2));
    assert!(
        recs.iter().all(|r| r.value != b"hello"),
        "produced across the reload: {recs:?}"
    );
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_compressed_body_is_held_to_the_tenants_limit_and_budget_by_its_decoded_size() {
    use std::io::Write as _;
    let b = broker();
    let topic = b.topic("gz", 1);
    let cfg = common::temp_config(
        "gz",
        &format!(
            "[tenants.small]\ntokens = [\"s\"]\ntopics = [\"{topic}\"]\nmax_body_bytes = 65536\nbytes_per_sec = 100000\n"
        ),
    );
    let ing = start(&cfg, &topic, "1", &[]);
    let gzip = |n: usize| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b'a'; n]).unwrap();
        e.finish().unwrap()
    };
    let mut c = Client::connect(ing.addr).unwrap();
    let h = [("Authorization", "Bearer s"), ("Content-Encoding", "gzip")];
    // A few hundred bytes on the wire, 200 KB decoded: over its 64 KiB.
    let r = send(&mut c, "/", &gzip(200_000), &h);
    assert_eq!(r.status, 413, "{}", r.text());
    // 60 KB decoded fits; the byte budget (100 KB/s, 1 s burst) is charged 60 KB, so a
    // second one at once is over it, however small on the wire.
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(send(&mut c, "/", &gzip(60_000), &h).status, 202);
    let r = send(&mut c, "/", &gzip(60_000), &h);
    assert_eq!(r.status, 429, "{}", r.text());
    let _ = std::fs::remove_file(&cfg);
}
