//! A single-pass reader for the JSON headers real peers send: one object of scalars with a flat
//! `extFields` object inside. It reads keys and values in place (one UTF-8 check of the whole
//! header, strings copied once, into the [`ExtFields`] arena), and notes where the top-level
//! `opaque` digits are, so a forwarded command can get a new opaque without any further scan.
//!
//! Anything outside that shape (nested values, escaped keys, unusual numbers, malformed input)
//! makes it give up (`None`), and `json::decode` reads the header with serde instead, which also
//! produces the error messages. For every header it accepts, the result equals serde's (checked
//! by tests over the captured frames and generated headers).

use super::codes::LanguageCode;
use super::command::HeaderFields;
use super::ext::{ExtFields, MAX_EXT_FIELDS};

/// Reads `bytes`; `None` when the header is not of the simple shape (or not valid).
/// The span is the byte range of the top-level `opaque` number when it is the only `opaque` key.
pub(crate) fn decode(bytes: &[u8]) -> Option<(HeaderFields, Option<(usize, usize)>)> {
    decode_with(bytes, false).map(|d| (d.fields, d.opaque_span))
}

/// A header read by [`decode_deferred`].
pub(crate) struct Decoded {
    pub fields: HeaderFields,
    /// As for [`decode`].
    pub opaque_span: Option<(usize, usize)>,
    /// The `extFields` object's bytes (`{` to `}`) when they were checked but not read:
    /// `fields.ext` is then empty, and [`read_ext`] over this range reads them.
    pub ext_span: Option<(usize, usize)>,
}

/// Like [`decode`], but `extFields` is only checked, not read (no copy, no allocation): a
/// command whose custom header nobody looks at, such as a response relayed by opaque, never
/// pays for it. The check accepts no more than the full reading does.
pub(crate) fn decode_deferred(bytes: &[u8]) -> Option<Decoded> {
    decode_with(bytes, true)
}

/// Reads an `extFields` object that [`decode_deferred`] checked (its `ext_span` bytes).
pub(crate) fn read_ext(bytes: &[u8]) -> Option<ExtFields> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader {
        b: text.as_bytes(),
        s: text,
        i: 0,
    };
    let mut ext = ExtFields::with_capacity(16);
    r.ext(&mut 0, &mut ext)?;
    (r.i == r.b.len()).then_some(ext)
}

fn decode_with(bytes: &[u8], defer_ext: bool) -> Option<Decoded> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader {
        b: text.as_bytes(),
        s: text,
        i: 0,
    };
    let mut fields = HeaderFields::default();
    let mut have_code = false;
    let mut opaque_keys = 0u32;
    let mut opaque_span = None;
    let mut ext_span = None;
    r.ws();
    r.eat(b'{')?;
    r.ws();
    if r.peek()? == b'}' {
        return None; // no code: serde reports it
    }
    loop {
        r.ws();
        let key = r.plain_string()?;
        r.ws();
        r.eat(b':')?;
        r.ws();
        match key {
            "code" => {
                fields.code = r.int32()?;
                have_code = true;
            }
            "language" => {
                fields.language = match r.peek()? {
                    b'"' => {
                        LanguageCode::from_name(r.plain_string()?).unwrap_or(LanguageCode::OTHER)
                    }
                    b'n' => {
                        r.literal("null")?;
                        LanguageCode::OTHER
                    }
                    _ => LanguageCode(u8::try_from(r.integer()?.1).ok()?),
                };
            }
            "version" => fields.version = r.int32()?,
            "opaque" => {
                opaque_keys += 1;
                let start = r.i;
                let plain = r.peek()? != b'"';
                fields.opaque = r.int32()?;
                opaque_span = plain.then_some((start, r.i));
            }
            "flag" => fields.flag = r.int32()?,
            "remark" => {
                fields.remark = match r.peek()? {
                    b'"' => {
                        let mut s = String::new();
                        r.string_into(&mut s)?;
                        Some(s)
                    }
                    b'n' => {
                        r.literal("null")?;
                        None
                    }
                    _ => return None,
                };
            }
            "extFields" => match r.peek()? {
                b'n' => {
                    r.literal("null")?;
                    fields.ext = ExtFields::new();
                    ext_span = None;
                }
                _ if defer_ext => {
                    let start = r.i;
                    r.ext(&mut opaque_keys, &mut Skim::default())?;
                    fields.ext = ExtFields::new();
                    ext_span = Some((start, r.i));
                }
                _ => {
                    let mut ext = ExtFields::with_capacity(16);
                    r.ext(&mut opaque_keys, &mut ext)?;
                    fields.ext = ext;
                }
            },
            _ => r.skip_scalar()?,
        }
        r.ws();
        match r.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    r.ws();
    if r.i != r.b.len() || !have_code {
        return None;
    }
    Some(Decoded {
        fields,
        opaque_span: opaque_span.filter(|_| opaque_keys == 1),
        ext_span,
    })
}

