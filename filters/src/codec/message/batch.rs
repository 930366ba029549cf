//! Batch bodies of SEND_BATCH_MESSAGE (or SEND_MESSAGE_V2 with `m=true`)
//! (`MessageDecoder.encodeMessage` / `encodeMessages` / `decodeMessages`,
//! `docs/remoting-protocol.md` section 5.4).
//!
//! ```text
//! 4  totalSize (of this entry)
//! 4  magicCode = 0
//! 4  bodyCRC   = 0
//! 4  flag
//! 4  bodyLength + body
//! 2  propertiesLength (int16) + properties string
//! ```
//!
//! Java's decoder ignores `totalSize`, the magic code and the CRC; this one requires `totalSize`
//! to match the fields (so entries can be skipped by size) and ignores the other two.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{Properties, MAX_PROPERTIES_LEN};
use super::record::{get_i16, get_i32};
use super::MessageError;

/// Default cap on the number of messages in one batch body.
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 10_000;
/// Default cap on one message body in a batch (the broker's default `maxMessageSize`, 4 MiB).
pub const DEFAULT_MAX_BATCH_BODY_LEN: usize = 4 * 1024 * 1024;
/// Size of an entry with an empty body and no properties.
pub const MIN_BATCH_ENTRY_LEN: usize = 4 + 4 + 4 + 4 + 4 + 2;

/// Limits applied by [`decode_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most messages accepted.
    pub max_messages: usize,
    /// Longest body accepted for one message.
    pub max_body_len: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_messages: DEFAULT_MAX_BATCH_MESSAGES,
            max_body_len: DEFAULT_MAX_BATCH_BODY_LEN,
        }
    }
}

/// One message of a batch body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchMessage {
    /// User flag.
    pub flag: i32,
    /// Body (batches are never compressed).
    pub body: Bytes,
    /// Properties (`UNIQ_KEY`, `TAGS`, `KEYS`, ...).
    pub properties: Properties,
}

impl BatchMessage {
    /// Encoded size of this entry.
    pub fn encoded_len(&self) -> usize {
        MIN_BATCH_ENTRY_LEN + self.body.len() + self.properties.wire_len()
    }
}

/// Decodes a batch body. Bodies are zero-copy slices of `body`.
pub fn decode_batch(body: &Bytes, limits: &BatchLimits) -> Result<Vec<BatchMessage>, MessageError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        if out.len() >= limits.max_messages {
            return Err(MessageError::TooManyMessages {
                limit: limits.max_messages,
            });
        }
        let rest = &body[pos..];
        let truncated = |field, needed, available| MessageError::Truncated {
            offset: pos,
            field,
            needed,
            available,
        };
        if rest.len() < 4 {
            return Err(truncated("totalSize", 4, rest.len()));
        }
        let declared = get_i32(rest, 0);
        let size = match usize::try_from(declared) {
            Ok(s) if s >= MIN_BATCH_ENTRY_LEN => s,
            _ => {
                return Err(MessageError::BadStoreSize {
                    offset: pos,
                    size: declared.into(),
                    min: MIN_BATCH_ENTRY_LEN,
                })
            }
        };
        if size > rest.len() {
            return Err(truncated("entry (totalSize)", size, rest.len()));
        }
        let entry = &rest[..size];
        let flag = get_i32(entry, 12);
        let body_len = get_i32(entry, 16);
        let body_len = usize::try_from(body_len).map_err(|_| MessageError::NegativeLength {
            offset: pos,
            field: "body",
            value: body_len.into(),
        })?;
        if body_len > limits.max_body_len {
            return Err(MessageError::TooLong {
                field: "batch message body",
                len: body_len,
                max: limits.max_body_len,
            });
        }
        let body_start = 20;
        // size >= MIN_BATCH_ENTRY_LEN, so the subtraction cannot underflow.
        if body_len > size - body_start - 2 {
            return Err(truncated("body", body_len, size - body_start - 2));
        }
        let props_len_pos = body_start + body_len;
        let props_len = get_i16(entry, props_len_pos);
        let props_len = usize::try_from(props_len).map_err(|_| MessageError::NegativeLength {
            offset: pos,
            field: "properties",
            value: props_len.into(),
        })?;
        let props_start = props_len_pos + 2;
        if props_len > size - props_start {
            return Err(truncated("properties", props_len, size - props_start));
        }
        if props_start + props_len != size {
            return Err(MessageError::LengthMismatch {
                offset: pos,
                declared: size,
                consumed: props_start + props_len,
            });
        }
        let props =
            std::str::from_utf8(&entry[props_start..]).map_err(|_| MessageError::InvalidUtf8 {
                offset: pos,
                field: "properties",
            })?;
        out.push(BatchMessage {
            flag,
            body: body.slice(pos + body_start..pos + props_len_pos),
            properties: Properties::parse(props),
        });
        pos += size;
    }
    Ok(out)
}

