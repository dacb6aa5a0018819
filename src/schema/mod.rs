//! JSON Schemas per topic (`[topic.NAME]`), checked at the edge, where the sender still
//! gets the answer. Compiled with the rest of the policy (`auth::Policy`: at start, in
//! `--check-config`, and again on SIGHUP, where an invalid file keeps the old ones).
//!
//! Bounded work per request: bodies are bounded by `max_body_bytes`, serde_json refuses
//! nesting deeper than 128, and `pattern` runs on the `regex` engine (linear time, no
//! backtracking: a schema whose pattern needs look-around or back-references is refused
//! when it loads, never a stalled executor when a body arrives).

use crate::config::{Config, OnInvalid};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub mod flat;
pub mod judge;
pub mod metrics;
pub mod report;
pub mod tape;

/// Largest schema file read (a schema is configuration, not data).
const MAX_SCHEMA_FILE: u64 = 4 << 20;

/// One schema file, compiled up to three times: the one-pass form when the schema is
/// simple enough (`flat.rs`: it can only say "surely valid"), for the tape (`tape.rs`:
/// judging allocates nothing) and for `serde_json::Value` (an invalid record's error:
/// its pointer and reason).
pub struct Compiled {
    flat: Option<flat::Flat>,
    fast: jsonschema::Validator<tape::Tape>,
    validator: jsonschema::Validator,
    pub file: PathBuf,
    /// The first 16 hex digits of the file's SHA-256 (metrics, dead-letter headers).
    pub hash: String,
    /// When it was compiled (Unix seconds).
    pub loaded_unix: f64,
}

/// Why a record does not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// The record is not JSON: serde_json's reason.
    NotJson(String),
    /// It is JSON and the schema refuses it: where (a JSON pointer into the record) and
    /// why (the first error the validator found).
    Invalid { path: String, reason: String },
}

impl Bad {
    pub fn path(&self) -> &str {
        match self {
            Bad::NotJson(_) => "",
            Bad::Invalid { path, .. } => path,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Bad::NotJson(e) => format!("not JSON: {e}"),
            Bad::Invalid { reason, .. } => reason.clone(),
        }
    }
}

impl Compiled {
    /// Reads and compiles `file`; an error names the file and the position (line and
    /// column for JSON syntax, a JSON pointer into the schema for a schema error).
    fn load(file: &Path, old: Option<&Arc<Compiled>>) -> Result<Arc<Compiled>, String> {
        let name = file.display();
        let meta = std::fs::metadata(file).map_err(|e| format!("{name}: {e}"))?;
        if meta.len() > MAX_SCHEMA_FILE {
            return Err(format!("{name}: larger than {MAX_SCHEMA_FILE} bytes"));
        }
        let text = std::fs::read(file).map_err(|e| format!("{name}: {e}"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &text);
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // The same file as before: keep its validator (and load time).
        if let Some(o) = old.filter(|o| o.hash == hash && o.file == file) {
            return Ok(o.clone());
        }
        let schema: Value = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{name}: not JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            )
        })?;
        let mut c = Compiled::from_schema(&schema).map_err(|e| format!("{name}: {e}"))?;
        c.file = file.to_path_buf();
        c.hash = hash;
        Ok(Arc::new(c))
    }

    /// Compiles a schema as ingestd runs them: formats checked, patterns on the
    /// linear-time `regex` engine, `$ref` within the document only (no retrieval).
    /// `tests/schema_suite.rs` runs the official test suite through this.
    pub fn from_schema(schema: &Value) -> Result<Compiled, String> {
        let refused = |e: jsonschema::ValidationError| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".into() } else { at };
            format!("invalid schema at {at}: {e}")
        };
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(schema)
            .map_err(refused)?;
        let fast = jsonschema::options_for::<tape::Tape>()
            .should_validate_formats(true)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(schema)
            .map_err(refused)?;
        Ok(Compiled {
            flat: flat::Flat::compile(schema),
            fast,
            validator,
            file: PathBuf::new(),
            hash: String::new(),
            loaded_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })
    }

    /// Whether the one-pass form applies to this schema.
    pub fn has_flat(&self) -> bool {
        self.flat.is_some()
    }

    /// Whether a parsed value passes.
    pub fn is_valid(&self, v: &Value) -> bool {
        self.validator.is_valid(v)
    }

    /// Judges one record's bytes: in one pass where the schema allows, else (or when that
    /// pass is not sure) on the tape, and only for an invalid record once more as a
    /// `Value`, for its error.
    pub fn check(&self, bytes: &[u8]) -> Result<(), Bad> {
        if self.flat.as_ref().is_some_and(|f| f.surely_valid(bytes)) {
            return Ok(());
        }
        self.check_full(bytes)
    }

    /// `check` without the one-pass form (tests compare the two).
    pub fn check_full(&self, bytes: &[u8]) -> Result<(), Bad> {
        match tape::with_doc(bytes, |d| self.fast.is_valid(d.root())) {
            Ok(true) => Ok(()),
            Ok(false) => self.explain(bytes),
            Err(e) => Err(Bad::NotJson(e.to_string())),
        }
    }

    /// Why a record the tape judged invalid is: the first error, with its pointer.
    fn explain(&self, bytes: &[u8]) -> Result<(), Bad> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| Bad::NotJson(e.to_string()))?;
        if self.validator.is_valid(&v) {
            // The two representations disagree: a bug, and never a wrong refusal.
            tracing::error!("schema: the tape judged a record invalid that the Value did not");
            return Ok(());
        }
        let e = self
            .validator
            .iter_errors(&v)
            .next()
            .map(|e| (e.instance_path().to_string(), e.to_string()));
        let (path, reason) = e.unwrap_or_default();
        Err(Bad::Invalid {
            path,
            reason: clip(reason, 200),
        })
    }
}