/// Where string contents go: the [`ExtFields`] arena, a `String`, or nowhere (a check only).
trait StrOut {
    fn push_str(&mut self, s: &str);
    fn push(&mut self, c: char);
}

impl StrOut for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
    fn push(&mut self, c: char) {
        String::push(self, c);
    }
}

/// Discards what it is given.
struct Discard;

impl StrOut for Discard {
    fn push_str(&mut self, _: &str) {}
    fn push(&mut self, _: char) {}
}

/// Where the `extFields` entries go. [`Skim`] counts every key, duplicates included, so it is
/// full no later than an [`ExtFields`] (which replaces duplicates) would be: what it accepts,
/// the full reading accepts too.
trait ExtSink {
    type Out: StrOut;
    fn is_full(&self) -> bool;
    /// Adds `key` with the value `write` produces; false when `write` failed.
    fn value(&mut self, key: &str, write: impl FnOnce(&mut Self::Out) -> bool) -> bool;
    fn literal(&mut self, key: &str, value: &str);
}

impl ExtSink for ExtFields {
    type Out = String;
    fn is_full(&self) -> bool {
        self.len() >= MAX_EXT_FIELDS
    }
    fn value(&mut self, key: &str, write: impl FnOnce(&mut String) -> bool) -> bool {
        let mut ok = true;
        self.insert_with(key, |arena| ok = write(arena));
        ok
    }
    fn literal(&mut self, key: &str, value: &str) {
        self.insert(key, value);
    }
}

#[derive(Default)]
struct Skim {
    keys: usize,
}

impl ExtSink for Skim {
    type Out = Discard;
    fn is_full(&self) -> bool {
        self.keys >= MAX_EXT_FIELDS
    }
    fn value(&mut self, _: &str, write: impl FnOnce(&mut Discard) -> bool) -> bool {
        self.keys += 1;
        write(&mut Discard)
    }
    fn literal(&mut self, _: &str, _: &str) {
        self.keys += 1;
    }
}

