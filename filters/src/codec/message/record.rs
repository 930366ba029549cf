//! The stored message record (`MessageExt`), as the broker returns it in Pull and Pop bodies
//! (`docs/remoting-protocol.md` section 5.1, `MessageDecoder.decode` / `encode`).
//!
//! ```text
//! off  size        field
//!   0  4           storeSize (whole record, this field included)
//!   4  4           magicCode: v1 0xDAA320A7, v2 0xDAA320AB
//!   8  4           bodyCRC = crc32(stored body) & 0x7FFFFFFF
//!  12  4           queueId
//!  16  4           flag
//!  20  8           queueOffset
//!  28  8           commitLogOffset (physical offset)
//!  36  4           sysFlag
//!  40  8           bornTimestamp
//!  48  8 | 20      bornHost: IPv4 + int32 port, or IPv6 + port when sysFlag & 0x10
//!   …  8           storeTimestamp
//!   …  8 | 20      storeHost: IPv4 + port, or IPv6 + port when sysFlag & 0x20
//!   …  4           reconsumeTimes
//!   …  8           preparedTransactionOffset
//!   …  4 + N       bodyLength + body (still compressed when sysFlag & 0x1)
//!   …  1|2 + T     topicLength (v1: 1 byte, v2: int16) + topic
//!   …  2 + P       propertiesLength (int16) + properties string
//! ```
//!
//! All integers are big-endian. The decoders here iterate by `storeSize` and require the fields
//! to add up to it exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{Properties, MAX_PROPERTIES_LEN};
use super::sysflag;
use super::MessageError;

mod view;
pub use view::{RecordIter, RecordView};

/// Magic code of a v1 record (1-byte topic length): `0xDAA320A7` (-626843481).
pub const MAGIC_CODE_V1: u32 = 0xDAA3_20A7;
/// Magic code of a v2 record (int16 topic length, 5.1.0+): `0xDAA320AB` (-626843477).
pub const MAGIC_CODE_V2: u32 = 0xDAA3_20AB;
/// Magic code of the commit log's end-of-file blank record: `0xCBD43194` (-875286124).
pub const BLANK_MAGIC_CODE: u32 = 0xCBD4_3194;

/// Position of `storeSize`.
pub const STORE_SIZE_POSITION: usize = 0;
/// Position of `magicCode`.
pub const MAGIC_CODE_POSITION: usize = 4;
/// Position of `bodyCRC`.
pub const BODY_CRC_POSITION: usize = 8;
/// Position of `queueId`.
pub const QUEUE_ID_POSITION: usize = 12;
/// Position of `flag`.
pub const FLAG_POSITION: usize = 16;
/// Position of `queueOffset`.
pub const QUEUE_OFFSET_POSITION: usize = 20;
/// Position of `commitLogOffset` (`PHY_POS_POSITION`).
pub const COMMIT_LOG_OFFSET_POSITION: usize = 28;
/// Position of `sysFlag`.
pub const SYS_FLAG_POSITION: usize = 36;
/// Position of `bornTimestamp`.
pub const BORN_TIMESTAMP_POSITION: usize = 40;
/// Position of `bornHost`.
pub const BORN_HOST_POSITION: usize = 48;
/// Bytes before `bodyLength` with IPv4 born and store hosts; each IPv6 host adds 12.
pub const FIXED_PREFIX_LEN: usize = 84;
/// Smallest possible record: v1, IPv4 hosts, empty body, topic and properties.
pub const MIN_RECORD_LEN: usize = FIXED_PREFIX_LEN + 4 + 1 + 2;

/// The record format, told apart by the magic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageVersion {
    /// Magic `0xDAA320A7`, 1-byte topic length. The only version 4.x and 5.0 clients can read.
    #[default]
    V1,
    /// Magic `0xDAA320AB`, int16 topic length (5.1.0+, used for topics longer than 127 bytes).
    V2,
}

impl MessageVersion {
    /// The magic code.
    pub fn magic_code(self) -> u32 {
        match self {
            Self::V1 => MAGIC_CODE_V1,
            Self::V2 => MAGIC_CODE_V2,
        }
    }

