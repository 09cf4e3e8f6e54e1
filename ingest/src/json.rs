//! Reading a `/collect` body's JSON so that one odd value never costs the rest: each event's
//! members in the order sent (duplicates included, as a query string's parameters are), numbers
//! as the text sent, a lone UTF-16 surrogate escape replaced rather than refused, and a string
//! holding bytes that are not UTF-8 marked (for its member to be cut) rather than refusing the
//! body. A leaf: no other module of the crate.
//!
//! It checks the whole body's syntax before anything is read from it (`serde_json`, with its
//! `raw_value` feature: each value is kept as its source text, found by serde_json's own parser),
//! so a body that is not JSON is refused whole and no event of it is taken. It does not decide what
//! a member means (see `hit::apply_json_object`) nor undo a content coding (see `body`).
//!
//! Why not `serde_json::Value`: it refuses a whole body for one lone surrogate (`"caf\ud83d"`, what
//! a browser's `JSON.stringify` writes for a string cut inside an emoji) or one number beyond
//! `f64` (`1e400`), rounds integers beyond 2^53, keeps only the last of a repeated member, and
//! sorts members by name.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Text read from a JSON string, number or boolean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a> {
    /// The text; a number is its source text (`1e400`, `123456789012345678901234`), a boolean
    /// `true` or `false`.
    pub text: Cow<'a, str>,
    /// How many lone UTF-16 surrogate escapes were replaced by U+FFFD (RFC 8259 §8.2 leaves their
    /// meaning to the receiver).
    pub replaced: usize,
    /// Whether the body held bytes that are not UTF-8 here (each replaced by U+FFFD in `text`):
    /// such a member is cut, as a query parameter that does not decode is.
    pub not_utf8: bool,
}

/// One member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// A string, number or boolean, as text.
    Scalar(Text<'a>),
    /// An object, as its source text: [`members`] reads it when it is wanted.
    Object(&'a str),
    /// An array.
    Array,
}

/// An object's members, in the order sent.
pub type Members<'a> = Vec<(Text<'a>, Value<'a>)>;

/// A `/collect` body as text: the bytes as sent when they are UTF-8 (nearly always, and then
/// borrowed), else with each invalid sequence replaced by U+FFFD and its place noted, so the
/// members it falls in can be cut rather than the whole body refused.
pub struct Body<'a> {
    text: Cow<'a, str>,
    /// Byte offsets in `text` of the replacements.
    not_utf8_at: Vec<usize>,
}

