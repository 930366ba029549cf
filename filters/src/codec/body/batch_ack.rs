//! BATCH_ACK_MESSAGE (200151) body: `BatchAckMessageRequestBody` and `BatchAck` (protocol
//! notes 4.4), with the `java.util.BitSet` of acked offsets.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::json_body;
use super::serde_util::{lenient_string, null_default};
use super::BodyError;

/// Largest accepted bit set, in bytes of `BitSet.toByteArray()`: 8 KiB, i.e. 65 536 bits.
/// A pop checkpoint covers at most 32 messages in practice, so anything near this is hostile.
pub const MAX_BIT_SET_BYTES: usize = 8 * 1024;

/// Number of bits a bit set may address ([`MAX_BIT_SET_BYTES`] * 8).
const MAX_BITS: usize = MAX_BIT_SET_BYTES * 8;

/// Longest Base64 text that can decode to at most [`MAX_BIT_SET_BYTES`] bytes (padded form).
const MAX_BASE64_LEN: usize = MAX_BIT_SET_BYTES.div_ceil(3) * 4;

/// Standard alphabet; reads with or without `=` padding (fastjson writes it, others may not).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The acked offsets of one checkpoint, as a `java.util.BitSet`: bit *i* acks offset
/// `startOffset + i`.
///
/// Stored as `BitSet.toByteArray()`: little-endian bit order (bit *i* is in byte *i / 8* at mask
/// `1 << (i % 8)`), without trailing zero bytes. On the wire it is a JSON string holding that
/// array in Base64 (standard alphabet, padded). At most [`MAX_BIT_SET_BYTES`] bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct AckBitSet {
    /// Invariant: no trailing zero byte, length <= MAX_BIT_SET_BYTES.
    bytes: Vec<u8>,
}

impl fmt::Debug for AckBitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl AckBitSet {
    /// Number of addressable bits (65 536).
    pub const MAX_BITS: usize = MAX_BITS;

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// `BitSet.valueOf(bytes)`: trailing zero bytes are ignored; more than
    /// [`MAX_BIT_SET_BYTES`] (after trimming) is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BodyError> {
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if used > MAX_BIT_SET_BYTES {
            return Err(BodyError::BitSetTooLarge {
                len: used,
                max: MAX_BIT_SET_BYTES,
            });
        }
        Ok(Self {
            bytes: bytes[..used].to_vec(),
        })
    }

    /// `BitSet.toByteArray()`: the minimal little-endian byte form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `BitSet.toByteArray()` as an owned vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// Decodes the wire form: Base64 of `toByteArray()` (padding optional). An empty string is
    /// the empty set.
    pub fn from_base64(text: &str) -> Result<Self, BodyError> {
        if text.len() > MAX_BASE64_LEN {
            return Err(BodyError::BitSetTooLarge {
                len: text.len() / 4 * 3,
                max: MAX_BIT_SET_BYTES,
            });
        }
        let bytes = BASE64.decode(text).map_err(|e| BodyError::BitSetBase64 {
            message: e.to_string(),
        })?;
        Self::from_bytes(&bytes)
    }

    /// The wire form: Base64 (standard, padded) of `toByteArray()`; `""` for the empty set.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// Sets bit `index`. Returns `false` (and changes nothing) when `index` is not below
    /// [`AckBitSet::MAX_BITS`].
    pub fn set(&mut self, index: usize) -> bool {
        if index >= MAX_BITS {
            return false;
        }
        let byte = index / 8;
        if self.bytes.len() <= byte {
            self.bytes.resize(byte + 1, 0);
        }
        if let Some(b) = self.bytes.get_mut(byte) {
            *b |= 1 << (index % 8);
        }
        true
    }

    /// Clears bit `index` (a no-op when it is not set).
    pub fn clear(&mut self, index: usize) {
        if let Some(b) = self.bytes.get_mut(index / 8) {
            *b &= !(1 << (index % 8));
        }
        while self.bytes.last() == Some(&0) {
            self.bytes.pop();
        }
    }

    /// Whether bit `index` is set.
    pub fn contains(&self, index: usize) -> bool {
        self.bytes
            .get(index / 8)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// The set bits, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bytes.iter().enumerate().flat_map(|(i, &byte)| {
            (0..8)
                .filter(move |bit| byte & (1 << bit) != 0)
                .map(move |bit| i * 8 + bit)
        })
    }

    /// Number of set bits (`BitSet.cardinality()`).
    pub fn count(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Serialize for AckBitSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for AckBitSet {
    /// From the Base64 string Java writes, or from a JSON array of 64-bit words
    /// (`BitSet.toLongArray()`, as rocketmq-rust's proxy writes it); `null` is the empty set (as
    /// Java, which leaves the field null).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BitSetVisitor)
    }
}

struct BitSetVisitor;

