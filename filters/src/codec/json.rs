//! The JSON header encoding (serialize type 0).
//!
//! Decoding tolerates what real peers send (protocol notes 1.3):
//! * `language` as the enum name (`"JAVA"`, `"CPP"`) or as a number; unknown names read as `OTHER`;
//! * ext values as JSON numbers or booleans (the C++ client), coerced to the strings Java's fastjson
//!   would produce; `null` ext values are dropped; nested objects/arrays are kept as their JSON text;
//! * extra top-level keys (`serializeTypeCurrentRPC`, anything else) are ignored;
//! * integer header fields written as numeric strings.
//!
//! Encoding writes fastjson's shape: top-level keys in alphabetical order, null fields omitted,
//! `serializeTypeCurrentRPC` included (strict peers require it), ext values as strings.

use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::codes::LanguageCode;
use super::command::HeaderFields;
use super::ext::{ExtFields, MAX_EXT_FIELDS};

/// Decodes a JSON header, and says where the top-level `opaque` number's digits are when a new
/// opaque can be written over them (it is the only `opaque` key and a plain number).
///
/// The usual shape (scalars and a flat `extFields`) is read by [`super::json_fast`] in one pass;
/// anything else by serde.
pub(crate) fn decode(bytes: &[u8]) -> Result<(HeaderFields, Option<(usize, usize)>), String> {
    match super::json_fast::decode(bytes) {
        Some(fast) => Ok(fast),
        None => decode_slow(bytes),
    }
}

/// [`decode`] for a header the fast reader gave up on: serde, then the opaque by its bytes.
pub(crate) fn decode_slow(bytes: &[u8]) -> Result<(HeaderFields, Option<(usize, usize)>), String> {
    let (fields, unique) = decode_serde(bytes)?;
    Ok((fields, if unique { find_opaque(bytes) } else { None }))
}

/// Decodes a JSON header with serde. The flag says whether the bytes hold exactly one `opaque`
/// key, the top-level one (no `extFields` entry of that name, no nested object or array anywhere
/// that could hide one): then [`find_opaque`] may look for it by its bytes alone.
pub(crate) fn decode_serde(bytes: &[u8]) -> Result<(HeaderFields, bool), String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let shape = Shape::default();
    let fields = de
        .deserialize_map(HeaderVisitor(&shape))
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    let unique = shape.top_opaque.get() == 1 && shape.ext_opaque.get() == 0 && !shape.nested.get();
    Ok((fields, unique))
}

/// What the decoder saw of the header's shape.
#[derive(Default)]
struct Shape {
    /// Top-level keys named `opaque`.
    top_opaque: std::cell::Cell<u32>,
    /// `extFields` keys named `opaque`.
    ext_opaque: std::cell::Cell<u32>,
    /// A nested object or array somewhere (kept as text, or skipped).
    nested: std::cell::Cell<bool>,
}

/// Best effort, on the error path only: the opaque of a header that failed to decode, so the
/// error response can still be correlated by the client.
#[cold]
#[inline(never)]
pub(crate) fn salvage_opaque(bytes: &[u8]) -> Option<i32> {
    #[derive(serde::Deserialize)]
    struct OpaqueOnly {
        opaque: Option<i64>,
    }
    let parsed: OpaqueOnly = serde_json::from_slice(bytes).ok()?;
    parsed.opaque.and_then(|o| i32::try_from(o).ok())
}

enum Key {
    Code,
    Language,
    Version,
    Opaque,
    Flag,
    Remark,
    ExtFields,
    Other,
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "code" => Key::Code,
            "language" => Key::Language,
            "version" => Key::Version,
            "opaque" => Key::Opaque,
            "flag" => Key::Flag,
            "remark" => Key::Remark,
            "extFields" => Key::ExtFields,
            _ => Key::Other,
        })
    }
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(KeyVisitor)
    }
}

