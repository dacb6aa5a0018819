//! Micro-benchmarks of the per-request CPU work that does not touch a socket:
//! the head parser, the chunked decoder, the batched hand-off to the Kafka thread, JWT
//! verification, and judging a record against a JSON Schema.
//!
//!   cargo bench --bench micro                 # all
//!   cargo bench --bench micro -- parse        # a filter
//!
//! Under `cargo test --all-targets` criterion runs each benchmark once, as a smoke test.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ingestd::http::chunked::ChunkedDecoder;
use ingestd::http::parse::{parse_head, Head, Limits};
use ingestd::kafka::lane::{make_lane, Completion, Completions, KafkaWake, RecordBatch};
use std::hint::black_box;
use std::time::{Duration, Instant};

const LIMITS: Limits = Limits {
    max_header_bytes: 16 << 10,
    max_headers: 64,
    max_uri_bytes: 4096,
    max_body_bytes: 1 << 20,
};

/// What wrk sends in benches/post.lua (head only; the body follows in the buffer).
const WRK_HEAD: &[u8] = b"POST /topics/bench HTTP/1.1\r\nHost: 127.0.0.1:19080\r\n\
Content-Type: application/octet-stream\r\nContent-Length: 256\r\n\r\n";

/// A busier client: more headers, a key, forwarded headers, a bearer token.
const RICH_HEAD: &[u8] = b"POST /topics/orders?x=1 HTTP/1.1\r\nHost: ingest.example.com\r\n\
User-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json\r\n\
Content-Length: 256\r\nKafka-Key: customer-42\r\nKafka-Ack: kafka\r\n\
X-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\
Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
Authorization: Bearer 0123456789abcdef0123456789abcdef\r\nConnection: keep-alive\r\n\r\n";

fn with_body(head: &[u8], body: usize) -> Vec<u8> {
    let mut v = head.to_vec();
    v.resize(head.len() + body, b'x');
    v
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_head");
    for (name, head) in [("wrk", WRK_HEAD), ("rich", RICH_HEAD)] {
        let buf = with_body(head, 256);
        let mut h = Head::default();
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let done = parse_head(black_box(&buf), &LIMITS, &mut h).unwrap();
                black_box((done, h.len));
            })
        });
    }
    // 16 pipelined requests in one read, as benches/pipeline.lua sends them.
    let one = with_body(WRK_HEAD, 256);
    let buf: Vec<u8> = one.iter().copied().cycle().take(one.len() * 16).collect();
    let mut h = Head::default();
    g.throughput(Throughput::Elements(16));
    g.bench_function("wrk_pipelined_16", |b| {
        b.iter(|| {
            let mut at = 0;
            while at < buf.len() {
                assert!(parse_head(black_box(&buf[at..]), &LIMITS, &mut h).unwrap());
                at += h.len + 256;
            }
        })
    });
    // A head cut short: the "need more" path taken when a read ends mid-head.
    let partial = &WRK_HEAD[..WRK_HEAD.len() - 10];
    g.throughput(Throughput::Elements(1));
    g.bench_function("wrk_partial", |b| {
        b.iter(|| black_box(parse_head(black_box(partial), &LIMITS, &mut h).unwrap()))
    });
    g.finish();
}