impl<'de> serde::de::Visitor<'de> for BitSetVisitor {
    type Value = AckBitSet;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Base64 string or an array of 64-bit words")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AckBitSet, E> {
        AckBitSet::from_base64(v).map_err(E::custom)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<AckBitSet, E> {
        Ok(AckBitSet::new())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<AckBitSet, E> {
        Ok(AckBitSet::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<AckBitSet, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AckBitSet, A::Error> {
        // `BitSet.valueOf(long[])`: word i holds bits 64i..64i+63, least significant first.
        // Bounded like the Base64 form: at most MAX_BIT_SET_BYTES bytes of words are read.
        let mut bytes = Vec::new();
        while let Some(word) = seq.next_element::<Word>()? {
            if bytes.len() >= MAX_BIT_SET_BYTES {
                return Err(serde::de::Error::custom(BodyError::BitSetTooLarge {
                    len: bytes.len() + 8,
                    max: MAX_BIT_SET_BYTES,
                }));
            }
            bytes.extend_from_slice(&word.0.to_le_bytes());
        }
        AckBitSet::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// One word of `toLongArray()`: Java's signed long, or its unsigned reading.
struct Word(u64);

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Word;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-bit integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Word, E> {
                Ok(Word(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Word, E> {
                Ok(Word(v as u64))
            }
        }
        d.deserialize_any(V)
    }
}

/// Acks of one pop checkpoint (`BatchAck`). JSON keys are the short names; the long names are
/// accepted too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The consumer group (`c`).
    #[serde(
        rename = "c",
        alias = "consumerGroup",
        default,
        deserialize_with = "null_default"
    )]
    pub consumer_group: String,
    /// The **original** topic (`t`); the broker rebuilds the retry topic from `r` and `c`.
    #[serde(
        rename = "t",
        alias = "topic",
        default,
        deserialize_with = "null_default"
    )]
    pub topic: String,
    /// `"0"` normal, `"1"` retry v1, `"2"` retry v2 (`r`; a number is accepted too).
    #[serde(
        rename = "r",
        alias = "retry",
        default,
        deserialize_with = "lenient_string"
    )]
    pub retry: String,
    /// The checkpoint's start offset (`so`): bit *i* acks `start_offset + i`.
    #[serde(
        rename = "so",
        alias = "startOffset",
        default,
        deserialize_with = "null_default"
    )]
    pub start_offset: i64,
    /// The queue id (`q`).
    #[serde(
        rename = "q",
        alias = "queueId",
        default,
        deserialize_with = "null_default"
    )]
    pub queue_id: i32,
    /// The revive queue id (`rq`).
    #[serde(
        rename = "rq",
        alias = "reviveQueueId",
        default,
        deserialize_with = "null_default"
    )]
    pub revive_queue_id: i32,
    /// The pop time, ms (`pt`).
    #[serde(
        rename = "pt",
        alias = "popTime",
        default,
        deserialize_with = "null_default"
    )]
    pub pop_time: i64,
    /// The invisible time, ms (`it`).
    #[serde(
        rename = "it",
        alias = "invisibleTime",
        default,
        deserialize_with = "null_default"
    )]
    pub invisible_time: i64,
    /// The acked offsets relative to `start_offset` (`b`).
    #[serde(rename = "b", alias = "bitSet", default)]
    pub bit_set: AckBitSet,
}

impl BatchAck {
    /// The acked queue offsets (`start_offset + i` for every set bit *i*), ascending.
    pub fn acked_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.bit_set
            .iter()
            .map(move |i| self.start_offset.saturating_add(i as i64))
    }
}

/// The BATCH_ACK_MESSAGE body (`BatchAckMessageRequestBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAckMessageRequestBody {
    /// The checkpoints acked.
    #[serde(default, deserialize_with = "null_default")]
    pub acks: Vec<BatchAck>,
    /// The broker the acks are for.
    #[serde(default, deserialize_with = "null_default")]
    pub broker_name: String,
}

