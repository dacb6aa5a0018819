//! One client connection: read, parse every complete request in the buffer, enqueue its
//! records, and write all answers of that read in one write, in request order.

use crate::config::AckMode;
use crate::error::HttpError;
use crate::exec::local::{Exec, Ticket};
use crate::exec::poller::Sock;
use crate::exec::route::{authorized, ndjson_lines, route, Produce, Route, Topic};
use crate::exec::watch::Watch;
use crate::http::chunked::ChunkedDecoder;
use crate::http::parse::{parse_head, Framing, Head, Limits, Method};
use crate::http::response::{self, Conn as Keep};
use crate::kafka::lane::record_cost;
use std::io::{self, Write};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

const INITIAL_BUF: usize = 4096;
/// Buffers larger than this go back to their first size once a request has passed.
const SHRINK_ABOVE: usize = 64 << 10;

/// An answer that must wait for Kafka, or one queued behind such an answer.
enum Reply {
    /// Bytes in `Conn::side`.
    Ready(Range<usize>),
    Waiting {
        ticket: Ticket,
        started: Instant,
        topic: Range<usize>,
        count: usize,
        keep: Keep,
        head_only: bool,
    },
}

pub struct Conn {
    exec: Rc<Exec>,
    watch: Rc<Watch>,
    lim: Limits,
    /// Received bytes; `buf[start..end]` is not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    side: Vec<u8>,
    replies: Vec<Reply>,
    head: Head,
    /// The current request is HEAD: answers carry no body.
    head_only: bool,
    produce: Produce,
    chunked: ChunkedDecoder,
    body: Vec<u8>,
    /// Bytes of the executor's memory budget this connection's buffers hold: `buf` above
    /// `INITIAL_BUF` plus `body`'s capacity (see `footprint`).
    charged: usize,
}

/// Why the loop stops reading.
enum Stop {
    Close,
}

impl Conn {
    pub fn new(exec: Rc<Exec>, watch: Rc<Watch>) -> Conn {
        let cfg = &exec.cfg;
        let lim = Limits {
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            max_uri_bytes: cfg.max_uri_bytes,
            max_body_bytes: cfg.max_body_bytes,
        };
        Conn {
            exec,
            watch,
            lim,
            buf: vec![0; INITIAL_BUF],
            start: 0,
            end: 0,
            out: Vec::new(),
            side: Vec::new(),
            replies: Vec::new(),
            head: Head::default(),
            head_only: false,
            produce: Produce::default(),
            chunked: ChunkedDecoder::default(),
            body: Vec::new(),
            charged: 0,
        }
    }

    /// Serves requests until the client closes, an error breaks framing, or shutdown.
    pub async fn serve(&mut self, s: &Sock) {
        while let Ok(true) = self.one(s).await {}
        let _ = self.finish(s).await;
    }

    /// Handles one request (reading as needed). Ok(false): close the connection.
    async fn one(&mut self, s: &Sock) -> Result<bool, Stop> {
        // 1. A complete head. The header timeout is one deadline for the whole head, so
        // a client dripping a byte at a time cannot hold the connection.
        let mut head_deadline: Option<Instant> = None;
        self.head_only = false;
        loop {
            let parsed = parse_head(&self.buf[self.start..self.end], &self.lim, &mut self.head);
            match parsed {
                Ok(true) => break,
                Ok(false) => {
                    let pending = self.end > self.start;
                    self.finish(s).await?;
                    if !pending && self.exec.shutting_down.get() {
                        return Ok(false);
                    }
                    let cfg = &self.exec.cfg;
                    let deadline = if pending {
                        *head_deadline.get_or_insert_with(|| {
                            Instant::now() + Duration::from_millis(cfg.header_timeout_ms)
                        })
                    } else {
                        Instant::now() + Duration::from_millis(cfg.idle_timeout_ms)
                    };
                    let r = self.read_more(s, deadline, !pending).await;
                    match r {
                        Ok(0) => return Ok(false),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                            return self.fail(HttpError::MemoryFull, Instant::now());
                        }
                        Err(e) if e.kind() == io::ErrorKind::TimedOut && pending => {
                            return self.fail(HttpError::RequestTimeout, Instant::now());
                        }
                        Err(_) => return Ok(false),
                    }
                }
                Err(e) => return self.fail(e, Instant::now()),
            }
        }
        let started = Instant::now();
        let head_only = self.head.method == Method::Head;
        self.head_only = head_only;
        let mut keep = match (self.head.keep_alive, self.head.http10) {
            (false, _) => Keep::Close,
            (true, true) => Keep::KeepAlive10,
            (true, false) => Keep::KeepAlive,
        };
        if self.exec.shutting_down.get() {
            keep = Keep::Close;
        }

