//! REST v3 streaming mode: a chunked `records` request whose concatenated JSON objects
//! are records. The answer (`200`, chunked) starts at once, and each record's report is
//! written as soon as it is known, in request order, while the client keeps sending.
//!
//! The values complete after each read (`restv3::Splitter`, which resumes where the last
//! read left it) are one group: produced
//! together as one request would be (`handler::handle` with the group as its body),
//! reported together. A bad record fails alone (its report is its error), malformed JSON
//! included; an error of the whole group (queue full, a byte budget's 429) fails that
//! group's records and the stream goes on. Bounded: at
//! most `rest_v3_stream_window` records wait for their reports before reading pauses, a
//! client that does not read its reports blocks our write (and so our reads), and an
//! incomplete object may hold at most the body limit.

use super::{Conn, Keep, Stop};
use crate::error::HttpError;
use crate::exec::handler::{self, Answer, Request, Rest};
use crate::exec::link::Link;
use crate::exec::local::{Ack, Exec, Ticket};
use crate::exec::replies::v3_body;
use crate::exec::restv3::{Entry, Op, Reply, Splitter, INCOMPLETE};
use crate::exec::route::Route;
use crate::http::chunked::ChunkedDecoder;
use crate::http::response;
use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::time::{Duration, Instant};

/// The records of one read, queued together; their reports leave together.
struct Group {
    /// None: every report is known now (queued, or every record refused).
    ticket: Option<Ticket>,
    reply: Box<Reply>,
}

impl Group {
    /// `n` records refused by one error.
    fn failed(e: HttpError, n: usize) -> Group {
        Group {
            ticket: None,
            reply: Box::new(Reply {
                op: Op::Records,
                stream: true,
                cluster: String::new(),
                topic: String::new(),
                entries: vec![
                    Entry {
                        id: None,
                        outcome: Err(e),
                    };
                    n
                ],
            }),
        }
    }

    fn records(&self) -> usize {
        self.reply.entries.len()
    }
}

impl Conn {
    /// Whether a routed and admitted request is served as a stream: a chunked v3
    /// `records` request with a plain body whose whole-request checks pass.
    pub(super) fn streams(&self, routed: &Result<Route, HttpError>, tls: bool) -> bool {
        if !matches!(routed, Ok(Route::Produce))
            || self.produce.v3 != Some(Op::Records)
            || self.head.framing != crate::http::parse::Framing::Chunked
            || self.produce.coding != crate::http::encoding::Coding::Identity
            || self.head_only
        {
            return false;
        }
        let req = self.request(&[], tls);
        handler::stream_opens(&self.exec, &req).is_ok()
    }

    /// A request over `body` (a stream's group, or nothing for the checks).
    fn request<'a>(&'a self, body: &'a [u8], tls: bool) -> Request<'a> {
        Request {
            bytes: self.rb.unread(),
            head: &self.head,
            produce: &self.produce,
            body,
            started: Instant::now(),
            buffered: 0,
            admitted: self.admitted,
            client: &self.auth.addr_text,
            tls,
        }
    }

    /// Serves the stream to its end. Ok(false): close the connection after it.
    pub(super) async fn stream(
        &mut self,
        s: &mut Link,
        started: Instant,
        keep: Keep,
        tls: bool,
    ) -> Result<bool, Stop> {
        let exec = self.exec.clone();
        // Earlier pipelined answers leave first.
        self.finish(s).await?;
        if self.head.expect_continue {
            self.send(s, response::CONTINUE).await?;
        }
        let mut out = Vec::with_capacity(4096);
        response::stream_head(&mut out, &exec.date.borrow(), keep);
        if let Some(o) = &self.produce.origin {
            crate::http::cors::stamp(&mut out, 0, &self.rb.unread()[o.clone()]);
        }
        self.chunked = ChunkedDecoder::default();
        self.rb.decoded.clear();
        let mut pending = VecDeque::new();
        let r = self
            .stream_loop(s, &exec, tls, &mut out, &mut pending)
            .await;
        // However it ended, every group's waiters are settled (their slots freed); what
        // can still be written is.
        let mut wrote = r.is_ok();
        while let Some(g) = pending.pop_front() {
            report(&exec, g, &mut out).await;
        }
        if wrote && !out.is_empty() {
            wrote = self.send(s, &out).await.is_ok();
        }
        exec.stats()
            .request(200, started.elapsed().as_micros() as u64);
        match r {
            Ok(Some(consumed)) if wrote => {
                self.rb.consume(self.head.len + consumed);
                self.rb.decoded.clear();
                self.rb.shrink(&*exec);
                Ok(keep != Keep::Close)
            }
            _ => Ok(false),
        }
    }

