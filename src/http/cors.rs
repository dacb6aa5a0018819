//! CORS for web pages that post to ingestd from another origin (`cors_origins`): the
//! preflight answer, and the allow header stamped on every answer to an allowed origin.
//! Pure: bytes in, bytes out. `navigator.sendBeacon` with a `text/plain` body is a simple
//! request (no preflight), so beacons need nothing here to arrive.

use crate::http::parse::trim;
use crate::http::response::{Conn, DateLine};

/// Whether `origin` (the request's `Origin` value) may read answers: listed exactly
/// (scheme, host and port, ASCII case-insensitive), or `*` is listed.
pub fn allowed(origins: &[String], origin: &[u8]) -> bool {
    let origin = trim(origin);
    !origin.is_empty()
        && origin != b"null"
        && origins
            .iter()
            .any(|o| o == "*" || o.as_bytes().eq_ignore_ascii_case(origin))
}

/// A valid `cors_origins` entry: `*`, or `http(s)://host[:port]` with no path.
pub fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Inserts the allow headers into the answer that starts at `from` in `out` (right
/// after its status line). The origin is echoed, never `*`, so pages that send
/// credentials (sendBeacon always does) may read the answer too.
pub fn stamp(out: &mut Vec<u8>, from: usize, origin: &[u8]) {
    let Some(eol) = out[from..].windows(2).position(|w| w == b"\r\n") else {
        return;
    };
    let at = from + eol + 2;
    let mut line = Vec::with_capacity(origin.len() + 120);
    line.extend_from_slice(b"access-control-allow-origin: ");
    line.extend_from_slice(origin);
    line.extend_from_slice(
        b"\r\naccess-control-allow-credentials: true\r\naccess-control-expose-headers: retry-after, ingestd-dead-lettered\r\nvary: origin\r\n",
    );
    out.splice(at..at, line);
}

/// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`): 204, with
/// the allow headers only for an allowed origin (a browser then refuses the request
/// itself). The requested headers are echoed when they are a plain token list. The
/// allow-origin line is stamped by the caller, as on every answer to that origin.
pub fn preflight(
    out: &mut Vec<u8>,
    allowed: bool,
    request_headers: Option<&[u8]>,
    max_age_secs: u64,
    date: &DateLine,
    conn: Conn,
) {
    use std::io::Write;
    // 204 carries no Content-Length (RFC 9110 8.6).
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
    out.extend_from_slice(date.as_bytes());
    if allowed {
        out.extend_from_slice(b"access-control-allow-methods: POST, OPTIONS\r\n");
        let asked = request_headers.map(trim).filter(|h| {
            !h.is_empty()
                && h.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' '))
        });
        if let Some(h) = asked {
            out.extend_from_slice(b"access-control-allow-headers: ");
            out.extend_from_slice(h);
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "access-control-max-age: {max_age_secs}\r\n");
    }
    out.extend_from_slice(b"vary: origin, access-control-request-headers\r\n");
    match conn {
        Conn::KeepAlive => {}
        Conn::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Conn::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_star() {
        let list = vec!["https://shop.example".to_string()];
        assert!(allowed(&list, b"https://shop.example"));
        assert!(allowed(&list, b"HTTPS://Shop.Example"));
        assert!(!allowed(&list, b"https://shop.example:8443"));
        assert!(!allowed(&list, b"https://evil.example"));
        assert!(!allowed(&list, b"null"));
        assert!(!allowed(&[], b"https://shop.example"));
        assert!(allowed(&["*".to_string()], b"http://localhost:3000"));
        assert!(!allowed(&["*".to_string()], b""));
        assert!(valid_origin("http://localhost:3000") && valid_origin("*"));
        assert!(!valid_origin("https://a.example/") && !valid_origin("a.example"));
    }

    #[test]
    fn stamp_goes_after_the_status_line() {
        let mut out = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_vec();
        stamp(&mut out, 0, b"https://a.example");
        let t = String::from_utf8(out).unwrap();
        assert!(t.starts_with(
            "HTTP/1.1 202 Accepted\r\naccess-control-allow-origin: https://a.example\r\n"
        ));
        assert!(
            t.ends_with("vary: origin\r\ncontent-length: 0\r\n\r\n"),
            "{t}"
        );
    }

    #[test]
    fn preflight_allows_only_listed_origins() {
        let d = DateLine::new();
        let mut out = Vec::new();
        let ask = &b"content-type, kafka-key"[..];
        preflight(&mut out, true, Some(ask), 600, &d, Conn::KeepAlive);
        let t = String::from_utf8(out).unwrap();
        assert!(t.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(t.contains("access-control-allow-headers: content-type, kafka-key\r\n"));
        assert!(t.contains("access-control-allow-methods: POST, OPTIONS\r\n"));
        assert!(!t.contains("content-length"));
        let mut out = Vec::new();
        preflight(&mut out, false, Some(ask), 600, &d, Conn::KeepAlive);
        let t = String::from_utf8(out).unwrap();
        assert!(!t.contains("access-control-allow"), "{t}");
        let mut out = Vec::new();
        preflight(&mut out, true, Some(b"x\r\ny"), 600, &d, Conn::KeepAlive);
        assert!(!String::from_utf8(out).unwrap().contains("allow-headers"));
    }
}
