//! A record's JSON as a flat tape over its bytes, for the validator: judging a record
//! then allocates nothing (a `serde_json::Value` costs an allocation per key, string and
//! container, and building and dropping it was a third of an executor's time under
//! NDJSON with a schema: benches/results/issue34/profile-ndjson.txt).
//!
//! serde_json still parses (its grammar, its 128-level nesting limit, its errors); this
//! only records what it saw. jsonschema validates the tape through its `Json` traits
//! (`jsonschema::options_for::<Tape>()`). Nodes are laid out in document order: a
//! container's slot says how many members it has and where its subtree ends; an object's
//! members are a key slot followed by the value's subtree.

use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

/// One node of the tape. Strings are byte ranges of the record (`Str`) or, when they had
/// escapes, indexes into `Doc::owned` (`Owned`).
#[derive(Debug, Clone)]
enum Slot {
    Null,
    Bool(bool),
    Num(Number),
    Str(u32, u32),
    Owned(u32),
    /// `len` elements; the subtree ends before slot `end`.
    Arr {
        len: u32,
        end: u32,
    },
    /// `len` members (key, value); the subtree ends before slot `end`.
    Obj {
        len: u32,
        end: u32,
    },
}

/// The tape of one record, borrowed for one validation.
pub struct Doc<'a> {
    /// The record: valid UTF-8 once serde_json parsed all of it (outside strings JSON is
    /// ASCII, inside them serde_json checked), so strings are slices of it.
    input: &'a str,
    slots: &'a [Slot],
    owned: &'a [String],
}

impl<'a> Doc<'a> {
    fn end(&self, i: u32) -> u32 {
        match self.slots[i as usize] {
            Slot::Arr { end, .. } | Slot::Obj { end, .. } => end,
            _ => i + 1,
        }
    }

    fn str(&self, i: u32) -> Option<&'a str> {
        match self.slots[i as usize] {
            // Ranges of &strs serde_json handed out: on character boundaries.
            Slot::Str(s, e) => self.input.get(s as usize..e as usize),
            Slot::Owned(k) => Some(&self.owned[k as usize]),
            _ => None,
        }
    }

    pub fn root(&'a self) -> TapeNode<'a> {
        TapeNode::At(self, 0)
    }
}

