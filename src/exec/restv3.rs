//! The Kafka REST v3 produce API of Confluent's REST Proxy and Confluent Server
//! (`api/v3/openapi.yaml` of kafka-rest): the request objects
//! `{partition_id?, headers?: [{name, value (base64)}], key?: {type, data}, value: {type,
//! data}}`, one per record, and the answers `{error_code, cluster_id, topic_name,
//! partition_id, offset, timestamp, key: {type, size}, value: {type, size}}`. Three
//! shapes of request: one object (one record); a chunked body of concatenated objects
//! (streaming mode, `conn/stream.rs`: one answer object per record, in order); and
//! `records:batch`, `{entries: [{id, ...}]}`, answered 207 with `successes` and
//! `failures` by id.
//! Pure: bytes in, records or bytes out.
//!
//! The record bytes, exactly: `BINARY` data is base64 decoded (standard or URL-safe,
//! padding optional); `JSON` data is its JSON text as sent without the whitespace between
//! tokens; `STRING` data is the string's UTF-8. The schema-registry types (`AVRO`,
//! `PROTOBUF`, `JSONSCHEMA`, or any schema field) are refused, as are a record's own
//! `timestamp` and a missing or null value (Kafka stamps each record when ingestd produces
//! it; tombstones are not produced).

use crate::error::HttpError;
use crate::exec::restv2::{base64, compact, header_values, Record};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Write;

/// Which v3 produce request a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `.../records`: one object, or (chunked body) a stream of them.
    Records,
    /// `.../records:batch`.
    Batch,
    /// `GET /v3/clusters[/{id}]`: not a produce request; its errors are v3's too.
    Meta,
}

/// A key's or value's embedded format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Binary,
    Json,
    String,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Binary => "BINARY",
            Kind::Json => "JSON",
            Kind::String => "STRING",
        }
    }
}

/// What a produced record's answer tells besides its offset: the partition it asked
/// for (-1: the partitioner's), and its key's and value's format and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub partition: i32,
    pub key: Option<(Kind, usize)>,
    pub value: (Kind, usize),
}

/// One answer object to come: a record produced, or refused before it was produced
/// (that record only: the others of a stream or a batch go on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A batch entry's `id`.
    pub id: Option<String>,
    pub outcome: Result<Sent, HttpError>,
}

/// Everything a v3 answer needs, kept while its records wait for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub op: Op,
    /// Streaming mode (a chunked `records` request): one object per record, status 200.
    pub stream: bool,
    pub cluster: String,
    pub topic: String,
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Req<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    partition_id: Option<i64>,
    #[serde(default)]
    headers: Option<Vec<Header>>,
    #[serde(borrow, default)]
    key: Option<Data<'a>>,
    #[serde(borrow, default)]
    value: Option<Data<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subject: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subject_name_strategy: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    entries: Option<Vec<&'a RawValue>>,
}

fn is_null(v: Option<&RawValue>) -> bool {
    v.is_none_or(|v| v.get() == "null")
}

/// A key's or value's bytes and format.
fn data(d: &Data) -> Result<(Kind, Vec<u8>), HttpError> {
    let schema = [
        d.subject,
        d.subject_name_strategy,
        d.schema_id,
        d.schema_version,
        d.schema,
    ];
    if schema.iter().any(|f| !is_null(*f)) {
        return Err(HttpError::BadRequest(
            "schema registry fields (subject, schema_id, schema_version, schema) are not supported: send type BINARY, JSON or STRING",
        ));
    }
    let kind = match d.kind.as_deref() {
        Some("BINARY") => Kind::Binary,
        Some("JSON") => Kind::Json,
        Some("STRING") => Kind::String,
        Some("AVRO" | "PROTOBUF" | "JSONSCHEMA") => {
            return Err(HttpError::BadRequest(
                "schema-registry formats (AVRO, PROTOBUF, JSONSCHEMA) are not supported: send type BINARY, JSON or STRING",
            ))
        }
        Some(_) => {
            return Err(HttpError::BadRequest(
                "\"type\" must be BINARY, JSON or STRING",
            ))
        }
        // kafka-rest's default without a schema (ingestd has no schema registry).
        None => Kind::Binary,
    };
    let raw = d
        .data
        .filter(|v| v.get() != "null")
        .ok_or(HttpError::BadRequest(
            "a key or value needs non-null \"data\" (tombstones are not produced)",
        ))?;
    let bytes = match kind {
        Kind::Json => compact(raw.get().as_bytes()),
        Kind::Binary => serde_json::from_str::<String>(raw.get())
            .ok()
            .and_then(|s| base64(&s))
            .ok_or(HttpError::BadRequest("BINARY data must be a base64 string"))?,
        Kind::String => serde_json::from_str::<String>(raw.get())
            .map(String::into_bytes)
            .map_err(|_| HttpError::BadRequest("STRING data must be a string"))?,
    };
    Ok((kind, bytes))
}

