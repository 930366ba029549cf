//! The outer frame and the `tokio_util::codec` decoders/encoders.
//!
//! ```text
//! 0  4  frameLength = 4 + headerLength + bodyLength   (does not count itself)
//! 4  4  headerWord  = serializeType << 24 | headerLength
//! 8  H  header (JSON or ROCKETMQ binary)
//! 8+H B body
//! ```
//!
//! Every limit is checked from the first 8 bytes, before the rest of the frame is buffered:
//! a hostile length is refused without allocating for it. A partial frame consumes nothing. Memory
//! is reserved in steps of at most [`RESERVE_STEP`], so what a connection holds grows with the
//! bytes it really sent, not with the length it announced.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use super::codes::{request_code, SerializeType};
use super::command::RemotingCommand;
use super::{binary, json, json_fast};

/// Default maximum frame, length prefix included: 16 MiB, Java's `com.rocketmq.remoting.frameMaxLength`.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Default maximum header: 1 MiB. Real headers are under a few KiB (message properties, the
/// largest header field, are limited to 32 KiB by the stored record's int16 length).
pub const DEFAULT_MAX_HEADER: usize = 1024 * 1024;
/// The header length field has 24 bits.
pub const HEADER_LENGTH_CEILING: usize = 0x00FF_FFFF;
/// Largest single reservation made for a frame still arriving.
pub const RESERVE_STEP: usize = 64 * 1024;
/// Length prefix plus header word.
const PREFIX_LEN: usize = 8;

/// Frame size limits. Construct with [`FrameLimits::new`] (validated) or use the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    max_frame: usize,
    max_header: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_header: DEFAULT_MAX_HEADER,
        }
    }
}

/// A [`FrameLimits`] value that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid frame limits: {0}")]
pub struct InvalidLimits(&'static str);

impl FrameLimits {
    /// Limits with a maximum whole frame (length prefix included) and a maximum header length.
    pub fn new(max_frame: usize, max_header: usize) -> Result<Self, InvalidLimits> {
        if max_frame < PREFIX_LEN + binary::FIXED_LEN {
            return Err(InvalidLimits(
                "max_frame must hold at least a minimal header",
            ));
        }
        if max_frame > u32::MAX as usize {
            return Err(InvalidLimits("max_frame must fit the u32 length field"));
        }
        if max_header == 0 || max_header > HEADER_LENGTH_CEILING {
            return Err(InvalidLimits("max_header must be within 1..=0xFFFFFF"));
        }
        Ok(Self {
            max_frame,
            max_header,
        })
    }

    /// Maximum whole frame in bytes, length prefix included.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Maximum header length in bytes.
    pub fn max_header(&self) -> usize {
        self.max_header
    }
}

/// Errors of the frame and command codecs.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The announced (or encoded) frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: usize },
    /// The length field is smaller than the header word it must contain.
    #[error("frame length {len} is too short to hold the 4-byte header word")]
    FrameTooShort { len: u32 },
    /// The header length does not fit in the frame.
    #[error("header length {header_len} exceeds the frame length {frame_len}")]
    HeaderExceedsFrame { header_len: usize, frame_len: usize },
    /// The header is larger than the header limit.
    #[error("header of {len} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge { len: usize, max: usize },
    /// The serialize type byte is neither JSON (0) nor ROCKETMQ (1).
    #[error("unknown serialize type {0} in the header word")]
    UnknownSerializeType(u8),
    /// The frame was well delimited (and has been consumed), but its header could not be decoded.
    /// The stream is still in sync: a server can answer with an error and read on.
    #[error("malformed {kind} header: {reason}")]
    MalformedHeader {
        /// `"JSON"` or `"ROCKETMQ"`.
        kind: &'static str,
        /// The opaque, when it could be recovered, to correlate an error response.
        opaque: Option<i32>,
        /// Why decoding failed.
        reason: String,
    },
    /// A command could not be encoded.
    #[error("cannot encode command: {0}")]
    Encode(String),
    /// I/O error from the underlying transport.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// Whether the byte stream is out of sync after this error, so the connection must be closed.
    /// Only [`CodecError::MalformedHeader`] (frame consumed, stream in sync) and encode errors
    /// (nothing written) leave it usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::MalformedHeader { .. } | Self::Encode(_))
    }
}