    /// The version with this magic code (`None` for blank records and garbage).
    pub fn from_magic_code(magic: u32) -> Option<Self> {
        match magic {
            MAGIC_CODE_V1 => Some(Self::V1),
            MAGIC_CODE_V2 => Some(Self::V2),
            _ => None,
        }
    }

    /// Size of the topic length field (1 or 2).
    pub fn topic_length_size(self) -> usize {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// Longest topic (in bytes) the version can carry: Java reads the length as a signed byte
    /// (v1) or short (v2), so 127 and 32767.
    pub fn max_topic_len(self) -> usize {
        match self {
            Self::V1 => i8::MAX as usize,
            Self::V2 => i16::MAX as usize,
        }
    }

    /// The version the 5.x store picks for a topic of `topic_len` bytes
    /// (`autoMessageVersionOnTopicLen`): v2 above 127 bytes.
    pub fn for_topic_len(topic_len: usize) -> Self {
        if topic_len > i8::MAX as usize {
            Self::V2
        } else {
            Self::V1
        }
    }
}

/// Length of the host field (address + int32 port) for a host of this family.
fn host_field_len(v6: bool) -> usize {
    if v6 {
        20
    } else {
        8
    }
}

/// Position of `storeTimestamp` for this `sysFlag` (56 with an IPv4 born host).
pub fn store_timestamp_position(sys_flag: i32) -> usize {
    BORN_HOST_POSITION + host_field_len(sysflag::born_host_v6(sys_flag))
}

/// Position of `storeHost` for this `sysFlag`.
pub fn store_host_position(sys_flag: i32) -> usize {
    store_timestamp_position(sys_flag) + 8
}

/// Position of `reconsumeTimes` for this `sysFlag` (72 with IPv4 hosts).
pub fn reconsume_times_position(sys_flag: i32) -> usize {
    store_host_position(sys_flag) + host_field_len(sysflag::store_host_v6(sys_flag))
}

/// Position of `preparedTransactionOffset` for this `sysFlag`.
pub fn prepared_transaction_offset_position(sys_flag: i32) -> usize {
    reconsume_times_position(sys_flag) + 4
}

/// Position of `bodyLength` for this `sysFlag` (84 with IPv4 hosts).
pub fn body_length_position(sys_flag: i32) -> usize {
    prepared_transaction_offset_position(sys_flag) + 8
}

/// `UtilAll.crc32`: the zlib CRC-32 of `body`, masked with `0x7FFFFFFF`.
pub fn body_crc(body: &[u8]) -> i32 {
    (crc32fast::hash(body) & 0x7FFF_FFFF) as i32
}

pub(crate) fn get_i16(b: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes([b[pos], b[pos + 1]])
}

pub(crate) fn get_i32(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}

pub(crate) fn get_i64(b: &[u8], pos: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    i64::from_be_bytes(a)
}

/// Field positions of one validated record. All ranges lie inside `0..store_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub store_size: usize,
    pub version: MessageVersion,
    pub sys_flag: i32,
    pub body_start: usize,
    pub body_end: usize,
    pub topic_start: usize,
    pub topic_end: usize,
    pub props_start: usize,
    pub props_end: usize,
}

impl Layout {
    pub fn reconsume_times_pos(&self) -> usize {
        reconsume_times_position(self.sys_flag)
    }
}

/// Bounds-checked reader over one record.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    offset: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<usize, MessageError> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(MessageError::Truncated {
                offset: self.offset,
                field,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, MessageError> {
        let p = self.take(4, field)?;
        Ok(get_i32(self.buf, p))
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, MessageError> {
        let p = self.take(2, field)?;
        Ok(get_i16(self.buf, p))
    }

    fn len_field(&mut self, field: &'static str, value: i64) -> Result<usize, MessageError> {
        usize::try_from(value).map_err(|_| MessageError::NegativeLength {
            offset: self.offset,
            field,
            value,
        })
    }

    /// Skips a host field, checking that its port fits in 16 bits.
    fn host(&mut self, v6: bool, field: &'static str) -> Result<(), MessageError> {
        let p = self.take(host_field_len(v6), field)?;
        let port = get_i32(self.buf, p + host_field_len(v6) - 4);
        if u16::try_from(port).is_err() {
            return Err(MessageError::InvalidPort {
                offset: self.offset,
                field,
                port,
            });
        }
        Ok(())
    }
}

