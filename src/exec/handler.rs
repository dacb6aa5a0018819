//! What a complete request gets, decided without a socket: the answer now, or the ticket
//! of an answer that waits for Kafka. Produce requests put their records into the
//! executor's queue here. `conn` reads and writes; this decides.

use crate::config::AckMode;
use crate::config::OnInvalid;
use crate::error::HttpError;
use crate::exec::local::{Exec, Ticket};
use crate::exec::restv2::{self, Record};
use crate::exec::restv3;
use crate::exec::route::{ndjson_lines, Produce, Route};
use crate::http::parse::{Framing, Head};
use crate::kafka::lane::record_cost;
use crate::schema::judge::{Cursor, Judge, Problem};
use crate::schema::{self, report, TopicSchema};
use std::io::Write as _;
use std::time::{Duration, Instant};

/// A request whose head and body are complete.
pub struct Request<'a> {
    /// The connection's unread bytes, from the request's head on (ranges of `head` and
    /// `produce` point into them).
    pub bytes: &'a [u8],
    pub head: &'a Head,
    pub produce: &'a Produce,
    pub body: &'a [u8],
    pub started: Instant,
    /// Budget bytes of the connection's buffers that hold the body and are given back
    /// right after (see `Exec::reserve`).
    pub buffered: usize,
    /// The tenant admission found (`admit`), if authentication is on.
    pub admitted: crate::exec::admit::Admitted,
    /// The client's address as text, for `client_address_header` (empty: none).
    pub client: &'a [u8],
    /// It came over TLS (REST v3's links say https).
    pub tls: bool,
}

/// The answer.
#[derive(Debug)]
pub enum Answer<'a> {
    /// Plain text now: status, reason, body.
    Text(u16, &'static str, &'static [u8]),
    /// The metrics page (OpenMetrics text).
    Metrics(String),
    /// 202 with an empty body: one record queued.
    Accepted,
    /// 202 for NDJSON: `{"queued":n}`.
    Queued(usize),
    /// 202 for a request some of whose records went to their topic's dead-letter topic:
    /// `{"queued":n,"valid":v,"dead_lettered":d,"dead_letter_topic":"..."}`.
    DeadLettered {
        queued: usize,
        dead_lettered: usize,
        topic: String,
    },
    /// 204 to a CORS preflight: the allow headers if the origin is allowed, and the
    /// request headers it asked for.
    Preflight {
        allowed: bool,
        asked: Option<&'a [u8]>,
    },
    /// 202 for a REST request (or a v3 one none of whose records could be produced).
    RestQueued(Rest),
    /// Once Kafka acknowledged: the ticket, the topic, the records of an NDJSON request
    /// (0 for a single record), and for a REST request what its answer lists.
    Later {
        ticket: Ticket,
        topic: &'a [u8],
        count: usize,
        rest: Option<Rest>,
    },
    /// JSON known now (REST v3's cluster pages).
    Json(u16, &'static str, Vec<u8>),
}

/// What a REST answer lists.
#[derive(Debug)]
pub enum Rest {
    /// v2: each record's requested partition (-1: the partitioner's).
    V2(Vec<i32>),
    /// v3: each request object's fate and what its answer tells.
    V3(Box<restv3::Reply>),
}

/// Before the body is read: a client that sent `Expect: 100-continue` waits for our
/// go-ahead, so a request that is refused anyway is answered now, its body unread (the
/// connection then closes: framing is lost).
pub fn refuse_before_body(head: &Head, routed: &Result<Route, HttpError>) -> Option<HttpError> {
    match routed {
        Err(e) if head.expect_continue && head.framing != Framing::Empty => Some(*e),
        _ => None,
    }
}

/// Whether to send `100 Continue` now: the client asked and no body byte arrived yet.
pub fn send_continue(head: &Head, already: bool, body_bytes: usize) -> bool {
    head.expect_continue && !already && body_bytes == 0
}

