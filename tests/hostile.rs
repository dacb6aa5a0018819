//! Hostile HTTP against the real binary: every case of `tests/corpus/hostile.txt` plus
//! generated families (every control byte in every part of a request, limit edges at the
//! limit and one past it, lists of bad values). Each case checks the status (or a close
//! without answer), whether the connection stays usable (a valid request on the same
//! connection must then succeed) or is closed (nothing more answered, no record produced
//! by bytes left over after the error), and the exact count of enqueued records.
//! All failures are collected and reported together with the bytes that caused them.

mod common;

use common::{broker, metric_sum, read_topic, Ingestd};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const MAX_URI: usize = 64;
const MAX_HEADER: usize = 512;
const MAX_HEADERS: usize = 8;
const MAX_BODY: usize = 64;
const TIMEOUT_MS: u64 = 800;

/// How long to wait for an answer that should come (covers the 408 timeouts).
const ANSWER_WAIT: Duration = Duration::from_secs(4);
/// How long a connection that must close may stay open after its last answer.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A request to the topic no request may reach, then a GET that would answer if the
/// server ever took these bytes for a new request.
const SMUGGLE: &str = "POST /topics/{smuggle} HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 7\\r\\n\\r\\nSMUGGLEGET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n";

/// Sent after a case that keeps the connection: both must succeed.
const FOLLOW_UP: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nfollow-up";

#[derive(Debug, Clone)]
enum Step {
    Send(Vec<u8>),
    Pause(u64),
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Close,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    statuses: Vec<u16>,
    end: End,
}

#[derive(Debug, Clone)]
struct Case {
    /// `category/name`.
    name: String,
    steps: Vec<Step>,
    expect: Vec<Outcome>,
    head: bool,
    smuggle: bool,
    records: Option<usize>,
    enqueued: Option<usize>,
}

impl Case {
    fn category(&self) -> &str {
        self.name.split('/').next().unwrap()
    }

    fn new(name: impl Into<String>, bytes: Vec<u8>, expect: &str) -> Case {
        Case {
            name: name.into(),
            steps: vec![Step::Send(bytes)],
            expect: parse_expect(expect),
            head: false,
            smuggle: true,
            records: None,
            enqueued: None,
        }
    }

    fn sent(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for s in &self.steps {
            if let Step::Send(b) = s {
                all.extend_from_slice(b);
            }
        }
        all
    }
}

fn parse_expect(s: &str) -> Vec<Outcome> {
    s.split('|')
        .map(|alt| {
            let words: Vec<&str> = alt.split_whitespace().collect();
            let (end, codes) = words.split_last().expect("empty outcome");
            let end = match *end {
                "close" => End::Close,
                "keep" => End::Keep,
                other => panic!("outcome must end with close or keep: {other:?} in {s:?}"),
            };
            let statuses = codes
                .iter()
                .map(|c| {
                    c.parse()
                        .unwrap_or_else(|_| panic!("status {c:?} in {s:?}"))
                })
                .collect();
            Outcome { statuses, end }
        })
        .collect()
}

