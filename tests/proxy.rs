//! Real client addresses behind a real load balancer: Debian's HAProxy in front of ingestd
//! (`proxy_protocol = true`) with `send-proxy` (v1) and `send-proxy-v2`; every record
//! carries the client's own address (`client_address_header`). A connection without the
//! header, or with a malformed one, is closed unanswered; a flood of distinct addresses
//! keeps the per-address table within its bound. Needs Debian's `haproxy` (tests/deps.sh).

mod common;

use common::http::{get, post, Client};
use common::{broker, read_topic, wait_until, Ingestd};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(topic: &str, extra: &str) -> (Ingestd, PathBuf) {
    // The public port takes PROXY headers only: readiness and metrics on the admin port.
    let cfg = common::temp_config(
        topic,
        &format!(
            "proxy_protocol = true\nadmin_listen = \"127.0.0.1:0\"\nclient_address_header = \"ingestd-client\"\n{extra}"
        ),
    );
    let ing = common::start_with_config(&cfg, topic, "2", &[]);
    (ing, cfg)
}

/// HAProxy in TCP mode: one frontend per PROXY version, both to `backend`.
struct Haproxy {
    child: Child,
    v1: SocketAddr,
    v2: SocketAddr,
    cfg: PathBuf,
}

impl Haproxy {
    fn start(backend: SocketAddr) -> Haproxy {
        let Ok(out) = Command::new("haproxy").arg("-v").output() else {
            panic!("haproxy not found: install Debian's haproxy package (tests/deps.sh does)");
        };
        assert!(out.status.success());
        let (p1, p2) = (free_port(), free_port());
        let cfg =
            std::env::temp_dir().join(format!("ingestd-haproxy-{}-{p1}.cfg", std::process::id()));
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4096\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend v1\n  bind 127.0.0.1:{p1}\n  default_backend b1\n\
                 backend b1\n  server ingestd {backend} send-proxy check inter 500ms\n\
                 frontend v2\n  bind 127.0.0.1:{p2}\n  default_backend b2\n\
                 backend b2\n  server ingestd {backend} send-proxy-v2 check inter 500ms\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy");
        let h = Haproxy {
            child,
            v1: format!("127.0.0.1:{p1}").parse().unwrap(),
            v2: format!("127.0.0.1:{p2}").parse().unwrap(),
            cfg,
        };
        wait_until("haproxy listening", Duration::from_secs(20), || {
            TcpStream::connect(h.v1).is_ok() && TcpStream::connect(h.v2).is_ok()
        });
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg);
    }
}

