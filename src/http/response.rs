//! Response serialization into the connection's output buffer. Responses are tiny and
//! built in place: no allocation per response once the buffer has grown.

use crate::error::HttpError;
use std::io::Write;

/// The `date:` header line, refreshed once a second by each executor.
pub struct DateLine {
    line: Vec<u8>,
}

impl DateLine {
    pub fn new() -> Self {
        let mut d = DateLine {
            line: Vec::with_capacity(40),
        };
        d.refresh();
        d
    }

    pub fn refresh(&mut self) {
        self.line.clear();
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        let _ = write!(self.line, "date: {now}\r\n");
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.line
    }
}

impl Default for DateLine {
    fn default() -> Self {
        Self::new()
    }
}

/// How the connection continues after this response.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    KeepAlive,
    /// HTTP/1.0 client that asked for keep-alive: must be told it is kept.
    KeepAlive10,
    Close,
}

/// Writes a complete response.
pub fn write(
    out: &mut Vec<u8>,
    (status, reason): (u16, &str),
    date: &DateLine,
    conn: Conn,
    content_type: Option<&str>,
    extra: &str,
    body: &[u8],
) {
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    out.extend_from_slice(date.as_bytes());
    let _ = write!(out, "content-length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        let _ = write!(out, "content-type: {ct}\r\n");
    }
    out.extend_from_slice(extra.as_bytes());
    match conn {
        Conn::KeepAlive => {}
        Conn::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Conn::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The head of a REST v3 stream's answer: `200`, JSON, chunked (its reports follow as
/// chunks, written as they are known; see `chunk`).
pub fn stream_head(out: &mut Vec<u8>, date: &DateLine, conn: Conn) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"content-type: application/json\r\ntransfer-encoding: chunked\r\n");
    if conn == Conn::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked answer (empty `data`: the last chunk, which ends it).
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    // For the last chunk this CRLF ends the (empty) trailer section: `0\r\n\r\n`.
    out.extend_from_slice(b"\r\n");
}

/// The hot path's answer: `202 Accepted` with an empty body.
pub fn accepted(out: &mut Vec<u8>, date: &DateLine, conn: Conn) {
    if conn == Conn::KeepAlive {
        out.extend_from_slice(b"HTTP/1.1 202 Accepted\r\n");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"content-length: 0\r\n\r\n");
    } else {
        write(out, (202, "Accepted"), date, conn, None, "", b"");
    }
}

/// An error answer with its short plain-text reason.
/// `head_only`: the request was HEAD, so the body is announced but not sent.
pub fn error(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateLine,
    conn: Conn,
    retry_after: &'static str,
    head_only: bool,
) {
    let mut body = [0u8; 128];
    let msg = err.message().as_bytes();
    let n = msg.len().min(body.len() - 1);
    body[..n].copy_from_slice(&msg[..n]);
    body[n] = b'\n';
    error_as(
        out,
        err,
        date,
        conn,
        retry_after,
        head_only,
        ("text/plain", &body[..=n]),
    );
}

/// An error answer to a Kafka REST v2 request, in the body REST clients parse
/// (`{"error_code":..,"message":..}`).
pub fn rest_error(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateLine,
    conn: Conn,
    retry_after: &'static str,
    head_only: bool,
) {
    let mut body = Vec::with_capacity(160);
    crate::exec::restv2::error_body(&mut body, err.status().0, err.message());
    error_as(
        out,
        err,
        date,
        conn,
        retry_after,
        head_only,
        (REST_V2, &body),
    );
}

/// An error answer to a Kafka REST v3 request: `{"error_code":404,"message":".."}`.
pub fn v3_error(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateLine,
    conn: Conn,
    retry_after: &'static str,
    head_only: bool,
) {
    let mut body = Vec::with_capacity(160);
    crate::exec::restv3::error_body(&mut body, err.status().0, err.message(), None);
    body.push(b'\n');
    let ct = "application/json";
    error_as(out, err, date, conn, retry_after, head_only, (ct, &body));
}

/// A tenant's refusal (403, 429) as JSON naming the tenant and, for a topic outside its
/// scope, the topic: `{"error":"forbidden","message":"...","tenant":"acme","topic":"x"}`;
/// a 429 adds `"retry_after_ms"`, the exact wait (`Retry-After` is in whole seconds).
/// Other errors get their plain-text answer.
#[allow(clippy::too_many_arguments)]
pub fn error_detail(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateLine,
    conn: Conn,
    retry_after: &'static str,
    head_only: bool,
    tenant: Option<&str>,
    topic: Option<&[u8]>,
) {
    let kind = match err {
        HttpError::Forbidden(_) => "forbidden",
        HttpError::TooManyRequests { .. } | HttpError::TooManyConnections => "too many requests",
        HttpError::Unauthorized(_) | HttpError::BadToken(_) => "unauthorized",
        _ => return error(out, err, date, conn, retry_after, head_only),
    };
    let mut body = Vec::with_capacity(160);
    body.extend_from_slice(b"{\"error\":\"");
    body.extend_from_slice(kind.as_bytes());
    body.extend_from_slice(b"\",\"message\":");
    json_str(&mut body, err.message().as_bytes());
    if let Some(t) = tenant {
        body.extend_from_slice(b",\"tenant\":");
        json_str(&mut body, t.as_bytes());
    }
    if let (Some(t), HttpError::Forbidden(_)) = (topic, err) {
        body.extend_from_slice(b",\"topic\":");
        json_str(&mut body, t);
    }
    if let HttpError::TooManyRequests { retry_ms, .. } = err {
        let _ = write!(body, ",\"retry_after_ms\":{retry_ms}");
    }
    body.extend_from_slice(b"}\n");
    error_as(
        out,
        err,
        date,
        conn,
        retry_after,
        head_only,
        ("application/json", &body),
    );
}

/// `s` as a JSON string (names and topics are printable ASCII; anything else escaped).
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push(b'"');
}

/// A refusal whose JSON body was written ahead (a schema's report, `schema::report`):
/// REST v2 requests get it under their content type, others as `application/json`.
#[allow(clippy::too_many_arguments)]
pub fn error_report(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateLine,
    conn: Conn,
    retry_after: &'static str,
    head_only: bool,
    rest: bool,
    body: &[u8],
) {
    let ct = if rest { REST_V2 } else { "application/json" };
    error_as(out, err, date, conn, retry_after, head_only, (ct, body));
}

/// An error's status, headers and connection verdict, with `body` of content type `ct`.
fn error_as(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateLine,
    conn: Conn,
    retry_after: &'static str,
    head_only: bool,
    (ct, body): (&str, &[u8]),
) {
    let conn = if err.closes() { Conn::Close } else { conn };
    // A budget's wait is the real one, rounded up to whole seconds (at least 1).
    let mut wait = String::new();
    let extra = match err {
        HttpError::TooManyRequests { retry_ms, .. } => {
            let _ = std::fmt::Write::write_fmt(
                &mut wait,
                format_args!(
                    "retry-after: {}\r\n",
                    (*retry_ms as u64).div_ceil(1000).max(1)
                ),
            );
            &wait
        }
        _ => err.extra_header(retry_after),
    };
    write(out, err.status(), date, conn, Some(ct), extra, body);
    if head_only {
        out.truncate(out.len() - body.len());
    }
}

/// The content type of REST v2 answers (Confluent's and Strimzi's).
pub const REST_V2: &str = "application/vnd.kafka.v2+json";

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
