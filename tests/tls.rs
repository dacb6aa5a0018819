//! HTTPS as clients use it: curl, Python's http.client and requests over TLS 1.2 and
//! 1.3, keep-alive and pipelined; a certificate swap with connections open (on SIGHUP,
//! and on a file change); plain HTTP on the HTTPS port, garbage and truncated handshakes;
//! mutual TLS with a missing and a wrong client certificate; the TLS key and a Kafka
//! secret from systemd credentials. Records are read back from a real tansu broker.

mod common;

use common::http::{post, Client, Wire};
use common::tls::{connect, peer_cert, Pki};
use common::{broker, read_topic, wait_until, Ingestd};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_millis(1500);

/// ingestd with plain HTTP (for /metrics) and HTTPS on free ports, serving `cert`/`key`
/// of `pki` (`srv1` unless `env` says otherwise).
fn start(pki: &Pki, env: &[(&str, &str)]) -> Ingestd {
    let (cert, key) = (pki.arg("srv1.pem"), pki.arg("srv1.key"));
    let mut all = vec![
        ("INGESTD_TLS_LISTEN", "127.0.0.1:0"),
        ("INGESTD_TLS_CERT", cert.as_str()),
        ("INGESTD_TLS_KEY", key.as_str()),
    ];
    all.extend_from_slice(env);
    let b = broker();
    Ingestd::start_env(
        &["--brokers", &b.addr, "--topics", "*", "--executors", "2"],
        &all,
    )
}

fn values(broker: &str, topic: &str, expect: usize) -> Vec<String> {
    let mut v: Vec<String> = read_topic(broker, topic, 1, expect, SETTLE)
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect();
    v.sort();
    v
}

/// POSTs `body` to `path` on `c`; the answer's status.
fn status(c: &mut Client<impl Wire>, path: &str, body: &[u8]) -> u16 {
    c.request(&post(path, body, &[])).unwrap().status
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn curl_and_python_over_tls12_and_tls13_keepalive_and_pipelined() {
    let pki = Pki::new("clients");
    let b = broker();
    let topic = b.topic("tls-clients", 1);
    let ing = start(&pki, &[]);
    let port = ing.tls_addr.expect("tls listener").port();
    let url = format!("https://localhost:{port}/topics/{topic}");
    let resolve = format!("localhost:{port}:127.0.0.1");

    for (v, flags) in [
        ("1.2", ["--tlsv1.2", "--tls-max", "1.2"]),
        ("1.3", ["--tlsv1.3", "--tls-max", "1.3"]),
    ] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-v",
                "--cacert",
                &pki.arg("ca.pem"),
                "--resolve",
                &resolve,
            ])
            .args(flags)
            .args([
                "-w",
                "%{http_code}",
                "--data-binary",
                &format!("curl-{v}"),
                &url,
            ])
            .output()
            .expect("curl");
        let (said, log) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "curl {v}: {log}");
        assert!(said.ends_with("202"), "curl {v}: {said}");
        assert!(
            log.contains(&format!("SSL connection using TLSv{v}")),
            "{log}"
        );
        assert!(log.contains("ALPN: server accepted http/1.1"), "{log}");
    }

    // Python's ssl module on each version: http.client keeps one connection for three
    // requests; a raw TLS socket pipelines three requests in one write; requests (what
    // users' scripts use) verifies against the CA.
    let py = r#"
import http.client, socket, ssl, sys
import requests
port, topic, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = []
for name, v in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = v
    c = http.client.HTTPSConnection("localhost", port, context=ctx)
    socks = set()
    for i in range(3):
        c.request("POST", "/topics/" + topic, body=f"py-{name}-keepalive-{i}")
        r = c.getresponse()
        r.read()
        assert r.status == 202, r.status
        socks.add(id(c.sock))
    assert len(socks) == 1, "keep-alive connection was not kept"
    seen.append(c.sock.version())
    c.close()
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    bodies = [f"py-{name}-pipelined-{i}".encode() for i in range(3)]
    raw.sendall(b"".join(
        b"POST /topics/" + topic.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies))
    buf = b""
    # 202 answers to raw bodies are empty: three heads, each ending the buffer.
    while buf.count(b"\r\n\r\n") < 3:
        d = raw.recv(65536)
        assert d, buf
        buf += d
    assert buf.count(b"HTTP/1.1 202 Accepted") == 3, buf
    raw.close()
