//! The MessagePack payload codec (docs/protocol.md §4), written out per type.
//!
//! Every protocol type implements [`Encode`] and [`Decode`]: `encode` writes the value as a map keyed by
//! field name, `decode` reads one back. The encoding is byte for byte what a generic
//! serde MessagePack serializer (`rmp-serde`, `to_vec_named`) writes for the same
//! types — smallest integer forms, `float 64`, `bin 8` UUIDs, tagged enums with the tag
//! first, optional fields omitted — and the crate's tests hold it to that. Decoding
//! follows §4: unknown keys are skipped at every level, field order is free, a tagged
//! enum's tag may come anywhere in its map, an unknown tag is the enum's `Unknown`,
//! `nil` in an optional field or a field with a default is the field absent, integers
//! any width that fits, floats `float 32` too, UUIDs also in their hyphenated text
//! form (either case). A map never repeats a key it names (a field, a tag, a
//! `Properties` key); nesting inside a skipped value is bounded. A payload is exactly
//! one value: trailing bytes are an error.
//!
//! Why by hand rather than through serde: size. The serde instantiations of a generic
//! MessagePack codec for this type set were about 0.4 MB of the mobile library
//! (BENCHMARKS.md, "Bindings library size"); this module does the same work in a
//! fraction of that, with no allocation for lengths read from the input and every read
//! bounds-checked. Serde derives stay on the types for JSON (shard map files, config
//! sources, recordings).

use std::collections::BTreeMap;

use uuid::Uuid;

/// Levels of arrays and maps allowed in a skipped (unknown) value, the value itself
/// included (docs/protocol.md §4).
pub(crate) const MAX_SKIP_DEPTH: usize = 64;

/// A value with a MessagePack payload form (docs/protocol.md §4): writing.
pub trait Encode {
    /// Writes the value.
    fn encode(&self, w: &mut Writer);
}

/// A value with a MessagePack payload form (docs/protocol.md §4): reading.
pub trait Decode: Sized {
    /// Reads one value.
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError>;
}

/// Encodes `value` as a complete payload.
pub fn to_vec<T: Encode + ?Sized>(value: &T) -> Vec<u8> {
    let mut w = Writer::new();
    value.encode(&mut w);
    w.into_bytes()
}

/// The payload length of `value`, without keeping the bytes.
pub fn encoded_len<T: Encode + ?Sized>(value: &T) -> usize {
    let mut w = Writer::counter();
    value.encode(&mut w);
    w.len()
}

/// Decodes a complete payload: exactly one value, no trailing bytes.
pub fn from_slice<T: Decode>(bytes: &[u8]) -> Result<T, ReadError> {
    let mut r = Reader::new(bytes);
    let v = T::decode(&mut r)?;
    if r.pos != bytes.len() {
        return Err(r.error(ReadErrorKind::TrailingBytes));
    }
    Ok(v)
}

/// Why a payload could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct ReadError {
    /// Offset in the payload where the reader stopped.
    pub offset: usize,
    /// What went wrong.
    pub kind: ReadErrorKind,
}