/// One request object into the record to produce and what its answer tells.
fn record(raw: &[u8]) -> Result<(Option<String>, Record, Sent), HttpError> {
    let r: Req = serde_json::from_slice(raw).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => HttpError::BadRequest(
            "a REST v3 record must be {\"value\": {\"type\": ..., \"data\": ...}, ...}",
        ),
        _ => HttpError::BadRequest("a REST v3 record is not valid JSON"),
    })?;
    if !is_null(r.timestamp) {
        return Err(HttpError::BadRequest(
            "a record's own \"timestamp\" is not supported: Kafka stamps each record when ingestd produces it",
        ));
    }
    let value = r.value.as_ref().ok_or(HttpError::BadRequest(
        "every REST v3 record needs a \"value\" (tombstones are not produced)",
    ))?;
    let (vkind, value) = data(value)?;
    let key = r.key.as_ref().map(data).transpose()?;
    let partition = match r.partition_id {
        None => -1,
        Some(p) if (0..=i64::from(i32::MAX)).contains(&p) => p as i32,
        Some(_) => {
            return Err(HttpError::BadRequest(
                "\"partition_id\" must be a non-negative integer",
            ))
        }
    };
    let headers = header_values(
        r.headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.name, h.value)),
        HttpError::BadRequest("REST v3 header values must be base64"),
    )?;
    let sent = Sent {
        partition,
        key: key.as_ref().map(|(k, b)| (*k, b.len())),
        value: (vkind, value.len()),
    };
    let rec = Record {
        key: key.map(|(_, b)| b),
        value,
        partition,
        headers,
    };
    Ok((r.id, rec, sent))
}

/// The records to produce and the answer's entries (one per request object, in order;
/// `records` holds the produced ones, in the order of the entries that are `Ok`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub records: Vec<Record>,
    pub entries: Vec<Entry>,
}

impl Parsed {
    fn push(&mut self, r: Result<(Option<String>, Record, Sent), HttpError>, id: Option<String>) {
        match r {
            Ok((_, rec, sent)) => {
                self.records.push(rec);
                self.entries.push(Entry {
                    id,
                    outcome: Ok(sent),
                });
            }
            Err(e) => self.entries.push(Entry {
                id,
                outcome: Err(e),
            }),
        }
    }
}

/// A `records` request with one object: its record, or the request's error.
pub fn parse_one(body: &[u8]) -> Result<Parsed, HttpError> {
    let mut p = Parsed::default();
    let (_, rec, sent) = record(body)?;
    p.push(Ok((None, rec, sent)), None);
    Ok(p)
}

/// A streaming `records` request: concatenated objects, each its own record, found by
/// `split_values`. A bad record fails alone, JSON syntax errors included (they stay
/// inside their object); text that never completes a value is the last error.
pub fn parse_stream(body: &[u8]) -> Result<Parsed, HttpError> {
    let mut p = Parsed::default();
    let (values, end) = split_values(body, false);
    for v in values {
        p.push(record(&body[v]), None);
    }
    if body[end..].iter().any(|b| !b.is_ascii_whitespace()) {
        p.push(Err(INCOMPLETE), None);
    }
    if p.entries.is_empty() {
        return Err(HttpError::BadRequest("the REST v3 stream has no records"));
    }
    Ok(p)
}

/// The error of a stream's text that ends inside a JSON value.
pub const INCOMPLETE: HttpError =
    HttpError::BadRequest("the stream ended inside a JSON value: that record is not produced");