/// Validates the record at the start of `rec` (`offset` is its position in the caller's buffer,
/// for error messages) and returns its layout. `rec` may extend past the record.
pub(crate) fn parse_layout(rec: &[u8], offset: usize) -> Result<Layout, MessageError> {
    let truncated = |field, needed| MessageError::Truncated {
        offset,
        field,
        needed,
        available: rec.len(),
    };
    if rec.len() < 8 {
        return Err(truncated("storeSize and magicCode", 8));
    }
    let declared = get_i32(rec, STORE_SIZE_POSITION);
    let magic = get_i32(rec, MAGIC_CODE_POSITION) as u32;
    let version = match MessageVersion::from_magic_code(magic) {
        Some(v) => v,
        None if magic == BLANK_MAGIC_CODE => return Err(MessageError::BlankRecord { offset }),
        None => return Err(MessageError::BadMagic { offset, magic }),
    };
    let min = MIN_RECORD_LEN + version.topic_length_size() - 1;
    let store_size = match usize::try_from(declared) {
        Ok(s) if s >= min => s,
        _ => {
            return Err(MessageError::BadStoreSize {
                offset,
                size: declared.into(),
                min,
            })
        }
    };
    if store_size > rec.len() {
        return Err(truncated("record (storeSize)", store_size));
    }
    let rec = &rec[..store_size];
    let sys_flag = get_i32(rec, SYS_FLAG_POSITION);
    let born_v6 = sysflag::born_host_v6(sys_flag);
    let store_v6 = sysflag::store_host_v6(sys_flag);
    let min = body_length_position(sys_flag) + 4 + version.topic_length_size() + 2;
    if store_size < min {
        return Err(MessageError::BadStoreSize {
            offset,
            size: declared.into(),
            min,
        });
    }

    let mut c = Cursor {
        buf: rec,
        pos: BORN_HOST_POSITION,
        offset,
    };
    c.host(born_v6, "bornHost")?;
    c.take(8, "storeTimestamp")?;
    c.host(store_v6, "storeHost")?;
    c.take(4 + 8, "reconsumeTimes and preparedTransactionOffset")?;
    let body_len = c.i32("bodyLength")?;
    let body_len = c.len_field("body", body_len.into())?;
    let body_start = c.take(body_len, "body")?;
    let topic_len = match version {
        MessageVersion::V1 => {
            let p = c.take(1, "topicLength")?;
            i64::from(rec[p] as i8)
        }
        MessageVersion::V2 => c.i16("topicLength")?.into(),
    };
    let topic_len = c.len_field("topic", topic_len)?;
    let topic_start = c.take(topic_len, "topic")?;
    if std::str::from_utf8(&rec[topic_start..topic_start + topic_len]).is_err() {
        return Err(MessageError::InvalidUtf8 {
            offset,
            field: "topic",
        });
    }
    let props_len = c.i16("propertiesLength")?;
    let props_len = c.len_field("properties", props_len.into())?;
    let props_start = c.take(props_len, "properties")?;
    if c.pos != store_size {
        return Err(MessageError::LengthMismatch {
            offset,
            declared: store_size,
            consumed: c.pos,
        });
    }
    Ok(Layout {
        store_size,
        version,
        sys_flag,
        body_start,
        body_end: body_start + body_len,
        topic_start,
        topic_end: topic_start + topic_len,
        props_start,
        props_end: props_start + props_len,
    })
}

/// Reads a host field (validated by [`parse_layout`]).
fn read_host(rec: &[u8], pos: usize, v6: bool) -> SocketAddr {
    let (ip, port_pos) = if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&rec[pos..pos + 16]);
        (IpAddr::V6(Ipv6Addr::from(a)), pos + 16)
    } else {
        let a = [rec[pos], rec[pos + 1], rec[pos + 2], rec[pos + 3]];
        (IpAddr::V4(Ipv4Addr::from(a)), pos + 4)
    };
    // The port range was checked by parse_layout.
    let port = u16::try_from(get_i32(rec, port_pos)).unwrap_or(0);
    SocketAddr::new(ip, port)
}

