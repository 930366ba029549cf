//! [`RemotingCommand`]: one request or response, with its header fields, custom header and body.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::codes::{
    request_code, response_code, LanguageCode, SerializeType, FLAG_ONEWAY, FLAG_RESPONSE,
    ROCKETMESH_VERSION,
};
use super::ext::{CommandHeader, ExtFields, HeaderError};

/// How to encode the responses we create (see protocol notes 1.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResponseEncoding {
    /// Always JSON, like a Java broker with the default `rocketmq.serialize.type`.
    #[default]
    Json,
    /// The request's encoding, except JSON towards `language=CPP` peers (the C++ client cannot read
    /// binary headers) and for codes that do not fit the binary header's int16.
    MirrorRequest,
}

/// The header fields of a command, as decoded from either header encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderFields {
    pub code: i32,
    pub language: LanguageCode,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    pub ext: ExtFields,
}

/// One Remoting command: a request (flag bit 0 clear) or a response (bit 0 set).
///
/// A command decoded from the wire remembers its original header bytes. As long as nothing in the
/// header changes, encoding it writes those bytes back unchanged (zero copy, and byte-exact
/// forwarding of whatever quirks the peer's encoder has). Any change to a header field drops them
/// and the header is encoded afresh, except [`RemotingCommand::set_opaque`] on a binary header,
/// which patches the opaque in place.
#[derive(Clone)]
pub struct RemotingCommand {
    pub(crate) fields: HeaderFields,
    body: Bytes,
    serialize: SerializeType,
    raw_header: Option<Bytes>,
    /// Set when the custom header was checked but not read at decoding: the byte range of the
    /// `extFields` object in `raw_header`, read on first use. Present only with `raw_header`.
    /// Boxed: a command is moved through channels whole, and most carry none.
    deferred_ext: Option<Box<DeferredExt>>,
    /// Where the opaque sits in `raw_header` when it has been changed since decoding: written
    /// afresh at encode time around the original bytes (no copy of the header until then).
    opaque_at: OpaqueAt,
}

/// A JSON custom header read on first use ([`RemotingCommand::ext`]).
#[derive(Clone, Debug)]
struct DeferredExt {
    span: (usize, usize),
    read: std::sync::OnceLock<ExtFields>,
}

/// The opaque's place in the original header bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpaqueAt {
    /// The original bytes, unchanged. For JSON, the byte range of the opaque's digits when a new
    /// opaque can be written there (the only `opaque` key, a plain number); binary headers have
    /// it at a fixed offset.
    AsIs(Option<(usize, usize)>),
    /// JSON, opaque changed: the digits at this range are replaced by the current opaque.
    PatchedJson(usize, usize),
    /// Binary, opaque changed: the big-endian int at its fixed offset is replaced.
    PatchedBinary,
}

impl fmt::Debug for RemotingCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.is_response() {
            None
        } else {
            request_code::name(self.fields.code)
        };
        f.debug_struct("RemotingCommand")
            .field("code", &self.fields.code)
            .field("name", &name)
            .field("language", &self.fields.language.name())
            .field("version", &self.fields.version)
            .field("opaque", &self.fields.opaque)
            .field("flag", &self.fields.flag)
            .field("remark", &self.fields.remark)
            .field("ext", self.ext())
            .field("body_len", &self.body.len())
            .field("serialize", &self.serialize)
            .finish()
    }
}

/// Two commands are equal when their header fields, body and serialize type are equal; whether a
/// command still carries its original header bytes does not matter.
impl PartialEq for RemotingCommand {
    fn eq(&self, other: &Self) -> bool {
        let top = |f: &HeaderFields| (f.code, f.language, f.version, f.opaque, f.flag);
        top(&self.fields) == top(&other.fields)
            && self.fields.remark == other.fields.remark
            && self.ext() == other.ext()
            && self.body == other.body
            && self.serialize == other.serialize
    }
}

impl RemotingCommand {
    /// A new request with `code`, sent by us (`language=RUST`, our version), opaque 0.
    pub fn request(code: i32) -> Self {
        Self {
            fields: HeaderFields {
                code,
                language: LanguageCode::RUST,
                version: ROCKETMESH_VERSION,
                ..HeaderFields::default()
            },
            body: Bytes::new(),
            serialize: SerializeType::Json,
            raw_header: None,
            deferred_ext: None,
            opaque_at: OpaqueAt::AsIs(None),
        }
    }