/// Where the top-level values of concatenated JSON text lie (the whitespace between
/// them skipped), found without parsing them: brackets are matched outside strings, a
/// string ends at its closing quote, anything else (a stray byte, a number) at the next
/// whitespace, bracket or quote. Each value is then parsed alone, so a malformed one
/// fails alone; a closing bracket of the wrong kind ends its value there (so one
/// unbalanced record does not swallow the next). The list stops before a value that is not
/// complete yet (`more`: bytes may still come, so a bare scalar touching the end may not
/// be whole); returns the values and where the last one ended.
pub fn split_values(buf: &[u8], more: bool) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut s = Splitter::default();
    let values = s.split(buf, more);
    (values, s.end)
}

/// `split_values` that resumes where it stopped: a value arriving bit by bit is scanned
/// once, not again on every read (a stream's incomplete tail).
#[derive(Debug, Default)]
pub struct Splitter {
    /// Where the last complete value ended.
    pub end: usize,
    /// The value being scanned: where it starts, and how far it was scanned.
    start: Option<usize>,
    pos: usize,
    /// The closers its open brackets wait for, innermost last.
    open: Vec<u8>,
    in_str: bool,
}

impl Splitter {
    /// The complete values in `buf` since the last call (`buf` holds what it held then,
    /// and more; see `drained`).
    pub fn split(&mut self, buf: &[u8], more: bool) -> Vec<std::ops::Range<usize>> {
        let mut values = Vec::new();
        loop {
            let start = match self.start {
                Some(s) => s,
                None => {
                    let Some(k) = buf[self.pos..]
                        .iter()
                        .position(|b| !b.is_ascii_whitespace())
                    else {
                        self.pos = buf.len();
                        return values;
                    };
                    let s = self.pos + k;
                    self.start = Some(s);
                    self.pos = s;
                    s
                }
            };
            match self.scan(buf, start, more) {
                Some(end) => {
                    values.push(start..end);
                    self.end = end;
                    self.start = None;
                    self.pos = end;
                    self.open.clear();
                    self.in_str = false;
                }
                None => return values,
            }
        }
    }

