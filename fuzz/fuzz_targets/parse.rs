//! Fuzz target for the pure HTTP/1.1 parser: `parse_head` and `ChunkedDecoder`.
//!
//! Input layout: byte 0 selects the mode and the limits, bytes 1..3 pick split points,
//! the rest is the wire input. Mode "request" parses a head and, when it frames a chunked
//! body, decodes what follows; mode "body" decodes the whole rest as a chunked body.
//!
//! Besides "never panics", it checks the properties the connection loop relies on:
//! - parse_head on every strict prefix of a complete head returns Ok(false) (need more);
//!   a prefix never fails where the whole input parses, and the head found does not
//!   depend on the bytes after it or on what a reused `Head` held before;
//! - ranges in the head lie inside the head, lengths respect the limits;
//! - decoding a chunked body fed in pieces (split anywhere, or one byte at a time, into
//!   one decoder that sees the growing region, as `conn.rs` does) gives exactly the result
//!   of decoding it whole, and completes at the first byte that makes it complete.
#![no_main]

use ingestd::error::HttpError;
use ingestd::http::chunked::ChunkedDecoder;
use ingestd::http::parse::{parse_head, Framing, Head, Limits};
use libfuzzer_sys::fuzz_target;

const PRESETS: [Limits; 4] = [
    // The limits of tests/hostile.rs.
    Limits {
        max_header_bytes: 512,
        max_headers: 8,
        max_uri_bytes: 64,
        max_body_bytes: 64,
    },
    // ingestd's defaults.
    Limits {
        max_header_bytes: 16 << 10,
        max_headers: 64,
        max_uri_bytes: 4096,
        max_body_bytes: 1 << 20,
    },
    // Tiny: every limit is easy to hit.
    Limits {
        max_header_bytes: 40,
        max_headers: 1,
        max_uri_bytes: 4,
        max_body_bytes: 3,
    },
    // Largest header array; head larger than the URI limit plus slack.
    Limits {
        max_header_bytes: 2048,
        max_headers: ingestd::http::parse::MAX_HEADERS_LIMIT,
        max_uri_bytes: 16,
        max_body_bytes: 300,
    },
];

/// Bodies up to this size are also fed one byte at a time (quadratic).
const BYTEWISE_MAX: usize = 600;
/// Longest chunk-size or trailer line the decoder accepts (chunked.rs MAX_LINE).
const MAX_LINE: usize = 4096;
/// The liveness check appends a body limit of junk: only for the small limits.
const LIVENESS_MAX_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let sel = data[0];
    let lim = PRESETS[(sel & 3) as usize];
    let splits = [data[1] as usize, data[2] as usize];
    let input = &data[3..];
    if sel & 4 == 0 {
        request(input, &lim, splits);
    } else {
        body(input, lim.max_body_bytes, splits);
    }
});

fn request(input: &[u8], lim: &Limits, splits: [usize; 2]) {
    let mut head = Head::default();
    let whole = parse_head(input, lim, &mut head);
    check_prefixes(input, lim, &whole, &head);
    if let Ok(false) = whole {
        // Liveness: "need more" cannot last past the head limit.
        let mut more = input.to_vec();
        more.resize(input.len() + lim.max_header_bytes + 1, b'x');
        let r = parse_head(&more, lim, &mut Head::default());
        assert!(
            r.is_err(),
            "still incomplete after {} more bytes: {r:?}",
            more.len()
        );
    }
    let Ok(true) = whole else { return };

    // Invariants of a parsed head.
    assert!(head.len <= input.len());
    assert!(head.path.end <= head.len && head.path.start < head.path.end);
    assert_eq!(input[head.path.start], b'/');
    assert!(head.path.len() <= lim.max_uri_bytes);
    assert!(head.headers.len() <= lim.max_headers);
    for (n, v) in &head.headers {
        assert!(n.end <= head.len && v.end <= head.len && n.start < n.end);
    }
    if let Framing::Length(n) = head.framing {
        assert!(n > 0 && n <= lim.max_body_bytes);
    }
    if head.framing == Framing::Chunked {
        assert!(!head.http10);
    }

    // The head alone parses to the same head.
    let mut again = Head::default();
    assert!(matches!(
        parse_head(&input[..head.len], lim, &mut again),
        Ok(true)
    ));
    assert_eq!(format!("{head:?}"), format!("{again:?}"));

    // A reused Head (as the connection reuses it) gives the same result as a fresh one.
    let previous: [&[u8]; 2] = [
        b"\r\nPOST /topics/t?q HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\nA: 1\r\nB: 2\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    for prev in previous {
        let mut reused = Head::default();
        assert!(matches!(
            parse_head(prev, &PRESETS[1], &mut reused),
            Ok(true)
        ));
        assert!(matches!(parse_head(input, lim, &mut reused), Ok(true)));
        assert_eq!(format!("{head:?}"), format!("{reused:?}"));
    }

    if head.framing == Framing::Chunked {
        body(&input[head.len..], lim.max_body_bytes, splits);
    }
}

