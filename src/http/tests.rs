//! Parser unit tests: no sockets. Every request is also fed at every byte boundary to
//! check that partial input says "need more" and never errors or mis-frames.

use super::chunked::ChunkedDecoder;
use super::parse::{parse_head, Framing, Head, Limits, Method};
use crate::error::HttpError;

const LIM: Limits = Limits {
    max_header_bytes: 8192,
    max_headers: 32,
    max_uri_bytes: 256,
    max_body_bytes: 1 << 20,
};

fn parse(req: &[u8]) -> Result<Option<Head>, HttpError> {
    parse_lim(req, &LIM)
}

fn parse_lim(req: &[u8], lim: &Limits) -> Result<Option<Head>, HttpError> {
    let mut h = Head::default();
    parse_head(req, lim, &mut h).map(|done| done.then_some(h))
}

fn status(req: &[u8]) -> u16 {
    parse(req).expect_err("should fail").status().0
}

/// Every strict prefix is incomplete; the whole parses to the same head.
fn check_prefixes(req: &[u8]) -> Head {
    let full = parse(req).unwrap().expect("complete");
    for cut in 0..full.len {
        assert!(
            parse(&req[..cut]).unwrap().is_none(),
            "prefix {cut} of {:?}",
            String::from_utf8_lossy(req)
        );
    }
    full
}

#[test]
fn content_length_request() {
    let req = b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    let h = check_prefixes(req);
    assert_eq!(h.method, Method::Post);
    assert_eq!(&req[h.path.clone()], b"/topics/t");
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.keep_alive && !h.http10);
    assert_eq!(&req[h.len..], b"hello");
}

#[test]
fn chunked_request_and_query() {
    let req = b"POST /topics/t?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let h = check_prefixes(req);
    assert_eq!(h.framing, Framing::Chunked);
    assert_eq!(&req[h.path.clone()], b"/topics/t");
}

