//! One client connection: read, parse every complete request in the buffer, have the
//! handler decide each answer, and write all answers of that read in one write, in request
//! order. The buffer is `readbuf`, the ordered answers `replies`, the decisions `handler`;
//! this file is the loop that reads and writes.

use crate::error::HttpError;
use crate::exec::admit::{Admitted, ConnAuth};
use crate::exec::handler::{self, Answer, Request};
use crate::exec::link::Link;
use crate::exec::local::{Exec, Ticket};
use crate::exec::readbuf::Budget;
use crate::exec::readbuf::ReadBuf;
use crate::exec::replies::{write_now, write_rest_queued, Replies};
use crate::exec::route::{route, Listener, Produce, Route};
use crate::exec::watch::Watch;
use crate::http::chunked::ChunkedDecoder;
use crate::http::encoding::{self, Coding};
use crate::http::parse::{parse_head, Framing, Head, Limits, Method};
use crate::http::response::{self, Conn as Keep};
use std::io::{self, Write};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod stream;

pub struct Conn {
    exec: Rc<Exec>,
    watch: Rc<Watch>,
    lim: Limits,
    rb: ReadBuf,
    replies: Replies<Ticket>,
    head: Head,
    /// The current request is HEAD: answers carry no body.
    head_only: bool,
    produce: Produce,
    chunked: ChunkedDecoder,
    /// The decoded body of a request with a Content-Encoding.
    inflated: Vec<u8>,
    listener: Listener,
    /// Its client and the verdict on its credential (`admit`).
    pub auth: ConnAuth,
    /// The current request's admission (its tenant).
    admitted: Admitted,
    /// Answered first, then the connection closes (over `max_connections_per_address`).
    refuse: Option<HttpError>,
    /// Requests answered so far, and when the connection's age limit (jittered) is up:
    /// from then on answers carry `Connection: close`.
    served: u64,
    age_limit: Option<Instant>,
    /// The current request's body limit: `max_body_bytes`, or its tenant's smaller one
    /// (for chunked and decoded bodies; a Content-Length over it is refused at the head).
    body_limit: usize,
}

/// Why the loop stops reading.
enum Stop {
    Close,
}