    /// Reads, produces and reports until the body ends (Some: the wire bytes it took
    /// after the head) or cannot go on (None: close after what is written). The last
    /// chunk is in `out` when the body ended.
    async fn stream_loop(
        &mut self,
        s: &mut Link,
        exec: &Exec,
        tls: bool,
        out: &mut Vec<u8>,
        pending: &mut VecDeque<Group>,
    ) -> Result<Option<usize>, Stop> {
        let hl = self.head.len;
        let window = exec.cfg.rest_v3_stream_window;
        let idle = Duration::from_millis(exec.cfg.body_timeout_ms);
        let mut inflight = 0;
        let mut split = Splitter::default();
        // Some(consumed) once the body ended; `broken` once it cannot be read on (with
        // the error that ends it, reported after the records before it).
        let mut ended: Option<usize> = None;
        let mut broken = false;
        loop {
            let mut last = None;
            if ended.is_none() && !broken {
                let (wire, decoded) = self.rb.split_for_decode(hl);
                // What a stream holds at once is bounded below, not each chunk: a client
                // may write many records as one large chunk.
                match self.chunked.decode(wire, decoded, usize::MAX) {
                    Ok(Some(c)) => ended = Some(c),
                    Ok(None) => self.rb.cut(hl, self.chunked.take_consumed()),
                    Err(e) => last = Some(e),
                }
                if self.rb.recharge(exec).is_err() {
                    last = Some(HttpError::MemoryFull);
                }
            }
            // Each complete value is a record (a malformed one fails alone).
            let more = ended.is_none() && last.is_none() && !broken;
            let values = split.split(&self.rb.decoded, more);
            if !values.is_empty() {
                let end = split.end;
                // A record larger than a body may be fails alone (413); the runs of
                // records between such ones are groups.
                let mut from = 0;
                let mut run = 0;
                for v in &values {
                    if v.len() <= self.body_limit {
                        run += 1;
                        continue;
                    }
                    if run > 0 {
                        let g = self.group(exec, from..v.start, run, tls);
                        push(pending, &mut inflight, g);
                    }
                    push(
                        pending,
                        &mut inflight,
                        Group::failed(HttpError::PayloadTooLarge, 1),
                    );
                    (from, run) = (v.end, 0);
                }
                if run > 0 {
                    push(
                        pending,
                        &mut inflight,
                        self.group(exec, from..end, run, tls),
                    );
                }
            }
            // What is done with leaves the buffer: the values taken and the whitespace
            // after them (a client sending only whitespace holds nothing).
            let done_with = split.done_with();
            self.rb.decoded.drain(..done_with);
            split.drained(done_with);
            let tail = self.rb.decoded.iter().any(|b| !b.is_ascii_whitespace());
            if last.is_none() && tail && self.rb.decoded.len() > self.body_limit {
                // One record larger than a body may be.
                last = Some(HttpError::PayloadTooLarge);
            }
            if last.is_none() && exec.shutting_down.get() {
                // Shutting down: what was taken is reported, the rest is not read.
                last = Some(HttpError::ShuttingDown);
            }
            if ended.is_some() && tail {
                last = Some(INCOMPLETE);
            }
            if let Some(e) = last {
                push(pending, &mut inflight, Group::failed(e, 1));
                self.rb.decoded.clear();
                broken |= ended.is_none();
            }
            let done = ended.is_some() || broken;
            // Reports known now, in order; every one once nothing more comes, and the
            // oldest while the window is full.
            while let Some(g) = pending.front() {
                let must = done || inflight >= window;
                let ready = match &g.ticket {
                    None => true,
                    Some(t) => futures_lite::future::poll_once(exec.ready(t))
                        .await
                        .is_some(),
                };
                if !ready && !must {
                    break;
                }
                let g = pending.pop_front().expect("front");
                inflight -= g.records();
                report(exec, g, out).await;
            }
            if done {
                response::chunk(out, b"");
                return Ok(ended.filter(|_| !broken));
            }
            if !out.is_empty() {
                self.send(s, out).await?;
                out.clear();
            }
            // More bytes, or the oldest report, whichever comes first.
            let front = pending.front().and_then(|g| g.ticket.as_ref());
            let deadline = Instant::now() + idle;
            let read = futures_lite::future::or(
                async { Some(self.read_more(s, deadline, false).await) },
                async {
                    match front {
                        Some(t) => exec.ready(t).await,
                        None => std::future::pending().await,
                    }
                    None
                },
            )
            .await;
            // A read given up for a report leaves its deadline armed.
            self.watch.disarm();
            let e = match read {
                None | Some(Ok(1..)) => continue,
                // The client went away: nothing can be answered.
                Some(Ok(0)) => return Err(Stop::Close),
                Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => HttpError::RequestTimeout,
                Some(Err(e)) if e.kind() == io::ErrorKind::OutOfMemory => HttpError::MemoryFull,
                Some(Err(_)) => return Err(Stop::Close),
            };
            push(pending, &mut inflight, Group::failed(e, 1));
            broken = true;
        }
    }