/// What went wrong in a [`ReadError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadErrorKind {
    /// The payload ended inside a value.
    #[error("truncated")]
    Truncated,
    /// A value of another type than the field's.
    #[error("invalid type: expected {0}")]
    Expected(&'static str),
    /// An integer that does not fit the field.
    #[error("integer out of range for {0}")]
    OutOfRange(&'static str),
    /// A string that is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// A UUID that is neither 16 bytes of `bin` nor hyphenated text.
    #[error("invalid UUID")]
    BadUuid,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A field appears twice in one map.
    #[error("duplicate field `{0}`")]
    DuplicateField(&'static str),
    /// A key appears twice in a map of keys to values (`Properties`, config values).
    #[error("repeated map key")]
    DuplicateKey,
    /// A skipped value nests deeper than the reader allows.
    #[error("nested too deeply")]
    TooDeep,
    /// The reserved marker byte `0xc1`.
    #[error("reserved marker")]
    Reserved,
    /// Bytes after the payload's one value.
    #[error("trailing bytes")]
    TrailingBytes,
}

/// Writes MessagePack into a buffer (or only counts the bytes).
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    len: usize,
    count_only: bool,
}

impl Writer {
    /// A writer into a new buffer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// A writer that only counts what would be written.
    pub fn counter() -> Self {
        Writer {
            count_only: true,
            ..Writer::default()
        }
    }

    /// Bytes written (or counted) so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written (empty for a counter).
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn put(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        if !self.count_only {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn header(&mut self, fix: u8, fix_max: usize, m16: u8, m32: u8, n: usize) {
        // Lengths here are bounded by the payload maximum, far below 4 GiB.
        if n <= fix_max {
            self.put(&[fix | n as u8]);
        } else if n <= 0xffff {
            self.put(&[m16]);
            self.put(&(n as u16).to_be_bytes());
        } else {
            self.put(&[m32]);
            self.put(&(n as u32).to_be_bytes());
        }
    }

    /// A map header for `n` entries.
    pub fn map(&mut self, n: usize) {
        self.header(0x80, 15, 0xde, 0xdf, n);
    }

    /// An array header for `n` items.
    pub fn array(&mut self, n: usize) {
        self.header(0x90, 15, 0xdc, 0xdd, n);
    }

    /// A string.
    pub fn str(&mut self, s: &str) {
        let n = s.len();
        if n <= 31 {
            self.put(&[0xa0 | n as u8]);
        } else if n <= 0xff {
            self.put(&[0xd9, n as u8]);
        } else {
            self.header(0, 0, 0xda, 0xdb, n);
        }
        self.put(s.as_bytes());
    }

    /// Binary data (`bin`).
    pub fn bin(&mut self, b: &[u8]) {
        let n = b.len();
        if n <= 0xff {
            self.put(&[0xc4, n as u8]);
        } else {
            self.header(0, 0, 0xc5, 0xc6, n);
        }
        self.put(b);
    }

    /// An unsigned integer, smallest form.
    pub fn uint(&mut self, v: u64) {
        if v < 128 {
            self.put(&[v as u8]);
        } else if v <= 0xff {
            self.put(&[0xcc, v as u8]);
        } else if v <= 0xffff {
            self.put(&[0xcd]);
            self.put(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            self.put(&[0xce]);
            self.put(&(v as u32).to_be_bytes());
        } else {
            self.put(&[0xcf]);
            self.put(&v.to_be_bytes());
        }
    }

    /// A signed integer, smallest form (non-negative values as unsigned).
    pub fn sint(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else if v >= -32 {
            self.put(&[v as i8 as u8]);
        } else if v >= -128 {
            self.put(&[0xd0, v as i8 as u8]);
        } else if v >= -32_768 {
            self.put(&[0xd1]);
            self.put(&(v as i16).to_be_bytes());
        } else if v >= -2_147_483_648 {
            self.put(&[0xd2]);
            self.put(&(v as i32).to_be_bytes());
        } else {
            self.put(&[0xd3]);
            self.put(&v.to_be_bytes());
        }
    }

    /// A `float 64`.
    pub fn f64(&mut self, v: f64) {
        self.put(&[0xcb]);
        self.put(&v.to_be_bytes());
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) {
        self.put(&[if v { 0xc3 } else { 0xc2 }]);
    }

    /// `nil`.
    pub fn nil(&mut self) {
        self.put(&[0xc0]);
    }

    /// A map entry: the key, then the value.
    pub fn field<T: Encode + ?Sized>(&mut self, name: &str, value: &T) {
        self.str(name);
        value.encode(self);
    }
}

/// A cursor over MessagePack bytes. Every read checks bounds first; lengths read from
/// the input are never used to allocate.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The current offset.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// An error of `kind` at the current offset.
    pub fn error(&self, kind: ReadErrorKind) -> ReadError {
        ReadError {
            offset: self.pos,
            kind,
        }
    }

    fn byte(&mut self) -> Result<u8, ReadError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.error(ReadErrorKind::Truncated)),
        }
    }

    fn peek(&self) -> Result<u8, ReadError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.error(ReadErrorKind::Truncated))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.error(ReadErrorKind::Truncated)),
        }
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len_of(&mut self, width: u8) -> Result<usize, ReadError> {
        Ok(match width {
            1 => usize::from(self.byte()?),
            2 => usize::from(u16::from_be_bytes(self.be()?)),
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    /// Fails with "expected `what`" at the marker just read (the reader is moved back
    /// onto it).
    fn expected<T>(&mut self, what: &'static str) -> Result<T, ReadError> {
        self.pos -= 1;
        Err(self.error(ReadErrorKind::Expected(what)))
    }

    /// A map header: the number of entries.
    pub fn map_len(&mut self) -> Result<usize, ReadError> {
        match self.byte()? {
            b @ 0x80..=0x8f => Ok(usize::from(b & 0x0f)),
            0xde => self.len_of(2),
            0xdf => self.len_of(4),
            _ => self.expected("a map"),
        }
    }

    /// An array header: the number of items.
    pub fn array_len(&mut self) -> Result<usize, ReadError> {
        match self.byte()? {
            b @ 0x90..=0x9f => Ok(usize::from(b & 0x0f)),
            0xdc => self.len_of(2),
            0xdd => self.len_of(4),
            _ => self.expected("an array"),
        }
    }

    /// A map key: a `str`'s bytes, compared as bytes like serde's field matching (a
    /// key that is not UTF-8 is simply not a known field).
    pub fn key(&mut self) -> Result<&'a [u8], ReadError> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.len_of(1)?,
            0xda => self.len_of(2)?,
            0xdb => self.len_of(4)?,
            _ => return self.expected("a string"),
        };
        self.take(n)
    }

    /// A UTF-8 string, borrowed from the input.
    pub fn str(&mut self) -> Result<&'a str, ReadError> {
        let bytes = self.key()?;
        std::str::from_utf8(bytes).map_err(|_| ReadError {
            offset: self.pos - bytes.len(),
            kind: ReadErrorKind::NotUtf8,
        })
    }

    /// Any integer, widened.
    fn int(&mut self) -> Result<i128, ReadError> {
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => i128::from(b),
            0xe0..=0xff => i128::from(b as i8),
            0xcc => i128::from(self.byte()?),
            0xcd => i128::from(u16::from_be_bytes(self.be()?)),
            0xce => i128::from(u32::from_be_bytes(self.be()?)),
            0xcf => i128::from(u64::from_be_bytes(self.be()?)),
            0xd0 => i128::from(self.byte()? as i8),
            0xd1 => i128::from(i16::from_be_bytes(self.be()?)),
            0xd2 => i128::from(i32::from_be_bytes(self.be()?)),
            0xd3 => i128::from(i64::from_be_bytes(self.be()?)),
            _ => return self.expected("an integer"),
        })
    }

    fn int_as<T: TryFrom<i128>>(&mut self, name: &'static str) -> Result<T, ReadError> {
        let at = self.pos;
        let v = self.int()?;
        T::try_from(v).map_err(|_| ReadError {
            offset: at,
            kind: ReadErrorKind::OutOfRange(name),
        })
    }

    /// A boolean.
    pub fn bool(&mut self) -> Result<bool, ReadError> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => self.expected("a boolean"),
        }
    }

    /// A [`crate::Value`]: `str`, an integer that fits an `i64`, a float or a bool.
    pub fn value(&mut self) -> Result<crate::Value, ReadError> {
        use crate::Value;
        Ok(match self.value_ref()? {
            ValueRef::Str(s) => Value::String(s.to_owned()),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(x) => Value::Float(x),
            ValueRef::Bool(b) => Value::Bool(b),
        })
    }

    /// A value like [`Reader::value`], its string borrowed from the input.
    pub fn value_ref(&mut self) -> Result<ValueRef<'a>, ReadError> {
        match self.peek()? {
            0xa0..=0xbf | 0xd9..=0xdb => self.str().map(ValueRef::Str),
            0xc2 | 0xc3 => self.bool().map(ValueRef::Bool),
            0xca => {
                self.pos += 1;
                Ok(ValueRef::Float(f64::from(f32::from_be_bytes(self.be()?))))
            }
            0xcb => {
                self.pos += 1;
                Ok(ValueRef::Float(f64::from_be_bytes(self.be()?)))
            }
            0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => self.int_as("i64").map(ValueRef::Int),
            _ => {
                self.pos += 1;
                self.expected("a string, integer, float or boolean")
            }
        }
    }

    /// The input from offset `start` to the current position (a value just read).
    pub fn consumed_since(&self, start: usize) -> &'a [u8] {
        &self.buf[start.min(self.pos)..self.pos]
    }

    /// Consumes a `nil` if one is next.
    pub fn nil(&mut self) -> Result<bool, ReadError> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Skips one value of any type: at most 64 levels of arrays and
    /// maps, the value itself included (§4).
    pub fn skip(&mut self) -> Result<(), ReadError> {
        self.skip_at(0, MAX_SKIP_DEPTH)
    }

    /// [`Reader::skip`] with another bound on the levels.
    pub(crate) fn skip_within(&mut self, levels: usize) -> Result<(), ReadError> {
        self.skip_at(0, levels)
    }

    /// Skips a value inside `depth` arrays and maps of the value being skipped.
    fn skip_at(&mut self, depth: usize, levels: usize) -> Result<(), ReadError> {
        let b = self.byte()?;
        // An array or map here is at level `depth + 1`.
        if matches!(b, 0x80..=0x9f | 0xdc..=0xdf) && depth >= levels {
            self.pos -= 1;
            return Err(self.error(ReadErrorKind::TooDeep));
        }
        let depth = depth + 1;
        let n = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => return self.skip_n(usize::from(b & 0x0f) * 2, depth, levels),
            0x90..=0x9f => return self.skip_n(usize::from(b & 0x0f), depth, levels),
            0xa0..=0xbf => usize::from(b & 0x1f),
            0xc4 | 0xd9 => self.len_of(1)?,
            0xc5 | 0xda => self.len_of(2)?,
            0xc6 | 0xdb => self.len_of(4)?,
            // ext 8/16/32: length, then the type byte and the data.
            0xc7 => self.len_of(1)? + 1,
            0xc8 => self.len_of(2)? + 1,
            0xc9 => self.len_of(4)?.saturating_add(1),
            // fixext 1/2/4/8/16: the type byte and the data.
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xca | 0xce | 0xd2 => 4,
            0xcb | 0xcf | 0xd3 => 8,
            0xdc => {
                let n = self.len_of(2)?;
                return self.skip_n(n, depth, levels);
            }
            0xdd => {
                let n = self.len_of(4)?;
                return self.skip_n(n, depth, levels);
            }
            0xde => {
                let n = self.len_of(2)?;
                return self.skip_n(n * 2, depth, levels);
            }
            0xdf => {
                let n = self.len_of(4)?;
                return self.skip_n(n.saturating_mul(2), depth, levels);
            }
            _ => {
                self.pos -= 1;
                return Err(self.error(ReadErrorKind::Reserved));
            }
        };
        self.take(n).map(|_| ())
    }

    fn skip_n(&mut self, n: usize, depth: usize, levels: usize) -> Result<(), ReadError> {
        for _ in 0..n {
            self.skip_at(depth, levels)?;
        }
        Ok(())
    }

    /// Reads a map field's value into `slot`; a second occurrence of the field is an
    /// error.
    pub fn field<T: Decode>(
        &mut self,
        slot: &mut Option<T>,
        name: &'static str,
    ) -> Result<(), ReadError> {
        if slot.is_some() {
            return Err(self.error(ReadErrorKind::DuplicateField(name)));
        }
        *slot = Some(T::decode(self)?);
        Ok(())
    }

    /// Reads the value of an optional field, or of one with a default, into `slot`:
    /// `nil` is the field absent (`Some(None)`: it occurred, so a second occurrence is
    /// still an error).
    pub fn field_or_nil<T: Decode>(
        &mut self,
        slot: &mut Option<Option<T>>,
        name: &'static str,
    ) -> Result<(), ReadError> {
        if slot.is_some() {
            return Err(self.error(ReadErrorKind::DuplicateField(name)));
        }
        *slot = Some(if self.nil()? {
            None
        } else {
            Some(T::decode(self)?)
        });
        Ok(())
    }

    /// Reads the map of a tagged enum (docs/protocol.md §4): finds the `tag` entry
    /// wherever it is and returns its value with a reader over the map's entries and
    /// their count. `self` moves past the whole map. The variant's fields are then
    /// read from the returned reader, skipping the tag entry.
    pub fn tagged(&mut self, tag: &'static str) -> Result<(&'a str, Reader<'a>, usize), ReadError> {
        let n = self.map_len()?;
        let body = self.clone();
        let mut found = None;
        for _ in 0..n {
            if self.key()? == tag.as_bytes() {
                if found.is_some() {
                    return Err(self.error(ReadErrorKind::DuplicateField(tag)));
                }
                found = Some(self.str()?);
            } else {
                self.skip()?;
            }
        }
        match found {
            Some(v) => Ok((v, body, n)),
            None => Err(self.error(ReadErrorKind::MissingField(tag))),
        }
    }
}