/// Expands the corpus' escaped text: `\r \n \t \0 \\ \xHH`, `{rep:N:TEXT}`, `{smuggle}`,
/// `{SMUGGLE}`, `{SMUGGLE_LEN}` (decimal) and `{SMUGGLE_HEX}` (hex) lengths of it.
fn expand(s: &str, smuggle_topic: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let e = *b
                    .get(i + 1)
                    .unwrap_or_else(|| panic!("dangling \\ in {s:?}"));
                i += 2;
                match e {
                    b'r' => out.push(b'\r'),
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'0' => out.push(0),
                    b'\\' => out.push(b'\\'),
                    b'x' => {
                        let hex = std::str::from_utf8(&b[i..i + 2]).unwrap();
                        out.push(u8::from_str_radix(hex, 16).expect("\\xHH"));
                        i += 2;
                    }
                    other => panic!("unknown escape \\{} in {s:?}", other as char),
                }
            }
            b'{' => {
                let rest = &s[i + 1..];
                let smuggle = || expand(SMUGGLE, smuggle_topic);
                if let Some(r) = rest.strip_prefix("rep:") {
                    let colon = r.find(':').expect("{rep:N:TEXT}");
                    let n: usize = r[..colon].parse().expect("{rep:N:TEXT} count");
                    let text_start = i + 1 + 4 + colon + 1;
                    let mut depth = 1;
                    let mut j = text_start;
                    while depth > 0 {
                        match b.get(j) {
                            Some(b'{') => depth += 1,
                            Some(b'}') => depth -= 1,
                            Some(_) => {}
                            None => panic!("unclosed {{rep: in {s:?}"),
                        }
                        j += 1;
                    }
                    let inner = expand(&s[text_start..j - 1], smuggle_topic);
                    for _ in 0..n {
                        out.extend_from_slice(&inner);
                    }
                    i = j;
                } else if rest.starts_with("smuggle}") {
                    out.extend_from_slice(smuggle_topic.as_bytes());
                    i += "{smuggle}".len();
                } else if rest.starts_with("SMUGGLE}") {
                    out.extend_from_slice(&smuggle());
                    i += "{SMUGGLE}".len();
                } else if rest.starts_with("SMUGGLE_LEN}") {
                    out.extend_from_slice(smuggle().len().to_string().as_bytes());
                    i += "{SMUGGLE_LEN}".len();
                } else if rest.starts_with("SMUGGLE_HEX}") {
                    out.extend_from_slice(format!("{:x}", smuggle().len()).as_bytes());
                    i += "{SMUGGLE_HEX}".len();
                } else {
                    out.push(b'{');
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Reads `tests/corpus/*.txt`.
fn load_corpus(smuggle_topic: &str) -> Vec<Case> {
    let dir = common::repo().join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut cur: Option<Case> = None;
        for (ln, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", f.display(), ln + 1);
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(':') {
                Some((k, v)) => (k, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            if key == "case" {
                cases.extend(cur.take());
                cur = Some(Case {
                    name: value.to_string(),
                    steps: vec![],
                    expect: vec![],
                    head: false,
                    smuggle: true,
                    records: None,
                    enqueued: None,
                });
                continue;
            }
            let c = cur
                .as_mut()
                .unwrap_or_else(|| panic!("{}: line outside a case", at()));
            match key {
                "send" => {
                    let bytes = expand(value, smuggle_topic);
                    match c.steps.last_mut() {
                        Some(Step::Send(b)) => b.extend_from_slice(&bytes),
                        _ => c.steps.push(Step::Send(bytes)),
                    }
                }
                "pause" => c.steps.push(Step::Pause(value.parse().expect("pause ms"))),
                "eof" => c.steps.push(Step::Eof),
                "expect" => c.expect = parse_expect(value),
                "flags" => {
                    for w in value.split_whitespace() {
                        match w {
                            "head" => c.head = true,
                            "nosmuggle" => c.smuggle = false,
                            other => panic!("{}: unknown flag {other}", at()),
                        }
                    }
                }
                "records" => c.records = Some(value.parse().expect("records N")),
                "enqueued" => c.enqueued = Some(value.parse().expect("enqueued N")),
                other => panic!("{}: unknown key {other:?}", at()),
            }
        }
        cases.extend(cur.take());
    }
    for c in &cases {
        assert!(!c.expect.is_empty(), "case {} has no expect:", c.name);
        assert!(
            c.name.contains('/'),
            "case name {} needs a category",
            c.name
        );
    }
    cases
}

const GET_HEAD: &str = "GET /healthz HTTP/1.1\r\nHost: x\r\n";

fn get_with(lines: &str) -> Vec<u8> {
    format!("{GET_HEAD}{lines}\r\n").into_bytes()
}

fn bytes(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn chunked_post(body: &[u8]) -> Vec<u8> {
    bytes(&[
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        body,
    ])
}

fn post_cl(value: &[u8], body: &[u8]) -> Vec<u8> {
    bytes(&[
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ",
        value,
        b"\r\n\r\n",
        body,
    ])
}

fn hex(b: u8) -> String {
    format!("{b:02x}")
}

/// Every control byte, DEL included.
fn controls() -> impl Iterator<Item = u8> {
    (0u8..0x20).chain(std::iter::once(0x7f))
}

/// Families of cases built in code.
fn generated() -> Vec<Case> {
    let mut v = Vec::new();

    // Control bytes in a header value, at its start, middle and end. Only HTAB is legal
    // (it is optional whitespace at the edges). A bare LF ends the line (RFC 9112 2.2
    // allows it), so at the end of a value it is a valid line ending.
    for b in controls() {
        for (pos, value) in [
            ("start", vec![b, b'v']),
            ("middle", vec![b'a', b, b'b']),
            ("end", vec![b'a', b]),
        ] {
            let req = bytes(&[GET_HEAD.as_bytes(), b"X-A: ", &value, b"\r\n\r\n"]);
            let expect = match (b, pos) {
                (b'\t', _) | (b'\n', "end") => "200 keep",
                _ => "400 close",
            };
            v.push(Case::new(
                format!("ctl-header-value/{}-{pos}", hex(b)),
                req,
                expect,
            ));
        }
    }
    // Control bytes, space, DEL and separators in a header name.
    for b in controls().chain(b" \"(),/;<=>?@[\\]{}".iter().copied()) {
        let req = bytes(&[GET_HEAD.as_bytes(), b"X", &[b], b"A: 1\r\n\r\n"]);
        v.push(Case::new(
            format!("ctl-header-name/{}", hex(b)),
            req,
            "400 close",
        ));
    }
    // Control bytes and space in the request target, and in the method.
    for b in controls().chain(std::iter::once(b' ')) {
        let req = bytes(&[b"GET /healthz", &[b], b"x HTTP/1.1\r\nHost: x\r\n\r\n"]);
        v.push(Case::new(
            format!("ctl-target/{}", hex(b)),
            req,
            "400 close",
        ));
        let req = bytes(&[b"G", &[b], b"T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]);
        v.push(Case::new(
            format!("ctl-method/{}", hex(b)),
            req,
            "400 close",
        ));
    }
    // Control bytes in the request line's version and around it.
    for b in controls() {
        if b == b'\n' {
            continue; // "HTTP/1.1\n" is a valid (bare LF) line end
        }
        let req = bytes(&[b"GET /healthz HTTP/1.1", &[b], b"\r\nHost: x\r\n\r\n"]);
        v.push(Case::new(
            format!("ctl-version/{}", hex(b)),
            req,
            "400 close",
        ));
    }
    // Control bytes in a chunk extension: none is legal ("5;e\tx=1" is not an
    // extension either: whitespace may only surround ';' and '=').
    for b in controls() {
        let body = bytes(&[b"5;e", &[b], b"x=1\r\nhello\r\n0\r\n\r\n"]);
        v.push(Case::new(
            format!("ctl-chunk-ext/{}", hex(b)),
            chunked_post(&body),
            "400 close",
        ));
    }
    // Control bytes in a trailer field value: as in header values, only HTAB is legal.
    for b in controls() {
        let body = bytes(&[b"5\r\nhello\r\n0\r\nX-T: a", &[b], b"b\r\n\r\n"]);
        let expect = if b == b'\t' { "202 keep" } else { "400 close" };
        v.push(Case::new(
            format!("ctl-trailer/{}", hex(b)),
            chunked_post(&body),
            expect,
        ));
    }

    // Content-Length values that are not a single decimal number.
    for bad in [
        "+5", "-5", "5 5", "5\t5", "0x5", "0X5", "5.0", "5e0", "1_0", "five", "\u{665}",
        "\u{ff15}", "5;", "\"5\"", "5/1", "- 5", "5\x0b", "\x0c5",
    ] {
        v.push(Case::new(
            format!("cl-value/{}", bad.escape_debug()),
            post_cl(bad.as_bytes(), b"hello"),
            "400 close",
        ));
    }
    for huge in [
        "18446744073709551616",
        "18446744073709551621",
        "99999999999999999999",
        "9999999999999999999",
        "4294967301",
        "65",
        "1000000000000000000000000000000000000000005",
    ] {
        v.push(Case::new(
            format!("cl-overflow/{huge}"),
            post_cl(huge.as_bytes(), b"hello"),
            "413 close | 400 close",
        ));
    }
    v.push(Case::new(
        "cl-value/empty",
        post_cl(b"", b"hello"),
        "400 close",
    ));
    v.push(Case::new(
        "cl-value/whitespace-only",
        post_cl(b"  ", b"hello"),
        "400 close",
    ));

    // Chunk sizes that are not hex digits.
    for bad in [
        "0x5", "+5", "-5", " 5", "5 ", "g", "5g", "-0", "5.0", "\u{ff15}", "5_", "05 5", "\t5",
        "5\t", "", "x5",
    ] {
        let body = bytes(&[bad.as_bytes(), b"\r\nhello\r\n0\r\n\r\n"]);
        v.push(Case::new(
            format!("chunk-size/{}", bad.escape_debug()),
            chunked_post(&body),
            "400 close",
        ));
    }
    // Bad last-chunk sizes.
    for bad in ["00x", "0 0", "-0", "0\t"] {
        let body = bytes(&[b"5\r\nhello\r\n", bad.as_bytes(), b"\r\n\r\n"]);
        v.push(Case::new(
            format!("chunk-size/last-{}", bad.escape_debug()),
            chunked_post(&body),
            "400 close",
        ));
    }

    // Transfer codings other than a lone `chunked`: 501 Not Implemented (400 is also
    // fine where the list itself is malformed for a request).
    for te in [
        "gzip",
        "deflate",
        "compress",
        "x-gzip",
        "identity",
        "br",
        "zstd",
        "x-custom",
        "gzip, chunked",
        "deflate,chunked",
        "chunked, identity",
        "identity, chunked",
        "chunked,",
        ", chunked",
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        v.push(Case::new(
            format!("te-coding/{te}"),
            req.into_bytes(),
            "501 close | 400 close",
        ));
    }

    // Kafka-Partition and Kafka-Ack values that are not valid: 400, connection stays.
    for bad in [
        "-1",
        "+1",
        "",
        "1.0",
        "0x1",
        "1e2",
        "a",
        "1 2",
        "1,2",
        "2147483648",
        "9999999999",
        "\u{ff11}",
        "- 1",
        "1;",
        "\"1\"",
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nKafka-Partition: {bad}\r\nContent-Length: 5\r\n\r\nhello"
        );
        v.push(Case::new(
            format!("kafka-partition/{}", bad.escape_debug()),
            req.into_bytes(),
            "400 keep",
        ));
    }
    for bad in [
        "",
        "maybe",
        "kafka,queued",
        "kafka queued",
        "all",
        "1",
        "none",
        "queue",
        "kafkaa",
        "\"kafka\"",
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nKafka-Ack: {bad}\r\nContent-Length: 5\r\n\r\nhello"
        );
        v.push(Case::new(
            format!("kafka-ack/{}", bad.escape_debug()),
            req.into_bytes(),
            "400 keep",
        ));
    }

    // Methods: valid tokens we do not serve are 405 (with Allow); non-tokens are 400.
    for m in [
        "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get", "Get", "M-SEARCH", "X",
        "POST!", "~", "GET#",
    ] {
        let req = format!("{m} /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        v.push(Case::new(
            format!("method/{m}-healthz"),
            req.into_bytes(),
            "405 keep",
        ));
    }
    for m in ["GET", "PUT", "DELETE", "post"] {
        let req = format!("{m} / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        v.push(Case::new(
            format!("method/{m}-root"),
            req.into_bytes(),
            "405 keep",
        ));
    }
    for m in [
        "G@T", "GE(T", "[GET]", "GET/", "GE\"T", "G,ET", "GET:", "G;T", "G{T", "G=T", "G\\T", "G?T",
    ] {
        let req = format!("{m} /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        v.push(Case::new(
            format!("method/bad-{m}"),
            req.into_bytes(),
            "400 close",
        ));
    }
    // Versions.
    for (ver, expect) in [
        ("HTTP/1.2", "505 close"),
        ("HTTP/2.0", "505 close"),
        ("HTTP/4.0", "505 close"),
        ("HTTP/2", "400 close"),
        ("HTTP/1.1.1", "400 close"),
        ("HTTP/ 1.1", "400 close"),
        ("HTTP /1.1", "400 close"),
        ("HTTP/-1.1", "400 close"),
        ("HTTP/1.-1", "400 close"),
        ("HTTP/A.B", "400 close"),
        ("HTTP/1,1", "400 close"),
        ("HTTP/", "400 close"),
        ("", "400 close"),
    ] {
        let req = format!("GET /healthz {ver}\r\nHost: x\r\n\r\n");
        v.push(Case::new(
            format!("version/{ver}"),
            req.into_bytes(),
            expect,
        ));
    }

    limit_cases(&mut v);
    v
}

/// Each limit exactly at the limit (accepted) and one past it (refused).
fn limit_cases(v: &mut Vec<Case>) {
    // Request target.
    for (n, expect) in [(MAX_URI, "200 keep"), (MAX_URI + 1, "414 close")] {
        let target = format!("/healthz?{}", "q".repeat(n - "/healthz?".len()));
        assert_eq!(target.len(), n);
        v.push(Case::new(
            format!("limit-uri/healthz-{n}"),
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            expect,
        ));
    }
    for (n, expect) in [(MAX_URI, "202 keep"), (MAX_URI + 1, "414 close")] {
        let target = format!("/?{}", "q".repeat(n - 2));
        v.push(Case::new(
            format!("limit-uri/post-{n}"),
            format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .into_bytes(),
            expect,
        ));
    }
    for (n, expect) in [(MAX_URI, "404 keep"), (MAX_URI + 1, "414 close")] {
        let target = format!("/{}", "n".repeat(n - 1));
        v.push(Case::new(
            format!("limit-uri/unknown-path-{n}"),
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            expect,
        ));
    }
    v.push(Case::new(
        "limit-uri/ten-times",
        format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(10 * MAX_URI)
        )
        .into_bytes(),
        "414 close",
    ));
    v.push(Case::new(
        "limit-uri/huge-without-line-end",
        format!("GET /{}", "a".repeat(MAX_HEADER * 4)).into_bytes(),
        "414 close",
    ));

    // Head size: request line + headers + blank line.
    let pad_to = |prefix: &str, n: usize| {
        let fixed = prefix.len() + "X-Pad: \r\n\r\n".len();
        let req = format!("{prefix}X-Pad: {}\r\n\r\n", "p".repeat(n - fixed));
        assert_eq!(req.len(), n);
        req
    };
    for (n, expect) in [(MAX_HEADER, "200 keep"), (MAX_HEADER + 1, "431 close")] {
        v.push(Case::new(
            format!("limit-head/get-{n}"),
            pad_to(GET_HEAD, n).into_bytes(),
            expect,
        ));
    }
    for (n, expect) in [(MAX_HEADER, "202 keep"), (MAX_HEADER + 1, "431 close")] {
        let mut req = pad_to("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n", n);
        req.push_str("hello");
        v.push(Case::new(
            format!("limit-head/post-{n}"),
            req.into_bytes(),
            expect,
        ));
    }
    for (n, expect) in [(MAX_HEADER, "200 keep"), (MAX_HEADER + 1, "431 close")] {
        // After empty lines, which do not count.
        let req = format!("\r\n\r\n{}", pad_to(GET_HEAD, n));
        v.push(Case::new(
            format!("limit-head/after-crlf-{n}"),
            req.into_bytes(),
            expect,
        ));
    }
    v.push(Case::new(
        "limit-head/endless-header",
        format!("{GET_HEAD}X-Pad: {}", "p".repeat(MAX_HEADER * 4)).into_bytes(),
        "431 close",
    ));
    v.push(Case::new(
        "limit-head/many-small-headers-endless",
        format!("{GET_HEAD}{}", "A: 1\r\n".repeat(MAX_HEADER)).into_bytes(),
        "431 close",
    ));

    // Number of header lines (Host included).
    for (n, expect) in [(MAX_HEADERS, "200 keep"), (MAX_HEADERS + 1, "431 close")] {
        let lines: String = (1..n).map(|i| format!("X-{i}: v\r\n")).collect();
        v.push(Case::new(
            format!("limit-headers/get-{n}"),
            get_with(&lines),
            expect,
        ));
    }
    for (n, expect) in [(MAX_HEADERS, "202 keep"), (MAX_HEADERS + 1, "431 close")] {
        let lines: String = (2..n).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n{lines}\r\nhello");
        v.push(Case::new(
            format!("limit-headers/post-{n}"),
            req.into_bytes(),
            expect,
        ));
    }
    v.push(Case::new(
        "limit-headers/empty-values",
        get_with(&"X:\r\n".repeat(MAX_HEADERS)),
        "431 close",
    ));

    // Body size, framed by Content-Length and chunked (one chunk, several chunks).
    for (n, expect) in [(MAX_BODY, "202 keep"), (MAX_BODY + 1, "413 close")] {
        let body = "b".repeat(n);
        v.push(Case::new(
            format!("limit-body/cl-{n}"),
            post_cl(n.to_string().as_bytes(), body.as_bytes()),
            expect,
        ));
        let one = format!("{n:x}\r\n{body}\r\n0\r\n\r\n");
        v.push(Case::new(
            format!("limit-body/one-chunk-{n}"),
            chunked_post(one.as_bytes()),
            expect,
        ));
        let half = n / 2;
        let two = format!(
            "{half:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            "b".repeat(half),
            n - half,
            "b".repeat(n - half)
        );
        v.push(Case::new(
            format!("limit-body/two-chunks-{n}"),
            chunked_post(two.as_bytes()),
            expect,
        ));
        let ones: String = (0..n).map(|_| "1\r\nb\r\n").collect();
        v.push(Case::new(
            format!("limit-body/byte-chunks-{n}"),
            chunked_post(format!("{ones}0\r\n\r\n").as_bytes()),
            expect,
        ));
    }
    // A big body is refused with an answer the client can read, not a reset.
    let big = 200_000;
    v.push(Case::new(
        "limit-body/cl-big-body-sent",
        post_cl(big.to_string().as_bytes(), "b".repeat(big).as_bytes()),
        "413 close",
    ));
    v.push(Case::new(
        "limit-body/chunked-big-body-sent",
        chunked_post(format!("{big:x}\r\n{}\r\n0\r\n\r\n", "b".repeat(big)).as_bytes()),
        "413 close",
    ));

    // Empty lines before a request: a few are tolerated (RFC 9112 2.2), not unbounded.
    for (n, expect) in [(64, "200 keep"), (65, "400 close")] {
        let req = format!("{}{GET_HEAD}\r\n", "\n".repeat(n));
        v.push(Case::new(
            format!("limit-leading-lf/{n}"),
            req.into_bytes(),
            expect,
        ));
    }

    // Chunk-size line (size and extensions): 4096 bytes at most.
    for (n, expect) in [(4096, "202 keep"), (4097, "400 close")] {
        let line = format!("5;e={}", "x".repeat(n - 4));
        assert_eq!(line.len(), n);
        v.push(Case::new(
            format!("limit-chunk-line/{n}"),
            chunked_post(format!("{line}\r\nhello\r\n0\r\n\r\n").as_bytes()),
            expect,
        ));
    }
}

