//! The ROCKETMQ binary header encoding (serialize type 1, `RocketMQSerializable`).
//!
//! ```text
//! 0  2 code (int16)    2 1 language   3 2 version (int16)   5 4 opaque   9 4 flag
//! 13 4 remarkLen       17 R remark    17+R 4 extLen         21+R E entries:
//!                                                            keyLen int16, key, valLen int32, value
//! ```
//! All lengths are checked against what is left of the header before anything is sliced; strings
//! are decoded like Java's `new String(bytes, UTF_8)` (invalid sequences become U+FFFD).

use bytes::{BufMut, BytesMut};

use super::codes::{request_code, LanguageCode, FLAG_RESPONSE};
use super::command::HeaderFields;
use super::ext::{ExtFields, MAX_EXT_FIELDS};

/// Length of the fixed part (with empty remark and ext block).
pub const FIXED_LEN: usize = 21;
/// Where the opaque starts in a binary header.
pub(crate) const OPAQUE_START: usize = 5;
/// Where the opaque ends in a binary header.
pub(crate) const OPAQUE_END: usize = 9;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "{what} needs {n} bytes at offset {} but the header has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn i16(&mut self, what: &str) -> Result<i16, String> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn len32(&mut self, what: &str) -> Result<usize, String> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| format!("{what} is negative ({n})"))
    }
}

