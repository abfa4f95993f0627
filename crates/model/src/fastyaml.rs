//! The fast path of [`crate::parse_documents`]: plain block YAML (what generators and
//! `kubectl get -o yaml` write) read straight into typed resources, with no
//! `serde_yaml_ng::Value` tree and no libyaml event stream.
//!
//! It accepts a strict subset of YAML and gives up (returns `None`) on anything outside it or
//! on any problem at all: a syntax it does not handle (flow collections other than `{}`/`[]`,
//! anchors, aliases, tags, block scalars, multi-line or escaped scalars, merge keys,
//! non-ASCII text, tabs, directives), a scalar whose YAML type it does not resolve exactly as
//! `serde_yaml_ng` does (floats, hex, signs), duplicate keys, an unknown kind or `kind: List`,
//! a decoding error or a validation error. The caller then parses the whole text again with
//! the `Value` path, so every error message, field path and document number is the one that
//! path gives. The contract: when this returns `Some`, the `Value` path returns `Ok` with the
//! same resources (checked by the tests below over every YAML file of the repository).
//!
//! Scalars resolve as `serde_yaml_ng` resolves them: quoted scalars are strings; plain
//! `null`/`Null`/`NULL`/`~`/empty are null, `true`/`false` (and capitalised forms) booleans,
//! decimal digits without a leading zero unsigned integers, digits with a leading zero
//! strings; other plain scalars starting with a letter are strings, and those starting with a
//! digit are strings when they are not a float (`10.96.0.1`, `10.0.0.0/16`).
//! The typed decoding mirrors `serde_yaml_ng::Value`'s `Deserializer` hint by hint.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::kind::Kind;
use crate::resource::{Resource, decode_typed_untracked};

/// Parses every document of `text` on the fast path; `None` when anything is outside it.
pub(crate) fn parse_documents_fast(text: &str) -> Option<Vec<Resource>> {
    // ASCII without control characters (but newlines): no tabs, CRs, BOMs or Unicode line
    // breaks to reason about.
    let printable = |b: &u8| *b == b'\n' || (b' '..=b'~').contains(b);
    // Whole chunks without early exit, which the compiler vectorises.
    if !text
        .as_bytes()
        .chunks(64)
        .all(|c| c.iter().fold(true, |ok, b| ok & printable(b)))
    {
        return None;
    }
    let mut out = Vec::new();
    let mut lines: Vec<Line<'_>> = Vec::new();
    for raw in text.split('\n') {
        if raw.starts_with("---") {
            if raw.trim_end_matches(' ') != "---" {
                return None;
            }
            document(&lines, &mut out)?;
            lines.clear();
            continue;
        }
        if raw.starts_with("...") || raw.starts_with('%') {
            return None;
        }
        let content = raw.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        lines.push(Line {
            indent: raw.len() - content.len(),
            text: content.trim_end_matches(' '),
        });
    }
    document(&lines, &mut out)?;
    Some(out)
}

