//! `sysFlag` bits of a stored message (`MessageSysFlag`).
//!
//! The values are facts from Apache RocketMQ's `MessageSysFlag` and `CompressionType`
//! (`docs/remoting-protocol.md` section 5.1).

/// Bit 0: the stored body is compressed.
pub const COMPRESSED: i32 = 0x1;
/// Bit 1: the `TAGS` property holds several tags.
pub const MULTI_TAGS: i32 = 0x2;
/// Transaction type: not a transactional message (bits 2-3 clear).
pub const TRANSACTION_NOT: i32 = 0x0;
/// Transaction type: prepared (half) message.
pub const TRANSACTION_PREPARED: i32 = 0x4;
/// Transaction type: commit.
pub const TRANSACTION_COMMIT: i32 = 0x8;
/// Transaction type: rollback.
pub const TRANSACTION_ROLLBACK: i32 = 0xC;
/// Mask of the transaction type bits (same value as [`TRANSACTION_ROLLBACK`]).
pub const TRANSACTION_TYPE_MASK: i32 = 0xC;
/// Bit 4: the born host is IPv6 (16-byte address instead of 4).
pub const BORNHOST_V6: i32 = 0x10;
/// Bit 5: the store host is IPv6 (16-byte address instead of 4).
pub const STOREHOSTADDRESS_V6: i32 = 0x20;
/// Bit 6 (4.9.4+): the message wraps an inner message that must be unwrapped.
pub const NEED_UNWRAP: i32 = 0x40;
/// Bit 7 (4.9.4+): the record is an inner batch (the body holds batch-encoded messages).
pub const INNER_BATCH: i32 = 0x80;
/// Mask of the compression type bits (4.9.4+); the type is `(sysFlag & 0x700) >> 8`.
pub const COMPRESSION_TYPE_MASK: i32 = 0x700;
/// Compression type bits for LZ4 (`1 << 8`).
pub const COMPRESSION_LZ4: i32 = 0x100;
/// Compression type bits for ZSTD (`2 << 8`).
pub const COMPRESSION_ZSTD: i32 = 0x200;
/// Compression type bits for ZLIB (`3 << 8`); producers from 4.9.4 on set it with [`COMPRESSED`].
pub const COMPRESSION_ZLIB: i32 = 0x300;

/// The compression algorithm named by the type bits of a `sysFlag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressionType {
    /// zlib (RFC 1950); type value 3, and also 0 for producers older than 4.9.4.
    Zlib,
    /// LZ4 frame; type value 1.
    Lz4,
    /// Zstandard; type value 2.
    Zstd,
}

impl CompressionType {
    /// The name RocketMQ uses for the type (`ZLIB`, `LZ4`, `ZSTD`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Zlib => "ZLIB",
            Self::Lz4 => "LZ4",
            Self::Zstd => "ZSTD",
        }
    }

    /// The `sysFlag` bits for this type (to OR into a flag together with [`COMPRESSED`]).
    pub fn flag_bits(self) -> i32 {
        match self {
            Self::Zlib => COMPRESSION_ZLIB,
            Self::Lz4 => COMPRESSION_LZ4,
            Self::Zstd => COMPRESSION_ZSTD,
        }
    }
}

/// True when bit 0 ([`COMPRESSED`]) is set.
pub fn is_compressed(sys_flag: i32) -> bool {
    sys_flag & COMPRESSED != 0
}

/// The raw compression type value `(sysFlag & 0x700) >> 8` (0..=7).
pub fn compression_type_value(sys_flag: i32) -> u32 {
    ((sys_flag & COMPRESSION_TYPE_MASK) >> 8) as u32
}

/// The compression type named by the flag's type bits: 0 and 3 are zlib (0 for compatibility with
/// producers before 4.9.4), 1 LZ4, 2 ZSTD; `None` for the undefined values 4-7.
pub fn compression_type(sys_flag: i32) -> Option<CompressionType> {
    match compression_type_value(sys_flag) {
        0 | 3 => Some(CompressionType::Zlib),
        1 => Some(CompressionType::Lz4),
        2 => Some(CompressionType::Zstd),
        _ => None,
    }
}

/// The transaction type bits (`sysFlag & 0xC`): one of the `TRANSACTION_*` constants.
pub fn transaction_type(sys_flag: i32) -> i32 {
    sys_flag & TRANSACTION_TYPE_MASK
}

/// Replaces the transaction type bits of `sys_flag` with `tx_type`.
pub fn with_transaction_type(sys_flag: i32, tx_type: i32) -> i32 {
    (sys_flag & !TRANSACTION_TYPE_MASK) | (tx_type & TRANSACTION_TYPE_MASK)
}

/// True when the born host is stored as IPv6.
pub fn born_host_v6(sys_flag: i32) -> bool {
    sys_flag & BORNHOST_V6 != 0
}

/// True when the store host is stored as IPv6.
pub fn store_host_v6(sys_flag: i32) -> bool {
    sys_flag & STOREHOSTADDRESS_V6 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_types() {
        assert_eq!(compression_type(0x1), Some(CompressionType::Zlib));
        assert_eq!(compression_type(0x301), Some(CompressionType::Zlib));
        assert_eq!(compression_type(0x101), Some(CompressionType::Lz4));
        assert_eq!(compression_type(0x201), Some(CompressionType::Zstd));
        assert_eq!(compression_type(0x401), None);
        assert!(is_compressed(0x301));
        assert!(!is_compressed(0x300));
        assert_eq!(transaction_type(0x3F), TRANSACTION_ROLLBACK);
        assert_eq!(with_transaction_type(0x3F, TRANSACTION_COMMIT), 0x3B);
    }
}
