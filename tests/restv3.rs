//! Kafka REST v3 produce, as Confluent's clients send it: one record per request, a
//! chunked stream of records, `records:batch`, and the cluster pages they look up first.
//! Records are read back from a real tansu broker and compared byte for byte.

mod common;

use common::http::{get, post, Client, Response};
use common::{broker, find_value as find, read_topic, wait_until, Ingestd};
use serde_json::Value;
use std::time::Duration;

const SETTLE: Duration = Duration::from_millis(1500);
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// The answers of a stream: concatenated JSON objects.
fn objects(r: &Response) -> Vec<Value> {
    serde_json::Deserializer::from_slice(&r.body)
        .into_iter()
        .map(|v| v.unwrap_or_else(|e| panic!("{e}: {}", r.text())))
        .collect()
}

/// The cluster id ingestd found in Kafka's metadata (503 until the probe's first answer).
fn cluster_id(d: &Ingestd) -> String {
    let mut id = String::new();
    wait_until("GET /v3/clusters", Duration::from_secs(20), || {
        let r = get(d.addr, "/v3/clusters").unwrap();
        if r.status == 200 {
            id = json(&r)["data"][0]["cluster_id"]
                .as_str()
                .unwrap()
                .to_string();
            return true;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        false
    });
    id
}

/// The `error_code` of each of a stream's reports, in order.
fn error_codes(r: &Response) -> Vec<u64> {
    objects(r)
        .iter()
        .map(|o| o["error_code"].as_u64().unwrap())
        .collect()
}

fn chunked(path: &str, chunks: &[&[u8]], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut w = format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n");
    for (n, v) in headers {
        w.push_str(&format!("{n}: {v}\r\n"));
    }
    w.push_str("\r\n");
    let mut w = w.into_bytes();
    for c in chunks {
        w.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        w.extend_from_slice(c);
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"0\r\n\r\n");
    w
}

#[test]
fn v3_records_batches_and_streams_arrive_exactly_with_their_offsets() {
    let b = broker();
    let topic = b.topic("restv3", 3);
    let d = Ingestd::start(&["--brokers", &b.addr, "--topics", "*", "--executors", "2"]);
    let id = cluster_id(&d);
    assert!(!id.is_empty());
    let r = get(d.addr, &format!("/kafka/v3/clusters/{id}")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let c = json(&r);
    assert_eq!(
        (c["kind"].as_str(), c["cluster_id"].as_str()),
        (Some("KafkaCluster"), Some(&*id))
    );
    // The links point back where the client came from (its Host header).
    let this = format!("http://test/kafka/v3/clusters/{id}");
    assert_eq!(c["metadata"]["self"], this.as_str());
    let r = get(d.addr, "/v3/clusters/not-it").unwrap();
    assert_eq!(
        (r.status, json(&r)["error_code"].as_u64()),
        (404, Some(404))
    );

    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/v3/clusters/{id}/topics/{topic}/records");

    // The example of Confluent's documentation (its value JSON instead of AVRO, which
    // needs a schema registry): 200 after Kafka's ack, where the record landed.
    let r = c
        .request(&post(
            &path,
            br#"{"partition_id":1,"headers":[{"name":"Header-1","value":"SGVhZGVyLTE="},{"name":"Header-2","value":"SGVhZGVyLTI="}],"key":{"type":"BINARY","data":"Zm9vYmFy"},"value":{"type":"JSON","data":{"foo": "bar"}}}"#,
            &[JSON],
        ))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let one = json(&r);
    assert_eq!(one["error_code"], 200);
    assert_eq!(
        (one["cluster_id"].as_str(), one["topic_name"].as_str()),
        (Some(&*id), Some(&*topic))
    );
    assert_eq!(one["partition_id"], 1);
    assert!(one["offset"].is_i64(), "{one}");
    assert_eq!(one["key"], serde_json::json!({"type": "BINARY", "size": 6}));
    assert_eq!(
        one["value"],
        serde_json::json!({"type": "JSON", "size": 13})
    );

    // Under /kafka/v3 too, a STRING value; a client asking for `queued` gets 202 and no
    // made-up offset.
    let r = c
        .request(&post(
            &format!("/kafka{path}"),
            br#"{"value":{"type":"STRING","data":"queued text"}}"#,
            &[JSON, ("Kafka-Ack", "queued")],
        ))
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let q = json(&r);
    assert_eq!(
        (q["error_code"].as_u64(), q["offset"].is_null()),
        (Some(202), true),
        "{q}"
    );

    // A batch: each entry answered by its id; a bad one fails alone.
    let r = c
        .request(&post(
            &format!("{path}:batch"),
            br#"{"entries":[{"id":"1","partition_id":2,"key":{"type":"STRING","data":"k1"},"value":{"type":"JSON","data":[1,2]}},
                            {"id":"2","value":{"type":"AVRO","data":"x"}},
                            {"id":"3","value":{"type":"BINARY","data":"YmF0Y2g="}}]}"#,
            &[JSON],
        ))
        .unwrap();
    assert_eq!(r.status, 207, "{}", r.text());
    let batch = json(&r);
    let ok = batch["successes"].as_array().unwrap();
    assert_eq!(ok.len(), 2, "{batch}");
    assert_eq!(
        (ok[0]["id"].as_str(), ok[0]["partition_id"].as_i64()),
        (Some("1"), Some(2))
    );
    assert!(ok[1]["offset"].is_i64(), "{batch}");
    assert_eq!(batch["failures"][0]["id"], "2");
    assert_eq!(batch["failures"][0]["error_code"], 400);

    // A stream (chunked): one report per record in order; the bad one in the middle
    // fails alone, the JSON split across chunks is whole again.
    let r = c
        .request(&chunked(
            &path,
            &[
                br#"{"value":{"type":"STRING","data":"s1"}}{"value":{"type":"#,
                br#""PROTOBUF","data":"s2"}}"#,
                br#"{"value":{"type":"STRING","data":"s3"},"partition_id":0}"#,
            ],
            &[JSON],
        ))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let reports = objects(&r);
    let codes = error_codes(&r);
    assert_eq!(codes, [200, 400, 200], "{}", r.text());
    assert_eq!(reports[2]["partition_id"], 0);
    // Kafka refusing one record of a group (a partition the topic lacks) fails that one
    // alone; the other is produced and says so.
    let r = c
        .request(&chunked(
            &path,
            &[br#"{"value":{"type":"STRING","data":"nowhere"},"partition_id":99}{"value":{"type":"STRING","data":"kept"}}"#],
            &[JSON],
        ))
        .unwrap();
    let mixed = objects(&r);
    let codes = error_codes(&r);
    assert_eq!(codes, [400, 200], "{}", r.text());
    // A stream that ends inside a value: the records before it, then its error; the
    // connection goes on (the framing is intact).
    let r = c
        .request(&chunked(
            &path,
            &[br#"{"value":{"type":"STRING","data":"before"}}{"value":{"type""#],
            &[JSON],
        ))
        .unwrap();
    let codes = error_codes(&r);
    assert_eq!(codes, [200, 400], "{}", r.text());

    // Refused whole, in v3's error shape, on the same connection; nothing produced.
    for (p, body, ct, status) in [
        (path.clone(), &br#"{"value":"#[..], "application/json", 400),
        (
            path.clone(),
            br#"{"value":{"type":"JSON","data":1},"timestamp":"2021-02-05T19:14:42Z"}"#,
            "application/json",
            400,
        ),
        (
            path.clone(),
            br#"{"value":{"type":"JSON","data":1}}"#,
            "text/plain",
            415,
        ),
        (
            path.replace(&topic, "nonexistent-v3"),
            br#"{"value":{"type":"JSON","data":1}}"#,
            "application/json",
            404,
        ),
        (
            path.replace(&id, "other"),
            br#"{"value":{"type":"JSON","data":1}}"#,
            "application/json",
            404,
        ),
        (
            format!("{path}:batch"),
            br#"{"entries":[]}"#,
            "application/json",
            400,
        ),
        // A partition Kafka does not have (3 partitions): Kafka's refusal, no offset.
        (
            path.clone(),
            br#"{"value":{"type":"JSON","data":1},"partition_id":99}"#,
            "application/json",
            400,
        ),
    ] {
        let r = c.request(&post(&p, body, &[("Content-Type", ct)])).unwrap();
        assert_eq!(
            r.status,
            status,
            "{}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        let e = json(&r);
        assert_eq!(e["error_code"].as_u64(), Some(status as u64), "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
        assert!(e.get("offset").is_none(), "{e}");
    }

    let recs = read_topic(&b.addr, &topic, 3, 8, SETTLE);
    assert_eq!(recs.len(), 8, "exactly the accepted records: {recs:?}");
    assert_eq!(
        find(&recs, b"kept").offset,
        mixed[1]["offset"].as_i64().unwrap()
    );
    find(&recs, b"before");
    let r = find(&recs, br#"{"foo":"bar"}"#);
    assert_eq!(
        (r.key.as_deref(), r.partition, r.offset),
        (Some(&b"foobar"[..]), 1, one["offset"].as_i64().unwrap())
    );
    assert_eq!(
        r.headers,
        vec![
            ("Header-1".to_string(), b"Header-1".to_vec()),
            ("Header-2".to_string(), b"Header-2".to_vec())
        ]
    );
    assert!(r.headers.iter().all(|(n, _)| n != "ingestd-tenant"));
    find(&recs, b"queued text");
    let r = find(&recs, b"[1,2]");
    assert_eq!((r.key.as_deref(), r.partition), (Some(&b"k1"[..]), 2));
    assert_eq!(r.offset, ok[0]["offset"].as_i64().unwrap());
    assert_eq!(
        find(&recs, b"batch").offset,
        ok[1]["offset"].as_i64().unwrap()
    );
    let r = find(&recs, b"s3");
    assert_eq!(
        (r.partition, r.offset),
        (0, reports[2]["offset"].as_i64().unwrap())
    );
    assert_eq!(
        find(&recs, b"s1").offset,
        reports[0]["offset"].as_i64().unwrap()
    );
}

#[test]
fn v3_batch_entries_are_limited_and_a_spool_answers_201_without_offsets() {
    let b = broker();
    let topic = b.topic("restv3spool", 1);
    let dir = std::env::temp_dir().join(format!("ingestd-v3spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Ingestd::start_env(
        &["--brokers", &b.addr, "--topics", "*", "--executors", "1"],
        &[
            ("INGESTD_SPOOL_DIR", dir.to_str().unwrap()),
            ("INGESTD_REST_V3_BATCH_MAX_ENTRIES", "2"),
            ("INGESTD_REST_V3_ACK", "durable"),
            ("INGESTD_MAX_BODY_BYTES", "4096"),
        ],
    );
    let id = cluster_id(&d);
    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/v3/clusters/{id}/topics/{topic}/records");
    let entry = |i: u32| format!(r#"{{"id":"e{i}","value":{{"type":"STRING","data":"v{i}"}}}}"#);
    let batch = |n: u32| {
        format!(
            r#"{{"entries":[{}]}}"#,
            (0..n).map(entry).collect::<Vec<_>>().join(",")
        )
    };
    // At the limit: taken, synced to the spool (201), no offsets claimed.
    let r = c
        .request(&post(
            &format!("{path}:batch"),
            batch(2).as_bytes(),
            &[JSON],
        ))
        .unwrap();
    assert_eq!(r.status, 207, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["successes"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["successes"][0].get("offset").is_none(), "{v}");
    // One past it: 413, nothing produced, the connection kept.
    let r = c
        .request(&post(
            &format!("{path}:batch"),
            batch(3).as_bytes(),
            &[JSON],
        ))
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(json(&r)["error_code"], 413);
    // The config's contract (durable): 201, and a client asking for kafka gets offsets.
    let r = c
        .request(&post(
            &path,
            br#"{"value":{"type":"STRING","data":"one"}}"#,
            &[JSON],
        ))
        .unwrap();
    assert_eq!(
        (r.status, json(&r)["error_code"].as_u64()),
        (201, Some(201)),
        "{}",
        r.text()
    );
    let r = c
        .request(&post(
            &path,
            br#"{"value":{"type":"STRING","data":"two"}}"#,
            &[JSON, ("Kafka-Ack", "kafka")],
        ))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(json(&r)["offset"].is_i64());
    // max_body_bytes (4,096) bounds one record of a stream, not the stream nor a chunk:
    // a 10 KB chunk of 100 records is taken; a record over the limit ends the stream.
    let many: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"value":{{"type":"STRING","data":"s{i:0>64}"}}}}"#))
        .collect();
    let big = many.concat();
    assert!(big.len() > 2 * 4096);
    let r = c
        .request(&chunked(&path, &[big.as_bytes()], &[JSON]))
        .unwrap();
    let codes = error_codes(&r);
    assert_eq!(codes, vec![201; 100], "{}", r.text());
    let huge = format!(
        r#"{{"value":{{"type":"STRING","data":"{}"}}}}"#,
        "h".repeat(5000)
    );
    // A complete record over the limit fails alone (413); the one after it is taken.
    let r = c
        .request(&chunked(
            &path,
            &[huge.as_bytes(), many[1].as_bytes()],
            &[JSON],
        ))
        .unwrap();
    let codes = error_codes(&r);
    assert_eq!(codes, [413, 201], "{}", r.text());
    // One still arriving that is already over it ends the stream: the rest of that body
    // cannot be read, so the connection ends after the answer.
    let mut w = chunked(&path, &[&huge.as_bytes()[..4500]], &[JSON]);
    w.truncate(w.len() - 5); // no last chunk: the record is still "arriving"
    let r = c.request(&w).unwrap();
    let codes = error_codes(&r);
    assert_eq!(codes, [413], "{}", r.text());
    assert!(c.closed(Duration::from_secs(10)));
    let extra = 1;
    let recs = read_topic(&b.addr, &topic, 1, 104 + extra, SETTLE);
    let mut values: Vec<_> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .filter(|v| !v.starts_with('s'))
        .collect();
    values.sort();
    assert_eq!(values, ["one", "two", "v0", "v1"]);
    assert_eq!(recs.len(), 104 + extra);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

fn stream_client(args: &[&str]) -> std::process::Child {
    std::process::Command::new("python3")
        .arg(common::repo().join("tests/data/v3_stream.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3")
}

fn line(r: &mut impl std::io::BufRead) -> Value {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
}

#[test]
fn a_v3_stream_gets_its_reports_while_it_is_still_sending() {
    let b = broker();
    let topic = b.topic("restv3stream", 3);
    let d = Ingestd::start(&["--brokers", &b.addr, "--topics", "*", "--executors", "2"]);
    let id = cluster_id(&d);
    let path = format!("/v3/clusters/{id}/topics/{topic}/records");
    let (n, bad) = (10_000usize, 5_000usize);
    let port = d.addr.port().to_string();
    let mut py = stream_client(&[
        "live",
        "127.0.0.1",
        &port,
        &path,
        &n.to_string(),
        &bad.to_string(),
    ]);
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let s = line(&mut out);
    assert!(py.wait().unwrap().success());
    assert!(s["error"].is_null(), "{s}");
    // The client waited, after its first 100 records, for a report: it came while 9,900
    // records were still to be sent.
    assert_eq!(s["sent_when_first"], 100, "{s}");
    assert_eq!(
        (s["status"].as_u64(), s["reports"].as_u64()),
        (Some(200), Some(n as u64)),
        "{s}"
    );
    assert_eq!(
        s["codes"],
        serde_json::json!({"200": n - 1, "400": 1}),
        "{s}"
    );
    assert_eq!(s["bad"]["error_code"], 400);
    assert!(
        s["bad"]["message"].as_str().unwrap().contains("AVRO"),
        "{s}"
    );
    // Every report's offset is its record's: read back, each value where its report said.
    let offsets = s["offsets"].as_array().unwrap();
    let recs = read_topic(&b.addr, &topic, 3, n - 1, SETTLE);
    assert_eq!(recs.len(), n - 1);
    let mut by_value = std::collections::HashMap::new();
    for r in &recs {
        by_value.insert(String::from_utf8(r.value.clone()).unwrap(), r.offset);
    }
    for (i, o) in offsets.iter().enumerate() {
        match i == bad {
            true => assert!(o.is_null()),
            false => assert_eq!(
                Some(&o.as_i64().unwrap()),
                by_value.get(&format!("r{i}")),
                "record {i}"
            ),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_v3_stream_whose_reports_are_not_read_is_throttled_not_buffered() {
    let b = broker();
    let topic = b.topic("restv3slow", 1);
    let d = Ingestd::start_env(
        &["--brokers", &b.addr, "--topics", "*", "--executors", "1"],
        &[
            ("INGESTD_REST_V3_STREAM_WINDOW", "64"),
            ("INGESTD_ACK_TIMEOUT_MS", "60000"),
        ],
    );
    let id = cluster_id(&d);
    let path = format!("/v3/clusters/{id}/topics/{topic}/records");
    let before = rss_kib(d.child.id());
    // 2,000,000 records (about 110 MB of chunks) if nothing stopped the client.
    let n = 2_000_000u64;
    let port = d.addr.port().to_string();
    let mut py = stream_client(&["slow", "127.0.0.1", &port, &path, &n.to_string()]);
    let mut out = std::io::BufReader::new(py.stdout.take().unwrap());
    let stalled = line(&mut out);
    assert_eq!(stalled["stalled"], true, "{stalled}");
    let sent = stalled["sent"].as_u64().unwrap();
    let grown = rss_kib(d.child.id()).saturating_sub(before);
    eprintln!("slow reader: stalled after {sent} records; ingestd's RSS grew {grown} KiB");
    // What the kernel's socket buffers hold plus the window: far from the stream's size.
    assert!(sent < n / 4, "{stalled}");
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB with {sent} records sent"
    );
    // The client reads now: every record it sent gets its report.
    use std::io::Write;
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let s = line(&mut out);
    assert!(py.wait().unwrap().success());
    assert!(s["error"].is_null(), "{s}");
    let sent = s["sent"].as_u64().unwrap();
    assert_eq!(
        (s["status"].as_u64(), s["reports"].as_u64()),
        (Some(200), Some(sent)),
        "{s}"
    );
    assert_eq!(s["codes"], serde_json::json!({"200": sent}), "{s}");
    let r = get(d.addr, "/healthz").unwrap();
    assert_eq!(r.status, 200);
}

/// A stream's answer read as it comes: its head, then the report objects so far.
struct Reports {
    s: std::net::TcpStream,
    buf: Vec<u8>,
    data: Vec<u8>,
    head: bool,
}

impl Reports {
    fn new(s: std::net::TcpStream) -> Reports {
        Reports {
            s,
            buf: Vec::new(),
            data: Vec::new(),
            head: false,
        }
    }

    /// Reads until `n` reports are in (the test fails after 30 s); returns them all.
    fn until(&mut self, n: usize) -> Vec<Value> {
        use std::io::Read;
        self.s
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        loop {
            if !self.head {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..i]).to_lowercase();
                    assert!(
                        head.starts_with("http/1.1 200")
                            && head.contains("transfer-encoding: chunked"),
                        "{head}"
                    );
                    self.buf.drain(..i + 4);
                    self.head = true;
                }
            }
            while self.head {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..eol]).unwrap(), 16)
                        .unwrap();
                if self.buf.len() < eol + 2 + size + 2 {
                    break;
                }
                self.data
                    .extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
                self.buf.drain(..eol + 2 + size + 2);
            }
            let got: Vec<Value> = serde_json::Deserializer::from_slice(&self.data)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            if got.len() >= n {
                return got;
            }
            let mut tmp = [0u8; 65536];
            let k = self.s.read(&mut tmp).expect("reports within 30 s");
            assert!(k > 0, "closed after {} reports", got.len());
            self.buf.extend_from_slice(&tmp[..k]);
        }
    }
}

fn chunk_of(records: &[String]) -> Vec<u8> {
    let data = records.concat();
    let mut w = format!("{:x}\r\n", data.len()).into_bytes();
    w.extend_from_slice(data.as_bytes());
    w.extend_from_slice(b"\r\n");
    w
}

#[test]
fn tenants_refuse_v3_requests_in_v3_shape_and_a_stream_over_its_byte_budget_fails_alone() {
    let b = broker();
    let topic = b.topic("restv3tenant", 1);
    let other = b.topic("restv3other", 1);
    // 200 B/s with a 4,000 B burst: the stream's first group fits, its second is over
    // what is left (even after 4 s of refill, for a slow machine), its third fits again.
    let cfg = common::temp_config(
        "restv3-tenant",
        &format!(
            "[tenants.acme]\ntokens = [\"tok-acme\"]\ntopics = [\"{topic}\"]\nbytes_per_sec = 200\nburst_secs = 20.0\nmax_body_bytes = 4000\n"
        ),
    );
    let d = common::start_with_config(&cfg, &topic, "1", &[]);
    let id = cluster_id(&d);
    let mut c = Client::connect(d.addr).unwrap();
    let path = |t: &str| format!("/v3/clusters/{id}/topics/{t}/records");
    let auth = ("Authorization", "Bearer tok-acme");
    let rec = |i: usize| format!(r#"{{"value":{{"type":"STRING","data":"{i:0>60}"}}}}"#);
    for (p, headers, status) in [
        (path(&topic), vec![JSON], 401),
        (path(&other), vec![JSON, auth], 403),
    ] {
        let r = c.request(&post(&p, rec(0).as_bytes(), &headers)).unwrap();
        assert_eq!(r.status, status, "{}", r.text());
        let e = json(&r);
        assert_eq!(e["error_code"].as_u64(), Some(status as u64), "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    }
    let r = c
        .request(&post(
            &path(&topic),
            b"{}",
            &[JSON, ("Authorization", "Bearer nope")],
        ))
        .unwrap();
    assert_eq!(
        (r.status, json(&r)["error_code"].as_u64()),
        (401, Some(401))
    );

    // Each group is sent once the reports of the one before are in, so that each is
    // read (and charged) alone.
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    use std::io::Write;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: Bearer tok-acme\r\nTransfer-Encoding: chunked\r\n\r\n",
        path(&topic)
    );
    let group = |from: usize, n: usize| chunk_of(&(from..from + n).map(rec).collect::<Vec<_>>());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&group(0, 30)).unwrap(); // 2,970 B
    let mut reports = Reports::new(s.try_clone().unwrap());
    reports.until(30);
    s.write_all(&group(30, 20)).unwrap(); // 1,980 B: over the ~1,030 B left
    reports.until(50);
    s.write_all(&group(50, 1)).unwrap();
    s.write_all(b"0\r\n\r\n").unwrap();
    let got = reports.until(51);
    let codes: Vec<u64> = got
        .iter()
        .map(|o| o["error_code"].as_u64().unwrap())
        .collect();
    let mut want = vec![200; 30];
    want.extend([429; 20]);
    want.push(200);
    assert_eq!(codes, want);
    let recs = read_topic(&b.addr, &topic, 1, 31, SETTLE);
    assert_eq!(recs.len(), 31, "the first group and the last");
    assert_eq!(recs[30].value, format!("{:0>60}", 50).into_bytes());
}

#[test]
fn a_record_its_topics_schema_refuses_fails_alone_in_streams_and_batches() {
    let b = broker();
    let topic = b.topic("restv3schema", 1);
    let schema =
        std::env::temp_dir().join(format!("ingestd-v3-schema-{}.json", std::process::id()));
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}"#,
    )
    .unwrap();
    let cfg = common::temp_config(
        "restv3-schema",
        &format!("[topic.{topic:?}]\nschema = {:?}\n", schema),
    );
    let d = common::start_with_config(&cfg, &topic, "1", &[]);
    let id = cluster_id(&d);
    let mut c = Client::connect(d.addr).unwrap();
    let path = format!("/v3/clusters/{id}/topics/{topic}/records");
    let rec = |v: &str| format!(r#"{{"value":{{"type":"JSON","data":{v}}}}}"#);
    // One record: refused whole, the schema's report with v3's error code.
    let r = c
        .request(&post(&path, rec(r#"{"n":"x"}"#).as_bytes(), &[JSON]))
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    let e = json(&r);
    assert_eq!(e["error_code"], 422, "{e}");
    assert_eq!(e["errors"][0]["path"], "/n", "{e}");
    // A stream (one chunk: one group) and a batch: the invalid record alone fails.
    let stream = [rec(r#"{"n":1}"#), rec(r#"{"m":2}"#), rec(r#"{"n":3}"#)].concat();
    let r = c
        .request(&chunked(&path, &[stream.as_bytes()], &[JSON]))
        .unwrap();
    let codes = error_codes(&r);
    assert_eq!(codes, [200, 422, 200], "{}", r.text());
    let batch = br#"{"entries":[{"id":"a","value":{"type":"JSON","data":{"n":"no"}}},{"id":"b","value":{"type":"JSON","data":{"n":4}}}]}"#;
    let r = c
        .request(&post(&format!("{path}:batch"), batch, &[JSON]))
        .unwrap();
    assert_eq!(r.status, 207, "{}", r.text());
    let v = json(&r);
    assert_eq!(
        (
            v["successes"][0]["id"].as_str(),
            v["failures"][0]["id"].as_str()
        ),
        (Some("b"), Some("a")),
        "{v}"
    );
    assert_eq!(v["failures"][0]["error_code"], 422, "{v}");
    let recs = read_topic(&b.addr, &topic, 1, 3, SETTLE);
    let values: Vec<_> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(values, [r#"{"n":1}"#, r#"{"n":3}"#, r#"{"n":4}"#]);
}
