//! Incremental, pure decoder for `Transfer-Encoding: chunked` bodies. It resumes where it
//! stopped, so a body arriving in many reads is scanned once.

use crate::error::HttpError;

/// Longest chunk-size line (size, extensions) or trailer line we accept.
const MAX_LINE: usize = 4096;
/// Total bytes of trailer fields we skip before giving up.
const MAX_TRAILERS: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the body region consumed so far.
    pos: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            pos: 0,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Bytes of the body region consumed so far, forgotten: the caller drops them from
    /// its buffer (and passes what follows as the region from then on), so the raw wire
    /// bytes of a long body (or of chunk extensions, which decode to nothing) are not
    /// held until the body ends. Only the decoded bytes are, capped by `max_body`.
    pub fn take_consumed(&mut self) -> usize {
        std::mem::take(&mut self.pos)
    }

    /// Decodes from `body` (everything received after the head, from the first chunk on)
    /// and appends data to `out`. Returns `Some(consumed)` when the body is complete.
    pub fn decode(
        &mut self,
        body: &[u8],
        out: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<Option<usize>, HttpError> {
        loop {
            let rest = &body[self.pos..];
            match self.state {
                State::Size => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(None);
                    };
                    let size = parse_size(&rest[..line])?;
                    if size > (max_body - out.len()) as u64 {
                        return Err(HttpError::PayloadTooLarge);
                    }
                    self.pos += line + 2;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let n = (left as usize).min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    self.pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(None);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::BadFraming("chunk data not followed by CRLF"));
                    }
                    self.pos += 2;
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(None);
                    };
                    self.pos += line + 2;
                    if line == 0 {
                        self.state = State::Done;
                        return Ok(Some(self.pos));
                    }
                    self.trailer_bytes += line + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(HttpError::HeadersTooLarge);
                    }
                    let t = &rest[..line];
                    let colon = t.iter().position(|&b| b == b':');
                    let name_ok = colon.is_some_and(|c| c > 0 && super::parse::is_token(&t[..c]));
                    // Field values allow HTAB, visible ASCII and obs-text; no other controls.
                    let ctl = |&b: &u8| (b < 0x20 && b != b'\t') || b == 0x7f;
                    if !name_ok || t.iter().any(ctl) {
                        return Err(HttpError::BadFraming("malformed trailer"));
                    }
                }
                State::Done => return Ok(Some(self.pos)),
            }
        }
    }
}

/// Length of the next CRLF-terminated line (without CRLF), or None if incomplete.
/// Bare LF or bare CR inside framing lines is rejected: they enable smuggling.
fn take_line(rest: &[u8]) -> Result<Option<usize>, HttpError> {
    // A line of MAX_LINE bytes has its CR at index MAX_LINE, and its LF just after that.
    let scan = &rest[..rest.len().min(MAX_LINE + 1)];
    for (i, &b) in scan.iter().enumerate() {
        match b {
            b'\r' => {
                return match rest.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(HttpError::BadFraming("bare CR in chunked framing")),
                    None => Ok(None),
                }
            }
            b'\n' => return Err(HttpError::BadFraming("bare LF in chunked framing")),
            0 => return Err(HttpError::BadFraming("NUL in chunked framing")),
            _ => {}
        }
    }
    if rest.len() > MAX_LINE {
        return Err(HttpError::BadFraming("chunk line too long"));
    }
    Ok(None)
}

/// `chunk-size [ chunk-ext ]`: hex digits (at most 15 after leading zeros), then
/// `;name[=value]` extensions made of token characters or quoted strings.
fn parse_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits == 0 || digits - zeros > 15 {
        return Err(HttpError::BadFraming("invalid chunk size"));
    }
    let size = line[zeros..digits].iter().fold(0u64, |n, &d| {
        n * 16 + u64::from((d as char).to_digit(16).unwrap())
    });
    let mut ext = &line[digits..];
    while !ext.is_empty() {
        ext = skip_ws(ext);
        let Some(rest) = ext.strip_prefix(b";") else {
            return Err(HttpError::BadFraming("invalid chunk extension"));
        };
        let rest = skip_ws(rest);
        let name = rest
            .iter()
            .take_while(|&&b| super::parse::is_token_byte(b))
            .count();
        if name == 0 {
            return Err(HttpError::BadFraming("invalid chunk extension"));
        }
        let mut rest = skip_ws(&rest[name..]);
        if let Some(v) = rest.strip_prefix(b"=") {
            let v = skip_ws(v);
            let vlen = if v.first() == Some(&b'"') {
                quoted_len(v)?
            } else {
                v.iter()
                    .take_while(|&&b| super::parse::is_token_byte(b))
                    .count()
            };
            if vlen == 0 {
                return Err(HttpError::BadFraming("invalid chunk extension"));
            }
            rest = &v[vlen..];
        }
        ext = rest;
    }
    Ok(size)
}

fn skip_ws(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &v[n..]
}

fn quoted_len(v: &[u8]) -> Result<usize, HttpError> {
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'"' => return Ok(i + 1),
            b'\\' => i += 2,
            b if b < 0x20 && b != b'\t' || b == 0x7f => break,
            _ => i += 1,
        }
    }
    Err(HttpError::BadFraming("invalid quoted chunk extension"))
}
