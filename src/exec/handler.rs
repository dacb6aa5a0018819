//! What a complete request gets, decided without a socket: the answer now, or the ticket
//! of an answer that waits for Kafka. Produce requests put their records into the
//! executor's queue here. `conn` reads and writes; this decides.

use crate::config::AckMode;
use crate::error::HttpError;
use crate::exec::local::{Exec, Ticket};
use crate::exec::route::{ndjson_lines, Produce, Route, Topic};
use crate::http::parse::{Framing, Head};
use crate::kafka::lane::record_cost;
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
    /// Once Kafka acknowledged: the ticket, the topic, the records of an NDJSON request
    /// (0 for a single record).
    Later {
        ticket: Ticket,
        topic: &'a [u8],
        count: usize,
    },
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
    }
}

/// Puts the request's records into the executor's queue: answered now (ack=queued) or
/// once Kafka acknowledged them (ack=kafka).
fn produce<'a>(exec: &'a Exec, req: &Request<'a>) -> Result<Answer<'a>, HttpError> {
    let (p, bytes, body) = (req.produce, req.bytes, req.body);
    let topic: &'a [u8] = match &p.topic {
        Topic::Default => exec.cfg.default_topic.as_deref().unwrap_or("").as_bytes(),
        Topic::Path(r) => &bytes[r.clone()],
    };
    if !exec.topics.may_exist(&exec.metrics.topics, topic) {
        return Err(HttpError::NotFound("topic does not exist in kafka"));
    }
    let key = p.key.clone().map(|r| &bytes[r]);
    let names = &exec.cfg.forward_headers;
    let headers = || {
        p.forward.iter().map(|&(i, f)| {
            let (_, v) = &req.head.headers[i as usize];
            (names[f as usize].as_bytes(), &bytes[v.clone()])
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
    let deadline = req.started + Duration::from_millis(exec.cfg.ack_timeout_ms);
    let wait = (p.ack == AckMode::Kafka).then_some(deadline);
    let count = if p.ndjson { n } else { 0 };
    if let Some(sp) = &exec.spool {
        // With a spool the records go to disk first; the writer hands them to Kafka.
        let mut a = sp.begin(cost)?;
        if p.ndjson {
            for r in ndjson_lines(body) {
                a.push(topic, key, &body[r], p.partition, headers());
            }
        } else {
            a.push(topic, key, body, p.partition, headers());
        }
        let waiter = wait.map(|d| exec.add_waiter(n, d));
        let t = a.finish(p.ack == AckMode::Durable, waiter);
        crate::metrics::bump(&exec.stats().records_enqueued, n as u64);
        return Ok(Answer::Later {
            ticket: Ticket::spooled(t, waiter),
            topic,
            count,
        });
    }
    let mut q = exec.reserve(n, cost, wait, req.buffered)?;
    if p.ndjson {
        for r in ndjson_lines(body) {
            q.push(topic, key, &body[r], p.partition, headers());
        }
    } else {
        q.push(topic, key, body, p.partition, headers());
    }
    Ok(match q.ticket() {
        Some(ticket) => Answer::Later {
            ticket,
            topic,
            count,
        },
        None if p.ndjson => Answer::Queued(n),
        None => Answer::Accepted,
    })
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
        let r = route(wire, &head, &exec.cfg, &mut produce)?;
        let req = Request {
            bytes: wire,
            head: &head,
            produce: &produce,
            body: &wire[head.len..],
            started: Instant::now(),
            buffered: 0,
        };
        Ok(match handle(exec, r, &req)? {
            Answer::Text(code, _, body) => format!("{code} {}", String::from_utf8_lossy(body)),
            Answer::Metrics(m) => format!("metrics {}", m.len()),
            Answer::Accepted => "202".into(),
            Answer::Queued(n) => format!("202 queued {n}"),
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
        let refused = Err(HttpError::Unauthorized);
        assert_eq!(
            refuse_before_body(&head, &refused),
            Some(HttpError::Unauthorized)
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