    /// A new request with `code` and a typed custom header.
    pub fn request_with_header<H: CommandHeader>(code: i32, header: &H) -> Self {
        let mut cmd = Self::request(code);
        header.write_ext(&mut cmd.fields.ext);
        cmd
    }

    /// A response to this request with `code`, same opaque, flag RESPONSE, encoded as `encoding`
    /// chooses.
    pub fn response_to(&self, code: i32, encoding: ResponseEncoding) -> Self {
        let serialize = match encoding {
            ResponseEncoding::Json => SerializeType::Json,
            ResponseEncoding::MirrorRequest
                if self.fields.language == LanguageCode::CPP
                    || !request_code::fits_binary(code) =>
            {
                SerializeType::Json
            }
            ResponseEncoding::MirrorRequest => self.serialize,
        };
        Self {
            fields: HeaderFields {
                code,
                language: LanguageCode::RUST,
                version: ROCKETMESH_VERSION,
                opaque: self.fields.opaque,
                flag: FLAG_RESPONSE,
                remark: None,
                ext: ExtFields::new(),
            },
            body: Bytes::new(),
            serialize,
            raw_header: None,
            deferred_ext: None,
            opaque_at: OpaqueAt::AsIs(None),
        }
    }

    /// The REQUEST_CODE_NOT_SUPPORTED answer to this request, with Java's remark naming the code.
    pub fn not_supported_response(&self, encoding: ResponseEncoding) -> Self {
        let remark = format!(" request type {} not supported", self.fields.code);
        self.response_to(response_code::REQUEST_CODE_NOT_SUPPORTED, encoding)
            .with_remark(remark)
    }

    pub(crate) fn from_decoded(
        fields: HeaderFields,
        serialize: SerializeType,
        raw_header: Bytes,
        body: Bytes,
        opaque_span: Option<(usize, usize)>,
        ext_span: Option<(usize, usize)>,
    ) -> Self {
        Self {
            fields,
            body,
            serialize,
            raw_header: Some(raw_header),
            deferred_ext: ext_span.map(|span| {
                Box::new(DeferredExt {
                    span,
                    read: std::sync::OnceLock::new(),
                })
            }),
            opaque_at: OpaqueAt::AsIs(opaque_span),
        }
    }

    // ----- builder-style setters -----

    /// Sets the opaque (request id).
    pub fn with_opaque(mut self, opaque: i32) -> Self {
        self.set_opaque(opaque);
        self
    }

    /// Sets the remark.
    pub fn with_remark(mut self, remark: impl Into<String>) -> Self {
        self.set_remark(Some(remark.into()));
        self
    }

    /// Replaces the custom header.
    pub fn with_ext(mut self, ext: ExtFields) -> Self {
        *self.ext_mut() = ext;
        self
    }