/// A [`crate::Value`] read in place ([`Reader::value_ref`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// A string, borrowed from the input.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl<'a> From<&'a crate::Value> for ValueRef<'a> {
    fn from(v: &'a crate::Value) -> Self {
        match v {
            crate::Value::String(s) => ValueRef::Str(s),
            crate::Value::Int(i) => ValueRef::Int(*i),
            crate::Value::Float(x) => ValueRef::Float(*x),
            crate::Value::Bool(b) => ValueRef::Bool(*b),
        }
    }
}

/// The value of a required field, or the "missing field" error.
pub fn required<T>(slot: Option<T>, name: &'static str, r: &Reader<'_>) -> Result<T, ReadError> {
    slot.ok_or_else(|| r.error(ReadErrorKind::MissingField(name)))
}

/// Whether a field's value is its "absent" form, omitted by the encoder
/// (`skip_serializing_if`: `None`, an empty list or map).
pub trait Omit {
    /// True when the value is not written.
    fn omit(&self) -> bool;
}

impl<T> Omit for Option<T> {
    fn omit(&self) -> bool {
        self.is_none()
    }
}

/// Counters added after version 1 (docs/protocol.md §11): absent means 0, and written
/// only when non-zero, so the encodings of messages that do not use them stay
/// byte-identical.
impl Omit for u64 {
    fn omit(&self) -> bool {
        *self == 0
    }
}

