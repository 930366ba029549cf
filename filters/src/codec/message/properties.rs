//! The message properties string (`MessageDecoder.messageProperties2String` /
//! `string2messageProperties`).
//!
//! On the wire the properties are `name \u{1} value \u{2}` pairs, concatenated, with a trailing
//! `\u{2}` after the last pair. Facts checked against Apache RocketMQ's current
//! `MessageDecoder.string2messageProperties`:
//!
//! * the string is split on `\u{2}`; a chunk shorter than 3 characters is skipped;
//! * a chunk is split at its **first** `\u{1}`; the chunk is skipped unless the name and the
//!   value are both non-empty (so the value may itself contain `\u{1}`, and `k\u{1}\u{2}` reads
//!   back as nothing);
//! * a later duplicate name replaces the earlier value (Java `HashMap.put`);
//! * `messageProperties2String` skips null values and always ends a pair with `\u{2}`.
//!
//! (Older 4.x decoders used `split` on both separators and kept only chunks with exactly two
//! parts; well-formed strings read the same either way.)

use std::fmt;

use super::MessageError;

/// Separates a name from its value.
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
/// Ends a name/value pair.
pub const PROPERTY_SEPARATOR: char = '\u{2}';
/// Longest properties string a record can carry (its length is an int16).
pub const MAX_PROPERTIES_LEN: usize = i16::MAX as usize;

/// Well-known property names (`MessageConst`).
pub mod keys {
    /// Tags (`PROPERTY_TAGS`).
    pub const TAGS: &str = "TAGS";
    /// Keys, space-separated (`PROPERTY_KEYS`).
    pub const KEYS: &str = "KEYS";
    /// waitStoreMsgOK (`PROPERTY_WAIT_STORE_MSG_OK`).
    pub const WAIT: &str = "WAIT";
    /// Delay level (`PROPERTY_DELAY_TIME_LEVEL`).
    pub const DELAY: &str = "DELAY";
    /// Client message id (`PROPERTY_UNIQ_CLIENT_MESSAGE_ID_KEYIDX`).
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// Original topic of a retry message (`PROPERTY_RETRY_TOPIC`).
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// Original topic of a delayed / half message (`PROPERTY_REAL_TOPIC`).
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// Original queue id of a delayed / half message (`PROPERTY_REAL_QUEUE_ID`).
    pub const REAL_QID: &str = "REAL_QID";
    /// Transactional half message marker (`PROPERTY_TRANSACTION_PREPARED`).
    pub const TRAN_MSG: &str = "TRAN_MSG";
    /// Producer group (`PROPERTY_PRODUCER_GROUP`).
    pub const PGROUP: &str = "PGROUP";
    /// Queue min offset, added client-side on pull (`PROPERTY_MIN_OFFSET`).
    pub const MIN_OFFSET: &str = "MIN_OFFSET";
    /// Queue max offset, added client-side on pull (`PROPERTY_MAX_OFFSET`).
    pub const MAX_OFFSET: &str = "MAX_OFFSET";
    /// Original message id of a sent-back message (`PROPERTY_ORIGIN_MESSAGE_ID`).
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// Reconsume time (`PROPERTY_RECONSUME_TIME`).
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    /// Max reconsume times (`PROPERTY_MAX_RECONSUME_TIMES`).
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    /// Consume start timestamp (`PROPERTY_CONSUME_START_TIMESTAMP`).
    pub const CONSUME_START_TIME: &str = "CONSUME_START_TIME";
    /// Pop handle (`PROPERTY_POP_CK`), see [`crate::codec::pop`].
    pub const POP_CK: &str = "POP_CK";
    /// Pop checkpoint offset (`PROPERTY_POP_CK_OFFSET`).
    pub const POP_CK_OFFSET: &str = "POP_CK_OFFSET";
    /// First pop time (`PROPERTY_FIRST_POP_TIME`).
    pub const FIRST_POP_TIME: &str = "1ST_POP_TIME";
    /// Message region (`PROPERTY_MSG_REGION`).
    pub const MSG_REGION: &str = "MSG_REGION";
    /// Trace switch (`PROPERTY_TRACE_SWITCH`).
    pub const TRACE_ON: &str = "TRACE_ON";
    /// Cluster name (`PROPERTY_CLUSTER`).
    pub const CLUSTER: &str = "CLUSTER";
    /// Original topic of a dead-letter message (`PROPERTY_DLQ_ORIGIN_TOPIC`).
    pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
    /// Original message id of a dead-letter message (`PROPERTY_DLQ_ORIGIN_MESSAGE_ID`).
    pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
    /// 5.x timer: delivery timestamp in ms (`PROPERTY_TIMER_DELIVER_MS`).
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    /// 5.x timer: delay in seconds (`PROPERTY_TIMER_DELAY_SEC`).
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    /// Transaction id (`PROPERTY_TRANSACTION_ID`).
    pub const TRANSACTION_ID: &str = "__transactionId__";
    /// LMQ dispatch targets (`PROPERTY_INNER_MULTI_DISPATCH`).
    pub const INNER_MULTI_DISPATCH: &str = "INNER_MULTI_DISPATCH";
    /// LMQ queue offsets (`PROPERTY_INNER_MULTI_QUEUE_OFFSET`).
    pub const INNER_MULTI_QUEUE_OFFSET: &str = "INNER_MULTI_QUEUE_OFFSET";
    /// Stored CRC32 (`PROPERTY_CRC32`).
    pub const CRC32: &str = "__CRC32#";
}

