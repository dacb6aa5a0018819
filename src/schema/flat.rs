//! A one-pass fast path for the schemas most topics have: typed values with length and
//! range limits, objects with `properties`, `required` and `additionalProperties: false`
//! (nested as deep as the schema goes). Judging a 256 B record on the tape costs a
//! serde_json parse plus the validator's keyword walk (about 0.5 us of the executor's
//! ~1 us per NDJSON line); this scans the record once, checking as it goes.
//!
//! It only ever says "surely valid". Anything it does not handle exactly as the validator
//! does (an escape in a string, a number it cannot compare exactly, any failure at all)
//! is "not sure", and the record then goes through the full path, which
//! decides and explains. So a mistake here can only be a wrong acceptance, and
//! `tests.rs` compares it with the full path on random records to show there is none;
//! `tests/schema_suite.rs` runs the official suite through both.

use serde_json::{Map, Value};

/// Types as a bit set (`type` may list several).
const NULL: u8 = 1;
const BOOL: u8 = 2;
/// A number with no fractional part ("integer"); `NUMBER` includes it.
const INTEGER: u8 = 4;
const NUMBER: u8 = 8;
const STRING: u8 = 16;
const ARRAY: u8 = 32;
const OBJECT: u8 = 64;
const ANY: u8 = 127;

