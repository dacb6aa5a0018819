//! `Content-Encoding` of request bodies: which codings are taken, and decoding them with
//! the decoded size capped while decoding, so a decompression bomb is refused after at
//! most `max` output bytes (never allocated whole). Pure: bytes in, bytes out.

use crate::error::HttpError;
use crate::http::parse::trim;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coding {
    #[default]
    Identity,
    Gzip,
    /// HTTP's `deflate` is zlib-wrapped (RFC 9110 8.4.1.2); raw deflate, which some
    /// clients send under the same name, is taken too (told apart by the zlib header).
    Deflate,
    Zstd,
    /// Snappy's raw block format, as Prometheus remote-write sends it.
    Snappy,
}

/// The coding a `Content-Encoding` value names: 415 for one we do not decode, or for a
/// chain of several codings (no client we know sends one).
pub fn parse_coding(v: &[u8]) -> Result<Coding, HttpError> {
    let v = trim(v);
    let name = |n: &[u8]| v.eq_ignore_ascii_case(n);
    Ok(match () {
        _ if v.is_empty() || name(b"identity") => Coding::Identity,
        _ if name(b"gzip") || name(b"x-gzip") => Coding::Gzip,
        _ if name(b"deflate") => Coding::Deflate,
        _ if name(b"zstd") => Coding::Zstd,
        _ if name(b"snappy") => Coding::Snappy,
        _ if v.contains(&b',') => {
            return Err(HttpError::UnsupportedMediaType(
                "one Content-Encoding at a time: gzip, deflate, zstd or snappy",
            ))
        }
        _ => {
            return Err(HttpError::UnsupportedMediaType(
                "Content-Encoding must be gzip, deflate, zstd, snappy or identity",
            ))
        }
    })
}

/// Decodes `input` into `out` (cleared first). 413 (connection kept: the body was read
/// whole) once the output would pass `max` bytes; 400 when the stream is corrupt,
/// truncated, or followed by trailing bytes.
pub fn decode(c: Coding, input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), HttpError> {
    out.clear();
    match c {
        Coding::Identity => {
            out.extend_from_slice(input);
            Ok(())
        }
        Coding::Gzip => {
            let mut d = flate2::bufread::MultiGzDecoder::new(input);
            capped(&mut d, max, out, "body is not a valid gzip stream")
        }
        Coding::Deflate if zlib_header(input) => {
            let mut d = flate2::bufread::ZlibDecoder::new(input);
            capped(
                &mut d,
                max,
                out,
                "body is not a valid deflate (zlib) stream",
            )?;
            whole(
                d.total_in(),
                input,
                "body has bytes after its deflate stream",
            )
        }
        Coding::Deflate => {
            let mut d = flate2::bufread::DeflateDecoder::new(input);
            capped(&mut d, max, out, "body is not a valid deflate stream")?;
            whole(
                d.total_in(),
                input,
                "body has bytes after its deflate stream",
            )
        }
        Coding::Zstd => ZSTD.with(|ctx| {
            // A decoder context is ~100 KiB to set up (16 us for a 256 B body, measured):
            // each executor thread keeps one. Resetting it drops any state a failed
            // stream left.
            let mut ctx = ctx.borrow_mut();
            let _ = ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
            let mut d = zstd::stream::read::Decoder::with_context(input, &mut ctx);
            capped(&mut d, max, out, "body is not a valid zstd stream")
        }),
        Coding::Snappy => {
            let bad = HttpError::BadRequest("body is not a valid snappy block");
            // The block states its decoded length first: check it before allocating.
            let n = snap::raw::decompress_len(input).map_err(|_| bad)?;
            if n > max {
                return Err(HttpError::DecodedTooLarge);
            }
            out.resize(n, 0);
            match snap::raw::Decoder::new().decompress(input, out) {
                Ok(m) if m == n => Ok(()),
                _ => {
                    out.clear();
                    Err(bad)
                }
            }
        }
    }
}

thread_local! {
    static ZSTD: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
}

/// Reads `d` to its end into `out`, at most `max` bytes.
fn capped(
    d: &mut impl Read,
    max: usize,
    out: &mut Vec<u8>,
    bad: &'static str,
) -> Result<(), HttpError> {
    // One byte more than allowed tells "exactly max" from "more than max".
    let r = d.take(max as u64 + 1).read_to_end(out);
    let res = match r {
        Ok(_) if out.len() > max => Err(HttpError::DecodedTooLarge),
        Ok(_) => Ok(()),
        Err(_) => Err(HttpError::BadRequest(bad)),
    };
    if res.is_err() {
        out.clear();
    }
    res
}

