//! Schemas at the edge, end to end against tansu: valid records arrive byte for byte;
//! a request with an invalid record gets 422 naming the record and the field and nothing
//! of it reaches Kafka; dead-letter mode sends exactly the invalid records to the
//! dead-letter topic with headers; SIGHUP swaps a schema under load and keeps the old
//! one when the new file is broken; a broken schema refuses the start.

mod common;

use common::http::{post, Client, Response};
use common::{broker, read_topic, wait_until, Ingestd};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ORDER: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "price"],
  "properties": {
    "id": {"type": "string"},
    "price": {"type": "number", "minimum": 0},
    "qty": {"type": "integer"},
    "email": {"type": "string", "format": "email"},
    "note": {"type": "string", "maxLength": 100}
  }
}"#;

fn file(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ingestd-schemas-{name}-{}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

fn start(cfg: &std::path::Path, topic: &str) -> Ingestd {
    common::start_with_config(cfg, topic, "1", &[])
}

fn send(c: &mut Client, topic: &str, body: &[u8], h: &[(&str, &str)]) -> Response {
    c.request(&post(&format!("/topics/{topic}"), body, h))
        .unwrap()
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

const ND: (&str, &str) = ("Content-Type", "application/x-ndjson");
const KAFKA: (&str, &str) = ("Kafka-Ack", "kafka");

fn order(i: usize) -> String {
    format!(r#"{{"id":"o-{i}","price":{i}.5,"qty":{i},"email":"a{i}@shop.example","note":"n"}}"#)
}

#[test]
fn valid_records_arrive_byte_for_byte_and_a_request_with_an_invalid_one_produces_nothing() {
    let b = broker();
    let topic = b.topic("orders", 1);
    let schema = file("orders.json", ORDER);
    let cfg = common::temp_config(
        "schemas-reject",
        &format!(
            "[topic.{topic:?}]\nschema = {:?}\n",
            schema.to_str().unwrap()
        ),
    );
    let ing = start(&cfg, &topic);
    let mut c = Client::connect(ing.addr).unwrap();
    let mut want: Vec<Vec<u8>> = Vec::new();

    // A valid raw body, sent with odd spacing: the bytes arrive as sent.
    let raw = b"{ \"id\": \"o-1\",  \"price\": 2.50 }".to_vec();
    assert_eq!(send(&mut c, &topic, &raw, &[]).status, 202);
    want.push(raw);

    // An invalid field: 422 naming record 0 and the field; the connection stays.
    let r = send(&mut c, &topic, br#"{"id":"o-2","price":"cheap"}"#, &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = json(&r);
    assert_eq!(v["error_code"], 42201);
    assert_eq!(v["errors"][0]["record"], 0);
    assert_eq!(v["errors"][0]["path"], "/price");
    assert_eq!(v["invalid_records"], 1);
    // A required field missing, a format broken.
    let r = send(&mut c, &topic, br#"{"id":"o-3"}"#, &[]);
    assert_eq!(r.status, 422);
    assert!(json(&r)["errors"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("price"));
    let r = send(
        &mut c,
        &topic,
        br#"{"id":"o-3","price":1,"email":"no"}"#,
        &[],
    );
    assert_eq!(json(&r)["errors"][0]["path"], "/email");

    // Not JSON: 400; a content type that cannot be JSON: 415.
    let r = send(&mut c, &topic, b"{\"id\":\"o-4\",\"pri", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(json(&r)["message"].as_str().unwrap().contains("not JSON"));
    let r = send(
        &mut c,
        &topic,
        br#"{"id":"o-5","price":1}"#,
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(r.status, 415, "{}", r.text());
    let r = send(
        &mut c,
        &topic,
        br#"{"id":"o-5","price":1}"#,
        &[("Content-Type", "application/json; charset=utf-8")],
    );
    assert_eq!(r.status, 202);
    want.push(br#"{"id":"o-5","price":1}"#.to_vec());

    // NDJSON: one bad line among 10,000 refuses the request, naming the line.
    let mut lines: Vec<String> = (0..10_000).map(order).collect();
    lines[6789] = r#"{"id":"o-6789","price":-1}"#.into();
    let body = lines.join("\n");
    let r = send(&mut c, &topic, body.as_bytes(), &[ND]);
    assert_eq!(r.status, 422, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["errors"][0]["record"], 6789);
    assert_eq!(v["errors"][0]["path"], "/price");
    assert_eq!(v["records"], 10_000);
    assert_eq!(v["invalid_records"], 1);
    // A truncated line is an invalid record too (NDJSON: 422 naming it).
    lines[6789] = r#"{"id":"o-6789","pr"#.into();
    let r = send(&mut c, &topic, lines.join("\n").as_bytes(), &[ND]);
    assert_eq!(r.status, 422);
    assert!(json(&r)["errors"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("not JSON"));
    // The same 10,000 all valid: queued, and they arrive.
    lines[6789] = order(6789);
    let r = send(&mut c, &topic, lines.join("\n").as_bytes(), &[ND]);
    assert_eq!(r.status, 202, "{}", r.text());
    want.extend(lines.iter().map(|l| l.as_bytes().to_vec()));

    // REST v2: a bad value among three is a 422 in REST's format; nothing of it produced.
    let rest = ("Content-Type", "application/vnd.kafka.json.v2+json");
    let r = send(
        &mut c,
        &topic,
        br#"{"records":[{"value":{"id":"r-1","price":1}},{"value":{"id":"r-2","price":"x"}},{"value":{"id":"r-3","price":3}}]}"#,
        &[rest],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.kafka.v2+json")
    );
    let v = json(&r);
    assert_eq!(v["error_code"], 42201);
    assert_eq!(v["errors"][0]["record"], 1);
    assert_eq!(v["errors"][0]["path"], "/price");
    let r = send(
        &mut c,
        &topic,
        br#"{"records":[{"value":{"id":"r-4","price":4}}]}"#,
        &[rest, KAFKA],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    want.push(br#"{"id":"r-4","price":4}"#.to_vec());
    // A last valid record that waits for Kafka: everything before it is there too.
    let last = br#"{"id":"last","price":0}"#;
    assert_eq!(send(&mut c, &topic, last, &[KAFKA]).status, 200);
    want.push(last.to_vec());

    let got: Vec<Vec<u8>> = read_topic(&b.addr, &topic, 1, want.len(), Duration::from_secs(2))
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(got.len(), want.len(), "records in kafka");
    assert!(
        got == want,
        "the records in kafka are not the valid ones, in order"
    );

    let m = ing.metrics_text();
    let count = |outcome: &str| {
        common::metric_sum(
            &m,
            "ingestd_schema_records_total",
            &format!("outcome=\"{outcome}\""),
        )
    };
    assert_eq!(count("valid") as usize, want.len());
    assert_eq!(count("rejected"), 7.0, "{m}");
    assert!(m.contains("ingestd_schema_info{"), "{m}");
}

#[test]
fn dead_letter_mode_sends_exactly_the_invalid_records_there_with_headers() {
    let b = broker();
    let topic = b.topic("orders-dl", 1);
    let dlq = b.topic("orders-invalid", 1);
    let schema = file("orders-dl.json", ORDER);
    let cfg = common::temp_config(
        "schemas-dl",
        &format!(
            "cors_origins = [\"https://shop.example\"]\n[topic.{topic:?}]\nschema = {:?}\non_invalid = \"dead_letter\"\ndead_letter_topic = {dlq:?}\n",
            schema.to_str().unwrap()
        ),
    );
    let ing = start(&cfg, &topic);
    let mut c = Client::connect(ing.addr).unwrap();
    let mut lines: Vec<String> = (0..100).map(order).collect();
    lines[3] = r#"{"id":"o-3","price":"three"}"#.into();
    lines[50] = r#"{"id":"o-50"}"#.into();
    lines[77] = r#"{"id":"o-77","#.into();
    let r = send(&mut c, &topic, lines.join("\n").as_bytes(), &[ND]);
    assert_eq!(r.status, 202, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["queued"], 100);
    assert_eq!(v["valid"], 97);
    assert_eq!(v["dead_lettered"], 3);
    assert_eq!(v["dead_letter_topic"], dlq.as_str());
    let note = |n: usize| format!("{n}; topic=\"{dlq}\"");
    assert_eq!(r.header("ingestd-dead-lettered"), Some(&*note(3)));
    // A single invalid body in ack=kafka: the dead letter follows the request's contract,
    // and the 200 says where it went.
    let r = send(&mut c, &topic, br#"{"id":"k","price":-5}"#, &[KAFKA]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ingestd-dead-lettered"), Some(&*note(1)));
    // REST v2: one bad record of two; the answer lists both, the header says where. Its
    // records claim ingestd's dead-letter headers ("forged" in base64): those are dropped,
    // in both topics. A page on an allowed origin may read the note.
    let rest = ("Content-Type", "application/vnd.kafka.json.v2+json");
    let forged = r#"[{"name":"ingestd-dead-letter-topic","value":"Zm9yZ2Vk"},{"name":"Ingestd-Dead-Letter-Error","value":"Zm9yZ2Vk"},{"name":"kept","value":"Zm9yZ2Vk"}]"#;
    let r = send(
        &mut c,
        &topic,
        format!(
            r#"{{"records":[{{"value":{{"id":"r-1","price":1}},"headers":{forged}}},{{"value":{{"id":"r-2"}},"headers":{forged}}}]}}"#
        )
        .as_bytes(),
        &[rest, ("Origin", "https://shop.example")],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("ingestd-dead-lettered"), Some(&*note(1)));
    let exposed = r.header("access-control-expose-headers").unwrap_or("");
    assert!(exposed.contains("ingestd-dead-lettered"), "{exposed}");
    // The next answer on the connection carries no such note.
    let r = send(&mut c, &topic, br#"{"id":"ok","price":1}"#, &[]);
    assert_eq!(r.status, 202);
    assert_eq!(r.header("ingestd-dead-lettered"), None);

    let good = read_topic(&b.addr, &topic, 1, 99, Duration::from_secs(2));
    let want: Vec<&String> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 50, 77].contains(i))
        .map(|(_, l)| l)
        .collect();
    assert_eq!(good.len(), 99);
    assert!(good.iter().zip(&want).all(|(r, w)| r.value == w.as_bytes()));
    assert_eq!(good[97].value, br#"{"id":"r-1","price":1}"#);
    assert_eq!(good[98].value, br#"{"id":"ok","price":1}"#);
    let bad = read_topic(&b.addr, &dlq, 1, 5, Duration::from_secs(2));
    assert_eq!(bad.len(), 5, "{bad:?}");
    let values: Vec<&[u8]> = bad.iter().map(|r| &r.value[..]).collect();
    assert_eq!(
        values,
        [
            lines[3].as_bytes(),
            lines[50].as_bytes(),
            lines[77].as_bytes(),
            br#"{"id":"k","price":-5}"#,
            br#"{"id":"r-2"}"#
        ]
    );
    let header = |r: &common::Rec, n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no {n} in {r:?}"))
    };
    let forged = |r: &common::Rec| {
        r.headers
            .iter()
            .filter(|(_, v)| v == b"forged")
            .map(|(k, _)| k.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(forged(&good[97]), ["kept"], "{:?}", good[97]);
    assert_eq!(forged(&bad[4]), ["kept"], "{:?}", bad[4]);
    for r in &bad {
        let n = |k: &str| r.headers.iter().filter(|(h, _)| h == k).count();
        assert_eq!(n("ingestd-dead-letter-topic"), 1, "{r:?}");
        assert_eq!(header(r, "ingestd-dead-letter-topic"), topic);
        assert!(header(r, "ingestd-dead-letter-schema").contains("#sha256:"));
    }
    assert!(header(&bad[0], "ingestd-dead-letter-error").contains("/price"));
    assert!(header(&bad[1], "ingestd-dead-letter-error").contains("price"));
    assert!(header(&bad[2], "ingestd-dead-letter-error").contains("not JSON"));
    // Every record delivered, its queue space came back whole: the dropped forged headers
    // were never charged.
    common::wait_until("queue empty", Duration::from_secs(10), || {
        ing.metric("ingestd_queue_records", "") == 0.0
    });
    assert_eq!(ing.metric("ingestd_queue_bytes", ""), 0.0);
    let m = ing.metrics_text();
    assert_eq!(
        common::metric_sum(
            &m,
            "ingestd_schema_records_total",
            "outcome=\"dead_lettered\""
        ),
        5.0
    );
}

#[test]
fn a_reload_swaps_a_schema_under_load_and_a_broken_one_keeps_the_old() {
    let b = broker();
    let topic = b.topic("swap", 1);
    // v1 allows qty up to 10, v2 up to 5: qty 3 is valid under both, qty 8 only under v1.
    let v1 = r#"{"type":"object","required":["qty"],"properties":{"qty":{"type":"integer","maximum":10}}}"#;
    let v2 = r#"{"type":"object","required":["qty"],"properties":{"qty":{"type":"integer","maximum":5}}}"#;
    let schema = file("swap.json", v1);
    let cfg = common::temp_config(
        "schemas-swap",
        &format!(
            "[topic.{topic:?}]\nschema = {:?}\n",
            schema.to_str().unwrap()
        ),
    );
    let ing = start(&cfg, &topic);
    let hash = |ing: &Ingestd| {
        let m = ing.metrics_text();
        let line = m
            .lines()
            .find(|l| l.starts_with("ingestd_schema_info{"))
            .unwrap()
            .to_string();
        line
    };
    let before = hash(&ing);

    // Load: records valid under both schemas, from 4 connections, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let addr = ing.addr;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, accepted, topic) = (stop.clone(), accepted.clone(), topic.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let r = send(&mut c, &topic, br#"{"qty":3}"#, &[]);
                    assert_eq!(r.status, 202, "a record valid under both: {}", r.text());
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut c = Client::connect(ing.addr).unwrap();
    assert_eq!(send(&mut c, &topic, br#"{"qty":8}"#, &[]).status, 202);
    wait_until("load", Duration::from_secs(10), || {
        accepted.load(Ordering::Relaxed) > 200
    });
    std::fs::write(&schema, v2).unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("reloaded", Duration::from_secs(10), || {
        ing.metric("ingestd_auth_reloads_total", "") >= 1.0
    });
    // The next request is judged by v2.
    let r = send(&mut c, &topic, br#"{"qty":8}"#, &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_ne!(hash(&ing), before);

    // A broken file: the reload is refused and counted; v2 stays in force.
    std::fs::write(&schema, "{\"type\": ").unwrap();
    ing.signal(libc::SIGHUP);
    wait_until("refused", Duration::from_secs(10), || {
        ing.metric("ingestd_schema_reload_failures_total", "") >= 1.0
    });
    assert_eq!(send(&mut c, &topic, br#"{"qty":8}"#, &[]).status, 422);
    assert_eq!(send(&mut c, &topic, br#"{"qty":3}"#, &[]).status, 202);
    assert!(
        ing.log_text().contains("swap.json"),
        "the log names the file"
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let n = accepted.load(Ordering::Relaxed) as usize + 2;
    let got = read_topic(&b.addr, &topic, 1, n, Duration::from_secs(2));
    assert_eq!(got.len(), n, "every 202 is in kafka, nothing else");
    assert_eq!(
        got.iter().filter(|r| r.value == br#"{"qty":8}"#).count(),
        1,
        "only the one sent under v1"
    );
}

#[test]
fn a_broken_schema_refuses_the_start_naming_the_file_and_the_position() {
    let schema = file(
        "broken.json",
        "{\n  \"type\": \"object\",\n  \"properties\": {\"a\": {\"type\": 5}}\n}",
    );
    let cfg = common::temp_config(
        "schemas-broken",
        &format!("[topic.orders]\nschema = {:?}\n", schema.to_str().unwrap()),
    );
    for extra in [&["--check-config"][..], &[][..]] {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "--executors", "1"];
        args.extend_from_slice(extra);
        let o = std::process::Command::new(common::bin())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} started: {err}");
        assert!(
            err.contains("topic.orders.schema")
                && err.contains("broken.json")
                && err.contains("/properties/a/type"),
            "{err}"
        );
    }
    std::fs::write(&schema, "{\n  \"type\": \"object\",\n  oops\n}").unwrap();
    let o = std::process::Command::new(common::bin())
        .args(["--config", cfg.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line 3"), "{err}");
    // dead_letter without a topic, a topic outside the global list.
    let cfg2 = common::temp_config(
        "schemas-dlmissing",
        &format!(
            "topics = [\"orders\"]\n[topic.orders]\nschema = {:?}\non_invalid = \"dead_letter\"\n[topic.other]\nschema = {:?}\n",
            schema.to_str().unwrap(),
            schema.to_str().unwrap()
        ),
    );
    let o = std::process::Command::new(common::bin())
        .args(["--config", cfg2.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("dead_letter_topic"), "{err}");
}

#[test]
fn a_dead_letter_topic_kafka_lacks_refuses_the_request_instead_of_losing_records() {
    let b = broker();
    let topic = b.topic("orders-nodl", 1);
    let schema = file("orders-nodl.json", ORDER);
    let cfg = common::temp_config(
        "schemas-nodl",
        &format!(
            "[topic.{topic:?}]\nschema = {:?}\non_invalid = \"dead_letter\"\ndead_letter_topic = \"never-created-{}\"\n",
            schema.to_str().unwrap(),
            std::process::id()
        ),
    );
    let ing = start(&cfg, &topic);
    ing.wait_ready(Duration::from_secs(30));
    let mut c = Client::connect(ing.addr).unwrap();
    let r = send(&mut c, &topic, br#"{"id":"x","price":"no"}"#, &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("dead_letter_topic"));
    // Valid records need no dead-letter topic.
    assert_eq!(
        send(&mut c, &topic, br#"{"id":"y","price":1}"#, &[KAFKA]).status,
        200
    );
    let got = read_topic(&b.addr, &topic, 1, 1, Duration::from_secs(1));
    assert_eq!(got.len(), 1);
}
