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
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExtFields {
    entries: Vec<(String, String)>,
}

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
            entries: Vec::with_capacity(n),
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing (in place) and returning any previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(pos).1)
    }

    /// The fields in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
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
        self.insert(field, value.to_string());
    }

    /// Sets `field` to the string form of `value` when it is `Some`; leaves the map alone otherwise.
    pub fn put_opt<T: fmt::Display>(&mut self, field: &str, value: Option<T>) {
        if let Some(value) = value {
            self.put(field, value);
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ExtFields {
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