/// One frame, split but not parsed: the header and body are slices of the received buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// How the header is encoded.
    pub serialize: SerializeType,
    /// The header bytes.
    pub header: Bytes,
    /// The body bytes.
    pub body: Bytes,
}

impl RawFrame {
    /// Bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        PREFIX_LEN + self.header.len() + self.body.len()
    }
}

/// Splits a byte stream into [`RawFrame`]s and writes them back. No header parsing.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec {
    limits: FrameLimits,
}

impl FrameCodec {
    /// A codec with the given limits.
    pub fn new(limits: FrameLimits) -> Self {
        Self { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> FrameLimits {
        self.limits
    }
}

impl Decoder for FrameCodec {
    type Item = RawFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, CodecError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let frame_len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let total = u64::from(frame_len) + 4;
        if total > self.limits.max_frame as u64 {
            return Err(CodecError::FrameTooLarge {
                len: total,
                max: self.limits.max_frame,
            });
        }
        if frame_len < 4 {
            return Err(CodecError::FrameTooShort { len: frame_len });
        }
        // Both values are now bounded by max_frame, which fits usize.
        let total = total as usize;
        let frame_len = frame_len as usize;
        if src.len() < PREFIX_LEN {
            return Ok(None);
        }
        let word = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
        let kind = (word >> 24) as u8;
        let header_len = (word & 0x00FF_FFFF) as usize;
        let serialize =
            SerializeType::from_wire(kind).ok_or(CodecError::UnknownSerializeType(kind))?;
        if header_len > frame_len - 4 {
            return Err(CodecError::HeaderExceedsFrame {
                header_len,
                frame_len,
            });
        }
        if header_len > self.limits.max_header {
            return Err(CodecError::HeaderTooLarge {
                len: header_len,
                max: self.limits.max_header,
            });
        }
        if src.len() < total {
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        let mut frame = src.split_to(total).freeze();
        frame.advance(PREFIX_LEN);
        let header = frame.split_to(header_len);
        Ok(Some(RawFrame {
            serialize,
            header,
            body: frame,
        }))
    }
}

impl Encoder<RawFrame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: RawFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.reserve(frame.wire_len());
        dst.put_u32(0);
        dst.put_u32(0);
        dst.put_slice(&frame.header);
        dst.put_slice(&frame.body);
        finish_frame(
            dst,
            start,
            0,
            frame.serialize,
            frame.header.len(),
            self.limits,
        )
    }
}

/// Writes the length prefix and header word of a frame that starts at `start` in `dst` and runs
/// to its end plus `apart` more bytes written separately, checking the limits; on error `dst` is
/// truncated back to `start`.
fn finish_frame(
    dst: &mut BytesMut,
    start: usize,
    apart: usize,
    serialize: SerializeType,
    header_len: usize,
    limits: FrameLimits,
) -> Result<(), CodecError> {
    let total = dst.len() - start + apart;
    if total > limits.max_frame {
        dst.truncate(start);
        return Err(CodecError::FrameTooLarge {
            len: total as u64,
            max: limits.max_frame,
        });
    }
    if header_len > HEADER_LENGTH_CEILING {
        dst.truncate(start);
        return Err(CodecError::HeaderTooLarge {
            len: header_len,
            max: HEADER_LENGTH_CEILING,
        });
    }
    // total <= max_frame <= u32::MAX, header_len <= 24 bits.
    let frame_len = (total - 4) as u32;
    let word = (u32::from(serialize.wire()) << 24) | header_len as u32;
    dst[start..start + 4].copy_from_slice(&frame_len.to_be_bytes());
    dst[start + 4..start + 8].copy_from_slice(&word.to_be_bytes());
    Ok(())
}