/// Keywords that change nothing in validation.
const ANNOTATIONS: [&str; 8] = [
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Drafts whose meaning of these keywords is the one implemented here (draft-04 differs:
/// boolean `exclusiveMinimum`, and 1.0 is not an integer). No `$schema` means 2020-12.
const DRAFTS: [&str; 6] = [
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema#",
    "http://json-schema.org/draft-07/schema",
    "http://json-schema.org/draft-06/schema#",
    "http://json-schema.org/draft-06/schema",
];

/// Property lists longer than this (the `seen` and `required` bit sets) use the full path.
const MAX_PROPS: usize = 64;
/// Nesting the scanner follows before it gives up (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;
/// Schema nesting compiled (deeper schemas use the full path).
const MAX_SCHEMA_DEPTH: usize = 16;
/// Limits compared in f64 must be exact there.
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53

/// One schema (the root, or a property's).
#[derive(Debug, Default)]
pub struct Flat {
    types: u8,
    min_len: Option<u64>,
    max_len: Option<u64>,
    /// (limit, exclusive)
    lo: Option<(f64, bool)>,
    hi: Option<(f64, bool)>,
    /// An object's known members, their schemas, and which must be there (bits).
    props: Vec<(Box<[u8]>, Flat)>,
    required: u64,
    /// `additionalProperties: false`.
    closed: bool,
}

impl Flat {
    /// The fast form of `schema`, or `None` when it uses anything else.
    pub fn compile(schema: &Value) -> Option<Flat> {
        if let Some(d) = schema.get("$schema") {
            if !DRAFTS.contains(&d.as_str()?) {
                return None;
            }
        }
        Flat::node(schema, 0)
    }

    fn node(schema: &Value, depth: usize) -> Option<Flat> {
        let mut f = Flat {
            types: ANY,
            ..Flat::default()
        };
        let o: &Map<String, Value> = match schema {
            Value::Bool(true) => return Some(f),
            Value::Object(o) if depth < MAX_SCHEMA_DEPTH => o,
            _ => return None,
        };
        for (k, v) in o {
            match k.as_str() {
                "type" => f.types = types(v)?,
                "minLength" => f.min_len = Some(v.as_u64()?),
                "maxLength" => f.max_len = Some(v.as_u64()?),
                "minimum" => f.lo = Some((limit(v)?, false)),
                "exclusiveMinimum" => f.lo = Some((limit(v)?, true)),
                "maximum" => f.hi = Some((limit(v)?, false)),
                "exclusiveMaximum" => f.hi = Some((limit(v)?, true)),
                "properties" => {
                    for (name, s) in v.as_object()? {
                        f.props
                            .push((name.as_bytes().into(), Flat::node(s, depth + 1)?));
                    }
                }
                "additionalProperties" => f.closed = !v.as_bool()?,
                "required" => {}
                "$schema" | "$id" if depth == 0 => {}
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        // Both `minimum` and `exclusiveMinimum` (or the two maxima): the full path.
        let both = |a: &str, b: &str| o.contains_key(a) && o.contains_key(b);
        if both("minimum", "exclusiveMinimum") || both("maximum", "exclusiveMaximum") {
            return None;
        }
        if let Some(r) = o.get("required") {
            for name in r.as_array()? {
                let name = name.as_str()?.as_bytes();
                let i = match f.props.iter().position(|(n, _)| &n[..] == name) {
                    Some(i) => i,
                    // Required but not allowed: no record passes; the full path says why.
                    None if f.closed => return None,
                    None => {
                        f.props
                            .push((name.into(), Flat::node(&Value::Bool(true), 0)?));
                        f.props.len() - 1
                    }
                };
                if i < MAX_PROPS {
                    f.required |= 1 << i;
                }
            }
        }
        (f.props.len() <= MAX_PROPS).then_some(f)
    }

    /// Whether `record` is JSON that this schema surely accepts. `false` means "not sure".
    pub fn surely_valid(&self, record: &[u8]) -> bool {
        let mut s = Scan { b: record, i: 0 };
        s.ws();
        self.value(&mut s, 0).is_some() && {
            s.ws();
            s.i == record.len()
        }
    }

    /// Checks the value at the scanner against this schema, consuming it.
    fn value(&self, s: &mut Scan, depth: usize) -> Option<()> {
        match s.peek()? {
            b'"' => {
                allows(self.types, STRING)?;
                let chars = s.string()?;
                (self.min_len.is_none_or(|m| chars >= m) && self.max_len.is_none_or(|m| chars <= m))
                    .then_some(())
            }
            b'-' | b'0'..=b'9' => {
                let (n, integer) = s.number()?;
                let t = if integer { INTEGER | NUMBER } else { NUMBER };
                (self.types & t != 0
                    && self.lo.is_none_or(|(l, x)| if x { n > l } else { n >= l })
                    && self.hi.is_none_or(|(h, x)| if x { n < h } else { n <= h }))
                .then_some(())
            }
            b'{' if self.types & OBJECT != 0 => self.object(s, depth),
            _ if self.types == ANY => s.any(depth),
            b'[' => allows(self.types, ARRAY).and_then(|_| s.any(depth)),
            b't' | b'f' => allows(self.types, BOOL).and_then(|_| s.any(depth)),
            b'n' => allows(self.types, NULL).and_then(|_| s.any(depth)),
            _ => None,
        }
    }

    fn object(&self, s: &mut Scan, depth: usize) -> Option<()> {
        s.i += 1; // {
        let mut seen = 0u64;
        s.ws();
        if s.peek()? == b'}' {
            s.i += 1;
        } else {
            loop {
                let start = s.i + 1;
                s.string()?;
                let name = &s.b[start..s.i - 1];
                s.ws();
                s.expect(b':')?;
                s.ws();
                match self.props.iter().position(|(n, _)| &n[..] == name) {
                    Some(i) => {
                        // A repeated key's every value is checked: whichever the parser
                        // keeps passes.
                        seen |= 1 << i;
                        self.props[i].1.value(s, depth + 1)?;
                    }
                    None if self.closed => return None,
                    None => s.any(depth + 1)?,
                }
                s.ws();
                match s.next()? {
                    b',' => s.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        (self.required & !seen == 0).then_some(())
    }
}

/// Whether the type set `types` has `t`.
fn allows(types: u8, t: u8) -> Option<()> {
    (types & t != 0).then_some(())
}

fn types(v: &Value) -> Option<u8> {
    let one = |t: &Value| match t.as_str()? {
        "null" => Some(NULL),
        "boolean" => Some(BOOL),
        "integer" => Some(INTEGER),
        "number" => Some(NUMBER | INTEGER),
        "string" => Some(STRING),
        "array" => Some(ARRAY),
        "object" => Some(OBJECT),
        _ => None,
    };
    match v {
        Value::Array(a) => a.iter().try_fold(0, |acc, t| Some(acc | one(t)?)),
        t => one(t),
    }
}

/// A numeric limit, when f64 holds it exactly (then comparing in f64 is exact: values
/// are exact too, see `Scan::number`).
fn limit(v: &Value) -> Option<f64> {
    let f = v.as_f64()?;
    (f.abs() <= EXACT).then_some(f)
}

/// Powers of ten exact in f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A cursor over one record. Every method returns `None` for "not sure".
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A string without escapes, from its opening quote to past its closing one; its
    /// length in characters, as `minLength` counts them.
    fn string(&mut self) -> Option<u64> {
        self.expect(b'"')?;
        let rest = &self.b[self.i..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' {
            return None;
        }
        let s = &rest[..end];
        self.i += end + 1;
        // Printable ASCII (0x20..0x80) throughout? A max over all bytes, not a search
        // that stops early: it vectorizes, and most strings are all ASCII.
        if s.iter().fold(0, |m: u8, &c| m.max(c.wrapping_sub(0x20))) < 0x60 {
            return Some(s.len() as u64);
        }
        if s.iter().any(|&c| c < 0x20) {
            return None;
        }
        Some(std::str::from_utf8(s).ok()?.chars().count() as u64)
    }

    /// A number, as serde_json reads it: its value and whether the validator takes it for
    /// an integer. Only where that value is exact (at most 15 digits, a power of ten
    /// within 10^22): a single correctly rounded operation, so every correct parser
    /// agrees with it.
    fn number(&mut self) -> Option<(f64, bool)> {
        let neg = self.peek() == Some(b'-');
        self.i += neg as usize;
        let mut digits = 0u32;
        let mut m = 0u64;
        let mut digit = |s: &mut Self| match s.peek() {
            Some(c @ b'0'..=b'9') => {
                s.i += 1;
                if m != 0 || c != b'0' {
                    m = m * 10 + u64::from(c - b'0');
                    digits += 1;
                }
                digits <= 15
            }
            _ => false,
        };
        // The integer part: 0, or digits not starting with 0.
        let first = self.peek()?;
        if first == b'0' {
            self.i += 1;
        } else if first.is_ascii_digit() {
            while digit(self) {}
        } else {
            return None;
        }
        let mut exp = 0i32;
        let mut plain = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            plain = false;
            let at = self.i;
            while digit(self) {
                exp -= 1;
            }
            if self.i == at {
                return None;
            }
        }
        if digits > 15 || self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            plain = false;
            let sign = match self.peek()? {
                b'-' => -1,
                b'+' => 1,
                _ => 0,
            };
            self.i += (sign != 0) as usize;
            let at = self.i;
            let mut e = 0i32;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                self.i += 1;
                e = e.checked_mul(10)?.checked_add(i32::from(c - b'0'))?;
            }
            if self.i == at {
                return None;
            }
            exp = exp.checked_add(if sign < 0 { -e } else { e })?;
        }
        let p = *POW10.get(exp.unsigned_abs() as usize)?;
        let v = if exp >= 0 { m as f64 * p } else { m as f64 / p };
        let v = if neg { -v } else { v };
        Some((v, plain || v.fract() == 0.0))
    }

    /// Any JSON value, its grammar checked (strings without escapes only).
    fn any(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let (open, close) = match self.peek()? {
            b'"' => return self.string().map(drop),
            b'-' | b'0'..=b'9' => return self.number().map(drop),
            b't' => return self.word(b"true"),
            b'f' => return self.word(b"false"),
            b'n' => return self.word(b"null"),
            b'[' => (b'[', b']'),
            b'{' => (b'{', b'}'),
            _ => return None,
        };
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if open == b'{' {
                self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
            }
            self.any(depth + 1)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(w).then(|| self.i += w.len())
    }
}