/// Every strict prefix of a complete head needs more input; no prefix of an input that
/// parses fails; a prefix that fails means the whole input fails too.
fn check_prefixes(input: &[u8], lim: &Limits, whole: &Result<bool, HttpError>, head: &Head) {
    let end = match whole {
        Ok(true) => head.len,
        _ => input.len(),
    };
    let mut h = Head::default();
    // Every cut of a small input; for a large one, the first 512 and a sample of the rest.
    let cuts: Vec<usize> = if end <= 1024 {
        (0..end).collect()
    } else {
        (0..512)
            .chain((512..end).step_by(end / 512))
            .chain(end - 8..end)
            .collect()
    };
    for cut in cuts {
        match parse_head(&input[..cut], lim, &mut h) {
            Ok(false) => {}
            Ok(true) => panic!(
                "prefix {cut} of a head of {} bytes parsed as complete",
                head.len
            ),
            Err(e) => assert!(
                whole.is_err(),
                "prefix {cut} fails with {e:?} but the whole input gives {whole:?}"
            ),
        }
    }
}

type Decoded = (Result<Option<usize>, HttpError>, Vec<u8>);

fn decode_whole(body: &[u8], max: usize) -> Decoded {
    let mut out = Vec::new();
    let r = ChunkedDecoder::default().decode(body, &mut out, max);
    (r, out)
}

/// Feeds `body` as a growing region ending at each of `cuts` in turn, then whole.
/// Returns the final result and, when it completed, the first cut that completed it.
fn decode_fed(
    body: &[u8],
    max: usize,
    cuts: impl Iterator<Item = usize>,
) -> (Decoded, Option<usize>) {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut first_done = None;
    for cut in cuts.chain(std::iter::once(body.len())) {
        let r = d.decode(&body[..cut], &mut out, max);
        match r {
            Ok(None) => {}
            Ok(Some(n)) => {
                assert!(n <= cut, "consumed {n} of {cut}");
                first_done.get_or_insert(cut);
                let again = d.decode(&body[..cut], &mut out, max);
                assert_eq!(again, Ok(Some(n)), "a finished decoder stays finished");
                return ((Ok(Some(n)), out), first_done);
            }
            Err(e) => return ((Err(e), out), first_done),
        }
    }
    ((Ok(None), out), first_done)
}

fn same(whole: &Decoded, fed: &Decoded, how: &str) {
    match (&whole.0, &fed.0) {
        (Err(a), Err(b)) => assert_eq!(a.status(), b.status(), "{how}: {a:?} vs {b:?}"),
        (a, b) => {
            assert_eq!(a, b, "{how}");
            assert_eq!(whole.1, fed.1, "{how}: decoded bytes differ");
        }
    }
}

fn body(input: &[u8], max: usize, splits: [usize; 2]) {
    let whole = decode_whole(input, max);
    assert!(whole.1.len() <= max);
    if let Ok(Some(n)) = whole.0 {
        assert!(n <= input.len());
        // Completion does not depend on what follows: exactly the body gives the same.
        let exact = decode_whole(&input[..n], max);
        same(&whole, &exact, "body alone");
    }
    if whole.0 == Ok(None) && max <= LIVENESS_MAX_BODY {
        // Liveness: "need more" cannot last forever. Whatever state the decoder is in,
        // a body limit's worth of data plus a longest line of junk ends it (413, a
        // framing error or a too-long line); a decoder that keeps waiting would hold the
        // connection until the timeout.
        let mut more = input.to_vec();
        more.resize(input.len() + max + MAX_LINE + 8, b'x');
        let (r, _) = decode_whole(&more, max);
        assert!(
            r.is_err(),
            "still incomplete after {} junk bytes: {r:?}",
            more.len() - input.len()
        );
    }
    if input.is_empty() {
        return;
    }
    // Split at one or two points chosen by the input.
    let a = splits[0] * input.len() / 256;
    let b = a + (splits[1] * (input.len() - a)) / 256;
    let (fed, _) = decode_fed(input, max, [a].into_iter());
    same(&whole, &fed, &format!("split at {a}"));
    let (fed, _) = decode_fed(input, max, [a, b].into_iter());
    same(&whole, &fed, &format!("split at {a} and {b}"));
    // One byte at a time: completes exactly when the last byte of the body arrives.
    if input.len() <= BYTEWISE_MAX {
        let (fed, first) = decode_fed(input, max, 0..input.len());
        same(&whole, &fed, "bytewise");
        if let Ok(Some(n)) = whole.0 {
            assert_eq!(first, Some(n), "bytewise completion point");
        }
    }
}