/// Bytes that end a plain run inside a JSON string: `"`, `\\` and the control characters.
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Reader<'a> {
    b: &'a [u8],
    /// The same bytes, checked UTF-8.
    s: &'a str,
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word.as_bytes()).then(|| self.i = end)
    }

    /// A string without escapes, borrowed (keys, language names).
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = self.string_stop(start)?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.s[start..end])
    }

    /// A string appended to `out`, escapes resolved.
    fn string_into(&mut self, out: &mut impl StrOut) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let start = self.i;
            let end = self.string_stop(start)?;
            out.push_str(&self.s[start..end]);
            self.i = end + 1;
            if self.b[end] == b'"' {
                return Some(());
            }
            let c = match self.next()? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let hi = self.hex4()?;
                    if (0xD800..0xDC00).contains(&hi) {
                        // A surrogate pair; a lone surrogate is left to serde.
                        self.literal("\\u")?;
                        let lo = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    } else {
                        char::from_u32(hi)?
                    }
                }
                _ => return None,
            };
            out.push(c);
        }
    }

    /// Where a string's plain run starting at `from` stops: at a `"` or a `\\`. `None` at a
    /// raw control character (invalid JSON) or the end of input. One pass, one table look-up
    /// per byte: header strings are short (keys, numbers as text), where a SIMD search's set-up
    /// costs more than it saves, and it also had to be followed by a second pass for control
    /// characters.
    fn string_stop(&self, from: usize) -> Option<usize> {
        let rest = self.b.get(from..)?;
        let n = rest.iter().position(|&c| STOP[usize::from(c)])?;
        (rest[n] >= 0x20).then_some(from + n)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + char::from(d).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    /// An integer literal as its text and value: no fraction or exponent, no leading zeros, no
    /// `-0`, at most 18 digits (so its text is what Java/serde would print for it).
    fn integer(&mut self) -> Option<(&'a str, i64)> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let digits = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let n = self.i - digits;
        if n == 0 || n > 18 || (n > 1 && self.b[digits] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let text = &self.s[start..self.i];
        if text == "-0" {
            return None;
        }
        Some((text, text.parse().ok()?))
    }

    /// A top-level integer field: a number or a string holding one, within i32.
    fn int32(&mut self) -> Option<i32> {
        if self.peek()? == b'"' {
            return self.plain_string()?.parse().ok();
        }
        i32::try_from(self.integer()?.1).ok()
    }

    /// A scalar we do not keep.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.integer().map(drop),
        }
    }

    /// The `extFields` object: scalar values, coerced to strings as fastjson would write them.
    fn ext(&mut self, opaque_keys: &mut u32, ext: &mut impl ExtSink) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let key = self.plain_string()?;
            if key == "opaque" {
                *opaque_keys += 1;
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            if ext.is_full() {
                return None;
            }
            match self.peek()? {
                b'"' => {
                    if !ext.value(key, |out| self.string_into(out).is_some()) {
                        return None;
                    }
                }
                b't' => {
                    self.literal("true")?;
                    ext.literal(key, "true");
                }
                b'f' => {
                    self.literal("false")?;
                    ext.literal(key, "false");
                }
                // null: the field is dropped, as in serde's reading.
                b'n' => self.literal("null")?,
                _ => {
                    let (text, _) = self.integer()?;
                    ext.literal(key, text);
                }
            }
            self.ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }
}

