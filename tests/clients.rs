//! The clients that already exist, unchanged: Kafka REST v2 bodies shaped as Confluent's
//! and Strimzi's documentation shows them, and compressed bodies from Python `requests`,
//! curl and a zstd encoder. Records are read back from a real tansu broker and compared
//! byte for byte; refused requests must leave nothing behind.

mod common;

use common::http::{post, Client, Response};
use common::{broker, find_value as find, read_topic, Ingestd, Rec};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const SETTLE: Duration = Duration::from_millis(1500);
const JSON: &str = "application/vnd.kafka.json.v2+json";
const BINARY: &str = "application/vnd.kafka.binary.v2+json";

fn start(extra_env: &[(&str, &str)]) -> Ingestd {
    let b = broker();
    Ingestd::start_env(
        &["--brokers", &b.addr, "--topics", "*", "--executors", "2"],
        extra_env,
    )
}

fn send(c: &mut Client, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
    c.request(&post(path, body, headers)).expect("answer")
}

fn by_offset(mut recs: Vec<Rec>) -> Vec<Rec> {
    recs.sort_by_key(|r| (r.partition, r.offset));
    recs
}

#[test]
fn rest_v2_bodies_arrive_with_exact_keys_values_headers_and_partitions() {
    let b = broker();
    let topic = b.topic("restv2", 3);
    let d = start(&[]);
    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/topics/{topic}");

    // Confluent's json example, answered after Kafka's ack: offsets are real.
    let r = send(
        &mut c,
        &path,
        br#"{"records":[{"key":"somekey","value":{"foo": "bar"}},{"value":[ 1, 2 ],"partition":1},{"value":53.5,"partition":1}]}"#,
        &[("Content-Type", JSON), ("Kafka-Ack", "kafka")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.kafka.v2+json")
    );
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["key_schema_id"], serde_json::Value::Null);
    let offsets = answer["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 3, "{answer}");
    for o in offsets {
        assert!(
            o["error_code"].is_null() && o["error"].is_null(),
            "{answer}"
        );
    }
    assert_eq!(offsets[1]["partition"], 1);

    // Binary to an explicit partition (path form), answered once queued: 202, the
    // partition asked for, no offset yet.
    let r = send(
        &mut c,
        &format!("{path}/partitions/2"),
        br#"{"records":[{"key":"a2V5","value":"Y29uZmx1ZW50"},{"value":"bG9ncw"}]}"#,
        &[("Content-Type", BINARY)],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["offsets"][0]["partition"], 2);
    assert!(answer["offsets"][1]["offset"].is_null(), "{answer}");

    // Strimzi's json example with headers (base64 values), and its text format.
    let r = send(
        &mut c,
        &path,
        br#"{"records":[{"key":"key-1","value":"value-1","headers":[{"key":"key1","value":"QXBhY2hlIEthZmth"}]},{"value":"value-2","partition":0}]}"#,
        &[("Content-Type", JSON)],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = send(
        &mut c,
        &path,
        br#"{"records":[{"key":"t","value":"plain text"}]}"#,
        &[("Content-Type", "application/vnd.kafka.text.v2+json")],
    );
    assert_eq!(r.status, 202, "{}", r.text());

    // Refused, each with its reason in the REST error body, on the same connection.
    for (body, ct, status) in [
        (&br#"{"records":[{"value":1},{"key":2}]}"#[..], JSON, 422),
        (br#"{"records":[{"value":1}"#, JSON, 400),
        (br#"{"records":[{"value":"***"}]}"#, BINARY, 422),
        (br#"{"records":[{"value":null}]}"#, JSON, 422),
        (
            br#"{"value_schema":"x","records":[{"value":1}]}"#,
            "application/vnd.kafka.avro.v2+json",
            415,
        ),
    ] {
        let r = send(&mut c, &path, body, &[("Content-Type", ct)]);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(body));
        let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            e["error_code"].as_u64().unwrap() / 100,
            status as u64,
            "{e}"
        );
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    let r = send(
        &mut c,
        &format!("{path}/partitions/x"),
        br#"{"records":[{"value":1}]}"#,
        &[("Content-Type", JSON)],
    );
    assert_eq!(r.status, 400);

    // A record Kafka refuses (the topic has 3 partitions) under ack=kafka: an error in
    // the REST format, never an offset; nothing is produced.
    let r = send(
        &mut c,
        &format!("{path}/partitions/99"),
        br#"{"records":[{"value":"nowhere"}]}"#,
        &[("Content-Type", JSON), ("Kafka-Ack", "kafka")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(e["error_code"].as_u64().unwrap() / 100, 400, "{e}");
    assert!(
        e.get("offsets").is_none(),
        "no offset for a refused record: {e}"
    );
    assert!(e["message"].as_str().unwrap().contains("partition"), "{e}");

    let recs = by_offset(read_topic(&b.addr, &topic, 3, 8, SETTLE));
    assert_eq!(recs.len(), 8, "exactly the accepted records: {recs:?}");
    let r = find(&recs, br#"{"foo":"bar"}"#);
    assert_eq!(r.key.as_deref(), Some(&b"\"somekey\""[..]));
    let (p, o) = (
        offsets[0]["partition"].as_i64(),
        offsets[0]["offset"].as_i64(),
    );
    assert_eq!((Some(r.partition as i64), Some(r.offset)), (p, o));
    let r = find(&recs, b"[1,2]");
    assert_eq!(
        (r.partition, r.offset as u64),
        (1, offsets[1]["offset"].as_u64().unwrap())
    );
    assert_eq!(find(&recs, b"53.5").partition, 1);
    let r = find(&recs, b"confluent");
    assert_eq!((r.key.as_deref(), r.partition), (Some(&b"key"[..]), 2));
    assert_eq!(find(&recs, b"logs").partition, 2);
    let r = find(&recs, b"\"value-1\"");
    assert_eq!(r.key.as_deref(), Some(&b"\"key-1\""[..]));
    assert_eq!(
        r.headers,
        vec![("key1".to_string(), b"Apache Kafka".to_vec())]
    );
    assert_eq!(find(&recs, b"\"value-2\"").partition, 0);
    assert_eq!(find(&recs, b"plain text").key.as_deref(), Some(&b"t"[..]));
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_bodies_from_real_clients_and_every_bad_one_refused_whole() {
    let b = broker();
    let topic = b.topic("gzip", 1);
    // Under the broker's default message.max.bytes (1 MB), above the gzip bomb's wire size.
    let max = 512 * 1024;
    let d = start(&[("INGESTD_MAX_BODY_BYTES", &max.to_string())]);
    let url = format!("http://{}/topics/{topic}", d.addr);

    // Python requests with a gzip NDJSON body.
    let py = r#"
import gzip, sys, requests
body = gzip.compress(b'{"n":1}\n{"n":2}\n{"n":3}\n')
r = requests.post(sys.argv[1], data=body, headers={
    "Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"})
print(r.status_code, r.text.strip())
"#;
    let out = Command::new("python3")
        .args(["-c", py, &url])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), r#"202 {"queued":3}"#);

    // curl --data-binary @file.gz.
    let file = std::env::temp_dir().join(format!("ingestd-curl-{}.gz", std::process::id()));
    std::fs::write(&file, gzip(b"from curl")).unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Encoding: gzip",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(&url)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202");

    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/topics/{topic}");
    let zstd = zstd::encode_all(&b"zstd body"[..], 3).unwrap();
    let r = send(&mut c, &path, &zstd, &[("Content-Encoding", "zstd")]);
    assert_eq!(r.status, 202);
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    deflate.write_all(b"deflate body").unwrap();
    let r = send(
        &mut c,
        &path,
        &deflate.finish().unwrap(),
        &[("Content-Encoding", "deflate")],
    );
    assert_eq!(r.status, 202);
    // A REST v2 body, gzipped: decoded before its records are taken.
    let rest = gzip(br#"{"records":[{"value":"rest in gzip"}]}"#);
    let r = send(
        &mut c,
        &path,
        &rest,
        &[
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/vnd.kafka.text.v2+json"),
        ],
    );
    assert_eq!(r.status, 202);
    // The cap applies to the decoded size, at its edge.
    let exact = vec![b'x'; max];
    let r = send(
        &mut c,
        &path,
        &gzip(&exact),
        &[("Content-Encoding", "gzip")],
    );
    assert_eq!(r.status, 202, "exactly max_body_bytes decoded");

    // A bomb: 256 MiB of zeros in about 256 KiB of gzip. 413 at once, and the connection
    // stays (the body was read whole), without the process growing by the bomb.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    let peak0 = d.peak_rss_kib();
    assert!(peak0 > 0, "VmHWM readable");
    let r = send(&mut c, &path, &bomb, &[("Content-Encoding", "gzip")]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("decoded"), "{}", r.text());
    // The peak, not the current RSS: a body decoded whole and then freed shows here.
    let peak = d.peak_rss_kib();
    assert!(
        peak < peak0 + 64 * 1024,
        "the bomb's output was not allocated: peak RSS {peak0} -> {peak} KiB"
    );
    let mut over = exact.clone();
    over.push(b'x');
    let r = send(&mut c, &path, &gzip(&over), &[("Content-Encoding", "gzip")]);
    assert_eq!(r.status, 413, "one byte over max_body_bytes decoded");

    let whole = gzip(b"never half-produced\n".repeat(100).as_slice());
    for (body, enc, status) in [
        (&whole[..whole.len() - 9], "gzip", 400), // truncated stream
        (b"not compressed at all", "gzip", 400),  // wrong header
        (b"brotli?", "br", 415),                  // unknown coding
        (&zstd[..zstd.len() - 2], "zstd", 400),
    ] {
        let r = send(&mut c, &path, body, &[("Content-Encoding", enc)]);
        assert_eq!(r.status, status, "{enc}: {}", r.text());
    }
    let r = send(&mut c, &path, b"still served", &[]);
    assert_eq!(r.status, 202, "the connection survived every refusal");

    let recs = read_topic(&b.addr, &topic, 1, 9, SETTLE);
    let mut values: Vec<Vec<u8>> = recs.into_iter().map(|r| r.value).collect();
    values.sort();
    let mut want: Vec<Vec<u8>> = [
        &b"{\"n\":1}"[..],
        b"{\"n\":2}",
        b"{\"n\":3}",
        b"from curl",
        b"zstd body",
        b"deflate body",
        b"rest in gzip",
        &exact,
        b"still served",
    ]
    .iter()
    .map(|v| v.to_vec())
    .collect();
    want.sort();
    assert_eq!(
        values.len(),
        want.len(),
        "nothing partial, nothing refused, produced"
    );
    assert!(values == want, "records differ from what was accepted");
}

/// With the spool on, REST v2 answers keep their promises too: 201 once on disk, 200 with
/// every record's real offset once Kafka acknowledged.
#[test]
fn rest_v2_with_the_spool_answers_201_and_exact_offsets() {
    let b = broker();
    let topic = b.topic("restv2-spool", 2);
    let dir = tempdir("restv2-spool");
    let d = Ingestd::start(&[
        "--brokers",
        &b.addr,
        "--topics",
        "*",
        "--executors",
        "1",
        "--spool-dir",
        dir.to_str().unwrap(),
    ]);
    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/topics/{topic}");
    let body = br#"{"records":[{"value":"a","partition":1},{"value":"b","partition":0},{"value":"c","partition":1}]}"#;
    let r = send(
        &mut c,
        &path,
        body,
        &[
            ("Content-Type", "application/vnd.kafka.text.v2+json"),
            ("Kafka-Ack", "durable"),
        ],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let a: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(a["offsets"][1]["partition"], 0, "{a}");
    let r = send(
        &mut c,
        &path,
        body,
        &[
            ("Content-Type", "application/vnd.kafka.text.v2+json"),
            ("Kafka-Ack", "kafka"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let a: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let recs = read_topic(&b.addr, &topic, 2, 6, SETTLE);
    assert_eq!(recs.len(), 6);
    for (i, v) in [b"a", b"b", b"c"].iter().enumerate() {
        let o = &a["offsets"][i];
        let at = (
            o["partition"].as_i64().unwrap() as i32,
            o["offset"].as_i64().unwrap(),
        );
        let r = recs
            .iter()
            .find(|r| (r.partition, r.offset) == at)
            .unwrap_or_else(|| panic!("no record at {at:?}: {a}"));
        assert_eq!(&r.value[..], &v[..], "record {i} is where the answer says");
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ingestd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// CORS for pages on other origins, spoken as a browser speaks it (tests/browser.rs has a
/// real headless browser do the same): a preflight, then the POST; sendBeacon's
/// text/plain body is a simple request and arrives as a raw record.
#[test]
fn cors_preflight_and_allow_headers_for_listed_origins_only() {
    let b = broker();
    let topic = b.topic("cors", 1);
    let page = "http://shop.example:3000";
    let d = start(&[(
        "INGESTD_CORS_ORIGINS",
        "http://shop.example:3000,https://other.example",
    )]);
    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/topics/{topic}");
    let preflight = |origin: &str| {
        format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, kafka-ack\r\n\r\n"
        )
    };
    let r = c.request(preflight(page).as_bytes()).unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(page));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, kafka-ack")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(
        r.header("content-length").is_none(),
        "204 has no Content-Length"
    );
    let r = c
        .request(preflight("https://evil.example").as_bytes())
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "not listed: no allow"
    );

    // The fetch after the preflight, a beacon, an error and a waited answer: all carry
    // the allow header for the listed origin, none for another.
    let json = [("Origin", page), ("Content-Type", "application/json")];
    let r = send(&mut c, &path, b"{\"page\":\"view\"}", &json);
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (202, Some(page))
    );
    assert_eq!(r.header("vary"), Some("origin"));
    let beacon = [
        ("Origin", page),
        ("Content-Type", "text/plain;charset=UTF-8"),
    ];
    let r = send(&mut c, &path, b"beacon", &beacon);
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (202, Some(page))
    );
    let r = send(&mut c, "/topics/bad%20name", b"x", &json);
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (400, Some(page))
    );
    let waited = [("Origin", page), ("Kafka-Ack", "kafka")];
    let r = send(&mut c, &path, b"acked", &waited);
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, Some(page))
    );
    let r = send(
        &mut c,
        &path,
        b"other",
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (202, None)
    );

    // CORS off: OPTIONS is just a method this path does not take.
    let plain = start(&[]);
    let mut c2 = Client::connect(plain.addr).unwrap();
    let r = c2.request(preflight(page).as_bytes()).unwrap();
    assert_eq!(r.status, 405);

    let recs = read_topic(&b.addr, &topic, 1, 4, SETTLE);
    let mut values: Vec<_> = recs.into_iter().map(|r| r.value).collect();
    values.sort();
    assert_eq!(
        values,
        [&b"acked"[..], b"beacon", b"other", b"{\"page\":\"view\"}"].map(<[u8]>::to_vec)
    );
}