/// Whether the server closes `s` without a byte of answer within `wait`.
fn closed_unanswered(mut s: TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn haproxy_v1_and_v2_give_every_record_the_clients_own_address() {
    let b = broker();
    let topic = b.topic("proxied", 1);
    let (ing, cfg) = start(&topic, "");
    let ha = Haproxy::start(ing.addr);
    let mut want = Vec::new();
    for (version, front) in [("v1", ha.v1), ("v2", ha.v2)] {
        let mut c = Client::connect(front).unwrap();
        // HAProxy sees our socket's address: that is the client address to find.
        let me = c.s.local_addr().unwrap();
        for i in 0..3 {
            let v = format!("{version}-{i}");
            let r = c.request(&post("/", v.as_bytes(), &[])).unwrap();
            assert_eq!(r.status, 202, "{version}: {}", r.text());
            want.push((v, me.to_string()));
        }
    }
    let recs = read_topic(&b.addr, &topic, 1, want.len(), Duration::from_secs(2));
    let mut got: Vec<(String, String)> = recs
        .iter()
        .map(|r| {
            let client = r
                .headers
                .iter()
                .find(|(k, _)| k == "ingestd-client")
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
                .unwrap_or_default();
            (String::from_utf8(r.value.clone()).unwrap(), client)
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "records and the client address each carries");
    // Straight to ingestd, skipping the balancer: closed, unanswered.
    let mut s = TcpStream::connect(ing.addr).unwrap();
    s.write_all(&post("/", b"sneaky", &[])).unwrap();
    assert!(
        closed_unanswered(s, Duration::from_secs(15)),
        "a bare connection was served"
    );
    wait_until("counted", Duration::from_secs(10), || {
        ing.metric("ingestd_proxy_refused_total", "reason=\"not_proxy\"") >= 1.0
    });
    // The balancer's TCP checks (connect, close) do not disturb anything.
    let admin = ing.admin_addr.unwrap();
    assert_eq!(get(admin, "/readyz").unwrap().status, 200);
    drop(ha);
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn malformed_proxy_headers_are_refused_without_harm() {
    let topic = broker().topic("badproxy", 1);
    let (ing, cfg) = start(&topic, "header_timeout_ms = 1000\n");
    let v2sig = b"\r\n\r\n\0\r\nQUIT\n";
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("http first", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "tls first",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
        ),
        (
            "v1 bad address",
            b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "v1 bad port",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 70000 2\r\n".to_vec(),
        ),
        (
            "v1 too long",
            [&b"PROXY UNKNOWN "[..], &[b'x'; 200]].concat(),
        ),
        (
            "v2 bad version",
            [&v2sig[..], &[0x11, 0x11, 0, 12], &[0; 12]].concat(),
        ),
        (
            "v2 huge length",
            [&v2sig[..], &[0x21, 0x11, 0xff, 0xff]].concat(),
        ),
        (
            "v2 short address",
            [&v2sig[..], &[0x21, 0x11, 0, 4], &[1, 2, 3, 4]].concat(),
        ),
        (
            "half a header, then silence",
            b"PROXY TCP4 1.2.3.4".to_vec(),
        ),
    ];
    cases.push((
        "random",
        (0..300u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect(),
    ));
    let t0 = Instant::now();
    for (what, bytes) in &cases {
        let mut s = TcpStream::connect(ing.addr).unwrap();
        s.write_all(bytes).unwrap();
        assert!(
            closed_unanswered(s, Duration::from_secs(15)),
            "{what}: answered or kept open"
        );
    }
    eprintln!(
        "{} malformed headers refused in {:?}",
        cases.len(),
        t0.elapsed()
    );
    let refused = ing.metric("ingestd_proxy_refused_total", "");
    assert!(refused >= cases.len() as f64, "{refused}");
    assert!(ing.metric("ingestd_proxy_refused_total", "reason=\"timeout\"") >= 1.0);
    // Still serving proxied clients.
    let mut s = TcpStream::connect(ing.addr).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 4242 8080\r\n")
        .unwrap();
    let mut c = Client::over(s);
    assert_eq!(c.request(&post("/", b"fine", &[])).unwrap().status, 202);
    let _ = std::fs::remove_file(&cfg);
}

/// A PROXY v2 header for a TCP/IPv6 client `src`.
fn v2_header(src: [u8; 16], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x21, 0, 36]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[0; 15]);
    h.push(1);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[test]
fn a_flood_of_distinct_addresses_stays_within_the_address_table() {
    // Each connection claims another IPv6 address; the table has 1,024 slots. Every
    // request is anonymous, limited per address: nothing grows with the number of
    // addresses, and the limit is never looser for one of them.
    let topic = broker().topic("flood", 1);
    let (ing, cfg) = start(
        &topic,
        &format!(
            "address_table_entries = 1024\naddress_requests_per_sec = 1\naddress_burst = 1\nmax_connections_per_address = 1\n\
             [tenants.anon]\nanonymous = true\ntopics = [\"{topic}\"]\n"
        ),
    );
    const N: u32 = 1_000_000;
    let rss0 = ing.rss_kib();
    let t0 = Instant::now();
    let threads: Vec<_> = (0..4u32)
        .map(|k| {
            let addr = ing.addr;
            std::thread::spawn(move || {
                let mut statuses = [0u32; 2];
                for i in (k..N).step_by(4) {
                    // Each in a /64 of its own (a /64 is one client).
                    let mut src = [0u8; 16];
                    src[0] = 0x20;
                    src[1] = 0x01;
                    src[4..8].copy_from_slice(&i.to_be_bytes());
                    src[15] = 1;
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(&v2_header(src, 1000 + (i % 50000) as u16))
                        .unwrap();
                    let mut c = Client::over(s);
                    let r = c.request(&post("/", b"f", &[])).unwrap();
                    // 202: a fresh address; 429: its slot shared with another address
                    // already at its limit (stricter, never looser).
                    assert!(matches!(r.status, 202 | 429), "{} {}", r.status, r.text());
                    statuses[(r.status == 429) as usize] += 1;
                }
                statuses
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in threads {
        let [a, b] = t.join().unwrap();
        ok += a;
        limited += b;
    }
    let m = ing.metrics_text();
    let entries = common::metric_sum(&m, "ingestd_address_table_entries", "");
    let cap = common::metric_sum(&m, "ingestd_address_table_capacity", "");
    let rss1 = ing.rss_kib();
    eprintln!(
        "{N} distinct addresses in {:?}: {ok} x 202, {limited} x 429; table {entries}/{cap}; RSS {rss0} -> {rss1} KiB",
        t0.elapsed()
    );
    assert_eq!(cap, 1024.0);
    assert!(entries <= cap);
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    // The limit still holds for an address after the flood: one request, then 429.
    let src = [
        0x20, 0x01, 0xdb, 0x8, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 7,
    ];
    let mut s = TcpStream::connect(ing.addr).unwrap();
    s.write_all(&v2_header(src, 999)).unwrap();
    let mut c = Client::over(s);
    let first = c.request(&post("/", b"once", &[])).unwrap().status;
    assert!(matches!(first, 202 | 429), "{first}");
    assert_eq!(c.request(&post("/", b"again", &[])).unwrap().status, 429);
    let _ = std::fs::remove_file(&cfg);
}

/// A client connection that claims IPv4 address `ip` through a PROXY v1 header.
fn as_client(ing: &Ingestd, ip: &str) -> Client {
    let mut s = TcpStream::connect(ing.addr).unwrap();
    s.write_all(format!("PROXY TCP4 {ip} 10.0.0.1 40000 8080\r\n").as_bytes())
        .unwrap();
    Client::over(s)
}

#[test]
fn an_address_over_its_limit_does_not_spend_the_anonymous_tenants_budget() {
    // The anonymous tenant has 100 requests a second for everyone; one address may send 1.
    // A client hammering from one address gets 429s from its address limit, and those
    // refusals must not drain the tenant's budget for every other client.
    let topic = broker().topic("anonbudget", 1);
    let (ing, cfg) = start(
        &topic,
        &format!(
            "address_requests_per_sec = 1\naddress_burst = 1\n\
             [tenants.anon]\nanonymous = true\ntopics = [\"{topic}\"]\nrequests_per_sec = 100\nburst_secs = 1.0\n"
        ),
    );
    let mut hammer = as_client(&ing, "198.51.100.1");
    let mut refused = 0;
    for _ in 0..300 {
        if hammer.request(&post("/", b"h", &[])).unwrap().status == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 298, "{refused}");
    // 50 other clients, one request each, right after: the tenant's 100 are still there.
    for i in 0..50 {
        let mut c = as_client(&ing, &format!("203.0.113.{}", i + 1));
        let r = c.request(&post("/", b"x", &[])).unwrap();
        assert_eq!(r.status, 202, "client {i}: {}", r.text());
    }
    let _ = std::fs::remove_file(&cfg);
}