/// The fuzz targets' and tests' oracle: the fast reader agrees with serde on `bytes`. For a header
/// the fast path accepts, serde accepts it too and reads the same fields, the opaque span is where
/// serde's shape check and the byte search put it, and the deferred reading (when it accepts)
/// reads its checked `extFields` bytes to the same map. `Ok(true)`: the fast path read it;
/// `Ok(false)`: it fell back to serde; `Err`: a disagreement, described.
pub(crate) fn check_against_serde(bytes: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(bytes);
    if let Some(d) = decode_deferred(bytes) {
        let Some((full, span)) = decode(bytes) else {
            return Err(format!("deferred reading only: {text}"));
        };
        if d.opaque_span != span {
            return Err(format!(
                "deferred opaque span {:?} != {span:?}: {text}",
                d.opaque_span
            ));
        }
        if !d.fields.ext.is_empty() {
            return Err(format!("deferred reading filled extFields: {text}"));
        }
        let ext = match d.ext_span {
            Some((a, b)) => bytes
                .get(a..b)
                .and_then(read_ext)
                .ok_or_else(|| format!("deferred extFields unreadable: {text}"))?,
            None => ExtFields::new(),
        };
        if ext != full.ext || (HeaderFields { ext, ..d.fields }) != full {
            return Err(format!(
                "deferred reading differs from the full one: {text}"
            ));
        }
    }
    match (decode(bytes), super::json::decode_serde(bytes)) {
        (Some((f, span)), Ok((s, unique))) => {
            if f != s {
                return Err(format!("fast {f:?} != serde {s:?}: {text}"));
            }
            let expected = if unique {
                super::json::find_opaque(bytes)
            } else {
                None
            };
            if span != expected {
                return Err(format!(
                    "opaque span {span:?}, serde's shape says {expected:?}: {text}"
                ));
            }
            Ok(true)
        }
        (Some(_), Err(e)) => Err(format!(
            "fast reading accepted what serde refuses ({e}): {text}"
        )),
        (None, _) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json;
    use proptest::prelude::*;

    /// The fast reading was taken (and agreed with serde's); panics on any disagreement.
    fn agree(bytes: &[u8]) -> bool {
        check_against_serde(bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_captured_json_header_takes_the_fast_path() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frames");
        let mut stack = vec![dir];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "hex") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let Ok(frame) = decode_hex(text.trim()) else {
                    continue;
                };
                if frame.len() < 8 || frame[4] != 0 {
                    continue; // binary header
                }
                let hlen = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]) as usize;
                let Some(header) = frame.get(8..8 + hlen) else {
                    continue;
                };
                if json::decode_serde(header).is_err() {
                    continue; // the malformed samples
                }
                assert!(agree(header), "{}: not read by the fast path", p.display());
                n += 1;
            }
        }
        assert!(n >= 30, "only {n} JSON frames");
    }

    fn decode_hex(s: &str) -> Result<Vec<u8>, ()> {
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
            })
            .collect()
    }

    #[test]
    fn odd_but_valid_headers_agree_or_fall_back() {
        for h in [
            r#"{"code":10,"opaque":1}"#,
            r#" { "code" : "10" , "opaque" : -3 , "flag":1 } "#,
            r#"{"code":1,"language":"CPP","version":"5","extFields":{"a":1,"b":true,"c":null,"d":"x\u0001y\u0002","e":"\ud83d\ude00","f":"\"q\"\\/"}}"#,
            r#"{"code":1,"language":9,"remark":null,"extFields":null}"#,
            r#"{"code":1,"language":"NOPE","remark":"r\nr","x":[1],"opaque":2}"#,
            r#"{"code":1,"extFields":{"n":1.5,"m":-0,"o":007}}"#,
            r#"{"code":1,"extFields":{"opaque":"1"},"opaque":4}"#,
            r#"{"code":1,"opaque":4,"opaque":5}"#,
            r#"{"code":10 , "extFields":{"opaque":32 , "code":true}}"#,
            r#"{"code":1,"opaque":"4"}"#,
            r#"{"code":99999999999}"#,
            r#"{"code":1,"extFields":{"k\u0041":"v"}}"#,
            r#"{"code":1,"extFields":{"a":"\ud800"}}"#,
            r#"{"code":1} x"#,
            r#"{}"#,
            r#"{"code":1,"extFields":{"a":"b",}}"#,
        ] {
            agree(h.as_bytes());
        }
        assert!(agree(br#"{"code":10,"opaque":1}"#));
        assert!(agree(
            br#"{"code":1,"extFields":{"a":1,"b":true,"c":null,"d":"x\u0001y"}}"#
        ));
    }

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 %:;.\\-_]{0,12}".prop_map(|s| format!("\"{s}\"")),
            "[\\x01-\\x03\"\\\\/a-z\u{e9}\u{1F600}]{0,6}"
                .prop_map(|s| serde_json::to_string(&s).unwrap()),
            any::<i64>().prop_map(|n| n.to_string()),
            "-?[0-9]{1,3}(\\.[0-9])?".prop_map(|s| s),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("[1,2]".to_owned()),
            Just("{\"opaque\":1}".to_owned()),
            "\"\\\\u[dD][89abAB][0-9a-f]{2}\"".prop_map(|s| s),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,6}",
            Just("opaque".to_owned()),
            Just("code".to_owned()),
            Just("k\\u0041".to_owned()),
        ]
    }

    fn header() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((key(), scalar()), 0..6),
            prop::collection::vec((key(), scalar()), 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(ext, top, with_code, spaced)| {
                let sep = if spaced { " , " } else { "," };
                let mut parts = Vec::new();
                if with_code {
                    parts.push("\"code\":10".to_owned());
                }
                for (k, v) in top {
                    parts.push(format!("\"{k}\":{v}"));
                }
                let ext: Vec<String> = ext.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                parts.push(format!("\"extFields\":{{{}}}", ext.join(sep)));
                format!("{{{}}}", parts.join(sep))
            })
    }

    proptest! {
        #[test]
        fn generated_headers_agree_or_fall_back(h in header()) {
            agree(h.as_bytes());
        }
    }
}