/// `s` cut to at most `max` bytes at a character boundary (a reason quotes the value,
/// which may be a megabyte of string).
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// Records judged per executor, by outcome (`OUTCOMES`).
#[repr(align(64))]
#[derive(Default)]
pub struct Counters(pub [AtomicU64; 3]);

/// Outcome labels of `ingestd_schema_records_total`, by `Counters` index.
pub const OUTCOMES: [&str; 3] = ["valid", "rejected", "dead_lettered"];
pub const VALID: usize = 0;
pub const REJECTED: usize = 1;
pub const DEAD_LETTERED: usize = 2;

/// One topic's checks, compiled.
pub struct TopicSchema {
    pub topic: Box<str>,
    pub value: Option<Arc<Compiled>>,
    pub key: Option<Arc<Compiled>>,
    pub on_invalid: OnInvalid,
    pub dead_letter: Option<Box<str>>,
    /// Per executor; carried over a reload by topic name.
    pub stats: Arc<[Counters]>,
}

impl TopicSchema {
    pub fn count(&self, executor: usize, outcome: usize, n: usize) {
        if n > 0 {
            if let Some(c) = self.stats.get(executor) {
                c.0[outcome].fetch_add(n as u64, Relaxed);
            }
        }
    }

    pub fn total(&self, outcome: usize) -> u64 {
        self.stats.iter().map(|c| c.0[outcome].load(Relaxed)).sum()
    }

    /// `file#sha256:hash` of the value schema (else the key schema): dead-letter headers.
    pub fn schema_id(&self) -> String {
        let c = self.value.as_ref().or(self.key.as_ref());
        c.map_or_else(String::new, |c| {
            format!("{}#sha256:{}", c.file.display(), c.hash)
        })
    }
}

/// Every topic's checks. Few topics have one: a linear search over their names is as
/// fast as a hash and allocates nothing.
#[derive(Default)]
pub struct Schemas {
    pub topics: Vec<TopicSchema>,
}

/// Errors from `Schemas::build` start with this (the reload counts them apart).
const PREFIX: &str = "topic.";

pub fn is_schema_error(e: &str) -> bool {
    e.starts_with(PREFIX)
}

impl Schemas {
    /// Compiles `cfg`'s schemas; `old`: those they replace (counters carry over by topic,
    /// an unchanged file keeps its validator).
    pub fn build(cfg: &Config, executors: usize, old: Option<&Schemas>) -> Result<Schemas, String> {
        let mut topics = Vec::new();
        for (name, t) in &cfg.topic {
            let prev = old.and_then(|o| o.get(name.as_bytes()));
            let load = |f: &Option<PathBuf>, p: Option<&Arc<Compiled>>, key: &str| {
                f.as_deref()
                    .map(|f| Compiled::load(f, p))
                    .transpose()
                    .map_err(|e| format!("{PREFIX}{name}.{key}: {e}"))
            };
            topics.push(TopicSchema {
                topic: name.as_str().into(),
                value: load(&t.schema, prev.and_then(|p| p.value.as_ref()), "schema")?,
                key: load(
                    &t.key_schema,
                    prev.and_then(|p| p.key.as_ref()),
                    "key_schema",
                )?,
                on_invalid: t.on_invalid,
                dead_letter: t.dead_letter_topic.as_deref().map(Into::into),
                stats: prev.map_or_else(
                    || (0..executors).map(|_| Counters::default()).collect(),
                    |p| p.stats.clone(),
                ),
            });
        }
        Ok(Schemas { topics })
    }

    pub fn get(&self, topic: &[u8]) -> Option<&TopicSchema> {
        self.topics.iter().find(|t| t.topic.as_bytes() == topic)
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests;