fn chunked_body(total: usize, chunk: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        v.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        v.resize(v.len() + n, b'x');
        v.extend_from_slice(b"\r\n");
        left -= n;
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

fn chunked(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunked_decode");
    for (total, chunk) in [(256, 256), (4096, 4096), (4096, 256), (65536, 8192)] {
        let wire = chunked_body(total, chunk);
        let mut out = Vec::with_capacity(total);
        g.throughput(Throughput::Bytes(total as u64));
        g.bench_function(format!("{total}B_in_{chunk}B_chunks"), |b| {
            b.iter(|| {
                out.clear();
                let mut d = ChunkedDecoder::default();
                let n = d.decode(black_box(&wire), &mut out, 1 << 20).unwrap();
                black_box((n, out.len()));
            })
        });
    }
    // The same 4 KiB body arriving in 64-byte reads: the decoder resumes each time.
    let wire = chunked_body(4096, 1024);
    let mut out = Vec::with_capacity(4096);
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("4096B_fed_in_64B_reads", |b| {
        b.iter(|| {
            out.clear();
            let mut d = ChunkedDecoder::default();
            let mut end = 0;
            loop {
                end = (end + 64).min(wire.len());
                if let Some(n) = d.decode(&wire[..end], &mut out, 1 << 20).unwrap() {
                    break black_box(n);
                }
            }
        })
    });
    g.finish();
}

/// Fills a batch the way `local::Enqueue::push` does: topic and value into the arena.
fn fill(b: &mut RecordBatch, records: usize, value: &[u8]) {
    b.clear();
    for i in 0..records {
        b.push_record(b"bench", None, value, (0, 0), -1, i);
    }
}

fn lane(c: &mut Criterion) {
    let value = [b'x'; 256];
    let mut g = c.benchmark_group("lane");

    // Building a batch (per-record cost of the executor side, buffers reused).
    for records in [1usize, 64] {
        let mut b = RecordBatch::default();
        g.throughput(Throughput::Elements(records as u64));
        g.bench_function(format!("fill_batch_{records}x256B"), |bch| {
            bch.iter(|| {
                fill(&mut b, records, black_box(&value));
                black_box(b.arena.len());
            })
        });
    }

    // Push + pop one batch and its Completions through both lanes on one thread: the
    // queue cost alone, no cross-core traffic.
    for records in [1usize, 64] {
        let (exec, kafka) = make_lane(0, KafkaWake::new());
        let mut spare = Some(RecordBatch::default());
        g.throughput(Throughput::Elements(records as u64));
        g.bench_function(format!("round_trip_same_thread_{records}"), |bch| {
            bch.iter(|| {
                let mut b = spare.take().unwrap();
                fill(&mut b, records, &value);
                assert!(exec.to_kafka.try_push(b).is_none());
                let b = kafka.from_exec.try_pop().unwrap();
                let c = Completions {
                    released_records: b.records.len(),
                    spent: vec![b],
                    ..Completions::default()
                };
                assert!(kafka.to_exec.try_push(c).is_none());
                let mut c = exec.from_kafka.try_pop().unwrap();
                spare = c.spent.pop();
            })
        });
    }

    // The real hand-off: a second OS thread plays the Kafka thread (pop the batch, answer
    // with one Completion per record). Measures batch latency across cores, including the
    // spsc cache-line transfers; the wake (`KafkaWake::wake`) is timed separately below.
    // Both sides poll with yield_now, so on a busy 2-core machine this includes scheduling
    // delays: compare it with the same-thread figure only on an idle machine.
    for records in [1usize, 64] {
        g.throughput(Throughput::Elements(records as u64));
        g.bench_function(format!("round_trip_cross_thread_{records}"), |bch| {
            bch.iter_custom(|iters| cross_thread(iters, records, &value))
        });
    }

    // The wake an executor does after each push while the Kafka thread is awake
    // (two atomics, no syscall).
    let w = KafkaWake::new();
    g.throughput(Throughput::Elements(1));
    g.bench_function("kafka_wake_not_sleeping", |b| {
        b.iter(|| {
            w.wake();
            black_box(w.take_pending());
        })
    });
    g.finish();
}

fn cross_thread(iters: u64, records: usize, value: &[u8]) -> Duration {
    let (exec, kafka) = make_lane(0, KafkaWake::new());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Some(b) = kafka.from_exec.try_pop() else {
                std::thread::yield_now();
                continue;
            };
            let done = b
                .records
                .iter()
                .map(|r| Completion {
                    slot: r.opaque as u32 + 1,
                    gen: 1,
                    first: true,
                    last: true,
                    result: Ok((0, 0)),
                })
                .collect();
            let mut c = Completions {
                done,
                released_records: b.records.len(),
                spent: vec![b],
                ..Completions::default()
            };
            while let Some(back) = kafka.to_exec.try_push(c) {
                c = back;
                std::thread::yield_now();
            }
        }
    });
    let mut spare = Some(RecordBatch::default());
    let start = Instant::now();
    for _ in 0..iters {
        let mut b = spare.take().unwrap();
        fill(&mut b, records, value);
        assert!(exec.to_kafka.try_push(b).is_none());
        let mut c = loop {
            if let Some(c) = exec.from_kafka.try_pop() {
                break c;
            }
            std::thread::yield_now();
        };
        black_box(c.done.len());
        spare = c.spent.pop();
    }
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
    took
}

