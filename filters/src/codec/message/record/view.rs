//! Borrowed, validated views of stored records: field access and iteration without copying the
//! body.

use std::net::SocketAddr;

use bytes::Bytes;

use super::super::properties::{self, Properties};
use super::super::{sysflag, MessageError};
use super::{
    body_crc, build_ext, get_i32, get_i64, parse_layout, read_host, store_host_position,
    store_timestamp_position, Layout, MessageExt, MessageVersion, BODY_CRC_POSITION,
    BORN_HOST_POSITION, BORN_TIMESTAMP_POSITION, COMMIT_LOG_OFFSET_POSITION, FLAG_POSITION,
    QUEUE_ID_POSITION, QUEUE_OFFSET_POSITION,
};

/// A borrowed, validated record inside a body: cheap field access without copying the body.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    rec: &'a [u8],
    offset: usize,
    layout: Layout,
}

impl<'a> RecordView<'a> {
    /// Validates the record at the start of `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, MessageError> {
        Self::parse_at(buf, 0)
    }

    pub(crate) fn from_layout(rec: &'a [u8], offset: usize, layout: Layout) -> Self {
        Self {
            rec: &rec[..layout.store_size],
            offset,
            layout,
        }
    }

    fn parse_at(buf: &'a [u8], offset: usize) -> Result<Self, MessageError> {
        let layout = parse_layout(buf, offset)?;
        Ok(Self {
            rec: &buf[..layout.store_size],
            offset,
            layout,
        })
    }

    /// Offset of the record in the iterated buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Length of the record (`storeSize`).
    pub fn len(&self) -> usize {
        self.layout.store_size
    }

    /// Always false: a record is at least [`MIN_RECORD_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole encoded record.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.rec
    }

    /// Record format.
    pub fn version(&self) -> MessageVersion {
        self.layout.version
    }

    /// Stored `bodyCRC`.
    pub fn body_crc(&self) -> i32 {
        get_i32(self.rec, BODY_CRC_POSITION)
    }

    /// Queue id.
    pub fn queue_id(&self) -> i32 {
        get_i32(self.rec, QUEUE_ID_POSITION)
    }

    /// User flag.
    pub fn flag(&self) -> i32 {
        get_i32(self.rec, FLAG_POSITION)
    }

    /// Queue offset.
    pub fn queue_offset(&self) -> i64 {
        get_i64(self.rec, QUEUE_OFFSET_POSITION)
    }

    /// Commit log offset.
    pub fn commit_log_offset(&self) -> i64 {
        get_i64(self.rec, COMMIT_LOG_OFFSET_POSITION)
    }

    /// `sysFlag`.
    pub fn sys_flag(&self) -> i32 {
        self.layout.sys_flag
    }

    /// Born timestamp.
    pub fn born_timestamp(&self) -> i64 {
        get_i64(self.rec, BORN_TIMESTAMP_POSITION)
    }

    /// Born host.
    pub fn born_host(&self) -> SocketAddr {
        read_host(
            self.rec,
            BORN_HOST_POSITION,
            sysflag::born_host_v6(self.sys_flag()),
        )
    }

    /// Store timestamp.
    pub fn store_timestamp(&self) -> i64 {
        get_i64(self.rec, store_timestamp_position(self.sys_flag()))
    }

    /// Store host.
    pub fn store_host(&self) -> SocketAddr {
        let sf = self.sys_flag();
        read_host(
            self.rec,
            store_host_position(sf),
            sysflag::store_host_v6(sf),
        )
    }

    /// Reconsume times.
    pub fn reconsume_times(&self) -> i32 {
        get_i32(self.rec, self.layout.reconsume_times_pos())
    }

    /// Prepared transaction offset.
    pub fn prepared_transaction_offset(&self) -> i64 {
        get_i64(self.rec, self.layout.reconsume_times_pos() + 4)
    }

    /// The stored (possibly compressed) body.
    pub fn body(&self) -> &'a [u8] {
        &self.rec[self.layout.body_start..self.layout.body_end]
    }

    /// Position of the body inside the record.
    pub fn body_range(&self) -> std::ops::Range<usize> {
        self.layout.body_start..self.layout.body_end
    }

    /// The topic (validated as UTF-8).
    pub fn topic(&self) -> &'a str {
        std::str::from_utf8(&self.rec[self.layout.topic_start..self.layout.topic_end])
            .unwrap_or_default()
    }

    /// The raw properties string.
    pub fn properties_bytes(&self) -> &'a [u8] {
        &self.rec[self.layout.props_start..self.layout.props_end]
    }

    /// The properties string, checked as UTF-8.
    pub fn properties_str(&self) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.properties_bytes()).map_err(|_| MessageError::InvalidUtf8 {
            offset: self.offset,
            field: "properties",
        })
    }

    /// One property, looked up without building a map.
    pub fn property(&self, name: &str) -> Result<Option<&'a str>, MessageError> {
        Ok(properties::lookup(self.properties_str()?, name))
    }

    /// The parsed properties.
    pub fn properties(&self) -> Result<Properties, MessageError> {
        self.properties_str().map(Properties::parse)
    }

    /// Checks the stored CRC against the body.
    pub fn check_crc(&self) -> Result<(), MessageError> {
        let computed = body_crc(self.body());
        if computed == self.body_crc() {
            Ok(())
        } else {
            Err(MessageError::CrcMismatch {
                offset: self.offset,
                stored: self.body_crc(),
                computed,
            })
        }
    }

    /// An owned copy (the body is copied).
    pub fn to_message_ext(&self) -> Result<MessageExt, MessageError> {
        build_ext(
            self.rec,
            &self.layout,
            Bytes::copy_from_slice(self.body()),
            self.offset,
        )
    }
}

/// Iterates over the records of a Pull / Pop body, yielding [`RecordView`]s. After the first
/// error it yields nothing more.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    /// Iterates over `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            buf: body,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match RecordView::parse_at(&self.buf[self.pos..], self.pos) {
            Ok(v) => {
                self.pos += v.len();
                Some(Ok(v))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for RecordIter<'_> {}