// ------------------------------------------------------------------ the wire

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
enum Got {
    Resp(Resp),
    /// EOF or reset with nothing pending.
    Closed(&'static str),
    Timeout,
    /// Bytes that are not a response, or a response cut short by a close.
    Garbage(String),
}

struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Wire {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        Wire { s, buf: Vec::new() }
    }

    /// Writes, tolerating a server that already closed (the answer may still be readable).
    fn write(&mut self, b: &[u8]) -> Option<String> {
        self.s.write_all(b).err().map(|e| e.to_string())
    }

    fn fill(&mut self, wait: Duration) -> Result<usize, Got> {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) => Err(Got::Closed("eof")),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(Got::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(Got::Closed("reset")),
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads one response; `head_only`: it answers a HEAD request (no body follows).
    fn read(&mut self, head_only: bool, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            match common::http::parse_response_head(&self.buf) {
                Ok(Some((n, status, headers))) => {
                    let len = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse::<usize>().ok());
                    let len = if head_only || status < 200 {
                        0
                    } else {
                        match len {
                            Some(l) => l,
                            None => return Got::Garbage("response without content-length".into()),
                        }
                    };
                    while self.buf.len() < n + len {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if let Err(g) = self.fill(left.max(Duration::from_millis(1))) {
                            return match g {
                                Got::Timeout => Got::Timeout,
                                _ => Got::Garbage(format!(
                                    "closed inside a response body: {}",
                                    show(&self.buf)
                                )),
                            };
                        }
                    }
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Got::Resp(Resp {
                        status,
                        headers,
                        body,
                    });
                }
                Ok(None) => {}
                Err(e) => return Got::Garbage(format!("{e}: {}", show(&self.buf))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            if let Err(g) = self.fill(left) {
                return match g {
                    Got::Closed(_) if !self.buf.is_empty() => {
                        Got::Garbage(format!("closed inside a response: {}", show(&self.buf)))
                    }
                    g => g,
                };
            }
        }
    }

    /// Waits for the server to close. Returns whether it did, and any bytes that arrived.
    fn wait_closed(&mut self, wait: Duration) -> (bool, Vec<u8>) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (false, std::mem::take(&mut self.buf));
            }
            match self.fill(left) {
                Ok(_) => {}
                Err(Got::Closed(_)) => return (true, std::mem::take(&mut self.buf)),
                Err(_) => return (false, std::mem::take(&mut self.buf)),
            }
        }
    }
}

