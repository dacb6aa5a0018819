//! Every limit and timeout at its edge: body size, queue admission, header/body/idle
//! timeouts, connections per executor, bearer-token auth.

mod common;

use common::http::{post, Client};
use common::{broker, Ingestd};
use std::io::Write;
use std::time::{Duration, Instant};

/// ingestd pointed at a closed port: records queue up and are never delivered.
fn no_broker(extra_env: &[(&str, &str)]) -> Ingestd {
    Ingestd::spawn(
        &[
            "--brokers",
            "127.0.0.1:1",
            "--executors",
            "1",
            "--ack",
            "queued",
        ],
        extra_env,
    )
}

#[test]
fn body_size_edges_content_length_and_chunked() {
    let b = broker();
    let topic = b.topic("bodysize", 1);
    let ing = Ingestd::start_env(
        &["--brokers", &b.addr, "--default-topic", &topic],
        &[("INGESTD_MAX_BODY_BYTES", "100")],
    );
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(
        c.request(&post("/", &[b'a'; 100], &[])).unwrap().status,
        202
    );
    let r = c.request(&post("/", &[b'a'; 101], &[])).unwrap();
    assert_eq!(r.status, 413);
    assert!(
        c.closed(Duration::from_secs(2)),
        "413 closes: the body was not read"
    );
    // Chunked: exactly at the limit passes, one more byte is 413.
    let chunked = |n: usize| {
        let mut w = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        w.extend(format!("{:x}\r\n", n - 1).bytes());
        w.extend(vec![b'c'; n - 1]);
        w.extend(b"\r\n1\r\nc\r\n0\r\n\r\n");
        w
    };
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(c.request(&chunked(100)).unwrap().status, 202);
    assert_eq!(c.request(&chunked(101)).unwrap().status, 413);
    assert!(c.closed(Duration::from_secs(2)));
}

#[test]
fn full_queue_answers_503_with_retry_after_at_once() {
    let ing = no_broker(&[
        ("INGESTD_QUEUE_MAX_RECORDS", "5"),
        ("INGESTD_RETRY_AFTER_SECS", "2"),
    ]);
    let mut c = Client::connect(ing.addr).unwrap();
    for _ in 0..5 {
        assert_eq!(c.request(&post("/", b"x", &[])).unwrap().status, 202);
    }
    let t0 = Instant::now();
    let r = c.request(&post("/", b"x", &[])).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(t0.elapsed() < Duration::from_millis(500), "refused at once");
    // The connection survives a 503.
    assert_eq!(
        c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        200
    );
    // NDJSON is admitted all or nothing.
    let r = c
        .request(&post(
            "/",
            b"a\nb\n",
            &[("Content-Type", "application/x-ndjson")],
        ))
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(ing.metric("ingestd_queue_records", ""), 5.0);
    assert_eq!(ing.metric("ingestd_records_enqueued_total", ""), 5.0);
    // Not ready: the broker is unreachable.
    assert_eq!(common::http::get(ing.addr, "/readyz").unwrap().status, 503);
}

#[test]
fn ndjson_larger_than_the_queue_is_413_not_503() {
    let ing = no_broker(&[
        ("INGESTD_QUEUE_MAX_RECORDS", "5"),
        ("INGESTD_QUEUE_MAX_BYTES", "1000"),
    ]);
    let mut c = Client::connect(ing.addr).unwrap();
    let nd = [("Content-Type", "application/x-ndjson")];
    // Exactly the queue's records fit; one more line can never fit: 413, not 503 forever.
    assert_eq!(
        c.request(&post("/", b"{}\n{}\n{}\n{}\n{}\n", &nd))
            .unwrap()
            .status,
        202
    );
    let r = c
        .request(&post("/", b"{}\n{}\n{}\n{}\n{}\n{}\n", &nd))
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("queue_max_records"), "{}", r.text());
    assert!(r.header("retry-after").is_none());
    // More bytes than the queue holds, in one record: 413 too. The connection survives.
    let r = c.request(&post("/", &[b'x'; 1000], &[])).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    // The queue is full now (5 records): a body that fits an empty queue is still 503.
    let r = c.request(&post("/", b"{}\n", &nd)).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(ing.metric("ingestd_queue_records", ""), 5.0);
}