/// An integer header field: a JSON integer or a string holding one, within i32.
struct Int32(&'static str);

impl<'de> DeserializeSeed<'de> for Int32 {
    type Value = i32;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i32, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Int32 {
    type Value = i32;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` as a 32-bit integer", self.0)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
        i32::try_from(v).map_err(|_| E::custom(format!("`{}` = {v} is out of int32 range", self.0)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
        i32::try_from(v).map_err(|_| E::custom(format!("`{}` = {v} is out of int32 range", self.0)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
        v.parse::<i32>()
            .map_err(|_| E::custom(format!("`{}` = {v:?} is not an int32", self.0)))
    }
}

/// `language`: the enum name or its number.
struct Language;

impl<'de> DeserializeSeed<'de> for Language {
    type Value = LanguageCode;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<LanguageCode, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Language {
    type Value = LanguageCode;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`language` as a name or a number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<LanguageCode, E> {
        Ok(LanguageCode::from_name(v).unwrap_or(LanguageCode::OTHER))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<LanguageCode, E> {
        u8::try_from(v)
            .map(LanguageCode)
            .map_err(|_| E::custom(format!("`language` = {v} is out of range")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<LanguageCode, E> {
        u8::try_from(v)
            .map(LanguageCode)
            .map_err(|_| E::custom(format!("`language` = {v} is out of range")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<LanguageCode, E> {
        Ok(LanguageCode::OTHER)
    }
}

/// A decoded string: borrowed from the header bytes when it has no escapes (the usual case), so
/// decoding an ext field allocates nothing beyond the [`ExtFields`] arena.
enum Text<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl Text<'_> {
    fn into_owned(self) -> String {
        match self {
            Text::Borrowed(s) => s.to_owned(),
            Text::Owned(s) => s,
        }
    }
}

/// An ext key: a JSON string.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Text<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text::Owned(v))
    }
}

/// A scalar coerced to the string fastjson would produce; `None` for JSON null.
struct Scalar<'s>(&'s Shape);

impl<'de> DeserializeSeed<'de> for Scalar<'_> {
    type Value = Option<Text<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar<'_> {
    type Value = Option<Text<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Text::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Text::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Text::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Text::Owned(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Text::Owned(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Text::Owned(v.to_string())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Text::Borrowed(if v { "true" } else { "false" })))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.nested.set(true);
        let value: serde_json::Value =
            de::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Some(Text::Owned(value.to_string())))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.nested.set(true);
        let value: serde_json::Value =
            de::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Some(Text::Owned(value.to_string())))
    }
}

/// `extFields`: an object of scalars, or null.
struct Ext<'s>(&'s Shape);

impl<'de> DeserializeSeed<'de> for Ext<'_> {
    type Value = ExtFields;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ExtFields, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Ext<'_> {
    type Value = ExtFields;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`extFields` as an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<ExtFields, E> {
        Ok(ExtFields::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExtFields, A::Error> {
        let mut ext = ExtFields::with_capacity(map.size_hint().unwrap_or(16).min(64));
        while let Some(key) = map.next_key_seed(KeyText)? {
            if ext.len() >= MAX_EXT_FIELDS {
                return Err(de::Error::custom(format!(
                    "more than {MAX_EXT_FIELDS} extFields entries"
                )));
            }
            if key.as_ref() == "opaque" {
                self.0.ext_opaque.set(self.0.ext_opaque.get() + 1);
            }
            if let Some(value) = map.next_value_seed(Scalar(self.0))? {
                ext.insert(key, value);
            }
        }
        Ok(ext)
    }
}

/// A top-level value we do not use: skipped, noting whether it nests.
struct Skip<'s>(&'s Shape);

impl<'de> DeserializeSeed<'de> for Skip<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.nested.set(true);
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.nested.set(true);
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

struct HeaderVisitor<'s>(&'s Shape);

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = HeaderFields;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object header")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderFields, A::Error> {
        let mut fields = HeaderFields::default();
        let mut have_code = false;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Code => {
                    fields.code = map.next_value_seed(Int32("code"))?;
                    have_code = true;
                }
                Key::Language => fields.language = map.next_value_seed(Language)?,
                Key::Version => fields.version = map.next_value_seed(Int32("version"))?,
                Key::Opaque => {
                    self.0.top_opaque.set(self.0.top_opaque.get() + 1);
                    fields.opaque = map.next_value_seed(Int32("opaque"))?;
                }
                Key::Flag => fields.flag = map.next_value_seed(Int32("flag"))?,
                Key::Remark => {
                    fields.remark = map.next_value_seed(Scalar(self.0))?.map(Text::into_owned)
                }
                Key::ExtFields => fields.ext = map.next_value_seed(Ext(self.0))?,
                Key::Other => map.next_value_seed(Skip(self.0))?,
            }
        }
        if !have_code {
            return Err(de::Error::missing_field("code"));
        }
        Ok(fields)
    }
}

/// Encodes `fields` as a JSON header into `dst`.
pub(crate) fn encode(fields: &HeaderFields, dst: &mut BytesMut) {
    let mut itoa = itoa_buf::Buf::default();
    dst.put_slice(b"{\"code\":");
    dst.put_slice(itoa.format(i64::from(fields.code)));
    if !fields.ext.is_empty() {
        dst.put_slice(b",\"extFields\":{");
        for (i, (k, v)) in fields.ext.iter().enumerate() {
            if i > 0 {
                dst.put_u8(b',');
            }
            write_str(k, dst);
            dst.put_u8(b':');
            write_str(v, dst);
        }
        dst.put_u8(b'}');
    }
    dst.put_slice(b",\"flag\":");
    dst.put_slice(itoa.format(i64::from(fields.flag)));
    dst.put_slice(b",\"language\":");
    match fields.language.known_name() {
        Some(name) => write_str(name, dst),
        // An unknown code is kept as its number (fastjson reads an enum from its ordinal too),
        // so relaying it loses nothing.
        None => dst.put_slice(itoa.format(i64::from(fields.language.0))),
    }
    dst.put_slice(b",\"opaque\":");
    dst.put_slice(itoa.format(i64::from(fields.opaque)));
    if let Some(remark) = &fields.remark {
        dst.put_slice(b",\"remark\":");
        write_str(remark, dst);
    }
    dst.put_slice(b",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":");
    dst.put_slice(itoa.format(i64::from(fields.version)));
    dst.put_u8(b'}');
}

/// Writes `s` as a JSON string literal (RFC 8259 escaping; control characters as `\u00XX`, which
/// covers the `\u0001`/`\u0002` separators of message properties).
pub(crate) fn write_str(s: &str, dst: &mut BytesMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    dst.reserve(s.len() + 2);
    dst.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        dst.put_slice(&bytes[start..i]);
        if escape.is_empty() {
            dst.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            dst.put_slice(escape);
        }
        start = i + 1;
    }
    dst.put_slice(&bytes[start..]);
    dst.put_u8(b'"');
}

/// A tiny stack formatter for integers, so the encoder does not allocate per number.
pub(crate) use itoa_buf::Buf as IntBuf;

mod itoa_buf {
    #[derive(Default)]
    pub struct Buf {
        bytes: [u8; 20],
    }

    impl Buf {
        pub fn format(&mut self, v: i64) -> &[u8] {
            let mut n = v.unsigned_abs();
            let mut pos = self.bytes.len();
            loop {
                pos -= 1;
                self.bytes[pos] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            if v < 0 {
                pos -= 1;
                self.bytes[pos] = b'-';
            }
            &self.bytes[pos..]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_cpp_quirks() {
        let text = br#"{"code":11,"extFields":{"AccessKey":"","maxMsgNums":32,"queueId":0,"queueOffset":"0","unit":true,"nothing":null,"nested":{"a":[1,2]}},"flag":0,"language":"CPP","opaque":25,"remark":"","version":63,"extra":{"x":1}}"#;
        let f = decode(text).unwrap().0;
        assert_eq!(f.code, 11);
        assert_eq!(f.language, LanguageCode::CPP);
        assert_eq!(f.version, 63);
        assert_eq!(f.opaque, 25);
        assert_eq!(f.remark.as_deref(), Some(""));
        assert_eq!(f.ext.get("maxMsgNums"), Some("32"));
        assert_eq!(f.ext.get("queueId"), Some("0"));
        assert_eq!(f.ext.get("unit"), Some("true"));
        assert_eq!(f.ext.get("nothing"), None);
        assert_eq!(f.ext.get("nested"), Some(r#"{"a":[1,2]}"#));
    }

    #[test]
    fn language_as_number_and_unknown_name() {
        let f = decode(br#"{"code":0,"language":9,"opaque":1,"flag":1}"#)
            .unwrap()
            .0;
        assert_eq!(f.language, LanguageCode::GO);
        let f = decode(br#"{"code":0,"language":"KOTLIN"}"#).unwrap().0;
        assert_eq!(f.language, LanguageCode::OTHER);
    }

    #[test]
    fn rejects_garbage_with_reasons() {
        assert!(decode(b"").is_err());
        assert!(decode(b"[]").is_err());
        assert!(decode(br#"{"language":"JAVA"}"#)
            .unwrap_err()
            .contains("code"));
        assert!(decode(br#"{"code":99999999999}"#)
            .unwrap_err()
            .contains("int32"));
        assert!(decode(br#"{"code":1} trailing"#).is_err());
    }

    #[test]
    fn encode_then_decode() {
        let mut f = HeaderFields {
            code: 310,
            language: LanguageCode::JAVA,
            version: 407,
            opaque: -5,
            flag: 2,
            remark: Some("quote \" backslash \\ ctl \u{1}\u{2} tab\t ü".into()),
            ext: ExtFields::new(),
        };
        f.ext.insert("i", "TAGS\u{1}a\u{2}");
        f.ext.insert("b", "Topic");
        let mut buf = BytesMut::new();
        encode(&f, &mut buf);
        let text = std::str::from_utf8(&buf).unwrap();
        assert!(text.starts_with(r#"{"code":310,"extFields":{"i":"TAGS\u0001a\u0002","b":"Topic"},"flag":2,"language":"JAVA","opaque":-5,"#), "{text}");
        assert_eq!(decode(&buf).unwrap().0, f);
        // serde_json agrees it is valid JSON
        let _: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    }

    #[test]
    fn itoa_extremes() {
        let mut b = itoa_buf::Buf::default();
        assert_eq!(b.format(i64::MIN), i64::MIN.to_string().as_bytes());
        assert_eq!(b.format(0), b"0");
        assert_eq!(b.format(i64::MAX), i64::MAX.to_string().as_bytes());
    }
}

/// The byte range of the top-level `opaque` number in `header`, a JSON header that [`decode`]
/// found to hold exactly one `opaque` key (the top-level one), for writing a new opaque over it
/// instead of re-serializing the header. Inside a string every quote is escaped, so the only
/// `"opaque"` with an unescaped opening quote and a colon after it is that key. None when its
/// value is not a plain number (the caller then re-encodes).
pub(crate) fn find_opaque(header: &[u8]) -> Option<(usize, usize)> {
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"opaque\""));
    for at in KEY.find_iter(header) {
        let escapes = header[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if escapes % 2 == 1 {
            continue;
        }
        let mut i = at + 8;
        while header.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if header.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while header.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let start = i;
        if header.get(i) == Some(&b'-') {
            i += 1;
        }
        while header.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &header[start..i];
        let plain = !digits.is_empty() && digits != b"-";
        let ends = matches!(
            header.get(i),
            Some(b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t')
        );
        return (plain && ends).then_some((start, i));
    }
    None
}

#[cfg(test)]
mod splice_tests {
    use super::*;

    /// What `RemotingCommand::set_opaque` + encode do to a JSON header.
    fn splice_opaque(header: &[u8], opaque: i32) -> Option<Vec<u8>> {
        let (_, unique) = decode_serde(header).ok()?;
        let (start, end) = find_opaque(header).filter(|_| unique)?;
        assert_eq!(
            decode(header).unwrap().1,
            Some((start, end)),
            "both readings agree"
        );
        let mut out = header[..start].to_vec();
        out.extend_from_slice(opaque.to_string().as_bytes());
        out.extend_from_slice(&header[end..]);
        Some(out)
    }

    #[test]
    fn splices_only_the_top_level_opaque() {
        // Look-alikes in string values (escaped quotes) are not the key.
        let h = br#"{"code":10,"extFields":{"x":"\"opaque\":9","y":"\\\"opaque\":8"},"flag":0,"opaque":123,"version":1}"#;
        let out = splice_opaque(h, -45).unwrap();
        assert_eq!(
            &out[..],
            &br#"{"code":10,"extFields":{"x":"\"opaque\":9","y":"\\\"opaque\":8"},"flag":0,"opaque":-45,"version":1}"#[..]
        );
        let (d, _) = decode(&out).unwrap();
        assert_eq!(d.opaque, -45);
        assert_eq!(d.ext.get("x"), Some("\"opaque\":9"));
        // An ext key of that name, a duplicate top-level key, nested values, a quoted or a missing
        // opaque: left to the re-encoder.
        for h in [
            &br#"{"code":10,"extFields":{"opaque":"7"},"opaque":1}"#[..],
            br#"{"code":10,"opaque":1,"opaque":2}"#,
            br#"{"code":10,"extFields":{"opaque":32}}"#,
            br#"{"code":10,"x":{"opaque":3},"opaque":1}"#,
            br#"{"code":10,"extFields":{"a":[1]},"opaque":1}"#,
            br#"{"code":10,"opaque":"12"}"#,
            br#"{"code":10}"#,
        ] {
            assert!(
                splice_opaque(h, 1).is_none(),
                "{}",
                String::from_utf8_lossy(h)
            );
        }
        assert!(splice_opaque(br#"{"code":1,"opaque": 5 }"#, 77)
            .is_some_and(|b| &b[..] == br#"{"code":1,"opaque": 77 }"#));
        // Never panics on odd input.
        for bad in [
            &b"{\"opaque"[..],
            b"\"",
            b"}}}",
            b"{\"opaque\":}",
            b"{\"a\":\"\\",
            b"{\"a\":\"x\\\"",
            b"{\"opaque\":12",
            b"\\\"opaque\": 1,",
        ] {
            let _ = find_opaque(bad);
        }
    }
}
