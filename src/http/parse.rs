//! Pure HTTP/1.1 request-head parser over a byte buffer: no socket, no allocation beyond
//! the caller's reusable `Head`. Returns `Ok(None)` ("need more") on partial input.
//! Strict where leniency enables request smuggling: one Content-Length of plain digits,
//! `chunked` as the only transfer coding, never both, no obsolete line folding.

use crate::error::HttpError;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Upper bound for `max_headers`; the header array lives on the stack.
pub const MAX_HEADERS_LIMIT: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    /// CORS preflight (answered only on produce paths with `cors_origins` set).
    Options,
    /// A valid token we do not serve (answered 405 or 404 by the router).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body follows the head.
    Empty,
    Length(usize),
    Chunked,
}

/// A parsed request head. Ranges index the buffer that was parsed.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: Method,
    /// Path without the query string.
    pub path: Range<usize>,
    pub http10: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub framing: Framing,
    /// Bytes of request line plus headers plus the blank line.
    pub len: usize,
    /// Every header as (name, value) ranges, for the router.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            method: Method::Other,
            path: 0..0,
            http10: false,
            keep_alive: true,
            expect_continue: false,
            framing: Framing::Empty,
            len: 0,
            headers: Vec::with_capacity(16),
        }
    }
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    // `part` is a sub-slice of `buf` (httparse returns borrowed slices).
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Parses one request head at the start of `buf` into `head`.
/// `Ok(false)`: incomplete, read more. `Ok(true)`: `head` is filled.
pub fn parse_head(buf: &[u8], lim: &Limits, head: &mut Head) -> Result<bool, HttpError> {
    // Robustness (RFC 9112 2.2): ignore empty lines before a request line.
    let mut skip = 0;
    while skip < buf.len() && (buf[skip] == b'\n' || buf[skip] == b'\r') {
        if buf[skip] == b'\r' && buf.get(skip + 1).is_some_and(|&b| b != b'\n') {
            return Err(HttpError::BadFraming("bare CR"));
        }
        skip += 1;
        if skip > 64 {
            return Err(HttpError::BadFraming("too many empty lines"));
        }
    }
    let input = &buf[skip..];
    let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS_LIMIT];
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        input,
        &mut storage[..lim.max_headers],
    );
    let len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return partial_limits(input, lim).map(|_| false);
        }
        Err(e) => return Err(map_httparse(e, input, lim)),
    };
    // The target first: a head too large because of its target is answered 414.
    let target = req.path.unwrap_or("");
    if target.len() > lim.max_uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    if len > lim.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    if !target.starts_with('/') {
        return Err(HttpError::BadFraming(
            "request target must be an absolute path",
        ));
    }
    let path = target.split('?').next().unwrap_or("");
    head.path = range_of(buf, path.as_bytes());
    head.method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    head.http10 = req.version == Some(0);
    head.len = skip + len;
    head.expect_continue = false;
    head.headers.clear();

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        head.headers
            .push((range_of(buf, name.as_bytes()), range_of(buf, value)));
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HttpError::BadFraming("duplicate Content-Length"));
            }
            content_length = Some(parse_length(value, lim)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err(HttpError::BadFraming("duplicate Transfer-Encoding"));
            }
            if !trim(value).eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::NotImplemented(
                    "only chunked transfer-encoding is supported",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if !trim(value).eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            // RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored.
            head.expect_continue = !head.http10;
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !valid_host(value) {
                return Err(HttpError::BadRequest("invalid Host header"));
            }
        }
    }
    // RFC 9112 3.2: 400 for a missing Host in HTTP/1.1, and for a repeated one in any.
    if hosts > 1 || (!head.http10 && hosts == 0) {
        return Err(HttpError::BadRequest("exactly one Host header required"));
    }
    head.framing = match (content_length, chunked) {
        (Some(_), true) => {
            return Err(HttpError::BadFraming(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (_, true) if head.http10 => {
            return Err(HttpError::BadFraming(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (_, true) => Framing::Chunked,
        (Some(0), false) => Framing::Empty,
        (Some(n), false) => Framing::Length(n),
        (None, false) if head.method == Method::Post => return Err(HttpError::LengthRequired),
        (None, false) => Framing::Empty,
    };
    head.keep_alive = if head.http10 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(true)
}

/// Limits that can be enforced before the head is complete (slowloris with huge heads).
/// Only what the complete head would be refused for too: a strict prefix of a head that
/// parses must never fail, however the head is split across reads.
fn partial_limits(input: &[u8], lim: &Limits) -> Result<(), HttpError> {
    if target_too_long(input, lim) {
        return Err(HttpError::UriTooLong);
    }
    if input.len() > lim.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    Ok(())
}

/// Whether the request target seen so far (after the method's space, up to the next
/// space or the end of the line) is already longer than the limit.
fn target_too_long(input: &[u8], lim: &Limits) -> bool {
    let line = input.split(|&b| b == b'\n').next().unwrap_or(b"");
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let target = line[sp + 1..].split(|&b| b == b' ').next().unwrap_or(b"");
    let target = target.strip_suffix(b"\r").unwrap_or(target);
    target.len() > lim.max_uri_bytes
}

fn map_httparse(e: httparse::Error, input: &[u8], lim: &Limits) -> HttpError {
    // Whatever else is wrong, a target over the limit is 414, as it is while incomplete:
    // the answer must not depend on how the request was split across reads.
    if target_too_long(input, lim) {
        return HttpError::UriTooLong;
    }
    match e {
        httparse::Error::TooManyHeaders => HttpError::HeadersTooLarge,
        httparse::Error::Version => {
            // A well-formed "HTTP/x.y" we do not speak is 505; garbage is 400.
            let line = input.split(|&b| b == b'\n').next().unwrap_or(b"");
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let ver = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
            let parts = line.split(|&b| b == b' ').count();
            if parts == 3
                && ver.len() == 8
                && ver.starts_with(b"HTTP/")
                && ver[5].is_ascii_digit()
                && ver[6] == b'.'
                && ver[7].is_ascii_digit()
            {
                HttpError::VersionNotSupported
            } else {
                HttpError::BadFraming("malformed HTTP version")
            }
        }
        httparse::Error::Token => HttpError::BadFraming("malformed request line"),
        httparse::Error::HeaderName => HttpError::BadFraming("malformed header name"),
        httparse::Error::HeaderValue => HttpError::BadFraming("malformed header value"),
        httparse::Error::NewLine => HttpError::BadFraming("malformed line ending"),
        httparse::Error::Status => HttpError::BadFraming("malformed request"),
    }
}

/// Content-Length: digits only, no sign, no list, no overflow; over the limit is 413.
/// Leading zeros are valid (1*DIGIT) and do not count towards the 19 digits that fit.
fn parse_length(value: &[u8], lim: &Limits) -> Result<usize, HttpError> {
    let value = trim(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadFraming("invalid Content-Length"));
    }
    let zeros = value.iter().take_while(|&&d| d == b'0').count();
    let digits = &value[zeros..];
    if digits.len() > 19 {
        return Err(HttpError::PayloadTooLarge);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    if n > lim.max_body_bytes as u64 {
        return Err(HttpError::PayloadTooLarge);
    }
    Ok(n as usize)
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// RFC 9112 3.2 / RFC 3986 3.2.2: `uri-host [ ":" port ]`, where uri-host is an
/// IP-literal in brackets or a reg-name (IPv4 addresses are reg-names syntactically).
/// Empty is valid (a request target without authority).
fn valid_host(value: &[u8]) -> bool {
    let v = trim(value);
    let unreserved_or_sub = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
    let (host_ok, rest) = if let Some(lit) = v.strip_prefix(b"[") {
        let Some(end) = lit.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &lit[..end];
        (
            !inside.is_empty() && inside.iter().all(|&b| b == b':' || unreserved_or_sub(b)),
            &lit[end + 1..],
        )
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let name = &v[..end];
        let mut ok = true;
        let mut i = 0;
        while i < name.len() {
            if name[i] == b'%' {
                ok &= name.len() > i + 2
                    && name[i + 1].is_ascii_hexdigit()
                    && name[i + 2].is_ascii_hexdigit();
                i += 3;
            } else {
                ok &= unreserved_or_sub(name[i]);
                i += 1;
            }
        }
        (ok, &v[end..])
    };
    let port_ok = match rest.split_first() {
        None => true,
        Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// Validates a method token; httparse already does, this is for the router's 405.
pub fn is_token(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().copied().all(is_token_byte)
}

/// RFC 9110 token characters (header names, methods).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