/// A chunked body's wire bytes are dropped as they are decoded: 1-byte chunks that each
/// carry a 4 KiB chunk extension (about 120 MB on the wire for a 30,000-byte body) used
/// to stay buffered until the body ended (RSS 61 MB -> 2.1 GB with larger bodies).
#[test]
fn chunk_extensions_are_not_buffered() {
    let b = broker();
    let topic = b.topic("chunkext", 1);
    let ing = Ingestd::start(&["--brokers", &b.addr, "--default-topic", &topic]);
    let rss0 = ing.rss_kib();
    let mut c = Client::connect(ing.addr).unwrap();
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let block = format!("1;x={}\r\nz\r\n", "e".repeat(4000)).repeat(100);
    let mut peak = 0;
    for i in 0..300 {
        c.send(block.as_bytes()).unwrap();
        if i % 20 == 0 {
            peak = peak.max(ing.rss_kib());
        }
    }
    c.send(b"0\r\n\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    peak = peak.max(ing.rss_kib());
    eprintln!("chunk extensions: RSS {rss0} KiB before, peak {peak} KiB");
    assert!(
        peak < rss0 + 32 * 1024,
        "RSS grew from {rss0} to {peak} KiB for a 30,000-byte body"
    );
    let recs = common::read_topic(&b.addr, &topic, 1, 1, Duration::from_secs(1));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].value, vec![b'z'; 30_000]);
}

/// TCP urgent data (MSG_OOB) ends a read at the urgent mark: a short read then does not
/// mean the socket is drained. A request queued behind the mark used to wait for the
/// idle timeout; it must be answered at once.
#[test]
fn urgent_data_does_not_stall_the_connection() {
    use std::os::fd::AsRawFd;
    let ing = no_broker(&[]);
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(c.request(&post("/", b"before", &[])).unwrap().status, 202);
    // Both requests must sit in ingestd's receive queue before it reads: stop it meanwhile.
    ing.signal(libc::SIGSTOP);
    let fd = c.s.as_raw_fd();
    let first = post("/", b"one", &[]);
    let mut urgent = first.clone();
    urgent.push(b'!');
    // SAFETY: send(2) on our own connected socket with a valid buffer.
    let n = unsafe { libc::send(fd, urgent.as_ptr().cast(), urgent.len(), libc::MSG_OOB) };
    assert_eq!(n, urgent.len() as isize);
    c.send(&post("/", b"two", &[])).unwrap();
    // Until the peer's kernel has acknowledged every byte (nothing left unacked).
    let t0 = Instant::now();
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int.
        unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) };
        if unacked == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{unacked} bytes unacked"
        );
        std::thread::yield_now();
    }
    ing.signal(libc::SIGCONT);
    c.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t0 = Instant::now();
    assert_eq!(c.read().unwrap().status, 202, "the request before the mark");
    assert_eq!(c.read().unwrap().status, 202, "the request after the mark");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(ing.metric("ingestd_records_enqueued_total", ""), 3.0);
}

fn post_head(n: usize) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n\r\n").into_bytes()
}