/// Encodes a batch body (magic code 0, CRC 0). Fails when a message's properties exceed 32767
/// bytes or an entry exceeds `i32::MAX`.
pub fn encode_batch(messages: &[BatchMessage]) -> Result<Bytes, MessageError> {
    let total: usize = messages.iter().map(BatchMessage::encoded_len).sum();
    let mut out = BytesMut::with_capacity(total);
    for m in messages {
        let props = m.properties.to_wire_string();
        if props.len() > MAX_PROPERTIES_LEN {
            return Err(MessageError::TooLong {
                field: "properties",
                len: props.len(),
                max: MAX_PROPERTIES_LEN,
            });
        }
        let size = m.encoded_len();
        if size > i32::MAX as usize {
            return Err(MessageError::TooLong {
                field: "batch entry",
                len: size,
                max: i32::MAX as usize,
            });
        }
        out.put_i32(size as i32);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(m.flag);
        out.put_i32(m.body.len() as i32);
        out.put_slice(&m.body);
        out.put_i16(props.len() as i16);
        out.put_slice(props.as_bytes());
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<BatchMessage> {
        (0..3)
            .map(|i| BatchMessage {
                flag: i,
                body: Bytes::from(format!("body-{i}")),
                properties: [("TAGS", "T"), ("UNIQ_KEY", "ABC")].into_iter().collect(),
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let msgs = sample();
        let enc = encode_batch(&msgs).unwrap();
        assert_eq!(&enc[4..12], &[0u8; 8]);
        assert_eq!(decode_batch(&enc, &BatchLimits::default()).unwrap(), msgs);
        assert!(decode_batch(&Bytes::new(), &BatchLimits::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn limits_and_garbage() {
        let enc = encode_batch(&sample()).unwrap();
        let limits = BatchLimits {
            max_messages: 2,
            ..BatchLimits::default()
        };
        assert_eq!(
            decode_batch(&enc, &limits).unwrap_err(),
            MessageError::TooManyMessages { limit: 2 }
        );
        let limits = BatchLimits {
            max_body_len: 3,
            ..BatchLimits::default()
        };
        assert!(matches!(
            decode_batch(&enc, &limits),
            Err(MessageError::TooLong { .. })
        ));
        for cut in 1..enc.len() {
            if cut % (enc.len() / 3) == 0 {
                continue; // a whole number of entries
            }
            assert!(decode_batch(&enc.slice(..cut), &BatchLimits::default()).is_err());
        }
        // Lying sizes.
        for bad in [-1i32, 0, 10, i32::MAX] {
            let mut b = BytesMut::from(&enc[..]);
            b[..4].copy_from_slice(&bad.to_be_bytes());
            assert!(decode_batch(&b.freeze(), &BatchLimits::default()).is_err());
        }
        // Body length lying.
        let mut b = BytesMut::from(&enc[..]);
        b[16..20].copy_from_slice(&1000i32.to_be_bytes());
        assert!(decode_batch(&b.freeze(), &BatchLimits::default()).is_err());
    }
}