/// The buffers a tape is built in, kept per thread so their capacity is reused.
#[derive(Default)]
struct Buffers {
    slots: Vec<Slot>,
    owned: Vec<String>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Parses `input` into a tape and calls `f` with it; `Err` is serde_json's reason.
pub fn with_doc<T>(input: &[u8], f: impl FnOnce(&Doc<'_>) -> T) -> Result<T, serde_json::Error> {
    BUFFERS.with(|b| {
        // A validation that judges a record inside another one's (it cannot: keywords do not
        // parse) would find the buffers borrowed: parse into fresh ones then.
        let mut fresh;
        let mut held = b.try_borrow_mut().ok();
        let bufs = match held.as_deref_mut() {
            Some(x) => x,
            None => {
                fresh = Buffers::default();
                &mut fresh
            }
        };
        bufs.slots.clear();
        bufs.owned.clear();
        let mut de = serde_json::Deserializer::from_slice(input);
        Seed {
            input,
            out: &mut *bufs,
        }
        .deserialize(&mut de)?;
        de.end()?;
        let text = std::str::from_utf8(input)
            .map_err(|_| <serde_json::Error as serde::de::Error>::custom("invalid UTF-8"))?;
        let doc = Doc {
            input: text,
            slots: &bufs.slots,
            owned: &bufs.owned,
        };
        Ok(f(&doc))
    })
}

/// Pushes one value's subtree.
struct Seed<'i, 'b> {
    input: &'i [u8],
    out: &'b mut Buffers,
}

impl Seed<'_, '_> {
    fn string(&mut self, s: &str, borrowed: bool) {
        let base = self.input.as_ptr() as usize;
        let at = s.as_ptr() as usize;
        let slot = if borrowed && at >= base && at + s.len() <= base + self.input.len() {
            Slot::Str((at - base) as u32, (at - base + s.len()) as u32)
        } else {
            self.out.owned.push(s.to_owned());
            Slot::Owned(self.out.owned.len() as u32 - 1)
        };
        self.out.slots.push(slot);
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.slots.push(Slot::Null);
        Ok(())
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.slots.push(Slot::Bool(v));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.slots.push(Slot::Num(v.into()));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.slots.push(Slot::Num(v.into()));
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        let n = Number::from_f64(v).ok_or_else(|| E::custom("number out of range"))?;
        self.out.slots.push(Slot::Num(n));
        Ok(())
    }
    fn visit_borrowed_str<E>(mut self, v: &'de str) -> Result<(), E> {
        self.string(v, true);
        Ok(())
    }
    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.string(v, false);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.out.slots.len();
        self.out.slots.push(Slot::Null);
        let mut len = 0u32;
        while seq
            .next_element_seed(Seed {
                input: self.input,
                out: &mut *self.out,
            })?
            .is_some()
        {
            len += 1;
        }
        let end = self.out.slots.len() as u32;
        self.out.slots[at] = Slot::Arr { len, end };
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.out.slots.len();
        self.out.slots.push(Slot::Null);
        let mut len = 0u32;
        let input = self.input;
        while map
            .next_key_seed(Seed {
                input,
                out: &mut *self.out,
            })?
            .is_some()
        {
            map.next_value_seed(Seed {
                input,
                out: &mut *self.out,
            })?;
            len += 1;
        }
        let end = self.out.slots.len() as u32;
        self.out.slots[at] = Slot::Obj { len, end };
        Ok(())
    }
}

/// The representation jsonschema validates.
pub struct Tape;

impl Json for Tape {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();
    /// A tree: no node is its own descendant.
    const ACYCLIC: bool = true;
    /// A lookup scans the members (records have few): one pass over them is cheaper
    /// than a lookup per property.
    const KEYS_PER_LOOKUP: usize = 16;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>(_: &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        f(TapeNode::Text(string))
    }
}

/// A node: a slot of a tape, or a loose string (property names for `propertyNames`).
#[derive(Clone, Copy)]
pub enum TapeNode<'a> {
    At(&'a Doc<'a>, u32),
    Text(&'a str),
}

pub struct TapeNumber<'a>(&'a Number);

impl JsonNumber for TapeNumber<'_> {
    fn as_u64(&self) -> Option<u64> {
        self.0.as_u64()
    }
    fn as_i64(&self) -> Option<i64> {
        self.0.as_i64()
    }
    fn as_f64(&self) -> Option<f64> {
        self.0.as_f64()
    }
    fn as_str(&self) -> Cow<'_, str> {
        Cow::Owned(self.0.to_string())
    }
    fn to_number(&self) -> Cow<'_, Number> {
        Cow::Borrowed(self.0)
    }
    fn is_written_as_integer(&self) -> bool {
        self.0.is_u64() || self.0.is_i64()
    }
}

impl<'a> TapeNode<'a> {
    fn slot(&self) -> Option<(&'a Doc<'a>, u32, &'a Slot)> {
        match *self {
            TapeNode::At(d, i) => Some((d, i, &d.slots[i as usize])),
            TapeNode::Text(_) => None,
        }
    }
}