pub fn handle<'a>(
    exec: &'a Exec,
    route: Route,
    req: &Request<'a>,
) -> Result<Answer<'a>, HttpError> {
    match route {
        Route::Health => Ok(Answer::Text(200, "OK", b"ok\n")),
        Route::Ready if exec.metrics.ready() && !exec.shutting_down.get() => {
            // Serving while the spool replays what a previous run left.
            if exec.metrics.replay_left() > 0 {
                return Ok(Answer::Text(200, "OK", b"ready, replaying the spool\n"));
            }
            Ok(Answer::Text(200, "OK", b"ready\n"))
        }
        Route::Ready => Ok(Answer::Text(503, "Service Unavailable", b"not ready\n")),
        Route::Metrics => Ok(Answer::Metrics(exec.metrics.render())),
        Route::Produce => produce(exec, req),
        Route::Preflight(asked) => Ok(Answer::Preflight {
            allowed: req.produce.origin.is_some(),
            asked: asked.map(|r| &req.bytes[r]),
        }),
        Route::Clusters(one) => {
            let id = cluster_id(exec, req, one)?;
            let host = crate::exec::route::find_header(req.bytes, req.head, b"host")
                .map(|r| String::from_utf8_lossy(&req.bytes[r]).into_owned());
            // The links point where the client came from (the scheme as ingestd sees it).
            let scheme = if req.tls { "https" } else { "http" };
            let prefix = match req.bytes[req.head.path.clone()].starts_with(b"/kafka/") {
                true => "/kafka",
                false => "",
            };
            let base = host.map_or(prefix.to_string(), |h| format!("{scheme}://{h}{prefix}"));
            let mut body = Vec::with_capacity(1024);
            match one {
                true => restv3::cluster(&mut body, &base, &id),
                false => restv3::cluster_list(&mut body, &base, &id),
            }
            body.push(b'\n');
            Ok(Answer::Json(200, "OK", body))
        }
    }
}

/// Kafka's cluster id, which a v3 path must name (`check`: the path has one).
fn cluster_id(exec: &Exec, req: &Request, check: bool) -> Result<std::sync::Arc<str>, HttpError> {
    let id = exec
        .topics
        .cluster_id(&exec.metrics.topics)
        .ok_or(HttpError::ClusterUnknown)?;
    if check && req.bytes[req.produce.cluster.clone()] != *id.as_bytes() {
        return Err(HttpError::NoSuchCluster);
    }
    Ok(id)
}

/// Whether a REST v3 stream may open (answer `200` before its records arrive): what
/// refuses the whole request is checked now. An error here is not answered here: the
/// request is then read whole and `produce` answers it, as any other.
pub fn stream_opens(exec: &Exec, req: &Request) -> Result<(), HttpError> {
    let policy = exec.guard.tenant_policy(req.admitted)?;
    let tenant = req.admitted.tenant.map(|i| policy.tenant(i));
    let topic = crate::exec::admit::topic_name(req.bytes, req.produce, tenant, &exec.cfg);
    if topic.is_empty() || !exec.topics.may_exist(&exec.metrics.topics, topic) {
        return Err(HttpError::NotFound("topic does not exist in kafka"));
    }
    cluster_id(exec, req, true).map(drop)
}

/// Where a request's records come from: the body, its NDJSON lines, or a REST v2 body's
/// records.
enum Records<'b> {
    One,
    Lines,
    Rest(&'b [Record]),
}

impl Records<'_> {
    /// Calls `f(key, value, partition, record headers)` for each record, in order;
    /// `key`/`partition` are the request's (Kafka-Key, Kafka-Partition) for raw records.
    fn each<'v>(
        &'v self,
        body: &'v [u8],
        key: Option<&'v [u8]>,
        partition: i32,
        mut f: impl FnMut(Option<&'v [u8]>, &'v [u8], i32, &'v [(Vec<u8>, Vec<u8>)]),
    ) {
        match self {
            Records::One => f(key, body, partition, &[]),
            Records::Lines => ndjson_lines(body).for_each(|r| f(key, &body[r], partition, &[])),
            Records::Rest(recs) => recs
                .iter()
                .for_each(|r| f(r.key.as_deref(), &r.value, r.partition, &r.headers)),
        }
    }
}

