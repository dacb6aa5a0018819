//! Routing: turns a parsed head into what to do, reading the Kafka-* headers and the
//! configured forward headers. Pure: no I/O, so it is unit-tested with plain buffers.

use crate::config::{AckMode, Config};
use crate::error::HttpError;
use crate::exec::restv2::{self, Embedded};
use crate::exec::restv3;
use crate::http::encoding::{parse_coding, Coding};
use crate::http::parse::{trim, Head, Method};
use crate::kafka::topics::valid_topic;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topic {
    /// `POST /`: the configured default topic.
    #[default]
    Default,
    /// `POST /topics/{topic}` (or `.../partitions/{p}`): the range of the name in the
    /// buffer.
    Path(Range<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Produce {
    pub topic: Topic,
    pub key: Option<Range<usize>>,
    /// -1 lets librdkafka's partitioner choose.
    pub partition: i32,
    pub ack: AckMode,
    pub ndjson: bool,
    /// A Content-Type that cannot be JSON (`text/plain`, `application/octet-stream`...):
    /// a topic with a schema answers 415.
    pub not_json: bool,
    /// A Kafka REST v2 body (Content-Type `application/vnd.kafka.<format>.v2+json`).
    pub rest: Option<Embedded>,
    /// A Kafka REST v3 path (`/v3/clusters/{id}/...`, or under `/kafka`): its errors
    /// come in v3's shape, and for produce requests its body is v3's.
    pub v3: Option<restv3::Op>,
    /// The `{cluster_id}` of a v3 path (checked against Kafka's by the handler).
    pub cluster: Range<usize>,
    /// The body's Content-Encoding, decoded before its records are taken.
    pub coding: Coding,
    /// The `Origin` of a page allowed by `cors_origins`: its answers carry the CORS
    /// allow headers. Set for every route, errors included.
    pub origin: Option<Range<usize>>,
    /// Headers to forward, in request order: (index into `Head::headers`, index into
    /// `forward_headers`). Records carry the configured lowercase name.
    pub forward: Vec<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    /// A produce request; its details are in the `Produce` passed to `route`.
    Produce,
    /// A CORS preflight on a produce path: the `Access-Control-Request-Headers` value.
    Preflight(Option<Range<usize>>),
    /// REST v3's `GET /v3/clusters` (false) or `GET /v3/clusters/{id}` (true; the id is
    /// `Produce::cluster`).
    Clusters(bool),
}

const ALLOW_GET: &str = "allow: GET, HEAD\r\n";
const ALLOW_POST: &str = "allow: POST\r\n";

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Listener {
    /// `listen`/`tls_listen`: produce, and the health and metrics pages unless an
    /// `admin_listen` has them.
    #[default]
    Public,
    /// `admin_listen`: the health and metrics pages only.
    Admin,
}

/// Decides the route. For `Route::Produce` the details are written into `into`, which
/// the connection reuses between requests to avoid allocating.
pub fn route(
    buf: &[u8],
    head: &Head,
    cfg: &Config,
    into: &mut Produce,
    listener: Listener,
) -> Result<Route, HttpError> {
    let path = &buf[head.path.clone()];
    let pages = matches!(path, b"/healthz" | b"/readyz" | b"/metrics");
    match listener {
        // With an admin listener the pages are private: the public port does not have
        // them (404, as any unknown path).
        Listener::Public if pages && cfg.admin_listen.is_some() => {
            return Err(HttpError::NotFound("no such path"))
        }
        Listener::Admin if !pages => {
            return Err(HttpError::NotFound(
                "the admin listener serves /metrics, /healthz and /readyz only",
            ))
        }
        _ => {}
    }
    // Errors before the headers are read are answered as plain text.
    into.rest = None;
    into.v3 = None;
    into.origin = None;
    let header = |name: &[u8]| find_header(buf, head, name);
    if !cfg.cors_origins.is_empty() {
        into.origin = header(b"origin")
            .filter(|v| crate::http::cors::allowed(&cfg.cors_origins, &buf[v.clone()]));
    }
    let get_only = |r: Route| match head.method {
        Method::Get | Method::Head => Ok(r),
        _ => Err(HttpError::MethodNotAllowed { allow: ALLOW_GET }),
    };
    let mut path_partition = -1;
    let topic = match path {
        b"/healthz" => return get_only(Route::Health),
        b"/readyz" => return get_only(Route::Ready),
        b"/metrics" => return get_only(Route::Metrics),
        // Which topic `POST /` writes (a tenant's default, or the global one) is known once
        // the request is authenticated: `admit`, or the handler without authentication.
        b"/" => Topic::Default,
        p if p.starts_with(b"/topics/") => {
            // REST v2's `/topics/{topic}/partitions/{p}` (topic names have no '/').
            let mut parts = p[8..].splitn(2, |&b| b == b'/');
            let name = parts.next().unwrap_or(b"");
            if let Some(rest) = parts.next() {
                // Anything else after the name reads as a name with a '/', as before.
                let p = rest
                    .strip_prefix(b"partitions/")
                    .ok_or(HttpError::BadRequest("invalid topic name"))?;
                path_partition = parse_partition(p)?;
            }
            let name_str = std::str::from_utf8(name).unwrap_or("");
            if !valid_topic(name_str) {
                return Err(HttpError::BadRequest("invalid topic name"));
            }
            if !cfg.topic_allowed(name_str) {
                return Err(HttpError::NotFound("topic not allowed"));
            }
            let start = head.path.start + 8;
            Topic::Path(start..start + name.len())
        }
        p => match p
            .strip_prefix(b"/kafka/v3/")
            .or_else(|| p.strip_prefix(b"/v3/"))
        {
            Some(v3) => {
                let at = head.path.start + (p.len() - v3.len());
                match v3_path(v3, at, cfg, into)? {
                    Err(clusters) => return get_only(clusters),
                    Ok(name) => Topic::Path(name),
                }
            }
            None => return Err(HttpError::NotFound("no such path")),
        },
    };
    if head.method == Method::Options && !cfg.cors_origins.is_empty() {
        return Ok(Route::Preflight(header(b"access-control-request-headers")));
    }
    if head.method != Method::Post {
        return Err(HttpError::MethodNotAllowed { allow: ALLOW_POST });
    }
    into.topic = topic;
    into.key = None;
    into.partition = path_partition;
    // v3 clients expect each record's offset: their own default contract.
    into.ack = if into.v3.is_some() {
        cfg.rest_v3_ack
    } else {
        cfg.ack
    };
    into.ndjson = false;
    into.not_json = false;
    into.coding = Coding::Identity;
    into.forward.clear();
    let mut seen_ack = false;
    for (i, (n, v)) in head.headers.iter().enumerate() {
        let name = &buf[n.clone()];
        let value = &buf[v.clone()];
        if name.eq_ignore_ascii_case(b"kafka-key") {
            if into.key.is_some() {
                return Err(HttpError::BadRequest("duplicate Kafka-Key header"));
            }
            into.key = Some(v.clone());
        } else if name.eq_ignore_ascii_case(b"kafka-partition") {
            if into.partition >= 0 {
                return Err(HttpError::BadRequest(
                    "duplicate Kafka-Partition header, or one beside a partition in the path",
                ));
            }
            into.partition = parse_partition(value)?;
        } else if name.eq_ignore_ascii_case(b"kafka-ack") {
            if seen_ack {
                return Err(HttpError::BadRequest("duplicate Kafka-Ack header"));
            }
            seen_ack = true;
            into.ack = match trim(value) {
                v if v.eq_ignore_ascii_case(b"queued") => AckMode::Queued,
                v if v.eq_ignore_ascii_case(b"kafka") => AckMode::Kafka,
                v if v.eq_ignore_ascii_case(b"durable") && cfg.spool_dir.is_some() => {
                    AckMode::Durable
                }
                v if v.eq_ignore_ascii_case(b"durable") => {
                    return Err(HttpError::BadRequest(
                        "Kafka-Ack: durable needs the on-disk spool, which is off here (spool_dir is not set)",
                    ))
                }
                _ => {
                    return Err(HttpError::BadRequest(
                        "Kafka-Ack must be queued, durable or kafka",
                    ))
                }
            };
        } else if name.eq_ignore_ascii_case(b"content-type") {
            // Also a record header when listed (what a beacon's text/plain body was).
            if let Some(f) = forwarded(cfg, name) {
                into.forward.push((i as u16, f as u16));
            }
            into.ndjson = is_ndjson(value);
            into.not_json = !into.ndjson && !may_be_json(value);
            into.rest = match restv2::content_type(value) {
                Some(Err(e)) => {
                    // A REST client: its 415 comes in REST's error format.
                    into.rest = Some(Embedded::Json);
                    return Err(e);
                }
                r => r.transpose()?,
            };
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            if into.coding != Coding::Identity {
                return Err(HttpError::UnsupportedMediaType(
                    "one Content-Encoding header at a time",
                ));
            }
            into.coding = parse_coding(value)?;
        } else if let Some(f) = forwarded(cfg, name) {
            into.forward.push((i as u16, f as u16));
        }
    }
    if into.v3.is_some() {
        // v3 bodies are JSON objects whatever else the type says.
        if into.rest.is_some() || into.ndjson || into.not_json {
            into.rest = None;
            return Err(HttpError::UnsupportedMediaType(
                "REST v3 produce bodies are application/json",
            ));
        }
        if into.key.is_some() || into.partition >= 0 {
            return Err(HttpError::BadRequest(
                "REST v3 records carry their own key and partition_id: no Kafka-Key or Kafka-Partition header",
            ));
        }
    }
    Ok(Route::Produce)
}

/// A REST v3 path after its `/v3/` (`at`: where that rest starts in the buffer): a
/// produce path (`Ok`: its topic's range; its op and cluster id are set in `into`), or a
/// clusters page (`Err`). 404 for anything else.
fn v3_path(
    rest: &[u8],
    at: usize,
    cfg: &Config,
    into: &mut Produce,
) -> Result<Result<Range<usize>, Route>, HttpError> {
    into.v3 = Some(restv3::Op::Meta);
    let mut parts = rest.split(|&b| b == b'/');
    if parts.next() != Some(b"clusters") {
        return Err(HttpError::NotFound("no such REST v3 path"));
    }
    let Some(id) = parts.next() else {
        return Ok(Err(Route::Clusters(false)));
    };
    let start = at + b"clusters/".len();
    into.cluster = start..start + id.len();
    if id.is_empty() {
        return Err(HttpError::NotFound("no such REST v3 path"));
    }
    let (Some(topics), Some(name), Some(records), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return match rest.len() == b"clusters/".len() + id.len() {
            true => Ok(Err(Route::Clusters(true))),
            false => Err(HttpError::NotFound(
                "no such REST v3 path: ingestd serves /v3/clusters[/{id}] and POST /v3/clusters/{id}/topics/{topic}/records[:batch]",
            )),
        };
    };
    into.v3 = match (topics, records) {
        (b"topics", b"records") => Some(restv3::Op::Records),
        (b"topics", b"records:batch") => Some(restv3::Op::Batch),
        _ => {
            return Err(HttpError::NotFound(
                "no such REST v3 path: ingestd serves /v3/clusters[/{id}] and POST /v3/clusters/{id}/topics/{topic}/records[:batch]",
            ))
        }
    };
    let name_str = std::str::from_utf8(name).unwrap_or("");
    if !valid_topic(name_str) {
        return Err(HttpError::BadRequest("invalid topic name"));
    }
    if !cfg.topic_allowed(name_str) {
        return Err(HttpError::NotFound("topic not allowed"));
    }
    let start = into.cluster.end + b"/topics/".len();
    Ok(Ok(start..start + name.len()))
}

/// The `forward_headers` entry a header name matches.
fn forwarded(cfg: &Config, name: &[u8]) -> Option<usize> {
    cfg.forward_headers
        .iter()
        .position(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

fn parse_partition(v: &[u8]) -> Result<i32, HttpError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest(
            "Kafka-Partition must be a non-negative integer",
        ));
    }
    Ok(v.iter().fold(0i32, |n, &d| n * 10 + i32::from(d - b'0')))
}

fn is_ndjson(v: &[u8]) -> bool {
    let mime = trim(v.split(|&b| b == b';').next().unwrap_or(b""));
    mime.eq_ignore_ascii_case(b"application/x-ndjson")
        || mime.eq_ignore_ascii_case(b"application/jsonl")
}

/// Whether a Content-Type may carry JSON: `application/json`, `text/json` or any
/// `+json` type (REST v2's among them); a missing or empty one may too.
fn may_be_json(v: &[u8]) -> bool {
    let mime = trim(v.split(|&b| b == b';').next().unwrap_or(b""));
    let lower = mime.to_ascii_lowercase();
    lower.is_empty()
        || lower == b"application/json"
        || lower == b"text/json"
        || lower.ends_with(b"+json")
}

/// The value range of the first header named `name` (ASCII case-insensitive).
pub fn find_header(buf: &[u8], head: &Head, name: &[u8]) -> Option<Range<usize>> {
    head.headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Splits an NDJSON body into its non-empty lines (a trailing CR is dropped).
pub fn ndjson_lines(body: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    // memchr: the body is scanned once per pass (cost, judging, queueing), a byte-wise
    // split was a tenth of an executor's time under 100-line bodies.
    let mut start = 0;
    memchr::memchr_iter(b'\n', body)
        .chain(std::iter::once(body.len()))
        .filter_map(move |end| {
            let s = start;
            start = end + 1;
            let line = body.get(s..end)?;
            let len = line.strip_suffix(b"\r").unwrap_or(line).len();
            (len > 0).then_some(s..s + len)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_head, Limits};

    const LIM: Limits = Limits {
        max_header_bytes: 8192,
        max_headers: 64,
        max_uri_bytes: 1024,
        max_body_bytes: 1 << 20,
    };

    fn run_p(req: &[u8], cfg: &Config) -> Result<(Route, Produce), HttpError> {
        let mut head = Head::default();
        assert!(parse_head(req, &LIM, &mut head).unwrap());
        let mut p = Produce::default();
        route(req, &head, cfg, &mut p, Listener::Public).map(|r| (r, p))
    }

    fn run(req: &[u8], cfg: &Config) -> Result<Route, HttpError> {
        run_p(req, cfg).map(|(r, _)| r)
    }

    #[test]
    fn rest_v3_paths() {
        let cfg = Config::default();
        let req = |m: &str, path: &str, hs: &str| {
            format!("{m} {path} HTTP/1.1\r\nHost: a\r\n{hs}Content-Length: 0\r\n\r\n").into_bytes()
        };
        for prefix in ["/v3", "/kafka/v3"] {
            let path = format!("{prefix}/clusters/k-1/topics/orders/records");
            let r = req("POST", &path, "Content-Type: application/json\r\n");
            let (Route::Produce, p) = run_p(&r, &cfg).unwrap() else {
                panic!()
            };
            let Topic::Path(t) = p.topic else { panic!() };
            assert_eq!((&r[t], &r[p.cluster]), (&b"orders"[..], &b"k-1"[..]));
            assert_eq!((p.v3, p.ack), (Some(restv3::Op::Records), AckMode::Kafka));
            let r = req("POST", &format!("{path}:batch"), "Kafka-Ack: queued\r\n");
            let (Route::Produce, p) = run_p(&r, &cfg).unwrap() else {
                panic!()
            };
            assert_eq!((p.v3, p.ack), (Some(restv3::Op::Batch), AckMode::Queued));
            let r = req("GET", &format!("{prefix}/clusters"), "");
            assert_eq!(run(&r, &cfg), Ok(Route::Clusters(false)));
            let r = req("GET", &format!("{prefix}/clusters/k-1"), "");
            let (route, p) = run_p(&r, &cfg).unwrap();
            assert_eq!((route, &r[p.cluster]), (Route::Clusters(true), &b"k-1"[..]));
        }
        let not_found = |path: &str| {
            let r = req("POST", path, "");
            let mut p = Produce::default();
            let mut head = Head::default();
            assert!(parse_head(&r, &LIM, &mut head).unwrap());
            let e = route(&r, &head, &cfg, &mut p, Listener::Public).unwrap_err();
            // Refused in v3's error shape.
            assert_eq!((e.status().0, p.v3.is_some()), (404, true), "{path}");
        };
        not_found("/v3/clusters/k/topics/t/partitions");
        not_found("/v3/clusters/k/topics/t/records/x");
        not_found("/v3/clusters//topics/t/records");
        not_found("/v3/brokers");
        let r = req(
            "POST",
            "/v3/clusters/k/topics/t/records",
            "Content-Type: text/plain\r\n",
        );
        assert_eq!(run(&r, &cfg).map_err(|e| e.status().0), Err(415));
        let r = req(
            "POST",
            "/v3/clusters/k/topics/t/records",
            "Kafka-Key: x\r\n",
        );
        assert_eq!(run(&r, &cfg).map_err(|e| e.status().0), Err(400));
        let r = req("POST", "/v3/clusters/k/topics/a%20b/records", "");
        assert_eq!(run(&r, &cfg).map_err(|e| e.status().0), Err(400));
        let r = req("POST", "/v3/clusters", "");
        assert_eq!(run(&r, &cfg).map_err(|e| e.status().0), Err(405));
    }

    #[test]
    fn produce_headers() {
        let cfg = Config {
            forward_headers: vec!["x-request-id".into()],
            ..Default::default()
        };
        let req = b"POST /topics/orders HTTP/1.1\r\nHost: a\r\nKafka-Key: k1\r\nKafka-Partition: 3\r\nKafka-Ack: kafka\r\nX-Request-Id: r\r\nContent-Type: application/x-ndjson; charset=utf-8\r\nContent-Length: 0\r\n\r\n";
        let (Route::Produce, p) = run_p(req, &cfg).unwrap() else {
            panic!()
        };
        assert_eq!(
            &req[match p.topic {
                Topic::Path(r) => r,
                _ => panic!(),
            }],
            b"orders"
        );
        assert_eq!(&req[p.key.unwrap()], b"k1");
        assert_eq!(p.partition, 3);
        assert_eq!(p.ack, AckMode::Kafka);
        assert!(p.ndjson);
        assert_eq!(p.forward, vec![(4, 0)]);
        // Content-Type, which ingestd also reads, is forwarded when listed.
        let cfg = Config {
            forward_headers: vec!["content-type".into()],
            ..Default::default()
        };
        let (Route::Produce, p) = run_p(req, &cfg).unwrap() else {
            panic!()
        };
        assert!(p.ndjson);
        assert_eq!(p.forward, vec![(5, 0)]);
    }

    #[test]
    fn route_errors() {
        let cfg = Config {
            topics: vec!["a".into()],
            ..Default::default()
        };
        let r = |s: &str| run(s.as_bytes(), &cfg).map(|_| ()).unwrap_err().status().0;
        assert_eq!(
            r("POST /topics/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            404
        );
        assert_eq!(
            r("POST /topics/b%20c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            400
        );
        assert_eq!(r("GET /topics/a HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(
            r("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            405
        );
        assert_eq!(r("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nKafka-Partition: -1\r\nContent-Length: 0\r\n\r\n"),
            400
        );
        assert_eq!(
            r("POST / HTTP/1.1\r\nHost: x\r\nKafka-Ack: maybe\r\nContent-Length: 0\r\n\r\n"),
            400
        );
        assert_eq!(
            run(b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", &cfg).unwrap(),
            Route::Health
        );
    }

    /// `durable` needs a spool: without one it is refused with the reason, never served
    /// as a weaker contract.
    #[test]
    fn durable_ack_needs_a_spool() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nKafka-Ack: Durable\r\nContent-Length: 0\r\n\r\n";
        let e = run(req, &Config::default()).unwrap_err();
        assert_eq!(e.status().0, 400);
        assert!(e.message().contains("spool_dir"), "{}", e.message());
        let spooled = Config {
            spool_dir: Some("/var/lib/ingestd".into()),
            ..Default::default()
        };
        let (_, p) = run_p(req, &spooled).unwrap();
        assert_eq!(p.ack, AckMode::Durable);
    }

    #[test]
    fn rest_v2_paths_content_types_and_encodings() {
        let cfg = Config::default();
        let req = b"POST /topics/orders/partitions/7 HTTP/1.1\r\nHost: a\r\nContent-Type: application/vnd.kafka.binary.v2+json\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n";
        let (_, p) = run_p(req, &cfg).unwrap();
        assert_eq!(
            &req[match p.topic {
                Topic::Path(r) => r,
                _ => panic!(),
            }],
            b"orders"
        );
        assert_eq!(p.partition, 7);
        assert_eq!(p.rest, Some(Embedded::Binary));
        assert_eq!(p.coding, Coding::Gzip);
        let r = |s: &str| run(s.as_bytes(), &cfg).map(|_| ()).unwrap_err().status().0;
        let post = |path: &str, h: &str| {
            format!("POST {path} HTTP/1.1\r\nHost: x\r\n{h}Content-Length: 0\r\n\r\n")
        };
        assert_eq!(r(&post("/topics/a/partitions/x", "")), 400);
        assert_eq!(r(&post("/topics/a/offsets", "")), 400);
        assert_eq!(
            r(&post("/topics/a/partitions/1", "Kafka-Partition: 1\r\n")),
            400
        );
        assert_eq!(r(&post("/topics/a", "Content-Encoding: br\r\n")), 415);
        assert_eq!(
            r(&post(
                "/topics/a",
                "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
            )),
            415
        );
        assert_eq!(
            r(&post(
                "/topics/a",
                "Content-Type: application/vnd.kafka.avro.v2+json\r\n"
            )),
            415
        );
        // Any other content type is a raw body, as before.
        let (_, p) = run_p(
            post("/topics/a", "Content-Type: application/json\r\n").as_bytes(),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            (p.rest, p.ndjson, p.coding),
            (None, false, Coding::Identity)
        );
    }

    #[test]
    fn duplicate_kafka_headers_are_400() {
        let cfg = Config::default();
        for h in [
            "Kafka-Key: a\r\nkafka-key: b",
            "Kafka-Partition: 1\r\nKafka-Partition: 1",
            "Kafka-Ack: kafka\r\nKafka-Ack: queued",
        ] {
            let req = format!("POST / HTTP/1.1\r\nHost: x\r\n{h}\r\nContent-Length: 0\r\n\r\n");
            let e = run(req.as_bytes(), &cfg).unwrap_err();
            assert_eq!(e.status().0, 400, "{h}");
            assert!(!e.closes());
        }
    }

    #[test]
    fn ndjson_split() {
        let body = b"{\"a\":1}\r\n\n{\"b\":2}\n\n{\"c\":3}";
        let lines: Vec<&[u8]> = ndjson_lines(body).map(|r| &body[r]).collect();
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"]);
        assert_eq!(ndjson_lines(b"\n\r\n").count(), 0);
    }
}
