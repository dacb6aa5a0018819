//! A connection's answers, in request order. While nothing waits, an answer goes straight
//! to the output; behind one that waits for Kafka's acknowledgement, answers queue up (their
//! bytes kept aside) and follow it once it is settled. All answers of one read leave in
//! one write.

use crate::error::HttpError;
use crate::exec::handler::Rest;
use crate::exec::local::{all_delivered, Ack, Acked};
use crate::exec::{restv2, restv3};
use crate::http::cors;
use crate::http::response::{self, Conn as Keep, DateLine};
use std::cell::RefCell;
use std::io::Write;
use std::ops::Range;
use std::time::Instant;

/// An answer that waits for Kafka (`T`: what to wait on, the executor's ticket).
struct Waiting<T> {
    ticket: T,
    started: Instant,
    /// The topic's name, in `Replies::side`.
    topic: Range<usize>,
    /// Header lines to stamp on the answer (`set_note`), in `Replies::side`.
    note: Option<Range<usize>>,
    /// Records of an NDJSON request (0: a single record).
    count: usize,
    keep: Keep,
    head_only: bool,
    /// A REST request: what its answer lists (answered in that format).
    rest: Option<Rest>,
    /// The CORS origin to stamp on the answer, in `Replies::side`.
    origin: Option<Range<usize>>,
}

enum Pending<T> {
    /// Bytes in `Replies::side`.
    Ready(Range<usize>),
    Waiting(Waiting<T>),
}

pub struct Replies<T> {
    /// Bytes to write now.
    out: Vec<u8>,
    side: Vec<u8>,
    queue: Vec<Pending<T>>,
    /// The current request's allowed CORS origin (see `set_origin`).
    origin: Option<Vec<u8>>,
    /// Header lines for the current request's answer (see `set_note`).
    note: Vec<u8>,
}

impl<T> Default for Replies<T> {
    fn default() -> Self {
        Replies {
            out: Vec::new(),
            side: Vec::new(),
            queue: Vec::new(),
            origin: None,
            note: Vec::new(),
        }
    }
}

impl<T> Replies<T> {
    /// The CORS origin allowed for the request being answered (None: no CORS headers):
    /// stamped on each of its answers, now or later.
    pub fn set_origin(&mut self, origin: Option<&[u8]>) {
        match (origin, &mut self.origin) {
            (None, o) => *o = None,
            (Some(v), Some(o)) => {
                o.clear();
                o.extend_from_slice(v);
            }
            (Some(v), o) => *o = Some(v.to_vec()),
        }
    }

    /// Header lines (each ending in CRLF) for the current request's answer, now or
    /// later, such as how many of its records went to a dead-letter topic; empty: none.
    pub fn set_note(&mut self, lines: &[u8]) {
        self.note.clear();
        self.note.extend_from_slice(lines);
    }

    /// Appends an answer that is known now; `write` serializes it.
    pub fn now(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let queued = !self.queue.is_empty();
        let buf = if queued {
            &mut self.side
        } else {
            &mut self.out
        };
        let s = buf.len();
        write(buf);
        if let Some(o) = &self.origin {
            cors::stamp(buf, s, o);
        }
        if !self.note.is_empty() {
            stamp_lines(buf, s, &self.note);
        }
        if queued {
            self.queue.push(Pending::Ready(s..self.side.len()));
        }
    }

    /// Appends an answer that waits for Kafka's acknowledgement of `ticket`.
    #[allow(clippy::too_many_arguments)]
    pub fn later(
        &mut self,
        ticket: T,
        started: Instant,
        topic: &[u8],
        count: usize,
        keep: Keep,
        head_only: bool,
        rest: Option<Rest>,
    ) {
        let origin = self.origin.as_ref().map(|o| {
            let s = self.side.len();
            self.side.extend_from_slice(o);
            s..self.side.len()
        });
        let note = (!self.note.is_empty()).then(|| {
            let s = self.side.len();
            self.side.extend_from_slice(&self.note);
            s..self.side.len()
        });
        let t = self.side.len();
        self.side.extend_from_slice(topic);
        self.queue.push(Pending::Waiting(Waiting {
            ticket,
            started,
            topic: t..self.side.len(),
            note,
            count,
            keep,
            head_only,
            rest,
            origin,
        }));
    }

