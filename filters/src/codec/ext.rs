//! The custom header of a command (`extFields`) and typed access to it.
//!
//! On the wire every custom-header field is a string (Java flattens header objects with
//! `toString()`); the C++ client writes some as JSON numbers, which the JSON decoder coerces to
//! strings before they get here. [`ExtFields`] keeps insertion order so that a decoded header
//! can be written back in the order it arrived.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Most ext fields a decoded header may carry. Real headers have about 20; the cap keeps a hostile
/// header (a million one-byte keys) from costing quadratic time in the duplicate-key check.
pub const MAX_EXT_FIELDS: usize = 1024;

/// Longest value quoted back in an error message; longer values are cut (the input is untrusted).
const MAX_QUOTED_VALUE: usize = 64;

/// A typed custom header could not be read from the ext fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// A required (`@CFNotNull`) field is absent.
    #[error("missing required header field `{field}`")]
    Missing { field: &'static str },
    /// A field is present but its value does not parse as the expected type.
    #[error("header field `{field}` has invalid value {value:?}: expected {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl HeaderError {
    /// Builds an [`HeaderError::Invalid`], quoting at most 64 characters of the offending value.
    pub fn invalid(field: &'static str, value: &str, expected: &'static str) -> Self {
        let value = match value.char_indices().nth(MAX_QUOTED_VALUE) {
            Some((cut, _)) => format!("{}...", &value[..cut]),
            None => value.to_owned(),
        };
        Self::Invalid {
            field,
            value,
            expected,
        }
    }

    /// The name of the field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing { field } | Self::Invalid { field, .. } => field,
        }
    }
}

/// A value type that can be read from an ext field.
pub trait FromExt: Sized {
    /// What the value should look like, for error messages ("int32", "boolean", ...).
    const EXPECTED: &'static str;
    /// Parses the string form; `None` when it does not parse.
    fn from_ext_str(value: &str) -> Option<Self>;
}

macro_rules! from_ext_int {
    ($($t:ty => $name:literal),*) => {$(
        impl FromExt for $t {
            const EXPECTED: &'static str = $name;
            fn from_ext_str(value: &str) -> Option<Self> {
                <$t>::from_str(value).ok()
            }
        }
    )*};
}
from_ext_int!(i16 => "int16", i32 => "int32", i64 => "int64", u8 => "uint8", u16 => "uint16", u32 => "uint32", u64 => "uint64");

impl FromExt for bool {
    const EXPECTED: &'static str = "boolean (true/false)";
    /// Java writes `true`/`false` (and parses case-insensitively); the C++ client writes `1`/`0`.
    fn from_ext_str(value: &str) -> Option<Self> {
        if value.eq_ignore_ascii_case("true") || value == "1" {
            Some(true)
        } else if value.eq_ignore_ascii_case("false") || value == "0" {
            Some(false)
        } else {
            None
        }
    }
}

impl FromExt for String {
    const EXPECTED: &'static str = "string";
    fn from_ext_str(value: &str) -> Option<Self> {
        Some(value.to_owned())
    }
}

/// The `extFields` map: string keys to string values, in insertion order.
///
/// Look-ups are linear: a custom header has a handful of fields, and a flat vector beats a hash
/// map at that size while keeping the order for lossless re-encoding. Inserting a key that is
/// already present replaces its value in place (Java's `HashMap` semantics: last one wins).
///
/// Keys and values live in one string (an arena) indexed by spans, so a decoded header costs two
/// allocations instead of two per field: the sidecar decodes two headers per forwarded request.
/// A replaced or removed value leaves its bytes behind until the arena is compacted (when more
/// than half of a large arena is garbage).
#[derive(Clone, Default)]
pub struct ExtFields {
    arena: String,
    /// Per field: key start, key end, value start, value end (byte offsets into `arena`).
    spans: Vec<[usize; 4]>,
    /// Bytes of `arena` no span refers to any more.
    garbage: usize,
}

/// Arenas smaller than this are never compacted (a header is a few hundred bytes).
const COMPACT_MIN: usize = 4096;