/// Puts the request's records into the executor's queue: answered now (ack=queued) or
/// once Kafka acknowledged them (ack=kafka).
fn produce<'a>(exec: &'a Exec, req: &Request<'a>) -> Result<Answer<'a>, HttpError> {
    let (p, bytes, body) = (req.produce, req.bytes, req.body);
    let policy = exec.guard.tenant_policy(req.admitted)?;
    let tenant = req.admitted.tenant.map(|i| policy.tenant(i));
    let topic: &[u8] = crate::exec::admit::topic_name(bytes, p, tenant, &exec.cfg);
    if topic.is_empty() {
        return Err(HttpError::NotFound("no default topic configured"));
    }
    if !exec.topics.may_exist(&exec.metrics.topics, topic) {
        return Err(HttpError::NotFound("topic does not exist in kafka"));
    }
    let rest_records;
    let mut v3 = None;
    let records = match (p.v3, p.rest) {
        (Some(op), _) => {
            let cluster = cluster_id(exec, req, true)?;
            let stream = req.head.framing == crate::http::parse::Framing::Chunked;
            let parsed = match op {
                restv3::Op::Batch => restv3::parse_batch(body, exec.cfg.rest_v3_batch_max_entries)?,
                _ if stream => restv3::parse_stream(body)?,
                _ => restv3::parse_one(body)?,
            };
            let mut parsed = parsed;
            // Many records in one request: one refused by the topic's schema fails alone.
            if op == restv3::Op::Batch || stream {
                if let Some(s) = policy.schemas.get(topic) {
                    refuse_invalid_alone(exec, s, &mut parsed);
                }
            }
            rest_records = parsed.records;
            let reply = restv3::Reply {
                op,
                stream,
                cluster: cluster.to_string(),
                topic: String::from_utf8_lossy(topic).into_owned(),
                entries: parsed.entries,
            };
            if rest_records.is_empty() {
                // Every object failed on its own: their errors are the answer.
                return Ok(Answer::RestQueued(Rest::V3(Box::new(reply))));
            }
            v3 = Some(Box::new(reply));
            Records::Rest(&rest_records)
        }
        (None, Some(fmt)) => {
            rest_records = restv2::parse(fmt, body, p.partition)?;
            Records::Rest(&rest_records)
        }
        (None, None) if p.ndjson => Records::Lines,
        (None, None) => Records::One,
    };
    let key = p.key.clone().map(|r| &bytes[r]);
    // A topic with a schema: every record is judged before any is queued.
    let schema = policy.schemas.get(topic);
    let judged = match schema {
        Some(s) => Some(judge(exec, s, p, &records, body, key)?),
        None => None,
    };
    let problems = judged.as_ref().map_or(&[][..], |j| &j.problems[..]);
    // Dead-letter mode: the invalid records' topic and headers.
    let dead = schema.filter(|_| !problems.is_empty()).map(|s| DeadLetter {
        topic: s.dead_letter.as_deref().unwrap_or_default().as_bytes(),
        meant: topic,
        schema: s.schema_id(),
        errors: problems
            .iter()
            .map(|q| {
                let part = if q.key { "key" } else { "value" };
                format!("{part} {}: {}", q.bad.path(), q.bad.reason())
            })
            .collect(),
    });
    let dead = dead.as_ref();
    // A dead letter to a topic Kafka does not have would fail after its 2xx: refuse now.
    if dead.is_some_and(|d| !exec.topics.may_exist(&exec.metrics.topics, d.topic)) {
        return Err(HttpError::NotFound(
            "the topic's dead_letter_topic does not exist in kafka",
        ));
    }
    let cfg = &exec.cfg;
    let names = &cfg.forward_headers;
    // The headers ingestd sets itself: the tenant's name (consumers trust it: a client's
    // header of that name is never forwarded) and the client's address.
    let own = tenant
        .filter(|_| !cfg.tenant_header.is_empty())
        .map(|t| (cfg.tenant_header.as_bytes(), t.name.as_bytes()))
        .into_iter()
        .chain(
            cfg.client_address_header
                .as_deref()
                .filter(|_| !req.client.is_empty())
                .map(|h| (h.as_bytes(), req.client)),
        );
    let forwarded = || {
        p.forward
            .iter()
            .map(|&(i, f)| {
                let (_, v) = &req.head.headers[i as usize];
                (names[f as usize].as_bytes(), &bytes[v.clone()])
            })
            .chain(own.clone())
    };
    let fbytes: usize = forwarded().map(|(n, v)| n.len() + v.len()).sum();
    let (mut n, mut cost) = (0, 0);
    let mut cursor = Cursor::new(problems);
    records.each(body, key, p.partition, |k, v, _, h| {
        // What is queued: without the headers `client_headers` drops.
        let hbytes: usize = client_headers(h, cfg).map(|(n, v)| n.len() + v.len()).sum();
        let dbytes: usize = dead_headers(dead, cursor.next_record())
            .map(|(n, v)| n.len() + v.len())
            .sum();
        n += 1;
        cost += record_cost(k.map_or(0, <[u8]>::len), v.len(), fbytes + hbytes + dbytes);
    });
    if n == 0 {
        return Err(HttpError::BadRequest("NDJSON body has no records"));
    }
    if n > exec.cfg.queue_max_records || cost > exec.cfg.queue_max_bytes {
        return Err(HttpError::NeverFits);
    }
    let deadline = req.started + Duration::from_millis(exec.cfg.ack_timeout_ms);
    let wait = (p.ack == AckMode::Kafka).then_some(deadline);
    let count = if p.ndjson { n } else { 0 };
    // A REST v2 answer lists each record, with the partition it asked for; v3's what
    // became of each object.
    let rest = match (v3, p.rest) {
        (Some(reply), _) => Some(Rest::V3(reply)),
        (None, Some(_)) => {
            let mut parts = Vec::with_capacity(n);
            records.each(body, key, p.partition, |_, _, part, _| parts.push(part));
            Some(Rest::V2(parts))
        }
        (None, None) => None,
    };
    // A REST answer after Kafka's ack lists every record's offset: one waiter each.
    let each = rest.is_some() && p.ack == AckMode::Kafka;
    let one_waiter = if each { None } else { wait };
    let mut waiters = Vec::new();
    if let Some(sp) = &exec.spool {
        // With a spool the records go to disk first; the writer hands them to Kafka.
        let mut a = sp.begin(cost)?;
        count_judged(exec, schema, problems, n);
        let mut cursor = Cursor::new(problems);
        records.each(body, key, p.partition, |k, v, part, h| {
            let bad = cursor.next_record();
            let (t, part) = route_record(topic, part, dead, bad);
            let h = client_headers(h, cfg).chain(forwarded());
            a.push(t, k, v, part, h.chain(dead_headers(dead, bad)))
        });
        let durable = p.ack == AckMode::Durable;
        let ticket = if each {
            waiters.extend((0..n).map(|_| exec.add_waiter(1, deadline)));
            Ticket::each(Some(a.finish_each(durable, &waiters)), &waiters)
        } else {
            let waiter = one_waiter.map(|d| exec.add_waiter(n, d));
            Ticket::spooled(a.finish(durable, waiter), waiter)
        };
        crate::metrics::bump(&exec.stats().records_enqueued, n as u64);
        return Ok(Answer::Later {
            ticket,
            topic,
            count,
            rest,
        });
    }
    let mut q = exec.reserve(n, cost, one_waiter, req.buffered)?;
    count_judged(exec, schema, problems, n);
    let mut cursor = Cursor::new(problems);
    records.each(body, key, p.partition, |k, v, part, h| {
        let bad = cursor.next_record();
        let (t, part) = route_record(topic, part, dead, bad);
        let h = client_headers(h, cfg).chain(forwarded());
        let h = h.chain(dead_headers(dead, bad));
        if each {
            let w = exec.add_waiter(1, deadline);
            waiters.push(w);
            q.push_waited(w, t, k, v, part, h)
        } else {
            q.push(t, k, v, part, h)
        }
    });
    if each {
        return Ok(Answer::Later {
            ticket: Ticket::each(None, &waiters),
            topic,
            count,
            rest,
        });
    }
    Ok(match (q.ticket(), rest) {
        (Some(ticket), rest) => Answer::Later {
            ticket,
            topic,
            count,
            rest,
        },
        (None, Some(parts)) => Answer::RestQueued(parts),
        (None, None) if dead.is_some() => Answer::DeadLettered {
            queued: n,
            dead_lettered: problems.len(),
            topic: schema
                .and_then(|s| s.dead_letter.as_deref())
                .unwrap_or("")
                .to_string(),
        },
        (None, None) if p.ndjson => Answer::Queued(n),
        (None, None) => Answer::Accepted,
    })
}