/// A decoded stored record. The body is the **stored** body: still compressed when
/// `sys_flag & COMPRESSED` is set (see [`super::compress::inflate_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageExt {
    /// `storeSize` as read; recomputed by [`encode_record`].
    pub store_size: i32,
    /// Record format (magic code).
    pub version: MessageVersion,
    /// `bodyCRC` as read; recomputed by [`encode_record`].
    pub body_crc: i32,
    /// Queue id.
    pub queue_id: i32,
    /// User flag.
    pub flag: i32,
    /// Logical offset in the consume queue.
    pub queue_offset: i64,
    /// Physical offset in the commit log.
    pub commit_log_offset: i64,
    /// `sysFlag` (see [`super::sysflag`]).
    pub sys_flag: i32,
    /// Born timestamp (ms).
    pub born_timestamp: i64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// Store timestamp (ms).
    pub store_timestamp: i64,
    /// Broker address.
    pub store_host: SocketAddr,
    /// Redelivery count.
    pub reconsume_times: i32,
    /// Prepared transaction offset.
    pub prepared_transaction_offset: i64,
    /// Stored body (a slice of the decoded buffer when decoded from [`Bytes`]).
    pub body: Bytes,
    /// Topic.
    pub topic: String,
    /// Properties, in wire order.
    pub properties: Properties,
}

impl Default for MessageExt {
    fn default() -> Self {
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        Self {
            store_size: 0,
            version: MessageVersion::V1,
            body_crc: 0,
            queue_id: 0,
            flag: 0,
            queue_offset: 0,
            commit_log_offset: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: unspecified,
            store_timestamp: 0,
            store_host: unspecified,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            body: Bytes::new(),
            topic: String::new(),
            properties: Properties::new(),
        }
    }
}

impl MessageExt {
    /// The offsetMsgId of this record (store host and commit log offset).
    pub fn offset_msg_id(&self) -> String {
        super::id::offset_msg_id(self.store_host, self.commit_log_offset)
    }

    /// True when the stored body is compressed.
    pub fn is_compressed(&self) -> bool {
        sysflag::is_compressed(self.sys_flag)
    }

    /// Checks `body_crc` against the body.
    pub fn check_crc(&self) -> Result<(), MessageError> {
        let computed = body_crc(&self.body);
        if computed == self.body_crc {
            Ok(())
        } else {
            Err(MessageError::CrcMismatch {
                offset: 0,
                stored: self.body_crc,
                computed,
            })
        }
    }

    /// The `sysFlag` [`encode_record`] writes: the stored flag with the IPv6 host bits set from
    /// the address families of `born_host` and `store_host`.
    pub fn effective_sys_flag(&self) -> i32 {
        let mut f = self.sys_flag & !(sysflag::BORNHOST_V6 | sysflag::STOREHOSTADDRESS_V6);
        if self.born_host.is_ipv6() {
            f |= sysflag::BORNHOST_V6;
        }
        if self.store_host.is_ipv6() {
            f |= sysflag::STOREHOSTADDRESS_V6;
        }
        f
    }

    /// Size of the encoded record ([`encode_record`] output), without checking limits.
    pub fn encoded_len(&self) -> usize {
        body_length_position(self.effective_sys_flag())
            + 4
            + self.body.len()
            + self.version.topic_length_size()
            + self.topic.len()
            + 2
            + self.properties.wire_len()
    }
}

fn build_ext(
    rec: &[u8],
    l: &Layout,
    body: Bytes,
    offset: usize,
) -> Result<MessageExt, MessageError> {
    let props = std::str::from_utf8(&rec[l.props_start..l.props_end]).map_err(|_| {
        MessageError::InvalidUtf8 {
            offset,
            field: "properties",
        }
    })?;
    // The topic was validated by parse_layout.
    let topic = String::from_utf8_lossy(&rec[l.topic_start..l.topic_end]).into_owned();
    let sf = l.sys_flag;
    let rt = reconsume_times_position(sf);
    Ok(MessageExt {
        store_size: get_i32(rec, STORE_SIZE_POSITION),
        version: l.version,
        body_crc: get_i32(rec, BODY_CRC_POSITION),
        queue_id: get_i32(rec, QUEUE_ID_POSITION),
        flag: get_i32(rec, FLAG_POSITION),
        queue_offset: get_i64(rec, QUEUE_OFFSET_POSITION),
        commit_log_offset: get_i64(rec, COMMIT_LOG_OFFSET_POSITION),
        sys_flag: sf,
        born_timestamp: get_i64(rec, BORN_TIMESTAMP_POSITION),
        born_host: read_host(rec, BORN_HOST_POSITION, sysflag::born_host_v6(sf)),
        store_timestamp: get_i64(rec, store_timestamp_position(sf)),
        store_host: read_host(rec, store_host_position(sf), sysflag::store_host_v6(sf)),
        reconsume_times: get_i32(rec, rt),
        prepared_transaction_offset: get_i64(rec, rt + 4),
        body,
        topic,
        properties: Properties::parse(props),
    })
}