/// One content line: its indentation and its text without the indentation.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// Decodes one document's lines into `out` (nothing for an empty document).
fn document(lines: &[Line<'_>], out: &mut Vec<Resource>) -> Option<()> {
    let Some(first) = lines.first() else {
        return Some(());
    };
    let mut p = Parser {
        lines,
        pos: 0,
        depth: 0,
    };
    let root = p.node_at(first.indent)?;
    if p.pos != lines.len() {
        return None;
    }
    let Node::Map(mut entries) = root else {
        return None;
    };
    let api = take_str(&mut entries, "apiVersion")?;
    let kind_name = take_str(&mut entries, "kind")?;
    let kind = Kind::from_type(api, kind_name)?;
    if !kind.info().user {
        return None;
    }
    let mut resource = decode_typed_untracked(kind, Node::Map(entries)).ok()?;
    resource.normalize();
    if !resource.validate().is_empty() {
        return None;
    }
    out.push(resource);
    Some(())
}

/// Removes `key` from a mapping; its value when it is a string.
fn take_str<'a>(entries: &mut Vec<(&'a str, Node<'a>)>, key: &str) -> Option<&'a str> {
    let i = entries.iter().position(|(k, _)| *k == key)?;
    match entries.swap_remove(i).1 {
        Node::Str(s) => Some(s),
        _ => None,
    }
}

/// A parsed YAML node; strings borrow from the text (no escapes are accepted).
#[derive(Debug, Clone, PartialEq)]
enum Node<'a> {
    Null,
    Bool(bool),
    Int(u64),
    Str(&'a str),
    Seq(Vec<Node<'a>>),
    Map(Vec<(&'a str, Node<'a>)>),
}

/// Nesting deeper than this is left to the `Value` path (which has its own limit).
const MAX_DEPTH: usize = 64;

/// Longer keys are left to the `Value` path (libyaml limits implicit keys to 1024 bytes).
const MAX_KEY_LEN: usize = 1000;

/// Mappings with more entries than this are left to the `Value` path (the duplicate-key check here is a
/// linear scan per key).
const MAX_ENTRIES: usize = 256;

struct Parser<'l, 'a> {
    lines: &'l [Line<'a>],
    pos: usize,
    depth: usize,
}

/// Whether a line is a block sequence entry (`- x` or a bare `-`).
fn is_entry(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

impl<'a> Parser<'_, 'a> {
    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.pos).copied()
    }

    /// The block node starting at the current line, which is indented by `indent`.
    fn node_at(&mut self, indent: usize) -> Option<Node<'a>> {
        let line = self.peek()?;
        if is_entry(line.text) {
            self.seq(indent)
        } else {
            self.map(indent, None)
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A block mapping whose keys sit at column `indent`; `first` is the text of a first
    /// entry that shares its line with a sequence dash.
    fn map(&mut self, indent: usize, first: Option<&'a str>) -> Option<Node<'a>> {
        self.enter()?;
        let mut entries: Vec<(&'a str, Node<'a>)> = Vec::with_capacity(8);
        if let Some(text) = first {
            self.entry(text, indent, &mut entries)?;
        }
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || is_entry(line.text) {
                return None;
            }
            self.entry(line.text, indent, &mut entries)?;
        }
        self.depth -= 1;
        Some(Node::Map(entries))
    }

    /// One `key: value` entry on the current line (whose key is at column `col`), with a
    /// nested block when the value is empty.
    fn entry(
        &mut self,
        text: &'a str,
        col: usize,
        entries: &mut Vec<(&'a str, Node<'a>)>,
    ) -> Option<()> {
        let Split::Key(key, rest) = split_key(text) else {
            return None;
        };
        if key == "<<"
            || key.len() > MAX_KEY_LEN
            || entries.len() >= MAX_ENTRIES
            || entries.iter().any(|(k, _)| *k == key)
        {
            return None;
        }
        self.pos += 1;
        let value = if rest.is_empty() || rest.starts_with('#') {
            match self.peek() {
                Some(l) if l.indent > col => self.node_at(l.indent)?,
                Some(l) if l.indent == col && is_entry(l.text) => self.seq(col)?,
                _ => Node::Null,
            }
        } else {
            let v = scalar(rest)?;
            self.no_continuation(col)?;
            v
        };
        entries.push((key, value));
        Some(())
    }

    /// Gives up when the next line is indented deeper than `col` after a scalar: that is a
    /// multi-line scalar (or an error).
    fn no_continuation(&self, col: usize) -> Option<()> {
        match self.peek() {
            Some(l) if l.indent > col => None,
            _ => Some(()),
        }
    }

    /// A block sequence whose dashes sit at column `indent`.
    fn seq(&mut self, indent: usize) -> Option<Node<'a>> {
        self.enter()?;
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            if !is_entry(line.text) {
                break;
            }
            let rest = &line.text[1..];
            let content = rest.trim_start_matches(' ');
            if content.is_empty() || content.starts_with('#') {
                self.pos += 1;
                items.push(match self.peek() {
                    Some(l) if l.indent > indent => self.node_at(l.indent)?,
                    _ => Node::Null,
                });
                continue;
            }
            if is_entry(content) {
                return None;
            }
            let col = indent + 1 + (rest.len() - content.len());
            match split_key(content) {
                Split::Key(..) => items.push(self.map(col, Some(content))?),
                Split::NotKey => {
                    let v = scalar(content)?;
                    self.pos += 1;
                    self.no_continuation(indent)?;
                    items.push(v);
                }
                Split::GiveUp => return None,
            }
        }
        self.depth -= 1;
        Some(Node::Seq(items))
    }
}