/// Judges a request's records against its topic's schema (`schema`): the verdict for
/// dead-letter mode, or the refusal (422 listing the records, 400 for a single body that
/// is not JSON, 415 for a content type that cannot be JSON) with its report written.
/// Binary and text REST v2 values are bytes, not JSON: they are not judged.
fn judge<'s>(
    exec: &Exec,
    s: &'s TopicSchema,
    p: &Produce,
    records: &Records,
    body: &[u8],
    key: Option<&[u8]>,
) -> Result<Judge<'s>, HttpError> {
    let mut j = Judge::new(s);
    match p.rest {
        Some(f) if f != restv2::Embedded::Json => return Ok(j),
        Some(_) => {}
        None if p.not_json => {
            return Err(HttpError::UnsupportedMediaType(
                "the topic has a JSON schema: send application/json or application/x-ndjson",
            ))
        }
        None => {}
    }
    records.each(body, key, p.partition, |k, v, _, _| j.record(k, v));
    if j.problems.is_empty() || s.on_invalid == OnInvalid::DeadLetter {
        return Ok(j);
    }
    s.count(exec.index as usize, schema::REJECTED, j.problems.len());
    let one = matches!(records, Records::One);
    let not_json = one && matches!(j.problems[0].bad, schema::Bad::NotJson(_));
    let (status, e) = if not_json {
        (400, HttpError::NotJson)
    } else {
        (422, HttpError::SchemaRefused)
    };
    // REST v2's error codes are the status and two digits; v3's the status.
    let code = match p.v3 {
        Some(_) => u32::from(status),
        None => u32::from(status) * 100 + 1,
    };
    *exec.schema_report.borrow_mut() = report::body(status, code, &s.topic, j.records, &j.problems);
    Err(e)
}