    /// Settles every queued answer in order: `acked` waits for a ticket's outcome, `done`
    /// hears each waited answer's status and start. Then `out` holds everything to write.
    pub async fn settle(
        &mut self,
        mut acked: impl AsyncFnMut(T) -> Acked,
        date: &RefCell<DateLine>,
        retry_after: &'static str,
        mut done: impl FnMut(u16, Instant),
    ) {
        // Drained, not dropped: the queue keeps its capacity for the next answers (a fresh
        // Vec cost a malloc and a free per request wherever 2xx waits, as with a spool).
        let mut queue = std::mem::take(&mut self.queue);
        for p in queue.drain(..) {
            match p {
                Pending::Ready(r) => self.out.extend_from_slice(&self.side[r]),
                Pending::Waiting(w) => {
                    let res = acked(w.ticket).await;
                    let topic = std::str::from_utf8(&self.side[w.topic]).unwrap_or("");
                    let start = self.out.len();
                    let d = date.borrow();
                    let code = match &w.rest {
                        Some(rest) => write_rest(
                            &mut self.out,
                            &res,
                            rest,
                            w.keep,
                            w.head_only,
                            &d,
                            retry_after,
                        ),
                        None => write_acked(
                            &mut self.out,
                            &res,
                            topic,
                            w.count,
                            w.keep,
                            w.head_only,
                            &d,
                            retry_after,
                        ),
                    };
                    if let Some(o) = w.origin {
                        cors::stamp(&mut self.out, start, &self.side[o]);
                    }
                    if let Some(n) = w.note {
                        stamp_lines(&mut self.out, start, &self.side[n]);
                    }
                    done(code, w.started);
                }
            }
        }
        self.side.clear();
        self.queue = queue;
    }

    /// The bytes to write now (after `settle`); `clear` once written.
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    pub fn clear(&mut self) {
        self.out.clear();
    }
}

/// Inserts header `lines` after the status line of the answer that starts at `from`.
fn stamp_lines(out: &mut Vec<u8>, from: usize, lines: &[u8]) {
    if let Some(eol) = out[from..].windows(2).position(|w| w == b"\r\n") {
        let at = from + eol + 2;
        out.splice(at..at, lines.iter().copied());
    }
}

/// The answer to an ack=kafka request: 200 with where the record(s) landed, or the error.
/// Returns the status.
#[allow(clippy::too_many_arguments)]
pub fn write_acked(
    out: &mut Vec<u8>,
    res: &Acked,
    topic: &str,
    count: usize,
    keep: Keep,
    head_only: bool,
    date: &DateLine,
    retry_after: &'static str,
) -> u16 {
    match res {
        Ok(Ack::Spooled { durable, id }) => {
            let (code, reason) = if *durable {
                (201, "Created")
            } else {
                (202, "Accepted")
            };
            // On the stack: a heap body here cost a malloc and a free per spooled request.
            // The longest (an executor, two u64 ids and a usize count) is 106 bytes.
            let mut buf = [0u8; 128];
            let mut body = std::io::Cursor::new(&mut buf[..]);
            let (e, s) = id;
            let _ = match (count, durable) {
                // A plain 202 stays what it is without a spool: empty.
                (0, false) => Ok(()),
                (0, true) => writeln!(body, "{{\"id\":\"{e}-{s}\"}}"),
                (n, false) => writeln!(body, "{{\"queued\":{n}}}"),
                (n, true) => writeln!(
                    body,
                    "{{\"count\":{n},\"first_id\":\"{e}-{s}\",\"last_id\":\"{e}-{}\"}}",
                    s + (n as u64 - 1)
                ),
            };
            let len = body.position() as usize;
            let body = &buf[..len];
            if body.is_empty() {
                response::accepted(out, date, keep);
                return 202;
            }
            let json = Some("application/json");
            response::write(out, (code, reason), date, keep, json, "", body);
            if head_only {
                out.truncate(out.len() - body.len());
            }
            code
        }
        // Per-record waits are REST's (`write_rest`); as a plain answer, first and last.
        Ok(Ack::Each(each)) => {
            let res = all_delivered(each).and_then(|po| match (po.first(), po.last()) {
                (Some(&f), Some(&l)) => Ok(Ack::Kafka(f, l)),
                _ => Err(HttpError::Delivery(crate::error::FailReason::Broker)),
            });
            write_acked(out, &res, topic, count, keep, head_only, date, retry_after)
        }
        Ok(Ack::Kafka((p0, o0), (p1, o1))) => {
            let mut body = Vec::with_capacity(128);
            let _ = if count > 0 {
                writeln!(body, "{{\"topic\":\"{topic}\",\"count\":{count},\"first\":{{\"partition\":{p0},\"offset\":{o0}}},\"last\":{{\"partition\":{p1},\"offset\":{o1}}}}}")
            } else {
                writeln!(
                    body,
                    "{{\"topic\":\"{topic}\",\"partition\":{p1},\"offset\":{o1}}}"
                )
            };
            let json = Some("application/json");
            response::write(out, (200, "OK"), date, keep, json, "", &body);
            if head_only {
                out.truncate(out.len() - body.len());
            }
            200
        }
        Err(e) => {
            response::error(out, e, date, keep, retry_after, head_only);
            e.status().0
        }
    }
}