/// Bytes as escaped text, shortened.
fn show(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(300) {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if b.len() > 300 {
        let _ = write!(s, "... ({} bytes)", b.len());
    }
    s
}

fn describe(o: &Outcome) -> String {
    let mut s: Vec<String> = o.statuses.iter().map(u16::to_string).collect();
    s.push(if o.end == End::Close { "close" } else { "keep" }.into());
    s.join(" ")
}

struct Env {
    addr: SocketAddr,
    smuggle: Vec<u8>,
}

/// What a case did, for the record count.
struct Ran {
    outcome: Option<Outcome>,
    problems: Vec<String>,
}

fn run_case(env: &Env, c: &Case) -> Ran {
    let mut w = Wire::connect(env.addr);
    let mut problems = Vec::new();
    let closing = c.expect.iter().all(|o| o.end == End::Close);
    let mut pending: Vec<u8> = Vec::new();
    let mut write_err = None;
    let mut eof_sent = false;
    for s in &c.steps {
        match s {
            Step::Send(b) => pending.extend_from_slice(b),
            Step::Pause(ms) => {
                write_err = write_err.or(w.write(&std::mem::take(&mut pending)));
                std::thread::sleep(Duration::from_millis(*ms));
            }
            Step::Eof => {
                write_err = write_err.or(w.write(&std::mem::take(&mut pending)));
                let _ = w.s.shutdown(Shutdown::Write);
                eof_sent = true;
            }
        }
    }
    if closing && c.smuggle && !eof_sent {
        pending.extend_from_slice(&env.smuggle);
    }
    if !pending.is_empty() {
        write_err = write_err.or(w.write(&pending));
    }

    // Read answers while some accepted outcome still expects more of them.
    let mut got: Vec<Resp> = Vec::new();
    let mut stop: Option<Got> = None;
    loop {
        let codes: Vec<u16> = got.iter().map(|r| r.status).collect();
        let exact = c.expect.iter().any(|o| o.statuses == codes);
        let longer = c
            .expect
            .iter()
            .any(|o| o.statuses.len() > codes.len() && o.statuses.starts_with(&codes));
        if !longer || got.len() >= 8 {
            break;
        }
        let wait = if exact {
            Duration::from_millis(300)
        } else {
            ANSWER_WAIT
        };
        match w.read(c.head, wait) {
            Got::Resp(r) => got.push(r),
            other => {
                stop = Some(other);
                break;
            }
        }
    }
    let codes: Vec<u16> = got.iter().map(|r| r.status).collect();
    let actual_stop = match &stop {
        None => String::new(),
        Some(Got::Closed(how)) => format!(", then closed ({how})"),
        Some(Got::Timeout) => ", then nothing".into(),
        Some(Got::Garbage(g)) => format!(", then garbage: {g}"),
        Some(Got::Resp(_)) => unreachable!(),
    };
    let Some(outcome) = c.expect.iter().find(|o| o.statuses == codes).cloned() else {
        problems.push(format!("answered {codes:?}{actual_stop}"));
        if let Some(e) = write_err {
            problems.push(format!("write failed: {e}"));
        }
        return Ran {
            outcome: None,
            problems,
        };
    };
    if let Some(Got::Garbage(g)) = &stop {
        problems.push(format!("garbage after the answers: {g}"));
    }

    // Every answer is well formed.
    for r in &got {
        if r.status == 405 && r.header("allow").is_none() {
            problems.push("405 without Allow".into());
        }
        if r.status >= 400 && !c.head && r.body.is_empty() {
            problems.push(format!("{} without a reason in the body", r.status));
        }
        if r.status >= 200 && r.header("content-length").is_none() {
            problems.push(format!("{} without content-length", r.status));
        }
    }
    let last_final = got.iter().rev().find(|r| r.status >= 200);

    match outcome.end {
        End::Close => {
            let closed = match &stop {
                Some(Got::Closed(_)) => true,
                _ => {
                    let (closed, extra) = w.wait_closed(CLOSE_WAIT);
                    if !extra.is_empty() {
                        problems.push(format!(
                            "answered more after the expected answers: {}",
                            show(&extra)
                        ));
                    }
                    closed
                }
            };
            if !closed {
                problems.push(format!(
                    "connection still open {CLOSE_WAIT:?} after the answer"
                ));
            }
            if let Some(r) = last_final {
                if !r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    problems.push(format!("{} closes without `connection: close`", r.status));
                }
            }
        }
        End::Keep => {
            if let Some(r) = got.iter().find(|r| {
                r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            }) {
                problems.push(format!("{} says `connection: close`", r.status));
            }
            if !w.buf.is_empty() {
                problems.push(format!("extra bytes after the answers: {}", show(&w.buf)));
            } else if let Some(Got::Closed(how)) = &stop {
                problems.push(format!("connection closed ({how}) but should stay open"));
            } else {
                let _ = w.write(FOLLOW_UP);
                match (w.read(false, ANSWER_WAIT), w.read(false, ANSWER_WAIT)) {
                    (Got::Resp(a), Got::Resp(b))
                        if a.status == 200 && a.body == b"ok\n" && b.status == 202 => {}
                    (a, b) => problems.push(format!(
                        "valid requests after it on the same connection got {} / {}",
                        brief(&a),
                        brief(&b)
                    )),
                }
            }
        }
    }
    Ran {
        outcome: Some(outcome),
        problems,
    }
}