/// For a v3 stream or batch in reject mode: the records the topic's schema refuses
/// fail alone (422 in their own entry) and are not produced; the rest go on. (Dead-letter
/// mode keeps its usual course: every record is produced, the invalid ones elsewhere.)
fn refuse_invalid_alone(exec: &Exec, s: &TopicSchema, parsed: &mut restv3::Parsed) {
    if s.on_invalid != OnInvalid::Reject {
        return;
    }
    let mut j = Judge::new(s);
    for r in &parsed.records {
        j.record(r.key.as_deref(), &r.value);
    }
    if j.problems.is_empty() {
        return;
    }
    let invalid: std::collections::HashSet<usize> = j.problems.iter().map(|q| q.record).collect();
    s.count(exec.index as usize, schema::REJECTED, invalid.len());
    // The k-th entry that is Ok is the k-th record.
    let oks = parsed.entries.iter_mut().filter(|e| e.outcome.is_ok());
    for (k, e) in oks.enumerate() {
        if invalid.contains(&k) {
            e.outcome = Err(HttpError::Unprocessable(
                "the record does not match the topic's schema: it was not produced",
            ));
        }
    }
    let mut k = 0;
    parsed.records.retain(|_| {
        k += 1;
        !invalid.contains(&(k - 1))
    });
}