    /// Produces the `n` complete values of `rb.decoded[bytes]` as one request would be.
    fn group(&mut self, exec: &Exec, bytes: Range<usize>, n: usize, tls: bool) -> Group {
        // A stream's bytes count against its tenant's byte budget as they come.
        if let Err(e) = exec.guard.admit_body(self.admitted, bytes.len()) {
            return Group::failed(e, n);
        }
        let req = self.request(&self.rb.decoded[bytes], tls);
        let g = match handler::handle(exec, Route::Produce, &req) {
            Ok(Answer::Later {
                ticket,
                rest: Some(Rest::V3(reply)),
                ..
            }) => Group {
                ticket: Some(ticket),
                reply,
            },
            Ok(Answer::RestQueued(Rest::V3(reply))) => Group {
                ticket: None,
                reply,
            },
            Ok(_) => Group::failed(HttpError::BadRequest("not a REST v3 record"), n),
            Err(e) => {
                // A schema's refusal of the group: its records fail with the status.
                exec.schema_report.borrow_mut().clear();
                Group::failed(e, n)
            }
        };
        // The answer's head left long ago: a dead-letter note has nowhere to go.
        exec.answer_note.borrow_mut().clear();
        g
    }
}

/// Queues a group; `inflight` counts every report still to be written.
fn push(pending: &mut VecDeque<Group>, inflight: &mut usize, g: Group) {
    *inflight += g.records();
    pending.push_back(g);
}

/// Writes a group's reports as one chunk, once they are known.
async fn report(exec: &Exec, g: Group, out: &mut Vec<u8>) {
    let n = g.records();
    let res = match g.ticket {
        Some(t) => exec.wait(t).await,
        None => Ok(Ack::Spooled {
            durable: false,
            id: (0, 0),
        }),
    };
    let mut body = Vec::with_capacity(256 * n);
    v3_body(&mut body, &res, &g.reply);
    response::chunk(out, &body);
}