    /// Writes a typed custom header into the ext fields (keeping fields already there).
    pub fn with_header<H: CommandHeader>(mut self, header: &H) -> Self {
        header.write_ext(self.ext_mut());
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the header encoding.
    pub fn with_serialize_type(mut self, serialize: SerializeType) -> Self {
        self.set_serialize_type(serialize);
        self
    }

    /// Sets the sender language.
    pub fn with_language(mut self, language: LanguageCode) -> Self {
        self.forget_raw_header();
        self.fields.language = language;
        self
    }

    /// Sets the sender version.
    pub fn with_version(mut self, version: i32) -> Self {
        self.forget_raw_header();
        self.fields.version = version;
        self
    }

    /// Marks the request oneway (no response expected).
    pub fn oneway(mut self) -> Self {
        self.set_flag(self.fields.flag | FLAG_ONEWAY);
        self
    }

    // ----- accessors -----

    /// Request code, or response code for a response.
    pub fn code(&self) -> i32 {
        self.fields.code
    }
    /// The sender's language.
    pub fn language(&self) -> LanguageCode {
        self.fields.language
    }
    /// The sender's version ordinal.
    pub fn version(&self) -> i32 {
        self.fields.version
    }
    /// Request id, echoed by the response.
    pub fn opaque(&self) -> i32 {
        self.fields.opaque
    }
    /// Raw flag bits.
    pub fn flag(&self) -> i32 {
        self.fields.flag
    }
    /// Whether this is a response (flag bit 0).
    pub fn is_response(&self) -> bool {
        self.fields.flag & FLAG_RESPONSE != 0
    }
    /// Whether this request wants no response (flag bit 1).
    pub fn is_oneway(&self) -> bool {
        self.fields.flag & FLAG_ONEWAY != 0
    }
    /// The remark (error text on responses).
    pub fn remark(&self) -> Option<&str> {
        self.fields.remark.as_deref()
    }
    /// The custom header.
    pub fn ext(&self) -> &ExtFields {
        match (&self.deferred_ext, &self.raw_header) {
            (Some(d), Some(raw)) => d.read.get_or_init(|| read_deferred(raw, d.span)),
            _ => &self.fields.ext,
        }
    }
    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// The header encoding.
    pub fn serialize_type(&self) -> SerializeType {
        self.serialize
    }
    /// The header bytes as received, while no header field but the opaque has changed (a
    /// changed opaque is written over its place at encode time).
    pub fn raw_header(&self) -> Option<&Bytes> {
        self.raw_header.as_ref()
    }
    /// Reads a typed custom header from the ext fields.
    pub fn decode_header<H: CommandHeader>(&self) -> Result<H, HeaderError> {
        H::from_ext(self.ext())
    }

    // ----- mutators -----

    /// Sets the code.
    pub fn set_code(&mut self, code: i32) {
        if code != self.fields.code {
            self.forget_raw_header();
            self.fields.code = code;
        }
    }

    /// Sets the opaque. The original header bytes are kept: the new opaque is written over the
    /// old one's place when the command is encoded (a fixed offset in a binary header, the
    /// top-level `opaque` number of a JSON one), so forwarding with a remapped opaque copies the
    /// rest of the header only once, into the output buffer.
    pub fn set_opaque(&mut self, opaque: i32) {
        if opaque == self.fields.opaque {
            return;
        }
        self.fields.opaque = opaque;
        let Some(raw) = &self.raw_header else { return };
        self.opaque_at = match (self.opaque_at, self.serialize) {
            // Already patched: the new value goes to the same place at encode time.
            (OpaqueAt::PatchedJson(..) | OpaqueAt::PatchedBinary, _) => return,
            (OpaqueAt::AsIs(_), SerializeType::Rocketmq)
                if raw.len() >= super::binary::OPAQUE_END =>
            {
                OpaqueAt::PatchedBinary
            }
            (OpaqueAt::AsIs(Some((start, end))), SerializeType::Json) => {
                OpaqueAt::PatchedJson(start, end)
            }
            // No plain number to patch: the header is written afresh.
            _ => {
                self.forget_raw_header();
                OpaqueAt::AsIs(None)
            }
        };
    }

    /// Writes the original header bytes (with the current opaque) when they are still valid for
    /// `serialize`; false when the header must be encoded from the fields.
    pub(crate) fn write_raw_header(&self, serialize: SerializeType, dst: &mut BytesMut) -> bool {
        let Some(raw) = &self.raw_header else {
            return false;
        };
        if serialize != self.serialize {
            return false;
        }
        match self.opaque_at {
            OpaqueAt::AsIs(_) => dst.put_slice(raw),
            OpaqueAt::PatchedBinary => {
                let (start, end) = (super::binary::OPAQUE_START, super::binary::OPAQUE_END);
                dst.put_slice(&raw[..start]);
                dst.put_slice(&self.fields.opaque.to_be_bytes());
                dst.put_slice(&raw[end..]);
            }
            OpaqueAt::PatchedJson(start, end) => {
                dst.put_slice(&raw[..start]);
                let mut digits = super::json::IntBuf::default();
                dst.put_slice(digits.format(i64::from(self.fields.opaque)));
                dst.put_slice(&raw[end..]);
            }
        }
        true
    }

    /// Sets the flag bits.
    pub fn set_flag(&mut self, flag: i32) {
        if flag != self.fields.flag {
            self.forget_raw_header();
            self.fields.flag = flag;
        }
    }

    /// Sets the remark.
    pub fn set_remark(&mut self, remark: Option<String>) {
        self.forget_raw_header();
        self.fields.remark = remark;
    }

    /// Mutable access to the custom header (drops the original header bytes).
    pub fn ext_mut(&mut self) -> &mut ExtFields {
        self.forget_raw_header();
        &mut self.fields.ext
    }

    /// Drops the original header bytes; a custom header not read yet is read first, into the
    /// fields the header will be encoded from.
    fn forget_raw_header(&mut self) {
        if let Some(d) = self.deferred_ext.take() {
            let DeferredExt { span, read } = *d;
            self.fields.ext = match (read.into_inner(), &self.raw_header) {
                (Some(ext), _) => ext,
                (None, Some(raw)) => read_deferred(raw, span),
                (None, None) => ExtFields::new(),
            };
        }
        self.raw_header = None;
    }

    /// The header fields to encode afresh from (the custom header read if it was deferred).
    pub(crate) fn fields_for_encoding(&self) -> std::borrow::Cow<'_, HeaderFields> {
        if self.deferred_ext.is_none() {
            return std::borrow::Cow::Borrowed(&self.fields);
        }
        let mut fields = self.fields.clone();
        fields.ext = self.ext().clone();
        std::borrow::Cow::Owned(fields)
    }