/// Counts a queued request's judged records (none when its topic has no schema), and
/// notes on its answer how many went to the dead-letter topic:
/// `ingestd-dead-lettered: 3; topic="orders.invalid"`.
fn count_judged(exec: &Exec, schema: Option<&TopicSchema>, problems: &[Problem], n: usize) {
    if let Some(s) = schema {
        let i = exec.index as usize;
        s.count(i, schema::VALID, n - problems.len());
        s.count(i, schema::DEAD_LETTERED, problems.len());
        if let (false, Some(d)) = (problems.is_empty(), &s.dead_letter) {
            let mut note = exec.answer_note.borrow_mut();
            note.clear();
            let _ = write!(
                note,
                "ingestd-dead-lettered: {}; topic=\"{d}\"\r\n",
                problems.len()
            );
        }
    }
}

/// Where dead-letter mode sends invalid records, and what it tells about them.
struct DeadLetter<'a> {
    topic: &'a [u8],
    /// The topic the records were meant for.
    meant: &'a [u8],
    /// `file#sha256:hash` of the schema.
    schema: String,
    /// Each invalid record's first error, in `problems` order.
    errors: Vec<String>,
}

/// A record's topic and partition: its own, or the dead-letter topic's (any partition)
/// when it is invalid.
fn route_record<'t>(
    topic: &'t [u8],
    part: i32,
    dead: Option<&DeadLetter<'t>>,
    bad: Option<usize>,
) -> (&'t [u8], i32) {
    match (dead, bad) {
        (Some(d), Some(_)) => (d.topic, -1),
        _ => (topic, part),
    }
}

/// The headers of a dead-lettered record (none for a valid one): the topic it was meant
/// for, the schema and its first error. `rank`: its place among the invalid records.
fn dead_headers<'v>(
    dead: Option<&'v DeadLetter<'v>>,
    rank: Option<usize>,
) -> impl Iterator<Item = (&'v [u8], &'v [u8])> + Clone {
    dead.zip(rank).into_iter().flat_map(|(d, r)| {
        [
            (&b"ingestd-dead-letter-topic"[..], d.meant),
            (&b"ingestd-dead-letter-schema"[..], d.schema.as_bytes()),
            (&b"ingestd-dead-letter-error"[..], d.errors[r].as_bytes()),
        ]
    })
}

