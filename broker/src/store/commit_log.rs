//! The commit log: segmented, append-only files `DIR/commitlog/{20-digit start offset}` holding
//! records in the RocketMQ stored-message layout (`docs/remoting-protocol.md` section 5.1).
//!
//! * Physical offsets are global: segment base + position in the segment. Segment bases are
//!   multiples of the segment size.
//! * A record never spans two segments. When a record (plus an 8-byte end-of-segment marker)
//!   does not fit in the rest of a segment, the rest is filled with a BLANK record (4-byte size
//!   = remaining bytes, 4-byte magic [`BLANK_MAGIC_CODE`]) and the record goes to the next
//!   segment, as RocketMQ does. The file is then extended (sparsely) to the full segment size.
//! * Segments are not preallocated: the length of the last file is the write position.
//! * All I/O uses positional reads and writes (`FileExt`), no mmap.
//!
//! Recovery ([`CommitLog::recover`]) walks the records from a start offset, checking size,
//! magic, layout, body CRC and the stored physical offset, and cuts the log at the first record
//! that fails. See the method for the torn-tail / corruption policy.

use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rocketmesh_filters::codec::body::java_string_hash;
use rocketmesh_filters::codec::message::record::{MAGIC_CODE_V1, MAGIC_CODE_V2, MIN_RECORD_LEN};
use rocketmesh_filters::codec::message::{
    decode_record, encode_record, property_keys, MessageExt, RecordView, BLANK_MAGIC_CODE,
};
use tracing::{debug, error, warn};

use super::error::{IoContext, Result, StoreError};
use super::util::{create_dir_all, open_segment_files, segment_file_name, sync_dir};

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: u64 = 1024;
/// Bytes always kept free at the end of a segment for the BLANK marker.
pub const END_BLANK_LEN: u64 = 8;
/// Read size of the recovery scanner.
const SCAN_CHUNK: u64 = 1 << 20;

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
}

#[derive(Debug)]
struct Inner {
    /// Contiguous segments, ascending by base.
    segments: Vec<Arc<Segment>>,
    /// End of the written data (next append position).
    end: u64,
}

/// The segmented commit log. Thread-safe; appends and reads take a short internal lock, fsyncs
/// ([`CommitLog::sync`]) run outside it.
#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    inner: Mutex<Inner>,
    /// A segment file was created or renamed since the directory was last fsynced.
    dir_dirty: AtomicBool,
}

/// Where a record was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Physical offset of the record.
    pub offset: u64,
    /// Record length (`storeSize`).
    pub size: u32,
}

impl Appended {
    /// Physical offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.size)
    }
}

/// A valid record seen by [`CommitLog::recover`], with what a consume queue needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Physical offset.
    pub offset: u64,
    /// Record length.
    pub size: u32,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: i32,
    /// Queue offset stored in the record.
    pub queue_offset: i64,
    /// Java `String.hashCode()` of the TAGS property, 0 without tags.
    pub tags_code: i64,
    /// Store timestamp.
    pub store_timestamp: i64,
}

/// What [`CommitLog::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Physical offset the walk started at (a segment base).
    pub walked_from: u64,
    /// End of the valid data after recovery (next append position).
    pub end: u64,
    /// Valid records walked.
    pub records: u64,
    /// True when the callback stopped the walk (nothing was truncated).
    pub aborted: bool,
    /// Bytes cut from the end of the log (torn tail or corrupt data).
    pub truncated_bytes: u64,
    /// Offset of a corrupt record found before the tail, if any (data from there on was moved
    /// out of service).
    pub corrupt_at: Option<u64>,
    /// `.corrupt` files written.
    pub quarantined: Vec<PathBuf>,
}

/// Why the walk of a segment stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadKind {
    /// The record (or its header) runs past the end of the file: a partial write.
    Partial,
    /// The record fills the file exactly but is invalid (e.g. CRC): a torn last record.
    InvalidLast,
    /// Zero bytes where a record header should be.
    Zeros,
    /// Anything else: bad magic, bad size, bad layout, bad CRC with data after it.
    Invalid,
}

/// How the walk of one segment ended.
enum SegEnd {
    /// A BLANK record: continue with the next segment.
    Blank,
    /// The end of the file at this position.
    Eof(u64),
    /// An invalid record at this position.
    Bad(u64, BadKind, String),
    /// The callback asked to stop.
    Aborted,
}