/// Decodes frames into [`RemotingCommand`]s (both header encodings) and encodes them back.
///
/// Encoding writes a command's original header bytes when it still has them, and otherwise
/// serializes the header in its serialize type, except that a code outside int16 is always
/// written as JSON (a binary header would truncate it).
#[derive(Clone, Copy, Debug, Default)]
pub struct RemotingCodec {
    frames: FrameCodec,
}

impl RemotingCodec {
    /// A codec with the given limits.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            frames: FrameCodec::new(limits),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> FrameLimits {
        self.frames.limits
    }

    /// Parses the header of a raw frame into a command.
    pub fn parse_frame(frame: RawFrame) -> Result<RemotingCommand, CodecError> {
        Self::parse(frame, false)
    }

    /// Like [`RemotingCodec::parse_frame`], but a JSON custom header is only checked here and
    /// read on first use ([`RemotingCommand::ext`]): for frames mostly relayed by opaque, like
    /// the responses an upstream connection hands back to waiting requests.
    pub fn parse_frame_deferred(frame: RawFrame) -> Result<RemotingCommand, CodecError> {
        Self::parse(frame, true)
    }

    fn parse(frame: RawFrame, defer_ext: bool) -> Result<RemotingCommand, CodecError> {
        let (parsed, opaque_span, ext_span) = match frame.serialize {
            SerializeType::Json => {
                let malformed = |reason| CodecError::MalformedHeader {
                    kind: "JSON",
                    opaque: json::salvage_opaque(&frame.header),
                    reason,
                };
                let decoded = if defer_ext {
                    // The deferred check accepts no more than the fast reading: when it gives
                    // up, serde reads the header (same fields either way).
                    match json_fast::decode_deferred(&frame.header) {
                        Some(d) => Ok((d.fields, d.opaque_span, d.ext_span)),
                        None => json::decode_slow(&frame.header).map(|(f, s)| (f, s, None)),
                    }
                } else {
                    json::decode(&frame.header).map(|(f, s)| (f, s, None))
                };
                decoded.map_err(malformed)?
            }
            SerializeType::Rocketmq => {
                let fields = binary::decode(&frame.header).map_err(|reason| {
                    CodecError::MalformedHeader {
                        kind: "ROCKETMQ",
                        opaque: binary::salvage_opaque(&frame.header),
                        reason,
                    }
                })?;
                (fields, None, None)
            }
        };
        Ok(RemotingCommand::from_decoded(
            parsed,
            frame.serialize,
            frame.header,
            frame.body,
            opaque_span,
            ext_span,
        ))
    }
}

impl Decoder for RemotingCodec {
    type Item = RemotingCommand;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RemotingCommand>, CodecError> {
        match self.frames.decode(src)? {
            None => Ok(None),
            Some(frame) => Self::parse_frame(frame).map(Some),
        }
    }
}

impl RemotingCodec {
    /// Encodes `cmd` like [`Encoder::encode`], except that a body of at least `apart_from`
    /// bytes is not copied: `dst` gets the frame up to the body, and the body is returned, to
    /// be written right after it (a vectored write), sharing the command's buffer.
    pub fn encode_body_apart(
        &mut self,
        cmd: &RemotingCommand,
        dst: &mut BytesMut,
        apart_from: usize,
    ) -> Result<Option<Bytes>, CodecError> {
        let apart = cmd.body().len() >= apart_from;
        self.encode_parts(cmd, dst, !apart)?;
        Ok(apart.then(|| cmd.body().clone()))
    }