fn brief(g: &Got) -> String {
    match g {
        Got::Resp(r) => format!("{} {:?}", r.status, String::from_utf8_lossy(&r.body)),
        Got::Closed(how) => format!("closed ({how})"),
        Got::Timeout => "no answer".into(),
        Got::Garbage(s) => format!("garbage: {s}"),
    }
}

fn enqueued(addr: SocketAddr) -> u64 {
    let r = common::http::get(addr, "/metrics").expect("metrics");
    metric_sum(
        &String::from_utf8_lossy(&r.body),
        "ingestd_records_enqueued_total",
        "",
    ) as u64
}

fn start(default_topic: &str, smuggle_topic: &str) -> Ingestd {
    let b = broker();
    let topics = format!("{default_topic},{smuggle_topic}");
    Ingestd::start_env(
        &[
            "--brokers",
            &b.addr,
            "--default-topic",
            default_topic,
            "--topics",
            &topics,
            "--ack",
            "queued",
            "--executors",
            "2",
        ],
        &[
            ("INGESTD_MAX_URI_BYTES", &MAX_URI.to_string()),
            ("INGESTD_MAX_HEADER_BYTES", &MAX_HEADER.to_string()),
            ("INGESTD_MAX_HEADERS", &MAX_HEADERS.to_string()),
            ("INGESTD_MAX_BODY_BYTES", &MAX_BODY.to_string()),
            ("INGESTD_HEADER_TIMEOUT_MS", &TIMEOUT_MS.to_string()),
            ("INGESTD_BODY_TIMEOUT_MS", &TIMEOUT_MS.to_string()),
        ],
    )
}