        // 2. Route before reading the body, so a doomed 100-continue upload is not read.
        let avail = &self.buf[self.start..self.end];
        let routed = route(avail, &self.head, &self.exec.cfg, &mut self.produce).and_then(|r| {
            if r == Route::Produce && !authorized(avail, &self.head, &self.exec.cfg.auth_tokens) {
                Err(HttpError::Unauthorized)
            } else {
                Ok(r)
            }
        });
        if let Err(e) = &routed {
            if self.head.expect_continue && self.head.framing != Framing::Empty {
                // The client waits for our go-ahead: answer now and close, body unread.
                return self.fail(*e, started);
            }
        }

        // 3. The body.
        let body = self.read_body(s).await?;
        let consumed = self.head.len + body.consumed;

        // 4. Handle.
        let result = match routed {
            Ok(Route::Health) => {
                self.simple(200, "OK", b"ok\n", keep, head_only);
                Ok(200)
            }
            Ok(Route::Ready) => {
                if self.exec.metrics.ready() && !self.exec.shutting_down.get() {
                    self.simple(200, "OK", b"ready\n", keep, head_only);
                    Ok(200)
                } else {
                    self.simple(503, "Service Unavailable", b"not ready\n", keep, head_only);
                    Ok(503)
                }
            }
            Ok(Route::Metrics) => {
                let text = self.exec.metrics.render();
                self.emit(|out, date| {
                    response::write(
                        out,
                        (200, "OK"),
                        date,
                        keep,
                        // prometheus-client writes OpenMetrics text (it ends in `# EOF`).
                        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                        "",
                        text.as_bytes(),
                    );
                    if head_only {
                        out.truncate(out.len() - text.len());
                    }
                });
                Ok(200)
            }
            Ok(Route::Produce) => self.produce(body.inline, started, keep, head_only),
            Err(e) => Err(e),
        };
        match result {
            Ok(code) => {
                if code != 0 {
                    self.exec
                        .stats()
                        .request(code, started.elapsed().as_micros() as u64);
                }
            }
            Err(e) => {
                self.error(e, started, keep);
                if e.closes() {
                    keep = Keep::Close;
                }
            }
        }
        self.start += consumed;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        self.shrink();
        Ok(keep != Keep::Close)
    }

    /// Enqueues the request's records; answers now (ack=queued) or later (ack=kafka).
    /// Returns the status answered now, or 0 when the answer waits for Kafka.
    fn produce(
        &mut self,
        inline: Option<Range<usize>>,
        started: Instant,
        keep: Keep,
        head_only: bool,
    ) -> Result<u16, HttpError> {
        let exec = self.exec.clone();
        let avail = &self.buf[self.start..self.end];
        let body: &[u8] = match &inline {
            Some(r) => &avail[r.clone()],
            None => &self.body,
        };
        let p = &self.produce;
        let topic: &[u8] = match &p.topic {
            Topic::Default => exec.cfg.default_topic.as_deref().unwrap_or("").as_bytes(),
            Topic::Path(r) => &avail[r.clone()],
        };
        if !exec.topics.may_exist(&exec.metrics.topics, topic) {
            return Err(HttpError::NotFound("topic does not exist in kafka"));
        }
        let key = p.key.clone().map(|r| &avail[r]);
        let names = &exec.cfg.forward_headers;
        let headers = || {
            p.forward.iter().map(|&(i, f)| {
                let (_, v) = &self.head.headers[i as usize];
                (names[f as usize].as_bytes(), &avail[v.clone()])
            })
        };
        let hbytes: usize = headers().map(|(n, v)| n.len() + v.len()).sum();
        let klen = key.map_or(0, <[u8]>::len);
        let (n, cost) = if p.ndjson {
            ndjson_lines(body).fold((0, 0), |(n, c), r| {
                (n + 1, c + record_cost(klen, r.len(), hbytes))
            })
        } else {
            (1, record_cost(klen, body.len(), hbytes))
        };
        if n == 0 {
            return Err(HttpError::BadRequest("NDJSON body has no records"));
        }
        if n > exec.cfg.queue_max_records || cost > exec.cfg.queue_max_bytes {
            return Err(HttpError::NeverFits);
        }
        let deadline = started + Duration::from_millis(exec.cfg.ack_timeout_ms);
        let wait = (p.ack == AckMode::Kafka).then_some(deadline);
        let mut q = exec.reserve(n, cost, wait, self.charged)?;
        if p.ndjson {
            for r in ndjson_lines(body) {
                q.push(topic, key, &body[r], p.partition, headers());
            }
        } else {
            q.push(topic, key, body, p.partition, headers());
        }
        match q.ticket() {
            None => {
                if p.ndjson {
                    let mut msg = [0u8; 40];
                    let len = {
                        let mut w = &mut msg[..];
                        let _ = writeln!(w, "{{\"queued\":{n}}}");
                        40 - w.len()
                    };
                    let json = "application/json";
                    self.typed(202, "Accepted", json, &msg[..len], keep, head_only);
                } else {
                    let date = exec.date.borrow();
                    if self.replies.is_empty() {
                        response::accepted(&mut self.out, &date, keep);
                    } else {
                        let s = self.side.len();
                        response::accepted(&mut self.side, &date, keep);
                        self.replies.push(Reply::Ready(s..self.side.len()));
                    }
                }
                Ok(202)
            }
            Some(ticket) => {
                let ts = self.side.len();
                self.side.extend_from_slice(topic);
                self.replies.push(Reply::Waiting {
                    ticket,
                    started,
                    topic: ts..self.side.len(),
                    count: if p.ndjson { n } else { 0 },
                    keep,
                    head_only,
                });
                Ok(0)
            }
        }
    }

    /// Reads the body per the head's framing. For Content-Length bodies the bytes stay
    /// in `buf` (`inline`); chunked bodies are decoded into `self.body`.
    async fn read_body(&mut self, s: &Sock) -> Result<Body, Stop> {
        let hl = self.head.len;
        let deadline = Instant::now() + Duration::from_millis(self.exec.cfg.body_timeout_ms);
        match self.head.framing {
            Framing::Empty => Ok(Body {
                inline: Some(0..0),
                consumed: 0,
            }),
            Framing::Length(n) => {
                let mut continued = false;
                while self.end - self.start < hl + n {
                    if self.head.expect_continue && !continued && self.end - self.start == hl {
                        self.finish(s).await?;
                        self.send(s, response::CONTINUE).await?;
                        continued = true;
                    }
                    if let Err(e) = self.reserve(hl + n) {
                        return Err(self.fail_stop(e));
                    }
                    self.body_read(s, deadline).await?;
                }
                Ok(Body {
                    inline: Some(hl..hl + n),
                    consumed: n,
                })
            }
            Framing::Chunked => {
                self.chunked = ChunkedDecoder::default();
                self.body.clear();
                let mut continued = false;
                loop {
                    let region = &self.buf[self.start + hl..self.end];
                    let nothing_yet = region.is_empty();
                    match self
                        .chunked
                        .decode(region, &mut self.body, self.lim.max_body_bytes)
                    {
                        // The decoded body counts against the memory budget as it grows.
                        Ok(_) if self.recharge().is_err() => {
                            return Err(self.fail_stop(HttpError::MemoryFull));
                        }
                        Ok(Some(consumed)) => {
                            return Ok(Body {
                                inline: None,
                                consumed,
                            })
                        }
                        Ok(None) => {
                            // Drop the wire bytes already decoded; the head stays (the
                            // route's ranges point into it).
                            let gone = self.chunked.take_consumed();
                            let from = self.start + hl;
                            self.buf.copy_within(from + gone..self.end, from);
                            self.end -= gone;
                        }
                        Err(e) => return Err(self.fail_stop(e)),
                    }
                    if self.head.expect_continue && !continued && nothing_yet {
                        self.finish(s).await?;
                        self.send(s, response::CONTINUE).await?;
                        continued = true;
                    }
                    if let Err(e) = self.reserve(self.end - self.start + 4096) {
                        return Err(self.fail_stop(e));
                    }
                    self.body_read(s, deadline).await?;
                }
            }
        }
    }

    async fn body_read(&mut self, s: &Sock, deadline: Instant) -> Result<(), Stop> {
        match self.read_more(s, deadline, false).await {
            Ok(0) => Err(Stop::Close),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(self.fail_stop(HttpError::RequestTimeout))
            }
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                Err(self.fail_stop(HttpError::MemoryFull))
            }
            Err(_) => Err(Stop::Close),
        }
    }

    /// Makes room for `need` unconsumed bytes: compacts, then grows, within the
    /// executor's memory budget (MemoryFull, before allocating, when it has no room).
    fn reserve(&mut self, need: usize) -> Result<(), HttpError> {
        if self.start > 0 && self.buf.len() - self.start < need.max(1) + 1 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.start + need;
        if want > self.buf.len() {
            // Exactly a known body's size, or doubling for a head or a chunked body.
            let cap = want.max(self.buf.len() * 2);
            if !self.exec.take_memory(cap - self.buf.len()) {
                return Err(HttpError::MemoryFull);
            }
            self.charged += cap - self.buf.len();
            self.buf.resize(cap, 0);
        }
        Ok(())
    }

    /// Buffer bytes that count against the memory budget.
    fn footprint(&self) -> usize {
        self.buf.len() - INITIAL_BUF + self.body.capacity()
    }

    /// Charges what the chunked decoder's output grew by.
    fn recharge(&mut self) -> Result<(), HttpError> {
        let now = self.footprint();
        if now > self.charged {
            if !self.exec.take_memory(now - self.charged) {
                return Err(HttpError::MemoryFull);
            }
            self.charged = now;
        }
        Ok(())
    }

    /// After a request: buffers that grew for a large one go back to their first size,
    /// and their bytes back to the budget.
    fn shrink(&mut self) {
        if self.start == self.end && self.buf.len() > SHRINK_ABOVE {
            self.buf = vec![0; INITIAL_BUF];
            self.start = 0;
            self.end = 0;
        }
        if self.body.capacity() > SHRINK_ABOVE {
            self.body = Vec::new();
        }
        let now = self.footprint();
        if now < self.charged {
            self.exec.give_memory(self.charged - now);
            self.charged = now;
        }
    }

    /// Reads more bytes, failing with `TimedOut` at `deadline` (enforced by the ticker
    /// through `Watch`). `idle`: waiting for a new request, closed early at shutdown.
    async fn read_more(&mut self, s: &Sock, deadline: Instant, idle: bool) -> io::Result<usize> {
        if self.end == self.buf.len() && self.reserve(self.end - self.start + INITIAL_BUF).is_err()
        {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        if deadline <= Instant::now() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.watch.arm(deadline, idle);
        let r = s.read(&mut self.buf[self.end..]).await;
        self.watch.disarm();
        let n = r?;
        if n == 0 && self.watch.take_expired() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.end += n;
        Ok(n)
    }

    /// Writes every answer in order, waiting for Kafka where needed.
    async fn finish(&mut self, s: &Sock) -> Result<(), Stop> {
        let exec = self.exec.clone();
        for reply in std::mem::take(&mut self.replies) {
            match reply {
                Reply::Ready(r) => self.out.extend_from_slice(&self.side[r]),
                Reply::Waiting {
                    ticket,
                    started,
                    topic,
                    count,
                    keep,
                    head_only,
                } => {
                    let res = exec.wait(ticket).await;
                    let date = exec.date.borrow();
                    let topic = std::str::from_utf8(&self.side[topic]).unwrap_or("");
                    let code = match res {
                        Ok(((p0, o0), (p1, o1))) => {
                            let mut body = Vec::with_capacity(128);
                            let _ = if count > 0 {
                                writeln!(body, "{{\"topic\":\"{topic}\",\"count\":{count},\"first\":{{\"partition\":{p0},\"offset\":{o0}}},\"last\":{{\"partition\":{p1},\"offset\":{o1}}}}}")
                            } else {
                                writeln!(
                                    body,
                                    "{{\"topic\":\"{topic}\",\"partition\":{p1},\"offset\":{o1}}}"
                                )
                            };
                            let blen = body.len();
                            response::write(
                                &mut self.out,
                                (200, "OK"),
                                &date,
                                keep,
                                Some("application/json"),
                                "",
                                &body,
                            );
                            if head_only {
                                self.out.truncate(self.out.len() - blen);
                            }
                            200
                        }
                        Err(e) => {
                            response::error(
                                &mut self.out,
                                &e,
                                &date,
                                keep,
                                exec.retry_after,
                                head_only,
                            );
                            e.status().0
                        }
                    };
                    exec.stats()
                        .request(code, started.elapsed().as_micros() as u64);
                }
            }
        }
        self.side.clear();
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let r = self.send(s, &out).await;
            self.out = out;
            self.out.clear();
            r?;
        }
        Ok(())
    }

    /// Writes `bytes`; a client that stops reading gets `body_timeout_ms` to make room.
    async fn send(&self, s: &Sock, bytes: &[u8]) -> Result<(), Stop> {
        let (watch, ms) = (&self.watch, self.exec.cfg.body_timeout_ms);
        let mut armed = false;
        let r = s
            .write_all(bytes, || {
                if !armed {
                    armed = true;
                    watch.arm_write(Instant::now() + Duration::from_millis(ms));
                }
            })
            .await;
        if armed {
            watch.disarm();
        }
        r.map_err(|_| Stop::Close)
    }

    /// Appends an answer after any that wait for Kafka.
    fn emit(&mut self, f: impl FnOnce(&mut Vec<u8>, &response::DateLine)) {
        let date = self.exec.date.borrow();
        if self.replies.is_empty() {
            f(&mut self.out, &date);
        } else {
            let s = self.side.len();
            f(&mut self.side, &date);
            self.replies.push(Reply::Ready(s..self.side.len()));
        }
    }

    fn simple(&mut self, code: u16, reason: &str, body: &[u8], keep: Keep, head_only: bool) {
        self.typed(code, reason, "text/plain", body, keep, head_only);
    }

    fn typed(
        &mut self,
        code: u16,
        reason: &str,
        content_type: &str,
        body: &[u8],
        keep: Keep,
        head_only: bool,
    ) {
        self.emit(|out, date| {
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
        });
    }

    fn error(&mut self, e: HttpError, started: Instant, keep: Keep) {
        let retry = self.exec.retry_after;
        let head_only = self.head_only;
        self.emit(|out, date| response::error(out, &e, date, keep, retry, head_only));
        self.exec
            .stats()
            .request(e.status().0, started.elapsed().as_micros() as u64);
    }

    /// Answers an error that ends the connection.
    fn fail(&mut self, e: HttpError, started: Instant) -> Result<bool, Stop> {
        self.error(e, started, Keep::Close);
        Ok(false)
    }

    fn fail_stop(&mut self, e: HttpError) -> Stop {
        self.error(e, Instant::now(), Keep::Close);
        Stop::Close
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.exec.give_memory(self.charged);
    }
}

struct Body {
    /// Body range within the unconsumed buffer, or None when decoded into `Conn::body`.
    inline: Option<Range<usize>>,
    /// Bytes after the head that belong to this request.
    consumed: usize,
}