/// What decoding a compressed body adds per request (Content-Encoding), for 256 B and
/// 4 KiB JSON-ish bodies, and parsing a REST v2 body of 10 records.
fn decode(c: &mut Criterion) {
    use ingestd::exec::restv2::{parse, Embedded};
    use ingestd::http::encoding::{decode, Coding};
    use std::io::Write;
    let mut g = c.benchmark_group("decode");
    for size in [256usize, 4096] {
        // Log lines that vary as real ones do (a repeated line compresses, and decodes,
        // several times faster than what clients send). The same text as
        // `benches/run.py --gzip` sends.
        let mut body = Vec::new();
        let mut x = size as u64;
        while body.len() < size {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (x >> 33) as u32;
            body.extend_from_slice(
                format!(
                    "{{\"ts\":{},\"user\":\"u{:05}\",\"path\":\"/p/{}\",\"ms\":{}}}\n",
                    1_700_000_000 + r % 1_000_000,
                    r % 100_000,
                    r % 100,
                    r % 1000
                )
                .as_bytes(),
            );
        }
        body.truncate(size);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body).unwrap();
        let gz = e.finish().unwrap();
        let zs = zstd::encode_all(&body[..], 3).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::new();
        for (name, coding, input) in [("gzip", Coding::Gzip, &gz), ("zstd", Coding::Zstd, &zs)] {
            g.bench_function(format!("{name}_{size}"), |b| {
                b.iter(|| decode(coding, black_box(input), 1 << 20, &mut out).unwrap())
            });
        }
    }
    let rest: Vec<u8> = format!(
        "{{\"records\":[{}]}}",
        [r#"{"key":"k","value":{"event":"click","n":1}}"#; 10].join(",")
    )
    .into_bytes();
    g.bench_function("restv2_json_10_records", |b| {
        b.iter(|| parse(Embedded::Json, black_box(&rest), -1).unwrap())
    });
    g.finish();
}

/// What a JWT bearer token costs per request (issue 33): `Verifier::verify` of a valid
/// token (header, key lookup, signature, claims) with the test keys of tests/data/jwt:
/// RSA 2048, P-256, Ed25519.
fn jwt(c: &mut Criterion) {
    use ingestd::auth::jwt::Verifier;
    use ingestd::config::{JwtConfig, JwtIssuer};
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/jwt");
    let cfg = JwtConfig {
        jwks_file: Some(format!("{dir}/jwks.json").into()),
        leeway_secs: 60,
        issuers: vec![JwtIssuer {
            issuer: "https://id.example.com/".into(),
            audiences: vec!["ingestd".into()],
            topics_claim: Some("topics".into()),
            ..JwtIssuer::default()
        }],
    };
    let v = Verifier::load(&cfg).unwrap().unwrap();
    let now = 1_800_000_000u64;
    let claims = serde_json::json!({
        "iss": "https://id.example.com/", "aud": "ingestd", "sub": "acme",
        "iat": now, "exp": now + 3600, "topics": ["logs.*", "orders"],
    });
    let mut g = c.benchmark_group("jwt_verify");
    g.throughput(Throughput::Elements(1));
    for (name, alg, kid) in [
        ("rs256", Algorithm::RS256, "rs256-a"),
        ("es256", Algorithm::ES256, "es256-a"),
        ("eddsa", Algorithm::EdDSA, "ed25519-a"),
    ] {
        let der = std::fs::read(format!("{dir}/{kid}.key.der")).unwrap();
        let ek = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            Algorithm::ES256 => EncodingKey::from_ec_der(&der),
            _ => EncodingKey::from_ed_der(&der),
        };
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let token = encode(&h, &claims, &ek).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| v.verify(black_box(token.as_bytes()), now).unwrap())
        });
    }
    g.finish();
}

/// Judging one 256 B JSON object against a 5-property schema (issue 34's benchmark
/// record): in one pass (`schema::flat`, what `check` does for this schema), on the tape,
/// as a `serde_json::Value`, and serde_json's parse alone.
fn schema(c: &mut Criterion) {
    let schema: serde_json::Value = serde_json::from_str(
        r#"{"type":"object","required":["id","customer","price","qty","note"],
            "properties":{"id":{"type":"string","maxLength":64},
            "customer":{"type":"string","minLength":1},"price":{"type":"number","minimum":0},
            "qty":{"type":"integer","minimum":1},"note":{"type":"string"}}}"#,
    )
    .unwrap();
    let compiled = ingestd::schema::Compiled::from_schema(&schema).unwrap();
    let mut rec =
        br#"{"id":"order-00000001","customer":"customer-00042","price":1234.5,"qty":3,"note":""#
            .to_vec();
    rec.resize(254, b'n');
    rec.extend_from_slice(b"\"}");
    assert_eq!(rec.len(), 256);
    assert_eq!(compiled.check(&rec), Ok(()));
    assert!(compiled.has_flat());
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(1));
    g.bench_function("flat_check_256B", |b| {
        b.iter(|| compiled.check(black_box(&rec)))
    });
    g.bench_function("tape_check_256B", |b| {
        b.iter(|| compiled.check_full(black_box(&rec)))
    });
    g.bench_function("value_parse_and_check_256B", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&rec)).unwrap();
            compiled.is_valid(&v)
        })
    });
    g.bench_function("parse_only_256B", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&rec)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = parse, chunked, lane, decode, jwt, schema
}
criterion_main!(benches);