/// Message properties: an ordered list of name/value pairs.
///
/// Order is kept so that a decoded record re-encodes byte for byte. Look-ups are linear (a message
/// has a handful of properties). Names are unique: [`Properties::insert`] replaces in place.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties {
    entries: Vec<(String, String)>,
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Splits a wire properties string into its accepted `(name, value)` pairs, in order, following
/// Java's rules (duplicates are yielded as they appear).
fn pairs(wire: &str) -> impl Iterator<Item = (&str, &str)> {
    wire.split(PROPERTY_SEPARATOR).filter_map(|chunk| {
        // Java skips chunks shorter than 3 UTF-16 units; a chunk with a non-empty name, the
        // separator and a non-empty value is always at least 3 long, so the checks below cover it.
        let sep = chunk.find(NAME_VALUE_SEPARATOR)?;
        let (name, value) = (&chunk[..sep], &chunk[sep + 1..]);
        (!name.is_empty() && !value.is_empty()).then_some((name, value))
    })
}

/// Looks `name` up in a wire properties string without building a map (the last occurrence wins,
/// as with Java's parser).
pub fn lookup<'a>(wire: &'a str, name: &str) -> Option<&'a str> {
    // A name that is not even a substring is in no pair: one vectorized search answers the
    // usual question (is a rare property such as POP_CK there?) without splitting the string.
    if name.is_empty() || !wire.contains(name) {
        return None;
    }
    pairs(wire)
        .filter(|(n, _)| *n == name)
        .last()
        .map(|(_, v)| v)
}

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a wire properties string with Java's rules (see the module docs). Never fails:
    /// malformed chunks are skipped, as Java does.
    pub fn parse(wire: &str) -> Self {
        let mut props = Self::new();
        for (name, value) in pairs(wire) {
            props.insert(name, value);
        }
        props
    }

    /// Parses wire bytes, which must be UTF-8.
    pub fn parse_bytes(wire: &[u8]) -> Result<Self, MessageError> {
        std::str::from_utf8(wire)
            .map(Self::parse)
            .map_err(|_| MessageError::InvalidUtf8 {
                offset: 0,
                field: "properties",
            })
    }

    /// The wire form: `name\u{1}value\u{2}` for every pair, in order (trailing `\u{2}` included).
    ///
    /// Names and values are written as they are; a name or value containing a separator, or an
    /// empty name or value, does not survive a round trip (Java has the same limitation).
    pub fn to_wire_string(&self) -> String {
        let mut s = String::with_capacity(self.wire_len());
        self.write_wire(&mut s);
        s
    }

    /// Appends the wire form to `out`.
    pub fn write_wire(&self, out: &mut String) {
        for (name, value) in &self.entries {
            out.push_str(name);
            out.push(NAME_VALUE_SEPARATOR);
            out.push_str(value);
            out.push(PROPERTY_SEPARATOR);
        }
    }

    /// Length in bytes of [`Properties::to_wire_string`].
    pub fn wire_len(&self) -> usize {
        self.entries
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` to `value`, in place if present (keeping its position), else at the end.
    /// Returns the previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let name = name.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.entries.push((name, value));
                None
            }
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let idx = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(idx).1)
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `TAGS` property.
    pub fn tags(&self) -> Option<&str> {
        self.get(keys::TAGS)
    }

    /// The `KEYS` property split on spaces (empty pieces skipped).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.get(keys::KEYS)
            .unwrap_or("")
            .split(' ')
            .filter(|k| !k.is_empty())
    }

    /// The `UNIQ_KEY` property (client message id).
    pub fn uniq_key(&self) -> Option<&str> {
        self.get(keys::UNIQ_KEY)
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut props = Self::new();
        for (n, v) in iter {
            props.insert(n, v);
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPP: &str = "KEYS\u{1}key-0\u{2}TAGS\u{1}TagA\u{2}UNIQ_KEY\u{1}0100007F0000C46200001FE7686E0100\u{2}WAIT\u{1}true\u{2}myprop\u{1}v0\u{2}";

    #[test]
    fn cpp_fixture_round_trip() {
        let p = Properties::parse(CPP);
        assert_eq!(p.len(), 5);
        assert_eq!(p.tags(), Some("TagA"));
        assert_eq!(p.keys().collect::<Vec<_>>(), ["key-0"]);
        assert_eq!(p.uniq_key(), Some("0100007F0000C46200001FE7686E0100"));
        assert_eq!(p.get(keys::WAIT), Some("true"));
        assert_eq!(p.get("myprop"), Some("v0"));
        assert_eq!(p.to_wire_string(), CPP);
        assert_eq!(p.wire_len(), CPP.len());
        assert_eq!(lookup(CPP, "TAGS"), Some("TagA"));
        assert_eq!(lookup(CPP, "nope"), None);
    }

    #[test]
    fn java_parse_rules() {
        // Short chunks, empty names, empty values and chunks without a separator are skipped;
        // the value keeps any later \u{1}; no trailing separator is needed; last duplicate wins.
        let p = Properties::parse(
            "a\u{2}\u{1}x\u{2}k\u{1}\u{2}noSep\u{2}v\u{1}a\u{1}b\u{2}d\u{1}1\u{2}d\u{1}2\u{2}\u{2}z\u{1}9",
        );
        let got: Vec<_> = p.iter().collect();
        assert_eq!(got, [("v", "a\u{1}b"), ("d", "2"), ("z", "9")]);
        assert_eq!(lookup("d\u{1}1\u{2}d\u{1}2\u{2}", "d"), Some("2"));
        assert!(Properties::parse("").is_empty());
        // The substring pre-check only rules names out: inside a longer name or in a value the
        // name is still not found, and every pair parse() accepts is found.
        assert_eq!(lookup("aPOP_CK\u{1}x\u{2}", "POP_CK"), None);
        assert_eq!(lookup("x\u{1}POP_CK\u{2}", "POP_CK"), None);
        assert_eq!(lookup("x\u{1}1\u{2}POP_CK\u{1}h", "POP_CK"), Some("h"));
        assert_eq!(lookup("x\u{1}1", ""), None);
        let wire = "a\u{2}\u{1}x\u{2}k\u{1}\u{2}noSep\u{2}v\u{1}a\u{1}b\u{2}d\u{1}1\u{2}z\u{1}9";
        for (n, v) in Properties::parse(wire).iter() {
            assert_eq!(lookup(wire, n), Some(v), "{n}");
        }
    }

    #[test]
    fn insert_remove_keeps_order() {
        let mut p: Properties = [("A", "1"), ("B", "2")].into_iter().collect();
        assert_eq!(p.insert("A", "3"), Some("1".to_owned()));
        p.insert("C", "4");
        assert_eq!(p.remove("B"), Some("2".to_owned()));
        assert_eq!(p.remove("B"), None);
        assert_eq!(p.to_wire_string(), "A\u{1}3\u{2}C\u{1}4\u{2}");
        p.insert(keys::KEYS, " k1  k2 ");
        assert_eq!(p.keys().collect::<Vec<_>>(), ["k1", "k2"]);
    }

    #[test]
    fn parse_bytes_rejects_bad_utf8() {
        assert!(matches!(
            Properties::parse_bytes(b"a\x01\xff\x02"),
            Err(MessageError::InvalidUtf8 { .. })
        ));
    }
}