    /// Replaces the body (the header bytes stay valid: the body is not part of the header).
    pub fn set_body(&mut self, body: impl Into<Bytes>) {
        self.body = body.into();
    }

    /// Takes the body out, leaving it empty.
    pub fn take_body(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// Changes the header encoding.
    pub fn set_serialize_type(&mut self, serialize: SerializeType) {
        if serialize != self.serialize {
            self.forget_raw_header();
            self.serialize = serialize;
        }
    }

    /// Forgets the original header bytes, so the next encode writes the header afresh.
    pub fn drop_raw_header(&mut self) {
        self.forget_raw_header();
    }
}

/// Reads a deferred custom header. The decoder checked these bytes with the same grammar, so
/// this cannot fail; were it to, serde reads the whole header again rather than losing fields.
fn read_deferred(raw: &Bytes, (start, end): (usize, usize)) -> ExtFields {
    raw.get(start..end)
        .and_then(super::json_fast::read_ext)
        .or_else(|| super::json::decode_serde(raw).ok().map(|(f, _)| f.ext))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_echo_opaque_and_pick_encoding() {
        let req = RemotingCommand::request(request_code::SEND_MESSAGE_V2)
            .with_opaque(42)
            .with_serialize_type(SerializeType::Rocketmq)
            .with_language(LanguageCode::JAVA);
        let json = req.response_to(response_code::SUCCESS, ResponseEncoding::Json);
        assert_eq!(json.opaque(), 42);
        assert!(json.is_response());
        assert_eq!(json.serialize_type(), SerializeType::Json);
        let mirrored = req.response_to(response_code::SUCCESS, ResponseEncoding::MirrorRequest);
        assert_eq!(mirrored.serialize_type(), SerializeType::Rocketmq);

        let cpp = req.clone().with_language(LanguageCode::CPP);
        let to_cpp = cpp.response_to(response_code::SUCCESS, ResponseEncoding::MirrorRequest);
        assert_eq!(to_cpp.serialize_type(), SerializeType::Json);

        let wide = req.response_to(request_code::POP_MESSAGE, ResponseEncoding::MirrorRequest);
        assert_eq!(wide.serialize_type(), SerializeType::Json);
    }

    #[test]
    fn not_supported_names_the_code() {
        let req = RemotingCommand::request(9999).with_opaque(7);
        let resp = req.not_supported_response(ResponseEncoding::Json);
        assert_eq!(resp.code(), response_code::REQUEST_CODE_NOT_SUPPORTED);
        assert_eq!(resp.remark(), Some(" request type 9999 not supported"));
        assert_eq!(resp.opaque(), 7);
    }

    #[test]
    fn oneway_sets_bit() {
        let req = RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET).oneway();
        assert!(req.is_oneway());
        assert!(!req.is_response());
    }
}