    /// Scans the value at `start` from `pos` on: its end once complete.
    fn scan(&mut self, buf: &[u8], start: usize, more: bool) -> Option<usize> {
        let first = buf[start];
        if self.pos == start {
            self.pos += 1;
            match first {
                b'{' => self.open.push(b'}'),
                b'[' => self.open.push(b']'),
                b'"' => self.in_str = true,
                _ => {}
            }
        }
        if !matches!(first, b'{' | b'[' | b'"') {
            // A scalar or a stray byte: up to whitespace, a bracket or a quote.
            let rest = &buf[self.pos..];
            let k = rest
                .iter()
                .position(|&c| c.is_ascii_whitespace() || matches!(c, b'{' | b'[' | b'"'));
            return match k {
                Some(k) => Some(self.pos + k),
                None if more => {
                    self.pos = buf.len();
                    None
                }
                None => Some(buf.len()),
            };
        }
        while self.pos < buf.len() {
            if self.in_str {
                // To the closing quote, escapes skipped (memchr: strings are most bytes).
                match memchr::memchr2(b'"', b'\\', &buf[self.pos..]) {
                    None => self.pos = buf.len(),
                    Some(k) if buf[self.pos + k] == b'"' => {
                        self.pos += k + 1;
                        self.in_str = false;
                        if self.open.is_empty() {
                            return Some(self.pos);
                        }
                    }
                    // An escape: its next byte is taken as is (it may not be here yet).
                    Some(k) => self.pos = (self.pos + k + 2).min(buf.len() + 1),
                }
                if self.pos > buf.len() {
                    // The escaped byte has not arrived: look at it again next time.
                    self.pos = buf.len() - 1;
                    return None;
                }
                continue;
            }
            let c = buf[self.pos];
            self.pos += 1;
            match c {
                b'"' => self.in_str = true,
                b'{' => self.open.push(b'}'),
                b'[' => self.open.push(b']'),
                b'}' | b']' => {
                    if self.open.pop() != Some(c) {
                        // The wrong closer: the value is malformed and ends here.
                        return Some(self.pos);
                    }
                    if self.open.is_empty() {
                        return Some(self.pos);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// How much of the buffer it is done with: up to the last complete value, or, between
    /// values, everything scanned (whitespace).
    pub fn done_with(&self) -> usize {
        match self.start {
            Some(_) => self.end,
            None => self.pos,
        }
    }

    /// The caller dropped the first `n` bytes of its buffer (`n <= done_with()`).
    pub fn drained(&mut self, n: usize) {
        self.end = self.end.saturating_sub(n);
        self.pos -= n;
        self.start = self.start.map(|s| s - n);
    }
}

/// Is `id` a batch entry id as the spec draws them: 1 to 80 of `[0-9A-Za-z_-]`.
fn valid_id(id: &str) -> bool {
    (1..=80).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `records:batch` request: each entry its own record, failing alone; a body that is
/// no batch, has no entries or more than `max`, or repeats an id is the request's error.
pub fn parse_batch(body: &[u8], max: usize) -> Result<Parsed, HttpError> {
    let b: Batch = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            HttpError::BadRequest("a REST v3 batch must be {\"entries\": [{\"id\": ..., ...}]}")
        }
        _ => HttpError::BadRequest("a REST v3 batch is not valid JSON"),
    })?;
    let entries = b.entries.unwrap_or_default();
    if entries.is_empty() {
        return Err(HttpError::BadRequest("a REST v3 batch has no entries"));
    }
    if entries.len() > max {
        return Err(HttpError::BatchTooLarge);
    }
    let mut p = Parsed::default();
    let mut seen = std::collections::HashSet::new();
    for raw in entries {
        let r = record(raw.get().as_bytes());
        // The id is read on its own too, so an entry that is otherwise bad still has it.
        #[derive(Deserialize)]
        struct Id {
            #[serde(default)]
            id: Option<String>,
        }
        let id = serde_json::from_str::<Id>(raw.get())
            .ok()
            .and_then(|i| i.id)
            .filter(|i| valid_id(i))
            .ok_or(HttpError::BadRequest(
                "every batch entry needs an \"id\" of 1 to 80 letters, digits, '-' or '_'",
            ))?;
        if !seen.insert(id.clone()) {
            return Err(HttpError::BadRequest("batch entry ids must be unique"));
        }
        p.push(r, Some(id));
    }
    Ok(p)
}

/// Where a produced record landed, as far as known: (partition, offset).
pub type Landed = (Option<i32>, Option<i64>);

/// A JSON string literal.
fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn opt<T: std::fmt::Display>(out: &mut Vec<u8>, v: Option<T>) {
    let _ = match v {
        Some(v) => write!(out, "{v}"),
        None => write!(out, "null"),
    };
}

/// A produced record's answer object. A batch's success entry has its `id` and no
/// `error_code`, and leaves out what is unknown (kafka-rest writes them `NON_NULL`).
fn success(out: &mut Vec<u8>, code: u16, r: &Reply, s: &Sent, at: Landed, id: Option<&str>) {
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        string(out, id);
        out.push(b',');
    } else {
        let _ = write!(out, "\"error_code\":{code},");
    }
    out.extend_from_slice(b"\"cluster_id\":");
    string(out, &r.cluster);
    out.extend_from_slice(b",\"topic_name\":");
    string(out, &r.topic);
    let batch = id.is_some();
    if !batch || at.0.is_some() {
        out.extend_from_slice(b",\"partition_id\":");
        opt(out, at.0);
    }
    if !batch || at.1.is_some() {
        out.extend_from_slice(b",\"offset\":");
        opt(out, at.1);
    }
    // The record's time is Kafka's (librdkafka stamps it as it produces); the delivery
    // report does not bring it back here, so none is claimed (the field is nullable).
    if !batch {
        out.extend_from_slice(b",\"timestamp\":null");
    }
    match s.key {
        Some((k, n)) => {
            let _ = write!(out, ",\"key\":{{\"type\":\"{}\",\"size\":{n}}}", k.name());
        }
        None if batch => {}
        None => out.extend_from_slice(b",\"key\":null"),
    }
    let _ = write!(
        out,
        ",\"value\":{{\"type\":\"{}\",\"size\":{}}}}}",
        s.value.0.name(),
        s.value.1
    );
}

/// v3's error object: `{"error_code":404,"message":"..."}` (a batch failure adds its id).
pub fn error_body(out: &mut Vec<u8>, status: u16, message: &str, id: Option<&str>) {
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        string(out, id);
        out.push(b',');
    }
    let _ = write!(out, "\"error_code\":{status},\"message\":");
    string(out, message);
    out.push(b'}');
}

/// What became of the produced records, in order: each one's (partition, offset) or
/// its own failure, with the status a success claims (200 acknowledged, 201 synced, 202
/// queued); or the error that took them all.
pub enum Fate<'a> {
    Each(u16, &'a mut dyn Iterator<Item = Result<Landed, HttpError>>),
    Failed(&'a HttpError),
}

/// The answer to a v3 produce request: its status and body (JSON).
pub fn answer(out: &mut Vec<u8>, r: &Reply, fate: Fate) -> u16 {
    type Fates<'f> = Box<dyn Iterator<Item = Result<Landed, HttpError>> + 'f>;
    let (code, mut landed, failed): (u16, Fates, _) = match fate {
        Fate::Each(code, it) => (code, Box::new(it), None),
        Fate::Failed(e) => (e.status().0, Box::new(std::iter::empty()), Some(e)),
    };
    let mut one = |out: &mut Vec<u8>, e: &Entry, batch: bool| {
        let id = e.id.as_deref().filter(|_| batch);
        match (&e.outcome, failed) {
            (Ok(s), None) => match landed.next().unwrap_or(Ok((None, None))) {
                Ok(at) => {
                    let at = (at.0.or((s.partition >= 0).then_some(s.partition)), at.1);
                    success(out, code, r, s, at, id);
                    true
                }
                // Kafka failed this record alone.
                Err(x) => {
                    error_body(out, x.status().0, x.message(), id);
                    false
                }
            },
            (Ok(_), Some(f)) => {
                error_body(out, f.status().0, f.message(), id);
                false
            }
            (Err(x), _) => {
                error_body(out, x.status().0, x.message(), id);
                false
            }
        }
    };
    match r.op {
        Op::Batch => {
            let (mut ok, mut bad) = (Vec::new(), Vec::new());
            for e in &r.entries {
                let mut buf = Vec::with_capacity(256);
                if one(&mut buf, e, true) {
                    push_item(&mut ok, &buf);
                } else {
                    push_item(&mut bad, &buf);
                }
            }
            out.extend_from_slice(b"{\"successes\":[");
            out.extend_from_slice(&ok);
            out.extend_from_slice(b"],\"failures\":[");
            out.extend_from_slice(&bad);
            out.extend_from_slice(b"]}\n");
            207
        }
        _ if r.stream => {
            for e in &r.entries {
                one(out, e, false);
                out.push(b'\n');
            }
            200
        }
        _ => match r.entries.first() {
            Some(e) => {
                let status = match (&e.outcome, failed) {
                    (Ok(_), None) => code,
                    (Ok(_), Some(f)) => f.status().0,
                    (Err(x), _) => x.status().0,
                };
                one(out, e, false);
                out.push(b'\n');
                status
            }
            None => 500,
        },
    }
}

fn push_item(list: &mut Vec<u8>, item: &[u8]) {
    if !list.is_empty() {
        list.push(b',');
    }
    list.extend_from_slice(item);
}

/// `GET /v3/clusters/{id}`'s cluster object (`controller`, optional, is left out: the
/// links are there for clients that follow them, ingestd serves none of them).
pub fn cluster(out: &mut Vec<u8>, base: &str, id: &str) {
    let _ = write!(
        out,
        "{{\"kind\":\"KafkaCluster\",\"metadata\":{{\"self\":\"{base}/v3/clusters/{id}\",\"resource_name\":\"crn:///kafka={id}\"}},\"cluster_id\":"
    );
    string(out, id);
    let _ = write!(
        out,
        ",\"acls\":{{\"related\":\"{base}/v3/clusters/{id}/acls\"}},\"brokers\":{{\"related\":\"{base}/v3/clusters/{id}/brokers\"}},\"broker_configs\":{{\"related\":\"{base}/v3/clusters/{id}/broker-configs\"}},\"consumer_groups\":{{\"related\":\"{base}/v3/clusters/{id}/consumer-groups\"}},\"topics\":{{\"related\":\"{base}/v3/clusters/{id}/topics\"}},\"partition_reassignments\":{{\"related\":\"{base}/v3/clusters/{id}/topics/-/partitions/-/reassignment\"}}}}"
    );
}

/// `GET /v3/clusters`: the one cluster ingestd writes to.
pub fn cluster_list(out: &mut Vec<u8>, base: &str, id: &str) {
    let _ = write!(
        out,
        "{{\"kind\":\"KafkaClusterList\",\"metadata\":{{\"self\":\"{base}/v3/clusters\",\"next\":null}},\"data\":["
    );
    cluster(out, base, id);
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(op: Op, stream: bool, p: &Parsed) -> Reply {
        Reply {
            op,
            stream,
            cluster: "cluster-1".into(),
            topic: "topic-1".into(),
            entries: p.entries.clone(),
        }
    }

    #[test]
    fn one_record_in_each_format_with_headers_key_and_partition() {
        let p = parse_one(
            br#"{"partition_id": 1, "headers": [{"name": "Header-1", "value": "SGVhZGVyLTE="}, {"name": "h2", "value": null}],
                "key": {"type": "BINARY", "data": "Zm9vYmFy"}, "value": {"type": "JSON", "data": {"foo": [1, "b a r"]}}}"#,
        )
        .unwrap();
        let r = &p.records[0];
        assert_eq!(r.key.as_deref(), Some(&b"foobar"[..]));
        assert_eq!(r.value, br#"{"foo":[1,"b a r"]}"#);
        assert_eq!(r.partition, 1);
        assert_eq!(
            r.headers,
            vec![
                (b"Header-1".to_vec(), b"Header-1".to_vec()),
                (b"h2".to_vec(), vec![])
            ]
        );
        let mut out = Vec::new();
        let code = answer(
            &mut out,
            &reply(Op::Records, false, &p),
            Fate::Each(200, &mut std::iter::once(Ok((Some(1), Some(0))))),
        );
        assert_eq!(code, 200);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"error_code\":200,\"cluster_id\":\"cluster-1\",\"topic_name\":\"topic-1\",\"partition_id\":1,\"offset\":0,\"timestamp\":null,\"key\":{\"type\":\"BINARY\",\"size\":6},\"value\":{\"type\":\"JSON\",\"size\":19}}\n"
        );
        let p = parse_one(br#"{"value": {"type": "STRING", "data": "h\u00e9"}}"#).unwrap();
        assert_eq!(p.records[0].value, "hé".as_bytes());
        assert_eq!(p.records[0].partition, -1);
        // No type and no schema: kafka-rest's default, BINARY.
        let p = parse_one(br#"{"value": {"data": "Zm9v"}}"#).unwrap();
        assert_eq!(p.records[0].value, b"foo");
    }

    #[test]
    fn what_ingestd_cannot_produce_is_refused_with_its_reason() {
        for (body, needle) in [
            (&br#"{"value": {"type": "AVRO", "data": 1}}"#[..], "AVRO"),
            (br#"{"value": {"schema_id": 1, "data": 1}}"#, "schema"),
            (br#"{"value": {"type": "XML", "data": 1}}"#, "BINARY, JSON or STRING"),
            (br#"{"value": {"type": "BINARY", "data": "***"}}"#, "base64"),
            (br#"{"value": {"type": "STRING", "data": 5}}"#, "string"),
            (br#"{"key": {"type": "JSON", "data": 1}}"#, "value"),
            (br#"{"value": {"type": "JSON", "data": null}}"#, "tombstones"),
            (br#"{"value": {"type": "JSON", "data": 1}, "timestamp": "2021-02-05T19:14:42Z"}"#, "timestamp"),
            (br#"{"value": {"type": "JSON", "data": 1}, "partition_id": -1}"#, "partition_id"),
            (br#"{"value": {"type": "JSON", "data": 1}, "headers": [{"name": "h", "value": "!"}]}"#, "base64"),
            (br#"{"value": "#, "not valid JSON"),
            (br#"[1]"#, "must be"),
        ] {
            let e = parse_one(body).unwrap_err();
            assert_eq!(e.status().0, 400, "{}", String::from_utf8_lossy(body));
            assert!(e.message().contains(needle), "{}: {}", String::from_utf8_lossy(body), e.message());
        }
    }

    #[test]
    fn a_stream_fails_a_bad_record_alone_and_an_unfinished_one_last() {
        let p = parse_stream(
            br#"{"value": {"type": "JSON", "data": 1}}
                {"value": {"type": "AVRO", "data": 2}}{"value": {"type": "JSON", "data": 3}} {"value": "#,
        )
        .unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.entries.len(), 4);
        assert!(p.entries[1].outcome.is_err() && p.entries[3].outcome.is_err());
        let mut out = Vec::new();
        let mut landed = [(Some(0), Some(7)), (Some(2), Some(9))].into_iter().map(Ok);
        let code = answer(
            &mut out,
            &reply(Op::Records, true, &p),
            Fate::Each(200, &mut landed),
        );
        assert_eq!(code, 200);
        let lines: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            (lines[0]["error_code"].as_u64(), lines[0]["offset"].as_u64()),
            (Some(200), Some(7))
        );
        assert_eq!(lines[1]["error_code"], 400);
        assert!(lines[1]["message"].as_str().unwrap().contains("AVRO"));
        assert_eq!(
            (
                lines[2]["partition_id"].as_u64(),
                lines[2]["offset"].as_u64()
            ),
            (Some(2), Some(9))
        );
        assert_eq!(lines[3]["error_code"], 400);
        // Kafka failing them all: every produced record says so, in its place.
        let mut out = Vec::new();
        let e = HttpError::AckTimeout;
        answer(&mut out, &reply(Op::Records, true, &p), Fate::Failed(&e));
        let codes: Vec<u64> = serde_json::Deserializer::from_slice(&out)
            .into_iter::<serde_json::Value>()
            .map(|v| v.unwrap()["error_code"].as_u64().unwrap())
            .collect();
        assert_eq!(codes, [504, 400, 504, 400]);
        // Kafka failing one record: that one alone says so.
        let mut out = Vec::new();
        let unknown = HttpError::Delivery(crate::error::FailReason::UnknownPartition);
        let mut landed = [Err(unknown), Ok((Some(2), Some(9)))].into_iter();
        answer(
            &mut out,
            &reply(Op::Records, true, &p),
            Fate::Each(200, &mut landed),
        );
        let codes: Vec<u64> = serde_json::Deserializer::from_slice(&out)
            .into_iter::<serde_json::Value>()
            .map(|v| v.unwrap()["error_code"].as_u64().unwrap())
            .collect();
        assert_eq!(codes, [400, 400, 200, 400]);
        assert!(parse_stream(b"  ").is_err());
    }

    #[test]
    fn values_are_split_without_parsing_and_a_broken_one_stays_alone() {
        let text = br#" {"a":"}{\"]"} [1,{"b":[]}]"s\"t" 12 }{"c":}
 {"d":"#;
        let (v, end) = split_values(text, true);
        let got: Vec<&str> = v
            .iter()
            .map(|r| std::str::from_utf8(&text[r.clone()]).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                r#"{"a":"}{\"]"}"#,
                r#"[1,{"b":[]}]"#,
                r#""s\"t""#,
                "12",
                "}",
                r#"{"c":}"#
            ]
        );
        assert_eq!(&text[end..], b"\n {\"d\":");
        // Fed a byte at a time, resuming each time, it finds the same values.
        let mut sp = Splitter::default();
        let mut found = Vec::new();
        for n in 1..=text.len() {
            found.extend(sp.split(&text[..n], true));
        }
        assert_eq!(found, v);
        assert_eq!(sp.end, end);
        // ... and after the caller drops what it took.
        let mut sp = Splitter::default();
        let mut buf = b"{\"a\":\"x\\".to_vec();
        assert!(sp.split(&buf, true).is_empty());
        buf.extend_from_slice(b"\"\"} {\"b\":[1}{\"c\":2}");
        let got = sp.split(&buf, true);
        assert_eq!(
            got.len(),
            3,
            "an escaped quote, then a wrong closer ends its value: {got:?}"
        );
        assert_eq!(&buf[got[1].clone()], b"{\"b\":[1}");
        let end = sp.end;
        buf.drain(..end);
        sp.drained(end);
        buf.extend_from_slice(b" [2]");
        assert_eq!(
            sp.split(&buf, true),
            vec![std::ops::Range { start: 1, end: 4 }]
        );
        // Between values, the whitespace scanned is done with; inside one, only what
        // came before it.
        let mut sp = Splitter::default();
        assert!(sp.split(b" \n {} \t ", true).len() == 1 && sp.done_with() == 8);
        let mut sp = Splitter::default();
        assert!(sp.split(b"{} {\"a\"", true).len() == 1 && sp.done_with() == 2);
        // A scalar touching the end may go on while more can come.
        assert_eq!(split_values(b"{} 12", true).0.len(), 1);
        assert_eq!(split_values(b"{} 12", false).0.len(), 2);
        // In a stream, the malformed one fails alone and the next is produced.
        let p = parse_stream(
            br#"{"value":{"type":"JSON","data":1}}{"value":}{"value":{"type":"JSON","data":3}}"#,
        )
        .unwrap();
        assert_eq!((p.records.len(), p.entries.len()), (2, 3));
        assert!(p.entries[1]
            .outcome
            .as_ref()
            .unwrap_err()
            .message()
            .contains("not valid JSON"));
    }

    #[test]
    fn a_batch_answers_each_id_and_refuses_whole_only_what_the_spec_refuses() {
        let p = parse_batch(
            br#"{"entries": [{"id": "a-1", "value": {"type": "STRING", "data": "x"}},
                             {"id": "b_2", "value": {"type": "PROTOBUF", "data": "y"}},
                             {"id": "c", "partition_id": 2, "key": {"type": "STRING", "data": "k"}, "value": {"type": "STRING", "data": "z"}}]}"#,
            3,
        )
        .unwrap();
        assert_eq!(p.records.len(), 2);
        let mut out = Vec::new();
        let mut landed = [(Some(0), Some(1)), (Some(2), Some(5))].into_iter().map(Ok);
        let code = answer(
            &mut out,
            &reply(Op::Batch, false, &p),
            Fate::Each(200, &mut landed),
        );
        assert_eq!(code, 207);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["successes"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(v["successes"][1]["id"], "c");
        assert_eq!(v["successes"][1]["offset"], 5);
        assert_eq!(v["successes"][1]["key"]["size"], 1);
        assert!(v["successes"][0].get("error_code").is_none(), "{v}");
        assert!(v["successes"][0].get("key").is_none(), "{v}");
        assert_eq!(v["failures"][0]["id"], "b_2");
        assert_eq!(v["failures"][0]["error_code"], 400);
        // Queued: what is not known is left out, not made up.
        let mut out = Vec::new();
        answer(
            &mut out,
            &reply(Op::Batch, false, &p),
            Fate::Each(202, &mut std::iter::repeat(Ok((None, None)))),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["successes"][0].get("offset").is_none(), "{v}");
        assert_eq!(v["successes"][1]["partition_id"], 2, "asked for: {v}");

        let one = r#"{"id": "x", "value": {"type": "JSON", "data": 1}}"#;
        let four = format!(
            r#"{{"entries": [{one}, {}, {}, {}]}}"#,
            one.replace('x', "y"),
            one.replace('x', "z"),
            one.replace('x', "w")
        );
        assert_eq!(
            parse_batch(four.as_bytes(), 3),
            Err(HttpError::BatchTooLarge)
        );
        assert!(parse_batch(four.as_bytes(), 4).is_ok());
        for bad in [
            format!(r#"{{"entries": [{one}, {one}]}}"#),
            r#"{"entries": []}"#.to_string(),
            r#"{"entries": [{"id": "", "value": {"type": "JSON", "data": 1}}]}"#.to_string(),
            r#"{"entries": [{"id": 7, "value": {"type": "JSON", "data": 1}}]}"#.to_string(),
            r#"{"entries": [{"id": "a b", "value": {"type": "JSON", "data": 1}}]}"#.to_string(),
            r#"[]"#.to_string(),
        ] {
            assert_eq!(
                parse_batch(bad.as_bytes(), 10).map_err(|e| e.status().0),
                Err(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_cluster_pages_link_where_the_client_came_from() {
        let mut out = Vec::new();
        cluster_list(&mut out, "http://h:8080/kafka", "k-1");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "KafkaClusterList");
        assert_eq!(v["data"][0]["cluster_id"], "k-1");
        assert_eq!(
            v["data"][0]["metadata"]["self"],
            "http://h:8080/kafka/v3/clusters/k-1"
        );
        assert_eq!(
            v["data"][0]["topics"]["related"],
            "http://h:8080/kafka/v3/clusters/k-1/topics"
        );
        let mut e = Vec::new();
        error_body(&mut e, 404, "no \"such\"", None);
        assert_eq!(e, br#"{"error_code":404,"message":"no \"such\""}"#);
    }
}