enum Split<'a> {
    /// A key (resolved as a string) and the rest of the line after `: `, trimmed.
    Key(&'a str, &'a str),
    /// No `key:` on this line: it is a scalar.
    NotKey,
    GiveUp,
}

/// Splits `key: rest` off a line's content.
fn split_key(text: &str) -> Split<'_> {
    let b = text.as_bytes();
    if let Some(q @ (b'"' | b'\'')) = b.first().copied() {
        let Some((content, after)) = quoted(text, q) else {
            return Split::GiveUp;
        };
        return match after.strip_prefix(':') {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                Split::Key(content, rest.trim_start_matches(' '))
            }
            _ => Split::NotKey,
        };
    }
    for (i, &c) in b.iter().enumerate() {
        if c == b':' && (i + 1 == b.len() || b[i + 1] == b' ') {
            let key = &text[..i];
            let plain_key = key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'));
            // An empty key (`: x`) is a null key to YAML; leave it to the `Value` path.
            if !plain_key
                || !key
                    .as_bytes()
                    .first()
                    .is_some_and(u8::is_ascii_alphanumeric)
            {
                return Split::GiveUp;
            }
            return match resolve_plain(key) {
                Some(Node::Str(k)) => Split::Key(k, text[i + 1..].trim_start_matches(' ')),
                _ => Split::GiveUp,
            };
        }
        if c == b'#' && i > 0 && b[i - 1] == b' ' {
            return Split::NotKey;
        }
    }
    Split::NotKey
}

/// A single-line quoted scalar without escapes at the start of `text`: its content and the
/// text after the closing quote.
fn quoted(text: &str, q: u8) -> Option<(&str, &str)> {
    let end = 1 + text[1..].bytes().position(|c| c == q)?;
    let content = &text[1..end];
    let after = &text[end + 1..];
    if (q == b'"' && content.contains('\\')) || (q == b'\'' && after.starts_with('\'')) {
        return None;
    }
    Some((content, after))
}

/// A scalar value (the text after `key: ` or `- `, non-empty and not a comment).
fn scalar(text: &str) -> Option<Node<'_>> {
    if let Some(q @ (b'"' | b'\'')) = text.bytes().next() {
        let (content, after) = quoted(text, q)?;
        let tail = after.trim_start_matches(' ');
        // Only a comment may follow, after at least one space.
        if !(tail.is_empty() || (tail.starts_with('#') && tail.len() < after.len())) {
            return None;
        }
        return Some(Node::Str(content));
    }
    // A comment starts at ` #`; `: ` inside a plain scalar is an error.
    let b = text.as_bytes();
    let mut end = b.len();
    for i in 1..b.len() {
        match (b[i - 1], b[i]) {
            (b' ', b'#') => {
                end = i;
                break;
            }
            (b':', b' ') => return None,
            _ => {}
        }
    }
    let plain = text[..end].trim_end_matches(' ');
    match plain {
        "{}" => return Some(Node::Map(Vec::new())),
        "[]" => return Some(Node::Seq(Vec::new())),
        _ => {}
    }
    if plain.ends_with(':') {
        return None;
    }
    resolve_plain(plain)
}

/// The YAML type of a plain scalar, as `serde_yaml_ng` resolves it; `None` for the forms
/// this path leaves to it.
fn resolve_plain(s: &str) -> Option<Node<'_>> {
    match s {
        "null" | "Null" | "NULL" | "~" => return Some(Node::Null),
        "true" | "True" | "TRUE" => return Some(Node::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Node::Bool(false)),
        _ => {}
    }
    let first = *s.as_bytes().first()?;
    if first.is_ascii_alphabetic() {
        // No float or integer syntax starts with a letter (`inf` and `nan` parse as
        // non-finite floats, which serde_yaml_ng reads as strings).
        return Some(Node::Str(s));
    }
    if !first.is_ascii_digit() {
        return None;
    }
    if s.bytes().all(|c| c.is_ascii_digit()) {
        if s.len() > 1 && first == b'0' {
            // YAML 1.2: leading zeros make a string.
            return Some(Node::Str(s));
        }
        return s.parse().ok().map(Node::Int);
    }
    if s.starts_with("0x") || s.starts_with("0o") || s.starts_with("0b") || s.parse::<f64>().is_ok()
    {
        return None;
    }
    Some(Node::Str(s))
}