/// The answer to a REST v2 request, in its format: 200 with each record's partition and
/// offset once Kafka acknowledged; 202/201 with the partition each record asked for (null:
/// the partitioner's choice, not known yet) and null offsets; an error for them all. A v3
/// request's likewise, in v3's format (`restv3::answer`).
pub fn write_rest(
    out: &mut Vec<u8>,
    res: &Acked,
    rest: &Rest,
    keep: Keep,
    head_only: bool,
    date: &DateLine,
    retry_after: &'static str,
) -> u16 {
    let parts = match rest {
        Rest::V2(parts) => parts,
        Rest::V3(reply) => return write_v3(out, res, reply, keep, head_only, date, retry_after),
    };
    let mut body = Vec::with_capacity(64 * parts.len() + 64);
    let status = match res {
        // v2's answer is one status for the request: a record that failed fails it.
        Ok(Ack::Each(each)) => match all_delivered(each) {
            Ok(po) => {
                restv2::answer(&mut body, restv2::exact(&po));
                (200, "OK")
            }
            Err(e) => {
                response::rest_error(out, &e, date, keep, retry_after, head_only);
                return e.status().0;
            }
        },
        // REST requests under ack=kafka wait per record (`Ack::Each`); with only first
        // and last known, no offset is claimed.
        Ok(Ack::Kafka(..)) => {
            restv2::answer(&mut body, restv2::requested(parts));
            (200, "OK")
        }
        Ok(Ack::Spooled { durable, .. }) => {
            restv2::answer(&mut body, restv2::requested(parts));
            if *durable {
                (201, "Created")
            } else {
                (202, "Accepted")
            }
        }
        Err(e) => {
            response::rest_error(out, e, date, keep, retry_after, head_only);
            return e.status().0;
        }
    };
    write_now(out, status, response::REST_V2, &body, keep, head_only, date);
    status.0
}

/// A v3 answer: one record's (its error as the request's, with the error's headers),
/// a stream's (200, an object per record), a batch's (207).
fn write_v3(
    out: &mut Vec<u8>,
    res: &Acked,
    reply: &restv3::Reply,
    keep: Keep,
    head_only: bool,
    date: &DateLine,
    retry_after: &'static str,
) -> u16 {
    // One record's failure is the request's, with the error's status and headers.
    let single = reply.op == restv3::Op::Records && !reply.stream;
    let failed = match res {
        Err(e) => Some(*e),
        Ok(Ack::Each(each)) => each.iter().find_map(|d| (*d).err()),
        Ok(_) => None,
    };
    if let (true, Some(e)) = (single, failed) {
        response::v3_error(out, &e, date, keep, retry_after, head_only);
        return e.status().0;
    }
    let mut body = Vec::with_capacity(256 * reply.entries.len() + 64);
    let code = v3_body(&mut body, res, reply);
    let reason = match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        207 => "Multi-Status",
        _ => "Error",
    };
    write_now(
        out,
        (code, reason),
        "application/json",
        &body,
        keep,
        head_only,
        date,
    );
    code
}

/// The body of a v3 answer (`restv3::answer`) once its records' fate is known; its
/// status.
pub fn v3_body(body: &mut Vec<u8>, res: &Acked, reply: &restv3::Reply) -> u16 {
    let none = || std::iter::repeat(Ok((None, None)));
    match res {
        Ok(Ack::Each(each)) => {
            let mut landed = each.iter().map(|d| d.map(|(p, o)| (Some(p), Some(o))));
            restv3::answer(body, reply, restv3::Fate::Each(200, &mut landed))
        }
        Ok(Ack::Kafka(..)) => restv3::answer(body, reply, restv3::Fate::Each(200, &mut none())),
        Ok(Ack::Spooled { durable, .. }) => {
            let code = if *durable { 201 } else { 202 };
            restv3::answer(body, reply, restv3::Fate::Each(code, &mut none()))
        }
        Err(e) => restv3::answer(body, reply, restv3::Fate::Failed(e)),
    }
}

/// The 202 of a REST request queued without a spool: each record's requested partition,
/// no offset. (For v3 also the answer to a stream or batch none of whose objects could be
/// produced: their errors.)
pub fn write_rest_queued(
    out: &mut Vec<u8>,
    rest: &Rest,
    keep: Keep,
    head_only: bool,
    date: &DateLine,
) -> u16 {
    let acked = Ok(Ack::Spooled {
        durable: false,
        id: (0, 0),
    });
    write_rest(out, &acked, rest, keep, head_only, date, "")
}