impl PartialEq for ExtFields {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ExtFields {}

impl fmt::Debug for ExtFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl ExtFields {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `n` fields.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            arena: String::with_capacity(n * 16),
            spans: Vec::with_capacity(n),
            garbage: 0,
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn key_at(&self, s: &[usize; 4]) -> &str {
        &self.arena[s[0]..s[1]]
    }

    fn value_at(&self, s: &[usize; 4]) -> &str {
        &self.arena[s[2]..s[3]]
    }

    fn position(&self, key: &str) -> Option<usize> {
        let (bytes, first) = (self.arena.as_bytes(), key.as_bytes().first());
        // Length and first byte before the full comparison: decoding checks every new key
        // against all earlier ones, and header keys are short (`a`..`n` in a V2 send).
        self.spans.iter().position(|s| {
            s[1] - s[0] == key.len()
                && bytes.get(s[0]) == first
                && &bytes[s[0]..s[1]] == key.as_bytes()
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.spans
            .iter()
            .find(|s| self.key_at(s) == key)
            .map(|s| self.value_at(s))
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets `key` to `value`, replacing (in place) and returning any previous value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Option<String> {
        let key = key.as_ref();
        let value = value.as_ref();
        match self.position(key) {
            Some(i) => {
                let old = self.value_at(&self.spans[i]).to_owned();
                self.replace_value(i, |arena| arena.push_str(value));
                Some(old)
            }
            None => {
                self.push(key, |arena| arena.push_str(value));
                None
            }
        }
    }

    /// Sets `key` to what `write` appends to the arena (no intermediate string).
    pub(crate) fn insert_with(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        match self.position(key) {
            Some(i) => self.replace_value(i, write),
            None => self.push(key, write),
        }
    }

    fn push(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        let k0 = self.arena.len();
        self.arena.push_str(key);
        let k1 = self.arena.len();
        write(&mut self.arena);
        self.spans.push([k0, k1, k1, self.arena.len()]);
    }

    fn replace_value(&mut self, i: usize, write: impl FnOnce(&mut String)) {
        let v0 = self.arena.len();
        write(&mut self.arena);
        let v1 = self.arena.len();
        let s = &mut self.spans[i];
        self.garbage += s[3] - s[2];
        s[2] = v0;
        s[3] = v1;
        self.maybe_compact();
    }

    fn maybe_compact(&mut self) {
        if self.arena.len() < COMPACT_MIN || self.garbage * 2 < self.arena.len() {
            return;
        }
        let mut arena = String::with_capacity(self.arena.len() - self.garbage);
        for s in &mut self.spans {
            let k0 = arena.len();
            arena.push_str(&self.arena[s[0]..s[1]]);
            let k1 = arena.len();
            arena.push_str(&self.arena[s[2]..s[3]]);
            *s = [k0, k1, k1, arena.len()];
        }
        self.arena = arena;
        self.garbage = 0;
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.position(key)?;
        let s = self.spans.remove(i);
        self.garbage += s[3] - s[0];
        let value = self.arena[s[2]..s[3]].to_owned();
        self.maybe_compact();
        Some(value)
    }

    /// The fields in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.spans
            .iter()
            .map(|s| (self.key_at(s), self.value_at(s)))
    }

    /// A required string field.
    pub fn required_str(&self, field: &'static str) -> Result<&str, HeaderError> {
        self.get(field).ok_or(HeaderError::Missing { field })
    }

    /// A required field parsed as `T`.
    pub fn required<T: FromExt>(&self, field: &'static str) -> Result<T, HeaderError> {
        let raw = self.required_str(field)?;
        T::from_ext_str(raw).ok_or_else(|| HeaderError::invalid(field, raw, T::EXPECTED))
    }

    /// An optional field parsed as `T`; absent gives `Ok(None)`, present but malformed an error.
    pub fn optional<T: FromExt>(&self, field: &'static str) -> Result<Option<T>, HeaderError> {
        match self.get(field) {
            None => Ok(None),
            Some(raw) => T::from_ext_str(raw)
                .map(Some)
                .ok_or_else(|| HeaderError::invalid(field, raw, T::EXPECTED)),
        }
    }

    /// Sets `field` to the string form of `value`.
    pub fn put(&mut self, field: &str, value: impl fmt::Display) {
        self.insert_with(field, |arena| {
            use fmt::Write;
            // Writing into a String cannot fail.
            let _ = write!(arena, "{value}");
        });
    }

    /// Sets `field` to the string form of `value` when it is `Some`; leaves the map alone otherwise.
    pub fn put_opt<T: fmt::Display>(&mut self, field: &str, value: Option<T>) {
        if let Some(value) = value {
            self.put(field, value);
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for ExtFields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut ext = ExtFields::new();
        for (k, v) in iter {
            ext.insert(k, v);
        }
        ext
    }
}

/// A typed custom header: a struct that lives in a command's ext fields.
///
/// `from_ext` fails with [`HeaderError`] naming the first missing or malformed field;
/// `write_ext` writes every field that is set (optional fields that are `None` are omitted, the
/// way Java omits null fields).
pub trait CommandHeader: Sized {
    /// Reads the header from ext fields.
    fn from_ext(ext: &ExtFields) -> Result<Self, HeaderError>;
    /// Writes the header's fields into `ext`.
    fn write_ext(&self, ext: &mut ExtFields);
    /// The header as a fresh ext map.
    fn to_ext(&self) -> ExtFields {
        let mut ext = ExtFields::new();
        self.write_ext(&mut ext);
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let mut ext = ExtFields::new();
        ext.insert("b", "1");
        ext.insert("a", "2");
        assert_eq!(ext.insert("b", "3"), Some("1".to_owned()));
        let keys: Vec<_> = ext.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(ext.get("b"), Some("3"));
        assert_eq!(ext.remove("b"), Some("3".to_owned()));
        assert_eq!(ext.len(), 1);
    }

    #[test]
    fn replaced_values_are_compacted_away() {
        let mut ext = ExtFields::new();
        ext.insert("keep", "k");
        let big = "v".repeat(1000);
        for i in 0..100 {
            ext.insert("x", format!("{i}{big}"));
            ext.put("n", i);
        }
        assert!(ext.arena.len() < 3 * COMPACT_MIN, "{}", ext.arena.len());
        assert_eq!(ext.get("keep"), Some("k"));
        assert_eq!(ext.get("n"), Some("99"));
        assert!(ext.get("x").is_some_and(|v| v.starts_with("99v")));
        let keys: Vec<_> = ext.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["keep", "x", "n"]);
        assert_eq!(ext.remove("x").map(|v| v.len()), Some(1002));
        let other: ExtFields = [("keep", "k"), ("n", "99")].into_iter().collect();
        assert_eq!(ext, other);
    }

    #[test]
    fn typed_access_names_the_field() {
        let ext: ExtFields = [("queueId", "7"), ("sysFlag", "x"), ("unitMode", "0")]
            .into_iter()
            .collect();
        assert_eq!(ext.required::<i32>("queueId"), Ok(7));
        assert_eq!(
            ext.required::<i64>("queueOffset"),
            Err(HeaderError::Missing {
                field: "queueOffset"
            })
        );
        let err = ext.required::<i32>("sysFlag").unwrap_err();
        assert_eq!(err.field(), "sysFlag");
        assert!(err.to_string().contains("sysFlag"), "{err}");
        assert_eq!(ext.optional::<bool>("unitMode"), Ok(Some(false)));
        assert_eq!(ext.optional::<bool>("batch"), Ok(None));
    }

    #[test]
    fn booleans_accept_java_and_cpp_forms() {
        for (s, b) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("false", false),
            ("0", false),
        ] {
            assert_eq!(bool::from_ext_str(s), Some(b), "{s}");
        }
        assert_eq!(bool::from_ext_str("yes"), None);
    }

    #[test]
    fn long_invalid_values_are_cut_in_errors() {
        let long = "9".repeat(10_000);
        let err = HeaderError::invalid("offset", &long, "int64");
        assert!(err.to_string().len() < 200);
    }
}