    /// The frame of `cmd` into `dst`, with its body or (`with_body` false) up to it.
    fn encode_parts(
        &mut self,
        cmd: &RemotingCommand,
        dst: &mut BytesMut,
        with_body: bool,
    ) -> Result<(), CodecError> {
        let start = dst.len();
        let body = cmd.body();
        let mut serialize = cmd.serialize_type();
        if serialize == SerializeType::Rocketmq && !request_code::fits_binary(cmd.code()) {
            serialize = SerializeType::Json;
        }
        dst.put_u32(0);
        dst.put_u32(0);
        if !cmd.write_raw_header(serialize, dst) {
            let fields = cmd.fields_for_encoding();
            match serialize {
                SerializeType::Json => json::encode(&fields, dst),
                SerializeType::Rocketmq => {
                    if let Err(reason) = binary::encode(&fields, dst) {
                        dst.truncate(start);
                        return Err(CodecError::Encode(reason));
                    }
                }
            }
        }
        let header_len = dst.len() - start - PREFIX_LEN;
        if dst.len() - start + body.len() > self.frames.limits.max_frame {
            let len = (dst.len() - start + body.len()) as u64;
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.frames.limits.max_frame,
            });
        }
        let apart = if with_body {
            dst.put_slice(body);
            0
        } else {
            body.len()
        };
        finish_frame(dst, start, apart, serialize, header_len, self.frames.limits)
    }
}

impl Encoder<&RemotingCommand> for RemotingCodec {
    type Error = CodecError;

    fn encode(&mut self, cmd: &RemotingCommand, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_parts(cmd, dst, true)
    }
}

impl Encoder<RemotingCommand> for RemotingCodec {
    type Error = CodecError;

    fn encode(&mut self, cmd: RemotingCommand, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&cmd, dst)
    }
}