/// Any decoding problem; the caller falls back to the `Value` path, which says what it is.
#[derive(Debug)]
pub(crate) struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not on the fast path")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        GiveUp
    }
}

/// Mirrors `impl Deserializer for serde_yaml_ng::Value`: the same visitor call for the same
/// node and hint, and an error wherever it errs.
impl<'de> Deserializer<'de> for Node<'_> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(b),
            Node::Int(i) => visitor.visit_u64(i),
            Node::Str(s) => visitor.visit_str(s),
            Node::Seq(items) => visit_seq(items, visitor),
            Node::Map(entries) => visit_map(entries, visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Bool(b) => visitor.visit_bool(b),
            _ => Err(GiveUp),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.number(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_string(visitor)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_string(visitor)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Str(s) => visitor.visit_str(s),
            _ => Err(GiveUp),
        }
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_string(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        self.deserialize_byte_buf(visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Str(s) => visitor.visit_str(s),
            Node::Seq(items) => visit_seq(items, visitor),
            _ => Err(GiveUp),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Null => visitor.visit_unit(),
            _ => Err(GiveUp),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Seq(items) => visit_seq(items, visitor),
            Node::Null => visit_seq(Vec::new(), visitor),
            _ => Err(GiveUp),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Map(entries) => visit_map(entries, visitor),
            Node::Null => visit_map(Vec::new(), visitor),
            _ => Err(GiveUp),
        }
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        match self {
            Node::Str(tag) => visitor.visit_enum(UnitVariant(tag)),
            _ => Err(GiveUp),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        visitor.visit_unit()
    }
}

impl Node<'_> {
    fn number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self {
            Node::Int(i) => visitor.visit_u64(i),
            _ => Err(GiveUp),
        }
    }
}

fn visit_seq<'de, V: Visitor<'de>>(items: Vec<Node<'_>>, visitor: V) -> Result<V::Value, GiveUp> {
    let mut access = Items(items.into_iter());
    let v = visitor.visit_seq(&mut access)?;
    if access.0.len() == 0 {
        Ok(v)
    } else {
        Err(GiveUp)
    }
}

fn visit_map<'de, V: Visitor<'de>>(
    entries: Vec<(&str, Node<'_>)>,
    visitor: V,
) -> Result<V::Value, GiveUp> {
    let mut access = Entries {
        iter: entries.into_iter(),
        value: None,
    };
    let v = visitor.visit_map(&mut access)?;
    if access.iter.len() == 0 {
        Ok(v)
    } else {
        Err(GiveUp)
    }
}

struct Items<'a>(std::vec::IntoIter<Node<'a>>);

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = GiveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, GiveUp> {
        self.0.next().map(|n| seed.deserialize(n)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'a> {
    iter: std::vec::IntoIter<(&'a str, Node<'a>)>,
    value: Option<Node<'a>>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GiveUp> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Node::Str(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GiveUp> {
        seed.deserialize(self.value.take().ok_or(GiveUp)?)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// `Value::String` as an enum: a unit variant named by the string.
struct UnitVariant<'a>(&'a str);

impl<'de> de::EnumAccess<'de> for UnitVariant<'_> {
    type Error = GiveUp;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), GiveUp> {
        let name = seed.deserialize(de::value::StrDeserializer::<GiveUp>::new(self.0))?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_> {
    type Error = GiveUp;

    fn unit_variant(self) -> Result<(), GiveUp> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, GiveUp> {
        Err(GiveUp)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, GiveUp> {
        Err(GiveUp)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, GiveUp> {
        Err(GiveUp)
    }
}

#[cfg(test)]
mod tests;