impl Conn {
    pub fn new(exec: Rc<Exec>, watch: Rc<Watch>, listener: Listener, auth: ConnAuth) -> Conn {
        let cfg = &exec.cfg;
        // Up to 10% earlier than the configured age, different per connection, so that a
        // fleet of clients connected at once does not reconnect at once.
        let age_limit = (cfg.max_connection_age_ms > 0).then(|| {
            let ms = cfg.max_connection_age_ms;
            let jitter = jitter(watch.as_ref() as *const Watch as u64) % (ms / 10 + 1);
            Instant::now() + Duration::from_millis(ms - jitter)
        });
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
            rb: ReadBuf::default(),
            replies: Replies::default(),
            head: Head::default(),
            head_only: false,
            produce: Produce::default(),
            chunked: ChunkedDecoder::default(),
            inflated: Vec::new(),
            listener,
            auth,
            admitted: Admitted::default(),
            refuse: None,
            served: 0,
            age_limit,
            body_limit: lim.max_body_bytes,
        }
    }

    /// Answers the first request with `e`, then closes (a connection over a limit).
    pub fn refuse_with(&mut self, e: HttpError) {
        self.refuse = Some(e);
    }

    /// Serves requests until the client closes, an error breaks framing, or shutdown.
    pub async fn serve(&mut self, s: &mut Link) {
        while let Ok(true) = self.one(s).await {}
        let _ = self.finish(s).await;
    }

    /// Handles one request (reading as needed). Ok(false): close the connection.
    async fn one(&mut self, s: &mut Link) -> Result<bool, Stop> {
        // 1. A complete head. The header timeout is one deadline for the whole head, so
        // a client dripping a byte at a time cannot hold the connection.
        let mut head_deadline: Option<Instant> = None;
        self.head_only = false;
        loop {
            match parse_head(self.rb.unread(), &self.lim, &mut self.head) {
                Ok(true) => break,
                Ok(false) => {
                    let pending = !self.rb.unread().is_empty();
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
                    match self.read_more(s, deadline, !pending).await {
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
        self.replies.set_origin(None);
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
        if let Some(e) = self.refuse.take() {
            return self.fail(e, started);
        }
        // Past the connection's age or request count: this answer is its last.
        self.served += 1;
        let cfg = &self.exec.cfg;
        let max_requests = cfg.max_requests_per_connection;
        if (max_requests > 0 && self.served >= max_requests)
            || self.age_limit.is_some_and(|t| started >= t)
        {
            keep = Keep::Close;
        }

        // 2. Route and admit before reading the body, so a doomed upload is not read.
        let bytes = self.rb.unread();
        self.admitted = Admitted::default();
        let exec = &self.exec;
        let routed =
            route(bytes, &self.head, cfg, &mut self.produce, self.listener).and_then(|r| {
                if r == Route::Produce {
                    // The arrival time serves the budgets too: no second clock read.
                    let now = crate::auth::budget::ns_at(started);
                    let a = &mut self.admitted;
                    exec.guard.admit(
                        &mut self.auth,
                        bytes,
                        &self.head,
                        &self.produce,
                        cfg,
                        now,
                        a,
                    )?;
                }
                Ok(r)
            });
        if let Some(o) = &self.produce.origin {
            self.replies.set_origin(Some(&bytes[o.clone()]));
        }
        self.body_limit = match exec.guard.body_limit(self.admitted) {
            0 => self.lim.max_body_bytes,
            t => t.min(self.lim.max_body_bytes),
        };
        if let Some(e) = handler::refuse_before_body(&self.head, &routed) {
            return self.fail(e, started);
        }
        // A REST v3 stream is answered while its body still arrives.
        let tls = matches!(s, Link::Tls(_));
        if self.streams(&routed, tls) {
            return self.stream(s, started, keep, tls).await;
        }

        // 3. The body.
        let body = self.read_body(s).await?;
        let consumed = self.head.len + body.consumed;

        // 4. Decode a compressed body; its decoded bytes count against the memory budget
        // while the request is handled.
        let exec = self.exec.clone();
        let bytes = self.rb.unread();
        let mut body_bytes = match &body.inline {
            Some(r) => &bytes[r.clone()],
            None => &self.rb.decoded[..],
        };
        let mut charged = 0;
        let routed = match routed {
            Ok(Route::Produce) if self.produce.coding != Coding::Identity => {
                let max = self.body_limit;
                match encoding::decode(self.produce.coding, body_bytes, max, &mut self.inflated) {
                    Ok(()) if Budget::take(&*exec, self.inflated.len()) => {
                        charged = self.inflated.len();
                        body_bytes = &self.inflated;
                        Ok(Route::Produce)
                    }
                    Ok(()) => Err(HttpError::MemoryFull),
                    Err(e) => Err(e),
                }
            }
            r => r,
        };

        // What the head could not announce (a chunked body, a compressed one's decoded
        // bytes beyond its Content-Length) counts against the tenant's byte budget now.
        let routed = match routed {
            Ok(Route::Produce) => {
                let announced = match self.head.framing {
                    Framing::Length(n) => n,
                    _ => 0,
                };
                let more = body_bytes.len().saturating_sub(announced);
                exec.guard
                    .admit_body(self.admitted, more)
                    .map(|()| Route::Produce)
            }
            r => r,
        };

        // 5. Handle.
        let req = Request {
            bytes,
            head: &self.head,
            produce: &self.produce,
            body: body_bytes,
            started,
            buffered: self.rb.moving(),
            admitted: self.admitted,
            client: &self.auth.addr_text,
            tls,
        };
        let handled = routed.and_then(|r| handler::handle(&exec, r, &req));
        if charged > 0 {
            Budget::give(&*exec, charged);
        }
        match handled {
            Ok(answer) => {
                let note = std::mem::take(&mut *exec.answer_note.borrow_mut());
                self.replies.set_note(&note);
                let code = write_answer(&mut self.replies, &exec, answer, started, keep, head_only);
                if !note.is_empty() {
                    self.replies.set_note(b"");
                }
                if code != 0 {
                    exec.stats()
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
        self.rb.consume(consumed);
        self.rb.shrink(&*self.exec);
        // A large decoded body is not kept for the next request.
        if self.inflated.capacity() > 64 << 10 {
            self.inflated = Vec::new();
        }
        Ok(keep != Keep::Close)
    }

    /// Reads the body per the head's framing. For Content-Length bodies the bytes stay
    /// in the read buffer (`inline`); chunked bodies are decoded into `rb.decoded`.
    async fn read_body(&mut self, s: &mut Link) -> Result<Body, Stop> {
        let hl = self.head.len;
        let deadline = Instant::now() + Duration::from_millis(self.exec.cfg.body_timeout_ms);
        let mut continued = false;
        match self.head.framing {
            Framing::Empty => Ok(Body {
                inline: Some(0..0),
                consumed: 0,
            }),
            Framing::Length(n) => {
                while self.rb.unread().len() < hl + n {
                    let arrived = self.rb.unread().len() - hl;
                    if handler::send_continue(&self.head, continued, arrived) {
                        self.finish(s).await?;
                        self.send(s, response::CONTINUE).await?;
                        continued = true;
                    }
                    if let Err(e) = self.rb.reserve(hl + n, &*self.exec) {
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
                self.rb.decoded.clear();
                loop {
                    let arrived = self.rb.unread().len() - hl;
                    let (wire, decoded) = self.rb.split_for_decode(hl);
                    let r = self.chunked.decode(wire, decoded, self.body_limit);
                    match r {
                        // The decoded body counts against the memory budget as it grows.
                        Ok(_) if self.rb.recharge(&*self.exec).is_err() => {
                            return Err(self.fail_stop(HttpError::MemoryFull));
                        }
                        Ok(Some(consumed)) => {
                            return Ok(Body {
                                inline: None,
                                consumed,
                            })
                        }
                        // Drop the wire bytes already decoded; the head stays (the
                        // route's ranges point into it).
                        Ok(None) => self.rb.cut(hl, self.chunked.take_consumed()),
                        Err(e) => return Err(self.fail_stop(e)),
                    }
                    if handler::send_continue(&self.head, continued, arrived) {
                        self.finish(s).await?;
                        self.send(s, response::CONTINUE).await?;
                        continued = true;
                    }
                    let need = self.rb.unread().len() + 4096;
                    if let Err(e) = self.rb.reserve(need, &*self.exec) {
                        return Err(self.fail_stop(e));
                    }
                    self.body_read(s, deadline).await?;
                }
            }
        }
    }

    async fn body_read(&mut self, s: &mut Link, deadline: Instant) -> Result<(), Stop> {
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

    /// Reads more bytes, failing with `TimedOut` at `deadline` (enforced by the ticker
    /// through `Watch`), `OutOfMemory` when the buffer may not grow. `idle`: waiting for
    /// a new request, closed early at shutdown.
    async fn read_more(
        &mut self,
        s: &mut Link,
        deadline: Instant,
        idle: bool,
    ) -> io::Result<usize> {
        if deadline <= Instant::now() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let Ok(spare) = self.rb.spare(&*self.exec) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        self.watch.arm(deadline, idle);
        let r = s.read(spare).await;
        self.watch.disarm();
        let n = r?;
        if n == 0 && self.watch.take_expired() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.rb.filled(n);
        Ok(n)
    }

    /// Writes every answer in order, waiting for Kafka where needed.
    async fn finish(&mut self, s: &mut Link) -> Result<(), Stop> {
        let exec = self.exec.clone();
        let done = |code, started: Instant| {
            exec.stats()
                .request(code, started.elapsed().as_micros() as u64)
        };
        self.replies
            .settle(
                async |t| exec.wait(t).await,
                &exec.date,
                exec.retry_after,
                done,
            )
            .await;
        if !self.replies.out().is_empty() {
            let r = self.send(s, self.replies.out()).await;
            self.replies.clear();
            r?;
        }
        Ok(())
    }

    /// Writes `bytes`; a client that stops reading gets `body_timeout_ms` to make room.
    async fn send(&self, s: &mut Link, bytes: &[u8]) -> Result<(), Stop> {
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

    fn error(&mut self, e: HttpError, started: Instant, keep: Keep) {
        let retry = self.exec.retry_after;
        let head_only = self.head_only;
        let date = self.exec.date.borrow();
        let report = match e {
            HttpError::SchemaRefused | HttpError::NotJson => {
                std::mem::take(&mut *self.exec.schema_report.borrow_mut())
            }
            _ => Vec::new(),
        };
        if !report.is_empty() {
            let rest = self.produce.rest.is_some();
            self.replies.now(|out| {
                response::error_report(out, &e, &date, keep, retry, head_only, rest, &report)
            });
        } else if self.produce.v3.is_some() {
            self.replies
                .now(|out| response::v3_error(out, &e, &date, keep, retry, head_only));
        } else if self.produce.rest.is_some() {
            self.replies
                .now(|out| response::rest_error(out, &e, &date, keep, retry, head_only));
        } else {
            // A tenant's refusal names the tenant (and, for a topic outside its scope, the
            // topic: only then does the route belong to this request).
            let guard = &self.exec.guard;
            let policy = guard.tenant_policy(self.admitted).ok();
            let tenant = policy
                .as_ref()
                .and_then(|p| self.admitted.tenant.map(|i| p.tenant(i)));
            let topic = matches!(e, HttpError::Forbidden(_)).then(|| {
                let bytes = self.rb.unread();
                crate::exec::admit::topic_name(bytes, &self.produce, tenant, &self.exec.cfg)
            });
            let name = tenant.map(|t| &*t.name);
            self.replies.now(|out| {
                response::error_detail(out, &e, &date, keep, retry, head_only, name, topic)
            });
        }
        drop(date);
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
        self.rb.release(&*self.exec);
    }
}

/// Writes (or queues) the answer; returns its status, or 0 when it waits for Kafka.
fn write_answer(
    replies: &mut Replies<Ticket>,
    exec: &Exec,
    a: Answer<'_>,
    started: Instant,
    keep: Keep,
    head_only: bool,
) -> u16 {
    let date = exec.date.borrow();
    match a {
        Answer::Text(code, reason, body) => {
            let ct = "text/plain";
            replies.now(|out| write_now(out, (code, reason), ct, body, keep, head_only, &date));
            code
        }
        Answer::Metrics(text) => {
            // prometheus-client writes OpenMetrics text (it ends in `# EOF`).
            let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            let body = text.as_bytes();
            replies.now(|out| write_now(out, (200, "OK"), ct, body, keep, head_only, &date));
            200
        }
        Answer::Accepted => {
            replies.now(|out| response::accepted(out, &date, keep));
            202
        }
        Answer::Queued(n) => {
            let mut msg = [0u8; 40];
            let len = {
                let mut w = &mut msg[..];
                let _ = writeln!(w, "{{\"queued\":{n}}}");
                40 - w.len()
            };
            let (ct, body) = ("application/json", &msg[..len]);
            replies.now(|out| write_now(out, (202, "Accepted"), ct, body, keep, head_only, &date));
            202
        }
        Answer::DeadLettered {
            queued,
            dead_lettered,
            topic,
        } => {
            let body = format!(
                "{{\"queued\":{queued},\"valid\":{},\"dead_lettered\":{dead_lettered},\"dead_letter_topic\":{}}}\n",
                queued - dead_lettered,
                serde_json::to_string(&topic).unwrap_or_default()
            );
            let (ct, body) = ("application/json", body.as_bytes());
            replies.now(|out| write_now(out, (202, "Accepted"), ct, body, keep, head_only, &date));
            202
        }
        Answer::Preflight { allowed, asked } => {
            let age = exec.cfg.cors_max_age_secs;
            replies.now(|out| crate::http::cors::preflight(out, allowed, asked, age, &date, keep));
            204
        }
        Answer::RestQueued(rest) => {
            let mut code = 202;
            replies.now(|out| code = write_rest_queued(out, &rest, keep, head_only, &date));
            code
        }
        Answer::Json(code, reason, body) => {
            let ct = "application/json";
            replies.now(|out| write_now(out, (code, reason), ct, &body, keep, head_only, &date));
            code
        }
        Answer::Later {
            ticket,
            topic,
            count,
            rest,
        } => {
            replies.later(ticket, started, topic, count, keep, head_only, rest);
            0
        }
    }
}

struct Body {
    /// Body range within the unread bytes, or None when decoded into `rb.decoded`.
    inline: Option<Range<usize>>,
    /// Bytes after the head that belong to this request.
    consumed: usize,
}

/// A cheap per-connection pseudo-random number (splitmix64 of `seed` and the clock): only
/// to spread connection lifetimes, not for anything secret.
fn jitter(seed: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = seed ^ t.rotate_left(32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}