/// Flags added after version 1: absent means false, written only when true.
impl Omit for bool {
    fn omit(&self) -> bool {
        !*self
    }
}

impl<T> Omit for Vec<T> {
    fn omit(&self) -> bool {
        self.is_empty()
    }
}

impl<K, V> Omit for BTreeMap<K, V> {
    fn omit(&self) -> bool {
        self.is_empty()
    }
}

// ---- scalars ----------------------------------------------------------------------

/// Integers: written in their smallest form (unsigned through `uint`, signed through
/// `sint`); read from any integer encoding whose value fits the type.
macro_rules! wire_int {
    ($($t:ty => $write:ident($wide:ty)),* $(,)?) => {
        $(
            impl Encode for $t {
                fn encode(&self, w: &mut Writer) {
                    w.$write(<$wide>::from(*self));
                }
            }

            impl Decode for $t {
                fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
                    r.int_as(stringify!($t))
                }
            }
        )*
    };
}

wire_int!(u64 => uint(u64), u32 => uint(u64), i64 => sint(i64), i32 => sint(i64));

impl Encode for bool {
    fn encode(&self, w: &mut Writer) {
        w.bool(*self);
    }
}

impl Decode for bool {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        r.bool()
    }
}

impl Encode for String {
    fn encode(&self, w: &mut Writer) {
        w.str(self);
    }
}

