//! Small helpers shared by the store modules: name validation, file naming, fsync of
//! directories, atomic file replacement, the wall clock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{IoContext, Result, StoreError};

/// Longest topic or group name accepted (RocketMQ's limit for 4.x clients).
pub const MAX_NAME_LEN: usize = 127;

fn validate_name(kind: &'static str, name: &str) -> Result<()> {
    let err = |reason| StoreError::InvalidName {
        kind,
        name: name.chars().take(200).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(err("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(err("longer than 127 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
    {
        return Err(err("only the characters [%|a-zA-Z0-9_-] are allowed"));
    }
    Ok(())
}

/// Checks that `topic` is a valid RocketMQ topic name (`[%|a-zA-Z0-9_-]{1,127}`), which also
/// makes it safe as a directory name (no `/`, no `.`, no `..`).
pub fn validate_topic(topic: &str) -> Result<()> {
    validate_name("topic", topic)
}

/// Checks that `group` is a valid RocketMQ consumer group name (same rule as topics).
pub fn validate_group(group: &str) -> Result<()> {
    validate_name("group", group)
}

/// The 20-digit zero-padded file name of a segment starting at `start`.
pub fn segment_file_name(start: u64) -> String {
    format!("{start:020}")
}

/// Parses a 20-digit segment file name; `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Creates `dir` (and its parents).
pub fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).at(dir)
}

/// Replaces `path` with `data` atomically: writes `path.tmp`, fsyncs it, renames it over
/// `path` and fsyncs the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at(&tmp)?;
        f.write_all(data).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `path` with `.tmp` appended.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Reads a whole file of at most `max` bytes; `Ok(None)` when it does not exist.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    if meta.len() > max {
        return Err(StoreError::corrupt(
            path,
            0,
            format!("file is {} bytes, more than the {max} allowed", meta.len()),
        ));
    }
    fs::read(path).map(Some).at(path)
}

/// One numbered segment file of a segmented log, opened for reading and writing.
#[derive(Debug)]
pub struct SegmentFile {
    /// First unit (byte offset or entry index) the file holds; its name.
    pub base: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Its length in bytes.
    pub len: u64,
}

/// Lists and opens the segment files of `dir` (20-digit names; other names are ignored), in
/// order, checking that every base is a multiple of `unit`, that they are contiguous, and that no
/// file is longer than `max_len` bytes. `what` names the log in errors.
pub fn open_segment_files(
    dir: &Path,
    unit: u64,
    max_len: u64,
    what: &str,
) -> Result<Vec<SegmentFile>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_file_name) {
            Some(base) => bases.push(base),
            None => {
                tracing::debug!(file = ?name, "ignoring non-segment file in the {what} directory")
            }
        }
    }
    bases.sort_unstable();
    let mut out: Vec<SegmentFile> = Vec::with_capacity(bases.len());
    for base in bases {
        let path = dir.join(segment_file_name(base));
        if base % unit != 0 {
            return Err(StoreError::corrupt(
                &path,
                0,
                format!("{what} segment name is not a multiple of {unit}"),
            ));
        }
        if out.last().is_some_and(|prev| base != prev.base + unit) {
            return Err(StoreError::corrupt(
                &path,
                0,
                format!("{what} segments are not contiguous (a segment is missing)"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        let len = file.metadata().at(&path)?.len();
        if len > max_len {
            return Err(StoreError::corrupt(
                &path,
                max_len,
                format!("{what} segment file is {len} bytes, longer than a segment ({max_len})"),
            ));
        }
        out.push(SegmentFile {
            base,
            path,
            file,
            len,
        });
    }
    Ok(out)
}