/// Decodes the record at the start of `buf`; returns it and the bytes it took (`storeSize`).
/// The body is a zero-copy slice of `buf`. The CRC is not checked (see
/// [`MessageExt::check_crc`]).
pub fn decode_record(buf: &Bytes) -> Result<(MessageExt, usize), MessageError> {
    let l = parse_layout(buf, 0)?;
    let ext = build_ext(buf, &l, buf.slice(l.body_start..l.body_end), 0)?;
    Ok((ext, l.store_size))
}

/// Decodes every record of a Pull / Pop body. Fails on the first bad record (unlike Java, which
/// silently drops the rest).
pub fn decode_records(body: &Bytes) -> Result<Vec<MessageExt>, MessageError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let rec = &body[pos..];
        let l = parse_layout(rec, pos)?;
        let slice = body.slice(pos + l.body_start..pos + l.body_end);
        out.push(build_ext(rec, &l, slice, pos)?);
        pos += l.store_size;
    }
    Ok(out)
}

fn too_long(field: &'static str, len: usize, max: usize) -> MessageError {
    MessageError::TooLong { field, len, max }
}

/// Appends `msg` in the stored layout and returns the bytes written.
///
/// `storeSize` and `bodyCRC` are computed (the `store_size` and `body_crc` fields are ignored);
/// the IPv6 host bits of `sysFlag` follow the host address families
/// ([`MessageExt::effective_sys_flag`]); the body is written as is (compress it first if the
/// flag says so); the properties are written with [`Properties::write_wire`].
/// Fails when the topic is too long for `msg.version`, the properties exceed 32767 bytes or
/// the record exceeds `i32::MAX`.
pub fn encode_record(msg: &MessageExt, out: &mut BytesMut) -> Result<usize, MessageError> {
    let topic = msg.topic.as_bytes();
    if topic.len() > msg.version.max_topic_len() {
        return Err(too_long("topic", topic.len(), msg.version.max_topic_len()));
    }
    let props = msg.properties.to_wire_string();
    if props.len() > MAX_PROPERTIES_LEN {
        return Err(too_long("properties", props.len(), MAX_PROPERTIES_LEN));
    }
    let size = msg.encoded_len();
    let max = i32::MAX as usize;
    if size > max {
        return Err(too_long("record", size, max));
    }
    let sys_flag = msg.effective_sys_flag();
    out.reserve(size);
    let start = out.len();
    out.put_i32(size as i32);
    out.put_u32(msg.version.magic_code());
    out.put_i32(body_crc(&msg.body));
    out.put_i32(msg.queue_id);
    out.put_i32(msg.flag);
    out.put_i64(msg.queue_offset);
    out.put_i64(msg.commit_log_offset);
    out.put_i32(sys_flag);
    out.put_i64(msg.born_timestamp);
    put_host(out, msg.born_host);
    out.put_i64(msg.store_timestamp);
    put_host(out, msg.store_host);
    out.put_i32(msg.reconsume_times);
    out.put_i64(msg.prepared_transaction_offset);
    out.put_i32(msg.body.len() as i32);
    out.put_slice(&msg.body);
    match msg.version {
        MessageVersion::V1 => out.put_u8(topic.len() as u8),
        MessageVersion::V2 => out.put_i16(topic.len() as i16),
    }
    out.put_slice(topic);
    out.put_i16(props.len() as i16);
    out.put_slice(props.as_bytes());
    debug_assert_eq!(out.len() - start, size);
    Ok(size)
}

fn put_host(out: &mut BytesMut, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.put_slice(&ip.octets()),
        IpAddr::V6(ip) => out.put_slice(&ip.octets()),
    }
    out.put_i32(i32::from(addr.port()));
}
