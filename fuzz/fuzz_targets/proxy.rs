//! Fuzz target for the PROXY protocol header parser (`ingestd::http::proxy::parse`).
//!
//! The input is the first bytes of a connection. Besides "never panics", it checks what
//! `exec::proxy::read_header` relies on when it peeks at a socket that fills up bit by bit:
//! - a header found lies inside the input, is at most `MAX_LEN` bytes, and is found the
//!   same in the header's own bytes alone (it does not depend on what follows);
//! - every prefix of the input gives "need more" or exactly the whole input's result, and
//!   once a prefix is decided every longer one is decided the same way (no answer is ever
//!   taken back when more bytes arrive: "need more" is never an error in disguise, an
//!   error is never a slow header);
//! - "need more" never lasts: at `MAX_LEN` bytes, whatever they are, there is an answer.
#![no_main]

use ingestd::http::proxy::{parse, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match whole {
        Ok(Some((_, len))) => {
            assert!(len > 0 && len <= data.len() && len <= MAX_LEN, "len {len}");
            assert_eq!(parse(&data[..len]), whole, "the header alone");
        }
        Ok(None) => {
            assert!(data.len() < MAX_LEN, "undecided at {} bytes", data.len());
            // Liveness: whatever comes next, an answer by MAX_LEN bytes.
            for fill in [0u8, b' ', b'\r', 0xff] {
                let mut more = data.to_vec();
                more.resize(MAX_LEN, fill);
                assert!(parse(&more) != Ok(None), "undecided after {fill:#x} filler");
            }
        }
        Err(_) => {}
    }
    check_prefixes(data, &whole);
});

type Parsed =
    Result<Option<(ingestd::http::proxy::Header, usize)>, ingestd::http::proxy::ProxyError>;

/// Every prefix (a sample of them for long inputs) is undecided or decided as the whole,
/// and decisions are monotonic in the prefix length.
fn check_prefixes(data: &[u8], whole: &Parsed) {
    let mut cuts: Vec<usize> = if data.len() <= 512 {
        (0..data.len()).collect()
    } else {
        (0..256)
            .chain((256..data.len()).step_by(data.len() / 128))
            .chain(data.len() - 8..data.len())
            .collect()
    };
    // The sampled steps and the last eight overlap: walk the cuts in order, or a longer
    // decided prefix seen before a shorter undecided one reads as a decision taken back.
    cuts.sort_unstable();
    cuts.dedup();
    let mut decided = false;
    for cut in cuts {
        let r = parse(&data[..cut]);
        match r {
            Ok(None) => assert!(
                !decided,
                "prefix {cut} undecided after a shorter one was decided"
            ),
            _ => {
                assert_eq!(&r, whole, "prefix {cut} of {}", data.len());
                decided = true;
            }
        }
    }
}