#[test]
fn connection_semantics() {
    let h = check_prefixes(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(!h.keep_alive);
    let h = check_prefixes(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(h.http10 && !h.keep_alive);
    let h = check_prefixes(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(h.http10 && h.keep_alive);
    let h = check_prefixes(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    );
    assert!(h.expect_continue);
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n"),
        417
    );
}

#[test]
fn leading_empty_lines_are_skipped() {
    let req = b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let h = parse(req).unwrap().unwrap();
    assert_eq!(&req[h.path.clone()], b"/healthz");
    assert_eq!(h.len, req.len());
}

#[test]
fn pipelined_heads_parse_one_at_a_time() {
    let one = b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab".to_vec();
    let stream: Vec<u8> = one.iter().chain(one.iter()).copied().collect();
    let h = parse(&stream).unwrap().unwrap();
    let next = h.len + 2;
    let h2 = parse(&stream[next..]).unwrap().unwrap();
    assert_eq!(h2.framing, Framing::Length(2));
    assert_eq!(next + h2.len + 2, stream.len());
}

#[test]
fn missing_length_on_post_is_411() {
    assert_eq!(status(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"), 411);
    let h = parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Empty);
}

#[test]
fn smuggling_shapes_are_rejected() {
    let bad: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n folded\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\rContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost : x\r\nContent-Length: 3\r\n\r\n",
        b"POST  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1 x\r\nHost: x\r\n\r\n",
        b"PO ST / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTX/1.1\r\nHost: x\r\n\r\n",
    ];
    for req in bad {
        let e = parse(req).expect_err(&String::from_utf8_lossy(req));
        assert!(
            (400..500).contains(&e.status().0) || e.status().0 == 501,
            "{e:?} {}",
            String::from_utf8_lossy(req)
        );
        assert!(
            e.closes(),
            "framing error must close: {:?} {e:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        501
    );
    assert_eq!(status(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
}

#[test]
fn limits() {
    let lim = Limits {
        max_header_bytes: 100,
        max_headers: 3,
        max_uri_bytes: 20,
        max_body_bytes: 10,
    };
    let e = |r: &[u8]| parse_lim(r, &lim).unwrap_err().status().0;
    assert!(parse_lim(
        b"POST /topics/abcdefghijk HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
        &lim
    )
    .unwrap()
    .is_some());
    assert_eq!(
        e(b"POST /topics/abcdefghijklm HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"),
        414
    );
    assert_eq!(
        e(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"),
        413
    );
    assert_eq!(
        e(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
        431
    );
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nA: {}\r\n\r\n", "v".repeat(80));
    assert_eq!(e(big.as_bytes()), 431);
    // Too large even before the head is complete.
    let partial = format!("GET / HTTP/1.1\r\nHost: x\r\nA: {}", "v".repeat(120));
    assert_eq!(e(partial.as_bytes()), 431);
    let long_line = format!("GET /{}", "a".repeat(60));
    assert_eq!(e(long_line.as_bytes()), 414);
}

fn dechunk(body: &[u8]) -> Result<Option<(usize, Vec<u8>)>, HttpError> {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    d.decode(body, &mut out, 1 << 20)
        .map(|r| r.map(|n| (n, out)))
}

#[test]
fn chunked_bodies() {
    let body = b"5\r\nhello\r\n6;ext=1;q=\"a b\"\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let (n, out) = dechunk(body).unwrap().unwrap();
    assert_eq!(out, b"hello world");
    assert_eq!(&body[n..], b"NEXT");
    // Fed one byte at a time into one decoder: same result, incomplete until the end.
    let end = body.len() - 4;
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    for cut in 0..end {
        assert_eq!(
            d.decode(&body[..cut], &mut out, 1 << 20).unwrap(),
            None,
            "cut {cut}"
        );
    }
    assert_eq!(
        d.decode(&body[..end], &mut out, 1 << 20).unwrap(),
        Some(end)
    );
    assert_eq!(out, b"hello world");
    // Every prefix from scratch, too.
    for cut in 0..end {
        assert!(dechunk(&body[..cut]).unwrap().is_none(), "fresh cut {cut}");
    }
    let (_, out) = dechunk(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().unwrap();
    assert_eq!(out.len(), 10);
}

#[test]
fn bad_chunks() {
    let bad: &[&[u8]] = &[
        b"x\r\n",
        b"-1\r\n",
        b"+1\r\na\r\n0\r\n\r\n",
        b" 1\r\na\r\n0\r\n\r\n",
        b"1\na\r\n0\r\n\r\n",
        b"1\r\nab\r\n0\r\n\r\n",
        b"1;\r\na\r\n",
        b"1;=x\r\na\r\n",
        b"1;a=\"unterminated\r\na\r\n",
        b"1 x\r\na\r\n",
        b"1\rxa\r\n",
        b"1000000000000000\r\n",
        b"1\r\na\r\n0\r\nbad trailer\r\n\r\n",
        b"1\r\na\r\n0\r\n\0: x\r\n\r\n",
    ];
    for b in bad {
        let e = dechunk(b).expect_err(&String::from_utf8_lossy(b));
        assert!(e.closes(), "{e:?}");
    }
    let mut d = ChunkedDecoder::default();
    let e = d.decode(b"B\r\n", &mut Vec::new(), 10).unwrap_err();
    assert_eq!(e.status().0, 413);
}

#[test]
fn host_must_be_valid_and_single() {
    for ok in [
        "x",
        "example.com:8080",
        "127.0.0.1",
        "[::1]:8080",
        "[v1.fe80::a+en1]",
        "a%20b",
        "",
        "x:",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n");
        assert!(parse(req.as_bytes()).unwrap().is_some(), "{ok:?}");
    }
    for bad in [
        "a b", "a/b", "user@a", "a:b", "a:80:80", "[::1", "[]", "a%2", "a%zz", "[::1]x", "a\"b",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(status(req.as_bytes()), 400, "{bad:?}");
    }
    // Repeated Host is refused in HTTP/1.0 too; a missing one is fine there.
    assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
    assert!(parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
}

#[test]
fn leading_zeros_are_not_overflow() {
    let h =
        parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 000000000000000000000005\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(h.framing, Framing::Length(5));
    // Twenty significant digits are too large, not malformed.
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000000000000\r\n\r\n"),
        413
    );
    let (_, out) = dechunk(b"00000000000000000000005\r\nhello\r\n0000\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(out, b"hello");
    assert!(dechunk(b"1000000000000000\r\n").is_err());
}

/// The answer to a request must not depend on how it was split across reads: a prefix
/// of a head that parses never fails (a long method once tripped the partial URI check).
#[test]
fn prefixes_of_a_valid_head_never_fail() {
    let lim = Limits {
        max_header_bytes: 512,
        max_headers: 8,
        max_uri_bytes: 16,
        max_body_bytes: 64,
    };
    let method = "M".repeat(100);
    let req = format!("{method} /0123456789abcde HTTP/1.1\r\nHost: x\r\n\r\n");
    let full = parse_lim(req.as_bytes(), &lim).unwrap().unwrap();
    for cut in 0..full.len {
        assert!(
            parse_lim(&req.as_bytes()[..cut], &lim).unwrap().is_none(),
            "cut {cut}"
        );
    }
    // A target over the limit is 414 whether or not the line is complete or valid.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(16));
    for cut in [22, 30, long.len()] {
        let e = parse_lim(&long.as_bytes()[..cut], &lim).unwrap_err();
        assert_eq!(e.status().0, 414, "cut {cut}");
    }
    let e = parse_lim(
        format!("GET /{} HTTX/1.1\r\n\r\n", "a".repeat(16)).as_bytes(),
        &lim,
    );
    assert_eq!(e.unwrap_err().status().0, 414);
    // A target over the limit in a head also over its limit: the target is named.
    let big = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(600));
    assert_eq!(parse_lim(big.as_bytes(), &lim).unwrap_err().status().0, 414);
}

#[test]
fn chunk_line_limit_is_exact() {
    // 4096 bytes of size line are fine; 4097 are refused at once, not awaited forever.
    let ok = format!("5;e={}\r\nhello\r\n0\r\n\r\n", "x".repeat(4092));
    assert_eq!(dechunk(ok.as_bytes()).unwrap().unwrap().1, b"hello");
    let long = format!("5;e={}\r\nhello\r\n0\r\n\r\n", "x".repeat(4093));
    assert!(dechunk(long.as_bytes()).is_err());
    assert!(dechunk(&long.as_bytes()[..4098]).is_err());
    // Exactly the line and its CR: still waiting for the LF.
    assert!(dechunk(&ok.as_bytes()[..4097]).unwrap().is_none());
}

#[test]
fn trailer_values_refuse_controls() {
    for b in (0u8..0x20).chain([0x7f]) {
        let body = [&b"1\r\na\r\n0\r\nX: a"[..], &[b], b"b\r\n\r\n"].concat();
        let r = dechunk(&body);
        if b == b'\t' {
            assert!(r.unwrap().is_some());
        } else {
            assert!(r.unwrap_err().closes(), "{b:#x}");
        }
    }
}

#[test]
fn http10_ignores_100_continue() {
    let h = check_prefixes(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(!h.expect_continue && h.http10);
    assert_eq!(
        status(b"POST / HTTP/1.0\r\nExpect: x\r\nContent-Length: 3\r\n\r\n"),
        417
    );
}
