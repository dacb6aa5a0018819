//! The Kafka REST "v2" produce format of Confluent REST Proxy and the Strimzi HTTP bridge:
//! `{"records":[{"key":..,"value":..,"partition":..,"headers":[..]}]}` with the embedded
//! format named by the Content-Type, and the `{"offsets":[..]}` answer. Pure: bytes in,
//! records or bytes out.
//!
//! The record bytes, exactly:
//! - `json`: the key's and the value's JSON text as sent, with the whitespace between
//!   tokens removed (key order, number spelling and string escapes are kept byte for byte).
//! - `binary`: the base64 strings decoded (standard or URL-safe alphabet, padding optional).
//! - `text` (Strimzi): the strings' UTF-8 bytes.
//! - `headers` (Strimzi): `[{"key": name, "value": base64}]`; `"name"` is taken for `"key"`.

use crate::error::HttpError;
use crate::http::parse::trim;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    Json,
    Binary,
    Text,
}

/// The embedded format of a `application/vnd.kafka.<format>.v2+json` content type (v1
/// spellings too): None for any other type (raw body), 415 for the schema-registry
/// formats and unknown ones.
pub fn content_type(v: &[u8]) -> Option<Result<Embedded, HttpError>> {
    const PREFIX: &[u8] = b"application/vnd.kafka.";
    let mime = trim(v.split(|&b| b == b';').next().unwrap_or(b""));
    // Every request with a Content-Type passes here: the common types cost no allocation.
    if mime.len() < PREFIX.len() || !mime[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = std::str::from_utf8(&mime[PREFIX.len()..])
        .ok()?
        .to_ascii_lowercase();
    let format = rest
        .strip_suffix(".v2+json")
        .or_else(|| rest.strip_suffix(".v1+json"));
    Some(match format {
        Some("json") => Ok(Embedded::Json),
        Some("binary") => Ok(Embedded::Binary),
        Some("text") => Ok(Embedded::Text),
        Some("avro" | "protobuf" | "jsonschema") => Err(HttpError::UnsupportedMediaType(
            "schema-registry formats (avro, protobuf, jsonschema) are not supported: send application/vnd.kafka.json.v2+json or application/vnd.kafka.binary.v2+json",
        )),
        _ => Err(HttpError::UnsupportedMediaType(
            "REST produce needs application/vnd.kafka.json.v2+json, application/vnd.kafka.binary.v2+json or application/vnd.kafka.text.v2+json",
        )),
    })
}

/// One record of a REST v2 body, as it goes to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// -1: the partitioner chooses.
    pub partition: i32,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    records: Option<Vec<Rec<'a>>>,
}

#[derive(Deserialize)]
struct Rec<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    partition: Option<i64>,
    #[serde(default)]
    headers: Option<Vec<Header>>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(alias = "name")]
    key: String,
    value: Option<String>,
}

/// Parses a REST v2 body; `path_partition` is the `/partitions/{p}` of the path (or -1).
/// 400 for a body that is not JSON, 422 for JSON that is no valid produce request.
/// Nothing is produced from a body with one bad record.
pub fn parse(fmt: Embedded, body: &[u8], path_partition: i32) -> Result<Vec<Record>, HttpError> {
    let b: Body = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            HttpError::Unprocessable("REST v2 body must be {\"records\":[{\"value\":...}, ...]}")
        }
        _ => HttpError::BadRequest("REST v2 body is not valid JSON"),
    })?;
    let recs = b.records.ok_or(HttpError::Unprocessable(
        "REST v2 body has no \"records\" array",
    ))?;
    if recs.is_empty() {
        return Err(HttpError::Unprocessable("REST v2 body has no records"));
    }
    recs.into_iter()
        .map(|r| {
            // serde reads `"value": null` as None too: tombstones are refused, not sent.
            let value = match r.value {
                Some(v) if v.get() != "null" => bytes(fmt, v)?,
                _ => {
                    return Err(HttpError::Unprocessable(
                        "every REST v2 record needs a non-null \"value\" (tombstones are not supported)",
                    ))
                }
            };
            let key = match r.key {
                Some(k) if k.get() != "null" => Some(bytes(fmt, k)?),
                _ => None,
            };
            let partition = match (r.partition, path_partition) {
                (None, p) => p,
                (Some(p), -1) if (0..=i64::from(i32::MAX)).contains(&p) => p as i32,
                (Some(_), -1) => {
                    return Err(HttpError::Unprocessable(
                        "a record's \"partition\" must be a non-negative integer",
                    ))
                }
                (Some(p), q) if p == i64::from(q) => q,
                (Some(_), _) => {
                    return Err(HttpError::Unprocessable(
                        "a record's \"partition\" differs from the partition in the path",
                    ))
                }
            };
            let headers = header_values(
                r.headers.unwrap_or_default().into_iter().map(|h| (h.key, h.value)),
                HttpError::Unprocessable("REST v2 header values must be base64"),
            )?;
            Ok(Record {
                key,
                value,
                partition,
                headers,
            })
        })
        .collect()
}

