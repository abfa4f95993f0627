//! The fast path of [`Resource::from_json`]: stored JSON read straight into the typed
//! resource with `serde_json`, with no `serde_json::Value` tree and no field-path tracking.
//!
//! It handles the shape [`Resource::to_json`] writes: compact JSON opening with
//! `{"apiVersion":"…","kind":"…",` (plain strings, no escapes). It gives up (returns `None`)
//! on anything else and on any error at all (invalid JSON, an unknown kind, a duplicate field,
//! an `apiVersion`/`kind` repeated later with another value, a field of the wrong type, …);
//! the caller then decodes the same bytes through `Value`, so every error is the one that path
//! gives. The contract: when this returns `Some(r)`, the `Value` path returns `Ok(r)` (checked
//! by `tests/fastjson.rs` over every YAML fixture of the repository, random resources and
//! mutated documents).
//!
//! Why the results agree: both paths run the same `Deserialize` impls over the same parser.
//! What `Value` changes is the order of object keys (sorted) and duplicate keys (the last
//! wins); the typed structs do not depend on field order, maps are `BTreeMap`s (the last
//! duplicate wins on both paths), and a duplicate struct field is an error here (so the
//! `Value` path decides). `apiVersion` and `kind` are removed by the `Value` path before the
//! typed decoding; here [`SkipTypeFields`] skips them, checking each repeat against the peeked
//! value.
//!
//! This relies on every model struct being `deny_unknown_fields` (they all are): a type that
//! ignored unknown fields would have them skipped here by serde_json's `IgnoredAny`, which does
//! not reject what building a `Value` rejects (lone surrogate escapes, numbers out of range,
//! nesting beyond serde_json's limit), so the two paths could disagree on such input.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::kind::Kind;
use crate::resource::{Resource, decode_typed_untracked};

/// Decodes stored JSON on the fast path; `None` when anything is outside it.
pub(crate) fn decode(bytes: &[u8]) -> Option<Resource> {
    let (api, kind_name) = peek_type(bytes)?;
    let kind = Kind::from_type(api, kind_name)?;
    // The whole document checked as UTF-8 once, then read as a `str`: serde_json then skips
    // its UTF-8 check of every string it reads (a fifth of the decoding time of a stored
    // Service). Input that is not UTF-8 is left to the `Value` path and its error.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut r = decode_typed_untracked(
        kind,
        SkipTypeFields {
            de: &mut de,
            api,
            kind: kind_name,
        },
    )
    .ok()?;
    de.end().ok()?;
    r.normalize();
    Some(r)
}

/// `apiVersion` and `kind` of `{"apiVersion":"A","kind":"K",…` (strings without escapes).
fn peek_type(bytes: &[u8]) -> Option<(&str, &str)> {
    let rest = bytes.strip_prefix(b"{\"apiVersion\":\"")?;
    let (api, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",\"kind\":\"")?;
    let (kind, _) = plain_string(rest)?;
    Some((api, kind))
}

/// The string up to the closing quote, when it has no escapes or control characters.
fn plain_string(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if bytes[end] != b'"' {
        return None;
    }
    let s = std::str::from_utf8(&bytes[..end]).ok()?;
    Some((s, &bytes[end + 1..]))
}

/// The top-level object as a map without its `apiVersion` and `kind` entries (each must equal
/// the peeked value, else the decoding fails and the `Value` path decides).
struct SkipTypeFields<'a, 'p, D> {
    de: D,
    api: &'a str,
    kind: &'p str,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for SkipTypeFields<'_, '_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_map(FilterVisitor {
            inner: visitor,
            api: self.api,
            kind: self.kind,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct FilterVisitor<'a, 'p, V> {
    inner: V,
    api: &'a str,
    kind: &'p str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FilterVisitor<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(FilterMap {
            map,
            api: self.api,
            kind: self.kind,
        })
    }
}

struct FilterMap<'a, 'p, A> {
    map: A,
    api: &'a str,
    kind: &'p str,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FilterMap<'_, '_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            let expected = match key.as_str() {
                "apiVersion" => self.api,
                "kind" => self.kind,
                k => {
                    return seed
                        .deserialize(de::value::StrDeserializer::<A::Error>::new(k))
                        .map(Some);
                }
            };
            let value = self.map.next_value::<Key<'de>>()?;
            if value.as_str() != expected {
                return Err(de::Error::custom(
                    "apiVersion or kind repeated with another value",
                ));
            }
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A string borrowed from the input when it has no escapes, owned otherwise.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_documents;

    /// The fast path takes what `to_json` stores (so the equivalence tests in
    /// `tests/fastjson.rs` exercise it) and declines other layouts.
    #[test]
    fn stored_json_takes_the_fast_path() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cluster.yaml"
        ))
        .expect("fixture");
        let rs = parse_documents("cluster.yaml", &text).expect("fixture parses");
        assert!(rs.len() > 5);
        for r in rs {
            let fast = decode(&r.to_json()).expect("stored JSON takes the fast path");
            assert_eq!(fast, r);
            let pretty = r.to_json_pretty();
            assert!(
                decode(pretty.as_bytes()).is_none(),
                "pretty JSON is not the stored layout"
            );
        }
        assert_eq!(
            peek_type(br#"{"apiVersion":"v1","kind":"Service","metadata":{}}"#),
            Some(("v1", "Service"))
        );
        assert_eq!(
            peek_type(br#"{"apiVersion":"v\u0031","kind":"Service"}"#),
            None
        );
        assert_eq!(peek_type(br#"{"kind":"Service","apiVersion":"v1"}"#), None);
    }
}