impl<'a> Node<'a, Tape> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = TapeNumber<'a>;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        match self.slot()? {
            (d, i, &Slot::Obj { len, end }) => Some(TapeObject { d, i, len, end }),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<TapeArray<'a>> {
        match self.slot()? {
            (d, i, &Slot::Arr { len, end }) => Some(TapeArray { d, i, len, end }),
            _ => None,
        }
    }
    fn as_string(&self) -> Option<Cow<'a, str>> {
        match *self {
            TapeNode::Text(s) => Some(Cow::Borrowed(s)),
            TapeNode::At(d, i) => d.str(i).map(Cow::Borrowed),
        }
    }
    fn as_number(&self) -> Option<TapeNumber<'a>> {
        match self.slot()? {
            (_, _, Slot::Num(n)) => Some(TapeNumber(n)),
            _ => None,
        }
    }
    fn as_boolean(&self) -> Option<bool> {
        match self.slot()? {
            (_, _, &Slot::Bool(b)) => Some(b),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self.slot(), Some((_, _, Slot::Null)))
    }
    fn json_type(&self) -> JsonType {
        match self.slot() {
            None => JsonType::String,
            Some((_, _, s)) => match s {
                Slot::Null => JsonType::Null,
                Slot::Bool(_) => JsonType::Boolean,
                Slot::Num(_) => JsonType::Number,
                Slot::Str(..) | Slot::Owned(_) => JsonType::String,
                Slot::Arr { .. } => JsonType::Array,
                Slot::Obj { .. } => JsonType::Object,
            },
        }
    }
    /// Cold paths only (errors, `const`/`enum`, `uniqueItems`).
    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(match self.slot() {
            None => Value::String(self.as_string().unwrap_or_default().into_owned()),
            Some((_, _, Slot::Null)) => Value::Null,
            Some((_, _, &Slot::Bool(b))) => Value::Bool(b),
            Some((_, _, Slot::Num(n))) => Value::Number(n.clone()),
            Some((_, _, Slot::Str(..) | Slot::Owned(_))) => {
                Value::String(self.as_string().unwrap_or_default().into_owned())
            }
            Some((_, _, Slot::Arr { .. })) => Value::Array(
                self.as_array()
                    .into_iter()
                    .flat_map(|a| a.elements())
                    .map(|e| e.to_value().into_owned())
                    .collect(),
            ),
            Some((_, _, Slot::Obj { .. })) => Value::Object(
                self.as_object()
                    .into_iter()
                    .flat_map(|o| o.members())
                    .map(|(k, v)| (k.to_owned(), v.to_value().into_owned()))
                    .collect(),
            ),
        })
    }
    fn identity(&self) -> Option<NodeIdentity> {
        match *self {
            TapeNode::At(d, i) => Some(NodeIdentity::tagged(d as *const Doc as usize, i)),
            TapeNode::Text(s) => Some(NodeIdentity::tagged(s.as_ptr() as usize, u32::MAX)),
        }
    }
}

pub struct TapeObject<'a> {
    d: &'a Doc<'a>,
    i: u32,
    len: u32,
    end: u32,
}

impl<'a> Object<'a, Tape> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.len as usize
    }
    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        self.members().find(|(k, _)| *k == &**key).map(|(_, v)| v)
    }
    fn members(&self) -> Members<'a> {
        Members {
            d: self.d,
            at: self.i + 1,
            end: self.end,
        }
    }
}

/// An object's members in document order.
pub struct Members<'a> {
    d: &'a Doc<'a>,
    at: u32,
    end: u32,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let key = self.d.str(self.at).unwrap_or("");
        let value = self.at + 1;
        self.at = self.d.end(value);
        Some((key, TapeNode::At(self.d, value)))
    }
}

pub struct TapeArray<'a> {
    d: &'a Doc<'a>,
    i: u32,
    len: u32,
    end: u32,
}

impl<'a> Array<'a, Tape> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.len as usize
    }
    fn elements(&self) -> Elements<'a> {
        Elements {
            d: self.d,
            at: self.i + 1,
            end: self.end,
        }
    }
}

/// An array's elements in order.
pub struct Elements<'a> {
    d: &'a Doc<'a>,
    at: u32,
    end: u32,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;
    fn next(&mut self) -> Option<TapeNode<'a>> {
        if self.at >= self.end {
            return None;
        }
        let n = TapeNode::At(self.d, self.at);
        self.at = self.d.end(self.at);
        Some(n)
    }
}