impl Decode for String {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        r.str().map(str::to_owned)
    }
}

impl Encode for Uuid {
    fn encode(&self, w: &mut Writer) {
        w.bin(self.as_bytes());
    }
}

impl Decode for Uuid {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        let at = r.pos;
        let bad = ReadError {
            offset: at,
            kind: ReadErrorKind::BadUuid,
        };
        let n = match r.byte()? {
            0xc4 => r.len_of(1)?,
            0xc5 => r.len_of(2)?,
            0xc6 => r.len_of(4)?,
            // Text: the hyphenated form only (36 characters, either case; §4).
            0xa0..=0xbf | 0xd9..=0xdb => {
                r.pos = at;
                let text = r.str()?;
                if text.len() != 36 {
                    return Err(bad);
                }
                return Uuid::parse_str(text).map_err(|_| bad);
            }
            _ => return r.expected("a UUID (bin or str)"),
        };
        let bytes = r.take(n)?;
        Uuid::from_slice(bytes).map_err(|_| bad)
    }
}

/// `None` is written as `nil` (fields that omit `None` never get here); `nil` reads as
/// `None`.
impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        match self {
            Some(v) => v.encode(w),
            None => w.nil(),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        if r.nil()? {
            Ok(None)
        } else {
            T::decode(r).map(Some)
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) {
        w.array(self.len());
        for v in self {
            v.encode(w);
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        let n = r.array_len()?;
        // Never trust `n` for the allocation.
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push(T::decode(r)?);
        }
        Ok(out)
    }
}