/// A key's or value's bytes in the embedded format.
fn bytes(fmt: Embedded, v: &RawValue) -> Result<Vec<u8>, HttpError> {
    match fmt {
        Embedded::Json => Ok(compact(v.get().as_bytes())),
        Embedded::Binary => serde_json::from_str::<String>(v.get())
            .ok()
            .and_then(|s| base64(&s))
            .ok_or(HttpError::Unprocessable(
                "binary REST v2 keys and values must be base64 strings",
            )),
        Embedded::Text => serde_json::from_str::<String>(v.get())
            .map(String::into_bytes)
            .map_err(|_| HttpError::Unprocessable("text REST v2 keys and values must be strings")),
    }
}

/// A record header: name, value.
pub type RecordHeader = (Vec<u8>, Vec<u8>);

/// A record's headers, names as given, values base64-decoded (null: empty); `bad` for a
/// value that is not base64.
pub(crate) fn header_values(
    hs: impl Iterator<Item = (String, Option<String>)>,
    bad: HttpError,
) -> Result<Vec<RecordHeader>, HttpError> {
    hs.map(|(n, v)| {
        let v = match v {
            Some(v) => base64(&v).ok_or(bad)?,
            None => Vec::new(),
        };
        Ok((n.into_bytes(), v))
    })
    .collect()
}

pub(crate) fn base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose as gp, DecodePaddingMode, GeneralPurpose};
    let cfg =
        gp::GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(s)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg).decode(s))
        .ok()
}

/// Valid JSON text without the whitespace between tokens; strings are copied as they are
/// (found with memchr: this runs over every byte of every JSON record of REST bodies).
pub(crate) fn compact(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let end = string_end(&json[i + 1..]).map_or(json.len(), |e| i + e + 2);
                out.extend_from_slice(&json[i..end]);
                i = end;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// After a string's opening quote: the offset of its closing quote, escapes skipped.
fn string_end(v: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < v.len() {
        let k = memchr::memchr2(b'"', b'\\', &v[i..])?;
        if v[i + k] == b'"' {
            return Some(i + k);
        }
        i += k + 2;
    }
    None
}

/// Where one record stands in the answer: (partition, offset) where known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// The `{"offsets":[..]}` answer, in Confluent's shape (Strimzi's is a subset).
pub fn answer(out: &mut Vec<u8>, offsets: impl Iterator<Item = Offset>) {
    out.extend_from_slice(b"{\"offsets\":[");
    for (i, o) in offsets.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{{\"partition\":");
        let _ = match o.partition {
            Some(p) => write!(out, "{p}"),
            None => write!(out, "null"),
        };
        let _ = write!(out, ",\"offset\":");
        let _ = match o.offset {
            Some(x) => write!(out, "{x}"),
            None => write!(out, "null"),
        };
        out.extend_from_slice(b",\"error_code\":null,\"error\":null}");
    }
    out.extend_from_slice(b"],\"key_schema_id\":null,\"value_schema_id\":null}\n");
}

/// The entries of records not acknowledged by Kafka yet (202, 201): the partition each
/// asked for (null: the partitioner's choice), no offset.
pub fn requested(parts: &[i32]) -> impl Iterator<Item = Offset> + '_ {
    parts.iter().map(|&p| Offset {
        partition: (p >= 0).then_some(p),
        offset: None,
    })
}

/// The entries of records acknowledged one by one: exact.
pub fn exact(po: &[(i32, i64)]) -> impl Iterator<Item = Offset> + '_ {
    po.iter().map(|&(p, o)| Offset {
        partition: Some(p),
        offset: Some(o),
    })
}

