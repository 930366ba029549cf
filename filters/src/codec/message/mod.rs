//! Message records: the stored layout returned in Pull and Pop bodies, properties, batch bodies,
//! body compression and message ids (`docs/remoting-protocol.md` section 5).
//!
//! * [`record`]: [`MessageExt`] with [`decode_record`] / [`decode_records`] / [`encode_record`],
//!   and the borrowing [`RecordIter`] / [`RecordView`].
//! * [`patch`]: re-stamping queueId / queueOffset / reconsumeTimes of encoded records in place.
//! * [`properties`]: the `name\u{1}value\u{2}` properties string.
//! * [`batch`]: SEND_BATCH_MESSAGE bodies.
//! * [`compress`]: zlib body (de)compression with an output cap.
//! * [`id`]: offsetMsgId and `UNIQ_KEY` ids.
//! * [`sysflag`]: the `sysFlag` bits.
//!
//! Every decoder here takes untrusted bytes: every length is checked against the remaining input
//! before anything is sliced or allocated, and failures are reported as [`MessageError`], never
//! as panics.

use thiserror::Error;

pub mod batch;
pub mod compress;
pub mod id;
pub mod patch;
pub mod properties;
pub mod record;
pub mod sysflag;

#[cfg(test)]
mod tests;

pub use batch::{
    decode_batch, encode_batch, BatchLimits, BatchMessage, DEFAULT_MAX_BATCH_MESSAGES,
};
pub use compress::{deflate_body, inflate_body, DEFAULT_COMPRESS_LEVEL};
pub use id::{decode_offset_msg_id, offset_msg_id, uniq_key_timestamp, UniqIdGenerator};
pub use patch::{
    patch_queue_id, patch_queue_offset, patch_reconsume_times, patch_records, RecordMut,
};
pub use properties::{keys as property_keys, Properties};
pub use record::{
    body_crc, decode_record, decode_records, encode_record, MessageExt, MessageVersion, RecordIter,
    RecordView, BLANK_MAGIC_CODE,
};
pub use sysflag::{is_compressed, CompressionType};

/// A message record, batch body, compressed body or message id could not be decoded or encoded.
///
/// Offsets are byte offsets in the buffer handed to the decoder (for [`decode_records`], the
/// whole pull body).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// The input ends (or the record's `storeSize` ends) before a field is complete.
    #[error(
        "truncated record at offset {offset}: {field} needs {needed} bytes, {available} available"
    )]
    Truncated {
        /// Offset of the record (or batch entry) in the input.
        offset: usize,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// The magic code is neither v1 (`0xDAA320A7`) nor v2 (`0xDAA320AB`).
    #[error("bad magic code {magic:#010X} in record at offset {offset}")]
    BadMagic {
        /// Offset of the record.
        offset: usize,
        /// The magic code found.
        magic: u32,
    },
    /// The record is the commit log's end-of-file blank marker (`0xCBD43194`), which never
    /// belongs in a message body.
    #[error("record at offset {offset} is a blank (end-of-file) marker")]
    BlankRecord {
        /// Offset of the record.
        offset: usize,
    },
    /// `storeSize` (or a batch entry's `totalSize`) is negative or smaller than the fixed prefix.
    #[error("record at offset {offset} has invalid size {size} (minimum {min})")]
    BadStoreSize {
        /// Offset of the record.
        offset: usize,
        /// The declared size.
        size: i64,
        /// The smallest size possible for this record.
        min: usize,
    },
    /// The fields of a record do not add up to its declared size.
    #[error("record at offset {offset} declares {declared} bytes but its fields take {consumed}")]
    LengthMismatch {
        /// Offset of the record.
        offset: usize,
        /// The declared size (`storeSize` / `totalSize`).
        declared: usize,
        /// Bytes taken by the fields.
        consumed: usize,
    },
    /// A length field is negative.
    #[error("record at offset {offset}: {field} length {value} is negative")]
    NegativeLength {
        /// Offset of the record.
        offset: usize,
        /// The length field.
        field: &'static str,
        /// Its value.
        value: i64,
    },
    /// The stored `bodyCRC` does not match the CRC32 of the stored body.
    #[error("record at offset {offset}: body CRC {stored} does not match computed {computed}")]
    CrcMismatch {
        /// Offset of the record.
        offset: usize,
        /// The CRC in the record.
        stored: i32,
        /// `crc32(body) & 0x7FFFFFFF`.
        computed: i32,
    },
    /// The topic or the properties string is not valid UTF-8.
    #[error("record at offset {offset}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the record.
        offset: usize,
        /// `topic` or `properties`.
        field: &'static str,
    },
    /// A host port is outside 0..=65535.
    #[error("record at offset {offset}: {field} port {port} is out of range")]
    InvalidPort {
        /// Offset of the record.
        offset: usize,
        /// `bornHost` or `storeHost`.
        field: &'static str,
        /// The port found.
        port: i32,
    },
    /// A field is too long to be encoded (topic, properties, body or whole record).
    #[error("{field} is {len} bytes, longer than the {max} bytes the encoding allows")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A body inflates to more than the allowed size.
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body uses a compression type this crate does not implement.
    #[error("unsupported compression type {} (only ZLIB is supported)", .0.name())]
    UnsupportedCompression(CompressionType),
    /// The `sysFlag` compression type bits hold an undefined value (4-7).
    #[error("unknown compression type value {0} in sysFlag")]
    UnknownCompressionType(u32),
    /// A compressed body is not a valid zlib stream.
    #[error("corrupt compressed body: {0}")]
    CorruptCompressedBody(String),
    /// A batch body holds more messages than allowed.
    #[error("batch holds more than {limit} messages")]
    TooManyMessages {
        /// The limit.
        limit: usize,
    },
    /// A message id string is malformed.
    #[error("invalid message id {id:?}: {reason}")]
    InvalidMessageId {
        /// The id (at most 64 characters of it).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl MessageError {
    pub(crate) fn invalid_id(id: &str, reason: &'static str) -> Self {
        let id = match id.char_indices().nth(64) {
            Some((cut, _)) => format!("{}...", &id[..cut]),
            None => id.to_owned(),
        };
        Self::InvalidMessageId { id, reason }
    }
}