impl<T: Encode + ?Sized> Encode for &T {
    fn encode(&self, w: &mut Writer) {
        (**self).encode(w);
    }
}

impl Encode for str {
    fn encode(&self, w: &mut Writer) {
        w.str(self);
    }
}

/// String-keyed maps (`Properties`, config values): keys in ascending order; a key
/// repeated in the input is an error (§4).
impl<V: Encode> Encode for BTreeMap<String, V> {
    fn encode(&self, w: &mut Writer) {
        w.map(self.len());
        for (k, v) in self {
            w.field(k, v);
        }
    }
}

impl<V: Decode> Decode for BTreeMap<String, V> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, ReadError> {
        let n = r.map_len()?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let at = r.pos;
            let k = r.str()?.to_owned();
            let v = V::decode(r)?;
            if out.insert(k, v).is_some() {
                return Err(ReadError {
                    offset: at,
                    kind: ReadErrorKind::DuplicateKey,
                });
            }
        }
        Ok(out)
    }
}

/// Implements [`Encode`] and [`Decode`] for a struct encoded as a map of its fields, in declaration
/// order. Each field has a mode: `req` (required), `def` (missing → `Default`),
/// `omit` (missing → `Default`, not written when [`Omit::omit`]), `with(expr)`
/// (missing → `expr`). In every mode but `req`, `nil` reads as missing (§4).
#[macro_export]
macro_rules! wire_struct {
    ($ty:ident { $($field:ident : $mode:ident $(($dflt:expr))?),* $(,)? }) => {
        impl $crate::wire::Encode for $ty {
            fn encode(&self, w: &mut $crate::wire::Writer) {
                let n = 0 $(+ $crate::wire_struct!(@count self, $field, $mode))*;
                w.map(n);
                $( $crate::wire_struct!(@enc w, self, $field, $mode); )*
            }
        }
        impl $crate::wire::Decode for $ty {
            fn decode(
                r: &mut $crate::wire::Reader<'_>,
            ) -> Result<Self, $crate::wire::ReadError> {
                $( let mut $field = None; )*
                let n = r.map_len()?;
                for _ in 0..n {
                    let key = r.key()?;
                    $( if key == stringify!($field).as_bytes() {
                        $crate::wire_struct!(@read r, $field, $mode);
                        continue;
                    } )*
                    r.skip()?;
                }
                Ok($ty {
                    $( $field: $crate::wire_struct!(@take r, $field, $mode $(, $dflt)?), )*
                })
            }
        }
    };
    (@count $s:ident, $f:ident, omit) => { usize::from(!$crate::wire::Omit::omit(&$s.$f)) };
    (@count $s:ident, $f:ident, $mode:ident) => { 1usize };
    (@enc $w:ident, $s:ident, $f:ident, omit) => {
        if !$crate::wire::Omit::omit(&$s.$f) {
            $w.field(stringify!($f), &$s.$f);
        }
    };
    (@enc $w:ident, $s:ident, $f:ident, $mode:ident) => { $w.field(stringify!($f), &$s.$f) };
    (@read $r:ident, $f:ident, req) => { $r.field(&mut $f, stringify!($f))? };
    (@read $r:ident, $f:ident, $mode:ident) => { $r.field_or_nil(&mut $f, stringify!($f))? };
    (@take $r:ident, $f:ident, req) => { $crate::wire::required($f, stringify!($f), $r)? };
    (@take $r:ident, $f:ident, def) => { $f.flatten().unwrap_or_default() };
    (@take $r:ident, $f:ident, omit) => { $f.flatten().unwrap_or_default() };
    (@take $r:ident, $f:ident, with, $d:expr) => { $f.flatten().unwrap_or_else(|| $d) };
}