/// The error body REST v2 clients parse: `{"error_code":..,"message":..}`, where
/// error_code is the status followed by two digits, as Confluent's are (40401, 42201).
pub fn error_body(out: &mut Vec<u8>, status: u16, message: &str) {
    let _ = writeln!(
        out,
        "{{\"error_code\":{}01,\"message\":{}}}",
        status,
        serde_json::to_string(message).unwrap_or_else(|_| "\"\"".into())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_the_embedded_format() {
        let ct = |s: &str| content_type(s.as_bytes()).map(|r| r.map_err(|e| e.status().0));
        assert_eq!(
            ct("application/vnd.kafka.json.v2+json"),
            Some(Ok(Embedded::Json))
        );
        assert_eq!(
            ct("Application/VND.Kafka.Binary.v2+JSON; charset=utf-8"),
            Some(Ok(Embedded::Binary))
        );
        assert_eq!(
            ct("application/vnd.kafka.binary.v1+json"),
            Some(Ok(Embedded::Binary))
        );
        assert_eq!(
            ct("application/vnd.kafka.text.v2+json"),
            Some(Ok(Embedded::Text))
        );
        assert_eq!(ct("application/vnd.kafka.avro.v2+json"), Some(Err(415)));
        assert_eq!(ct("application/vnd.kafka.protobuf.v2+json"), Some(Err(415)));
        assert_eq!(
            ct("application/vnd.kafka.jsonschema.v2+json"),
            Some(Err(415))
        );
        assert_eq!(ct("application/vnd.kafka.v2+json"), Some(Err(415)));
        assert_eq!(ct("application/json"), None);
        assert_eq!(ct("text/plain"), None);
    }

    #[test]
    fn json_records_keep_their_text_without_whitespace() {
        let body =
            br#"{"records":[{"key":"somekey","value":{"foo": "bar \" baz", "n" : [1, 2.50]}},
            {"value":53.5},{"key":{"id":7},"value":"x","partition":2}]}"#;
        let r = parse(Embedded::Json, body, -1).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].key.as_deref(), Some(&b"\"somekey\""[..]));
        assert_eq!(r[0].value, br#"{"foo":"bar \" baz","n":[1,2.50]}"#);
        assert_eq!(r[0].partition, -1);
        assert_eq!((r[1].key.as_deref(), &r[1].value[..]), (None, &b"53.5"[..]));
        assert_eq!(r[2].key.as_deref(), Some(&br#"{"id":7}"#[..]));
        assert_eq!(r[2].partition, 2);
    }

    #[test]
    fn binary_and_text_records_and_strimzi_headers() {
        let body = br#"{"records":[{"key":"a2V5","value":"ZWR3YXJkdGhldGhyZWVsZWdnZWRjYXQ=",
            "headers":[{"key":"h1","value":"QXBhY2hlIEthZmth"},{"name":"h2","value":"eA"}]}]}"#;
        let r = parse(Embedded::Binary, body, 1).unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(r[0].value, b"edwardthethreeleggedcat");
        assert_eq!(r[0].partition, 1);
        assert_eq!(
            r[0].headers,
            vec![
                (b"h1".to_vec(), b"Apache Kafka".to_vec()),
                (b"h2".to_vec(), b"x".to_vec())
            ]
        );
        let t = parse(
            Embedded::Text,
            br#"{"records":[{"key":"k","value":"caf\u00e9"}]}"#,
            -1,
        )
        .unwrap();
        assert_eq!(t[0].value, "café".as_bytes());
        assert_eq!(t[0].key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn bad_bodies_get_400_or_422_with_a_reason() {
        let st = |fmt, b: &str, p| parse(fmt, b.as_bytes(), p).unwrap_err().status().0;
        use Embedded::*;
        assert_eq!(st(Json, "{\"records\":[", -1), 400);
        assert_eq!(st(Json, "not json", -1), 400);
        assert_eq!(st(Json, "{}", -1), 422);
        assert_eq!(st(Json, "{\"records\":[]}", -1), 422);
        assert_eq!(st(Json, "{\"records\":{}}", -1), 422);
        assert_eq!(st(Json, "{\"records\":[{\"key\":1}]}", -1), 422);
        assert_eq!(st(Json, "{\"records\":[{\"value\":null}]}", -1), 422);
        assert_eq!(
            st(Json, "{\"records\":[{\"value\":1,\"partition\":-1}]}", -1),
            422
        );
        assert_eq!(
            st(Json, "{\"records\":[{\"value\":1,\"partition\":3}]}", 2),
            422
        );
        assert_eq!(st(Binary, "{\"records\":[{\"value\":\"***\"}]}", -1), 422);
        assert_eq!(st(Binary, "{\"records\":[{\"value\":{}}]}", -1), 422);
        assert_eq!(st(Text, "{\"records\":[{\"value\":5}]}", -1), 422);
        assert_eq!(
            st(Binary, "{\"records\":[{\"value\":\"eA==\",\"headers\":[{\"key\":\"h\",\"value\":\"%\"}]}]}", -1),
            422
        );
        // One bad record fails the whole request: nothing is half-produced.
        assert_eq!(
            st(Json, "{\"records\":[{\"value\":1},{\"key\":2}]}", -1),
            422
        );
    }

    #[test]
    fn answers_in_confluents_shape() {
        let mut out = Vec::new();
        answer(&mut out, exact(&[(1, 40), (1, 41), (1, 42)]));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"offsets\":[{\"partition\":1,\"offset\":40,\"error_code\":null,\"error\":null},\
             {\"partition\":1,\"offset\":41,\"error_code\":null,\"error\":null},\
             {\"partition\":1,\"offset\":42,\"error_code\":null,\"error\":null}],\
             \"key_schema_id\":null,\"value_schema_id\":null}\n"
        );
        let queued: Vec<_> = requested(&[-1, 2]).collect();
        let none = Offset {
            partition: None,
            offset: None,
        };
        let two = Offset {
            partition: Some(2),
            offset: None,
        };
        assert_eq!(queued, [none, two]);
        let mut e = Vec::new();
        error_body(&mut e, 422, "bad \"x\"");
        assert_eq!(e, b"{\"error_code\":42201,\"message\":\"bad \\\"x\\\"\"}\n");
    }
}