/// A REST v2 record's own headers, without those that claim to be ingestd's own
/// (`tenant_header`, `client_address_header`, the dead-letter headers): consumers trust
/// those.
fn client_headers<'v>(
    h: &'v [(Vec<u8>, Vec<u8>)],
    cfg: &'v crate::config::Config,
) -> impl Iterator<Item = (&'v [u8], &'v [u8])> + Clone {
    const DEAD_LETTER: &[u8] = b"ingestd-dead-letter-";
    let own = |n: &[u8]| {
        n.get(..DEAD_LETTER.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(DEAD_LETTER))
            || [Some(&cfg.tenant_header), cfg.client_address_header.as_ref()]
                .into_iter()
                .flatten()
                .any(|o| !o.is_empty() && n.eq_ignore_ascii_case(o.as_bytes()))
    };
    h.iter()
        .filter(move |(n, _)| !own(n))
        .map(|(n, v)| (&n[..], &v[..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::exec::route::route;
    use crate::http::parse::{parse_head, Limits};
    use crate::kafka::lane::{make_lane, KafkaLane, KafkaWake};
    use crate::metrics::Metrics;
    use std::rc::Rc;
    use std::sync::Arc;

    /// An executor with no broker and no socket behind it.
    fn exec() -> (Rc<Exec>, KafkaLane) {
        let (lane, kafka) = make_lane(0, KafkaWake::new());
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        (
            Exec::new(lane, Arc::new(cfg), Metrics::new(1), "1", None),
            kafka,
        )
    }

    /// Parses, routes and handles one complete request.
    fn answer(exec: &Exec, wire: &[u8]) -> Result<String, HttpError> {
        let lim = Limits {
            max_header_bytes: 16384,
            max_headers: 64,
            max_uri_bytes: 4096,
            max_body_bytes: 1 << 20,
        };
        let mut head = Head::default();
        assert!(parse_head(wire, &lim, &mut head).unwrap());
        let mut produce = Produce::default();
        let r = route(wire, &head, &exec.cfg, &mut produce, Default::default())?;
        let req = Request {
            bytes: wire,
            head: &head,
            produce: &produce,
            body: &wire[head.len..],
            started: Instant::now(),
            buffered: 0,
            admitted: Default::default(),
            client: b"",
            tls: false,
        };
        Ok(match handle(exec, r, &req)? {
            Answer::Text(code, _, body) => format!("{code} {}", String::from_utf8_lossy(body)),
            Answer::Metrics(m) => format!("metrics {}", m.len()),
            Answer::Accepted => "202".into(),
            Answer::Queued(n) => format!("202 queued {n}"),
            Answer::DeadLettered {
                queued,
                dead_lettered,
                topic,
            } => format!("202 queued {queued}, {dead_lettered} to {topic}"),
            Answer::RestQueued(p) => format!("202 rest {p:?}"),
            Answer::Json(code, _, body) => format!("{code} {}", String::from_utf8_lossy(&body)),
            Answer::Preflight { allowed, .. } => format!("204 {allowed}"),
            Answer::Later { topic, count, .. } => {
                format!("later {} {count}", String::from_utf8_lossy(topic))
            }
        })
    }

    fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn each_route_gets_its_answer_and_records_are_queued() {
        let (exec, _kafka) = exec();
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
        assert_eq!(answer(&exec, &get("/healthz")).unwrap(), "200 ok\n");
        assert_eq!(answer(&exec, &get("/readyz")).unwrap(), "503 not ready\n");
        assert!(answer(&exec, &get("/metrics"))
            .unwrap()
            .starts_with("metrics "));
        assert_eq!(answer(&exec, &post("/", "", "v")).unwrap(), "202");
        let nd = "Content-Type: application/x-ndjson\r\n";
        assert_eq!(
            answer(&exec, &post("/", nd, "{}\n{}\n")).unwrap(),
            "202 queued 2"
        );
        let kafka = "Kafka-Ack: kafka\r\n";
        assert_eq!(
            answer(&exec, &post("/topics/audit", kafka, "v")).unwrap(),
            "later audit 0"
        );
        assert_eq!(
            exec.stats()
                .records_enqueued
                .load(std::sync::atomic::Ordering::Relaxed),
            4
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let (exec, _kafka) = exec();
        let nd = "Content-Type: application/x-ndjson\r\n";
        assert_eq!(
            answer(&exec, &post("/", nd, "\n\n")),
            Err(HttpError::BadRequest("NDJSON body has no records"))
        );
        exec.metrics.topics.publish(
            [b"events".to_vec().into_boxed_slice()]
                .into_iter()
                .collect(),
            None,
        );
        assert_eq!(
            answer(&exec, &post("/topics/nope", "", "v")),
            Err(HttpError::NotFound("topic does not exist in kafka"))
        );
        assert_eq!(
            answer(&exec, &post("/topics/events", "", "v")).unwrap(),
            "202"
        );
    }

    #[test]
    fn expect_100_continue_is_refused_before_the_body_or_told_to_go_on() {
        let lim = Limits {
            max_header_bytes: 16384,
            max_headers: 64,
            max_uri_bytes: 4096,
            max_body_bytes: 1 << 20,
        };
        let wire =
            b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        let mut head = Head::default();
        assert!(parse_head(wire, &lim, &mut head).unwrap());
        let refused = Err(HttpError::Unauthorized("x"));
        assert_eq!(
            refuse_before_body(&head, &refused),
            Some(HttpError::Unauthorized("x"))
        );
        assert_eq!(refuse_before_body(&head, &Ok(Route::Produce)), None);
        assert!(send_continue(&head, false, 0));
        assert!(!send_continue(&head, true, 0), "once");
        assert!(
            !send_continue(&head, false, 2),
            "the body is already coming"
        );
        let plain = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n";
        let mut head = Head::default();
        assert!(parse_head(plain, &lim, &mut head).unwrap());
        assert_eq!(
            refuse_before_body(&head, &refused),
            None,
            "read, then answer"
        );
        assert!(!send_continue(&head, false, 0));
    }
}
