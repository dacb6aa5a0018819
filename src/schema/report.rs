//! The answer to a request its topic's schema refused: which records and why, with JSON
//! pointers, in the shape REST clients parse (`error_code`, `message`) plus the details:
//! `{"error_code":42201,"message":"...","topic":"orders","invalid_records":2,
//! "errors":[{"record":3,"path":"/price","reason":"..."}]}`.

use super::judge::Problem;
use serde::Serialize;

/// Problems listed in one answer (the total is always given).
pub const LISTED: usize = 10;

#[derive(Serialize)]
struct Entry<'a> {
    record: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    key: bool,
    path: &'a str,
    reason: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error_code: u32,
    message: String,
    topic: &'a str,
    records: usize,
    invalid_records: usize,
    errors: Vec<Entry<'a>>,
}

/// The JSON body of a refusal with `status` (400 or 422).
pub fn body(
    status: u16,
    error_code: u32,
    topic: &str,
    records: usize,
    problems: &[Problem],
) -> Vec<u8> {
    let first = problems.first();
    let message = match first {
        Some(p) if status == 400 => format!("the body is not JSON: {}", p.bad.reason()),
        _ => format!(
            "{} of {records} records do not match the schema of topic {topic:?}; nothing was produced",
            problems.len()
        ),
    };
    let b = Body {
        error_code,
        message,
        topic,
        records,
        invalid_records: problems.len(),
        errors: problems
            .iter()
            .take(LISTED)
            .map(|p| Entry {
                record: p.record,
                key: p.key,
                path: p.bad.path(),
                reason: p.bad.reason(),
            })
            .collect(),
    };
    let mut out = serde_json::to_vec(&b).unwrap_or_default();
    out.push(b'\n');
    out
}
