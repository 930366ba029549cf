//! Body compression (`docs/remoting-protocol.md` section 5.1).
//!
//! Java producers deflate bodies of 4096 bytes or more with `java.util.zip.Deflater` (zlib
//! format, level 5 by default) and set `sysFlag` bit 0, plus the type bits (`0x300` for zlib) from
//! 4.9.4 on. Only zlib is implemented here; LZ4 and ZSTD bodies are reported as unsupported.

use std::io::Write;

use bytes::Bytes;
use flate2::{Compression, Decompress, FlushDecompress, Status};

use super::sysflag::{self, CompressionType};
use super::MessageError;

/// Java's default compression level (`compressLevel`, `rocketmq.message.compressLevel`).
pub const DEFAULT_COMPRESS_LEVEL: u32 = 5;
/// Bodies of this size or more are compressed by Java producers (`compressMsgBodyOverHowmuch`).
pub const DEFAULT_COMPRESS_OVER: usize = 4096;

pub use sysflag::is_compressed;

/// Returns the body a consumer sees: `body` itself when `sys_flag` has no [`sysflag::COMPRESSED`]
/// bit, else the zlib-inflated body (type bits 0 or 3).
///
/// The output is capped at `max_len` bytes: a body that inflates to more fails with
/// [`MessageError::DecompressedTooLarge`], and no more than `max_len + 1` bytes of output buffer are
/// ever allocated. LZ4 / ZSTD bodies fail with [`MessageError::UnsupportedCompression`].
pub fn inflate_body(body: &Bytes, sys_flag: i32, max_len: usize) -> Result<Bytes, MessageError> {
    if !sysflag::is_compressed(sys_flag) {
        return Ok(body.clone());
    }
    match sysflag::compression_type(sys_flag) {
        Some(CompressionType::Zlib) => inflate_zlib(body, max_len).map(Bytes::from),
        Some(other) => Err(MessageError::UnsupportedCompression(other)),
        None => Err(MessageError::UnknownCompressionType(
            sysflag::compression_type_value(sys_flag),
        )),
    }
}

/// Inflates a zlib stream into at most `max_len` bytes. Bytes after the end of the stream are
/// ignored (as `InflaterInputStream` does).
pub fn inflate_zlib(input: &[u8], max_len: usize) -> Result<Vec<u8>, MessageError> {
    let cap = max_len.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4).max(64).min(cap));
    let mut d = Decompress::new(true);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(MessageError::DecompressedTooLarge { limit: max_len });
            }
            let grow = out.capacity().max(64).min(cap - out.len());
            out.reserve_exact(grow);
        }
        let consumed = usize::try_from(d.total_in()).unwrap_or(usize::MAX);
        let rest = input.get(consumed..).unwrap_or_default();
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(rest, &mut out, FlushDecompress::None)
            .map_err(|e| MessageError::CorruptCompressedBody(e.to_string()))?;
        if out.len() > max_len {
            return Err(MessageError::DecompressedTooLarge { limit: max_len });
        }
        match status {
            Status::StreamEnd => return Ok(out),
            Status::Ok | Status::BufError => {
                let progressed = d.total_in() != in_before || d.total_out() != out_before;
                if !progressed && out.len() < out.capacity() {
                    return Err(MessageError::CorruptCompressedBody(
                        "zlib stream ends before its end marker".to_owned(),
                    ));
                }
            }
        }
    }
}

/// Deflates `body` into a zlib stream at `level` (0-9, clamped), as a Java producer does.
pub fn deflate_body(body: &[u8], level: u32) -> Bytes {
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(body.len() / 2 + 64),
        Compression::new(level.min(9)),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    Bytes::from(enc.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_round_trip() {
        let body: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let z = deflate_body(&body, DEFAULT_COMPRESS_LEVEL);
        assert!(z.len() < body.len());
        assert_eq!(&z[..1], &[0x78]); // zlib header
        let flag = sysflag::COMPRESSED | sysflag::COMPRESSION_ZLIB;
        assert_eq!(inflate_body(&z, flag, body.len()).unwrap(), body);
        // Pre-4.9.4 producers set bit 0 only: type 0 means zlib.
        assert_eq!(
            inflate_body(&z, sysflag::COMPRESSED, body.len()).unwrap(),
            body
        );
        // Not compressed: returned as is.
        assert_eq!(inflate_body(&z, 0x300, 1).unwrap(), z);
        // Exact limit passes, one less fails.
        assert!(matches!(
            inflate_body(&z, flag, body.len() - 1),
            Err(MessageError::DecompressedTooLarge { .. })
        ));
        // Empty body.
        let e = deflate_body(b"", 9);
        assert!(inflate_body(&e, flag, 0).unwrap().is_empty());
    }

    #[test]
    fn inflate_bomb_is_capped() {
        let bomb = deflate_body(&vec![0u8; 50 << 20], 9);
        assert!(bomb.len() < 100_000);
        let err = inflate_body(&bomb, sysflag::COMPRESSED, 1 << 20).unwrap_err();
        assert_eq!(err, MessageError::DecompressedTooLarge { limit: 1 << 20 });
    }

    #[test]
    fn unsupported_and_corrupt() {
        let z = Bytes::from_static(b"\x78\x9c\x01\x02");
        let e = inflate_body(&z, 0x101, 100).unwrap_err();
        assert_eq!(
            e,
            MessageError::UnsupportedCompression(CompressionType::Lz4)
        );
        assert!(e.to_string().contains("LZ4"));
        let e = inflate_body(&z, 0x201, 100).unwrap_err();
        assert!(e.to_string().contains("ZSTD"));
        assert_eq!(
            inflate_body(&z, 0x501, 100).unwrap_err(),
            MessageError::UnknownCompressionType(5)
        );
        // Truncated stream and garbage.
        let full = deflate_body(b"hello hello hello hello", 5);
        for cut in 0..full.len() - 1 {
            let part = full.slice(..cut);
            assert!(inflate_body(&part, 1, 1000).is_err(), "cut {cut}");
        }
        assert!(inflate_body(&Bytes::from_static(b"not zlib at all"), 1, 1000).is_err());
    }
}