/// Positional reader with a bounded buffer, for the recovery walk.
struct ChunkReader<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, path: &'a Path, file_len: u64) -> Self {
        Self {
            file,
            path,
            file_len,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// `n` bytes at `pos`; the caller guarantees `pos + n <= file_len`.
    fn get(&mut self, pos: u64, n: u64) -> Result<&[u8]> {
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if pos < self.buf_pos || pos + n > buf_end {
            let len = n.max(SCAN_CHUNK).min(self.file_len - pos);
            self.buf.resize(len as usize, 0);
            self.file.read_exact_at(&mut self.buf, pos).at(self.path)?;
            self.buf_pos = pos;
        }
        let start = (pos - self.buf_pos) as usize;
        Ok(&self.buf[start..start + n as usize])
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Builds a [`ScannedRecord`] from a validated record.
fn scanned(view: &RecordView<'_>, offset: u64) -> ScannedRecord {
    ScannedRecord {
        offset,
        size: view.len() as u32,
        topic: view.topic().to_owned(),
        queue_id: view.queue_id(),
        queue_offset: view.queue_offset(),
        tags_code: tags_code_of(view),
        store_timestamp: view.store_timestamp(),
    }
}

/// The consume queue tags code of a record: Java `String.hashCode()` of its TAGS property, 0
/// when it has none (or its properties are not valid UTF-8).
pub fn tags_code_of(view: &RecordView<'_>) -> i64 {
    match view.property(property_keys::TAGS) {
        Ok(Some(tags)) => i64::from(java_string_hash(tags)),
        _ => 0,
    }
}

/// The tags code of a message about to be stored.
pub fn tags_code_of_message(msg: &MessageExt) -> i64 {
    msg.properties
        .tags()
        .map_or(0, |t| i64::from(java_string_hash(t)))
}

impl CommitLog {
    /// Opens (creating if needed) the commit log in `dir`. Segment files must have 20-digit
    /// names that are multiples of `segment_size`, be contiguous and no longer than
    /// `segment_size`; other file names (such as `.corrupt` copies) are ignored. The log is not
    /// validated here: call [`CommitLog::recover`].
    pub fn open(dir: impl Into<PathBuf>, segment_size: u64) -> Result<Self> {
        let dir = dir.into();
        if segment_size < MIN_SEGMENT_SIZE || segment_size > i32::MAX as u64 {
            return Err(StoreError::InvalidConfig(format!(
                "commit log segment size {segment_size} is outside {MIN_SEGMENT_SIZE}..={}",
                i32::MAX
            )));
        }
        create_dir_all(&dir)?;
        let segments: Vec<Arc<Segment>> =
            open_segment_files(&dir, segment_size, segment_size, "commit log")?
                .into_iter()
                .map(|f| {
                    Arc::new(Segment {
                        base: f.base,
                        path: f.path,
                        file: f.file,
                    })
                })
                .collect();
        let end = match segments.last() {
            Some(s) => s.base + s.file.metadata().at(&s.path)?.len(),
            None => 0,
        };
        Ok(Self {
            dir,
            segment_size,
            inner: Mutex::new(Inner { segments, end }),
            dir_dirty: AtomicBool::new(false),
        })
    }

    /// The commit log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment size.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// End of the written data: the physical offset the next record is appended at (or the
    /// base of the next segment after a BLANK).
    pub fn end_offset(&self) -> u64 {
        self.inner.lock().end
    }

    /// First stored physical offset (the base of the first segment; the end when empty).
    pub fn min_offset(&self) -> u64 {
        let inner = self.inner.lock();
        inner.segments.first().map_or(inner.end, |s| s.base)
    }

    /// Largest record (`storeSize`) a segment can take.
    pub fn max_record_size(&self) -> u64 {
        self.segment_size - END_BLANK_LEN
    }

    /// Walks the log from the base of the segment holding `from` (or from the first segment
    /// when `from` is before it), validating every record, calls `on_record` for each valid
    /// record at or after `from`, and cuts the log at the first invalid one.
    ///
    /// `on_record` returns `Ok(false)` to stop the walk at once; then nothing is truncated and
    /// the report has `aborted` set.
    ///
    /// Policy at an invalid record at position `p` of segment `s`:
    /// * **Torn tail** (in the last segment, and the record runs past the end of the file, or
    ///   ends exactly at the end of the file, or only zero bytes follow): logged as a warning,
    ///   the file is truncated to `p`.
    /// * **Corruption** (anything else: data follows the bad record, or it is in an earlier
    ///   segment): logged as an error naming the offset. The bytes from `p` to the end of
    ///   segment `s` are copied to `{segment}.{p}.{now_ms}.corrupt`, later segments are renamed
    ///   to `{segment}.{now_ms}.corrupt`, and segment `s` is truncated to `p`. The log ends at
    ///   the bad record: nothing after it is served, but nothing is deleted.
    /// * A segment that ends without a BLANK while later segments exist is handled like
    ///   corruption at its end.
    pub fn recover(
        &self,
        from: u64,
        on_record: &mut dyn FnMut(&ScannedRecord) -> Result<bool>,
    ) -> Result<RecoveryReport> {
        let mut inner = self.inner.lock();
        let mut report = RecoveryReport::default();
        let Some(first) = inner.segments.first() else {
            report.end = inner.end;
            return Ok(report);
        };
        let first_base = first.base;
        let start_idx = if from <= first_base {
            0
        } else {
            (((from - first_base) / self.segment_size) as usize).min(inner.segments.len() - 1)
        };
        report.walked_from = inner.segments[start_idx].base;
        let last_idx = inner.segments.len() - 1;
        for idx in start_idx..=last_idx {
            let seg = Arc::clone(&inner.segments[idx]);
            let file_len = seg.file.metadata().at(&seg.path)?.len();
            match self.walk_segment(&seg, file_len, from, &mut report, on_record)? {
                SegEnd::Aborted => {
                    report.aborted = true;
                    return Ok(report);
                }
                SegEnd::Blank => {
                    if idx == last_idx {
                        inner.end = seg.base + self.segment_size;
                    }
                }
                SegEnd::Eof(p) => {
                    if idx == last_idx {
                        inner.end = seg.base + p;
                    } else {
                        error!(
                            offset = seg.base + p,
                            "commit log segment {} ends without an end-of-segment marker but later segments exist; later data is taken out of service",
                            seg.path.display()
                        );
                        self.cut(&mut inner, idx, p, file_len, true, &mut report)?;
                        break;
                    }
                }
                SegEnd::Bad(p, kind, reason) => {
                    let torn = idx == last_idx
                        && match kind {
                            BadKind::Partial | BadKind::InvalidLast => true,
                            BadKind::Zeros => self.all_zero(&seg, p, file_len)?,
                            BadKind::Invalid => false,
                        };
                    if torn {
                        warn!(
                            offset = seg.base + p,
                            bytes = file_len - p,
                            "truncating torn commit log tail: {reason}"
                        );
                    } else {
                        error!(
                            offset = seg.base + p,
                            "corrupt commit log record at offset {}: {reason}; the log ends here and the data after it is kept in .corrupt files",
                            seg.base + p
                        );
                        report.corrupt_at = Some(seg.base + p);
                    }
                    self.cut(&mut inner, idx, p, file_len, !torn, &mut report)?;
                    break;
                }
            }
        }
        report.end = inner.end;
        Ok(report)
    }

    fn walk_segment(
        &self,
        seg: &Segment,
        file_len: u64,
        from: u64,
        report: &mut RecoveryReport,
        on_record: &mut dyn FnMut(&ScannedRecord) -> Result<bool>,
    ) -> Result<SegEnd> {
        let mut rd = ChunkReader::new(&seg.file, &seg.path, file_len);
        let mut p = 0u64;
        loop {
            if p == file_len {
                return Ok(SegEnd::Eof(p));
            }
            if p + 8 > file_len {
                return Ok(SegEnd::Bad(
                    p,
                    BadKind::Partial,
                    "partial record header".into(),
                ));
            }
            let hdr = rd.get(p, 8)?;
            let size = be_i32(&hdr[0..4]);
            let magic = be_i32(&hdr[4..8]) as u32;
            if magic == BLANK_MAGIC_CODE {
                if size >= 8 && size as u64 == self.segment_size - p {
                    return Ok(SegEnd::Blank);
                }
                return Ok(SegEnd::Bad(
                    p,
                    BadKind::Invalid,
                    format!("BLANK record of size {size} does not end the segment"),
                ));
            }
            if size == 0 && magic == 0 {
                return Ok(SegEnd::Bad(p, BadKind::Zeros, "zero bytes".into()));
            }
            if magic != MAGIC_CODE_V1 && magic != MAGIC_CODE_V2 {
                return Ok(SegEnd::Bad(
                    p,
                    BadKind::Invalid,
                    format!("bad magic code {magic:#010X}"),
                ));
            }
            let size = match u64::try_from(size) {
                Ok(s)
                    if s >= MIN_RECORD_LEN as u64 && p + s + END_BLANK_LEN <= self.segment_size =>
                {
                    s
                }
                _ => {
                    return Ok(SegEnd::Bad(
                        p,
                        BadKind::Invalid,
                        format!("bad record size {size}"),
                    ))
                }
            };
            if p + size > file_len {
                return Ok(SegEnd::Bad(
                    p,
                    BadKind::Partial,
                    format!("record of {size} bytes runs past the end of the file"),
                ));
            }
            let kind = if p + size == file_len {
                BadKind::InvalidLast
            } else {
                BadKind::Invalid
            };
            let rec = rd.get(p, size)?;
            let global = seg.base + p;
            let view = match RecordView::parse(rec) {
                Ok(v) if v.len() as u64 == size => v,
                Ok(_) => return Ok(SegEnd::Bad(p, kind, "record length mismatch".into())),
                Err(e) => return Ok(SegEnd::Bad(p, kind, e.to_string())),
            };
            if let Err(e) = view.check_crc() {
                return Ok(SegEnd::Bad(p, kind, e.to_string()));
            }
            if view.commit_log_offset() != global as i64 {
                return Ok(SegEnd::Bad(
                    p,
                    kind,
                    format!(
                        "record stores physical offset {} instead of {global}",
                        view.commit_log_offset()
                    ),
                ));
            }
            if global >= from {
                let rec = scanned(&view, global);
                report.records += 1;
                if !on_record(&rec)? {
                    return Ok(SegEnd::Aborted);
                }
            }
            p += size;
        }
    }

    /// True when the bytes `p..file_len` of `seg` are all zero.
    fn all_zero(&self, seg: &Segment, p: u64, file_len: u64) -> Result<bool> {
        let mut rd = ChunkReader::new(&seg.file, &seg.path, file_len);
        let mut pos = p;
        while pos < file_len {
            let n = SCAN_CHUNK.min(file_len - pos);
            if rd.get(pos, n)?.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += n;
        }
        Ok(true)
    }

    /// Ends the log at position `p` of segment `idx`; with `quarantine`, keeps the cut bytes
    /// and the later segments in `.corrupt` files.
    fn cut(
        &self,
        inner: &mut Inner,
        idx: usize,
        p: u64,
        file_len: u64,
        quarantine: bool,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        let seg = Arc::clone(&inner.segments[idx]);
        let stamp = rocketmesh_filters::clock::unix_ms();
        if quarantine && p < file_len {
            let path = PathBuf::from(format!("{}.{p}.{stamp}.corrupt", seg.path.display()));
            self.copy_range(&seg, p, file_len, &path)?;
            report.quarantined.push(path);
        }
        for later in inner.segments.drain(idx + 1..) {
            let len = later.file.metadata().at(&later.path)?.len();
            report.truncated_bytes += len;
            let to = PathBuf::from(format!("{}.{stamp}.corrupt", later.path.display()));
            fs::rename(&later.path, &to).at(&later.path)?;
            report.quarantined.push(to);
        }
        if p < file_len {
            seg.file.set_len(p).at(&seg.path)?;
            seg.file.sync_all().at(&seg.path)?;
            report.truncated_bytes += file_len - p;
        }
        sync_dir(&self.dir)?;
        inner.end = seg.base + p;
        Ok(())
    }

    fn copy_range(&self, seg: &Segment, from: u64, to: u64, dest: &Path) -> Result<()> {
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dest)
            .at(dest)?;
        let mut rd = ChunkReader::new(&seg.file, &seg.path, to);
        let mut pos = from;
        while pos < to {
            let n = SCAN_CHUNK.min(to - pos);
            let chunk = rd.get(pos, n)?;
            out.write_all_at(chunk, pos - from).at(dest)?;
            pos += n;
        }
        out.sync_all().at(dest)
    }

    /// The segment starting at `base`, created when it is the next one.
    fn segment_for_write(&self, inner: &mut Inner, base: u64) -> Result<Arc<Segment>> {
        if let Some(last) = inner.segments.last() {
            if last.base == base {
                return Ok(Arc::clone(last));
            }
        }
        let path = self.dir.join(segment_file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        file.set_len(0).at(&path)?;
        debug!(path = %path.display(), "created commit log segment");
        let seg = Arc::new(Segment { base, path, file });
        inner.segments.push(Arc::clone(&seg));
        self.dir_dirty.store(true, Ordering::Release);
        Ok(seg)
    }

    /// Appends `msgs` in order under one lock hold, setting each `commit_log_offset`, and
    /// returns where each record went. The caller sets everything else (queue offset, store
    /// timestamp, ...). Records are checked first: if any is larger than
    /// [`CommitLog::max_record_size`] or cannot be encoded, nothing is written.
    pub fn append(&self, msgs: &mut [MessageExt]) -> Result<Vec<Appended>> {
        let max = self.max_record_size();
        for msg in msgs.iter() {
            let size = msg.encoded_len() as u64;
            if size > max {
                return Err(StoreError::RecordTooLarge {
                    size,
                    segment_size: self.segment_size,
                });
            }
            let topic_max = msg.version.max_topic_len();
            if msg.topic.len() > topic_max {
                return Err(rocketmesh_filters::codec::message::MessageError::TooLong {
                    field: "topic",
                    len: msg.topic.len(),
                    max: topic_max,
                }
                .into());
            }
            if msg.properties.wire_len() > i16::MAX as usize {
                return Err(rocketmesh_filters::codec::message::MessageError::TooLong {
                    field: "properties",
                    len: msg.properties.wire_len(),
                    max: i16::MAX as usize,
                }
                .into());
            }
        }
        let mut inner = self.inner.lock();
        let mut out = Vec::with_capacity(msgs.len());
        let mut buf = BytesMut::new();
        let mut buf_start = inner.end;
        for msg in msgs.iter_mut() {
            let size = msg.encoded_len() as u64;
            let pos = buf_start + buf.len() as u64;
            let in_seg = pos % self.segment_size;
            let pos = if in_seg + size + END_BLANK_LEN > self.segment_size {
                self.write_buf(&mut inner, buf_start, &buf)?;
                buf.clear();
                let remaining = self.segment_size - in_seg;
                let base = pos - in_seg;
                let seg = self.segment_for_write(&mut inner, base)?;
                let mut blank = BytesMut::with_capacity(8);
                blank.put_i32(remaining as i32);
                blank.put_u32(BLANK_MAGIC_CODE);
                seg.file.write_all_at(&blank, in_seg).at(&seg.path)?;
                seg.file.set_len(self.segment_size).at(&seg.path)?;
                inner.end = base + self.segment_size;
                buf_start = inner.end;
                buf_start
            } else {
                pos
            };
            msg.commit_log_offset = pos as i64;
            let written = encode_record(msg, &mut buf)?;
            out.push(Appended {
                offset: pos,
                size: written as u32,
            });
        }
        self.write_buf(&mut inner, buf_start, &buf)?;
        Ok(out)
    }

    /// Writes `buf` (records of one segment) at global offset `start` and advances the end.
    fn write_buf(&self, inner: &mut Inner, start: u64, buf: &[u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let in_seg = start % self.segment_size;
        let seg = self.segment_for_write(inner, start - in_seg)?;
        seg.file.write_all_at(buf, in_seg).at(&seg.path)?;
        inner.end = start + buf.len() as u64;
        Ok(())
    }

    /// Reads `size` bytes at physical offset `offset`. The range must lie inside the written
    /// data and inside one segment.
    pub fn read(&self, offset: u64, size: u64) -> Result<Bytes> {
        let out_of_range = |min, max| StoreError::OutOfRange {
            offset,
            size,
            min,
            max,
        };
        let seg = {
            let inner = self.inner.lock();
            let min = inner.segments.first().map_or(inner.end, |s| s.base);
            let end = offset.checked_add(size);
            if offset < min || end.is_none_or(|e| e > inner.end) {
                return Err(out_of_range(min, inner.end));
            }
            let idx = ((offset - min) / self.segment_size) as usize;
            let in_seg = offset % self.segment_size;
            if in_seg + size > self.segment_size {
                return Err(out_of_range(min, inner.end));
            }
            match inner.segments.get(idx) {
                Some(s) => Arc::clone(s),
                None => return Err(out_of_range(min, inner.end)),
            }
        };
        let mut buf = vec![0u8; size as usize];
        seg.file
            .read_exact_at(&mut buf, offset - seg.base)
            .at(&seg.path)?;
        Ok(Bytes::from(buf))
    }

    /// Reads and decodes the record at `offset`, checking its size, layout, stored offset
    /// and body CRC.
    pub fn read_record(&self, offset: u64) -> Result<MessageExt> {
        let bytes = self.read_record_bytes(offset)?;
        self.decode_checked(offset, &bytes)
    }

    /// The raw record at `offset` (VIEW_MESSAGE_BY_ID): its magic code, size, layout, stored
    /// offset and body CRC are checked, so an offset that is not a record boundary is refused.
    pub fn read_record_bytes(&self, offset: u64) -> Result<Bytes> {
        let hdr = self.read(offset, 8)?;
        let size = be_i32(&hdr[0..4]);
        let magic = be_i32(&hdr[4..8]) as u32;
        if magic != MAGIC_CODE_V1 && magic != MAGIC_CODE_V2 {
            return Err(self.corrupt_at(offset, format!("bad magic code {magic:#010X}")));
        }
        let size = match u64::try_from(size) {
            Ok(s) if s >= MIN_RECORD_LEN as u64 && s <= self.max_record_size() => s,
            _ => {
                return Err(self.corrupt_at(offset, format!("bad record size {size}")));
            }
        };
        let bytes = self.read(offset, size)?;
        let view = RecordView::parse(&bytes).map_err(|e| self.corrupt_at(offset, e.to_string()))?;
        if view.len() as u64 != size || view.commit_log_offset() != offset as i64 {
            return Err(self.corrupt_at(offset, "not a record boundary"));
        }
        view.check_crc()
            .map_err(|e| self.corrupt_at(offset, e.to_string()))?;
        Ok(bytes)
    }

    /// Decodes a record read from `offset`, checking its stored offset and CRC.
    pub fn decode_checked(&self, offset: u64, bytes: &Bytes) -> Result<MessageExt> {
        let (msg, _) = decode_record(bytes).map_err(|e| self.corrupt_at(offset, e.to_string()))?;
        if msg.commit_log_offset != offset as i64 {
            return Err(self.corrupt_at(
                offset,
                format!("record stores physical offset {}", msg.commit_log_offset),
            ));
        }
        msg.check_crc()
            .map_err(|e| self.corrupt_at(offset, e.to_string()))?;
        Ok(msg)
    }

    /// A [`StoreError::Corrupt`] for the record at global offset `offset`.
    pub fn corrupt_at(&self, offset: u64, reason: impl Into<String>) -> StoreError {
        let base = offset - offset % self.segment_size;
        StoreError::corrupt(self.dir.join(segment_file_name(base)), offset, reason)
    }

    /// fsyncs (fdatasync) every segment holding data in `from..to`, and the directory when
    /// segments were created; returns the number of fsync calls. Runs without holding the
    /// append lock, so appends continue meanwhile.
    pub fn sync(&self, from: u64, to: u64) -> Result<usize> {
        let segs: Vec<Arc<Segment>> = {
            let inner = self.inner.lock();
            inner
                .segments
                .iter()
                .filter(|s| from < s.base + self.segment_size && s.base < to)
                .cloned()
                .collect()
        };
        let mut n = 0;
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
            n += 1;
        }
        for s in segs {
            s.file.sync_data().at(&s.path)?;
            n += 1;
        }
        Ok(n)
    }
}