/// The zlib decoder stops at the end of its stream: bytes after it mean a damaged or
/// concatenated body, not something to drop in silence.
fn whole(used: u64, input: &[u8], msg: &'static str) -> Result<(), HttpError> {
    if used as usize == input.len() {
        Ok(())
    } else {
        Err(HttpError::BadRequest(msg))
    }
}

/// RFC 1950: CM = 8 (deflate), window <= 32 KiB, and the header's check bits.
fn zlib_header(b: &[u8]) -> bool {
    b.len() >= 2
        && b[0] & 0x0f == 8
        && b[0] >> 4 <= 7
        && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn all(b: &[u8]) -> Vec<(Coding, Vec<u8>)> {
        vec![
            (Coding::Identity, b.to_vec()),
            (Coding::Gzip, gzip(b)),
            (Coding::Deflate, zlib(b)),
            (Coding::Deflate, raw_deflate(b)),
            (Coding::Zstd, zstd::encode_all(b, 3).unwrap()),
            (
                Coding::Snappy,
                snap::raw::Encoder::new().compress_vec(b).unwrap(),
            ),
        ]
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_ones_get_415() {
        assert_eq!(parse_coding(b" GZip ").unwrap(), Coding::Gzip);
        assert_eq!(parse_coding(b"x-gzip").unwrap(), Coding::Gzip);
        assert_eq!(parse_coding(b"identity").unwrap(), Coding::Identity);
        assert_eq!(parse_coding(b"zstd").unwrap(), Coding::Zstd);
        for v in [&b"br"[..], b"compress", b"gzip, zstd"] {
            assert_eq!(parse_coding(v).unwrap_err().status().0, 415, "{v:?}");
        }
    }

    #[test]
    fn every_coding_round_trips_up_to_the_cap_exactly() {
        let body: Vec<u8> = (0..5000u32)
            .flat_map(|i| (i % 251) as u8..=(i % 251) as u8)
            .collect();
        for (c, enc) in all(&body) {
            let mut out = Vec::new();
            decode(c, &enc, body.len(), &mut out).unwrap_or_else(|e| panic!("{c:?}: {e:?}"));
            assert_eq!(out, body, "{c:?}");
            let one_less = decode(c, &enc, body.len() - 1, &mut out);
            if c != Coding::Identity {
                assert_eq!(one_less, Err(HttpError::DecodedTooLarge), "{c:?}");
                assert!(out.is_empty(), "{c:?}: nothing partial is kept");
            }
        }
    }

    #[test]
    fn a_bomb_is_refused_without_allocating_its_output() {
        // 256 MiB of zeros, compressed: a few hundred KiB on the wire.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let mut out = Vec::new();
        assert_eq!(
            decode(Coding::Gzip, &bomb, 1 << 20, &mut out),
            Err(HttpError::DecodedTooLarge)
        );
        assert!(out.capacity() <= 4 << 20, "allocated {}", out.capacity());
        let z = zstd::encode_all(&zeros[..], 19).unwrap();
        assert_eq!(
            decode(Coding::Zstd, &z, 1000, &mut out),
            Err(HttpError::DecodedTooLarge)
        );
    }

    #[test]
    fn truncated_corrupt_and_trailing_bytes_get_400() {
        let body = b"{\"event\":\"click\",\"n\":1}".repeat(50);
        for (c, enc) in all(&body) {
            if c == Coding::Identity {
                continue;
            }
            let mut out = Vec::new();
            for cut in [1, enc.len() / 2, enc.len() - 1] {
                let r = decode(c, &enc[..cut], 1 << 20, &mut out);
                assert_eq!(r.map_err(|e| e.status().0), Err(400), "{c:?} cut at {cut}");
                assert!(out.is_empty());
            }
            let mut flipped = enc.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0xff;
            let r = decode(c, &flipped, 1 << 20, &mut out);
            assert!(
                r.is_err() || out != body,
                "{c:?}: a flipped byte never decodes to the original silently"
            );
        }
        let mut trailing = zlib(b"abc");
        trailing.extend_from_slice(b"junk");
        let mut out = Vec::new();
        assert_eq!(
            decode(Coding::Deflate, &trailing, 100, &mut out).map_err(|e| e.status().0),
            Err(400)
        );
        assert_eq!(
            decode(Coding::Gzip, b"plain text, not gzip", 100, &mut out).map_err(|e| e.status().0),
            Err(400)
        );
    }

    #[test]
    fn concatenated_gzip_members_decode_as_one_body() {
        let mut two = gzip(b"first\n");
        two.extend(gzip(b"second\n"));
        let mut out = Vec::new();
        decode(Coding::Gzip, &two, 100, &mut out).unwrap();
        assert_eq!(out, b"first\nsecond\n");
    }
}