#[test]
fn hostile_corpus() {
    let b = broker();
    let topic = b.topic("hostile-ok", 4);
    let smuggle_topic = b.topic("hostile-smuggle", 1);
    let ing = start(&topic, &smuggle_topic);
    let env = Env {
        addr: ing.addr,
        smuggle: expand(SMUGGLE, &smuggle_topic),
    };

    let mut cases = load_corpus(&smuggle_topic);
    let from_file = cases.len();
    cases.extend(generated());
    let only = std::env::var("HOSTILE_ONLY").ok();
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }

    let mut failures: Vec<String> = Vec::new();
    let mut per_category: std::collections::BTreeMap<String, usize> = Default::default();
    let enqueued_at_start = enqueued(env.addr);
    let mut expect_enqueued = enqueued_at_start;
    // Records enqueued on purpose that cannot reach the topic (e.g. unknown partition).
    let mut undeliverable = 0u64;
    let t0 = Instant::now();
    let mut ran = 0;
    for c in &cases {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        ran += 1;
        *per_category.entry(c.category().to_string()).or_default() += 1;
        let r = run_case(&env, c);
        let (records, kept) = match &r.outcome {
            Some(o) => (
                c.records
                    .unwrap_or_else(|| o.statuses.iter().filter(|&&s| s == 202).count()),
                o.end == End::Keep,
            ),
            None => (c.records.unwrap_or(0), false),
        };
        let follow = usize::from(kept && r.problems.is_empty());
        let want = (c.enqueued.unwrap_or(records) + follow) as u64;
        undeliverable += c.enqueued.unwrap_or(records).saturating_sub(records) as u64;
        let mut problems = r.problems;
        let now = enqueued(env.addr);
        let rose = now - expect_enqueued;
        if rose != want {
            problems.push(format!(
                "enqueued {rose} records, expected {want} (a refused request or leftover bytes made a record?)"
            ));
        }
        expect_enqueued = now;
        if !problems.is_empty() {
            let expect: Vec<String> = c.expect.iter().map(describe).collect();
            failures.push(format!(
                "{}\n    sent:     {}\n    expected: {}\n    problem:  {}",
                c.name,
                show(&c.sent()),
                expect.join(" | "),
                problems.join("; ")
            ));
        }
    }
    eprintln!(
        "hostile: {ran} cases ({from_file} from tests/corpus, {} generated) in {:?}",
        cases.len() - from_file,
        t0.elapsed()
    );
    for (cat, n) in &per_category {
        eprintln!("  {cat:24} {n}");
    }

    // Nothing ever reached the smuggle topic; the default topic holds exactly what was
    // accepted.
    let smuggled = read_topic(&b.addr, &smuggle_topic, 1, 0, Duration::from_secs(2));
    if !smuggled.is_empty() {
        failures.push(format!(
            "{} records reached the smuggle topic: {:?}",
            smuggled.len(),
            smuggled
                .iter()
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    // Every record enqueued (on purpose or not) landed exactly once, on one of the two.
    let expect_records =
        (expect_enqueued - enqueued_at_start - undeliverable) as usize - smuggled.len();
    let recs = read_topic(&b.addr, &topic, 4, expect_records, Duration::from_secs(2));
    if recs.len() != expect_records {
        failures.push(format!(
            "default topic holds {} records, expected {expect_records}",
            recs.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} hostile cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran >= 300 || only.is_some(), "only {ran} cases");
}

/// A client that sends its head one byte at a time, each just within the timeout, must
/// still be cut off once the head has taken longer than header_timeout_ms in total.
#[test]
fn trickled_head_is_bounded_by_header_timeout() {
    let b = broker();
    let topic = b.topic("hostile-trickle", 1);
    let smuggle_topic = b.topic("hostile-trickle-smuggle", 1);
    let ing = start(&topic, &smuggle_topic);
    let mut w = Wire::connect(ing.addr);
    let t0 = Instant::now();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
        "s".repeat(400)
    );
    let mut answered = None;
    for &byte in head.as_bytes() {
        if w.write(&[byte]).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(TIMEOUT_MS / 4));
        if let Ok(n) = {
            w.s.set_nonblocking(true).unwrap();
            let mut tmp = [0u8; 1024];
            let r = w.s.read(&mut tmp);
            w.s.set_nonblocking(false).unwrap();
            r.map(|n| (n, tmp))
        } {
            answered = Some((
                t0.elapsed(),
                String::from_utf8_lossy(&n.1[..n.0]).into_owned(),
            ));
            break;
        }
        if t0.elapsed() > Duration::from_millis(TIMEOUT_MS * 6) {
            break;
        }
    }
    let Some((after, text)) = answered else {
        panic!(
            "a head trickled for {:?} (header_timeout_ms = {TIMEOUT_MS}) got no answer",
            t0.elapsed()
        );
    };
    assert!(text.starts_with("HTTP/1.1 408"), "{after:?}: {text}");
    assert!(
        after < Duration::from_millis(TIMEOUT_MS * 3),
        "408 only after {after:?}"
    );
}

/// Writes every case's bytes as seeds for the parser fuzzer (`fuzz/`), in its input
/// layout: a mode/limits byte, two split bytes, then the wire bytes; for chunked requests
/// also the body alone. `HOSTILE_SEEDS_DIR=dir cargo test --test hostile -- --ignored seeds`
#[test]
#[ignore]
fn seeds() {
    let dir =
        std::path::PathBuf::from(std::env::var("HOSTILE_SEEDS_DIR").expect("HOSTILE_SEEDS_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases = load_corpus("smuggle");
    cases.extend(generated());
    let mut n = 0;
    for (i, c) in cases.iter().enumerate() {
        let sent = c.sent();
        if sent.len() > 8000 {
            continue;
        }
        let mut write = |sel: u8, bytes: &[u8]| {
            let mut seed = vec![sel, (i * 37) as u8, (i * 91) as u8];
            seed.extend_from_slice(bytes);
            std::fs::write(dir.join(format!("hostile-{i}-{sel}")), seed).unwrap();
            n += 1;
        };
        write(0, &sent);
        if let Some(at) = sent.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&sent[..at]).to_ascii_lowercase();
            if head.contains("transfer-encoding") {
                write(4, &sent[at + 4..]);
            }
        }
    }
    eprintln!("wrote {n} seeds to {}", dir.display());
}