/// Implements [`Encode`] and [`Decode`] for an internally tagged enum
/// (docs/protocol.md §4): a map with the `tag` key naming the variant, next to the
/// variant's fields (modes as in [`wire_struct!`]). `other` is the variant an unknown
/// tag decodes to; it is written as a map with only the tag.
#[macro_export]
macro_rules! wire_enum {
    ($ty:ident, tag $tag:literal, other $other:ident = $other_name:literal {
        $( $variant:ident = $name:literal { $($field:ident : $mode:ident $(($dflt:expr))?),* $(,)? } ),* $(,)?
    }) => {
        impl $crate::wire::Encode for $ty {
            fn encode(&self, w: &mut $crate::wire::Writer) {
                match self {
                    $( $ty::$variant { $($field),* } => {
                        let n = 1 $(+ $crate::wire_enum!(@count $field, $mode))*;
                        w.map(n);
                        w.field($tag, $name);
                        $( $crate::wire_enum!(@enc w, $field, $mode); )*
                    } )*
                    $ty::$other => {
                        w.map(1);
                        w.field($tag, $other_name);
                    }
                }
            }
        }
        impl $crate::wire::Decode for $ty {
            fn decode(
                r: &mut $crate::wire::Reader<'_>,
            ) -> Result<Self, $crate::wire::ReadError> {
                let (tag, mut body, n) = r.tagged($tag)?;
                #[allow(unused_variables, unused_mut)]
                let b = &mut body;
                Ok(match tag {
                    $( $name => {
                        $( let mut $field = None; )*
                        for _ in 0..n {
                            #[allow(unused_variables)] // unit variants have no fields
                            let key = b.key()?;
                            $( if key == stringify!($field).as_bytes() {
                                $crate::wire_struct!(@read b, $field, $mode);
                                continue;
                            } )*
                            b.skip()?;
                        }
                        $ty::$variant {
                            $( $field: $crate::wire_struct!(@take b, $field, $mode $(, $dflt)?), )*
                        }
                    } )*
                    _ => $ty::$other,
                })
            }
        }
    };
    (@count $f:ident, omit) => { usize::from(!$crate::wire::Omit::omit($f)) };
    (@count $f:ident, $mode:ident) => { 1usize };
    (@enc $w:ident, $f:ident, omit) => {
        if !$crate::wire::Omit::omit($f) {
            $w.field(stringify!($f), $f);
        }
    };
    (@enc $w:ident, $f:ident, $mode:ident) => { $w.field(stringify!($f), $f) };
}