r = requests.post(f"https://localhost:{port}/topics/{topic}", data=b"py-requests", verify=ca)
assert r.status_code == 202, r.status_code
print(" ".join(seen))
"#;
    let out = Command::new("python3")
        .args(["-c", py, &port.to_string(), &topic, &pki.arg("ca.pem")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "TLSv1.2 TLSv1.3"
    );

    let mut want = vec![
        "curl-1.2".to_string(),
        "curl-1.3".into(),
        "py-requests".into(),
    ];
    for v in ["1.2", "1.3"] {
        for i in 0..3 {
            want.push(format!("py-{v}-keepalive-{i}"));
            want.push(format!("py-{v}-pipelined-{i}"));
        }
    }
    want.sort();
    assert_eq!(values(&b.addr, &topic, want.len()), want);
}

/// Replaces the served certificate and key with `name`'s, each by a rename, as
/// deployment tools do (a reader never sees half a file).
fn install(pki: &Pki, name: &str, parts: &[&str]) {
    for ext in parts {
        let tmp = pki.path(&format!("live.{ext}.tmp"));
        std::fs::copy(pki.path(&format!("{name}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, pki.path(&format!("live.{ext}"))).unwrap();
    }
}

fn served(addr: SocketAddr, pki: &Pki) -> Vec<u8> {
    peer_cert(&connect(addr, pki.client_config(None)).expect("handshake"))
}

#[test]
fn certificate_swap_on_sighup_and_on_file_change_keeps_open_connections() {
    let pki = Pki::new("swap");
    let b = broker();
    let topic = b.topic("tls-swap", 1);
    let path = format!("/topics/{topic}");
    let (cert, key) = (pki.arg("live.pem"), pki.arg("live.key"));
    let live = [
        ("INGESTD_TLS_CERT", cert.as_str()),
        ("INGESTD_TLS_KEY", key.as_str()),
    ];
    let (srv1, srv2) = (pki.der("srv1"), pki.der("srv2"));

    // SIGHUP only (file watching off): nothing changes until the signal.
    install(&pki, "srv1", &["pem", "key"]);
    let mut env = live.to_vec();
    env.push(("INGESTD_TLS_WATCH_MS", "0"));
    let mut ing = start(&pki, &env);
    let tls = ing.tls_addr.unwrap();
    let mut open = connect(tls, pki.client_config(None)).unwrap();
    assert_eq!(peer_cert(&open), srv1);
    assert_eq!(status(&mut open, &path, b"hup-before"), 202);
    install(&pki, "srv2", &["pem", "key"]);
    assert_eq!(served(tls, &pki), srv1, "reloaded without SIGHUP");
    ing.signal(libc::SIGHUP);
    wait_until("srv2 served after SIGHUP", Duration::from_secs(10), || {
        served(tls, &pki) == srv2
    });
    assert_eq!(ing.metric("ingestd_tls_reloads_total", ""), 1.0);
    // The connection from before the swap goes on with its session.
    assert_eq!(status(&mut open, &path, b"hup-after"), 202);
    assert_eq!(peer_cert(&open), srv1);

    // A certificate that does not fit the key is refused; the one in use stays.
    install(&pki, "srv1", &["pem"]);
    ing.signal(libc::SIGHUP);
    wait_until("a failed reload counted", Duration::from_secs(10), || {
        ing.metric("ingestd_tls_reload_failures_total", "") == 1.0
    });
    assert_eq!(served(tls, &pki), srv2);
    assert!(
        ing.log_text().contains("TLS reload failed"),
        "{}",
        ing.log_text()
    );
    // SIGTERM, which flushes: dropping `ing` would SIGKILL it, and a 202 only promises
    // the record was queued (in CI the last one was lost that way once).
    assert!(ing.stop(Duration::from_secs(30)).success());

    // File watching: the files change, no signal.
    install(&pki, "srv2", &["pem", "key"]);
    let mut env = live.to_vec();
    env.push(("INGESTD_TLS_WATCH_MS", "100"));
    let ing = start(&pki, &env);
    let tls = ing.tls_addr.unwrap();
    let mut open = connect(tls, pki.client_config(None)).unwrap();
    assert_eq!(peer_cert(&open), srv2);
    assert_eq!(status(&mut open, &path, b"watch-before"), 202);
    install(&pki, "srv1", &["pem", "key"]);
    wait_until(
        "srv1 served after the files changed",
        Duration::from_secs(10),
        || served(tls, &pki) == srv1,
    );
    assert_eq!(status(&mut open, &path, b"watch-after"), 202);

    let want = sorted(&["hup-before", "hup-after", "watch-before", "watch-after"]);
    assert_eq!(values(&b.addr, &topic, want.len()), want);
}

/// The first TLS record a rustls client sends (its ClientHello).
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(pki.client_config(None), name).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn plain_http_garbage_and_truncated_handshakes_are_refused_and_the_server_serves_on() {
    let pki = Pki::new("refuse");
    let b = broker();
    let topic = b.topic("tls-refuse", 1);
    let ing = start(&pki, &[("INGESTD_HEADER_TIMEOUT_MS", "1000")]);
    let tls = ing.tls_addr.unwrap();
    let path = format!("/topics/{topic}");

    // Plain HTTP on the HTTPS port: a plain 400 that says what to do, then close.
    let mut c = Client::connect(tls).unwrap();
    let r = c.request(&post(&path, b"plain", &[])).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("use https://"), "{}", r.text());
    assert!(c.closed(Duration::from_secs(5)));

    // Bytes that are neither TLS nor HTTP: rustls's alert, then close.
    let mut g = Client::connect(tls).unwrap();
    g.send(&[0u8; 64]).unwrap();
    assert!(g.closed(Duration::from_secs(5)));

    // Half a ClientHello, then the client gives up.
    let hello = client_hello(&pki);
    let mut t = Client::connect(tls).unwrap();
    t.send(&hello[..hello.len() / 2]).unwrap();
    drop(t);

    // Half a ClientHello, then silence: closed at header_timeout_ms (1 s here), not held
    // for the 60 s idle timeout.
    let mut t = Client::connect(tls).unwrap();
    t.send(&hello[..hello.len() / 2]).unwrap();
    let t0 = Instant::now();
    assert!(t.closed(Duration::from_secs(10)));
    assert!(t0.elapsed() < Duration::from_secs(10));

    // A client that does not trust the certificate gives up during the handshake.
    let stranger = Pki::new("stranger");
    assert!(connect(tls, stranger.client_config(None)).is_err());

    wait_until(
        "handshake failures counted",
        Duration::from_secs(10),
        || ing.metric("ingestd_tls_handshake_failures_total", "") >= 5.0,
    );
    assert_eq!(
        ing.metric("ingestd_http_requests_total", "code=\"400\""),
        1.0
    );

    // Still serving, over TLS and plain.
    let mut c = connect(tls, pki.client_config(None)).unwrap();
    assert_eq!(status(&mut c, &path, b"after"), 202);
    let mut p = Client::connect(ing.addr).unwrap();
    assert_eq!(status(&mut p, &path, b"plain-port"), 202);
    assert_eq!(values(&b.addr, &topic, 2), sorted(&["after", "plain-port"]));
}

#[test]
fn mutual_tls_refuses_missing_and_wrong_client_certificates() {
    let pki = Pki::new("mtls");
    let ca = pki.arg("clientca.pem");
    let b = broker();
    let topic = b.topic("tls-mtls", 1);
    let ing = start(&pki, &[("INGESTD_TLS_CLIENT_CA", ca.as_str())]);
    let tls = ing.tls_addr.unwrap();
    let path = format!("/topics/{topic}");

    // In TLS 1.3 the client finishes its half of the handshake before the server checks
    // its certificate: the refusal arrives as an alert at the first read.
    for (who, cfg) in [
        ("no certificate", pki.client_config(None)),
        ("a rogue CA's certificate", pki.client_config(Some("rogue"))),
    ] {
        let r = connect(tls, cfg).and_then(|mut c| c.request(&post(&path, b"refused", &[])));
        assert!(r.is_err(), "{who}: answered {:?}", r.map(|r| r.status));
    }
    let mut c = connect(tls, pki.client_config(Some("client"))).unwrap();
    assert_eq!(status(&mut c, &path, b"rustls-client"), 202);

    let port = tls.port();
    let url = format!("https://localhost:{port}{path}");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let curl = |name: &str, body: &str| {
        Command::new("curl")
            .args(["-sS", "--cacert", &pki.arg("ca.pem"), "--resolve", &resolve])
            .args(["--cert", &pki.arg(&format!("{name}.pem"))])
            .args(["--key", &pki.arg(&format!("{name}.key"))])
            .args(["-w", "%{http_code}", "--data-binary", body, &url])
            .output()
            .expect("curl")
    };
    let out = curl("rogue", "curl-rogue");
    assert!(
        !out.status.success(),
        "curl with a rogue certificate got in"
    );
    let out = curl("client", "curl-client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("202"));

    assert!(ing.metric("ingestd_tls_handshake_failures_total", "") >= 2.0);
    assert_eq!(
        values(&b.addr, &topic, 2),
        sorted(&["curl-client", "rustls-client"])
    );
}

#[test]
fn tls_key_and_kafka_secret_from_systemd_credentials() {
    let pki = Pki::new("creds");
    // What LoadCredential= makes: one file per credential, named as ingestd reads it.
    let dir = pki.path("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(pki.path("srv1.pem"), dir.join("tls_cert")).unwrap();
    std::fs::copy(pki.path("srv1.key"), dir.join("tls_key")).unwrap();
    std::fs::write(dir.join("kafka.sasl.password"), "hunter2\n").unwrap();
    let creds = dir.to_string_lossy().into_owned();
    let env = [
        ("CREDENTIALS_DIRECTORY", creds.as_str()),
        ("INGESTD_TLS_LISTEN", "127.0.0.1:0"),
        ("INGESTD_KAFKA_SASL_USERNAME", "alice"),
    ];

    let out = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .arg("--check-config")
        .envs(env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("tls_key");
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_string()
    };
    assert_eq!(
        line("tls_key ="),
        format!(
            "tls_key = \"{}\"  # credential {}",
            key.display(),
            key.display()
        )
    );
    let pw = dir.join("kafka.sasl.password");
    assert_eq!(
        line("\"sasl.password\""),
        format!(
            "\"sasl.password\" = \"<redacted>\"  # credential {}",
            pw.display()
        )
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert_eq!(
        line("\"sasl.username\""),
        "\"sasl.username\" = \"alice\"  # environment INGESTD_KAFKA_SASL_USERNAME"
    );

    // A credential name ingestd does not read is an error that names it.
    std::fs::write(dir.join("tls.key"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .arg("--check-config")
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.key") && err.contains("tls_key"), "{err}");
    std::fs::remove_file(dir.join("tls.key")).unwrap();

    // And the daemon serves HTTPS with the key it found there.
    let b = broker();
    let topic = b.topic("tls-creds", 1);
    let ing = Ingestd::start_env(&["--brokers", &b.addr, "--topics", "*"], &env);
    let tls = ing.tls_addr.unwrap();
    let mut c = connect(tls, pki.client_config(None)).unwrap();
    assert_eq!(peer_cert(&c), pki.der("srv1"));
    let r = c.request(&post(&format!("/topics/{topic}"), b"from-credentials", &[]));
    assert_eq!(r.unwrap().status, 202);
    assert_eq!(values(&b.addr, &topic, 1), sorted(&["from-credentials"]));
    assert!(Path::new(&creds).exists());
}