impl<'a> Body<'a> {
    /// Reads `bytes` as text.
    pub fn new(bytes: &'a [u8]) -> Body<'a> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Body {
                text: Cow::Borrowed(text),
                not_utf8_at: Vec::new(),
            };
        }
        let mut text = String::with_capacity(bytes.len() + 16);
        let mut not_utf8_at = Vec::new();
        for chunk in bytes.utf8_chunks() {
            text.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                not_utf8_at.push(text.len());
                text.push('\u{FFFD}');
            }
        }
        Body {
            text: Cow::Owned(text),
            not_utf8_at,
        }
    }

    /// The events of the body, as source text: one object, or each element of an array (an
    /// element that is not an object is returned too, for the caller to count; [`Body::members`]
    /// tells which is which).
    ///
    /// # Errors
    /// When the body is not JSON (RFC 8259: one value; bytes that are not UTF-8 are only allowed
    /// inside strings), or is neither an object nor an array: the error says where or what.
    /// Nesting has no limit: serde_json skips what it is not asked to read without recursing.
    pub fn events(&self) -> Result<Vec<&str>, String> {
        let top: &RawValue = serde_json::from_str(&self.text).map_err(|e| e.to_string())?;
        match top.get().as_bytes().first() {
            Some(b'{') => Ok(vec![top.get()]),
            Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(top.get())
                .map(|items| items.into_iter().map(RawValue::get).collect())
                .map_err(|e| e.to_string()),
            _ => Err("expected an object or an array of objects".into()),
        }
    }

    /// The members of `source` (a value's text from [`Body::events`] or [`Value::Object`]) when
    /// it is an object, `None` when it is any other value.
    pub fn members<'s>(&'s self, source: &'s str) -> Option<Members<'s>> {
        if !source.starts_with('{') {
            return None;
        }
        // The text was checked as JSON when the body was read, so this parse cannot fail.
        let ObjectMembers(raw_members) = serde_json::from_str(source).ok()?;
        Some(
            raw_members
                .into_iter()
                .map(|(k, v)| (self.text_of(k), self.value(v)))
                .collect(),
        )
    }

    fn value<'s>(&'s self, raw: &'s RawValue) -> Value<'s> {
        match raw.get().as_bytes().first() {
            Some(b'n') => Value::Null,
            Some(b'{') => Value::Object(raw.get()),
            Some(b'[') => Value::Array,
            _ => Value::Scalar(self.text_of(raw)),
        }
    }

    fn text_of<'s>(&'s self, raw: &'s RawValue) -> Text<'s> {
        let mut t = text(raw);
        if !self.not_utf8_at.is_empty() {
            // `raw` is a slice of `self.text` (serde_json borrows every raw value from its input).
            let start = (raw.get().as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
            // The offsets are in order: one binary search, so a body with many bad bytes and
            // many members costs no more than its size.
            let first = self.not_utf8_at.partition_point(|&at| at < start);
            t.not_utf8 = self
                .not_utf8_at
                .get(first)
                .is_some_and(|&at| at < start + raw.get().len());
        }
        t
    }
}

/// The text of a string (unescaped), number or boolean (as written).
fn text(raw: &RawValue) -> Text<'_> {
    let source = raw.get();
    let Some(quoted) = source.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return Text {
            text: Cow::Borrowed(source),
            replaced: 0,
            not_utf8: false,
        };
    };
    if !quoted.contains('\\') {
        return Text {
            text: Cow::Borrowed(quoted),
            replaced: 0,
            not_utf8: false,
        };
    }
    // serde_json reads a string as bytes without refusing lone surrogates: it writes each as
    // the three bytes of its WTF-8 form (ED A0..BF 80..BF), the only bytes here that are not
    // UTF-8.
    let Ok(Wtf8(bytes)) = serde_json::from_str(source) else {
        // Unreachable for text serde_json has checked; refusing the value is the safe answer.
        return Text {
            text: Cow::Borrowed("\u{FFFD}"),
            replaced: 1,
            not_utf8: false,
        };
    };
    match String::from_utf8(bytes) {
        Ok(s) => Text {
            text: Cow::Owned(s),
            replaced: 0,
            not_utf8: false,
        },
        Err(e) => {
            let mut s = String::with_capacity(e.as_bytes().len());
            let mut replaced = 0;
            for chunk in e.as_bytes().utf8_chunks() {
                s.push_str(chunk.valid());
                // The decoder reports a surrogate's three bytes one at a time: one U+FFFD for
                // its lead byte, nothing for the two that follow it.
                if chunk.invalid().first() == Some(&0xED) {
                    s.push('\u{FFFD}');
                    replaced += 1;
                }
            }
            Text {
                text: Cow::Owned(s),
                replaced,
                not_utf8: false,
            }
        }
    }
}

/// An object's members as source text, in order, repeated names included (a map type would keep
/// one of each).
struct ObjectMembers<'a>(Vec<(&'a RawValue, &'a RawValue)>);

impl<'de> Deserialize<'de> for ObjectMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ObjectMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry()? {
                    out.push(member);
                }
                Ok(ObjectMembers(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string's bytes, lone surrogates kept as WTF-8 (serde_json's byte-string reading).
struct Wtf8(Vec<u8>);

impl<'de> Deserialize<'de> for Wtf8 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Wtf8;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Wtf8, E> {
                Ok(Wtf8(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests;