json_body!(BatchAckMessageRequestBody, "BatchAckMessageRequestBody");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_set_java_layout() {
        let mut bits = AckBitSet::new();
        assert!(bits.set(0) && bits.set(2) && bits.set(9));
        assert_eq!(bits.as_bytes(), [0x05, 0x02]);
        assert_eq!(bits.to_base64(), "BQI=");
        assert_eq!(bits.iter().collect::<Vec<_>>(), [0, 2, 9]);
        assert_eq!(bits.count(), 3);
        assert!(bits.contains(9) && !bits.contains(1) && !bits.contains(1_000_000));
        assert_eq!(AckBitSet::from_base64("BQI=").unwrap(), bits);
        assert_eq!(AckBitSet::from_base64("BQI").unwrap(), bits);
        assert_eq!(AckBitSet::from_bytes(&[0x05, 0x02, 0, 0]).unwrap(), bits);
        assert_eq!(format!("{bits:?}"), "{0, 2, 9}");
        bits.clear(9);
        assert_eq!(bits.as_bytes(), [0x05]);
        bits.clear(0);
        bits.clear(2);
        assert!(bits.is_empty());
        assert_eq!(bits.to_base64(), "");
        assert_eq!(AckBitSet::from_base64("").unwrap(), bits);
        assert!(bits.set(AckBitSet::MAX_BITS - 1));
        assert!(!bits.set(AckBitSet::MAX_BITS));
        assert_eq!(bits.as_bytes().len(), MAX_BIT_SET_BYTES);
    }

    #[test]
    fn bit_set_limits() {
        let max = base64::engine::general_purpose::STANDARD.encode(vec![0xffu8; MAX_BIT_SET_BYTES]);
        assert_eq!(
            AckBitSet::from_base64(&max).unwrap().count(),
            AckBitSet::MAX_BITS
        );
        let over =
            base64::engine::general_purpose::STANDARD.encode(vec![0x01u8; MAX_BIT_SET_BYTES + 1]);
        assert!(matches!(
            AckBitSet::from_base64(&over),
            Err(BodyError::BitSetTooLarge {
                max: MAX_BIT_SET_BYTES,
                ..
            })
        ));
        assert!(matches!(
            AckBitSet::from_bytes(&[1; MAX_BIT_SET_BYTES + 1]),
            Err(BodyError::BitSetTooLarge { len, .. }) if len == MAX_BIT_SET_BYTES + 1
        ));
        assert!(matches!(
            AckBitSet::from_base64("B*I="),
            Err(BodyError::BitSetBase64 { .. })
        ));
        let body = format!(r#"{{"acks":[{{"b":"{over}"}}]}}"#);
        let err = BatchAckMessageRequestBody::parse(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("bit set too large"), "{err}");
    }

    #[test]
    fn bit_set_as_an_array_of_words() {
        // BitSet.toLongArray(), as rocketmq-rust's proxy writes it: bits 0, 2, 9, then bit 63
        // (a negative long in Java) and bit 64.
        let body = br#"{"brokerName":"b","acks":[{"b":[517]},{"b":[-9223372036854775808,1]},{"b":[]},{"b":null}]}"#;
        let req = BatchAckMessageRequestBody::parse(body).unwrap();
        assert_eq!(req.acks[0].bit_set.iter().collect::<Vec<_>>(), [0, 2, 9]);
        assert_eq!(req.acks[1].bit_set.iter().collect::<Vec<_>>(), [63, 64]);
        assert!(req.acks[2].bit_set.is_empty() && req.acks[3].bit_set.is_empty());
        // Bounded like the Base64 form.
        let words = vec!["1"; MAX_BIT_SET_BYTES / 8 + 1].join(",");
        let body = format!(r#"{{"acks":[{{"b":[{words}]}}]}}"#);
        let err = BatchAckMessageRequestBody::parse(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("bit set too large"), "{err}");
        assert!(BatchAckMessageRequestBody::parse(br#"{"acks":[{"b":[1.5]}]}"#).is_err());
    }

    #[test]
    fn batch_ack_body() {
        let body = br#"{"brokerName":"broker-a",
 "acks":[{"c":"group","t":"TopicA","r":"0","so":1200,"q":3,"rq":5,
          "pt":1712345678901,"it":60000,"b":"BQI="}]}"#;
        let req = BatchAckMessageRequestBody::parse(body).unwrap();
        assert_eq!(req.broker_name, "broker-a");
        let ack = &req.acks[0];
        assert_eq!(ack.consumer_group, "group");
        assert_eq!(ack.topic, "TopicA");
        assert_eq!(ack.retry, "0");
        assert_eq!(
            (ack.start_offset, ack.queue_id, ack.revive_queue_id),
            (1200, 3, 5)
        );
        assert_eq!(
            (ack.pop_time, ack.invisible_time),
            (1_712_345_678_901, 60_000)
        );
        assert_eq!(ack.acked_offsets().collect::<Vec<_>>(), [1200, 1202, 1209]);

        let out = req.to_json();
        assert_eq!(
            out,
            br#"{"acks":[{"c":"group","t":"TopicA","r":"0","so":1200,"q":3,"rq":5,"pt":1712345678901,"it":60000,"b":"BQI="}],"brokerName":"broker-a"}"#.to_vec()
        );
        assert_eq!(BatchAckMessageRequestBody::parse(&out).unwrap(), req);

        let long = br#"{"brokerName":"broker-a","acks":[{"consumerGroup":"group","topic":"TopicA","retry":0,
            "startOffset":1200,"queueId":3,"reviveQueueId":5,"popTime":1712345678901,"invisibleTime":60000,
            "bitSet":"BQI"}]}"#;
        assert_eq!(BatchAckMessageRequestBody::parse(long).unwrap(), req);

        let nulls = BatchAckMessageRequestBody::parse(
            br#"{"acks":[{"b":null,"r":null}],"brokerName":null}"#,
        )
        .unwrap();
        assert!(nulls.acks[0].bit_set.is_empty() && nulls.acks[0].retry.is_empty());
    }
}
