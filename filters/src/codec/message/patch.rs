//! In-place patching of encoded records: re-stamping queueId / queueOffset / reconsumeTimes
//! without decoding and re-encoding (used to map a pop response into a virtual offset space).
//!
//! Every entry point validates the whole record first ([`RecordMut::new`]), so a patch never
//! writes into a malformed record. `bodyCRC` covers only the body, so none of these fields
//! affect it.

use super::record::{
    get_i32, get_i64, parse_layout, Layout, RecordView, COMMIT_LOG_OFFSET_POSITION,
    QUEUE_ID_POSITION, QUEUE_OFFSET_POSITION,
};
use super::{MessageError, RecordIter};

/// A validated, mutable record inside a buffer.
#[derive(Debug)]
pub struct RecordMut<'a> {
    rec: &'a mut [u8],
    offset: usize,
    layout: Layout,
}

impl<'a> RecordMut<'a> {
    /// Validates the record at the start of `buf` (which may extend past it).
    pub fn new(buf: &'a mut [u8]) -> Result<Self, MessageError> {
        Self::new_at(buf, 0)
    }

    fn new_at(buf: &'a mut [u8], offset: usize) -> Result<Self, MessageError> {
        let layout = parse_layout(buf, offset)?;
        Ok(Self {
            rec: &mut buf[..layout.store_size],
            offset,
            layout,
        })
    }

    /// Read access to all fields.
    pub fn view(&self) -> RecordView<'_> {
        // The layout stays valid: only fixed-size fields outside the length fields change.
        RecordView::from_layout(self.rec, self.offset, self.layout)
    }

    /// Offset of the record in the walked body.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Record length (`storeSize`).
    pub fn len(&self) -> usize {
        self.layout.store_size
    }

    /// Always false (records are never empty).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Queue id.
    pub fn queue_id(&self) -> i32 {
        get_i32(self.rec, QUEUE_ID_POSITION)
    }

    /// Overwrites the queue id.
    pub fn set_queue_id(&mut self, queue_id: i32) {
        self.rec[QUEUE_ID_POSITION..QUEUE_ID_POSITION + 4].copy_from_slice(&queue_id.to_be_bytes());
    }

    /// Queue offset.
    pub fn queue_offset(&self) -> i64 {
        get_i64(self.rec, QUEUE_OFFSET_POSITION)
    }

    /// Overwrites the queue offset.
    pub fn set_queue_offset(&mut self, offset: i64) {
        self.rec[QUEUE_OFFSET_POSITION..QUEUE_OFFSET_POSITION + 8]
            .copy_from_slice(&offset.to_be_bytes());
    }

    /// Commit log offset.
    pub fn commit_log_offset(&self) -> i64 {
        get_i64(self.rec, COMMIT_LOG_OFFSET_POSITION)
    }

    /// Overwrites the commit log offset (this changes the record's offsetMsgId).
    pub fn set_commit_log_offset(&mut self, offset: i64) {
        self.rec[COMMIT_LOG_OFFSET_POSITION..COMMIT_LOG_OFFSET_POSITION + 8]
            .copy_from_slice(&offset.to_be_bytes());
    }

    /// `sysFlag`.
    /// Rewrites the store host (where the SDK sends a message back) when the address family
    /// matches the record's; returns whether it did. The body CRC does not cover it.
    pub fn set_store_host(&mut self, addr: std::net::SocketAddr) -> bool {
        let p = super::record::store_host_position(self.layout.sys_flag);
        let v6 = super::sysflag::store_host_v6(self.layout.sys_flag);
        let port = i32::from(addr.port()).to_be_bytes();
        match (addr, v6) {
            (std::net::SocketAddr::V4(a), false) => {
                self.rec[p..p + 4].copy_from_slice(&a.ip().octets());
                self.rec[p + 4..p + 8].copy_from_slice(&port);
                true
            }
            (std::net::SocketAddr::V6(a), true) => {
                self.rec[p..p + 16].copy_from_slice(&a.ip().octets());
                self.rec[p + 16..p + 20].copy_from_slice(&port);
                true
            }
            _ => false,
        }
    }

    pub fn sys_flag(&self) -> i32 {
        self.layout.sys_flag
    }

    /// Reconsume times.
    pub fn reconsume_times(&self) -> i32 {
        get_i32(self.rec, self.layout.reconsume_times_pos())
    }

    /// Overwrites the reconsume times (its position depends on the IPv6 host bits).
    pub fn set_reconsume_times(&mut self, times: i32) {
        let p = self.layout.reconsume_times_pos();
        self.rec[p..p + 4].copy_from_slice(&times.to_be_bytes());
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        std::str::from_utf8(&self.rec[self.layout.topic_start..self.layout.topic_end])
            .unwrap_or_default()
    }

    /// The raw properties string.
    pub fn properties_bytes(&self) -> &[u8] {
        &self.rec[self.layout.props_start..self.layout.props_end]
    }

    /// One property, looked up without building a map.
    pub fn property(&self, name: &str) -> Result<Option<&str>, MessageError> {
        let s = std::str::from_utf8(self.properties_bytes()).map_err(|_| {
            MessageError::InvalidUtf8 {
                offset: self.offset,
                field: "properties",
            }
        })?;
        Ok(super::properties::lookup(s, name))
    }
}

/// Overwrites the queueId of the record at the start of `record`.
pub fn patch_queue_id(record: &mut [u8], queue_id: i32) -> Result<(), MessageError> {
    RecordMut::new(record)?.set_queue_id(queue_id);
    Ok(())
}

/// Overwrites the queueOffset of the record at the start of `record`.
pub fn patch_queue_offset(record: &mut [u8], offset: i64) -> Result<(), MessageError> {
    RecordMut::new(record)?.set_queue_offset(offset);
    Ok(())
}

/// Overwrites the reconsumeTimes of the record at the start of `record`.
pub fn patch_reconsume_times(record: &mut [u8], times: i32) -> Result<(), MessageError> {
    RecordMut::new(record)?.set_reconsume_times(times);
    Ok(())
}

/// Walks every record of a Pull / Pop body and hands each to `f`, which may re-stamp it.
///
/// The whole body is validated before `f` is first called, so a malformed body is reported
/// without anything being modified. Errors from `f` stop the walk (records already visited
/// keep their changes). Returns the number of records.
pub fn patch_records<E, F>(body: &mut [u8], mut f: F) -> Result<usize, E>
where
    E: From<MessageError>,
    F: FnMut(&mut RecordMut<'_>) -> Result<(), E>,
{
    let mut count = 0;
    for r in RecordIter::new(body) {
        r?;
        count += 1;
    }
    let mut pos = 0;
    while pos < body.len() {
        let mut rec = RecordMut::new_at(&mut body[pos..], pos)?;
        f(&mut rec)?;
        pos += rec.len();
    }
    Ok(count)
}