/// Bodies being received count against the executor's memory budget together with its
/// queued records: past it a request is answered 503 before its body is read, and the
/// budget comes back once the bodies are queued and delivered.
#[test]
fn bodies_in_flight_are_bounded_by_the_memory_budget() {
    let b = broker();
    let topic = b.topic("membudget", 1);
    let ing = Ingestd::start_env(
        &[
            "--brokers",
            &b.addr,
            "--default-topic",
            &topic,
            "--executors",
            "1",
        ],
        &[
            ("INGESTD_MAX_BODY_BYTES", "262144"),
            ("INGESTD_MEMORY_MAX_BYTES", "600000"),
        ],
    );
    let n = 250_000;
    let mut held = Vec::new();
    for fill in [b'a', b'b'] {
        let mut c = Client::connect(ing.addr).unwrap();
        c.send(&post_head(n)).unwrap();
        c.send(&vec![fill; 1000]).unwrap();
        held.push((c, fill));
    }
    common::wait_until("both bodies charged", Duration::from_secs(5), || {
        ing.metric("ingestd_memory_bytes", "") >= 480_000.0
    });
    // A third does not fit: 503 at once, before its body is sent, and closed.
    let mut c = Client::connect(ing.addr).unwrap();
    c.send(&post_head(n)).unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("memory_max_bytes"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(c.closed(Duration::from_secs(2)));
    // The two complete: the body moves into the queue, counted once.
    for (c, fill) in &mut held {
        c.send(&vec![*fill; n - 1000]).unwrap();
        assert_eq!(c.read().unwrap().status, 202);
    }
    common::wait_until("the budget given back", Duration::from_secs(10), || {
        ing.metric("ingestd_memory_bytes", "") == 0.0
    });
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(
        c.request(&post("/", &vec![b'c'; n], &[])).unwrap().status,
        202
    );
    let recs = common::read_topic(&b.addr, &topic, 1, 3, Duration::from_secs(1));
    let mut firsts: Vec<u8> = recs.iter().map(|r| r.value[0]).collect();
    firsts.sort();
    assert_eq!(firsts, b"abc");
    assert!(recs.iter().all(|r| r.value.len() == n));
}

/// Many clients each announcing a 1 MB body and sending part of it: the process's RSS
/// stays within the memory budget (8 MiB here) instead of growing by a buffer per client.
#[test]
fn many_large_bodies_in_flight_keep_rss_flat() {
    let ing = no_broker(&[
        ("INGESTD_MAX_BODY_BYTES", "1000000"),
        ("INGESTD_MEMORY_MAX_BYTES", "8388608"),
    ]);
    let rss0 = ing.rss_kib();
    let clients: Vec<Client> = (0..40)
        .map(|_| {
            let mut c = Client::connect(ing.addr).unwrap();
            c.send(&post_head(1_000_000)).unwrap();
            c.send(&vec![b'x'; 64 << 10]).unwrap();
            c
        })
        .collect();
    common::wait_until(
        "the budget full, the rest refused",
        Duration::from_secs(10),
        || ing.metric("ingestd_http_requests_total", "code=\"503\"") >= 30.0,
    );
    let rss = ing.rss_kib();
    let mem = ing.metric("ingestd_memory_bytes", "");
    eprintln!("40 bodies in flight: RSS {rss0} -> {rss} KiB, budget used {mem} B");
    assert!(mem <= 8_388_608.0);
    assert!(
        rss < rss0 + 20 * 1024,
        "RSS grew from {rss0} to {rss} KiB with a budget of 8 MiB"
    );
    drop(clients);
}

#[test]
fn queue_byte_limit() {
    // Each record costs its bytes plus 64 of overhead: 2 records of 100 B fit in 400.
    let ing = no_broker(&[("INGESTD_QUEUE_MAX_BYTES", "400")]);
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(
        c.request(&post("/", &[b'q'; 100], &[])).unwrap().status,
        202
    );
    assert_eq!(
        c.request(&post("/", &[b'q'; 100], &[])).unwrap().status,
        202
    );
    assert_eq!(
        c.request(&post("/", &[b'q'; 100], &[])).unwrap().status,
        503
    );
    assert_eq!(ing.metric("ingestd_queue_bytes", ""), 328.0);
}

#[test]
fn slowloris_head_gets_408_at_the_header_deadline() {
    let ing = no_broker(&[("INGESTD_HEADER_TIMEOUT_MS", "600")]);
    let mut c = Client::connect(ing.addr).unwrap();
    let t0 = Instant::now();
    // Drip a byte every 100 ms: each read succeeds, but the head deadline holds.
    let head = b"POST / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut got = None;
    for b in head {
        if c.s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t0.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    if let Ok(r) = c.read() {
        got = Some(r.status);
    }
    assert_eq!(got, Some(408));
    let e = t0.elapsed();
    assert!(c.closed(Duration::from_secs(2)));
    assert!(e < Duration::from_millis(2500), "took {e:?}");
}

#[test]
fn body_timeout_and_idle_timeout() {
    let ing = no_broker(&[
        ("INGESTD_BODY_TIMEOUT_MS", "500"),
        ("INGESTD_IDLE_TIMEOUT_MS", "700"),
    ]);
    // A body that never completes: 408 then close.
    let mut c = Client::connect(ing.addr).unwrap();
    let t0 = Instant::now();
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.status, 408);
    assert!(t0.elapsed() >= Duration::from_millis(450) && t0.elapsed() < Duration::from_secs(2));
    assert!(c.closed(Duration::from_secs(1)));
    // An idle keep-alive connection is closed silently after idle_timeout.
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(
        c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        200
    );
    let t0 = Instant::now();
    assert!(c.closed(Duration::from_secs(3)));
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(600) && idle < Duration::from_millis(2000),
        "{idle:?}"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_off_at_the_body_timeout() {
    // Pipelined requests whose answers the client never reads: once the socket buffers
    // are full ingestd cannot write, and must give up after body_timeout_ms rather than
    // hold the connection forever.
    let ing = no_broker(&[("INGESTD_BODY_TIMEOUT_MS", "500")]);
    let mut s = std::net::TcpStream::connect(ing.addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    let t0 = Instant::now();
    let mut sent = 0usize;
    // Writes block (then fail) once ingestd stops reading: it is stuck writing answers.
    while t0.elapsed() < Duration::from_secs(20) && s.write_all(&req).is_ok() {
        sent += 1000;
    }
    assert!(sent >= 10_000, "only {sent} requests were accepted");
    // The server side is gone while this client still holds its socket open.
    common::wait_until(
        "the stalled connection is closed",
        Duration::from_secs(5),
        || {
            ing.metric("ingestd_connections", "") == 1.0 // the /metrics request itself
        },
    );
    assert_eq!(
        common::http::get(ing.addr, "/healthz").unwrap().status,
        200,
        "the executor keeps serving"
    );
    drop(s);
}

#[test]
fn shutdown_deadline_closes_connections_still_waiting() {
    // A request waiting for a broker that never answers: at the shutdown deadline its
    // connection is closed, before the producer's flush (which gets the same deadline)
    // ends and the process exits.
    let mut ing = no_broker(&[("INGESTD_SHUTDOWN_TIMEOUT_MS", "1500")]);
    let mut c = Client::connect(ing.addr).unwrap();
    c.send(&post("/", b"never acked", &[("Kafka-Ack", "kafka")]))
        .unwrap();
    common::wait_until("the request is queued", Duration::from_secs(5), || {
        ing.metric("ingestd_records_enqueued_total", "") >= 1.0
    });
    let t0 = Instant::now();
    ing.signal(libc::SIGTERM);
    assert!(c.closed(Duration::from_secs(5)), "connection closed");
    let closed = t0.elapsed();
    ing.wait_exit(Duration::from_secs(10));
    let exited = t0.elapsed();
    assert!(
        closed >= Duration::from_millis(1300) && closed + Duration::from_millis(700) < exited,
        "closed after {closed:?}, exited after {exited:?}"
    );
}

#[test]
fn max_connections_per_executor() {
    let ing = no_broker(&[("INGESTD_MAX_CONNECTIONS", "3")]);
    let mut kept: Vec<Client> = (0..3).map(|_| Client::connect(ing.addr).unwrap()).collect();
    for c in kept.iter_mut() {
        assert_eq!(
            c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap()
                .status,
            200
        );
    }
    let mut extra = Client::connect(ing.addr).unwrap();
    let _ = extra.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        extra.closed(Duration::from_secs(2)),
        "4th connection is closed at once"
    );
    drop(kept.pop());
    // Once the server has seen the close, a new connection is served again.
    let mut r = None;
    common::wait_until("a slot frees up", Duration::from_secs(2), || {
        r = Client::connect(ing.addr)
            .and_then(|mut c| c.request(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"))
            .ok();
        r.is_some()
    });
    let r = r.unwrap();
    assert_eq!(r.status, 200);
    assert!(common::metric_sum(&r.text(), "ingestd_connections_refused_total", "") >= 1.0);
}

#[test]
fn bearer_token_auth_from_config_and_file() {
    let dir = std::env::temp_dir().join(format!("ingestd-auth-{}", std::process::id()));
    std::fs::write(
        &dir,
        "# tokens for the ingest fleet\n  # indented comment\nfiletoken\n\n  spaced  \n",
    )
    .unwrap();
    let ing = no_broker(&[
        ("INGESTD_AUTH_TOKENS", "cfgtoken"),
        ("INGESTD_AUTH_TOKEN_FILE", dir.to_str().unwrap()),
    ]);
    let mut c = Client::connect(ing.addr).unwrap();
    let r = c.request(&post("/", b"x", &[])).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        c.request(&post("/", b"x", &[("Authorization", "Bearer wrong")]))
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        c.request(&post("/", b"x", &[("Authorization", "Bearer cfgtoken")]))
            .unwrap()
            .status,
        202
    );
    assert_eq!(
        c.request(&post("/", b"x", &[("Authorization", "Bearer filetoken")]))
            .unwrap()
            .status,
        202
    );
    assert_eq!(
        c.request(&post("/", b"x", &[("Authorization", "Bearer spaced")]))
            .unwrap()
            .status,
        202
    );
    // A comment line is not a token.
    for comment in ["# tokens for the ingest fleet", "#", "# indented comment"] {
        let auth = format!("Bearer {comment}");
        let r = c
            .request(&post("/", b"x", &[("Authorization", &auth)]))
            .unwrap();
        assert_eq!(r.status, 401, "{comment:?}");
    }
    // Probes stay open for load balancers and Prometheus.
    assert_eq!(
        c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        c.request(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        200
    );
    std::fs::remove_file(dir).ok();
}

#[test]
fn check_config_rejects_unknown_keys() {
    let dir = std::env::temp_dir().join(format!("ingestd-cfg-{}.toml", std::process::id()));
    std::fs::write(&dir, "listen = \"127.0.0.1:9\"\nmax_body = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(["--check-config", "--config", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `max_body`"), "{err}");
    std::fs::write(
        &dir,
        "listen = \"127.0.0.1:9\"\nmax_body_bytes = 5\n[kafka]\n\"linger.ms\" = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(["--check-config", "--config", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(dir).ok();
}