/// A plain answer known now (`head_only`: HEAD, no body).
pub fn write_now(
    out: &mut Vec<u8>,
    (code, reason): (u16, &str),
    content_type: &str,
    body: &[u8],
    keep: Keep,
    head_only: bool,
    date: &DateLine,
) {
    response::write(
        out,
        (code, reason),
        date,
        keep,
        Some(content_type),
        "",
        body,
    );
    if head_only {
        out.truncate(out.len() - body.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn text(r: &Replies<u32>) -> String {
        String::from_utf8_lossy(r.out()).into_owned()
    }

    fn statuses(s: &str) -> Vec<&str> {
        s.split("HTTP/1.1 ")
            .skip(1)
            .map(|a| a.split(' ').next().unwrap())
            .collect()
    }

    fn now(r: &mut Replies<u32>, code: u16, body: &[u8], head_only: bool) {
        let d = DateLine::new();
        r.now(|out| {
            write_now(
                out,
                (code, "X"),
                "text/plain",
                body,
                Keep::KeepAlive,
                head_only,
                &d,
            )
        });
    }

    fn settle(r: &mut Replies<u32>, results: &[(u32, Acked)]) -> Vec<u16> {
        let date = RefCell::new(DateLine::new());
        let mut codes = Vec::new();
        {
            let fut = r.settle(
                async |t| results.iter().find(|(k, _)| *k == t).unwrap().1.clone(),
                &date,
                "retry-after: 1\r\n",
                |c, _| codes.push(c),
            );
            let mut fut = std::pin::pin!(fut);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                fut.as_mut().poll(&mut cx).is_ready(),
                "nothing to wait on here"
            );
        }
        codes
    }

    #[test]
    fn pipelined_answers_keep_request_order_behind_a_waiting_one() {
        let mut r = Replies::default();
        now(&mut r, 202, b"", false);
        r.later(
            7,
            Instant::now(),
            b"events",
            0,
            Keep::KeepAlive,
            false,
            None,
        );
        now(&mut r, 404, b"no such path\n", false);
        r.later(
            8,
            Instant::now(),
            b"events",
            3,
            Keep::KeepAlive,
            false,
            None,
        );
        now(&mut r, 200, b"ok\n", false);
        assert_eq!(
            statuses(&text(&r)),
            ["202"],
            "only what precedes the wait is out"
        );
        let codes = settle(
            &mut r,
            &[
                (8, Err(HttpError::AckTimeout)),
                (7, Ok(Ack::Kafka((1, 41), (1, 41)))),
            ],
        );
        assert_eq!(codes, [200, 504]);
        let t = text(&r);
        assert_eq!(statuses(&t), ["202", "200", "404", "504", "200"]);
        assert!(
            t.contains(r#"{"topic":"events","partition":1,"offset":41}"#),
            "{t}"
        );
        r.clear();
        assert!(r.out().is_empty());
    }

    #[test]
    fn head_answers_carry_headers_but_no_body() {
        let mut r = Replies::default();
        now(&mut r, 200, b"ok\n", true);
        r.later(1, Instant::now(), b"t", 0, Keep::KeepAlive, true, None);
        settle(&mut r, &[(1, Ok(Ack::Kafka((0, 5), (0, 5))))]);
        let t = text(&r);
        assert_eq!(statuses(&t), ["200", "200"]);
        assert!(t.contains("content-length: 3\r\n"), "{t}");
        assert!(!t.contains("ok\n") && !t.contains("offset"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
    }

    #[test]
    fn spooled_bodies_fit_their_buffer_at_the_largest_ids() {
        let mut r = Replies::default();
        let n = u32::MAX as usize;
        let (s1, s3) = (u64::MAX - 9, u64::MAX - n as u64 + 1);
        for (t, count) in [(1, 0), (2, 10), (3, n)] {
            r.later(t, Instant::now(), b"t", count, Keep::KeepAlive, false, None);
        }
        let spooled = |s| {
            Ok(Ack::Spooled {
                durable: true,
                id: (255, s),
            })
        };
        let codes = settle(
            &mut r,
            &[(1, spooled(s1)), (2, spooled(s1)), (3, spooled(s3))],
        );
        assert_eq!(codes, [201, 201, 201]);
        let t = text(&r);
        let m = u64::MAX;
        for body in [
            format!("{{\"id\":\"255-{s1}\"}}\n"),
            format!("{{\"count\":10,\"first_id\":\"255-{s1}\",\"last_id\":\"255-{m}\"}}\n"),
            format!("{{\"count\":{n},\"first_id\":\"255-{s3}\",\"last_id\":\"255-{m}\"}}\n"),
        ] {
            assert!(t.contains(&body), "{body} in {t}");
            assert!(
                t.contains(&format!("content-length: {}\r\n", body.len())),
                "{t}"
            );
        }
    }
}