fn string(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Decodes a binary header. Truncated Pop-family request codes are mapped back to their canonical
/// values (`3442` -> `200050`, ...; see [`request_code::from_truncated`]).
pub(crate) fn decode(header: &[u8]) -> Result<HeaderFields, String> {
    let mut r = Reader {
        buf: header,
        pos: 0,
    };
    let code = i32::from(r.i16("code")?);
    let language = LanguageCode(r.take(1, "language")?[0]);
    let version = i32::from(r.i16("version")?);
    let opaque = r.i32("opaque")?;
    let flag = r.i32("flag")?;
    let remark_len = r.len32("remarkLen")?;
    let remark = match remark_len {
        0 => None,
        n => Some(string(r.take(n, "remark")?).into_owned()),
    };
    let ext_len = r.len32("extLen")?;
    let block = r.take(ext_len, "extFields block")?;
    let mut ext = ExtFields::new();
    let mut e = Reader { buf: block, pos: 0 };
    while e.pos < block.len() {
        if ext.len() >= MAX_EXT_FIELDS {
            return Err(format!("more than {MAX_EXT_FIELDS} extFields entries"));
        }
        let key_len = e.i16("ext key length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| format!("ext key length is negative ({key_len})"))?;
        let key = string(e.take(key_len, "ext key")?);
        let val_len = e.len32("ext value length")?;
        let value = string(e.take(val_len, "ext value")?);
        ext.insert(key, value);
    }
    let code = if flag & FLAG_RESPONSE == 0 {
        request_code::from_truncated(code)
    } else {
        code
    };
    Ok(HeaderFields {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext,
    })
}

/// Best effort, on the error path only: the opaque of a binary header that failed to decode.
#[cold]
pub(crate) fn salvage_opaque(header: &[u8]) -> Option<i32> {
    let b = header.get(OPAQUE_START..OPAQUE_END)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Encodes `fields` as a binary header into `dst`. The caller has checked that the code fits an
/// int16. Fails when a key is longer than an int16 length can say.
pub(crate) fn encode(fields: &HeaderFields, dst: &mut BytesMut) -> Result<(), String> {
    let code = i16::try_from(fields.code)
        .map_err(|_| format!("code {} does not fit a binary header", fields.code))?;
    // Versions are small ordinals; clamp rather than wrap should a caller set a huge one.
    let version = fields
        .version
        .clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    let remark = fields.remark.as_deref().unwrap_or("");
    let ext_len: usize = fields
        .ext
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum();
    let too_long = |what: &str, n: usize| format!("{what} of {n} bytes is too long to encode");
    let remark_len = i32::try_from(remark.len()).map_err(|_| too_long("remark", remark.len()))?;
    let ext_len32 = i32::try_from(ext_len).map_err(|_| too_long("extFields", ext_len))?;
    dst.reserve(FIXED_LEN + remark.len() + ext_len);
    dst.put_i16(code);
    dst.put_u8(fields.language.0);
    dst.put_i16(version);
    dst.put_i32(fields.opaque);
    dst.put_i32(fields.flag);
    dst.put_i32(remark_len);
    dst.put_slice(remark.as_bytes());
    dst.put_i32(ext_len32);
    for (k, v) in fields.ext.iter() {
        let klen = i16::try_from(k.len()).map_err(|_| too_long("ext key", k.len()))?;
        let vlen = i32::try_from(v.len()).map_err(|_| too_long("ext value", v.len()))?;
        dst.put_i16(klen);
        dst.put_slice(k.as_bytes());
        dst.put_i32(vlen);
        dst.put_slice(v.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_heartbeat_example_from_protocol_notes() {
        // HEART_BEAT (34) from JAVA, version 401, opaque 1, no remark, no ext: 21 bytes.
        let header = [
            0x00, 0x22, 0x00, 0x01, 0x91, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let f = decode(&header).unwrap();
        assert_eq!(f.code, 34);
        assert_eq!(f.language, LanguageCode::JAVA);
        assert_eq!(f.version, 401);
        assert_eq!(f.opaque, 1);
        assert_eq!(f.remark, None);
        assert!(f.ext.is_empty());
        let mut out = BytesMut::new();
        encode(&f, &mut out).unwrap();
        assert_eq!(&out[..], &header[..]);
    }

    #[test]
    fn truncated_pop_codes_are_mapped_back_on_requests_only() {
        let mut f = HeaderFields {
            code: 3442,
            ..HeaderFields::default()
        };
        let mut out = BytesMut::new();
        encode(&f, &mut out).unwrap();
        assert_eq!(decode(&out).unwrap().code, request_code::POP_MESSAGE);
        f.flag = FLAG_RESPONSE;
        out.clear();
        encode(&f, &mut out).unwrap();
        assert_eq!(decode(&out).unwrap().code, 3442);
    }

    #[test]
    fn ext_round_trip_and_wide_code_refused() {
        let mut f = HeaderFields {
            code: 310,
            language: LanguageCode::GO,
            version: 407,
            opaque: 9,
            flag: 0,
            remark: Some("hi".into()),
            ext: ExtFields::new(),
        };
        f.ext.insert("a", "PG");
        f.ext.insert("b", "Topic\u{1}");
        let mut out = BytesMut::new();
        encode(&f, &mut out).unwrap();
        assert_eq!(decode(&out).unwrap(), f);
        f.code = request_code::POP_MESSAGE;
        assert!(encode(&f, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn lying_lengths_are_errors() {
        let base = [0u8, 10, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        // remarkLen larger than the header
        let mut h = base.to_vec();
        h.extend_from_slice(&100i32.to_be_bytes());
        assert!(decode(&h).unwrap_err().contains("remark"));
        // negative remark length
        let mut h = base.to_vec();
        h.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(decode(&h).unwrap_err().contains("negative"));
        // ext block claims more than present
        let mut h = base.to_vec();
        h.extend_from_slice(&0i32.to_be_bytes());
        h.extend_from_slice(&50i32.to_be_bytes());
        assert!(decode(&h).is_err());
        // entry value length runs past the block
        let mut h = base.to_vec();
        h.extend_from_slice(&0i32.to_be_bytes());
        h.extend_from_slice(&9i32.to_be_bytes());
        h.extend_from_slice(&1i16.to_be_bytes());
        h.push(b'k');
        h.extend_from_slice(&1000i32.to_be_bytes());
        h.extend_from_slice(b"ab");
        assert!(decode(&h).unwrap_err().contains("ext value"));
        // every prefix of a valid header fails cleanly
        let mut ok = BytesMut::new();
        let mut f = HeaderFields::default();
        f.ext.insert("key", "value");
        encode(&f, &mut ok).unwrap();
        for cut in 0..ok.len() {
            assert!(decode(&ok[..cut]).is_err(), "prefix {cut}");
        }
    }
}