/// Encodes one command into a fresh buffer with default limits (convenience for tests and tools).
pub fn encode_to_bytes(cmd: &RemotingCommand) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::new();
    RemotingCodec::default().encode(cmd, &mut buf)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::codes::{request_code, response_code, LanguageCode};
    use crate::codec::command::ResponseEncoding;

    fn frame_bytes(kind: u8, header: &[u8], body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32((4 + header.len() + body.len()) as u32);
        b.put_u32((u32::from(kind) << 24) | header.len() as u32);
        b.put_slice(header);
        b.put_slice(body);
        b
    }

    #[test]
    fn decodes_and_reencodes_byte_exact() {
        let header =
            br#"{"code":34,"flag":0,"language":"CPP","opaque":3,"remark":"","version":63}"#;
        let wire = frame_bytes(0, header, b"body");
        let mut src = wire.clone();
        let cmd = RemotingCodec::default().decode(&mut src).unwrap().unwrap();
        assert!(src.is_empty());
        assert_eq!(cmd.code(), request_code::HEART_BEAT);
        assert_eq!(cmd.language(), LanguageCode::CPP);
        assert_eq!(&cmd.body()[..], b"body");
        assert_eq!(encode_to_bytes(&cmd).unwrap(), wire.freeze());
    }

    #[test]
    fn partial_frames_consume_nothing() {
        let wire = frame_bytes(0, br#"{"code":1}"#, b"xyz");
        for cut in 0..wire.len() {
            let mut src = BytesMut::from(&wire[..cut]);
            assert!(RemotingCodec::default().decode(&mut src).unwrap().is_none());
            assert_eq!(&src[..], &wire[..cut], "cut {cut}");
        }
    }

    #[test]
    fn limits_are_checked_from_the_prefix() {
        let limits = FrameLimits::new(1024, 256).unwrap();
        let mut codec = FrameCodec::new(limits);
        // announced 2 GiB: refused from 4 bytes, nothing reserved beyond what we had
        let mut src = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        let cap = src.capacity();
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::FrameTooLarge { .. })
        ));
        assert_eq!(src.capacity(), cap);
        // frame length below 4
        let mut src = BytesMut::from(&[0, 0, 0, 3, 0, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::FrameTooShort { len: 3 })
        ));
        // header longer than the frame
        let mut src = BytesMut::from(&[0, 0, 0, 10, 0, 0, 0, 7][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::HeaderExceedsFrame { .. })
        ));
        // header over the header limit
        let mut src = BytesMut::from(&[0, 0, 3, 0, 0, 0, 1, 1][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::HeaderTooLarge { .. })
        ));
        // unknown serialize type
        let mut src = BytesMut::from(&[0, 0, 0, 10, 2, 0, 0, 1][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::UnknownSerializeType(2))
        ));
        // "GET " from an HTTP client is a huge length
        let mut src = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(codec.decode(&mut src).unwrap_err().is_fatal());
    }

    #[test]
    fn malformed_header_consumes_the_frame_and_keeps_sync() {
        let mut src = frame_bytes(0, br#"{"code":1,"opaque":77,"flag":"x"}"#, b"");
        src.extend_from_slice(&frame_bytes(0, br#"{"code":2,"opaque":78}"#, b""));
        let mut codec = RemotingCodec::default();
        match codec.decode(&mut src) {
            Err(e @ CodecError::MalformedHeader { .. }) => {
                assert!(!e.is_fatal());
                assert!(matches!(
                    e,
                    CodecError::MalformedHeader {
                        opaque: Some(77),
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
        let next = codec.decode(&mut src).unwrap().unwrap();
        assert_eq!(next.opaque(), 78);
    }

    #[test]
    fn wide_codes_are_never_encoded_binary() {
        let cmd = RemotingCommand::request(request_code::POP_MESSAGE)
            .with_serialize_type(SerializeType::Rocketmq)
            .with_opaque(5);
        let bytes = encode_to_bytes(&cmd).unwrap();
        assert_eq!(bytes[4], 0, "serialize type JSON");
        let back = RemotingCodec::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert_eq!(back.code(), request_code::POP_MESSAGE);
    }

    #[test]
    fn binary_round_trip_and_opaque_patch() {
        let cmd = RemotingCommand::request(request_code::SEND_MESSAGE_V2)
            .with_serialize_type(SerializeType::Rocketmq)
            .with_opaque(1)
            .with_remark("r")
            .with_body(&b"payload"[..]);
        let bytes = encode_to_bytes(&cmd).unwrap();
        let mut back = RemotingCodec::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert_eq!(back, cmd);
        back.set_opaque(0x0102_0304);
        assert!(
            back.raw_header().is_some(),
            "patched at encode, not dropped"
        );
        let patched = encode_to_bytes(&back).unwrap();
        let again = RemotingCodec::default()
            .decode(&mut BytesMut::from(&patched[..]))
            .unwrap()
            .unwrap();
        assert_eq!(again.opaque(), 0x0102_0304);
        assert_eq!(again.remark(), Some("r"));
    }

    #[test]
    fn oversized_encode_is_refused_without_writing() {
        let limits = FrameLimits::new(128, 64).unwrap();
        let cmd = RemotingCommand::request(10).with_body(vec![0u8; 200]);
        let mut dst = BytesMut::from(&b"keep"[..]);
        let err = RemotingCodec::new(limits)
            .encode(&cmd, &mut dst)
            .unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
        assert_eq!(&dst[..], b"keep");
    }

    #[test]
    fn response_for_request() {
        let req = RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC).with_opaque(9);
        let resp = req
            .response_to(response_code::TOPIC_NOT_EXIST, ResponseEncoding::Json)
            .with_remark("No topic route info in name server for the topic: T");
        let bytes = encode_to_bytes(&resp).unwrap();
        let back = RemotingCodec::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert!(back.is_response());
        assert_eq!(back.opaque(), 9);
        assert_eq!(back.code(), response_code::TOPIC_NOT_EXIST);
    }

    #[test]
    fn limits_validation() {
        assert!(FrameLimits::new(10, 10).is_err());
        assert!(FrameLimits::new(1 << 20, 0).is_err());
        assert!(FrameLimits::new(1 << 20, 1 << 25).is_err());
        assert!(FrameLimits::new(1 << 20, 4096).is_ok());
    }
}
